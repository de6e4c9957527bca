//! One connection whose writes and reads are made by two threads pinned to different CPUs,
//! with many small pipelined requests (HTTP to nginx) and commands (Redis): the kernel
//! ships the two directions' events from two CPUs, and every call must still be paired
//! right, on both sides. Paths and commands alternate between two outcomes, so a call
//! paired with its neighbour's answer shows the wrong one.
use std::process::Command;

use serde_json::Value;
use sonde_tests::*;

/// Pins a writer thread to CPU 0 and a reader thread to CPU 1 on one connection to
/// 127.0.0.1:PORT. The writer sends N messages, BATCH per `sendall`, at most 16 ahead of
/// the answers, so that no read returns more than the 4 KiB sonde copies of each (the
/// answers in bytes not copied cannot be counted: see docs/architecture.md); the reader
/// reads until it has N answers.
const PINNED: &str = r#"
import os, socket, sys, threading
port, n, batch, kind = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if kind == 'http':
    def message(i):
        path = f'/ok/{i}' if i % 2 == 0 else f'/nf/{i}'
        return f'GET {path} HTTP/1.1\r\nHost: pinned\r\n\r\n'.encode()
    def answers(buf):
        return buf.count(b'HTTP/1.1 ')
else:
    def message(i):
        if i % 2 == 0:
            return b'*2\r\n$3\r\nGET\r\n$3\r\nval\r\n'
        return b'*2\r\n$4\r\nINCR\r\n$3\r\nval\r\n'
    def answers(buf):
        return buf.count(b'\r\n$5\r\nhello\r\n') + buf.count(b'-ERR')
s = socket.create_connection(('127.0.0.1', port))
if kind == 'redis':
    s.sendall(b'*3\r\n$3\r\nSET\r\n$3\r\nval\r\n$5\r\nhello\r\n')
    assert s.recv(16) == b'+OK\r\n'
window = threading.Semaphore(16)
def write():
    os.sched_setaffinity(0, {0})
    for start in range(0, n, batch):
        end = min(n, start + batch)
        for _ in range(start, end):
            window.acquire()
        s.sendall(b''.join(message(i) for i in range(start, end)))
def read():
    os.sched_setaffinity(0, {1})
    buf, seen = b'', 0
    while seen < n:
        chunk = s.recv(65536)
        assert chunk, 'closed early'
        buf += chunk
        now = answers(b'\r\n' + buf)
        for _ in range(now - seen):
            window.release()
        seen = now
    print(seen)
threads = [threading.Thread(target=f) for f in (write, read)]
for t in threads: t.start()
for t in threads: t.join()
"#;

fn run_pinned(port: u16, n: usize, batch: usize, kind: &str) {
    let out = run(Command::new("python3")
        .args(["-c", PINNED])
        .args([port.to_string(), n.to_string(), batch.to_string()])
        .arg(kind)
        .env("OTEL_SERVICE_NAME", format!("pinned-{kind}")));
    assert_eq!(out.trim(), n.to_string(), "{kind} answers");
}

/// Waits for `n` client and `n` server spans that are `ours`, and checks each has the outcome
/// its call always has (`expected` of its `what` attribute).
fn assert_paired_right(
    sonde: &Sonde,
    n: usize,
    ours: impl Fn(&Value) -> bool,
    what: &str,
    outcome: impl Fn(&Value) -> Option<String>,
    expected: impl Fn(&str) -> &'static str,
) {
    let client = sonde.wait_spans(n, |s| kind(s) == "CLIENT" && ours(s));
    let server = sonde.wait_spans(n, |s| kind(s) == "SERVER" && ours(s));
    assert_eq!(
        (client.len(), server.len()),
        (n, n),
        "{}",
        sonde.diagnosis()
    );
    let wrong: Vec<(String, String, Option<String>)> = client
        .iter()
        .chain(&server)
        .filter_map(|s| {
            let w = attr(s, what).unwrap_or_default();
            let got = outcome(s);
            (got.as_deref() != Some(expected(&w))).then(|| (kind(s).to_string(), w, got))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} mispaired: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
}

#[test]
fn http_calls_written_and_read_on_two_cpus_pair_right() {
    let _serial = serial();
    let port = free_port();
    let _nginx = Nginx::start(
        "pinned-http",
        &[format!("127.0.0.1:{port}")],
        port,
        "location /ok/ { return 200 \"ok\\n\"; } location /nf/ { return 404; }",
    );
    let sonde = Sonde::start();
    let n = 4000;
    run_pinned(port, n, 8, "http");
    let ours = |s: &Value| path_starts(s, "/ok/") || path_starts(s, "/nf/");
    let status = |s: &Value| attr(s, "http.response.status_code");
    let expected = |path: &str| {
        if path.starts_with("/ok/") {
            "200"
        } else {
            "404"
        }
    };
    assert_paired_right(&sonde, n, ours, "url.path", status, expected);
}

#[test]
fn redis_commands_written_and_read_on_two_cpus_pair_right() {
    let _serial = serial();
    let redis = Redis::start("pinned-redis");
    let sonde = Sonde::start();
    let n = 8000;
    run_pinned(redis.port, n, 16, "redis");
    let port = redis.port.to_string();
    let ours = |s: &Value| {
        attr(s, "server.port").as_deref() == Some(port.as_str())
            && matches!(
                attr(s, "db.operation.name").as_deref(),
                Some("GET" | "INCR")
            )
    };
    let error = |s: &Value| Some(attr(s, "error.type").unwrap_or_else(|| "none".into()));
    let expected = |op: &str| if op == "GET" { "none" } else { "ERR" };
    assert_paired_right(&sonde, n, ours, "db.operation.name", error, expected);
}
