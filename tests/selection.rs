//! Configuration that decides what is captured and what it is called: include/exclude
//! selectors (executable, port, container), service-name overrides, `http.route`
//! patterns, and `payload_bytes`. The tests run one at a time: each counts requests in
//! metrics that would also see another test's servers.
use std::process::Command;

use serde_json::Value;
use sonde_tests::*;

/// A container id as a runtime would make it; the test puts a process in a cgroup named
/// after it, so /proc/PID/cgroup shows it exactly as under docker.
const CONTAINER: &str = "5e1ec7105e1ec7105e1ec7105e1ec7105e1ec7105e1ec7105e1ec7105e1ec710";

/// curl's status code for http://127.0.0.1:port/path, with extra curl arguments.
fn curl(port: u16, path: &str, extra: &[&str]) -> String {
    run(Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(extra)
        .arg(format!("http://127.0.0.1:{port}{path}")))
}

fn path_is(s: &Value, path: &str) -> bool {
    attr(s, "url.path").as_deref() == Some(path)
}

fn system_port(s: &Value, system: &str, port: u16) -> bool {
    attr(s, "db.system.name").as_deref() == Some(system)
        && attr(s, "server.port") == Some(port.to_string())
}

#[test]
fn include_and_exclude_select_by_executable_port_and_container() {
    let _serial = serial();
    let (a, b) = (free_port(), free_port());
    let _nginx = Nginx::start(
        "select-nginx",
        &[format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}")],
        a,
        "location / { return 200 \"ok\\n\"; }",
    );
    let redis = Redis::start("select-redis");
    let include = format!("exe=nginx,port={},container={CONTAINER}", redis.port);
    let exclude = format!("port={b}");
    let sonde = Sonde::start_with(&["--include", &include, "--exclude", &exclude]);

    for i in 0..3 {
        assert_eq!(curl(a, "/sel-a", &[]), "200");
        assert_eq!(curl(b, "/sel-b", &[]), "200");
        assert_eq!(redis.cli(&["SET", &format!("sel:{i}"), "v"]).trim(), "OK");
    }
    // A client that outlives its requests: sonde reads a process's cgroup from /proc,
    // which a process that has already exited no longer has.
    let script = format!(
        "import time, urllib.request\n\
         for _ in range(2):\n    print(urllib.request.urlopen('http://127.0.0.1:{a}/sel-c').status)\n\
         time.sleep(1)\n"
    );
    let statuses = in_container(CONTAINER, &format!("python3 -c \"{script}\""));
    assert_eq!(
        statuses.split_whitespace().collect::<Vec<_>>(),
        ["200", "200"]
    );

    let server = |s: &Value, p: &str| kind(s) == "SERVER" && path_is(s, p);
    let client = |s: &Value, p: &str| kind(s) == "CLIENT" && path_is(s, p);
    // nginx is included by its executable; curl on the host is not (nor is port a).
    let served_a = sonde.wait_spans(5, |s| server(s, "/sel-a") || server(s, "/sel-c"));
    assert_eq!(served_a.len(), 5, "{served_a:?}");
    assert!(served_a.iter().all(|s| s["service.name"] == "nginx"));
    // The client inside the container is included by the container id, and carries it.
    let from_container = sonde.spans(|s| client(s, "/sel-c"));
    assert_eq!(from_container.len(), 2, "{from_container:?}");
    assert!(from_container
        .iter()
        .all(|s| s["container.id"] == CONTAINER));
    let host_curl = sonde.spans(|s| client(s, "/sel-a"));
    assert!(
        host_curl.is_empty(),
        "host curl is not included: {host_curl:?}"
    );
    // Port b is excluded, which wins over nginx's include.
    let on_b = sonde.spans(|s| path_is(s, "/sel-b"));
    assert!(on_b.is_empty(), "{on_b:?}");
    // The Redis port is included: both its client and its server side.
    let redis_spans = sonde.wait_spans(6, |s| system_port(s, "redis", redis.port));
    assert_eq!(
        redis_spans.iter().filter(|s| kind(s) == "CLIENT").count(),
        3
    );
    assert_eq!(
        redis_spans.iter().filter(|s| kind(s) == "SERVER").count(),
        3
    );

    let m = sonde.metrics();
    let server_count = "http_server_request_duration_seconds_count";
    assert_eq!(m.sum(server_count, &[("service_name", "nginx")]), 5.0);
    let client_count = "http_client_request_duration_seconds_count";
    assert_eq!(m.sum(client_count, &[("server_port", &b.to_string())]), 0.0);
    assert_eq!(m.sum(client_count, &[("server_port", &a.to_string())]), 2.0);
}

#[test]
fn service_names_and_http_routes_from_a_configuration_file() {
    let _serial = serial();
    let port = free_port();
    let _nginx = Nginx::start(
        "names-nginx",
        &[format!("127.0.0.1:{port}")],
        port,
        "location / { return 200 \"ok\\n\"; }",
    );
    let redis = Redis::start("names-redis");
    let dir = tempdir("names-config");
    let config = dir.join("sonde.yaml");
    let yaml = format!(
        "service_names: ['exe=nginx:gateway', 'port={}:queue']\n\
         http_routes:\n  - gateway=/users/me\n  - gateway=/users/{{id}}\n  - gateway=/static/*\n  - nginx=/other\n",
        redis.port
    );
    std::fs::write(&config, yaml).unwrap();
    let sonde = Sonde::start_with(&["--config", &config.display().to_string()]);

    for path in [
        "/users/42",
        "/users/7",
        "/users/me",
        "/static/css/a.css",
        "/other?token=secret",
    ] {
        assert_eq!(curl(port, path, &[]), "200", "{path}");
    }
    assert_eq!(redis.cli(&["SET", "names:k", "v"]).trim(), "OK");

    let is_gateway = |s: &Value| kind(s) == "SERVER" && s["service.name"] == "gateway";
    let spans = sonde.wait_spans(5, is_gateway);
    assert_eq!(spans.len(), 5, "{spans:?}");
    let by_path = |p: &str| spans.iter().find(|s| path_is(s, p)).unwrap().clone();
    for (path, route) in [
        ("/users/42", "/users/{id}"),
        ("/users/7", "/users/{id}"),
        ("/users/me", "/users/me"),
        ("/static/css/a.css", "/static/*"),
    ] {
        let s = by_path(path);
        assert_eq!(attr(&s, "http.route").as_deref(), Some(route), "{s}");
        assert_eq!(s["name"], format!("GET {route}"));
    }
    // No pattern of the gateway matches (the `nginx` one belongs to a service that no
    // longer exists under that name): no route, and none guessed.
    let other = by_path("/other");
    assert_eq!(attr(&other, "http.route"), None, "{other}");
    assert_eq!(other["name"], "GET");
    // curl keeps its own name; so does the client side of Redis.
    let clients = sonde.spans(|s| kind(s) == "CLIENT" && path_is(s, "/users/42"));
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0]["service.name"], "curl");
    assert_eq!(
        attr(&clients[0], "http.route"),
        None,
        "routes are a server attribute"
    );
    let redis_spans = sonde.wait_spans(2, |s| system_port(s, "redis", redis.port));
    let name_of = |k: &str| {
        redis_spans
            .iter()
            .find(|s| kind(s) == k)
            .map(|s| s["service.name"].clone())
    };
    assert_eq!(name_of("SERVER"), Some("queue".into()));
    assert_eq!(name_of("CLIENT"), Some("redis-cli".into()));

    let m = sonde.metrics();
    let count = "http_server_request_duration_seconds_count";
    let route = |r: &str| m.sum(count, &[("service_name", "gateway"), ("http_route", r)]);
    assert_eq!(route("/users/{id}"), 2.0);
    assert_eq!(route("/users/me"), 1.0);
    assert_eq!(route("/static/*"), 1.0);
    assert_eq!(
        route(""),
        1.0,
        "the unmatched path has an empty route label"
    );
    assert_eq!(m.sum(count, &[("service_name", "nginx")]), 0.0);
    assert!(!m.0.contains("secret"), "query values never leave the host");
}

#[test]
fn payload_bytes_bounds_the_copy_and_a_cut_head_is_counted_not_guessed() {
    let _serial = serial();
    let port = free_port();
    let nginx = Nginx::start(
        "payload-nginx",
        &[format!("127.0.0.1:{port}")],
        port,
        "location /pb { return 200 \"ok\\n\"; }",
    );
    std::fs::write(
        nginx.www("payload-nginx").join("big.bin"),
        vec![b'x'; 100_000],
    )
    .unwrap();
    let sonde = Sonde::start_with(&["--payload-bytes", "384"]);

    // Longer than the 384 bytes copied from each end of an HTTP read or write together.
    let pad = format!("X-Pad: {}", "a".repeat(1200));
    assert_eq!(curl(port, "/pb-short", &[]), "200");
    assert_eq!(curl(port, "/pb-long", &["-H", &pad]), "200");
    assert_eq!(curl(port, "/big.bin", &[]), "200");

    let served = |s: &Value| kind(s) == "SERVER" && s["service.name"] == "nginx";
    let short = sonde.wait_spans(1, |s| served(s) && path_is(s, "/pb-short"));
    assert_eq!(short.len(), 1);
    assert_eq!(
        attr(&short[0], "http.response.status_code").as_deref(),
        Some("200")
    );
    // The whole body moved although only 384 bytes of each read were copied.
    let big = sonde.wait_spans(1, |s| served(s) && path_is(s, "/big.bin"));
    assert_eq!(big.len(), 1);
    assert_eq!(
        attr(&big[0], "http.response.body.size").as_deref(),
        Some("100000")
    );
    // The request head did not fit in the 384 + 384 bytes copied: no span is made up for
    // it, the cut is counted (on both sides: curl's write and nginx's read).
    let long = sonde.spans(|s| path_is(s, "/pb-long"));
    assert!(long.is_empty(), "{long:?}");
    let truncated = sonde.metrics().sum(
        "sonde_parse_errors_total",
        &[("protocol", "http"), ("kind", "truncated")],
    );
    assert_eq!(truncated, 2.0);
}

/// A client that exits right after its call keeps its `OTEL_SERVICE_NAME`: sonde reads a
/// process's environment at its first connect(), not at its first bytes, which may reach
/// sonde after the process is gone. sonde is stopped (SIGSTOP) from just after the connect
/// until the client has exited and been reaped, so its bytes are read only then.
#[test]
fn a_client_that_exits_before_sonde_reads_its_bytes_keeps_its_service_name() {
    let _serial = serial();
    let port = free_port();
    let _nginx = Nginx::start(
        "short-lived-nginx",
        &[format!("127.0.0.1:{port}")],
        port,
        "location / { return 200 \"ok\\n\"; }",
    );
    let mut sonde = Sonde::start();
    let script = format!(
        "import socket, sys\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         print('connected', flush=True)\n\
         sys.stdin.readline()\n\
         s.sendall(b'GET /short HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n\
         while s.recv(4096):\n    pass\n"
    );
    let mut client = Command::new("python3")
        .args(["-c", &script])
        .env("OTEL_SERVICE_NAME", "short-lived")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(client.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "connected\n");
    // sonde's drain runs every 10 ms: well past that, it has read the client's identity.
    std::thread::sleep(std::time::Duration::from_millis(300));
    sonde.pause();
    std::io::Write::write_all(client.stdin.as_mut().unwrap(), b"go\n").unwrap();
    assert!(client.wait().unwrap().success());
    sonde.resume();
    let spans = sonde.wait_spans(1, |s| kind(s) == "CLIENT" && path_is(s, "/short"));
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0]["service.name"], "short-lived", "{:#}", spans[0]);
}
