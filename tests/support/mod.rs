//! Shared fixtures for the integration tests: the real sonde binary, real servers, and
//! helpers to wait for spans and read metrics.
//!
//! Every child process is started with PR_SET_PDEATHSIG from one long-lived spawner thread,
//! so servers and sonde die with the test binary even when a test fails.
pub mod collector;
pub mod pki;
pub mod promql;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// The release binary every test shares (built by `cargo xtask test`).
pub fn sonde_bin() -> PathBuf {
    let p = match std::env::var_os("SONDE_BIN") {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join("target/release/sonde"),
    };
    let p = if p.is_relative() {
        workspace_root().join(p)
    } else {
        p
    };
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask test` (it builds it first)",
        p.display()
    );
    p
}

type SpawnRequest = (Command, Sender<std::io::Result<Child>>);

/// Spawns `cmd` so that it receives SIGTERM when this test binary exits.
pub fn spawn_owned(mut cmd: Command) -> Child {
    static SPAWNER: OnceLock<Mutex<Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = channel::<SpawnRequest>();
        // PDEATHSIG fires when the spawning *thread* ends, so one thread that lives as long
        // as the process does all the spawning.
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                        Ok(())
                    });
                }
                let _ = reply.send(cmd.spawn());
            }
        });
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = channel();
    cmd.stdin(Stdio::null());
    // Tests run several sondes at once, each counting its own marked traffic: the
    // one-sonde-per-host guard is off for them, except where a test sets it.
    if !cmd.get_envs().any(|(k, _)| k == "SONDE_SINGLE_INSTANCE") {
        cmd.env("SONDE_SINGLE_INSTANCE", "false");
    }
    tx.lock()
        .unwrap()
        .send((cmd, reply_tx))
        .expect("spawner alive");
    reply_rx
        .recv()
        .expect("spawner replied")
        .expect("spawn failed")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A self-signed certificate and its key (for 127.0.0.1), made with openssl in `dir`:
/// (certificate, key) as paths.
pub fn self_signed_certificate(dir: &Path) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    (cert.display().to_string(), key.display().to_string())
}

pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sonde-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Waits until `url` answers 200, or panics after `secs`.
/// Debian bullseye's OpenSSL 1.1 (`usr/bin/openssl`, `usr/lib/x86_64-linux-gnu/libssl.so.1.1`),
/// unpacked by `cargo xtask setup` under `~/.cache/sonde/openssl-1.1`.
pub fn openssl_1_1() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let dir = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache"))
        .join("sonde/openssl-1.1");
    assert!(
        dir.join(".complete").exists(),
        "{} is missing: `cargo xtask setup` fetches it",
        dir.display()
    );
    dir
}

/// Waits until something accepts connections on 127.0.0.1:`port` (20 s at most).
pub fn wait_port(port: u16, what: &str) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn wait_http_ok(host_port: &str, path: &str, secs: u64) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if http_get(host_port, path).is_some_and(|(status, _)| status == 200) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("http://{host_port}{path} did not answer 200 within {secs}s");
}

/// A minimal blocking GET (used for sonde's own endpoint): (status, body).
pub fn http_get(host_port: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(host_port).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Held by tests of one file that must not run at the same time (each sonde sees every
/// process on the host, so one test's traffic would land in another's metrics).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running sonde with `--print-spans json`, its spans collected as they arrive.
pub struct Sonde {
    pub pid: u32,
    pub metrics_addr: String,
    spans: Arc<Mutex<Vec<Value>>>,
    logs: Arc<Mutex<String>>,
    child: Child,
}

impl Sonde {
    pub fn start() -> Sonde {
        Sonde::start_with(&[])
    }

    /// sonde with extra flags (for example a larger ring for burst tests).
    pub fn start_with(extra: &[&str]) -> Sonde {
        Sonde::start_with_env(extra, &[])
    }

    /// sonde with extra flags and environment variables (OTEL_* for the OTLP tests).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Sonde {
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(sonde_bin());
        cmd.args(["--print-spans", "json", "--metrics-addr", &metrics_addr])
            .args(extra)
            .envs(env.iter().copied());
        Sonde::spawn(cmd, metrics_addr)
    }

    /// sonde as `cmd` starts it (an installed binary, a container), which must make it print
    /// spans as JSON on stdout and serve /metrics at `metrics_addr`.
    pub fn spawn(mut cmd: Command, metrics_addr: String) -> Sonde {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = spawn_owned(cmd);
        let stdout = child.stdout.take().unwrap();
        // The log lines pass through to the test's output and are kept for `logs()`.
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let kept = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                let mut kept = kept.lock().unwrap();
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => sink.lock().unwrap().push(v),
                    Err(e) => panic!("sonde printed a line that is not JSON ({e}): {line}"),
                }
            }
        });
        wait_http_ok(&metrics_addr, "/readyz", 60);
        Sonde {
            pid: child.id(),
            metrics_addr,
            spans,
            logs,
            child,
        }
    }

    /// kill -9, as a crash or the OOM killer would end it; waits until it is gone.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops sonde (SIGSTOP) until `resume`: what happens meanwhile waits in its ring.
    pub fn pause(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child's.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGSTOP) },
            0
        );
    }

    pub fn resume(&mut self) {
        // SAFETY: as in `pause`.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) },
            0
        );
    }

    /// What sonde logged so far (its stderr).
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits (20 s at most) until sonde's log holds `needle`: for instance that it attached
    /// its TLS uprobes to a new process's library before the test sends traffic.
    pub fn wait_log(&self, needle: &str) {
        let start = Instant::now();
        while !self.logs().contains(needle) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "sonde did not log {needle:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Spans for which `pred` holds, right now.
    pub fn spans(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| pred(s))
            .cloned()
            .collect()
    }

    /// Waits until at least `n` spans match (or 20 s pass), then a little longer so that any
    /// extra span would show up too, and returns all matches.
    pub fn wait_spans(&self, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let start = Instant::now();
        // Only spans that arrived since the last look are tested: a scan of hundreds of
        // thousands of spans under the lock would starve the reader thread, and with it
        // sonde's stdout.
        let (mut checked, mut matched) = (0, 0);
        while start.elapsed() < Duration::from_secs(20) {
            {
                let spans = self.spans.lock().unwrap();
                matched += spans[checked..].iter().filter(|s| pred(s)).count();
                checked = spans.len();
            }
            if matched >= n {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        let found = self.spans(&pred);
        if found.len() < n {
            eprintln!(
                "wait_spans: {} of {n} spans after 20 s; what sonde sent and counted:\n{}",
                found.len(),
                self.diagnosis()
            );
        }
        found
    }

    /// What to look at when spans are missing: every span received so far, counted by
    /// kind, service and port, and sonde's counters of what it dropped, could not read or
    /// linked.
    pub fn diagnosis(&self) -> String {
        let mut by_kind: std::collections::BTreeMap<String, usize> = Default::default();
        for s in self.spans.lock().unwrap().iter() {
            let key = format!(
                "{} service={} server.port={} scheme={}",
                kind(s),
                s["service.name"].as_str().unwrap_or("?"),
                s["attributes"]["server.port"],
                attr(s, "url.scheme").unwrap_or_default(),
            );
            *by_kind.entry(key).or_default() += 1;
        }
        let mut out: Vec<String> = by_kind
            .into_iter()
            .map(|(k, n)| format!("  {n} x {k}"))
            .collect();
        let metrics = http_get(&self.metrics_addr, "/metrics").map(|(_, b)| b);
        for line in metrics.unwrap_or_default().lines() {
            let counted = [
                "sonde_events",
                "sonde_tls",
                "sonde_trace_links",
                "sonde_parse",
                "sonde_conn",
            ];
            if !line.starts_with('#') && counted.iter().any(|c| line.starts_with(c)) {
                out.push(format!("  {line}"));
            }
        }
        out.join("\n")
    }

    pub fn metrics(&self) -> Metrics {
        let (status, body) =
            http_get(&self.metrics_addr, "/metrics").expect("metrics endpoint answers");
        assert_eq!(status, 200);
        Metrics(body)
    }
}

/// A test's sonde stops with the test (SIGTERM, as systemd stops it): the sondes of earlier
/// tests would otherwise keep scanning /proc and slow the next ones down.
impl Drop for Sonde {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return; // already exited and reaped: its pid may be another process's now
        }
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One scrape of sonde's /metrics.
pub struct Metrics(pub String);

impl Metrics {
    /// Sum of the samples named `name` whose labels include every pair in `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                // An exemplar follows " # " after the value.
                let l = l.split(" # ").next().unwrap_or(l);
                let (series, value) = l.rsplit_once(' ')?;
                let (n, lbls) = match series.split_once('{') {
                    Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
                    None => (series, HashMap::new()),
                };
                if n != name
                    || !labels
                        .iter()
                        .all(|(k, v)| lbls.get(*k).map(String::as_str) == Some(*v))
                {
                    return None;
                }
                value.parse::<f64>().ok()
            })
            .sum()
    }
}

/// The labels of an exposition line's `{...}` (without the braces).
pub fn parse_labels(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once("=\"") {
        let Some(end) = after.find('"') else { break };
        out.insert(
            k.trim_start_matches(',').trim().to_string(),
            after[..end].to_string(),
        );
        rest = &after[end + 1..];
    }
    out
}

/// A span's attribute as a string (numbers are rendered).
pub fn attr(span: &Value, key: &str) -> Option<String> {
    match span.get("attributes")?.get(key)? {
        Value::String(s) => Some(s.clone()),
        v => Some(v.to_string()),
    }
}

pub fn kind(span: &Value) -> &str {
    span["kind"].as_str().unwrap_or("")
}

pub fn path_starts(span: &Value, prefix: &str) -> bool {
    attr(span, "url.path").is_some_and(|p| p.starts_with(prefix))
}

/// nginx in the foreground on the given ports with `locations` inside its server block.
pub struct Nginx {
    pub port: u16,
    pub pid: u32,
    _child: Child,
}

impl Nginx {
    /// (nginx overwrites its environment area for its process title, so an OTEL_SERVICE_NAME
    /// given to it cannot be read back from /proc: its service name is its executable, nginx.)
    pub fn start(name: &str, listen: &[String], port: u16, locations: &str) -> Nginx {
        let dir = tempdir(name);
        let d = dir.display();
        let listens: String = listen
            .iter()
            .map(|l| format!("    listen {l};\n"))
            .collect();
        let conf = format!(
            "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 100000;\n  sendfile on;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n{listens}    root {d}/www;\n{locations}\n  }}\n}}\n"
        );
        Nginx::run(&dir, &conf, port)
    }

    /// Writes `conf` into `dir` (with an empty `www`), starts nginx on it and waits for `port`.
    fn run(dir: &Path, conf: &str, port: u16) -> Nginx {
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut cmd = Command::new("nginx");
        cmd.arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"]);
        let child = spawn_owned(cmd);
        wait_port(port, &format!("nginx (see {}/error.log)", dir.display()));
        Nginx {
            port,
            pid: child.id(),
            _child: child,
        }
    }

    pub fn www(&self, name: &str) -> PathBuf {
        tempdir_path(name).join("www")
    }
}

fn tempdir_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("sonde-test-{}-{name}", std::process::id()))
}

/// Runs a command to completion and returns its stdout; panics if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// redis-server on loopback, without persistence, in a temporary directory.
pub struct Redis {
    pub port: u16,
    _child: Child,
}

impl Redis {
    pub fn start(name: &str) -> Redis {
        let dir = tempdir(name);
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir"])
        .arg(&dir)
        .stdout(Stdio::null());
        let mut child = spawn_owned(cmd);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            let ok = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "ping"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"));
            if ok {
                return Redis {
                    port,
                    _child: child,
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not answer PING on port {port}");
    }

    /// redis-cli against this server with `args`.
    pub fn cli(&self, args: &[&str]) -> String {
        run(Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args))
    }
}

/// PostgreSQL (the newest major version installed under /usr/lib/postgresql) in a temporary
/// directory: initdb'd and run as the `postgres` user, on loopback only, trust
/// authentication, no fsync. `extra` are more `-c name=value` server settings.
pub struct Postgres {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl Postgres {
    pub fn start(name: &str, extra: &[&str]) -> Postgres {
        let dir = tempdir(name);
        let (uid, gid) = postgres_user();
        chown_to_postgres(&dir);
        let data = dir.join("data");
        let mut initdb = Command::new(Postgres::bin("initdb"));
        initdb
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .args(["--locale", "C", "-D"])
            .arg(&data)
            .uid(uid)
            .gid(gid)
            .stdout(Stdio::null());
        run(&mut initdb);
        let port = free_port();
        let mut cmd = Command::new(Postgres::bin("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "max_connections=50"]);
        for setting in extra {
            cmd.args(["-c", setting]);
        }
        cmd.uid(uid)
            .gid(gid)
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("server.log")).unwrap());
        let child = spawn_owned(cmd);
        let pg = Postgres { port, dir, child };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            let ready = Command::new(Postgres::bin("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .env("PGSSLMODE", "disable")
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return pg;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(pg.dir.join("server.log")).unwrap_or_default();
        panic!("postgres did not accept connections on port {port}: {log}");
    }

    /// A program of the newest installed PostgreSQL.
    pub fn bin(program: &str) -> PathBuf {
        let newest = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed (cargo xtask setup installs it)")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .max()
            .expect("a PostgreSQL version under /usr/lib/postgresql");
        PathBuf::from(format!("/usr/lib/postgresql/{newest}/bin/{program}"))
    }

    /// `program` (psql, pgbench, ...) with host, port and user set, TLS not attempted.
    pub fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(Postgres::bin(program));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ])
        .env("PGSSLMODE", "disable");
        cmd
    }

    /// Runs `sql` through psql in `db` (stopping at the first error); returns its output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        run(self.client("psql").args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            db,
            "-c",
            sql,
        ]))
    }

    /// A new database with pgbench's tables (scale 1), copied from a template that
    /// `pgbench -i` filled once: no statement of the set-up runs in the new database.
    pub fn pgbench_db(&self, db: &str) {
        // The servers (by port) whose template is filled.
        static FILLED: Mutex<Vec<u16>> = Mutex::new(Vec::new());
        let mut filled = FILLED.lock().unwrap_or_else(|e| e.into_inner());
        if !filled.contains(&self.port) {
            self.psql("postgres", "CREATE DATABASE pgbench_template");
            run(self
                .client("pgbench")
                .args(["-i", "-q", "-s", "1", "pgbench_template"]));
            filled.push(self.port);
        }
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {db} TEMPLATE pgbench_template"),
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Fast shutdown: clients are disconnected, shared memory is released.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Gives a file or directory this test created to the `postgres` user.
pub fn chown_to_postgres(path: &Path) {
    let (uid, gid) = postgres_user();
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// Uid and gid of the `postgres` user (the server refuses to run as root).
fn postgres_user() -> (u32, u32) {
    // SAFETY: getpwnam returns a pointer to static storage or null; read at once.
    unsafe {
        let pw = libc::getpwnam(c"postgres".as_ptr());
        assert!(
            !pw.is_null(),
            "no postgres user (the postgresql package creates it)"
        );
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

/// The cgroup directory standing in for the container: the v1 `pids` hierarchy where the
/// host has one, else a cgroup2 scope as docker's systemd driver names it.
fn container_cgroup(id: &str) -> PathBuf {
    let v1 = PathBuf::from("/sys/fs/cgroup/pids");
    let dir = if v1.join("cgroup.procs").exists() {
        v1.join("docker").join(id)
    } else {
        PathBuf::from(format!("/sys/fs/cgroup/docker-{id}.scope"))
    };
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    dir
}

/// Runs `command` (a shell command line) inside a stand-in container with this id (64 hex
/// digits): a cgroup named as docker names it, so /proc/PID/cgroup shows the id.
pub fn in_container(id: &str, command: &str) -> String {
    let procs = container_cgroup(id).join("cgroup.procs");
    let script = format!("echo $$ > {} && exec {command}", procs.display());
    run(Command::new("sh").args(["-c", &script]))
}

/// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`): sonde's resident memory now and
/// at its peak.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

impl Metrics {
    /// Every sample of the counter `name`, by the value of its label `label` (and of
    /// `label2` when given, joined by '/').
    pub fn by_label(&self, name: &str, label: &str, label2: Option<&str>) -> HashMap<String, f64> {
        let mut out = HashMap::new();
        for l in self.0.lines().filter(|l| !l.starts_with('#')) {
            let l = l.split(" # ").next().unwrap_or(l);
            let Some((series, value)) = l.rsplit_once(' ') else {
                continue;
            };
            let Some((n, rest)) = series.split_once('{') else {
                continue;
            };
            if n != name {
                continue;
            }
            let lbls = parse_labels(rest.trim_end_matches('}'));
            let mut key = lbls.get(label).cloned().unwrap_or_default();
            if let Some(l2) = label2 {
                key = format!("{key}/{}", lbls.get(l2).cloned().unwrap_or_default());
            }
            *out.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
        out
    }
}

impl Nginx {
    /// nginx as `start` runs it, for `connections` concurrent keep-alive connections (its
    /// `worker_connections` and `worker_rlimit_nofile`; keep-alive for 300 s).
    pub fn start_for(name: &str, port: u16, locations: &str, connections: u32) -> Nginx {
        let dir = tempdir(name);
        let d = dir.display();
        let conf = format!(
            "user root;\nworker_processes 1;\nworker_rlimit_nofile {};\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections {}; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 100000;\n  keepalive_timeout 300s;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    root {d}/www;\n{locations}\n  }}\n}}\n",
            connections + 1000,
            // nginx closes idle keep-alive connections once fewer than 1/16 of its
            // connections are free: twice as many as needed keeps it from that.
            connections * 2,
        );
        Nginx::run(&dir, &conf, port)
    }
}

/// Raises this process's open-file limit to at least `n` (the soft limit up to the hard one,
/// and the hard one where sonde's privileges allow); children inherit it.
pub fn raise_nofile(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the struct passed, nothing else.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur >= n {
            return;
        }
        let wanted = libc::rlimit {
            rlim_cur: n,
            rlim_max: lim.rlim_max.max(n),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
            // No CAP_SYS_RESOURCE (a container): as far as the hard limit goes.
            lim.rlim_cur = lim.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
            assert!(
                lim.rlim_cur >= n,
                "open files: need {n}, the hard limit is {}",
                lim.rlim_max
            );
        }
    }
}
