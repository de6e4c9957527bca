//! `cargo xtask bench http`: wrk against nginx (keep-alive, small body) with sonde off and on,
//! interleaved in pairs so that the machine's drift hits both sides alike.
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::step;

struct WrkResult {
    rps: f64,
    requests: u64,
    p50_ms: f64,
    p99_ms: f64,
}

struct SondeUsage {
    cpu_us: f64,
    peak_rss_kib: u64,
    dropped: f64,
    spans: f64,
}

pub fn http(root: &Path, args: &[String]) -> Result<()> {
    let mut pairs = 3usize;
    let mut seconds = 10u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--pairs" => pairs = it.next().context("--pairs N")?.parse()?,
            "--seconds" => seconds = it.next().context("--seconds S")?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    if !crate::is_root() {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let mut nginx = start_nginx(&dir, port)?;
    let url = format!("http://127.0.0.1:{port}/bench");
    wait_http(&url)?;
    step(&format!(
        "wrk -t2 -c32 -d{seconds}s {url}: {pairs} pairs of sonde off/on, order alternating"
    ));
    let mut off = Vec::new();
    let mut on = Vec::new();
    let mut usage = Vec::new();
    for pair in 0..pairs {
        let order = if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_sonde in order {
            if with_sonde {
                let (r, u) = run_with_sonde(root, &url, seconds)?;
                eprintln!(
                    "    pair {pair} on : {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  sonde cpu {:.2} us/req  rss {} KiB  dropped {}  spans {}",
                    r.rps, r.p50_ms, r.p99_ms, u.cpu_us / r.requests as f64, u.peak_rss_kib, u.dropped, u.spans
                );
                on.push(r);
                usage.push(u);
            } else {
                let r = wrk(&url, seconds)?;
                eprintln!(
                    "    pair {pair} off: {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms",
                    r.rps, r.p50_ms, r.p99_ms
                );
                off.push(r);
            }
        }
    }
    // SIGTERM lets the master stop its workers; SIGKILL would orphan them on the port.
    // SAFETY: plain kill(2) on a child we spawned and have not yet reaped.
    unsafe { libc::kill(nginx.id() as i32, libc::SIGTERM) };
    let _ = nginx.wait();

    let med = |v: Vec<f64>| median(v);
    let off_rps = med(off.iter().map(|r| r.rps).collect());
    let on_rps = med(on.iter().map(|r| r.rps).collect());
    let cpu_per_req = med(on
        .iter()
        .zip(&usage)
        .map(|(r, u)| u.cpu_us / r.requests.max(1) as f64)
        .collect());
    let peak_rss = usage.iter().map(|u| u.peak_rss_kib).max().unwrap_or(0);
    let dropped: f64 = usage.iter().map(|u| u.dropped).sum();
    let report = format!(
        "sonde bench http ({pairs} pairs, {seconds}s each, medians)\n\
         throughput off  {off_rps:.0} req/s\n\
         throughput on   {on_rps:.0} req/s\n\
         ratio on/off    {:.3}\n\
         p50 off/on      {:.3} / {:.3} ms\n\
         p99 off/on      {:.3} / {:.3} ms\n\
         sonde cpu       {cpu_per_req:.2} us per request (user+system)\n\
         sonde peak rss  {:.1} MiB\n\
         events dropped  {dropped}\n",
        on_rps / off_rps,
        med(off.iter().map(|r| r.p50_ms).collect()),
        med(on.iter().map(|r| r.p50_ms).collect()),
        med(off.iter().map(|r| r.p99_ms).collect()),
        med(on.iter().map(|r| r.p99_ms).collect()),
        peak_rss as f64 / 1024.0,
    );
    print!("{report}");
    std::fs::write(dir.join("http.txt"), &report)?;
    eprintln!("(also written to target/bench/http.txt)");
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_nginx(dir: &Path, port: u16) -> Result<Child> {
    let conf = format!(
        "worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
           client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n\
           uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
           server {{\n    listen 127.0.0.1:{port};\n    location /bench {{ return 200 \"hello from nginx\\n\"; }}\n  }}\n}}\n",
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    Command::new("nginx")
        .args(["-c"])
        .arg(&path)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .spawn()
        .context("starting nginx")
}

fn wait_http(url: &str) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if Command::new("curl")
            .args(["-sf", "-o", "/dev/null", url])
            .status()
            .is_ok_and(|s| s.success())
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{url} did not answer within 20 s")
}

fn wrk(url: &str, seconds: u64) -> Result<WrkResult> {
    let out = Command::new("wrk")
        .args(["-t2", "-c32", &format!("-d{seconds}s"), "--latency", url])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let find = |prefix: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .map(|l| l[prefix.len()..].trim().to_string())
    };
    let rps: f64 = find("Requests/sec:")
        .context("wrk printed no Requests/sec")?
        .parse()?;
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .context("wrk printed no request count")?
        .parse()?;
    let p50_ms = parse_latency(&find("50%").context("wrk printed no p50")?)?;
    let p99_ms = parse_latency(&find("99%").context("wrk printed no p99")?)?;
    Ok(WrkResult {
        rps,
        requests,
        p50_ms,
        p99_ms,
    })
}

/// wrk latencies look like `512.00us`, `1.23ms`, `2.00s`.
fn parse_latency(s: &str) -> Result<f64> {
    let (num, scale) = if let Some(v) = s.strip_suffix("us") {
        (v, 1e-3)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1e3)
    } else {
        bail!("latency {s}")
    };
    Ok(num.parse::<f64>()? * scale)
}

fn run_with_sonde(root: &Path, url: &str, seconds: u64) -> Result<(WrkResult, SondeUsage)> {
    let mport = free_port()?;
    let maddr = format!("127.0.0.1:{mport}");
    let mut sonde = Command::new(root.join("target/release/sonde"))
        .args(["--quiet", "--metrics-addr", &maddr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting sonde")?;
    let pid = sonde.id();
    wait_http(&format!("http://{maddr}/readyz"))?;
    let cpu0 = cpu_ticks(pid)?;
    let r = wrk(url, seconds)?;
    let cpu1 = cpu_ticks(pid)?;
    // Let sonde drain what is left in the ring buffer before reading its counters.
    std::thread::sleep(Duration::from_millis(500));
    let metrics = Command::new("curl")
        .args(["-s", &format!("http://{maddr}/metrics")])
        .output()?;
    let metrics = String::from_utf8_lossy(&metrics.stdout).to_string();
    let peak_rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    // SAFETY: kill(2) on the child we spawned.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = sonde.wait();
    let tick_us = 1e6 / ticks_per_second();
    let usage = SondeUsage {
        cpu_us: (cpu1 - cpu0) as f64 * tick_us,
        peak_rss_kib,
        dropped: sum_metric(&metrics, "sonde_events_dropped_total"),
        spans: sum_metric(&metrics, "sonde_spans_total"),
    };
    Ok((r, usage))
}

fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("stat")? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}
