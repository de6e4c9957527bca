//! Shared fixtures for the integration tests: the real sonde binary, real servers, and
//! helpers to wait for spans and read metrics.
//!
//! Every child process is started with PR_SET_PDEATHSIG from one long-lived spawner thread,
//! so servers and sonde die with the test binary even when a test fails.
use std::collections::HashMap;
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

pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sonde-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Waits until `url` answers 200, or panics after `secs`.
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

/// A running sonde with `--print-spans json`, its spans collected as they arrive.
pub struct Sonde {
    pub pid: u32,
    pub metrics_addr: String,
    spans: Arc<Mutex<Vec<Value>>>,
    _child: Child,
}

impl Sonde {
    pub fn start() -> Sonde {
        Sonde::start_with(&[])
    }

    /// sonde with extra flags (for example a larger ring for burst tests).
    pub fn start_with(extra: &[&str]) -> Sonde {
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(sonde_bin());
        cmd.args(["--print-spans", "json", "--metrics-addr", &metrics_addr])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = spawn_owned(cmd);
        let stdout = child.stdout.take().unwrap();
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
            _child: child,
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
        self.spans(&pred)
    }

    pub fn metrics(&self) -> Metrics {
        let (status, body) =
            http_get(&self.metrics_addr, "/metrics").expect("metrics endpoint answers");
        assert_eq!(status, 200);
        Metrics(body)
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

fn parse_labels(s: &str) -> HashMap<String, String> {
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
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut cmd = Command::new("nginx");
        cmd.arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"]);
        let child = spawn_owned(cmd);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nginx did not start; see {d}/error.log"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
