//! HTTPS read in clear text through the OpenSSL uprobes (libssl.so.3, bullseye's
//! libssl.so.1.1, and OpenSSL linked into node): nginx with a TLS listener driven by curl, Python `requests`, httpx's async
//! client and Node's `https`, Python's own `http.server` wrapped in `ssl`, and a Node HTTPS
//! server; exact counts, statuses, sizes and `url.scheme=https` on both sides, keep-alive,
//! and a connection its client opened before sonde started.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sonde_tests::*;

fn on_port(s: &Value, port: u16) -> bool {
    s["attributes"]["server.port"].as_u64() == Some(port as u64)
}

/// One curl process: `urls` on one keep-alive connection, certificates not checked.
fn curl_keep_alive(urls: &[String]) {
    let mut cmd = Command::new("curl");
    cmd.arg("-sk");
    for url in urls {
        cmd.args(["-o", "/dev/null", url]);
    }
    run(&mut cmd);
}

/// Each span's (url.path, status code), in order.
fn paths_and_statuses(spans: &[Value]) -> Vec<(String, String)> {
    spans
        .iter()
        .map(|s| {
            (
                attr(s, "url.path").unwrap(),
                attr(s, "http.response.status_code").unwrap(),
            )
        })
        .collect()
}

fn https_nginx(name: &str) -> (Nginx, u16) {
    let dir = tempdir(&format!("{name}-cert"));
    let (cert, key) = self_signed_certificate(&dir);
    let port = free_port();
    let nginx = Nginx::start(
        name,
        &[format!("127.0.0.1:{port} ssl")],
        port,
        &format!(
            "ssl_certificate {cert};\nssl_certificate_key {key};\n\
             location /secure/ {{ return 200 \"secure\\n\"; }}\n\
             location /secure/missing {{ return 404; }}\n\
             location /secure/post {{ return 200 \"secure\\n\"; }}"
        ),
    );
    (nginx, port)
}

#[test]
fn https_through_nginx_from_curl_and_python_requests() {
    // The nginx tests take turns: the nginx histogram counts below are per service.
    let _serial = serial();
    let (_nginx, port) = https_nginx("tls-nginx");
    let sonde = Sonde::start();
    let url = |p: &str| format!("https://127.0.0.1:{port}/secure/{p}");
    // curl: 4 requests on one keep-alive connection, the last a 404.
    curl_keep_alive(&[url("a"), url("b"), url("c"), url("missing")]);
    // Python requests: 3 requests on one session (one connection), OpenSSL through `ssl`.
    let script = format!(
        "import requests, urllib3\nurllib3.disable_warnings()\ns = requests.Session()\n\
         for p in ['x', 'y', 'z']:\n    assert s.get('{}' + p, verify=False).status_code == 200\n",
        url("")
    );
    run(Command::new("python3")
        .args(["-c", &script])
        .env("OTEL_SERVICE_NAME", "py-https"));

    let server = sonde.wait_spans(7, |s| kind(s) == "SERVER" && on_port(s, port));
    let health: Vec<String> = sonde
        .metrics()
        .0
        .lines()
        .filter(|l| l.starts_with("sonde_") && !l.ends_with(" 0"))
        .map(String::from)
        .collect();
    assert_eq!(server.len(), 7, "{server:#?}\n{health:#?}");
    let clients = |service: &str| {
        sonde.wait_spans(1, |s| {
            kind(s) == "CLIENT" && on_port(s, port) && s["service.name"] == service
        })
    };
    let curl = clients("curl");
    let python = clients("py-https");
    assert_eq!((curl.len(), python.len()), (4, 3), "{curl:#?}\n{python:#?}");
    for s in server.iter().chain(&curl).chain(&python) {
        assert_eq!(attr(s, "url.scheme").as_deref(), Some("https"), "{s:#}");
        let missing = attr(s, "url.path").as_deref() == Some("/secure/missing");
        let status = if missing { "404" } else { "200" };
        assert_eq!(
            attr(s, "http.response.status_code").as_deref(),
            Some(status)
        );
        if !missing {
            assert_eq!(attr(s, "http.response.body.size").as_deref(), Some("7"));
        }
    }
    // Keep-alive: one client port per client process, on both sides.
    for spans in [&curl, &python] {
        let ports: std::collections::BTreeSet<_> = spans
            .iter()
            .map(|s| s["attributes"]["network.peer.port"].to_string())
            .collect();
        assert_eq!(ports.len(), 1, "{spans:#?}");
    }
    let m = sonde.metrics();
    let https = [("url_scheme", "https"), ("service_name", "nginx")];
    assert_eq!(
        m.sum("http_server_request_duration_seconds_count", &https),
        7.0
    );
    assert!(m.sum("sonde_tls_libraries", &[]) >= 1.0);
    assert!(m.sum("sonde_tls_plaintext_events_total", &[]) >= 28.0);
    assert_eq!(tls_fd_unknown(&m), 0.0);
}

/// Plaintext events dropped because no socket could be tied to them.
fn tls_fd_unknown(m: &Metrics) -> f64 {
    m.sum(
        "sonde_events_dropped_total",
        &[("reason", "tls_fd_unknown")],
    )
}

/// Python's http.server in `ssl` (the server side in Python), and a client whose
/// connection was opened before sonde started: found from its ciphertext, which starts like
/// a TLS record, inside the call.
#[test]
fn python_https_server_and_a_connection_older_than_sonde() {
    let _serial = serial();
    let dir = tempdir("tls-python");
    let (cert, key) = self_signed_certificate(&dir);
    let port = free_port();
    let server_script = format!(
        "import http.server, ssl\n\
         class H(http.server.BaseHTTPRequestHandler):\n    protocol_version = 'HTTP/1.1'\n\
         \x20   def log_message(self, *a): pass\n\
         \x20   def do_GET(self):\n        body = b'hello over tls'\n\
         \x20       self.send_response(200); self.send_header('Content-Length', str(len(body)))\n\
         \x20       self.end_headers(); self.wfile.write(body)\n\
         srv = http.server.ThreadingHTTPServer(('127.0.0.1', {port}), H)\n\
         ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain('{cert}', '{key}')\n\
         srv.socket = ctx.wrap_socket(srv.socket, server_side=True)\nsrv.serve_forever()\n"
    );
    let mut server = Command::new("python3");
    server
        .args(["-c", &server_script])
        .env("OTEL_SERVICE_NAME", "py-tls-server");
    std::mem::forget(spawn_owned(server));
    wait_port(port, "python https server");
    // The client connects and makes one request before sonde starts, then 3 more on the same
    // connection once the test creates the file `go`.
    let go = dir.join("go");
    let client_script = format!(
        "import http.client, os, ssl, time\n\
         ctx = ssl._create_unverified_context()\n\
         c = http.client.HTTPSConnection('127.0.0.1', {port}, context=ctx)\n\
         def get(p):\n    c.request('GET', p); r = c.getresponse(); r.read(); return r.status\n\
         print(get('/before'), flush=True)\n\
         while not os.path.exists('{}'): time.sleep(0.05)\n\
         for _ in range(3): print(get('/after'), flush=True)\n",
        go.display()
    );
    let mut client = Command::new("python3");
    client
        .args(["-c", &client_script])
        .env("OTEL_SERVICE_NAME", "py-tls-client")
        .stdout(Stdio::piped());
    let mut client = spawn_owned(client);
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "200");

    let sonde = Sonde::start();
    std::fs::write(&go, "").unwrap();
    for _ in 0..3 {
        line.clear();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "200");
    }
    let _ = client.wait();

    // The server's thread was already inside SSL_read, waiting for the first of the three,
    // when sonde attached: that read has no entry probe hit, so the server side starts at
    // the second request (the first one's response is counted as unpaired, not guessed).
    for (kind_, service, n) in [
        ("SERVER", "py-tls-server", 2),
        ("CLIENT", "py-tls-client", 3),
    ] {
        let spans = sonde.wait_spans(n, |s| kind(s) == kind_ && s["service.name"] == service);
        assert_eq!(spans.len(), n, "{kind_}: {spans:#?}");
        for s in &spans {
            assert_eq!(attr(s, "url.path").as_deref(), Some("/after"));
            assert_eq!(attr(s, "url.scheme").as_deref(), Some("https"));
            assert_eq!(attr(s, "http.response.status_code").as_deref(), Some("200"));
            assert_eq!(attr(s, "http.response.body.size").as_deref(), Some("14"));
        }
    }
    // (At least: this sonde also sees the other test's traffic.)
    let unpaired = [("protocol", "http"), ("kind", "unpaired_response")];
    assert!(sonde.metrics().sum("sonde_parse_errors_total", &unpaired) >= 1.0);
}

/// Many TLS connections at once from several threads of one process: every request names
/// its own client port in its path, and the server span of each must carry that port as
/// its peer: no plaintext is put on another connection.
#[test]
fn threads_with_many_tls_connections_keep_each_call_on_its_connection() {
    let _serial = serial();
    let (_nginx, port) = https_nginx("tls-threads");
    let sonde = Sonde::start();
    let script = format!(
        "import http.client, ssl, threading\n\
         ctx = ssl._create_unverified_context()\n\
         def worker():\n\
         \x20   for _ in range(3):\n\
         \x20       c = http.client.HTTPSConnection('127.0.0.1', {port}, context=ctx)\n\
         \x20       c.connect()\n\
         \x20       me = c.sock.getsockname()[1]\n\
         \x20       for i in range(4):\n\
         \x20           c.request('GET', '/secure/%d-%d' % (me, i)); r = c.getresponse(); r.read()\n\
         \x20           assert r.status == 200\n\
         \x20       c.close()\n\
         ts = [threading.Thread(target=worker) for _ in range(8)]\n\
         [t.start() for t in ts]; [t.join() for t in ts]\n"
    );
    run(Command::new("python3")
        .args(["-c", &script])
        .env("OTEL_SERVICE_NAME", "tls-threads"));
    // 8 threads x 3 connections x 4 requests.
    let server = sonde.wait_spans(96, |s| kind(s) == "SERVER" && on_port(s, port));
    assert_eq!(server.len(), 96);
    for s in &server {
        let path = attr(s, "url.path").unwrap();
        let own_port = path
            .trim_start_matches("/secure/")
            .split('-')
            .next()
            .unwrap()
            .to_string();
        assert_eq!(
            attr(s, "network.peer.port").as_deref(),
            Some(own_port.as_str()),
            "{s:#}"
        );
        assert_eq!(attr(s, "url.scheme").as_deref(), Some("https"));
    }
    let client = sonde.wait_spans(96, |s| {
        kind(s) == "CLIENT" && s["service.name"] == "tls-threads"
    });
    assert_eq!(client.len(), 96);
    assert_eq!(tls_fd_unknown(&sonde.metrics()), 0.0);
}

/// Redis over TLS (`--tls-port`): redis-cli and redis-benchmark with `--tls` give the same
/// exact command counts as in clear text, on both sides.
#[test]
fn redis_over_tls_gives_exact_command_counts() {
    let _serial = serial();
    let dir = tempdir("tls-redis");
    let (cert, key) = self_signed_certificate(&dir);
    let port = free_port();
    let mut server = Command::new("redis-server");
    server
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--tls-cert-file", &cert, "--tls-key-file", &key])
        .args(["--tls-ca-cert-file", &cert, "--tls-auth-clients", "no"])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null());
    std::mem::forget(spawn_owned(server));
    let tls = |args: &[&str]| {
        let mut c = Command::new("redis-cli");
        c.args(["--tls", "--insecure", "-p", &port.to_string()])
            .args(args);
        c
    };
    let start = Instant::now();
    while !tls(&["ping"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
    {
        assert!(start.elapsed() < Duration::from_secs(20), "redis TLS start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let sonde = Sonde::start();
    run(&mut tls(&["SET", "tls:key", "v"]));
    run(Command::new("redis-benchmark")
        .args(["--tls", "--insecure", "-p", &port.to_string()])
        .args(["-c", "1", "-n", "50", "-t", "get", "-P", "5", "-q"]));
    let server_gets = sonde.wait_spans(50, |s| {
        kind(s) == "SERVER"
            && attr(s, "db.operation.name").as_deref() == Some("GET")
            && on_port(s, port)
    });
    assert_eq!(server_gets.len(), 50);
    let client_gets = sonde.wait_spans(50, |s| {
        kind(s) == "CLIENT"
            && s["service.name"] == "redis-benchmark"
            && attr(s, "db.operation.name").as_deref() == Some("GET")
    });
    assert_eq!(client_gets.len(), 50);
    let sets = sonde.wait_spans(2, |s| {
        attr(s, "db.operation.name").as_deref() == Some("SET") && on_port(s, port)
    });
    assert_eq!(sets.len(), 2, "one SET, seen by redis-cli and redis-server");
    let m = sonde.metrics();
    let count = "db_client_operation_duration_seconds_count";
    let labels = [
        ("db_system_name", "redis"),
        ("db_operation_name", "GET"),
        ("service_name", "redis-benchmark"),
    ];
    assert_eq!(m.sum(count, &labels), 50.0);
}

/// Node has OpenSSL linked in statically, with its symbols exported: the executable itself
/// gets the uprobes (within a second of the process's start). Node runs OpenSSL over memory
/// BIOs: its first SSL_write on a connection makes no syscall, and the write libuv makes
/// right after names the socket (its first record is exactly that plaintext's encryption).
/// Keep-alive requests, a POST with a body, and a second connection after the first SSL*
/// was freed: each request seen once on both sides, nothing dropped.
#[test]
fn node_https_client_with_openssl_linked_in() {
    let _serial = serial();
    let (_nginx, port) = https_nginx("tls-node");
    let sonde = Sonde::start();
    let go_file = tempdir("tls-node-go").join("go");
    let go = go_file.display();
    let script = format!(
        "const https = require('https');\n\
         const call = (agent, method, p, body) => new Promise((ok, fail) => {{\n\
           const req = https.request({{ host: '127.0.0.1', port: {port}, method, path: p, agent,\n\
             rejectUnauthorized: false, headers: body ? {{ 'content-length': body.length }} : {{}} }},\n\
             (r) => {{ r.resume(); r.on('end', () => ok(r.statusCode)); }});\n\
           req.on('error', fail); req.end(body);\n\
         }});\n\
         (async () => {{\n\
           // The test creates the file once sonde has attached to this node.\n\
           while (!require('fs').existsSync('{go}')) await new Promise((ok) => setTimeout(ok, 20));\n\
           let agent = new https.Agent({{ keepAlive: true, maxSockets: 1 }});\n\
           for (const p of ['/secure/n1', '/secure/n2', '/secure/missing']) console.log(await call(agent, 'GET', p));\n\
           console.log(await call(agent, 'POST', '/secure/post', 'x'.repeat(1000)));\n\
           agent.destroy();\n\
           await new Promise((ok) => setTimeout(ok, 100));\n\
           agent = new https.Agent({{ keepAlive: true, maxSockets: 1 }});\n\
           console.log(await call(agent, 'GET', '/secure/n3'));\n\
           agent.destroy();\n\
         }})();\n"
    );
    let mut node = Command::new("node");
    node.args(["-e", &script])
        .env("OTEL_SERVICE_NAME", "node-https")
        .stdout(Stdio::piped());
    let node = spawn_owned(node);
    sonde.wait_log("/usr/bin/node (OpenSSL linked in");
    std::fs::write(&go_file, "").unwrap();
    let out = node.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["200", "200", "404", "200", "200"]
    );
    let paths = [
        "/secure/n1",
        "/secure/n2",
        "/secure/missing",
        "/secure/post",
        "/secure/n3",
    ];
    let statuses = ["200", "200", "404", "200", "200"];
    let server = sonde.wait_spans(5, |s| kind(s) == "SERVER" && on_port(s, port));
    let client = sonde.wait_spans(5, |s| {
        kind(s) == "CLIENT" && on_port(s, port) && s["service.name"] == "node-https"
    });
    for side in [&server, &client] {
        assert_eq!(side.len(), 5, "{side:#?}");
        let seen = paths_and_statuses(side);
        let want: Vec<(String, String)> = paths
            .iter()
            .zip(statuses)
            .map(|(p, s)| (p.to_string(), s.to_string()))
            .collect();
        assert_eq!(seen, want);
        for s in side.iter() {
            assert_eq!(attr(s, "url.scheme").as_deref(), Some("https"), "{s}");
            let body = if attr(s, "url.path").as_deref() == Some("/secure/post") {
                "1000"
            } else {
                "0"
            };
            assert_eq!(
                attr(s, "http.request.body.size").as_deref(),
                Some(body),
                "{s}"
            );
        }
    }
    // The response sizes nginx sent, as both sides saw them.
    for s in server.iter().chain(&client) {
        if attr(s, "http.response.status_code").as_deref() == Some("200") {
            assert_eq!(
                attr(s, "http.response.body.size").as_deref(),
                Some("7"),
                "{s}"
            );
        }
    }
    // Four requests on the keep-alive connection, the fifth on a second one.
    let client_ports: Vec<String> = server
        .iter()
        .map(|s| attr(s, "network.peer.port").unwrap())
        .collect();
    assert!(client_ports[..4].iter().all(|p| *p == client_ports[0]));
    assert_ne!(client_ports[4], client_ports[0]);
    assert_eq!(tls_fd_unknown(&sonde.metrics()), 0.0);
    assert!(
        sonde.logs().contains("OpenSSL linked in"),
        "{}",
        sonde.logs()
    );
}

/// A Node HTTPS server: its SSL_read over a memory BIO comes before any write on the
/// connection, and the ciphertext read just before it (one of whose records is exactly
/// that plaintext's encryption) names the socket. curl's requests on one keep-alive
/// connection, a POST among them: each seen once by the server and by curl.
#[test]
fn node_https_server_reads_through_memory_bios() {
    let _serial = serial();
    let dir = tempdir("tls-node-server");
    let (cert, key) = self_signed_certificate(&dir);
    let port = free_port();
    let script = format!(
        "const https = require('https'), fs = require('fs');\n\
         https.createServer({{ cert: fs.readFileSync('{cert}'), key: fs.readFileSync('{key}') }}, (req, res) => {{\n\
           let size = 0;\n\
           req.on('data', (c) => size += c.length);\n\
           req.on('end', () => {{ res.statusCode = req.url.endsWith('missing') ? 404 : 200; res.end('node ' + size + '\\n'); }});\n\
         }}).listen({port}, '127.0.0.1');\n"
    );
    let sonde = Sonde::start();
    let mut node = Command::new("node");
    node.args(["-e", &script])
        .env("OTEL_SERVICE_NAME", "node-server")
        .stdout(Stdio::null());
    let mut node = spawn_owned(node);
    wait_port(port, "node");
    sonde.wait_log("/usr/bin/node (OpenSSL linked in");
    // curl runs too briefly for sonde's once-a-second look at /proc to find its libssl: a
    // process that keeps libssl.so.3 mapped (on a real host, almost any) has it attached.
    let mut holder = Command::new("python3");
    holder.args(["-c", "import ssl, time; time.sleep(120)"]);
    let mut holder = spawn_owned(holder);
    sonde.wait_log("libssl.so.3 (");
    let url = |p: &str| format!("https://127.0.0.1:{port}/{p}");
    curl_keep_alive(&[url("one"), url("two"), url("missing")]);
    run(Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "--data-binary", "0123456789"])
        .arg(url("post")));
    let server = sonde.wait_spans(4, |s| {
        kind(s) == "SERVER" && on_port(s, port) && s["service.name"] == "node-server"
    });
    let client = sonde.wait_spans(4, |s| kind(s) == "CLIENT" && on_port(s, port));
    for side in [&server, &client] {
        let seen: Vec<(String, String, String)> = side
            .iter()
            .map(|s| {
                (
                    attr(s, "url.path").unwrap(),
                    attr(s, "http.response.status_code").unwrap(),
                    attr(s, "http.request.body.size").unwrap(),
                )
            })
            .collect();
        let mut want = [
            ("/one", "200", "0"),
            ("/two", "200", "0"),
            ("/missing", "404", "0"),
            ("/post", "200", "10"),
        ]
        .map(|(p, s, b)| (p.to_string(), s.to_string(), b.to_string()));
        // Spans come in the order they are built, not sent: a server span may wait for
        // its client end (docs/traces.md).
        let mut seen = seen;
        seen.sort();
        want.sort();
        assert_eq!(seen, want, "{side:#?}");
        for s in side.iter() {
            assert_eq!(attr(s, "url.scheme").as_deref(), Some("https"), "{s}");
        }
    }
    assert_eq!(tls_fd_unknown(&sonde.metrics()), 0.0);
    let _ = node.kill();
    let _ = node.wait();
    let _ = holder.kill();
    let _ = holder.wait();
}

/// Python's asyncio TLS (`SSLObject` over memory BIOs, as httpx's async client and so
/// `AsyncOpenAI` use it): 3 requests on one connection, each seen once on both sides.
#[test]
fn python_asyncio_https_client_through_memory_bios() {
    let _serial = serial();
    let (_nginx, port) = https_nginx("tls-asyncio");
    let sonde = Sonde::start();
    let script = format!(
        "import asyncio, httpx\n\
         async def main():\n\
         \x20   async with httpx.AsyncClient(verify=False) as c:\n\
         \x20       for p in ['a1', 'a2', 'missing']:\n\
         \x20           print((await c.get('https://127.0.0.1:{port}/secure/' + p)).status_code)\n\
         asyncio.run(main())\n"
    );
    let out = run(Command::new("python3")
        .args(["-c", &script])
        .env("OTEL_SERVICE_NAME", "py-asyncio"));
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["200", "200", "404"]
    );
    let server = sonde.wait_spans(3, |s| kind(s) == "SERVER" && on_port(s, port));
    let client = sonde.wait_spans(3, |s| {
        kind(s) == "CLIENT" && on_port(s, port) && s["service.name"] == "py-asyncio"
    });
    for side in [&server, &client] {
        let seen = paths_and_statuses(side);
        let want = [
            ("/secure/a1", "200"),
            ("/secure/a2", "200"),
            ("/secure/missing", "404"),
        ]
        .map(|(p, s)| (p.to_string(), s.to_string()));
        assert_eq!(seen, want, "{side:#?}");
    }
    assert_eq!(tls_fd_unknown(&sonde.metrics()), 0.0);
}

/// OpenSSL 1.1 (`libssl.so.1.1`, Debian bullseye's 1.1.1, unpacked by `cargo xtask setup`):
/// `openssl s_client` sends two requests on one connection once sonde has attached to the
/// library it maps; each is seen once by s_client and by nginx.
#[test]
fn openssl_1_1_client() {
    let _serial = serial();
    let dir = openssl_1_1();
    let (_nginx, port) = https_nginx("tls-openssl11");
    let sonde = Sonde::start();
    let mut cmd = Command::new(dir.join("usr/bin/openssl"));
    cmd.args(["s_client", "-quiet", "-ign_eof", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .env("LD_LIBRARY_PATH", dir.join("usr/lib/x86_64-linux-gnu"))
        .env("OTEL_SERVICE_NAME", "openssl-1.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // Not spawn_owned, which closes stdin: the requests go in through it. nginx's close
    // after the second ends the process.
    let mut client = cmd.spawn().unwrap();
    sonde.wait_log("openssl-1.1/usr/lib/x86_64-linux-gnu/libssl.so.1.1");
    let host = format!("Host: 127.0.0.1:{port}\r\n");
    let requests = format!(
        "GET /secure/o1 HTTP/1.1\r\n{host}\r\n\
         GET /secure/missing HTTP/1.1\r\n{host}Connection: close\r\n\r\n"
    );
    std::io::Write::write_all(client.stdin.as_mut().unwrap(), requests.as_bytes()).unwrap();
    let out = client.wait_with_output().unwrap();
    let replies = String::from_utf8_lossy(&out.stdout);
    assert_eq!(replies.matches("HTTP/1.1 ").count(), 2, "{replies}");
    let server = sonde.wait_spans(2, |s| kind(s) == "SERVER" && on_port(s, port));
    let client = sonde.wait_spans(2, |s| {
        kind(s) == "CLIENT" && on_port(s, port) && s["service.name"] == "openssl-1.1"
    });
    let want = [("/secure/o1", "200"), ("/secure/missing", "404")]
        .map(|(p, s)| (p.to_string(), s.to_string()));
    for side in [&server, &client] {
        assert_eq!(paths_and_statuses(side), want, "{side:#?}");
    }
    assert!(sonde.logs().contains("libssl.so.1.1"), "{}", sonde.logs());
}
