//! Connections opened before sonde started are picked up when they next carry data: an
//! HTTP keep-alive connection, a PostgreSQL session whose statements were prepared before
//! sonde could see their text, and every live connection after sonde was killed with -9
//! under load and started again (the kill leaves none of its programs or maps in the
//! kernel).
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

/// nginx answering "old" on a new port, and a connection to it (no sonde yet).
fn nginx_and_a_connection(name: &str) -> (Nginx, u16, TcpStream) {
    let port = free_port();
    let nginx = Nginx::start(
        name,
        &[format!("127.0.0.1:{port}")],
        port,
        "location / { return 200 \"old\\n\"; }",
    );
    let conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (nginx, port, conn)
}

#[test]
fn connection_opened_before_sonde_started() {
    let _one = ONE_SONDE.lock().unwrap_or_else(|e| e.into_inner());
    let (nginx, port, mut conn) = nginx_and_a_connection("pre-nginx");
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

/// The ids of every BPF program and map the kernel holds now.
fn bpf_ids() -> BTreeSet<(String, u64)> {
    let mut ids = BTreeSet::new();
    for what in ["prog", "map"] {
        let out = run(std::process::Command::new("bpftool").args(["-j", what, "show"]));
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        for item in list.as_array().unwrap() {
            let name = item["name"].as_str().unwrap_or_default();
            ids.insert((format!("{what} {name}"), item["id"].as_u64().unwrap()));
        }
    }
    ids
}

/// kill -9 of sonde while wrk loads nginx: its programs and maps leave the kernel (it pins
/// nothing), and a sonde started again picks up the live connections: the keep-alive
/// connection opened before either sonde, and wrk's.
#[test]
fn killed_under_load_leaves_nothing_and_a_restart_picks_up_live_connections() {
    let _one = ONE_SONDE.lock().unwrap_or_else(|e| e.into_inner());
    let before = bpf_ids();
    let (_nginx, port, mut conn) = nginx_and_a_connection("kill-nginx");
    get(&mut conn, port, "/first");

    let mut first = Sonde::start();
    // What this sonde loaded: the programs and maps that were not there before it.
    let loaded: BTreeSet<(String, u64)> = bpf_ids().difference(&before).cloned().collect();
    assert!(
        loaded.iter().any(|(n, _)| n == "prog sonde_sys_exit")
            && loaded.iter().any(|(n, _)| n == "map CONNS"),
        "{loaded:?}"
    );
    let mut wrk = std::process::Command::new("wrk")
        .args(["-t1", "-c8", "-d10s"])
        .arg(format!("http://127.0.0.1:{port}/load"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    first.kill_hard();
    // Freed once the last reference goes (an RCU grace period later).
    let start = std::time::Instant::now();
    loop {
        let left: Vec<_> = bpf_ids().intersection(&loaded).cloned().collect();
        if left.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "left in the kernel after kill -9: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let second = Sonde::start();
    get(&mut conn, port, "/after-restart");
    let server = second.wait_spans(1, |s| {
        kind(s) == "SERVER" && path_starts(s, "/after-restart")
    });
    assert_eq!(server.len(), 1, "{server:?}");
    let me = std::process::id();
    let client = second.wait_spans(1, |s| {
        kind(s) == "CLIENT" && s["process.pid"] == me && path_starts(s, "/after-restart")
    });
    assert_eq!(client.len(), 1, "{client:?}");
    // wrk's connections were opened before the restart too; they carry on being read.
    let load = second.wait_spans(100, |s| kind(s) == "SERVER" && path_starts(s, "/load"));
    assert!(load.len() >= 100, "{} wrk requests seen", load.len());
    assert!(wrk.wait().unwrap().success());
}
