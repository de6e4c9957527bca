//! Traces across processes, end to end: real servers and real clients, spans read back
//! through a real OTLP receiver (gRPC) and links counted on sonde's /metrics.
//!
//! - A chain curl -> nginx (reverse proxy) -> a threaded Python service -> {Redis, PostgreSQL,
//!   a Node.js leaf}: each entry request gives one trace, parent by parent, in-process
//!   (a thread serving one request, nginx's one worker by method and path) and across
//!   processes (a server span under the client span of the same connection); the service
//!   graph counts each edge once per call.
//! - A Node event loop serving several requests at once, whose downstream path differs from
//!   the requests': its downstream calls are linked only when the loop serves one request,
//!   never to another request, and the rest are counted as ambiguous.
//! - An application that sets `traceparent` itself: sonde's client span joins that trace
//!   under the application's span, and the server span joins it under sonde's client span.
//! - A server in another network namespace behind an iptables DNAT rule (a Kubernetes
//!   Service's address on the client side, the pod's on the server side): still linked.
//! - `inject_traceparent`: a service in one network namespace calls one in another, and the
//!   `traceparent` the kernel adds to its request names sonde's client span in the trace of
//!   the request the service serves (what a sonde on another host continues); off, no
//!   header is added.
//!
//! The helper programs are in `tests/traces/` (`service.py` needs the `redis` and `psycopg`
//! PyPI packages, installed by `cargo xtask setup`). Each test starts its own sonde and they
//! run one at a time: every sonde sees the whole host, and the tests count links and edges.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use sonde_tests::collector::{start_grpc, Collector, ReceivedSpan};
use sonde_tests::*;

/// OTLP span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// The service names the helper programs get through OTEL_SERVICE_NAME (their executables
/// are python3.X and node, whose names differ between hosts).
const PY_SERVICE: &str = "traces-python";
const LEAF_SERVICE: &str = "traces-leaf";
const FANOUT_SERVICE: &str = "traces-fanout";
const TP_CLIENT_SERVICE: &str = "traces-client";

/// Concurrent clients, and requests each sends one after the other.
const THREADS: usize = 8;
const PER_THREAD: usize = 5;
const REQUESTS: usize = THREADS * PER_THREAD;

const LINKS: &str = "sonde_trace_links_total";
const GRAPH_TOTAL: &str = "traces_service_graph_request_total";
const GRAPH_FAILED: &str = "traces_service_graph_request_failed_total";
const GRAPH_SERVER_COUNT: &str = "traces_service_graph_request_server_seconds_count";
const GRAPH_CLIENT_COUNT: &str = "traces_service_graph_request_client_seconds_count";

/// sonde exporting spans and metrics over OTLP/gRPC to a receiver in this process.
fn sonde_with_collector() -> (Sonde, Collector) {
    sonde_with_collector_and(&[])
}

/// The same, with extra flags.
fn sonde_with_collector_and(extra: &[&str]) -> (Sonde, Collector) {
    let port = free_port();
    let collector = start_grpc(port);
    let endpoint = format!("http://127.0.0.1:{port}");
    let sonde = Sonde::start_with_env(
        extra,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    );
    (sonde, collector)
}

/// A helper program of tests/traces/ (run by `interpreter`, python3 or node), named
/// `service`, listening on `port`; killed when dropped (and by PDEATHSIG with the test).
struct Helper {
    child: Child,
}

impl Helper {
    fn start(interpreter: &str, script: &str, args: &[String], service: &str, port: u16) -> Helper {
        let mut cmd = Command::new(interpreter);
        cmd.arg(workspace_root().join("tests/traces").join(script))
            .args(args)
            .env("OTEL_SERVICE_NAME", service)
            .stdout(Stdio::null());
        let mut child = spawn_owned(cmd);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{script} exited ({status}) before listening on {port}: its stderr is above"
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{script} did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Helper { child }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The markers of one test's requests, by client thread: fixed width, so no marker is a
/// part of another.
fn markers(tag: &str) -> Vec<Vec<String>> {
    let pid = std::process::id();
    (0..THREADS)
        .map(|t| {
            (0..PER_THREAD)
                .map(|i| format!("{tag}{pid}-{t:02}-{i:02}"))
                .collect()
        })
        .collect()
}

/// One thread per marker list, all started together; each runs one `curl` process per
/// marker, one after the other, for GET http://127.0.0.1:port{prefix}{marker}. Every answer
/// must be 200.
fn drive(port: u16, prefix: &str, markers: &[Vec<String>]) {
    let barrier = Barrier::new(markers.len());
    std::thread::scope(|scope| {
        for mine in markers {
            let barrier = &barrier;
            scope.spawn(move || {
                barrier.wait();
                for m in mine {
                    let url = format!("http://127.0.0.1:{port}{prefix}{m}");
                    let out = Command::new("curl")
                        .args(["-s", "--max-time", "30", "-w", "\n%{http_code}", &url])
                        .output()
                        .expect("curl runs");
                    let out = String::from_utf8_lossy(&out.stdout);
                    assert_eq!(out.lines().last(), Some("200"), "{url} answered: {out}");
                }
            });
        }
    });
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn service(s: &ReceivedSpan) -> &str {
    s.resource
        .get("service.name")
        .map(String::as_str)
        .unwrap_or("")
}

fn path_is(s: &ReceivedSpan, path: &str) -> bool {
    s.attr("url.path").as_deref() == Some(path)
}

fn db_op(s: &ReceivedSpan, system: &str, op: &str) -> bool {
    s.attr("db.system.name").as_deref() == Some(system)
        && s.attr("db.operation.name").as_deref() == Some(op)
}

fn kind_name(kind: i32) -> &'static str {
    match kind {
        SERVER => "SERVER",
        CLIENT => "CLIENT",
        _ => "OTHER",
    }
}

/// One line per span, for failure messages.
fn describe(spans: &[&ReceivedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "\n  {} {} {} path={:?} db={:?}/{:?} query={:?} trace={} span={} parent={}",
                kind_name(s.span.kind),
                service(s),
                s.span.name,
                s.attr("url.path"),
                s.attr("db.system.name"),
                s.attr("db.operation.name"),
                s.attr("db.query.text"),
                hex(&s.span.trace_id),
                hex(&s.span.span_id),
                hex(&s.span.parent_span_id),
            )
        })
        .collect()
}

/// The one span of `spans` for which `pred` holds.
fn one<'a>(
    spans: &[&'a ReceivedSpan],
    what: &str,
    pred: impl Fn(&ReceivedSpan) -> bool,
) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().copied().filter(|s| pred(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {what} among:{}",
        describe(spans)
    );
    found[0]
}

/// `child`'s parent is `parent`, in the same trace.
fn assert_child_of(child: &ReceivedSpan, parent: &ReceivedSpan, what: &str, all: &[&ReceivedSpan]) {
    assert!(
        child.span.parent_span_id == parent.span.span_id
            && child.span.trace_id == parent.span.trace_id,
        "{what}: {} (parent {}) should be the child of {} in trace {}:{}",
        hex(&child.span.span_id),
        hex(&child.span.parent_span_id),
        hex(&parent.span.span_id),
        hex(&parent.span.trace_id),
        describe(all)
    );
}

/// Every sample of `name`: its labels and its value.
fn samples(m: &Metrics, name: &str) -> Vec<(HashMap<String, String>, f64)> {
    m.0.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            // An exemplar follows " # " after the value.
            let l = l.split(" # ").next().unwrap_or(l);
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = series.split_once('{').unwrap_or((series, ""));
            (n == name).then(|| {
                (
                    parse_labels(labels.trim_end_matches('}')),
                    value.parse::<f64>().unwrap_or(0.0),
                )
            })
        })
        .collect()
}

/// The service-graph metric `name` for the edge client -> server: the sum of its samples and
/// the `connection_type` values they carry (a missing label reads as "").
fn edge(m: &Metrics, name: &str, client: &str, server: &str) -> (f64, BTreeSet<String>) {
    let mut total = 0.0;
    let mut types = BTreeSet::new();
    for (labels, value) in samples(m, name) {
        if labels.get("client").map(String::as_str) == Some(client)
            && labels.get("server").map(String::as_str) == Some(server)
        {
            total += value;
            types.insert(labels.get("connection_type").cloned().unwrap_or_default());
        }
    }
    (total, types)
}

fn links(m: &Metrics, kind: &str, result: &str) -> f64 {
    m.sum(LINKS, &[("kind", kind), ("result", result)])
}

/// Scrapes /metrics until `done` holds (or `secs` pass), then once more a second later, so
/// that a count that goes beyond what is expected shows.
fn wait_metrics(sonde: &Sonde, secs: u64, done: impl Fn(&Metrics) -> bool) -> Metrics {
    let start = Instant::now();
    while !done(&sonde.metrics()) && start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    sonde.metrics()
}

/// Every service-graph edge, for failure messages.
fn graph(m: &Metrics) -> String {
    m.0.lines()
        .filter(|l| l.starts_with("traces_service_graph_") || l.starts_with(LINKS))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_chain_of_services_gives_one_trace_per_entry_request() {
    let _serial = serial();
    let redis = Redis::start("traces-redis");
    let pg = Postgres::start("traces-pg", &[]);
    let (leaf_port, py_port, nginx_port) = (free_port(), free_port(), free_port());
    // One worker (Nginx::start), the path passed through to the Python service as is.
    let _nginx = Nginx::start(
        "traces-chain-nginx",
        &[format!("127.0.0.1:{nginx_port}")],
        nginx_port,
        &format!("location /chain/ {{ proxy_pass http://127.0.0.1:{py_port}; }}\n"),
    );
    let (sonde, collector) = sonde_with_collector();
    let _leaf = Helper::start(
        "node",
        "leaf.js",
        &[leaf_port.to_string()],
        LEAF_SERVICE,
        leaf_port,
    );
    // It opens its Redis and PostgreSQL connections (and their set-up commands) before it
    // listens, with sonde watching: those calls belong to no request.
    let _py = Helper::start(
        "python3",
        "service.py",
        &[py_port, redis.port, pg.port, leaf_port].map(|p| p.to_string()),
        PY_SERVICE,
        py_port,
    );

    let markers = markers("c");
    drive(nginx_port, "/chain/", &markers);
    let markers: Vec<String> = markers.concat();
    let tag = format!("c{}-", std::process::id());

    // curl and nginx's two sides, the Python service's two, the leaf: 6 HTTP spans a request;
    // SET and GET on both sides: 4 Redis spans; SELECT 1 on both sides: 2 PostgreSQL spans.
    let (chain, leaf) = (format!("/chain/{tag}"), format!("/leaf/{tag}"));
    let http = collector.wait_spans(REQUESTS * 6, 60, |s| {
        s.attr("url.path")
            .is_some_and(|p| p.starts_with(&chain) || p.starts_with(&leaf))
    });
    assert!(http.len() >= REQUESTS * 6, "{} HTTP spans", http.len());
    let keys = format!("trace:{tag}");
    let redis_spans = collector.wait_spans(REQUESTS * 4, 30, |s| {
        s.attr("db.system.name").as_deref() == Some("redis")
            && s.attr("db.query.text").is_some_and(|q| q.contains(&keys))
    });
    assert!(
        redis_spans.len() >= REQUESTS * 4,
        "{} Redis spans",
        redis_spans.len()
    );
    let selects = collector.wait_spans(REQUESTS * 2, 30, |s| db_op(s, "postgresql", "SELECT"));
    assert!(
        selects.len() >= REQUESTS * 2,
        "{} SELECT spans",
        selects.len()
    );
    // Anything extra (a span in two traces, a duplicate) has time to arrive too.
    std::thread::sleep(Duration::from_secs(1));

    let spans = collector.spans(|_| true);
    let all: Vec<&ReceivedSpan> = spans.iter().collect();
    let ids: HashSet<&Vec<u8>> = spans.iter().map(|s| &s.span.span_id).collect();
    assert_eq!(ids.len(), spans.len(), "every span has its own id");
    let mut traces = BTreeSet::new();
    for m in &markers {
        let (chain, leaf, key) = (
            format!("/chain/{m}"),
            format!("/leaf/{m}"),
            format!("trace:{m}:k"),
        );
        let carries = |s: &ReceivedSpan| {
            path_is(s, &chain)
                || path_is(s, &leaf)
                || s.attr("db.query.text").is_some_and(|q| q.contains(&key))
        };
        let marked: Vec<&ReceivedSpan> = all.iter().copied().filter(|s| carries(s)).collect();
        let ids: BTreeSet<String> = marked.iter().map(|s| hex(&s.span.trace_id)).collect();
        assert_eq!(
            ids.len(),
            1,
            "{m}: the spans that carry the marker are in one trace:{}",
            describe(&marked)
        );
        let trace = &marked[0].span.trace_id;
        assert!(
            traces.insert(trace.clone()),
            "{m}: its trace is another request's"
        );
        let t: Vec<&ReceivedSpan> = all
            .iter()
            .copied()
            .filter(|s| &s.span.trace_id == trace)
            .collect();

        let is = |s: &ReceivedSpan, kind: i32, svc: &str| s.span.kind == kind && service(s) == svc;
        let curl = one(&t, "curl CLIENT", |s| {
            is(s, CLIENT, "curl") && path_is(s, &chain)
        });
        assert!(
            curl.span.parent_span_id.is_empty(),
            "{m}: curl's span is the root:{}",
            describe(&t)
        );
        let nginx_in = one(&t, "nginx SERVER", |s| {
            is(s, SERVER, "nginx") && path_is(s, &chain)
        });
        assert_child_of(nginx_in, curl, "nginx SERVER <- curl CLIENT", &t);
        let nginx_out = one(&t, "nginx CLIENT", |s| {
            is(s, CLIENT, "nginx") && path_is(s, &chain)
        });
        assert_child_of(nginx_out, nginx_in, "nginx CLIENT <- nginx SERVER", &t);
        let py = one(&t, "Python SERVER", |s| {
            is(s, SERVER, PY_SERVICE) && path_is(s, &chain)
        });
        assert_child_of(py, nginx_out, "Python SERVER <- nginx CLIENT", &t);
        let py_leaf = one(&t, "Python CLIENT to the leaf", |s| {
            is(s, CLIENT, PY_SERVICE) && path_is(s, &leaf)
        });
        assert_child_of(py_leaf, py, "Python CLIENT GET /leaf <- Python SERVER", &t);
        let node = one(&t, "leaf SERVER", |s| {
            is(s, SERVER, LEAF_SERVICE) && path_is(s, &leaf)
        });
        assert_child_of(node, py_leaf, "leaf SERVER <- Python CLIENT", &t);
        let mut expected = vec![curl, nginx_in, nginx_out, py, py_leaf, node];
        for op in ["SET", "GET"] {
            let call = one(&t, &format!("Python Redis {op}"), |s| {
                is(s, CLIENT, PY_SERVICE) && db_op(s, "redis", op)
            });
            assert_child_of(
                call,
                py,
                &format!("Python CLIENT {op} <- Python SERVER"),
                &t,
            );
            assert!(
                call.attr("db.query.text").is_some_and(|q| q.contains(&key)),
                "{m}: the {op} in the trace is the request's own:{}",
                describe(&t)
            );
            let served = one(&t, &format!("redis-server {op}"), |s| {
                is(s, SERVER, "redis-server") && db_op(s, "redis", op)
            });
            assert_child_of(
                served,
                call,
                &format!("redis-server {op} <- Python {op}"),
                &t,
            );
            expected.extend([call, served]);
        }
        let select = one(&t, "Python SELECT", |s| {
            is(s, CLIENT, PY_SERVICE) && db_op(s, "postgresql", "SELECT")
        });
        assert_child_of(select, py, "Python CLIENT SELECT <- Python SERVER", &t);
        let backend = one(&t, "postgres SELECT", |s| {
            is(s, SERVER, "postgres") && db_op(s, "postgresql", "SELECT")
        });
        assert_child_of(backend, select, "postgres SELECT <- Python SELECT", &t);
        expected.extend([select, backend]);

        // Nothing else, except the set-up commands of a database connection (redis-py's
        // HELLO / CLIENT SETINFO, PostgreSQL's start-up) made while serving this request.
        for s in &t {
            if expected.iter().any(|e| e.span.span_id == s.span.span_id) {
                continue;
            }
            let setup = s.attr("db.system.name").is_some()
                && s.attr("url.path").is_none()
                && !["SET", "GET", "SELECT"]
                    .contains(&s.attr("db.operation.name").unwrap_or_default().as_str());
            assert!(
                setup,
                "{m}: a span that belongs to no step of the request is in its trace:{}\nthe trace:{}",
                describe(&[*s]),
                describe(&t)
            );
        }
    }
    assert_eq!(traces.len(), REQUESTS, "one trace per entry request");

    // The service graph: each HTTP edge once per request; the databases as such.
    let m = wait_metrics(&sonde, 20, |m| {
        edge(m, GRAPH_TOTAL, "curl", "nginx").0 >= REQUESTS as f64
            && edge(m, GRAPH_TOTAL, "nginx", PY_SERVICE).0 >= REQUESTS as f64
            && edge(m, GRAPH_TOTAL, PY_SERVICE, LEAF_SERVICE).0 >= REQUESTS as f64
            && edge(m, GRAPH_TOTAL, PY_SERVICE, "redis-server").0 >= 2.0 * REQUESTS as f64
            && edge(m, GRAPH_TOTAL, PY_SERVICE, "postgres").0 >= REQUESTS as f64
    });
    let n = REQUESTS as f64;
    for (client, server) in [
        ("curl", "nginx"),
        ("nginx", PY_SERVICE),
        (PY_SERVICE, LEAF_SERVICE),
    ] {
        let (total, types) = edge(&m, GRAPH_TOTAL, client, server);
        assert_eq!(total, n, "{client} -> {server}:\n{}", graph(&m));
        assert_eq!(
            types,
            BTreeSet::from([String::new()]),
            "{client} -> {server}: HTTP between two services seen here:\n{}",
            graph(&m)
        );
        assert_eq!(
            edge(&m, GRAPH_FAILED, client, server).0,
            0.0,
            "{client} -> {server}"
        );
        assert_eq!(
            edge(&m, GRAPH_SERVER_COUNT, client, server).0,
            n,
            "{client} -> {server}: server durations:\n{}",
            graph(&m)
        );
        assert_eq!(
            edge(&m, GRAPH_CLIENT_COUNT, client, server).0,
            n,
            "{client} -> {server}: client durations:\n{}",
            graph(&m)
        );
    }
    // SET and GET per request, and the commands of the service's start (outside any request).
    for (server, at_least) in [("redis-server", 2.0 * n), ("postgres", n)] {
        let (total, types) = edge(&m, GRAPH_TOTAL, PY_SERVICE, server);
        assert!(
            total >= at_least,
            "{PY_SERVICE} -> {server}: {total}:\n{}",
            graph(&m)
        );
        assert_eq!(
            types,
            BTreeSet::from(["database".to_string()]),
            "{PY_SERVICE} -> {server}:\n{}",
            graph(&m)
        );
    }

    // The links: every server span of a connection seen from both ends found its client in
    // time; the Python service's four calls a request by its thread, nginx's by its thread
    // (by path when its worker serves several), none ambiguous.
    assert_eq!(links(&m, "connection", "too_late"), 0.0, "{}", graph(&m));
    assert!(
        links(&m, "connection", "linked") >= 6.0 * n,
        "curl, nginx, Python (leaf, SET, GET, SELECT) to their servers:\n{}",
        graph(&m)
    );
    assert!(
        links(&m, "thread", "linked") + links(&m, "thread", "linked_by_path") >= 5.0 * n,
        "nginx's proxied calls and the Python service's four calls a request:\n{}",
        graph(&m)
    );
    assert_eq!(links(&m, "thread", "ambiguous"), 0.0, "{}", graph(&m));
}

#[test]
fn an_event_loop_with_concurrent_requests_makes_no_guess() {
    let _serial = serial();
    let down_port = free_port();
    let _nginx = Nginx::start(
        "traces-down-nginx",
        &[format!("127.0.0.1:{down_port}")],
        down_port,
        "location /down/ { return 200 \"d\\n\"; }\n",
    );
    let (sonde, collector) = sonde_with_collector();
    let port = free_port();
    // 50 ms between a request and its downstream call: with 8 clients, node's one thread
    // serves several requests when most calls start.
    let _fanout = Helper::start(
        "node",
        "fanout.js",
        &[port.to_string(), down_port.to_string(), "50".to_string()],
        FANOUT_SERVICE,
        port,
    );
    let before = sonde.metrics();

    let markers = markers("e");
    drive(port, "/loop/", &markers);
    let markers: Vec<String> = markers.concat();
    let tag = format!("e{}-", std::process::id());

    // node's SERVER /loop/M and CLIENT /down/M, nginx's SERVER /down/M (curl's are not
    // waited for).
    let (loop_prefix, down_prefix) = (format!("/loop/{tag}"), format!("/down/{tag}"));
    let wanted = |s: &ReceivedSpan| {
        let Some(p) = s.attr("url.path") else {
            return false;
        };
        (s.span.kind == SERVER && service(s) == FANOUT_SERVICE && p.starts_with(&loop_prefix))
            || (s.span.kind == CLIENT
                && service(s) == FANOUT_SERVICE
                && p.starts_with(&down_prefix))
            || (s.span.kind == SERVER && service(s) == "nginx" && p.starts_with(&down_prefix))
    };
    let found = collector.wait_spans(REQUESTS * 3, 60, wanted);
    assert!(
        found.len() >= REQUESTS * 3,
        "{} spans:{}",
        found.len(),
        describe(&found.iter().collect::<Vec<_>>())
    );
    std::thread::sleep(Duration::from_secs(1));

    let spans = collector.spans(|_| true);
    let all: Vec<&ReceivedSpan> = spans.iter().collect();
    let by_id: HashMap<&Vec<u8>, &ReceivedSpan> =
        spans.iter().map(|s| (&s.span.span_id, s)).collect();
    let (mut parented, mut unparented) = (0usize, 0usize);
    for m in &markers {
        let (lp, dp) = (format!("/loop/{m}"), format!("/down/{m}"));
        let mine: Vec<&ReceivedSpan> = all
            .iter()
            .copied()
            .filter(|s| path_is(s, &lp) || path_is(s, &dp))
            .collect();
        let served = one(&mine, "node SERVER /loop", |s| {
            s.span.kind == SERVER && service(s) == FANOUT_SERVICE && path_is(s, &lp)
        });
        let call = one(&mine, "node CLIENT /down", |s| {
            s.span.kind == CLIENT && service(s) == FANOUT_SERVICE && path_is(s, &dp)
        });
        let down = one(&mine, "nginx SERVER /down", |s| {
            s.span.kind == SERVER && service(s) == "nginx" && path_is(s, &dp)
        });
        // Across processes the link holds whatever node's thread did.
        assert_child_of(down, call, "nginx SERVER <- node CLIENT", &mine);
        if call.span.parent_span_id.is_empty() {
            unparented += 1;
            assert_ne!(
                call.span.trace_id,
                served.span.trace_id,
                "{m}: an unlinked call starts its own trace:{}",
                describe(&mine)
            );
        } else {
            parented += 1;
            let parent = by_id
                .get(&call.span.parent_span_id)
                .map(|p| describe(&[*p]));
            assert_child_of(
                call,
                served,
                &format!(
                    "node CLIENT /down/{m} is linked, so to its own request, not to {parent:?}"
                ),
                &mine,
            );
        }
    }
    assert_eq!(parented + unparented, REQUESTS);

    // Every downstream call was a thread-link attempt (node's thread always served at least
    // the call's own request): linked when it served one, ambiguous when several (the paths
    // never match). Nothing else here makes client calls while serving.
    let delta =
        |m: &Metrics, result: &str| links(m, "thread", result) - links(&before, "thread", result);
    let attempts =
        |m: &Metrics| delta(m, "linked") + delta(m, "linked_by_path") + delta(m, "ambiguous");
    let m = wait_metrics(&sonde, 20, |m| attempts(m) >= REQUESTS as f64);
    assert_eq!(attempts(&m), REQUESTS as f64, "{}", graph(&m));
    assert!(
        delta(&m, "ambiguous") >= 1.0,
        "8 clients, 50 ms each in node: some calls start while it serves several:\n{}",
        graph(&m)
    );
    assert_eq!(
        delta(&m, "linked") + delta(&m, "linked_by_path"),
        parented as f64,
        "each linked call has its parent:\n{}",
        graph(&m)
    );
    assert_eq!(
        delta(&m, "ambiguous"),
        unparented as f64,
        "each ambiguous call has none:\n{}",
        graph(&m)
    );
}

#[test]
fn an_application_traceparent_puts_the_client_span_in_its_trace() {
    let _serial = serial();
    let port = free_port();
    let name = "traces-tp-nginx";
    let nginx = Nginx::start(name, &[format!("127.0.0.1:{port}")], port, "");
    let pid = std::process::id();
    // Three requests on one keep-alive connection, each with its own trace context.
    let requests: Vec<(String, String, String)> = (1..=3u64)
        .map(|i| {
            (
                format!("/tp/{pid}-{i}"),
                format!("4bf92f3577b34da6{pid:08x}{i:08x}"),
                format!("00f067aa0ba9{i:04x}"),
            )
        })
        .collect();
    let dir = nginx.www(name).join("tp");
    std::fs::create_dir_all(&dir).unwrap();
    for (path, _, _) in &requests {
        let file = path.rsplit('/').next().unwrap();
        std::fs::write(dir.join(file), format!("static {file}\n")).unwrap();
    }
    let (sonde, collector) = sonde_with_collector();
    let before = sonde.metrics();

    let mut client = Command::new("python3");
    client
        .arg(workspace_root().join("tests/traces/traceparent_client.py"))
        .arg(port.to_string());
    for (path, trace, parent) in &requests {
        client.arg(path).arg(format!("00-{trace}-{parent}-01"));
    }
    client.env("OTEL_SERVICE_NAME", TP_CLIENT_SERVICE);
    let statuses = run(&mut client);
    assert_eq!(statuses.split_whitespace().collect::<Vec<_>>(), ["200"; 3]);

    let paths: Vec<&str> = requests.iter().map(|(p, _, _)| p.as_str()).collect();
    let found = collector.wait_spans(6, 30, |s| {
        s.attr("url.path")
            .is_some_and(|p| paths.contains(&p.as_str()))
    });
    std::thread::sleep(Duration::from_secs(1));
    let spans = collector.spans(|s| {
        s.attr("url.path")
            .is_some_and(|p| paths.contains(&p.as_str()))
    });
    let all: Vec<&ReceivedSpan> = spans.iter().collect();
    assert_eq!(
        all.len(),
        6,
        "a CLIENT and a SERVER span a request (found {}):{}",
        found.len(),
        describe(&all)
    );
    for (path, trace, parent) in &requests {
        let mine: Vec<&ReceivedSpan> = all.iter().copied().filter(|s| path_is(s, path)).collect();
        let call = one(&mine, "CLIENT span", |s| s.span.kind == CLIENT);
        assert_eq!(service(call), TP_CLIENT_SERVICE, "{}", describe(&mine));
        assert_eq!(
            hex(&call.span.trace_id),
            *trace,
            "the application's trace:{}",
            describe(&mine)
        );
        assert_eq!(
            hex(&call.span.parent_span_id),
            *parent,
            "under the application's span:{}",
            describe(&mine)
        );
        assert_eq!(call.span.span_id.len(), 8);
        assert_ne!(
            hex(&call.span.span_id),
            *parent,
            "sonde's span has its own id"
        );
        assert_ne!(call.span.span_id, vec![0; 8]);
        let served = one(&mine, "SERVER span", |s| s.span.kind == SERVER);
        assert_eq!(service(served), "nginx");
        assert_child_of(
            served,
            call,
            "nginx SERVER <- the client's CLIENT span",
            &mine,
        );
    }

    let m = wait_metrics(&sonde, 20, |m| {
        links(m, "traceparent", "linked") - links(&before, "traceparent", "linked") >= 3.0
    });
    assert!(
        links(&m, "traceparent", "linked") - links(&before, "traceparent", "linked") >= 3.0,
        "each client span joined its application's trace:\n{}",
        graph(&m)
    );
    assert!(
        links(&m, "connection", "linked") - links(&before, "connection", "linked") >= 3.0,
        "each nginx span found its client span:\n{}",
        graph(&m)
    );
}

/// A server in another network namespace, reached through a DNAT rule as a Kubernetes
/// Service is (kube-proxy's `iptables -t nat ... -j DNAT`): the client connects to a
/// service address, the server sees the connection on its own address. Both see the same
/// client address and port, so each server span is the child of its client span.
struct DnatService {
    netns: String,
    veth: String,
    rule: Vec<String>,
    server: Child,
}

/// The service address the client dials, and the server's own address behind it.
const SERVICE_IP: &str = "10.96.77.10";
const SERVER_IP: &str = "10.211.0.2";
/// The host's end of the link to the namespace: the client's address there.
const CLIENT_IP: &str = "10.211.0.1";

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl DnatService {
    /// python3's http.server named `service` in a new namespace on `port`, serving `dir`,
    /// reached from here at SERVICE_IP:80.
    fn start(service: &str, port: u16, dir: &std::path::Path) -> DnatService {
        let netns = "sonde-dnat".to_string();
        let veth = "sondednat0".to_string();
        // What an earlier run that was killed left behind.
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        let _ = Command::new("ip").args(["link", "del", &veth]).output();
        sh(&["ip", "netns", "add", &netns]);
        sh(&[
            "ip",
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            "sondednat1",
        ]);
        sh(&["ip", "link", "set", "sondednat1", "netns", &netns]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            &veth,
        ]);
        sh(&["ip", "link", "set", &veth, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", netns.as_str()];
            all.extend_from_slice(args);
            sh(&all);
        };
        inside(&[
            "ip",
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            "sondednat1",
        ]);
        inside(&["ip", "link", "set", "sondednat1", "up"]);
        inside(&["ip", "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "route",
            "add",
            &format!("{SERVICE_IP}/32"),
            "dev",
            &veth,
        ]);
        // The chain and the rule, as `iptables -t nat -A` adds it and `-D` removes it.
        let rule: Vec<String> = [
            "OUTPUT",
            "-d",
            &format!("{SERVICE_IP}/32"),
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            &format!("{SERVER_IP}:{port}"),
        ]
        .map(String::from)
        .to_vec();
        let mut add = vec!["iptables", "-t", "nat", "-A"];
        add.extend(rule.iter().map(String::as_str));
        sh(&add);
        let mut server = Command::new("ip");
        server
            .args(["netns", "exec", &netns, "python3", "-m", "http.server"])
            .arg(port.to_string())
            .args(["--bind", SERVER_IP])
            .current_dir(dir)
            .env("OTEL_SERVICE_NAME", service)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let server = spawn_owned(server);
        let start = Instant::now();
        while TcpStream::connect((SERVICE_IP, 80)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no server behind the DNAT rule"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        DnatService {
            netns,
            veth,
            rule,
            server,
        }
    }
}

impl Drop for DnatService {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("iptables")
            .args(["-t", "nat", "-D"])
            .args(&self.rule)
            .output();
        let _ = Command::new("ip")
            .args(["route", "del", &format!("{SERVICE_IP}/32")])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

#[test]
fn a_server_behind_dnat_is_the_child_of_its_client() {
    let _serial = serial();
    let client_service = "traces-dnat-client";
    let server_service = "traces-dnat-server";
    let pid = std::process::id();
    let dir = tempdir("traces-dnat");
    let paths: Vec<String> = (1..=3).map(|i| format!("/dnat-{pid}-{i}")).collect();
    for p in &paths {
        std::fs::write(dir.join(&p[1..]), "behind the service address\n").unwrap();
    }
    let port = free_port();
    let _service = DnatService::start(server_service, port, &dir);
    let (sonde, collector) = sonde_with_collector();
    let before = sonde.metrics();
    // Three requests, each on its own connection (http.server closes after each).
    let script = format!(
        "import urllib.request\n\
         for p in {paths:?}:\n\
         \x20   print(urllib.request.urlopen('http://{SERVICE_IP}' + p).status)\n"
    );
    let statuses = run(Command::new("python3")
        .args(["-c", &script])
        .env("OTEL_SERVICE_NAME", client_service));
    assert_eq!(statuses.split_whitespace().collect::<Vec<_>>(), ["200"; 3]);

    let mine = |s: &ReceivedSpan| s.attr("url.path").is_some_and(|p| paths.contains(&p));
    collector.wait_spans(6, 30, mine);
    std::thread::sleep(Duration::from_secs(1));
    let spans = collector.spans(mine);
    let all: Vec<&ReceivedSpan> = spans.iter().collect();
    assert_eq!(
        all.len(),
        6,
        "a CLIENT and a SERVER span a request:{}",
        describe(&all)
    );
    for path in &paths {
        let these: Vec<&ReceivedSpan> = all.iter().copied().filter(|s| path_is(s, path)).collect();
        let call = one(&these, "CLIENT span", |s| s.span.kind == CLIENT);
        assert_eq!(service(call), client_service, "{}", describe(&these));
        assert_eq!(call.attr("server.address").as_deref(), Some(SERVICE_IP));
        assert_eq!(call.attr("server.port").as_deref(), Some("80"));
        let served = one(&these, "SERVER span", |s| s.span.kind == SERVER);
        assert_eq!(service(served), server_service, "{}", describe(&these));
        // The client dialled the service address; the server sees the client's own.
        assert_eq!(
            call.attr("network.peer.address").as_deref(),
            Some(SERVICE_IP)
        );
        assert_eq!(
            served.attr("network.peer.address").as_deref(),
            Some(CLIENT_IP)
        );
        assert_child_of(served, call, "the server behind DNAT <- its client", &these);
    }
    let m = wait_metrics(&sonde, 20, |m| {
        edge(m, GRAPH_TOTAL, client_service, server_service).0 >= 3.0
    });
    assert_eq!(
        edge(&m, GRAPH_TOTAL, client_service, server_service),
        (3.0, BTreeSet::from([String::new()])),
        "one edge, named by both services, not by the service address:\n{}",
        graph(&m)
    );
    assert_eq!(
        links(&m, "connection", "linked") - links(&before, "connection", "linked"),
        3.0,
        "{}",
        graph(&m)
    );
}

/// Two network namespaces joined by a veth pair, as two hosts: the front service and its
/// client in the first, the echo service in the second.
struct TwoHosts {
    names: [&'static str; 2],
}

const FRONT_IP: &str = "10.212.0.1";
const ECHO_IP: &str = "10.212.0.2";

impl TwoHosts {
    fn start() -> TwoHosts {
        let names = ["sonde-prop-a", "sonde-prop-b"];
        for ns in names {
            // What an earlier run that was killed left behind.
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&[
            "ip",
            "-n",
            names[0],
            "link",
            "add",
            "sondeprop0",
            "type",
            "veth",
            "peer",
            "name",
            "sondeprop1",
            "netns",
            names[1],
        ]);
        for (ns, dev, ip) in [
            (names[0], "sondeprop0", FRONT_IP),
            (names[1], "sondeprop1", ECHO_IP),
        ] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                dev,
            ]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        TwoHosts { names }
    }

    /// `args` run in namespace `host` (0 or 1).
    fn command(&self, host: usize, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.names[host]]).args(args);
        cmd
    }

    /// A tests/traces/relay.py service in namespace `host`, named `service`; waits until it
    /// answers.
    fn relay(&self, host: usize, args: &[&str], service: &str, probe: &str) -> Helper {
        let script = workspace_root().join("tests/traces/relay.py");
        let mut cmd = self.command(host, &["python3", script.to_str().unwrap()]);
        cmd.args(args)
            .env("OTEL_SERVICE_NAME", service)
            .stdout(Stdio::null());
        let helper = Helper {
            child: spawn_owned(cmd),
        };
        let start = Instant::now();
        loop {
            let ok = self
                .command(host, &["python3", "-c"])
                .arg(format!(
                    "import urllib.request; urllib.request.urlopen('{probe}')"
                ))
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            if ok {
                return helper;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{args:?} did not answer"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for ns in self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// What the echo service saw of one request: its path and its `traceparent` headers.
#[derive(Debug)]
struct Echoed {
    path: String,
    traceparent: Vec<String>,
}

/// GETs each of `paths` through the front service (from its own namespace), with the
/// `traceparent` given beside a path; returns what the echo service saw.
fn through_front(
    hosts: &TwoHosts,
    port: u16,
    requests: &[(String, Option<String>)],
) -> Vec<Echoed> {
    let script = "import json, sys, urllib.request\n\
        for path, tp in json.loads(sys.argv[1]):\n\
        \x20   headers = {'traceparent': tp} if tp else {}\n\
        \x20   req = urllib.request.Request(sys.argv[2] + path, headers=headers)\n\
        \x20   print(urllib.request.urlopen(req, timeout=10).read().decode(), flush=True)\n";
    let out = run(hosts
        .command(0, &["python3", "-c", script])
        .arg(serde_json::to_string(requests).unwrap())
        .arg(format!("http://{FRONT_IP}:{port}"))
        .env("OTEL_SERVICE_NAME", "prop-client"));
    out.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            Echoed {
                path: text(&v["path"]),
                traceparent: v["traceparent"]
                    .as_array()
                    .map(|a| a.iter().map(text).collect())
                    .unwrap_or_default(),
            }
        })
        .collect()
}

#[test]
fn an_injected_traceparent_carries_the_trace_to_another_namespace() {
    let _serial = serial();
    let hosts = TwoHosts::start();
    let (front_port, echo_port) = (free_port(), free_port());
    let echo_url = format!("http://{ECHO_IP}:{echo_port}");
    let _echo = hosts.relay(
        1,
        &["echo", ECHO_IP, &echo_port.to_string()],
        "prop-echo",
        &format!("{echo_url}/ready"),
    );
    let _front = hosts.relay(
        0,
        &["front", FRONT_IP, &front_port.to_string(), &echo_url],
        "prop-front",
        &format!("http://{FRONT_IP}:{front_port}/ready"),
    );
    let pid = std::process::id();
    let own_trace = format!("5bf92f3577b34da6{pid:016x}");
    let own_parent = "00f067aa0ba902b7".to_string();
    let requests: Vec<(String, Option<String>)> = (1..=3)
        .map(|i| (format!("/prop-{pid}-{i}"), None))
        .chain([(
            format!("/prop-{pid}-own"),
            Some(format!("00-{own_trace}-{own_parent}-01")),
        )])
        .collect();

    // Off (the default): nothing is added.
    {
        let (_sonde, _collector) = sonde_with_collector();
        let seen = through_front(&hosts, front_port, &requests[..1]);
        assert_eq!(seen.len(), 1);
        assert!(seen[0].traceparent.is_empty(), "{seen:?}");
    }

    let (sonde, collector) = sonde_with_collector_and(&["--inject-traceparent", "true"]);
    let before = sonde.metrics();
    let seen = through_front(&hosts, front_port, &requests);
    let paths: Vec<&str> = requests.iter().map(|(p, _)| p.as_str()).collect();
    let mine = |s: &ReceivedSpan| {
        s.attr("url.path")
            .is_some_and(|p| paths.contains(&p.as_str()))
    };
    collector.wait_spans(4 * requests.len(), 30, mine);
    std::thread::sleep(Duration::from_secs(1));
    let spans = collector.spans(mine);
    let all: Vec<&ReceivedSpan> = spans.iter().collect();
    assert_eq!(seen.len(), requests.len(), "{seen:?}");
    for (echoed, (path, own)) in seen.iter().zip(&requests) {
        assert_eq!(&echoed.path, path);
        let these: Vec<&ReceivedSpan> = all.iter().copied().filter(|s| path_is(s, path)).collect();
        let sent = one(&these, "client CLIENT span", |s| {
            service(s) == "prop-client"
        });
        let served = one(&these, "front SERVER span", |s| {
            service(s) == "prop-front" && s.span.kind == SERVER
        });
        let call = one(&these, "front CLIENT span", |s| {
            service(s) == "prop-front" && s.span.kind == CLIENT
        });
        let echo = one(&these, "echo SERVER span", |s| service(s) == "prop-echo");
        // The header the echo service got: exactly one, naming the front's CLIENT span.
        assert_eq!(echoed.traceparent.len(), 1, "{echoed:?}");
        let header: Vec<&str> = echoed.traceparent[0].split('-').collect();
        assert_eq!(header.len(), 4, "{echoed:?}");
        assert_eq!(header[0], "00");
        assert_eq!(
            header[1],
            hex(&call.span.trace_id),
            "{echoed:?}{}",
            describe(&these)
        );
        assert_eq!(
            header[2],
            hex(&call.span.span_id),
            "{echoed:?}{}",
            describe(&these)
        );
        assert_eq!(header[3], "01");
        assert_child_of(call, served, "front CLIENT <- front SERVER", &these);
        assert_child_of(echo, call, "echo SERVER <- front CLIENT", &these);
        assert_child_of(served, sent, "front SERVER <- client CLIENT", &these);
        match own {
            // The client's own context, read by the kernel at the front: one trace.
            Some(_) => {
                assert_eq!(hex(&sent.span.trace_id), own_trace, "{}", describe(&these));
                assert_eq!(hex(&sent.span.parent_span_id), own_parent);
            }
            None => assert!(sent.span.parent_span_id.is_empty(), "{}", describe(&these)),
        }
    }
    let m = wait_metrics(&sonde, 20, |m| {
        links(m, "injected", "linked") - links(&before, "injected", "linked") >= 4.0
    });
    let delta = |kind, result| links(&m, kind, result) - links(&before, kind, result);
    assert_eq!(delta("injected", "linked"), 4.0, "{}", graph(&m));
    assert_eq!(delta("injected", "mismatch"), 0.0, "{}", graph(&m));
    // The client's three requests without a header of their own start traces (and so do
    // this test's scrapes of /metrics).
    assert!(delta("injected", "new_trace") >= 3.0, "{}", graph(&m));
    let injections =
        |m: &Metrics, result| m.sum("sonde_traceparent_injections_total", &[("result", result)]);
    let m = wait_metrics(&sonde, 5, |m| {
        injections(m, "has_own") - injections(&before, "has_own") >= 1.0
    });
    assert_eq!(
        injections(&m, "has_own") - injections(&before, "has_own"),
        1.0
    );
    assert!(injections(&m, "injected") - injections(&before, "injected") >= 7.0);
    assert_eq!(injections(&m, "failed"), 0.0);
}
