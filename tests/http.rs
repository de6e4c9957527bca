//! HTTP/1.x end to end: the real probes, real nginx and python http.server, curl and wrk.
//!
//! One sonde, one nginx and one python server serve the whole file. Tests that compare metric
//! counters before and after take `SERIAL`, so no other test's traffic lands in between.
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use sonde_tests::*;

const NGINX_SERVICE: &str = "nginx";
const PY_SERVICE: &str = "sonde-test-python";

struct Env {
    sonde: Sonde,
    nginx: Nginx,
    py_port: u16,
}

static SERIAL: Mutex<()> = Mutex::new(());

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let port = free_port();
        let locations = "\
            location /keep/ { return 200 \"k\\n\"; }\n\
            location = /status/200 { return 200 \"ok\\n\"; }\n\
            location = /status/404 { return 404; }\n\
            location = /status/500 { return 500; }\n\
            location = /pipe/ok { return 200 \"p\\n\"; }\n\
            location = /pipe/missing { return 404; }\n\
            location = /pipe/err { return 500; }\n\
            location /upload { return 200 \"u\\n\"; }\n\
            location /dav/ { dav_methods PUT; create_full_put_path on; }\n\
            location /v6 { return 200 \"v6\\n\"; }\n\
            location /trace { return 200 \"t\\n\"; }\n\
            location /wrk { return 200 \"w\\n\"; }\n";
        let nginx = Nginx::start(
            "http-nginx",
            &[format!("127.0.0.1:{port}"), format!("[::1]:{port}")],
            port,
            locations,
        );
        let big = nginx.www("http-nginx").join("big");
        std::fs::create_dir_all(&big).unwrap();
        std::fs::write(big.join("file.bin"), vec![b'x'; 100_000]).unwrap();

        let py_dir = tempdir("http-python");
        std::fs::write(py_dir.join("hello.txt"), "hello from python\n").unwrap();
        let py_port = free_port();
        let mut py = Command::new("python3");
        py.args([
            "-m",
            "http.server",
            &py_port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(&py_dir)
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            format!("deployment.environment=test,service.name={PY_SERVICE}"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        std::mem::forget(spawn_owned(py));
        let start = std::time::Instant::now();
        while TcpStream::connect(("127.0.0.1", py_port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "python http.server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // wrk's second of load makes about half a million events, which sonde turns into
        // spans printed through a pipe this test process parses as JSON: on two cores the
        // ring must hold the burst while that catches up (with the default 8 MiB it overflowed
        // here, and the assertion below reports the ringbuf_full drops it then counts).
        let sonde = Sonde::start_with(&["--ring-buffer-mib", "128"]);
        Env {
            sonde,
            nginx,
            py_port,
        }
    })
}

fn curl(args: &[&str]) -> String {
    run(Command::new("curl")
        .args(["-s", "--max-time", "20"])
        .args(args))
}

fn is_nginx_server(s: &Value) -> bool {
    kind(s) == "SERVER" && s["service.name"] == NGINX_SERVICE
}

fn is_curl_client(s: &Value) -> bool {
    kind(s) == "CLIENT" && s["service.name"] == "curl"
}

fn server_count(m: &Metrics, status: &str) -> f64 {
    m.sum(
        "http_server_request_duration_seconds_count",
        &[
            ("service_name", NGINX_SERVICE),
            ("http_request_method", "GET"),
            ("http_response_status_code", status),
        ],
    )
}

#[test]
fn keep_alive_requests_give_exactly_n_spans_and_histogram_counts() {
    let env = env();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let port = env.nginx.port.to_string();
    let before = env.sonde.metrics();
    const N: usize = 1000;
    // One curl, one keep-alive connection, N sequential requests (URL globbing).
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--max-time",
        "60",
        &format!("http://127.0.0.1:{port}/keep/[1-{N}]"),
    ])
    .stdout(Stdio::null());
    assert!(cmd.status().unwrap().success());

    let server = env
        .sonde
        .wait_spans(N, |s| is_nginx_server(s) && path_starts(s, "/keep/"));
    assert_eq!(server.len(), N, "server spans");
    let paths: BTreeSet<String> = server.iter().filter_map(|s| attr(s, "url.path")).collect();
    let expected: BTreeSet<String> = (1..=N).map(|i| format!("/keep/{i}")).collect();
    assert_eq!(paths, expected);
    let peer_ports: BTreeSet<String> = server
        .iter()
        .filter_map(|s| attr(s, "network.peer.port"))
        .collect();
    assert_eq!(
        peer_ports.len(),
        1,
        "all requests rode one keep-alive connection"
    );
    for s in &server {
        assert_eq!(attr(s, "http.response.status_code").as_deref(), Some("200"));
        assert_eq!(attr(s, "http.request.method").as_deref(), Some("GET"));
        assert_eq!(attr(s, "server.port").as_deref(), Some(port.as_str()));
        assert_eq!(
            attr(s, "network.peer.address").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(attr(s, "client.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(attr(s, "http.response.body.size").as_deref(), Some("2"));
        assert_eq!(attr(s, "network.protocol.version").as_deref(), Some("1.1"));
        assert_eq!(attr(s, "error.type"), None);
        assert_eq!(s["name"], "GET");
        assert_eq!(s["process.executable.name"], "nginx");
        assert!(s["end_time_unix_nano"].as_u64() >= s["start_time_unix_nano"].as_u64());
    }
    let client = env
        .sonde
        .wait_spans(N, |s| is_curl_client(s) && path_starts(s, "/keep/"));
    assert_eq!(client.len(), N, "curl's client spans");
    assert!(client
        .iter()
        .all(|s| attr(s, "server.port").as_deref() == Some(port.as_str())));

    let after = env.sonde.metrics();
    assert_eq!(
        server_count(&after, "200") - server_count(&before, "200"),
        N as f64
    );
    let client_labels = [
        ("service_name", "curl"),
        ("server_port", port.as_str()),
        ("http_response_status_code", "200"),
    ];
    let client_delta = after.sum("http_client_request_duration_seconds_count", &client_labels)
        - before.sum("http_client_request_duration_seconds_count", &client_labels);
    assert_eq!(client_delta, N as f64);
}

#[test]
fn status_codes_and_error_types_on_both_sides() {
    let env = env();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let port = env.nginx.port;
    let before = env.sonde.metrics();
    for code in ["200", "404", "500"] {
        curl(&[
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{port}/status/{code}"),
        ]);
    }
    let server = env
        .sonde
        .wait_spans(3, |s| is_nginx_server(s) && path_starts(s, "/status/"));
    let client = env
        .sonde
        .wait_spans(3, |s| is_curl_client(s) && path_starts(s, "/status/"));
    assert_eq!(server.len(), 3);
    assert_eq!(client.len(), 3);
    for code in ["200", "404", "500"] {
        let path = format!("/status/{code}");
        let s = server
            .iter()
            .find(|s| attr(s, "url.path").as_deref() == Some(&path))
            .expect("server span");
        let c = client
            .iter()
            .find(|s| attr(s, "url.path").as_deref() == Some(&path))
            .expect("client span");
        assert_eq!(attr(s, "http.response.status_code").as_deref(), Some(code));
        assert_eq!(attr(c, "http.response.status_code").as_deref(), Some(code));
        // Servers fail on 5xx only; clients on 4xx and 5xx.
        let server_error = (code == "500").then(|| code.to_string());
        let client_error = (code != "200").then(|| code.to_string());
        assert_eq!(attr(s, "error.type"), server_error, "{path} server");
        assert_eq!(attr(c, "error.type"), client_error, "{path} client");
        assert_eq!(
            attr(c, "network.peer.port").as_deref(),
            Some(port.to_string().as_str())
        );
    }
    let after = env.sonde.metrics();
    let errors = |m: &Metrics| {
        m.sum(
            "http_server_request_duration_seconds_count",
            &[
                ("service_name", NGINX_SERVICE),
                ("http_response_status_code", "500"),
                ("error_type", "500"),
            ],
        )
    };
    assert_eq!(errors(&after) - errors(&before), 1.0);
    assert_eq!(
        server_count(&after, "404") - server_count(&before, "404"),
        1.0
    );
}

#[test]
fn three_pipelined_requests_in_one_write_are_paired_in_order() {
    let env = env();
    // nginx traffic: the histogram-count tests must not see it land mid-way.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let port = env.nginx.port;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let h = format!("Host: 127.0.0.1:{port}\r\n");
    let batch = format!(
        "GET /pipe/ok HTTP/1.1\r\n{h}\r\nGET /pipe/missing HTTP/1.1\r\n{h}\r\nGET /pipe/err HTTP/1.1\r\n{h}Connection: close\r\n\r\n"
    );
    s.write_all(batch.as_bytes()).unwrap();
    let mut reply = String::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_to_string(&mut reply).unwrap();
    assert_eq!(reply.matches("HTTP/1.1 ").count(), 3, "{reply}");

    // Each path must carry its own status: pairing in order, not by arrival.
    let want = [
        ("/pipe/ok", "200"),
        ("/pipe/missing", "404"),
        ("/pipe/err", "500"),
    ];
    let server = env
        .sonde
        .wait_spans(3, |s| is_nginx_server(s) && path_starts(s, "/pipe/"));
    assert_eq!(server.len(), 3);
    let me = std::process::id();
    let client = env.sonde.wait_spans(3, |s| {
        kind(s) == "CLIENT" && s["process.pid"] == me && path_starts(s, "/pipe/")
    });
    assert_eq!(client.len(), 3, "the test process's own client spans");
    for spans in [&server, &client] {
        for (path, status) in want {
            let s = spans
                .iter()
                .find(|s| attr(s, "url.path").as_deref() == Some(path))
                .unwrap();
            assert_eq!(
                attr(s, "http.response.status_code").as_deref(),
                Some(status),
                "{path}"
            );
        }
    }
}

#[test]
fn ipv6_loopback_is_observed() {
    let env = env();
    // nginx traffic: the histogram-count tests must not see it land mid-way.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let port = env.nginx.port;
    curl(&["-g", "-o", "/dev/null", &format!("http://[::1]:{port}/v6")]);
    let server = env
        .sonde
        .wait_spans(1, |s| is_nginx_server(s) && path_starts(s, "/v6"));
    let client = env
        .sonde
        .wait_spans(1, |s| is_curl_client(s) && path_starts(s, "/v6"));
    assert_eq!(server.len(), 1);
    assert_eq!(client.len(), 1);
    assert_eq!(
        attr(&server[0], "network.peer.address").as_deref(),
        Some("::1")
    );
    assert_eq!(attr(&server[0], "client.address").as_deref(), Some("::1"));
    assert_eq!(attr(&server[0], "server.address").as_deref(), Some("::1"));
    assert_eq!(
        attr(&client[0], "network.peer.address").as_deref(),
        Some("::1")
    );
    assert_eq!(
        attr(&client[0], "network.peer.port").as_deref(),
        Some(port.to_string().as_str())
    );
}

#[test]
fn a_traceparent_a_client_sends_puts_its_call_in_that_trace() {
    let env = env();
    // nginx traffic: the histogram-count tests must not see it land mid-way.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let port = env.nginx.port;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    curl(&[
        "-o",
        "/dev/null",
        "-H",
        &format!("traceparent: 00-{trace}-{parent}-01"),
        &format!("http://127.0.0.1:{port}/trace"),
    ]);
    // curl's span is the child of the span its header names; nginx's, seen at the other
    // end of the connection, is the child of curl's.
    let client = env
        .sonde
        .wait_spans(1, |s| is_curl_client(s) && path_starts(s, "/trace"));
    let server = env
        .sonde
        .wait_spans(1, |s| is_nginx_server(s) && path_starts(s, "/trace"));
    assert_eq!((client.len(), server.len()), (1, 1));
    assert_eq!(client[0]["trace_id"], trace);
    assert_eq!(client[0]["parent_span_id"], parent);
    assert_eq!(server[0]["trace_id"], trace);
    assert_eq!(server[0]["parent_span_id"], client[0]["span_id"]);
    assert_ne!(server[0]["span_id"], parent);
}

#[test]
fn body_sizes_are_right_beyond_the_copied_prefix() {
    let env = env();
    // nginx traffic: the histogram-count tests must not see it land mid-way.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let port = env.nginx.port;
    // 100000 bytes served by nginx with sendfile: the body never passes through write().
    curl(&[
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{port}/big/file.bin"),
    ]);
    let server = env
        .sonde
        .wait_spans(1, |s| is_nginx_server(s) && path_starts(s, "/big/"));
    let client = env
        .sonde
        .wait_spans(1, |s| is_curl_client(s) && path_starts(s, "/big/"));
    assert_eq!(server.len(), 1);
    assert_eq!(client.len(), 1);
    assert_eq!(
        attr(&server[0], "http.response.body.size").as_deref(),
        Some("100000")
    );
    assert_eq!(
        attr(&client[0], "http.response.body.size").as_deref(),
        Some("100000")
    );

    // A 50000-byte upload: a POST, and a PUT that waits for `100 Continue` (nginx's WebDAV
    // handler reads the body, so it sends the interim response first).
    let dir = tempdir("upload");
    let file = dir.join("body.bin");
    std::fs::write(&file, vec![b'y'; 50_000]).unwrap();
    let data = format!("@{}", file.display());
    curl(&[
        "-o",
        "/dev/null",
        "--data-binary",
        &data,
        &format!("http://127.0.0.1:{port}/upload/plain"),
    ]);
    let verbose = Command::new("curl")
        .args([
            "-sv",
            "-o",
            "/dev/null",
            "-H",
            "Expect: 100-continue",
            "-T",
            &file.display().to_string(),
            &format!("http://127.0.0.1:{port}/dav/continue.bin"),
        ])
        .output()
        .unwrap();
    let verbose = String::from_utf8_lossy(&verbose.stderr);
    assert!(
        verbose.contains("HTTP/1.1 100 Continue"),
        "nginx sent no 100 Continue:\n{verbose}"
    );
    for (path, method, status) in [
        ("/upload/plain", "POST", "200"),
        ("/dav/continue.bin", "PUT", "201"),
    ] {
        let server = env
            .sonde
            .wait_spans(1, |s| is_nginx_server(s) && path_starts(s, path));
        let client = env
            .sonde
            .wait_spans(1, |s| is_curl_client(s) && path_starts(s, path));
        assert_eq!(server.len(), 1, "{path}");
        assert_eq!(client.len(), 1, "{path}");
        for s in [&server[0], &client[0]] {
            assert_eq!(attr(s, "http.request.method").as_deref(), Some(method));
            assert_eq!(
                attr(s, "http.request.body.size").as_deref(),
                Some("50000"),
                "{path}"
            );
            // The interim 100 Continue is not the response.
            assert_eq!(
                attr(s, "http.response.status_code").as_deref(),
                Some(status),
                "{path}"
            );
        }
    }
}

#[test]
fn chunked_request_body_is_framed() {
    let env = env();
    // nginx traffic: the histogram-count tests must not see it land mid-way.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let port = env.nginx.port;
    let dir = tempdir("chunked");
    let file = dir.join("body.txt");
    std::fs::write(&file, "0123456789".repeat(10)).unwrap();
    curl(&[
        "-o",
        "/dev/null",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("http://127.0.0.1:{port}/upload/chunked"),
    ]);
    let server = env.sonde.wait_spans(1, |s| {
        is_nginx_server(s) && path_starts(s, "/upload/chunked")
    });
    assert_eq!(server.len(), 1);
    assert_eq!(
        attr(&server[0], "http.response.status_code").as_deref(),
        Some("200")
    );
    // 100 data bytes in one chunk: "64\r\n" + data + "\r\n" + "0\r\n\r\n".
    assert_eq!(
        attr(&server[0], "http.request.body.size").as_deref(),
        Some("111")
    );
}

#[test]
fn wrk_load_is_counted() {
    let env = env();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let port = env.nginx.port;
    // Two connections for one second: enough load to interleave, while staying under what
    // sonde can print as JSON on this shared 2-core machine next to wrk, nginx and this
    // test's own JSON reader (beyond that the ring fills, which is counted, not exact).
    let out = run(Command::new("wrk").args([
        "-t1",
        "-c2",
        "-d1s",
        &format!("http://127.0.0.1:{port}/wrk"),
    ]));
    let n: usize = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk output: {out}"));
    assert!(n > 100, "{out}");
    let server = env
        .sonde
        .wait_spans(n, |s| is_nginx_server(s) && path_starts(s, "/wrk"));
    let client = env.sonde.wait_spans(n, |s| {
        kind(s) == "CLIENT" && s["service.name"] == "wrk" && path_starts(s, "/wrk")
    });
    // wrk stops with up to one request in flight per connection (2): those may be answered
    // by nginx but not counted by wrk.
    let dropped = env.sonde.metrics().sum("sonde_events_dropped_total", &[]);
    assert!(
        server.len() >= n && server.len() <= n + 2,
        "server spans {} vs wrk {n} ({dropped} events dropped)",
        server.len()
    );
    let answered = client
        .iter()
        .filter(|s| attr(s, "http.response.status_code").is_some())
        .count();
    assert!(
        answered >= n && answered <= n + 2,
        "wrk client spans {answered} vs wrk {n}"
    );
    assert_eq!(dropped, 0.0, "events dropped");
}

#[test]
fn python_http_server_with_resource_attribute_service_name() {
    let env = env();
    let port = env.py_port;
    curl(&[
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{port}/hello.txt"),
    ]);
    curl(&[
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{port}/missing.txt?token=secret"),
    ]);
    let server = env.sonde.wait_spans(2, |s| {
        kind(s) == "SERVER" && s["service.name"] == PY_SERVICE
    });
    assert_eq!(server.len(), 2, "{server:?}");
    let ok = server
        .iter()
        .find(|s| attr(s, "url.path").as_deref() == Some("/hello.txt"))
        .unwrap();
    assert_eq!(
        attr(ok, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(ok, "http.response.body.size").as_deref(), Some("18"));
    assert!(ok["process.executable.name"]
        .as_str()
        .unwrap()
        .starts_with("python"));
    let missing = server
        .iter()
        .find(|s| attr(s, "url.path").as_deref() == Some("/missing.txt"))
        .unwrap();
    assert_eq!(
        attr(missing, "http.response.status_code").as_deref(),
        Some("404")
    );
    assert_eq!(
        attr(missing, "error.type"),
        None,
        "404 is not a server error"
    );
    // The query string (and its secret) never appears anywhere.
    assert!(!serde_json::to_string(&server).unwrap().contains("secret"));
    assert!(!env.sonde.metrics().0.contains("secret"));

    // A client process with OTEL_SERVICE_NAME: its client span carries that name.
    let script = format!(
        "import urllib.request, time\nurllib.request.urlopen('http://127.0.0.1:{port}/hello.txt?k=v').read()\ntime.sleep(0.5)\n"
    );
    run(Command::new("python3")
        .args(["-c", &script])
        .env("OTEL_SERVICE_NAME", "checkout-client"));
    let client = env.sonde.wait_spans(1, |s| {
        kind(s) == "CLIENT" && s["service.name"] == "checkout-client"
    });
    assert_eq!(client.len(), 1, "{client:?}");
    assert_eq!(attr(&client[0], "url.path").as_deref(), Some("/hello.txt"));
    assert_eq!(
        attr(&client[0], "http.response.status_code").as_deref(),
        Some("200")
    );
}

/// Starts `cmd` (a server on `port`), waits until it accepts, and returns its pid.
fn start_server(name: &str, cmd: Command, port: u16) -> u32 {
    let child = spawn_owned(cmd);
    let pid = child.id();
    std::mem::forget(child);
    let start = std::time::Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{name} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    pid
}

/// Five requests to a fork-per-connection server give five SERVER spans, each with the pid of
/// the child that served it and the server's service name and port.
fn assert_forked_server_spans(port: u16, parent_pid: u32, service: &str) {
    let env = env();
    for i in 0..5 {
        curl(&[
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{port}/index.html?i={i}"),
        ]);
    }
    let on_port = |s: &Value| {
        kind(s) == "SERVER" && attr(s, "server.port").as_deref() == Some(&port.to_string())
    };
    let spans = env.sonde.wait_spans(5, on_port);
    assert_eq!(spans.len(), 5, "{spans:?}");
    let mut pids = BTreeSet::new();
    for s in &spans {
        assert_eq!(s["service.name"], service, "{s}");
        assert_eq!(attr(s, "url.path").as_deref(), Some("/index.html"), "{s}");
        assert_eq!(
            attr(s, "http.response.status_code").as_deref(),
            Some("200"),
            "{s}"
        );
        let pid = s["process.pid"].as_u64().expect("process.pid") as u32;
        assert_ne!(pid, parent_pid, "served by a child, not the parent: {s}");
        pids.insert(pid);
    }
    assert_eq!(pids.len(), 5, "one child per connection: {pids:?}");
    // The client side is exact too.
    let clients = env.sonde.wait_spans(5, |s| {
        is_curl_client(s) && attr(s, "server.port").as_deref() == Some(&port.to_string())
    });
    assert_eq!(clients.len(), 5, "{clients:?}");
}

#[test]
fn fork_per_connection_server_that_moves_the_socket_to_stdin_and_stdout() {
    // busybox httpd accepts in the parent, which closes its copy; the child moves the socket
    // to fd 0, copies it to fd 1, reads the request from 0 and writes the response to 1.
    let dir = tempdir("http-busybox");
    std::fs::write(dir.join("index.html"), "hello from busybox\n").unwrap();
    let port = free_port();
    let mut cmd = Command::new("busybox");
    cmd.args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let pid = start_server("busybox httpd", cmd, port);
    assert_forked_server_spans(port, pid, "busybox");
}

#[test]
fn fork_per_connection_server_whose_child_uses_the_accepted_fd() {
    // Python's ForkingMixIn: the child serves on the fd the parent accepted.
    let dir = tempdir("http-forking-python");
    std::fs::write(dir.join("index.html"), "hello from a forked child\n").unwrap();
    let port = free_port();
    let script = format!(
        "import functools, http.server, socketserver\n\
         class S(socketserver.ForkingMixIn, http.server.HTTPServer): pass\n\
         h = functools.partial(http.server.SimpleHTTPRequestHandler, directory={dir:?})\n\
         S(('127.0.0.1', {port}), h).serve_forever()\n",
        dir = dir.display().to_string()
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script])
        .env("OTEL_SERVICE_NAME", "forking-python")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let pid = start_server("python ForkingMixIn server", cmd, port);
    assert_forked_server_spans(port, pid, "forking-python");
}

#[test]
fn forked_children_that_read_late_keep_their_own_connection() {
    // The parent accepts, forks, closes its copy and accepts the next connection on the
    // same fd number while the first child still sleeps: each child must still be matched
    // with the connection it inherited, not the one its parent holds by then.
    let env = env();
    let dir = tempdir("http-forking-late");
    std::fs::write(dir.join("index.html"), "late\n").unwrap();
    let port = free_port();
    let script = format!(
        "import functools, http.server, socketserver, time\n\
         class H(http.server.SimpleHTTPRequestHandler):\n\
         \x20   def setup(self):\n\
         \x20       time.sleep(0.4)\n\
         \x20       super().setup()\n\
         class S(socketserver.ForkingMixIn, http.server.HTTPServer): pass\n\
         S(('127.0.0.1', {port}), functools.partial(H, directory={dir:?})).serve_forever()\n",
        dir = dir.display().to_string()
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script])
        .env("OTEL_SERVICE_NAME", "late-forks")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    start_server("late-reading forking server", cmd, port);
    let clients: Vec<_> = (0..5)
        .map(|i| {
            Command::new("curl")
                .args(["-s", "-o", "/dev/null", "--max-time", "20"])
                .arg(format!("http://127.0.0.1:{port}/index.html?c={i}"))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in clients {
        assert!(c.wait().unwrap().success());
    }
    let spans = env.sonde.wait_spans(5, |s| {
        kind(s) == "SERVER" && attr(s, "server.port").as_deref() == Some(&port.to_string())
    });
    assert_eq!(spans.len(), 5, "{spans:?}");
    let peers: BTreeSet<String> = spans
        .iter()
        .filter_map(|s| attr(s, "network.peer.port"))
        .collect();
    assert_eq!(peers.len(), 5, "each child with its own client: {spans:?}");
    assert!(spans.iter().all(|s| s["service.name"] == "late-forks"));
}
