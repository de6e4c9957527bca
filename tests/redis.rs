//! Redis end to end: a real redis-server driven by redis-benchmark and redis-cli, watched by
//! one sonde (started once for this file). Each test uses its own keys and its own client
//! commands, and counts only the spans of the clients it ran.
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use sonde_tests::*;

struct Env {
    sonde: Sonde,
    redis: Redis,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let redis = Redis::start("redis");
        // redis-benchmark -P 16 moves ~200k commands in well under a second: a 128 MiB ring
        // holds the whole burst while sonde prints every span as JSON on this 2-core machine.
        let sonde = Sonde::start_with(&["--ring-buffer-mib", "128"]);
        Env { sonde, redis }
    })
}

/// redis-benchmark runs one at a time: their spans are counted by service name.
static BENCH: Mutex<()> = Mutex::new(());

fn is_redis(s: &Value) -> bool {
    attr(s, "db.system.name").as_deref() == Some("redis")
}

fn op(s: &Value) -> String {
    attr(s, "db.operation.name").unwrap_or_default()
}

fn server_port(s: &Value) -> Option<String> {
    attr(s, "server.port")
}

fn db_count(m: &Metrics, side: &str, service: &str, operation: &str) -> f64 {
    m.sum(
        &format!("db_{side}_operation_duration_seconds_count"),
        &[
            ("service_name", service),
            ("db_system_name", "redis"),
            ("db_operation_name", operation),
        ],
    )
}

fn benchmark_counts(pipeline: &str, n: usize) {
    let env = env();
    let _one = BENCH.lock().unwrap_or_else(|e| e.into_inner());
    let port = env.redis.port.to_string();
    let before = env.sonde.metrics();
    run(Command::new("redis-benchmark").args([
        "-p",
        &port,
        "-P",
        pipeline,
        "-n",
        &n.to_string(),
        "-t",
        "set,get",
        "-q",
    ]));
    for operation in ["SET", "GET"] {
        let client = |s: &Value| {
            kind(s) == "CLIENT"
                && s["service.name"] == "redis-benchmark"
                && op(s) == operation
                && server_port(s).as_deref() == Some(port.as_str())
        };
        let server = |s: &Value| {
            kind(s) == "SERVER" && s["service.name"] == "redis-server" && op(s) == operation
        };
        // Earlier benchmark runs in this file left their own spans: count the growth.
        let clients_before = before_count(&before, "client", "redis-benchmark", operation);
        let servers_before = before_count(&before, "server", "redis-server", operation);
        let got_client = env.sonde.wait_spans(clients_before + n, client).len();
        let got_server = env.sonde.wait_spans(servers_before + n, server).len();
        assert_eq!(
            got_client - clients_before,
            n,
            "{operation} client spans, -P {pipeline}"
        );
        assert_eq!(
            got_server - servers_before,
            n,
            "{operation} server spans, -P {pipeline}"
        );
        let after = env.sonde.metrics();
        assert_eq!(
            db_count(&after, "client", "redis-benchmark", operation)
                - db_count(&before, "client", "redis-benchmark", operation),
            n as f64,
            "{operation} client histogram count, -P {pipeline}"
        );
        assert_eq!(
            db_count(&after, "server", "redis-server", operation)
                - db_count(&before, "server", "redis-server", operation),
            n as f64,
            "{operation} server histogram count, -P {pipeline}"
        );
    }
    let m = env.sonde.metrics();
    let dropped = m.sum("sonde_events_dropped_total", &[]);
    let reasons: Vec<&str> =
        m.0.lines()
            .filter(|l| l.starts_with("sonde_events_dropped_total") && !l.ends_with(" 0"))
            .collect();
    assert_eq!(dropped, 0.0, "events dropped: {reasons:?}");
}

/// Spans counted before a run, read from the histogram counts (one per span).
fn before_count(m: &Metrics, side: &str, service: &str, operation: &str) -> usize {
    db_count(m, side, service, operation) as usize
}

#[test]
fn redis_benchmark_without_pipelining_gives_exact_counts() {
    benchmark_counts("1", 20_000);
}

#[test]
fn redis_benchmark_pipelined_by_16_gives_exact_counts() {
    benchmark_counts("16", 100_000);
}

#[test]
fn commands_namespace_masking_errors_and_transactions() {
    let env = env();
    // One redis-cli connection reading commands from stdin, in order.
    let script = "SELECT 2\nSET t:key secret-value\nGET t:key\nMULTI\nINCR t:counter\nINCR t:counter\nEXEC\nLPUSH t:key x\nCONFIG GET maxmemory\nAUTH someone hunter2\n";
    let mut child = Command::new("redis-cli")
        .args(["-p", &env.redis.port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("WRONGTYPE"), "{out}");

    let mine = |s: &Value| {
        kind(s) == "CLIENT"
            && s["service.name"] == "redis-cli"
            && attr(s, "db.namespace").as_deref() == Some("2")
            && op(s) != "SELECT"
    };
    let spans = env.sonde.wait_spans(9, mine);
    let ops: Vec<String> = spans.iter().map(op).collect();
    assert_eq!(
        ops,
        [
            "SET",
            "GET",
            "MULTI",
            "INCR",
            "INCR",
            "EXEC",
            "LPUSH",
            "CONFIG GET",
            "AUTH"
        ],
        "{out}"
    );
    let text = |i: usize| attr(&spans[i], "db.query.text").unwrap_or_default();
    assert_eq!(text(0), "SET t:key ?");
    assert_eq!(text(1), "GET t:key");
    assert_eq!(text(7), "CONFIG GET ?");
    assert_eq!(text(8), "AUTH");
    assert_eq!(attr(&spans[6], "error.type").as_deref(), Some("WRONGTYPE"));
    assert_eq!(
        attr(&spans[6], "db.response.status_code").as_deref(),
        Some("WRONGTYPE")
    );
    assert!(
        attr(&spans[8], "error.type").is_some(),
        "AUTH without users fails"
    );
    assert!(attr(&spans[0], "error.type").is_none());
    assert_eq!(
        attr(&spans[0], "server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(server_port(&spans[0]), Some(env.redis.port.to_string()));
    let all = format!("{spans:?}");
    assert!(!all.contains("secret-value") && !all.contains("hunter2"));
    // The server saw the same commands.
    let server = env.sonde.wait_spans(1, |s| {
        kind(s) == "SERVER"
            && is_redis(s)
            && op(s) == "LPUSH"
            && attr(s, "db.namespace").as_deref() == Some("2")
    });
    assert_eq!(attr(&server[0], "error.type").as_deref(), Some("WRONGTYPE"));
}

#[test]
fn blocking_pop_lasts_as_long_as_the_wait() {
    let env = env();
    let port = env.redis.port.to_string();
    let waiter = Command::new("redis-cli")
        .args(["-p", &port, "BLPOP", "t:jobs", "10"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    env.redis.cli(&["LPUSH", "t:jobs", "job-1"]);
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success());
    let spans = env
        .sonde
        .wait_spans(1, |s| kind(s) == "CLIENT" && op(s) == "BLPOP");
    assert_eq!(spans.len(), 1);
    let ns = |k: &str| spans[0][k].as_u64().unwrap();
    let seconds = (ns("end_time_unix_nano") - ns("start_time_unix_nano")) as f64 / 1e9;
    assert!((1.3..5.0).contains(&seconds), "BLPOP took {seconds} s");
    assert_eq!(
        attr(&spans[0], "db.query.text").as_deref(),
        Some("BLPOP t:jobs ?")
    );
}

#[test]
fn pubsub_messages_are_not_replies() {
    let env = env();
    let port = env.redis.port.to_string();
    // The subscriber's own process name tells its spans apart: a copy of redis-cli.
    let subscriber = Command::new("redis-cli")
        .args(["-p", &port, "SUBSCRIBE", "t:news"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let sub_pid = subscriber.id();
    std::thread::sleep(Duration::from_millis(800));
    for i in 0..3 {
        env.redis.cli(&["PUBLISH", "t:news", &format!("hello-{i}")]);
    }
    std::thread::sleep(Duration::from_millis(800));
    let mut subscriber = subscriber;
    let _ = subscriber.kill();
    let _ = subscriber.wait();
    let publishes = env
        .sonde
        .wait_spans(3, |s| kind(s) == "CLIENT" && op(s) == "PUBLISH");
    assert_eq!(publishes.len(), 3);
    assert_eq!(
        attr(&publishes[0], "db.query.text").as_deref(),
        Some("PUBLISH t:news ?")
    );
    let of_subscriber =
        |s: &Value| kind(s) == "CLIENT" && s["process.pid"].as_u64() == Some(sub_pid as u64);
    std::thread::sleep(Duration::from_millis(500));
    let subs = env.sonde.spans(of_subscriber);
    let ops: Vec<String> = subs.iter().map(op).collect();
    assert_eq!(ops, ["SUBSCRIBE"], "pushed messages must not become spans");
    // redis-cli's start-up COMMAND DOCS reply is larger than the copied prefix and counts
    // as lost_sync; nothing here may be malformed.
    let m = env.sonde.metrics();
    for kind in ["bad_type", "bad_length", "line_too_long", "too_deep"] {
        let n = m.sum(
            "sonde_parse_errors_total",
            &[("protocol", "redis"), ("kind", kind)],
        );
        assert_eq!(n, 0.0, "{kind}");
    }
}
