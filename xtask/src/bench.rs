//! `cargo xtask bench http | redis | postgres`: a real load generator against a real server
//! with sonde off and on, interleaved in pairs so that the machine's drift hits both sides
//! alike:
//! - http: wrk against nginx (keep-alive, small body); `--tls`: over HTTPS (nginx's TLS
//!   listener, a certificate made for the run), which sonde reads through its OpenSSL uprobes;
//! - redis: redis-benchmark SET/GET without pipelining and pipelined by 16;
//! - postgres: pgbench's tpcb-like script (7 statements per transaction).
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::step;

/// One run of a load generator.
struct LoadResult {
    /// Operations (requests, commands, statements) per second.
    rate: f64,
    ops: u64,
    /// Latency figures the generator reports, in ms (percentiles or a mean).
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    mean_ms: Option<f64>,
}

struct SondeUsage {
    cpu_us: f64,
    peak_rss_kib: u64,
    dropped: f64,
    export_dropped: f64,
    spans: f64,
    /// Events read from the ring during the load.
    events: f64,
    /// The kernel programs' run time and runs during the load (`kernel.bpf_stats_enabled`).
    kernel_ns: f64,
    kernel_runs: f64,
}

/// The four ways each round runs the load.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Arm {
    /// No sonde.
    Off,
    /// sonde with every program attached but returning at once (`SONDE_BENCH_HOOK_ONLY=1`):
    /// the cost of the hooks themselves, which no capture design can go below.
    Floor,
    /// sonde with its defaults (Prometheus, no OTLP).
    On,
    /// sonde exporting every span (`always_on`) and its metrics each 5 s over OTLP/HTTP to a
    /// sink that answers 200 (an nginx of its own, left out of the capture).
    Otlp,
}

impl Arm {
    const ALL: [Arm; 4] = [Arm::Off, Arm::Floor, Arm::On, Arm::Otlp];

    fn name(self) -> &'static str {
        match self {
            Arm::Off => "off",
            Arm::Floor => "floor",
            Arm::On => "on",
            Arm::Otlp => "on+otlp",
        }
    }
}

struct Options {
    pairs: usize,
    seconds: u64,
    /// The binary measured (`--sonde PATH`; the release build by default).
    sonde: PathBuf,
    /// Where the OTLP sink keeps its files.
    dir: PathBuf,
    /// `--inject`: every sonde arm runs with `--inject-traceparent true` (the floor's
    /// programs return at once, as the others do).
    inject: bool,
}

fn options(root: &Path, args: &[String]) -> Result<Options> {
    // Many short pairs rather than a few long ones: this machine is shared, its speed
    // drifts by more than 10 % within minutes, and only the two runs of a pair are close
    // enough in time to compare.
    let mut o = Options {
        pairs: 6,
        seconds: 5,
        sonde: root.join("target/release/sonde"),
        dir: root.join("target/bench"),
        inject: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--pairs" => o.pairs = it.next().context("--pairs N")?.parse()?,
            "--seconds" => o.seconds = it.next().context("--seconds S")?.parse()?,
            "--sonde" => o.sonde = it.next().context("--sonde PATH")?.into(),
            "--inject" => o.inject = true,
            other => bail!("unknown argument {other}"),
        }
    }
    if !crate::is_root() {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    Ok(o)
}

/// Runs `load` in `pairs` rounds of the four arms (the order rotating each round, so that
/// the machine's drift hits every arm alike) and returns the report: each arm's medians, and
/// its ratio to the same round's run without sonde.
fn compare(
    title: &str,
    unit: &str,
    o: &Options,
    load: &mut dyn FnMut() -> Result<LoadResult>,
) -> Result<String> {
    let inject = if o.inject {
        " (sonde with inject_traceparent on)"
    } else {
        ""
    };
    step(&format!(
        "{title}: {} rounds of sonde off, floor (hooks only), on, on+otlp{inject}",
        o.pairs
    ));
    let sink = Sink::start(&o.dir)?;
    let _stats = BpfStats::enable()?;
    let lat = |r: &LoadResult| match (r.p50_ms, r.p99_ms, r.mean_ms) {
        (Some(p50), Some(p99), _) => format!("p50 {p50:.3} ms  p99 {p99:.3} ms"),
        (_, _, Some(mean)) => format!("mean {mean:.3} ms"),
        _ => String::new(),
    };
    // Per arm: each round's result (and sonde's usage).
    let mut runs: [Vec<(LoadResult, Option<SondeUsage>)>; 4] = Default::default();
    for round in 0..o.pairs {
        for k in 0..Arm::ALL.len() {
            let arm = Arm::ALL[(k + round) % Arm::ALL.len()];
            let (r, u) = match arm {
                Arm::Off => (load()?, None),
                _ => {
                    let (r, u) = with_sonde_running(o, arm, sink.port, &mut *load)?;
                    (r, Some(u))
                }
            };
            let extra = u.as_ref().map_or(String::new(), |u| {
                format!(
                    "  sonde cpu {:.2} us/{unit}  rss {} KiB  dropped {}  export dropped {}  spans {}",
                    u.cpu_us / r.ops.max(1) as f64,
                    u.peak_rss_kib,
                    u.dropped,
                    u.export_dropped,
                    u.spans
                )
            });
            eprintln!(
                "    round {round} {:<8}: {:>9.0} {unit}/s  {}{extra}",
                arm.name(),
                r.rate,
                lat(&r)
            );
            runs[arm as usize].push((r, u));
        }
    }
    let off: Vec<f64> = runs[Arm::Off as usize]
        .iter()
        .map(|(r, _)| r.rate)
        .collect();
    let mut report = format!(
        "{title}{inject} ({} rounds; medians; a ratio is each round's run over the same round's run without sonde)\n\
         {:<8} {:>12} {:>22} {:>10} {:>10} {:>12} {:>10} {:>11} {:>13} {:>9} {:>8} {:>8}\n",
        o.pairs,
        "arm",
        &format!("{unit}/s"),
        "ratio (low-high)",
        "p50 ms",
        "p99 ms",
        &format!("cpu us/{unit}"),
        &format!("events/{unit}"),
        "kernel ns/run",
        "kernel ns/event",
        "rss MiB",
        "dropped",
        "export dr",
    );
    let mut ratio_of = [f64::NAN; 4];
    let mut p99_of = [f64::NAN; 4];
    for arm in Arm::ALL {
        let rs = &runs[arm as usize];
        let ratios: Vec<f64> = rs.iter().zip(&off).map(|((r, _), b)| r.rate / b).collect();
        let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        ratio_of[arm as usize] = median(ratios.clone());
        let med = |f: &dyn Fn(&LoadResult, Option<&SondeUsage>) -> Option<f64>| {
            let v: Vec<f64> = rs.iter().filter_map(|(r, u)| f(r, u.as_ref())).collect();
            if v.is_empty() {
                "-".to_string()
            } else {
                format!("{:.3}", median(v))
            }
        };
        let p99 = med(&|r, _| r.p99_ms.or(r.mean_ms));
        p99_of[arm as usize] = p99.parse().unwrap_or(f64::NAN);
        let rss = rs
            .iter()
            .filter_map(|(_, u)| u.as_ref().map(|u| u.peak_rss_kib))
            .max();
        let total = |f: fn(&SondeUsage) -> f64| -> String {
            match arm {
                Arm::Off => "-".into(),
                _ => format!(
                    "{}",
                    rs.iter()
                        .filter_map(|(_, u)| u.as_ref().map(f))
                        .sum::<f64>()
                ),
            }
        };
        report +=
            &format!(
            "{:<8} {:>12.0} {:>22} {:>10} {:>10} {:>12} {:>10} {:>11} {:>13} {:>9} {:>8} {:>8}\n",
            arm.name(),
            median(rs.iter().map(|(r, _)| r.rate).collect()),
            format!("{:.3} ({low:.3}-{high:.3})", ratio_of[arm as usize]),
            med(&|r, _| r.p50_ms.or(r.mean_ms)),
            p99,
            med(&|r, u| u.map(|u| u.cpu_us / r.ops.max(1) as f64)),
            med(&|r, u| u.map(|u| u.events / r.ops.max(1) as f64)),
            med(&|_, u| u.filter(|u| u.kernel_runs > 0.0).map(|u| u.kernel_ns / u.kernel_runs)),
            med(&|_, u| u.filter(|u| u.events > 0.0).map(|u| u.kernel_ns / u.events)),
            rss.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
            total(|u| u.dropped),
            total(|u| u.export_dropped),
        );
    }
    let floor = ratio_of[Arm::Floor as usize];
    report += &format!(
        "cost above the floor (floor ratio - arm ratio): on {:.3}, on+otlp {:.3}\n\
         p99 latency over off: floor {:.2}, on {:.2}, on+otlp {:.2}\n\
         (kernel ns/event: all programs' run time over the events shipped; in the floor arm \
         nothing is shipped)\n",
        floor - ratio_of[Arm::On as usize],
        floor - ratio_of[Arm::Otlp as usize],
        p99_of[Arm::Floor as usize] / p99_of[Arm::Off as usize],
        p99_of[Arm::On as usize] / p99_of[Arm::Off as usize],
        p99_of[Arm::Otlp as usize] / p99_of[Arm::Off as usize],
    );
    print!("{report}");
    Ok(report)
}

/// The OTLP arm's collector: an nginx answering 200 to every POST under /v1/.
struct Sink {
    port: u16,
    nginx: Child,
}

impl Sink {
    fn start(dir: &Path) -> Result<Sink> {
        let dir = dir.join("otlp-sink");
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let nginx = start_nginx(&dir, port, false)?;
        wait_http(&format!("http://127.0.0.1:{port}/bench"))?;
        Ok(Sink { port, nginx })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child we spawned and have not reaped.
        unsafe { libc::kill(self.nginx.id() as i32, libc::SIGTERM) };
        let _ = self.nginx.wait();
    }
}

/// Turns `kernel.bpf_stats_enabled` on (the kernel then times every program run) and back
/// to what it was when dropped.
struct BpfStats(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<BpfStats> {
        let before = std::fs::read_to_string(BPF_STATS).context("reading bpf_stats_enabled")?;
        std::fs::write(BPF_STATS, "1").context("turning bpf_stats_enabled on")?;
        Ok(BpfStats(before.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.0);
    }
}

/// Total run time (ns) and runs of sonde's programs, from `bpftool prog show`.
fn sonde_program_stats() -> Result<(f64, f64)> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .context("running bpftool")?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let (mut ns, mut runs) = (0.0, 0.0);
    for p in progs.as_array().into_iter().flatten() {
        if p["name"].as_str().is_some_and(|n| n.starts_with("sonde_")) {
            ns += p["run_time_ns"].as_f64().unwrap_or(0.0);
            runs += p["run_cnt"].as_f64().unwrap_or(0.0);
        }
    }
    Ok((ns, runs))
}

fn write_report(root: &Path, name: &str, report: &str) -> Result<()> {
    let path = root.join("target/bench").join(format!("{name}.txt"));
    std::fs::write(&path, report)?;
    eprintln!("(also written to target/bench/{name}.txt)");
    Ok(())
}

/// `cargo xtask bench http [--tls]`: wrk -t2 -c32 against nginx `return 200`, over HTTP or
/// HTTPS.
pub fn http(root: &Path, args: &[String]) -> Result<()> {
    let tls = args.iter().any(|a| a == "--tls");
    let rest: Vec<String> = args.iter().filter(|a| *a != "--tls").cloned().collect();
    let o = options(root, &rest)?;
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let mut nginx = start_nginx(&dir, port, tls)?;
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{port}/bench");
    wait_http(&url)?;
    let seconds = o.seconds;
    let title = format!("sonde bench http: wrk -t2 -c32 -d{seconds}s {url}");
    let report = compare(&title, "req", &o, &mut || wrk(&url, seconds));
    // SIGTERM lets the master stop its workers; SIGKILL would orphan them on the port.
    // SAFETY: plain kill(2) on a child we spawned and have not yet reaped.
    unsafe { libc::kill(nginx.id() as i32, libc::SIGTERM) };
    let _ = nginx.wait();
    let name = match (tls, o.inject) {
        (true, _) => "http-tls",
        (false, true) => "http-inject",
        (false, false) => "http",
    };
    write_report(root, name, &report?)
}

/// `cargo xtask bench redis`: redis-benchmark -c 50 -t set,get at -P 1 and -P 16 against
/// redis-server, each sized to run about `--seconds`.
pub fn redis(root: &Path, args: &[String]) -> Result<()> {
    let o = options(root, args)?;
    let dir = root.join("target/bench/redis");
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let mut server = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .context("starting redis-server")?;
    let result = (|| -> Result<String> {
        wait_for("redis-server", || {
            Command::new("redis-cli")
                .args(["-p", &port.to_string(), "ping"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
        })?;
        let mut report = String::new();
        for pipeline in [1u64, 16] {
            // Size the run from a short probe so that it lasts about `seconds`.
            let probe = redis_benchmark(port, pipeline, 20_000 * pipeline)?;
            let n = ((probe.rate * o.seconds as f64 / 2.0) as u64).max(10_000);
            let title =
                format!("sonde bench redis: redis-benchmark -c 50 -P {pipeline} -t set,get -n {n}");
            report += &compare(&title, "op", &o, &mut || redis_benchmark(port, pipeline, n))?;
            report += "\n";
        }
        Ok(report)
    })();
    let _ = server.kill();
    let _ = server.wait();
    write_report(root, "redis", &result?)
}

/// One redis-benchmark run of `n` SETs and `n` GETs; latencies are the mean of the two.
fn redis_benchmark(port: u16, pipeline: u64, n: u64) -> Result<LoadResult> {
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "50",
            "-t",
            "set,get",
            "--csv",
        ])
        .args(["-P", &pipeline.to_string(), "-n", &n.to_string()])
        .output()
        .context("running redis-benchmark")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
    // "p99_latency_ms","max_latency_ms"
    let rows: Vec<Vec<f64>> = text
        .lines()
        .filter(|l| l.starts_with("\"SET\"") || l.starts_with("\"GET\""))
        .map(|l| {
            l.split(',')
                .skip(1)
                .filter_map(|f| f.trim_matches('"').parse().ok())
                .collect()
        })
        .collect();
    if rows.len() != 2 || rows.iter().any(|r| r.len() < 6) {
        bail!("redis-benchmark printed no SET and GET results: {text}");
    }
    let seconds: f64 = rows.iter().map(|r| n as f64 / r[0]).sum();
    let mean = |i: usize| (rows[0][i] + rows[1][i]) / 2.0;
    Ok(LoadResult {
        rate: 2.0 * n as f64 / seconds,
        ops: 2 * n,
        p50_ms: Some(mean(3)),
        p99_ms: Some(mean(5)),
        mean_ms: None,
    })
}

/// `cargo xtask bench postgres`: pgbench's tpcb-like script (-c 8 -j 2, prepared
/// statements) against PostgreSQL initdb'd under target/bench and run as the postgres user.
pub fn postgres(root: &Path, args: &[String]) -> Result<()> {
    let o = options(root, args)?;
    let dir = root.join("target/bench/postgres");
    let (mut server, port) = start_postgres(&dir)?;
    let client = |program: &str| -> Result<Command> {
        let mut c = Command::new(pg_bin(program)?);
        c.args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
            .env("PGSSLMODE", "disable");
        Ok(c)
    };
    let result = (|| -> Result<String> {
        wait_for("postgres", || {
            client("pg_isready")
                .and_then(|mut c| Ok(c.arg("-q").status()?))
                .is_ok_and(|s| s.success())
        })?;
        step("pgbench -i -s 10 (1M accounts)");
        let init = client("pgbench")?
            .args(["-i", "-q", "-s", "10", "postgres"])
            .output()?;
        if !init.status.success() {
            bail!(
                "pgbench -i failed: {}",
                String::from_utf8_lossy(&init.stderr)
            );
        }
        let seconds = o.seconds.to_string();
        let title = format!(
            "sonde bench postgres: pgbench -M prepared -c 8 -j 2 -T {seconds} (tpcb-like, 7 statements per transaction)"
        );
        compare(&title, "stmt", &o, &mut || {
            let out = client("pgbench")?
                .args(["-n", "-M", "prepared", "-c", "8", "-j", "2", "-T", &seconds])
                .arg("postgres")
                .output()
                .context("running pgbench")?;
            pgbench_result(&String::from_utf8_lossy(&out.stdout))
        })
    })();
    // SIGINT: fast shutdown (clients disconnected, shared memory released).
    // SAFETY: kill(2) on the child we spawned and have not yet reaped.
    unsafe { libc::kill(server.id() as i32, libc::SIGINT) };
    let _ = server.wait();
    write_report(root, "postgres", &result?)
}

/// A fresh PostgreSQL cluster initdb'd under `dir` (emptied first), trust authentication,
/// no fsync, listening on 127.0.0.1: the server and its port.
pub(crate) fn start_postgres(dir: &Path) -> Result<(Child, String)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let (uid, gid) = postgres_user()?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    let data = dir.join("data");
    let status = Command::new(pg_bin("initdb")?)
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
        .arg(&data)
        .uid(uid)
        .gid(gid)
        .stdout(Stdio::null())
        .status()
        .context("running initdb")?;
    if !status.success() {
        bail!("initdb failed");
    }
    let port = free_port()?.to_string();
    let server = dies_with_xtask(&mut Command::new(pg_bin("postgres")?))
        .arg("-D")
        .arg(&data)
        .args(["-p", &port, "-k"])
        .arg(dir)
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .args(["-c", "synchronous_commit=off"])
        .uid(uid)
        .gid(gid)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("server.log"))?)
        .spawn()
        .context("starting postgres")?;
    Ok((server, port))
}

/// `cmd`'s process gets SIGTERM when xtask ends, however it ends (Ctrl-C included), so no
/// server of a bench or soak outlives it. Spawn it from the main thread: the signal fires
/// when the spawning thread exits.
pub(crate) fn dies_with_xtask(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        })
    }
}

/// Statements per second from pgbench's summary (tpcb-like: 7 per transaction).
fn pgbench_result(text: &str) -> Result<LoadResult> {
    let value = |prefix: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(prefix))?;
        line[prefix.len()..]
            .split(|c: char| c == '/' || c.is_whitespace())
            .find(|w| !w.is_empty())?
            .parse()
            .ok()
    };
    let tx = value("number of transactions actually processed:")
        .context(format!("pgbench printed no transaction count: {text}"))?;
    let tps = value("tps =").context("pgbench printed no tps")?;
    Ok(LoadResult {
        rate: 7.0 * tps,
        ops: 7 * tx as u64,
        p50_ms: None,
        p99_ms: None,
        mean_ms: value("latency average ="),
    })
}

/// A program of the newest PostgreSQL installed under /usr/lib/postgresql.
pub(crate) fn pg_bin(program: &str) -> Result<std::path::PathBuf> {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (cargo xtask setup installs it)")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .context("no PostgreSQL version under /usr/lib/postgresql")?;
    Ok(format!("/usr/lib/postgresql/{newest}/bin/{program}").into())
}

fn postgres_user() -> Result<(u32, u32)> {
    // SAFETY: getpwnam returns null or a pointer to static storage, read at once.
    unsafe {
        let pw = libc::getpwnam(c"postgres".as_ptr());
        if pw.is_null() {
            bail!("no postgres user (the postgresql package creates it)");
        }
        Ok(((*pw).pw_uid, (*pw).pw_gid))
    }
}

pub(crate) fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} was not ready within 30 s")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// nginx on `port`; with `tls`, an HTTPS listener with a certificate made here.
pub(crate) fn start_nginx(dir: &Path, port: u16, tls: bool) -> Result<Child> {
    let listen = if tls {
        let (cert, key) = (dir.join("bench-cert.pem"), dir.join("bench-key.pem"));
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .context("running openssl")?;
        if !made.success() {
            bail!("openssl could not make a certificate");
        }
        format!(
            "listen 127.0.0.1:{port} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};",
            cert.display(),
            key.display()
        )
    } else {
        format!("listen 127.0.0.1:{port};")
    };
    let conf = format!(
        "worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
           client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n\
           uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
           server {{\n    {listen}\n    location /bench {{ return 200 \"hello from nginx\\n\"; }}\n\
             location /v1/ {{ client_max_body_size 0; return 200; }}\n  }}\n}}\n",
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    dies_with_xtask(
        Command::new("nginx")
            .args(["-c"])
            .arg(&path)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null()),
    )
    .spawn()
    .context("starting nginx")
}

pub(crate) fn wait_http(url: &str) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if Command::new("curl")
            .args(["-sfk", "-o", "/dev/null", url])
            .status()
            .is_ok_and(|s| s.success())
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{url} did not answer within 20 s")
}

fn wrk(url: &str, seconds: u64) -> Result<LoadResult> {
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
    Ok(LoadResult {
        rate: rps,
        ops: requests,
        p50_ms: Some(p50_ms),
        p99_ms: Some(p99_ms),
        mean_ms: None,
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

/// Starts sonde (quiet, no span printing) as `arm` runs it, runs `load`, and reads sonde's
/// CPU time, peak RSS, counters and its programs' kernel time over the load.
fn with_sonde_running(
    o: &Options,
    arm: Arm,
    sink_port: u16,
    load: &mut dyn FnMut() -> Result<LoadResult>,
) -> Result<(LoadResult, SondeUsage)> {
    let mport = free_port()?;
    let maddr = format!("127.0.0.1:{mport}");
    let mut cmd = Command::new(&o.sonde);
    dies_with_xtask(&mut cmd);
    cmd.args(["--quiet", "--metrics-addr", &maddr])
        .args(["--inject-traceparent", &o.inject.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match arm {
        Arm::Floor => {
            cmd.env("SONDE_BENCH_HOOK_ONLY", "1");
        }
        Arm::Otlp => {
            cmd.env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{sink_port}"),
            )
            .env("OTEL_TRACES_SAMPLER", "always_on")
            .env("OTEL_METRIC_EXPORT_INTERVAL", "5000")
            .args(["--exclude", &format!("port={sink_port}")]);
        }
        Arm::Off | Arm::On => {}
    }
    let mut sonde = cmd.spawn().context("starting sonde")?;
    let pid = sonde.id();
    wait_http(&format!("http://{maddr}/readyz"))?;
    let scrape = || -> Result<String> {
        let out = Command::new("curl")
            .args(["-s", &format!("http://{maddr}/metrics")])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    };
    let events0 = sum_metric(&scrape()?, "sonde_events_received_total");
    let (ns0, runs0) = sonde_program_stats()?;
    let cpu0 = cpu_ticks(pid)?;
    let r = load()?;
    let cpu1 = cpu_ticks(pid)?;
    let (ns1, runs1) = sonde_program_stats()?;
    // Let sonde drain what is left in the ring buffer before reading its counters.
    std::thread::sleep(Duration::from_millis(500));
    let metrics = scrape()?;
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
        export_dropped: sum_metric(&metrics, "sonde_export_dropped_total"),
        spans: sum_metric(&metrics, "sonde_spans_total"),
        events: sum_metric(&metrics, "sonde_events_received_total") - events0,
        kernel_ns: ns1 - ns0,
        kernel_runs: runs1 - runs0,
    };
    Ok((r, usage))
}

pub(crate) fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// utime + stime of a process, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("stat")? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

pub(crate) fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}
