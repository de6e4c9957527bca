//! OTLP export end to end: the real probes, real nginx / redis-server / PostgreSQL, and a
//! real OTLP receiver in this process (gRPC with tonic, HTTP/protobuf) decoding the protobuf.
//!
//! Each test starts its own sonde (the OTLP settings differ) and they run one at a time:
//! every sonde sees the whole host, and the tests count exact numbers of spans and points.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use sonde_tests::collector::{start_grpc, start_grpc_tls, Collector, HttpCollector, ReceivedSpan};
use sonde_tests::pki::Pki;
use sonde_tests::*;

fn nginx(name: &str) -> Nginx {
    let port = free_port();
    Nginx::start(
        name,
        &[format!("127.0.0.1:{port}")],
        port,
        "location / { return 200 \"r\\n\"; }\n",
    )
}

/// `n` GETs of `path` on one keep-alive connection, each answered before the next is sent.
fn get_many(port: u16, path: &str, n: usize, header: Option<&str>) {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let extra = header.map(|h| format!("{h}\r\n")).unwrap_or_default();
    for _ in 0..n {
        // One write per request: pieces would wait on delayed ACKs.
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n");
        writer.write_all(request.as_bytes()).unwrap();
        let mut len = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn path_is(s: &ReceivedSpan, p: &str) -> bool {
    s.attr("url.path").as_deref() == Some(p)
}

#[test]
fn grpc_spans_and_metrics_for_http_redis_and_postgres() {
    let _g = serial();
    let port = free_port();
    let collector = start_grpc(port);
    let endpoint = format!("http://127.0.0.1:{port}");
    let nginx = nginx("otlp-grpc-nginx");
    let redis = Redis::start("otlp-grpc-redis");
    let pg = Postgres::start("otlp-grpc-pg", &[]);
    let sonde = Sonde::start_with_env(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=ml-platform"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=ci"),
        ],
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let traceparent = format!("traceparent: 00-{trace}-{parent}-01");
    let t0 = clock_unix_ns();
    let url = format!("http://127.0.0.1:{}/otlp/traced", nginx.port);
    for _ in 0..5 {
        run(Command::new("curl").args(["-sf", "-H", &traceparent, &url]));
    }
    let t1 = clock_unix_ns();
    redis.cli(&["SET", "otlp:key", "secret-value"]);
    redis.cli(&["GET", "otlp:key"]);
    pg.psql("postgres", "SELECT 42 AS otlp_answer");

    // The client side is curl, whose own traceparent header is the parent of its span.
    let client = collector.wait_spans(5, 20, |s| path_is(s, "/otlp/traced") && s.span.kind == 3);
    assert_eq!(client.len(), 5, "5 CLIENT spans in curl");
    assert!(client.iter().all(|s| hex(&s.span.trace_id) == trace
        && hex(&s.span.parent_span_id) == parent
        && s.resource.get("service.name").map(String::as_str) == Some("curl")));
    let client_ids: std::collections::BTreeSet<_> =
        client.iter().map(|s| s.span.span_id.clone()).collect();
    // HTTP: the server spans keep the incoming trace, with curl's span (seen at the other
    // end of the connection) as their parent, and their own times.
    let server = collector.wait_spans(5, 20, |s| path_is(s, "/otlp/traced") && s.span.kind == 2);
    assert_eq!(server.len(), 5, "5 SERVER spans in nginx");
    let mut ids = std::collections::BTreeSet::new();
    let mut parents = std::collections::BTreeSet::new();
    for s in &server {
        assert_eq!(hex(&s.span.trace_id), trace);
        assert!(client_ids.contains(&s.span.parent_span_id), "{s:?}");
        parents.insert(s.span.parent_span_id.clone());
        assert_eq!(s.span.span_id.len(), 8);
        assert_ne!(s.span.span_id, vec![0; 8]);
        ids.insert(s.span.span_id.clone());
        assert_eq!(s.span.name, "GET");
        assert!(
            t0 <= s.span.start_time_unix_nano,
            "start after the first request was sent"
        );
        assert!(s.span.start_time_unix_nano <= s.span.end_time_unix_nano);
        assert!(
            s.span.end_time_unix_nano <= t1,
            "ended before the last answer was read"
        );
        assert_eq!(s.attr("http.request.method").as_deref(), Some("GET"));
        assert_eq!(s.attr("http.response.status_code").as_deref(), Some("200"));
        assert_eq!(s.attr("url.scheme").as_deref(), Some("http"));
        assert_eq!(s.attr("server.port"), Some(nginx.port.to_string()));
        let r = &s.resource;
        assert_eq!(r.get("service.name").map(String::as_str), Some("nginx"));
        assert_eq!(
            r.get("process.executable.name").map(String::as_str),
            Some("nginx")
        );
        assert!(r
            .get("process.pid")
            .is_some_and(|p| p.parse::<u32>().is_ok()));
        assert!(r.contains_key("host.name") && r.contains_key("service.instance.id"));
        assert_eq!(
            r.get("telemetry.distro.name").map(String::as_str),
            Some("sonde")
        );
        assert_eq!(
            r.get("deployment.environment.name").map(String::as_str),
            Some("ci")
        );
        assert!(
            !r.contains_key("process.command_line"),
            "only when asked for"
        );
    }
    assert_eq!(ids.len(), 5, "every span has its own id");
    assert_eq!(
        parents.len(),
        5,
        "each request is the child of its own client span"
    );

    // Redis: client and server spans, values masked.
    let redis_spans = collector.wait_spans(4, 20, |s| {
        s.attr("db.system.name").as_deref() == Some("redis")
            && s.attr("db.query.text")
                .is_some_and(|q| q.contains("otlp:key"))
    });
    assert_eq!(
        redis_spans.len(),
        4,
        "SET and GET, each as CLIENT and SERVER"
    );
    for s in &redis_spans {
        let q = s.attr("db.query.text").unwrap();
        assert!(!q.contains("secret-value"), "{q}");
        assert_eq!(s.attr("server.port"), Some(redis.port.to_string()));
        // redis-cli's spans are roots; redis-server's are their children.
        if s.span.kind == 3 {
            assert!(s.span.parent_span_id.is_empty());
        } else {
            let parent = redis_spans
                .iter()
                .find(|c| c.span.kind == 3 && c.span.span_id == s.span.parent_span_id)
                .expect("the server span's parent is redis-cli's span");
            assert_eq!(parent.attr("db.query.text"), s.attr("db.query.text"));
            assert_eq!(parent.span.trace_id, s.span.trace_id);
        }
    }
    let servers: Vec<_> = redis_spans.iter().filter(|s| s.span.kind == 2).collect();
    assert_eq!(servers.len(), 2);
    assert!(servers
        .iter()
        .all(|s| s.resource.get("service.name").map(String::as_str) == Some("redis-server")));

    // PostgreSQL: the query with its literal masked.
    let pg_spans = collector.wait_spans(2, 20, |s| {
        s.attr("db.system.name").as_deref() == Some("postgresql")
            && s.attr("db.query.text")
                .is_some_and(|q| q.contains("otlp_answer"))
    });
    assert_eq!(
        pg_spans.len(),
        2,
        "psql's CLIENT span and the backend's SERVER span"
    );
    for s in &pg_spans {
        assert_eq!(s.attr("db.operation.name").as_deref(), Some("SELECT"));
        assert_eq!(
            s.attr("db.query.text").as_deref(),
            Some("SELECT ? AS otlp_answer")
        );
        assert_eq!(s.span.name, "SELECT");
    }

    // Metrics: the same histograms as /metrics, with the same buckets, under each service.
    let start = Instant::now();
    let nginx_points = loop {
        let points: Vec<_> = collector
            .latest_histogram("http.server.request.duration")
            .into_iter()
            .filter(|p| p.resource.get("service.name").map(String::as_str) == Some("nginx"))
            .collect();
        if points.iter().map(|p| p.point.count).sum::<u64>() >= 5
            || start.elapsed() > Duration::from_secs(20)
        {
            break points;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(nginx_points.len(), 1, "{nginx_points:?}");
    let p = &nginx_points[0];
    assert_eq!(p.point.count, 5);
    assert_eq!(p.point.bucket_counts.iter().sum::<u64>(), 5);
    assert_eq!(
        p.point.explicit_bounds,
        [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
    );
    assert_eq!(
        p.attributes.get("http.request.method").map(String::as_str),
        Some("GET")
    );
    assert_eq!(
        p.attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("200")
    );
    assert!(
        !p.attributes.contains_key("service.name"),
        "service.name is on the resource"
    );
    assert!(!p.point.exemplars.is_empty(), "exemplars carry the trace");
    assert!(p.point.exemplars.iter().all(|e| hex(&e.trace_id) == trace));
    let prom = sonde.metrics();
    assert_eq!(
        prom.sum(
            "http_server_request_duration_seconds_count",
            &[("service_name", "nginx")]
        ),
        5.0,
        "Prometheus counts the same"
    );
    assert!(
        prom.0.lines().any(
            |l| l.starts_with("http_server_request_duration_seconds_bucket")
                && l.contains(&format!("# {{trace_id=\"{trace}\""))
        ),
        "a Prometheus bucket carries the trace as an OpenMetrics exemplar"
    );
    let db = collector.latest_histogram("db.client.operation.duration");
    let redis_get: u64 = db
        .iter()
        .filter(|p| p.resource.get("service.name").map(String::as_str) == Some("redis-cli"))
        .filter(|p| p.attributes.get("db.operation.name").map(String::as_str) == Some("GET"))
        .map(|p| p.point.count)
        .sum();
    assert_eq!(redis_get, 1);
    // Headers reach the collector; sonde's own counters are exported too.
    let headers = collector.received.lock().unwrap().headers.clone();
    assert!(headers
        .iter()
        .all(|h| h.get("x-tenant").map(String::as_str) == Some("ml-platform")));
    assert_eq!(
        collector.latest_counter("sonde.export.dropped", &[("signal", "traces")]),
        Some(0)
    );
}

fn clock_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn sampler_ratio_and_parent_flags() {
    let _g = serial();
    let mut http = HttpCollector::start();
    let port = http.port;
    let nginx = nginx("otlp-sampler-nginx");
    let endpoint = format!("http://127.0.0.1:{port}");
    let _sonde = Sonde::start_with_env(
        &["--ring-buffer-mib", "64"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "20000"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    );
    get_many(nginx.port, "/ratio", 4000, None);
    let sampled = format!("traceparent: 00-{:032x}-00f067aa0ba902b7-01", 0xabcu128);
    let unsampled = format!("traceparent: 00-{:032x}-00f067aa0ba902b7-00", 0xdefu128);
    get_many(nginx.port, "/flag/on", 20, Some(&sampled));
    get_many(nginx.port, "/flag/off", 20, Some(&unsampled));
    let on = http
        .collector
        .wait_spans(20, 20, |s| path_is(s, "/flag/on") && s.span.kind == 2);
    std::thread::sleep(Duration::from_secs(2));
    let ratio = http
        .collector
        .spans(|s| path_is(s, "/ratio") && s.span.kind == 2)
        .len();
    // 4000 traces at 0.25: 1000 expected, a binomial standard deviation of 27.
    assert!(
        (900..=1100).contains(&ratio),
        "{ratio} of 4000 traces sampled at 0.25"
    );
    assert_eq!(on.len(), 20, "a sampled parent is always followed");
    let off = http.collector.spans(|s| path_is(s, "/flag/off"));
    assert_eq!(off.len(), 0, "an unsampled parent is always followed");
    // Sampling thins traces, never the RED metrics.
    let start = Instant::now();
    loop {
        let count: u64 = http
            .collector
            .latest_histogram("http.server.request.duration")
            .iter()
            .filter(|p| p.resource.get("service.name").map(String::as_str) == Some("nginx"))
            .map(|p| p.point.count)
            .sum();
        if count == 4040 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nginx histogram count {count}, want 4040"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let headers = http.collector.received.lock().unwrap().headers.clone();
    assert!(headers
        .iter()
        .all(|h| h.get("content-encoding").map(String::as_str) == Some("gzip")));
    http.stop();
}

#[test]
fn collector_down_for_30s_then_back() {
    let _g = serial();
    let mut http = HttpCollector::start();
    let port = http.port;
    let nginx = nginx("otlp-down-nginx");
    let endpoint = format!("http://127.0.0.1:{port}");
    let sonde = Sonde::start_with_env(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "512"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    );
    get_many(nginx.port, "/before", 10, None);
    assert_eq!(
        http.collector
            .wait_spans(10, 20, |s| path_is(s, "/before") && s.span.kind == 2)
            .len(),
        10
    );

    http.stop();
    let rss_start = rss_kib(sonde.pid);
    let mut rss_max = rss_start;
    let down = Instant::now();
    let mut sent = 0;
    while down.elapsed() < Duration::from_secs(30) {
        get_many(nginx.port, "/during", 500, None);
        sent += 500;
        rss_max = rss_max.max(rss_kib(sonde.pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = sonde.metrics();
    let dropped = m.sum("sonde_export_dropped_total", &[("signal", "traces")]);
    assert!(
        dropped > 0.0,
        "spans dropped while the collector is down are counted"
    );
    assert_eq!(
        m.sum(
            "http_server_request_duration_seconds_count",
            &[("service_name", "nginx")]
        ),
        10.0 + sent as f64,
        "capture went on"
    );
    println!("collector down: {sent} requests, {dropped} spans dropped, RSS {rss_start} -> max {rss_max} KiB");
    assert!(
        rss_max < rss_start + 32 * 1024,
        "RSS grew from {rss_start} to {rss_max} KiB"
    );

    http.resume();
    // Retries of the last batches finish first (at most a few seconds), then new spans flow.
    std::thread::sleep(Duration::from_secs(8));
    get_many(nginx.port, "/after", 10, None);
    let after = http
        .collector
        .wait_spans(10, 30, |s| path_is(s, "/after") && s.span.kind == 2);
    assert_eq!(after.len(), 10, "spans sent after recovery arrive");
    let start = Instant::now();
    while http
        .collector
        .latest_counter("sonde.export.dropped", &[("signal", "traces")])
        .unwrap_or(0)
        == 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the drop counter is exported over OTLP too"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts sonde exporting to `env`'s TLS endpoints, makes 5 requests to nginx on `path` and
/// returns the server spans `collector` received within `secs` seconds, with sonde.
fn five_spans_over_tls(
    env: &[(&str, &str)],
    collector: &Collector,
    path: &str,
    secs: u64,
) -> (Vec<ReceivedSpan>, Sonde) {
    let nginx = nginx(&format!("otlp-tls-nginx{}", path.replace('/', "-")));
    let mut env = env.to_vec();
    env.extend([
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
    ]);
    let sonde = Sonde::start_with_env(&[], &env);
    get_many(nginx.port, path, 5, None);
    let spans = collector.wait_spans(5, secs, |s| path_is(s, path) && s.span.kind == 2);
    (spans, sonde)
}

/// Waits until sonde counts dropped spans of `signal` (a refused collector), 20 s at most.
fn wait_export_dropped(sonde: &Sonde, signal: &str) -> f64 {
    let start = Instant::now();
    loop {
        let n = sonde
            .metrics()
            .sum("sonde_export_dropped_total", &[("signal", signal)]);
        if n > 0.0 || start.elapsed() > Duration::from_secs(20) {
            return n;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn otlp_over_tls_with_a_private_ca_and_client_certificates() {
    let _g = serial();
    let dir = tempdir("otlp-tls");
    let pki = Pki::new(&dir);
    let path = |p: &std::path::PathBuf| p.display().to_string();
    let (ca, other_ca) = (path(&pki.ca), path(&pki.other_ca));
    let (client_cert, client_key) = (path(&pki.client_cert), path(&pki.client_key));

    // gRPC; the collector requires a client certificate signed by its CA, and gets one.
    let (grpc, port) = start_grpc_tls(pki.tonic_config(true));
    let endpoint = format!("https://127.0.0.1:{port}");
    let (spans, sonde) = five_spans_over_tls(
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &client_cert),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &client_key),
        ],
        &grpc,
        "/grpc-tls",
        20,
    );
    assert_eq!(
        spans.len(),
        5,
        "spans over gRPC with TLS and a client certificate"
    );
    let start = Instant::now();
    while grpc
        .latest_histogram("http.server.request.duration")
        .is_empty()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "metrics over gRPC with TLS"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(sonde);

    // HTTP/protobuf with the per-signal variables; client certificate required.
    let mut https = HttpCollector::start_tls(pki.server_config(true));
    let endpoint = format!("https://127.0.0.1:{}", https.port);
    let (spans, sonde) = five_spans_over_tls(
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", &ca),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", &client_cert),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", &client_key),
            ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", &ca),
            (
                "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
                &client_cert,
            ),
            ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", &client_key),
        ],
        &https.collector,
        "/http-tls",
        20,
    );
    assert_eq!(spans.len(), 5, "spans over HTTPS with a client certificate");
    drop(sonde);
    https.stop();

    // No certificate variable: the system roots (SSL_CERT_FILE points them at the CA, as an
    // administrator's bundle would hold it). The collector asks for no client certificate.
    let mut https = HttpCollector::start_tls(pki.server_config(false));
    let endpoint = format!("https://127.0.0.1:{}", https.port);
    let (spans, sonde) = five_spans_over_tls(
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("SSL_CERT_FILE", &ca),
        ],
        &https.collector,
        "/system-roots",
        20,
    );
    assert_eq!(
        spans.len(),
        5,
        "spans over HTTPS verified by the system roots"
    );
    drop(sonde);

    // The wrong CA: the collector is refused, nothing reaches it, the loss is counted.
    let (spans, sonde) = five_spans_over_tls(
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &other_ca),
        ],
        &https.collector,
        "/wrong-ca",
        3,
    );
    assert!(
        spans.is_empty(),
        "a collector the CA did not sign gets nothing"
    );
    assert!(
        wait_export_dropped(&sonde, "traces") > 0.0,
        "refused spans are counted"
    );
    assert!(
        sonde.logs().contains("UnknownIssuer") || sonde.logs().contains("certificate"),
        "the log says why: {}",
        sonde.logs()
    );
    drop(sonde);
    https.stop();

    // gRPC collector that requires a client certificate, and sonde has none: refused.
    let (spans, sonde) = five_spans_over_tls(
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &format!("https://127.0.0.1:{port}"),
            ),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
        ],
        &grpc,
        "/no-client-cert",
        3,
    );
    assert!(spans.is_empty(), "no client certificate, no spans");
    assert!(
        wait_export_dropped(&sonde, "traces") > 0.0,
        "refused spans are counted"
    );
}

#[test]
fn bad_otlp_settings_name_the_variable() {
    let cases = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317", "http://"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli", "gzip or none"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "ten", "milliseconds"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "novalue", "key=value"),
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "/nonexistent/ca.pem",
            "cannot read",
        ),
        (
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            "/etc/hostname",
            "CLIENT_CERTIFICATE",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "/etc/hostname",
            "no PEM certificate",
        ),
    ];
    for (var, value, reason) in cases {
        // (A sonde of a test running beside this one must not make it wait.)
        let out = Command::new(sonde_bin())
            .env("SONDE_SINGLE_INSTANCE", "false")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:1")
            .env(var, value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {err}");
        assert!(
            err.contains(var) && err.contains(reason),
            "{var}={value}: {err}"
        );
    }
    let out = Command::new(sonde_bin())
        .env("OTEL_TRACES_SAMPLER", "sometimes")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("sometimes") && err.contains("traceidratio"),
        "{err}"
    );
}
