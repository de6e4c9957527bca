//! Events lost to a full ring buffer: counted, and no call paired across the hole. sonde
//! runs with a 1 MiB ring and is stopped (SIGSTOP) while a client makes a burst of calls on
//! one connection whose answers are about 3 KB: the ring fills and the rest of the burst is
//! lost in the middle of the connection. Once sonde runs again, the same connection's next
//! calls must be paired exactly, on both sides: a span that paired a request with the
//! response of another would show a path (HTTP) or a command (Redis) with the wrong
//! outcome.
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sonde_tests::collector::{HttpCollector, ReceivedSpan};
use sonde_tests::*;

/// A client on one keep-alive connection: each line `PHASE N` on its stdin makes N requests,
/// alternately `/ok/PHASE-I` (200) and `/nf/PHASE-I` (404), and answers `done`.
const CLIENT: &str = r#"
import http.client, sys
c = http.client.HTTPConnection('127.0.0.1', int(sys.argv[1]))
for line in sys.stdin:
    phase, n = line.split()
    for i in range(int(n)):
        kind = 'ok' if i % 2 == 0 else 'nf'
        c.request('GET', f'/{kind}/{phase}-{i}')
        r = c.getresponse()
        r.read()
        assert r.status == (200 if kind == 'ok' else 404), r.status
    print('done', flush=True)
"#;

/// The path's phase (`a`, `b`, `c`), if the span is one of the client's calls.
fn phase(span: &Value) -> Option<String> {
    let path = attr(span, "url.path")?;
    let rest = path
        .strip_prefix("/ok/")
        .or_else(|| path.strip_prefix("/nf/"))?;
    Some(rest.split('-').next()?.to_string())
}

/// The status the server gives the span's path.
fn expected_status(span: &Value) -> String {
    let path = attr(span, "url.path").unwrap_or_default();
    if path.starts_with("/ok/") {
        "200"
    } else {
        "404"
    }
    .to_string()
}

/// The events that did not fit the ring, as sonde counts them; none of them may be counted
/// as a probation refusal too.
fn ring_losses(sonde: &Sonde) -> f64 {
    let metrics = sonde.metrics();
    let refused = metrics.sum(
        "sonde_events_dropped_total",
        &[("reason", "probation_limit")],
    );
    assert_eq!(
        refused, 0.0,
        "a ring loss is not counted as a probation refusal"
    );
    metrics.sum("sonde_events_dropped_total", &[("reason", "ringbuf_full")])
}

#[test]
fn a_full_ring_is_counted_and_pairing_resumes_after_the_hole() {
    let _serial = serial();
    let port = free_port();
    let body = "x".repeat(3000);
    let _nginx = Nginx::start(
        "loss",
        &[format!("127.0.0.1:{port}")],
        port,
        &format!("location /ok/ {{ return 200 \"{body}\"; }} location /nf/ {{ return 404; }}"),
    );
    let mut sonde = Sonde::start_with(&["--ring-buffer-mib", "1"]);
    // Not `spawn_owned`, which gives no stdin: the client ends when its stdin does, with
    // the test.
    let mut client = Command::new("python3")
        .args(["-c", CLIENT, &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    let mut stdout = BufReader::new(client.stdout.take().unwrap());
    let mut run = |phase: &str, n: usize| {
        writeln!(stdin, "{phase} {n}").unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "done", "phase {phase}");
    };
    let of_phase = |p: &'static str| move |s: &Value| phase(s).as_deref() == Some(p);
    let client_of = |p: &'static str| move |s: &Value| kind(s) == "CLIENT" && of_phase(p)(s);
    let server_of = |p: &'static str| move |s: &Value| kind(s) == "SERVER" && of_phase(p)(s);

    run("a", 10);
    assert_eq!(sonde.wait_spans(10, client_of("a")).len(), 10);
    assert_eq!(sonde.wait_spans(10, server_of("a")).len(), 10);

    // The burst: about 4 events and 6.5 KB captured per request, 3.9 MB in all.
    sonde.pause();
    run("b", 600);
    sonde.resume();
    // Let sonde drain what the ring held before the connection goes on.
    std::thread::sleep(Duration::from_secs(2));
    run("c", 10);
    let after_client = sonde.wait_spans(10, client_of("c"));
    let after_server = sonde.wait_spans(10, server_of("c"));

    let dropped = ring_losses(&sonde);
    let all = sonde.spans(|s| phase(s).is_some());
    let burst = all.iter().filter(|s| of_phase("b")(s)).count();
    eprintln!("ringbuf_full {dropped}, spans of the burst {burst} (of 1200, both sides)");
    assert!(dropped > 0.0, "the ring never filled: no loss to test");
    assert!(burst < 1200, "nothing of the burst was lost");
    // After the hole, every call of the connection is there once, on both sides.
    for (side, spans) in [("client", &after_client), ("server", &after_server)] {
        let mut paths: Vec<String> = spans.iter().map(|s| attr(s, "url.path").unwrap()).collect();
        paths.sort();
        let mut expected: Vec<String> = (0..10)
            .map(|i| format!("/{}/c-{i}", if i % 2 == 0 { "ok" } else { "nf" }))
            .collect();
        expected.sort();
        assert_eq!(paths, expected, "{side} spans after the hole");
    }
    // No call anywhere, before, in or after the burst, was paired with another's response.
    let mispaired: Vec<(String, String, Option<String>)> = all
        .iter()
        .filter(|s| attr(s, "http.response.status_code") != Some(expected_status(s)))
        .map(|s| {
            (
                kind(s).to_string(),
                attr(s, "url.path").unwrap_or_default(),
                attr(s, "http.response.status_code"),
            )
        })
        .collect();
    assert!(
        mispaired.is_empty(),
        "paired across the hole: {mispaired:?}"
    );
    drop(stdin);
    let _ = client.wait();
}

/// A Redis client on one connection: each line `OK_COMMAND ERROR_COMMAND N` on its stdin
/// sends N commands, alternately OK_COMMAND on the 3,000-byte string `big` (answered with
/// its value or its length) and ERROR_COMMAND on it (answered with an error), and answers
/// `done`.
const REDIS_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))
f = s.makefile('rb')
def call(*args):
    s.sendall(b'*%d\r\n' % len(args) + b''.join(b'$%d\r\n%s\r\n' % (len(a), a) for a in args))
    line = f.readline()
    if line[:1] == b'$' and int(line[1:]) >= 0:
        f.read(int(line[1:]) + 2)
    return line[:1]
assert call(b'SET', b'big', b'x' * 3000) == b'+'
for line in sys.stdin:
    ok, error, n = line.split()
    for i in range(int(n)):
        if i % 2 == 0:
            assert call(ok.encode(), b'big') in (b'$', b':')
        else:
            assert call(error.encode(), b'big', b'1') == b'-'
    print('done', flush=True)
"#;

/// `REDIS_CLIENT` on `port`: the process, and a function that makes one run of it (the
/// client ends when the function is dropped).
fn redis_client(port: u16) -> (Child, impl FnMut(&str, &str, usize)) {
    let mut client = Command::new("python3")
        .args(["-c", REDIS_CLIENT, &port.to_string()])
        .env("OTEL_SERVICE_NAME", "loss-redis-client")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    let mut stdout = BufReader::new(client.stdout.take().unwrap());
    let run = move |ok: &str, error: &str, n: usize| {
        writeln!(stdin, "{ok} {error} {n}").unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "done", "{ok} {error}");
    };
    (client, run)
}

#[test]
fn a_full_ring_loses_no_redis_pairing() {
    let _serial = serial();
    let redis = Redis::start("loss-redis");
    let mut sonde = Sonde::start_with(&["--ring-buffer-mib", "1"]);
    let (mut client, mut run) = redis_client(redis.port);
    let port = redis.port.to_string();
    let ours = move |s: &Value| {
        attr(s, "db.system.name").as_deref() == Some("redis")
            && attr(s, "server.port").as_deref() == Some(port.as_str())
    };
    let op = |s: &Value| attr(s, "db.operation.name").unwrap_or_default();
    let of_ops = |ops: [&'static str; 2], side: &'static str| {
        let ours = ours.clone();
        move |s: &Value| ours(s) && kind(s) == side && ops.contains(&op(s).as_str())
    };

    // Before: GET and HSET (WRONGTYPE on a string).
    run("GET", "HSET", 10);
    assert_eq!(
        sonde
            .wait_spans(10, of_ops(["GET", "HSET"], "CLIENT"))
            .len(),
        10
    );
    sonde.pause();
    // The burst: GET and INCRBY (ERR: not an integer), 2 MB and more captured.
    run("GET", "INCRBY", 800);
    sonde.resume();
    std::thread::sleep(Duration::from_secs(2));
    // After: STRLEN and LPUSH (WRONGTYPE), commands the burst did not use.
    run("STRLEN", "LPUSH", 10);
    let after_client = sonde.wait_spans(10, of_ops(["STRLEN", "LPUSH"], "CLIENT"));
    let after_server = sonde.wait_spans(10, of_ops(["STRLEN", "LPUSH"], "SERVER"));

    let dropped = ring_losses(&sonde);
    let burst = sonde.spans(|s| ours(s) && op(s) == "INCRBY").len();
    eprintln!("ringbuf_full {dropped}, INCRBY spans of the burst {burst} (of 800, both sides)");
    assert!(dropped > 0.0, "the ring never filled: no loss to test");
    assert!(burst < 800, "nothing of the burst was lost");
    for (side, spans) in [("client", &after_client), ("server", &after_server)] {
        let count = |o: &str| spans.iter().filter(|s| op(s) == o).count();
        assert_eq!(
            (count("STRLEN"), count("LPUSH")),
            (5, 5),
            "{side} spans after the hole"
        );
    }
    let all = sonde.spans(|s| ours(s) && op(s) != "SET");
    let mispaired: Vec<(String, String, Option<String>)> = all
        .iter()
        .filter(|s| {
            let fails = matches!(op(s).as_str(), "HSET" | "INCRBY" | "LPUSH");
            attr(s, "error.type").is_some() != fails
        })
        .map(|s| (kind(s).to_string(), op(s), attr(s, "error.type")))
        .collect();
    assert!(
        mispaired.is_empty(),
        "paired across the hole: {mispaired:?}"
    );
    drop(run);
    let _ = client.wait();
}

/// With OTLP on, a capture thread that falls behind (its ring over half full) builds no
/// spans for OTLP until it has caught up (counted as `overload`), so that it catches up
/// before the ring loses events; spans are exported again after, and printed spans are
/// never shed.
#[test]
fn an_overloaded_capture_sheds_otlp_spans_then_exports_again() {
    let _serial = serial();
    let redis = Redis::start("shed-redis");
    let mut http = HttpCollector::start();
    let endpoint = format!("http://127.0.0.1:{}", http.port);
    let mut sonde = Sonde::start_with_env(
        &["--ring-buffer-mib", "1"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );
    let (mut client, mut run) = redis_client(redis.port);
    let port = redis.port.to_string();
    let exported = |ops: [&'static str; 2]| {
        let port = port.clone();
        move |s: &ReceivedSpan| {
            // SPAN_KIND_CLIENT
            s.span.kind == 3
                && s.attr("server.port").as_deref() == Some(port.as_str())
                && ops.contains(&s.attr("db.operation.name").unwrap_or_default().as_str())
        }
    };
    let shed = |sonde: &Sonde| {
        sonde.metrics().sum(
            "sonde_export_dropped_total",
            &[("signal", "traces"), ("reason", "overload")],
        )
    };

    run("GET", "HSET", 10);
    let before = http.collector.wait_spans(10, 20, exported(["GET", "HSET"]));
    assert_eq!(before.len(), 10);
    assert_eq!(shed(&sonde), 0.0, "shed with the ring nearly empty");
    // The ring fills while sonde is stopped: when it drains it, it is overloaded.
    sonde.pause();
    run("GET", "INCRBY", 800);
    sonde.resume();
    std::thread::sleep(Duration::from_secs(2));
    let shed_in_burst = shed(&sonde);
    eprintln!("spans shed in the burst: {shed_in_burst}");
    assert!(shed_in_burst > 0.0, "a ring over half full shed no span");

    run("STRLEN", "LPUSH", 10);
    let after = http
        .collector
        .wait_spans(10, 20, exported(["STRLEN", "LPUSH"]));
    assert_eq!(
        after.len(),
        10,
        "spans are exported again once capture caught up"
    );
    // Printed spans are not shed: more of the burst is printed than exported.
    let printed = sonde
        .spans(|s| kind(s) == "CLIENT" && attr(s, "db.operation.name").as_deref() == Some("INCRBY"))
        .len();
    let exported = http
        .collector
        .spans(|s| s.span.kind == 3 && s.attr("db.operation.name").as_deref() == Some("INCRBY"))
        .len();
    eprintln!("INCRBY client spans of the burst: {printed} printed, {exported} exported");
    assert!(printed > exported, "{printed} printed, {exported} exported");
    drop(run);
    let _ = client.wait();
    http.stop();
}
