//! Hostile traffic on real sockets: messages that never end, absurd lengths, a flood of
//! pipelined requests never read, garbage. Each case must be counted by its kind (a parse
//! error or a drop), sonde's memory must stay bounded, and a control client running
//! alongside the whole time must get exactly its spans and histogram counts.
//!
//! One sonde, one nginx, one redis-server and one PostgreSQL; the cases run one after the
//! other in one test (sonde sees every process: parallel cases would share counters).
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sonde_tests::*;

/// sonde's resident memory may grow by at most this much over the whole run of hostile
/// cases (docs/architecture.md, "Memory bounds").
const GROWTH_BOUND_KIB: u64 = 8 * 1024;
/// sonde's peak resident memory (VmHWM) through the whole run.
const PEAK_BOUND_KIB: u64 = 64 * 1024;

/// The parse errors (`protocol/kind`) and drops (`drop/reason`) sonde counted so far.
fn counted(sonde: &Sonde) -> HashMap<String, f64> {
    let m = sonde.metrics();
    let mut all = m.by_label("sonde_parse_errors_total", "protocol", Some("kind"));
    for (reason, n) in m.by_label("sonde_events_dropped_total", "reason", None) {
        all.insert(format!("drop/{reason}"), n);
    }
    all
}

/// What was counted since `before`, zeros left out.
fn counted_since(sonde: &Sonde, before: &HashMap<String, f64>) -> HashMap<String, f64> {
    counted(sonde)
        .into_iter()
        .map(|(k, v)| {
            let d = v - before.get(&k).copied().unwrap_or(0.0);
            (k, d)
        })
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

/// Whether `got` has a count within each range of `expected` and nothing else.
fn within(got: &HashMap<String, f64>, expected: &[(&str, f64, f64)]) -> bool {
    got.keys().all(|k| expected.iter().any(|(e, _, _)| e == k))
        && expected.iter().all(|(k, lo, hi)| {
            let n = got.get(*k).copied().unwrap_or(0.0);
            *lo <= n && n <= *hi
        })
}

/// Waits (15 s at most) until what was counted since `before` is within `expected`
/// (`(key, least, most)`; least = most for an exact count), then checks it stays so;
/// returns what was counted.
fn expect_counted(
    sonde: &Sonde,
    case: &str,
    before: &HashMap<String, f64>,
    expected: &[(&str, f64, f64)],
) -> HashMap<String, f64> {
    let start = Instant::now();
    while !within(&counted_since(sonde, before), expected)
        && start.elapsed() < Duration::from_secs(15)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let got = counted_since(sonde, before);
    assert!(
        within(&got, expected),
        "{case}: sonde counted {got:?}, expected {expected:?}"
    );
    got
}

fn rss_kib(sonde: &Sonde) -> u64 {
    proc_status_kib(sonde.pid, "VmRSS")
}

/// The control client: one keep-alive connection to nginx's `/control` (204), a request
/// every 10 ms until told to stop; returns how many it made (each answered).
fn control_client(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut n = 0;
        let mut buf = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            s.write_all(b"GET /control HTTP/1.1\r\nHost: control\r\n\r\n")
                .unwrap();
            buf.clear();
            let mut b = [0u8; 512];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let k = s.read(&mut b).expect("control response");
                assert!(k > 0, "nginx closed the control connection");
                buf.extend_from_slice(&b[..k]);
            }
            assert!(
                buf.starts_with(b"HTTP/1.1 204"),
                "{:?}",
                String::from_utf8_lossy(&buf)
            );
            n += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        n
    })
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the peer closes (or 10 s pass); returns what came.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return out,
            Ok(k) => out.extend_from_slice(&b[..k]),
        }
    }
}

fn is_path(s: &Value, path: &str) -> bool {
    attr(s, "url.path").as_deref() == Some(path)
}

/// A header that never ends: one byte a second until nginx gives up on it
/// (`client_header_timeout 3s` closes the connection without a response).
fn header_that_never_ends(port: u16) {
    let mut s = connect(port);
    s.write_all(b"GET /h/trickle HTTP/1.1\r\nHost: h\r\nX-Slow: ")
        .unwrap();
    s.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let mut sent = 0;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(0) => break, // nginx closed it
            Ok(_) => panic!("nginx answered a head that never ended"),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "nginx never closed it"
        );
        if s.write_all(b"a").is_err() {
            break;
        }
        sent += 1;
    }
    eprintln!("trickle: {sent} bytes one a second, then nginx closed the connection");
}

/// A chunked body that never ends: a one-byte chunk every 5 ms for 2 s, the response never
/// read, then the client closes.
fn chunked_body_that_never_ends(port: u16) {
    let mut s = connect(port);
    s.write_all(b"POST /h/chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        s.write_all(b"1\r\nx\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Content-Length: 1 TB; nginx answers 413 at once; the client sends a 64 KiB write every
/// 5 ms for a second without reading, then closes. (Unpaced, nginx's 4 KiB reads of a
/// gigabyte a second overflow the ring: counted as `ringbuf_full`, but the control
/// connection's events could be among those lost.)
fn content_length_of_a_terabyte(port: u16) {
    let mut s = connect(port);
    s.write_all(b"POST /h/big HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000000000\r\n\r\n")
        .unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let start = Instant::now();
    let mut sent = 0usize;
    while start.elapsed() < Duration::from_secs(1) {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("1 TB body: {} MiB sent", sent >> 20);
}

/// 100,000 pipelined requests, each its own write, no response ever read (all must be
/// written, or the test fails).
fn pipelined_requests_never_read(port: u16, n: u64) {
    let mut s = connect(port);
    let start = Instant::now();
    for i in 0..n {
        // Paced at 50,000 a second (2 s in all), which sonde's default 8 MiB ring follows
        // on two cores with nginx answering alongside; a burst of all at once overflows
        // it (counted as ringbuf_full, which fails the exact count below).
        if i.is_multiple_of(1000) {
            let due = Duration::from_micros(i * 20);
            std::thread::sleep(due.saturating_sub(start.elapsed()));
        }
        if let Err(e) = s.write_all(b"GET /h/pipe HTTP/1.1\r\nHost: h\r\n\r\n") {
            panic!("pipelining stalled after {i} requests: {e}");
        }
    }
    // Time for nginx to read (and sonde to see) what it will, then close with responses
    // unread.
    std::thread::sleep(Duration::from_secs(2));
}

/// Binary garbage after a valid request line: nginx answers 400 and closes.
fn garbage_after_a_request_line(port: u16) -> Vec<u8> {
    let mut s = connect(port);
    let mut wire = b"GET /h/garbage HTTP/1.1\r\n\0".to_vec();
    let mut x: u32 = 12345;
    wire.extend((0..4000).map(|_| {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        (x >> 16) as u8
    }));
    s.write_all(&wire).unwrap();
    read_to_close(&mut s)
}

/// A RESP array announcing 2^31 elements after a PING (the kernel classifies a connection
/// by its first command, one of at most 99 elements): redis-server refuses it and closes.
fn resp_array_of_two_billion(port: u16) -> Vec<u8> {
    let mut s = connect(port);
    s.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut pong = [0u8; 7];
    s.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
    s.write_all(b"*2147483648\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")
        .unwrap();
    read_to_close(&mut s)
}

/// A PostgreSQL Query message claiming 1 GB after a real start-up: 8 MiB of it are sent,
/// then the client closes.
fn postgres_message_of_a_gigabyte(port: u16) {
    let mut s = connect(port);
    let params = b"user\0postgres\0database\0postgres\0\0";
    let mut startup = ((8 + params.len()) as u32).to_be_bytes().to_vec();
    startup.extend(196608u32.to_be_bytes());
    startup.extend(params);
    s.write_all(&startup).unwrap();
    // Up to ReadyForQuery ('Z', length 5, status).
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !got.windows(5).any(|w| w == b"Z\0\0\0\x05") {
        let k = s.read(&mut b).expect("start-up answer");
        assert!(k > 0, "postgres closed during start-up");
        got.extend_from_slice(&b[..k]);
    }
    let mut q = vec![b'Q'];
    q.extend(1_000_000_000u32.to_be_bytes());
    q.extend(b"SELECT '");
    s.write_all(&q).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..128 {
        s.write_all(&chunk).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(500));
}

#[test]
fn hostile_traffic_is_counted_memory_stays_bounded_and_others_stay_exact() {
    let _serial = serial();
    let port = free_port();
    let locations = "\
        client_header_timeout 3s;\n\
        location = /control { return 204; }\n\
        location /h/ { return 200 \"h\\n\"; }\n";
    let nginx = Nginx::start(
        "hostile-nginx",
        &[format!("127.0.0.1:{port}")],
        port,
        locations,
    );
    let redis = Redis::start("hostile-redis");
    let pg = Postgres::start("hostile-postgres", &[]);
    // A PostgreSQL backend exits on its client's EOF without calling close() (the kernel
    // closes its socket): sonde ends that connection, and counts what it cut off, when it
    // has been idle for `--conn-idle-timeout` seconds.
    let sonde = Sonde::start_with(&["--conn-idle-timeout", "3"]);
    // Warm-up: sonde's steady state before any hostile byte.
    for _ in 0..20 {
        let (status, _) = http_get(&format!("127.0.0.1:{port}"), "/h/warm").unwrap();
        assert_eq!(status, 200);
    }
    sonde.wait_spans(40, |s| is_path(s, "/h/warm"));
    let stop = Arc::new(AtomicBool::new(false));
    let control = control_client(nginx.port, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let rss_start = rss_kib(&sonde);
    eprintln!("sonde RSS before the hostile cases: {rss_start} KiB");
    let mut figures = vec![("start".to_string(), rss_start)];
    let mut case = |name: &str, run: &dyn Fn(), expected: &[(&str, f64, f64)]| {
        let before = counted(&sonde);
        run();
        let got = expect_counted(&sonde, name, &before, expected);
        let rss = rss_kib(&sonde);
        eprintln!("{name}: counted {got:?}; sonde RSS {rss} KiB");
        figures.push((name.to_string(), rss));
    };

    // Each case is counted on both sides: in the client (this test) and in the server.
    case(
        "header that never ends",
        &|| header_that_never_ends(port),
        &[("http/unfinished_head", 2.0, 2.0)],
    );
    case(
        "chunked body that never ends",
        &|| chunked_body_that_never_ends(port),
        &[("http/unfinished_body", 2.0, 2.0)],
    );
    case(
        "Content-Length of 1 TB",
        &|| content_length_of_a_terabyte(port),
        &[("http/unfinished_body", 2.0, 2.0)],
    );
    const PIPELINED: u64 = 100_000;
    case(
        "100k pipelined requests never read",
        &|| pipelined_requests_never_read(port, PIPELINED),
        // Exact on the client's side, which wrote each request whole: all but the 1024 kept
        // waiting were given up. nginx, whose reads cut the stream anywhere, may have been
        // left inside a head when the client reset the connection (counted at the reset,
        // and again if it read a partial head after it). Its last write, into a socket the
        // client never reads, may have been cut too: inside a response's head or its body.
        &[
            (
                "drop/pending_limit",
                (PIPELINED - 1024) as f64,
                (PIPELINED - 1024) as f64,
            ),
            ("http/unfinished_head", 0.0, 2.0),
            ("http/unfinished_body", 0.0, 1.0),
        ],
    );
    case(
        "binary garbage after a request line",
        &|| {
            let answer = garbage_after_a_request_line(port);
            assert!(answer.starts_with(b"HTTP/1.1 400"), "{answer:?}");
        },
        &[
            ("http/invalid_header_name", 2.0, 2.0),
            ("http/unpaired_response", 2.0, 2.0),
        ],
    );
    case(
        "RESP array of 2^31 elements",
        &|| {
            let answer = resp_array_of_two_billion(redis.port);
            assert!(answer.starts_with(b"-ERR Protocol error"), "{answer:?}");
        },
        &[("redis/unfinished_message", 2.0, 2.0)],
    );
    case(
        "PostgreSQL message claiming 1 GB",
        &|| postgres_message_of_a_gigabyte(pg.port),
        &[("postgresql/unfinished_message", 2.0, 2.0)],
    );

    stop.store(true, Ordering::Relaxed);
    let n = control.join().unwrap();
    let rss_end = rss_kib(&sonde);
    let hwm = proc_status_kib(sonde.pid, "VmHWM");
    eprintln!("control requests: {n}; sonde RSS {rss_start} -> {rss_end} KiB, peak {hwm} KiB");
    eprintln!("{figures:?}");

    // The control connection's counts are exact: spans on both sides and the histograms.
    let server = sonde.wait_spans(n as usize, |s| {
        kind(s) == "SERVER" && is_path(s, "/control")
    });
    assert_eq!(server.len() as u64, n, "control server spans");
    let client = sonde.wait_spans(n as usize, |s| {
        kind(s) == "CLIENT" && is_path(s, "/control")
    });
    assert_eq!(client.len() as u64, n, "control client spans");
    let m = sonde.metrics();
    let status_204 = [("http_response_status_code", "204")];
    assert_eq!(
        m.sum("http_server_request_duration_seconds_count", &status_204),
        n as f64
    );
    assert_eq!(
        m.sum("http_client_request_duration_seconds_count", &status_204),
        n as f64
    );

    // What the hostile cases gave as calls: the chunked upload and the 1 TB one were
    // answered (200, 413) as nginx saw them; the pipelined flood's client spans plus its
    // counted drops are every request sent; nothing for the head that never ended or the
    // garbage.
    let spans = |path: &str, k: &str| sonde.spans(|s| kind(s) == k && is_path(s, path));
    assert!(spans("/h/trickle", "SERVER").is_empty() && spans("/h/trickle", "CLIENT").is_empty());
    assert!(spans("/h/garbage", "SERVER").is_empty() && spans("/h/garbage", "CLIENT").is_empty());
    let big = spans("/h/big", "SERVER");
    assert_eq!(big.len(), 1, "{big:?}");
    assert_eq!(
        attr(&big[0], "http.response.status_code").as_deref(),
        Some("413")
    );
    let pipe_client = spans("/h/pipe", "CLIENT");
    assert_eq!(
        pipe_client.len(),
        1024,
        "the requests kept waiting end at the close"
    );
    assert!(pipe_client
        .iter()
        .all(|s| attr(s, "error.type").as_deref() == Some("connection_closed")));

    // Memory: bounded growth over the whole run and a bounded peak.
    assert!(
        rss_end.saturating_sub(rss_start) <= GROWTH_BOUND_KIB,
        "sonde grew from {rss_start} to {rss_end} KiB"
    );
    assert!(hwm <= PEAK_BOUND_KIB, "sonde's peak RSS {hwm} KiB");
}
