//! `cargo xtask soak --minutes N`: sonde with OTLP export on, under a steady mixed load
//! (HTTP to nginx, Redis commands with pipelines, pgbench), while the collector goes down for
//! 30 s of every 90. Every minute it samples sonde's RSS, CPU and counters; at the end it
//! says whether RSS stayed flat and whether every call was counted, and writes
//! `target/soak/report.txt`.
//!
//! The load is paced (a few thousand calls per second), not saturating: a soak looks for
//! growth over time, which a saturated 2-core machine would only hide in noise.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bench::{
    cpu_ticks, dies_with_xtask, free_port, pg_bin, start_nginx, start_postgres, sum_metric,
    ticks_per_second, wait_for, wait_http,
};
use crate::step;

/// The collector is up for this long, then down for `SINK_DOWN`, over and over.
const SINK_UP: Duration = Duration::from_secs(60);
const SINK_DOWN: Duration = Duration::from_secs(30);
/// RSS is flat when the peak of the second half is within this of the first half's peak
/// (the first minute, warm-up, left out).
const FLAT_TOLERANCE: f64 = 0.10;

struct Sample {
    minute: u64,
    rss_kib: u64,
    cpu_percent: f64,
    events: f64,
    dropped: f64,
    export_dropped: f64,
    spans_exported: f64,
    sink_up: bool,
}

pub fn run(root: &Path, sonde: &Path, args: &[String]) -> Result<()> {
    let minutes: u64 = match args.iter().position(|a| a == "--minutes") {
        Some(i) => args.get(i + 1).context("--minutes N")?.parse()?,
        None => 30,
    };
    if minutes < 2 {
        bail!("--minutes must be at least 2 (the first minute is warm-up)");
    }
    let dir = root.join("target/soak");
    std::fs::create_dir_all(&dir)?;

    let stop = Arc::new(AtomicBool::new(false));
    let sink = Sink::start(stop.clone())?;
    let nginx_port = free_port()?;
    let mut servers = Servers::default();
    servers.0.push(start_nginx(&dir, nginx_port, false)?);
    wait_http(&format!("http://127.0.0.1:{nginx_port}/bench"))?;
    let redis_port = free_port()?;
    servers.0.push(
        dies_with_xtask(&mut Command::new("redis-server"))
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server")?,
    );
    wait_for("redis-server", || {
        TcpStream::connect(("127.0.0.1", redis_port)).is_ok()
    })?;
    let (postgres, pg_port) = start_postgres(&dir.join("postgres"))?;
    servers.0.push(postgres);
    let pg = |program: &str| -> Result<Command> {
        let mut c = Command::new(pg_bin(program)?);
        c.args(["-h", "127.0.0.1", "-p", &pg_port, "-U", "postgres"])
            .env("PGSSLMODE", "disable");
        Ok(c)
    };
    wait_for("postgres", || {
        pg("pg_isready").is_ok_and(|mut c| c.arg("-q").status().is_ok_and(|s| s.success()))
    })?;
    if !pg("pgbench")?
        .args(["-i", "-q", "-s", "1", "postgres"])
        .output()?
        .status
        .success()
    {
        bail!("pgbench -i failed");
    }

    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    step(&format!(
        "soak: {minutes} min, OTLP to a collector down {SINK_DOWN:?} of every {:?}",
        SINK_UP + SINK_DOWN
    ));
    let mut sonde = dies_with_xtask(&mut Command::new(sonde))
        .args(["--quiet", "--metrics-addr", &metrics_addr])
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", sink.port),
        )
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "2000")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "10000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("sonde.log"))?)
        .spawn()
        .context("starting sonde")?;
    let pid = sonde.id();
    wait_http(&format!("http://{metrics_addr}/readyz"))?;

    let http_sent = Arc::new(AtomicU64::new(0));
    let redis_sent = Arc::new(AtomicU64::new(0));
    let loads = [
        {
            let (stop, sent) = (stop.clone(), http_sent.clone());
            std::thread::spawn(move || http_load(nginx_port, &stop, &sent))
        },
        {
            let (stop, sent) = (stop.clone(), redis_sent.clone());
            std::thread::spawn(move || redis_load(redis_port, &stop, &sent))
        },
    ];
    let pgbench = dies_with_xtask(&mut pg("pgbench")?)
        .args(["-n", "-M", "prepared", "-c", "2", "-j", "1", "-R", "50"])
        .args(["-T", &(minutes * 60).to_string(), "postgres"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting pgbench")?;

    let tick_s = 1.0 / ticks_per_second();
    let mut samples = Vec::new();
    let start = Instant::now();
    let mut cpu_before = cpu_ticks(pid)?;
    let mut result = Ok(());
    for minute in 1..=minutes {
        let due = start + Duration::from_secs(60 * minute);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        if let Ok(Some(status)) = sonde.try_wait() {
            result = Err(anyhow::anyhow!("sonde exited during the soak: {status}"));
            break;
        }
        let cpu = cpu_ticks(pid)?;
        let metrics = scrape(&metrics_addr)?;
        let sample = Sample {
            minute,
            rss_kib: status_kib(pid, "VmRSS")?,
            cpu_percent: (cpu - cpu_before) as f64 * tick_s / 60.0 * 100.0,
            events: sum_metric(&metrics, "sonde_events_received_total"),
            dropped: sum_metric(&metrics, "sonde_events_dropped_total"),
            export_dropped: sum_metric(&metrics, "sonde_export_dropped_total"),
            spans_exported: sum_metric(&metrics, "sonde_spans_exported_total"),
            sink_up: sink.up.load(Ordering::Relaxed),
        };
        cpu_before = cpu;
        println!(
            "minute {:>3}: RSS {:>6.1} MiB, CPU {:>5.1} %, events {:>10}, dropped {}, spans exported {:>9}, export dropped {:>8}, collector {}",
            sample.minute,
            sample.rss_kib as f64 / 1024.0,
            sample.cpu_percent,
            sample.events,
            sample.dropped,
            sample.spans_exported,
            sample.export_dropped,
            if sample.sink_up { "up" } else { "down" }
        );
        samples.push(sample);
    }
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        let _ = l.join();
    }
    let pg_out = pgbench.wait_with_output()?;
    // Let sonde finish the calls still in flight, then count.
    std::thread::sleep(Duration::from_secs(2));
    let metrics = scrape(&metrics_addr)?;
    let peak_kib = status_kib(pid, "VmHWM").unwrap_or(0);
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = sonde.wait();
    drop(servers);
    result?;

    let pg_text = String::from_utf8_lossy(&pg_out.stdout);
    let pg_transactions: f64 = pg_text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next()?.trim().parse().ok())
        .unwrap_or(0.0);
    let counted = |name: &str, needle: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // By port: other servers on the host (a test run beside the soak) are left out.
    let http_count = counted(
        "http_client_request_duration_seconds_count",
        &format!("server_port=\"{nginx_port}\""),
    );
    let redis_count = counted(
        "db_server_operation_duration_seconds_count",
        &format!("server_port=\"{redis_port}\""),
    );
    let sent_http = http_sent.load(Ordering::Relaxed) as f64;
    let sent_redis = redis_sent.load(Ordering::Relaxed) as f64;

    let rss: Vec<u64> = samples.iter().skip(1).map(|s| s.rss_kib).collect();
    let half = rss.len() / 2;
    let first_peak = rss[..half.max(1)].iter().copied().max().unwrap_or(0) as f64;
    let second_peak = rss[half..].iter().copied().max().unwrap_or(0) as f64;
    let flat = second_peak <= first_peak * (1.0 + FLAT_TOLERANCE);
    let cpu_mean = samples.iter().map(|s| s.cpu_percent).sum::<f64>() / samples.len() as f64;
    let last = samples.last().context("no sample")?;
    let mut report = format!(
        "sonde soak: {minutes} min; OTLP collector up {SINK_UP:?} / down {SINK_DOWN:?}\n\
         minute  RSS MiB  CPU %  events received  events dropped  spans exported  export dropped  collector\n"
    );
    for s in &samples {
        report += &format!(
            "{:>6}  {:>7.1}  {:>5.1}  {:>15}  {:>14}  {:>14}  {:>14}  {}\n",
            s.minute,
            s.rss_kib as f64 / 1024.0,
            s.cpu_percent,
            s.events,
            s.dropped,
            s.spans_exported,
            s.export_dropped,
            if s.sink_up { "up" } else { "down" }
        );
    }
    report += &format!(
        "RSS peak, first half (after minute 1): {:.1} MiB; second half: {:.1} MiB; VmHWM {:.1} MiB: {}\n\
         mean CPU {cpu_mean:.1} % of one core\n\
         HTTP requests sent {sent_http}, counted by sonde {http_count}\n\
         Redis commands sent {sent_redis}, counted by sonde {redis_count}\n\
         pgbench transactions {pg_transactions}\n\
         events dropped {}, export dropped {} (collector down), spans exported {}\n",
        first_peak / 1024.0,
        second_peak / 1024.0,
        peak_kib as f64 / 1024.0,
        if flat { "flat" } else { "GREW" },
        last.dropped,
        last.export_dropped,
        last.spans_exported,
    );
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("sonde_export_dropped_total") && !l.ends_with(" 0"))
    {
        report += &format!("  {line}\n");
    }
    print!("{report}");
    std::fs::write(dir.join("report.txt"), &report)?;
    println!("report written to {}", dir.join("report.txt").display());
    if !flat {
        bail!(
            "sonde's RSS grew by more than {:.0} % between the halves of the soak",
            FLAT_TOLERANCE * 100.0
        );
    }
    if last.dropped == 0.0 && (http_count != sent_http || redis_count != sent_redis) {
        bail!("with no event dropped, sonde's counts differ from the calls made");
    }
    Ok(())
}

/// Servers stopped when the soak ends, however it ends.
#[derive(Default)]
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SIGTERM lets nginx's master stop its workers and postgres shut down.
            // SAFETY: kill(2) on children we spawned and have not reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

/// About 1,000 keep-alive GETs a second, 200 per connection, then a new connection.
fn http_load(port: u16, stop: &AtomicBool, sent: &AtomicU64) {
    let request = format!("GET /bench HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut reader = BufReader::new(stream);
        for _ in 0..200 {
            if stop.load(Ordering::Relaxed)
                || reader.get_mut().write_all(request.as_bytes()).is_err()
                || read_http_response(&mut reader).is_err()
            {
                break;
            }
            sent.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn read_http_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<()> {
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body)
}

/// Redis: a SET and a GET one at a time, then a pipeline of 10 GETs, over and over (about
/// 2,000 commands a second), a new connection every 1,000 rounds.
fn redis_load(port: u16, stop: &AtomicBool, sent: &AtomicU64) {
    let set = b"*3\r\n$3\r\nSET\r\n$4\r\nsoak\r\n$5\r\nvalue\r\n";
    let get = b"*2\r\n$3\r\nGET\r\n$4\r\nsoak\r\n";
    let pipeline: Vec<u8> = get.iter().copied().cycle().take(get.len() * 10).collect();
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut reader = BufReader::new(stream);
        for _ in 0..1000 {
            let ok = (|| -> std::io::Result<()> {
                for (bytes, replies) in [(&set[..], 1), (&get[..], 1), (&pipeline[..], 10)] {
                    reader.get_mut().write_all(bytes)?;
                    for _ in 0..replies {
                        read_resp_reply(&mut reader)?;
                    }
                    sent.fetch_add(replies, Ordering::Relaxed);
                }
                Ok(())
            })();
            if ok.is_err() || stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// One reply to SET (`+OK`) or GET (`$5` then the value).
fn read_resp_reply(reader: &mut BufReader<TcpStream>) -> std::io::Result<()> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if let Some(len) = line.strip_prefix('$') {
        if let Ok(n) = len.trim().parse::<usize>() {
            let mut value = vec![0; n + 2];
            reader.read_exact(&mut value)?;
        }
    }
    Ok(())
}

/// An OTLP/HTTP collector that answers 200 to everything and goes down (closes its port
/// and every connection) for `SINK_DOWN` after each `SINK_UP`.
struct Sink {
    port: u16,
    up: Arc<AtomicBool>,
}

impl Sink {
    fn start(stop: Arc<AtomicBool>) -> Result<Sink> {
        let port = free_port()?;
        let up = Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                flag.store(true, Ordering::Relaxed);
                let until = Instant::now() + SINK_UP;
                if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
                    let _ = listener.set_nonblocking(true);
                    let alive = Arc::new(AtomicBool::new(true));
                    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        match listener.accept() {
                            Ok((stream, _)) => {
                                let alive = alive.clone();
                                std::thread::spawn(move || answer_ok(stream, &alive));
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(20)),
                        }
                    }
                    alive.store(false, Ordering::Relaxed);
                }
                flag.store(false, Ordering::Relaxed);
                let until = Instant::now() + SINK_DOWN;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Ok(Sink { port, up })
    }
}

/// Reads each request (headers and Content-Length body) and answers 200, until `alive` goes
/// false or the peer closes.
fn answer_ok(stream: TcpStream, alive: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut reader = BufReader::new(stream);
    let mut len = 0usize;
    let mut line = String::new();
    while alive.load(Ordering::Relaxed) {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            len = 0;
            let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
            if reader.get_mut().write_all(ok).is_err() {
                return;
            }
        }
    }
}

fn scrape(addr: &str) -> Result<String> {
    let out = Command::new("curl")
        .args(["-s", &format!("http://{addr}/metrics")])
        .output()
        .context("curl /metrics")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} for pid {pid}"))
}
