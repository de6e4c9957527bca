//! Connections opened before sonde started are picked up when they next carry data: an
//! HTTP keep-alive connection, and a PostgreSQL session whose statements were prepared
//! before sonde could see their text.
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use sonde_tests::*;

/// Each test starts its own sonde after its client: one at a time, so that no sonde sees
/// the other test's traffic start.
static ONE_SONDE: Mutex<()> = Mutex::new(());

fn get(s: &mut TcpStream, port: u16, path: &str) {
    // write! on an unbuffered socket sends the request line in pieces ("GET ", path, ...):
    // the kernel side must still recognise it.
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    // The reply is small and fixed ("HTTP/1.1 200 ... \r\n\r\nold\n"): read to the body.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.ends_with(b"old\n") {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "nginx closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn connection_opened_before_sonde_started() {
    let _one = ONE_SONDE.lock().unwrap_or_else(|e| e.into_inner());
    let port = free_port();
    let nginx = Nginx::start(
        "pre-nginx",
        &[format!("127.0.0.1:{port}")],
        port,
        "location / { return 200 \"old\\n\"; }",
    );
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    get(&mut conn, port, "/before");
    let local_port = conn.local_addr().unwrap().port().to_string();

    let sonde = Sonde::start();
    get(&mut conn, port, "/after");
    let server = sonde.wait_spans(1, |s| kind(s) == "SERVER" && s["service.name"] == "nginx");
    assert_eq!(server.len(), 1, "{server:?}");
    let s = &server[0];
    assert_eq!(attr(s, "url.path").as_deref(), Some("/after"));
    assert_eq!(attr(s, "http.response.status_code").as_deref(), Some("200"));
    assert_is_worker_of(&s["process.pid"], nginx.pid);
    // Addresses come from /proc: the peer is this test's socket.
    assert_eq!(
        attr(s, "network.peer.port").as_deref(),
        Some(local_port.as_str())
    );
    assert_eq!(
        attr(s, "server.port").as_deref(),
        Some(port.to_string().as_str())
    );
    let me = std::process::id();
    let client = sonde.wait_spans(1, |s| {
        kind(s) == "CLIENT" && s["process.pid"] == me && path_starts(s, "/after")
    });
    assert_eq!(client.len(), 1, "{client:?}");
    assert_eq!(
        attr(&client[0], "network.peer.port").as_deref(),
        Some(port.to_string().as_str())
    );
    assert_eq!(
        sonde
            .spans(|s| attr(s, "url.path").as_deref() == Some("/before"))
            .len(),
        0
    );
}

/// The server span comes from nginx's worker, a child of the master we started.
fn assert_is_worker_of(pid: &serde_json::Value, master: u32) {
    let worker = pid.as_u64().unwrap() as u32;
    let stat = std::fs::read_to_string(format!("/proc/{worker}/stat")).unwrap();
    let ppid: u32 = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        ppid, master,
        "span pid {worker} is not an nginx worker of {master}"
    );
}

#[test]
fn postgres_statements_prepared_before_sonde_started() {
    let _one = ONE_SONDE.lock().unwrap_or_else(|e| e.into_inner());
    let pg = Postgres::start("pre-postgres", &[]);
    pg.pgbench_db("pre");
    // pgbench -M prepared sends Parse once per statement when its connection starts, then
    // only Bind/Execute: once sonde starts, it never sees the SQL text of these statements.
    let mut bench = pg
        .client("pgbench")
        .args([
            "-n", "-M", "prepared", "-c", "1", "-T", "6", "-R", "200", "pre",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let sonde = Sonde::start();
    let bench_pid = bench.id();
    assert!(bench.wait().unwrap().success());

    let is_pg = |s: &serde_json::Value| attr(s, "db.system.name").as_deref() == Some("postgresql");
    let client = sonde.wait_spans(70, |s| {
        is_pg(s) && kind(s) == "CLIENT" && s["process.pid"] == bench_pid
    });
    let server = sonde.wait_spans(70, |s| {
        is_pg(s) && kind(s) == "SERVER" && s["service.name"] == "postgres"
    });
    for (side, spans) in [("client", &client), ("server", &server)] {
        assert!(spans.len() >= 70, "{side}: {} spans", spans.len());
        // Every span names its statement; each statement is always the same operation.
        let mut operation_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in spans.iter() {
            assert_eq!(attr(s, "db.query.text"), None, "{s}");
            let name = attr(s, "sonde.db.statement.name").unwrap_or_else(|| panic!("{s}"));
            let op = attr(s, "db.operation.name").unwrap();
            operation_of.entry(name).or_default().insert(op);
        }
        assert!(
            operation_of.values().all(|ops| ops.len() == 1),
            "{side}: {operation_of:?}"
        );
        let ops: BTreeSet<String> = operation_of.into_values().flatten().collect();
        let expected: BTreeSet<String> = ["BEGIN", "UPDATE", "SELECT", "INSERT", "COMMIT"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(ops, expected, "{side}");
    }
}
