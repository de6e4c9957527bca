//! Pod metadata: sonde, configured `in-cluster` as the DaemonSet runs it, lists and watches
//! the pods of its node over HTTPS with a ServiceAccount token, from a TLS server that serves
//! pod-list and watch responses in the Kubernetes API's shape (tests/fixtures/k8s/; no
//! cluster runs in CI). Processes in those pods' containers get the `k8s.*` attributes and
//! the pod's service name; the watch's MODIFIED and DELETED events move the index; a rotated
//! token is used at the next connection; a server the CA does not vouch for gets nothing.
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use sonde_tests::*;

const CHECKOUT: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
const LEDGER: &str = "beef0000beef0000beef0000beef0000beef0000beef0000beef0000beef0000";
/// The `search` pod's container: absent from the list (the pod was still pending), given by
/// a MODIFIED event.
const SEARCH: &str = "5ea4c4005ea4c4005ea4c4005ea4c4005ea4c4005ea4c4005ea4c4005ea4c400";
/// The `report` Job's container: in the list, then DELETED by the watch.
const REPORT: &str = "de1e7e00de1e7e00de1e7e00de1e7e00de1e7e00de1e7e00de1e7e00de1e7e00";
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.first-token.sig";
const ROTATED: &str = "eyJhbGciOiJSUzI1NiJ9.rotated-token.sig";

/// One request the fake API got: its request line and its Authorization header.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// An HTTPS server standing in for the API server: a certificate for 127.0.0.1 from a CA of
/// its own, whose PEM is in `dir/ca.crt`, next to the ServiceAccount token `dir/token`.
struct FakeApi {
    port: u16,
    dir: PathBuf,
    requests: Seen,
    /// Ends the first watch stream (as the API server does after its timeout).
    end_first_watch: Arc<AtomicBool>,
}

impl FakeApi {
    fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempdir(&format!("k8s-api-{port}"));
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sonde test cluster CA");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let config = Arc::new(config);

        let fixtures = workspace_root().join("tests/fixtures/k8s");
        let read = |name: &str| std::fs::read_to_string(fixtures.join(name)).unwrap();
        let resources = Arc::new([
            Resource {
                path: "/api/v1/pods",
                list: read("pods-list.json"),
                watch: read("pods-watch.jsonl"),
            },
            Resource {
                path: "/api/v1/services",
                list: read("services-list.json"),
                watch: read("services-watch.jsonl"),
            },
        ]);
        let requests: Seen = Arc::default();
        let end_first_watch = Arc::new(AtomicBool::new(false));
        let (seen, end) = (requests.clone(), end_first_watch.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (config, seen, end) = (config.clone(), seen.clone(), end.clone());
                let resources = resources.clone();
                std::thread::spawn(move || serve(tcp, config, &seen, &end, &*resources));
            }
        });
        FakeApi {
            port,
            dir,
            requests,
            end_first_watch,
        }
    }

    fn requests(&self) -> Vec<(String, Option<String>)> {
        self.requests.lock().unwrap().clone()
    }

    /// The requests for `path` (`/api/v1/pods`), once there are `n`.
    fn wait_requests(&self, path: &str, n: usize) -> Vec<(String, Option<String>)> {
        let of_path = || -> Vec<_> {
            let requests = self.requests().into_iter();
            requests.filter(|(r, _)| is_for(r, path)).collect()
        };
        let start = Instant::now();
        while of_path().len() < n {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "sonde made {:?}, not {n} requests for {path}",
                self.requests()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        of_path()
    }

    /// sonde's flags and variables for `in-cluster` against this server.
    fn in_cluster_env(&self, ca: &Path) -> Vec<(String, String)> {
        vec![
            ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
            ("KUBERNETES_SERVICE_PORT".into(), self.port.to_string()),
            (
                "SONDE_KUBERNETES_TOKEN_FILE".into(),
                self.dir.join("token").display().to_string(),
            ),
            ("SONDE_KUBERNETES_CA_FILE".into(), ca.display().to_string()),
            ("K8S_NODE_NAME".into(), "node-a".into()),
        ]
    }
}

/// Whether `request` (a request line) is for `path`, with or without a query.
fn is_for(request: &str, path: &str) -> bool {
    let rest = request
        .strip_prefix("GET ")
        .and_then(|r| r.strip_prefix(path));
    rest.is_some_and(|r| r.starts_with([' ', '?']))
}

/// What the fake API serves for one kind of object: a list, and the events of the first
/// watch.
struct Resource {
    path: &'static str,
    list: String,
    watch: String,
}

/// One connection: TLS, then one GET answered with a list or a watch stream.
fn serve(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    seen: &Seen,
    end_first_watch: &AtomicBool,
    resources: &[Resource],
) {
    let conn = rustls::ServerConnection::new(config).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let (request, authorization) = {
        let mut reader = BufReader::new(&mut tls);
        let mut request = String::new();
        // A handshake the client refuses ends here, with nothing recorded.
        if reader.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        let mut authorization = None;
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 2 {
            if let Some(v) = line.strip_prefix("Authorization: ") {
                authorization = Some(v.trim().to_string());
            }
            line.clear();
        }
        (request.trim().to_string(), authorization)
    };
    seen.lock().unwrap().push((request.clone(), authorization));
    let Some(resource) = resources.iter().find(|r| is_for(&request, r.path)) else {
        let _ = tls.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    let (list, watch) = (&resource.list, &resource.watch);
    if !request.contains("watch=1") {
        let _ = write!(
            tls,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{list}",
            list.len()
        );
        tls.conn.send_close_notify();
        let _ = tls.flush();
        return;
    }
    let _ = tls.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    // The first watch gets the recorded events; a later one (from the last version) none.
    let first = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(r, _)| r.contains("watch=1") && is_for(r, resource.path))
        .count()
        == 1;
    if first {
        for event in watch.lines() {
            let chunk = format!("{event}\n");
            let _ = write!(tls, "{:x}\r\n{chunk}\r\n", chunk.len());
        }
    }
    let _ = tls.flush();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        // Only the pods' first watch is ended; the Services' stays open.
        let pods = resource.path == "/api/v1/pods";
        if first && pods && end_first_watch.load(Ordering::Relaxed) {
            let _ = tls.write_all(b"0\r\n\r\n");
            tls.conn.send_close_notify();
            let _ = tls.flush();
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pods_give_k8s_attributes_and_service_names() {
    let api = FakeApi::start();
    let port = free_port();
    let _nginx = Nginx::start(
        "k8s-nginx",
        &[format!("127.0.0.1:{port}")],
        port,
        "location / { return 200 \"ok\\n\"; }",
    );
    let env = api.in_cluster_env(&api.dir.join("ca.crt"));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let sonde = Sonde::start_with_env(&["--kubernetes-api", "in-cluster"], &env);
    let reqs = api.wait_requests("/api/v1/pods", 2);
    let bearer = Some(format!("Bearer {TOKEN}"));
    assert_eq!(
        reqs[0],
        (
            "GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a HTTP/1.1".to_string(),
            bearer.clone()
        )
    );
    assert_eq!(
        reqs[1],
        (
            "GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&watch=1&allowWatchBookmarks=true&resourceVersion=18231 HTTP/1.1".to_string(),
            bearer
        )
    );
    std::thread::sleep(Duration::from_millis(300));

    let client = |path: &str| {
        format!(
            "python3 -c \"import time, urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}{path}').read()\ntime.sleep(1)\""
        )
    };
    // A pod from the list (a Deployment's), one that arrived through the watch (a
    // StatefulSet's, named by annotation), one whose container started in a MODIFIED event,
    // one DELETED by the watch, and a process with its own OTEL_SERVICE_NAME.
    in_container(CHECKOUT, &client("/k8s-checkout"));
    in_container(LEDGER, &client("/k8s-ledger"));
    in_container(SEARCH, &client("/k8s-search"));
    in_container(REPORT, &client("/k8s-report"));
    in_container(
        CHECKOUT,
        &format!("env OTEL_SERVICE_NAME=own-name {}", client("/k8s-own")),
    );

    let span_of = |path: &str| {
        let spans = sonde.wait_spans(1, |s| {
            kind(s) == "CLIENT" && attr(s, "url.path").as_deref() == Some(path)
        });
        assert_eq!(spans.len(), 1, "{path}: {spans:?}");
        spans[0].clone()
    };
    let checkout = span_of("/k8s-checkout");
    for (k, v) in [
        ("service.name", "checkout"),
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "checkout-6f8d9c7b5-k2m4p"),
        ("k8s.pod.uid", "0c6a3e2f-8a4e-4d56-9b0e-1f2a3b4c5d6e"),
        ("k8s.container.name", "app"),
        ("k8s.node.name", "node-a"),
        ("k8s.deployment.name", "checkout"),
        ("container.id", CHECKOUT),
    ] {
        assert_eq!(checkout[k], Value::from(v), "{k}: {checkout}");
    }
    let ledger = span_of("/k8s-ledger");
    assert_eq!(ledger["service.name"], "ledger-api", "the annotation wins");
    assert_eq!(ledger["k8s.statefulset.name"], "ledger");
    assert_eq!(ledger["k8s.namespace.name"], "billing");
    let search = span_of("/k8s-search");
    assert_eq!(search["k8s.pod.name"], "search-5d7f8b9c4-abcde", "{search}");
    assert_eq!(search["service.name"], "search", "the Deployment's name");
    let report = span_of("/k8s-report");
    assert!(
        report.get("k8s.pod.name").is_none(),
        "a deleted pod is forgotten: {report}"
    );
    assert_eq!(report["container.id"], REPORT);
    let own = span_of("/k8s-own");
    assert_eq!(
        own["service.name"], "own-name",
        "the process's own variable wins"
    );
    assert_eq!(own["k8s.pod.name"], "checkout-6f8d9c7b5-k2m4p");
    // The server side, nginx on the host, has no pod.
    let server = sonde.wait_spans(1, |s| {
        kind(s) == "SERVER" && attr(s, "url.path").as_deref() == Some("/k8s-checkout")
    });
    assert!(server[0].get("k8s.pod.name").is_none(), "{}", server[0]);

    // The kubelet rotates the token; the API server ends the watch. sonde watches again from
    // the last version it saw (the bookmark's) with the token now in the file.
    std::fs::write(api.dir.join("token"), format!("{ROTATED}\n")).unwrap();
    api.end_first_watch.store(true, Ordering::Relaxed);
    let reqs = api.wait_requests("/api/v1/pods", 3);
    assert_eq!(
        reqs[2],
        (
            "GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&watch=1&allowWatchBookmarks=true&resourceVersion=18244 HTTP/1.1".to_string(),
            Some(format!("Bearer {ROTATED}"))
        )
    );
}

#[test]
fn an_api_server_the_ca_does_not_vouch_for_gets_nothing() {
    let api = FakeApi::start();
    // Another CA than the server's: the handshake must fail before any request is sent.
    let other_ca = workspace_root().join("tests/fixtures/k8s/test-ca.crt");
    let mut cmd = Command::new(sonde_bin());
    cmd.args(["--kubernetes-api", "in-cluster", "--quiet"])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .envs(api.in_cluster_env(&other_ca))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = spawn_owned(cmd);
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let start = Instant::now();
    while !log.lock().unwrap().contains("Kubernetes API at") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no warning: {}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = log.lock().unwrap().clone();
    let warning = log
        .lines()
        .find(|l| l.contains("Kubernetes API at"))
        .unwrap();
    assert!(
        warning.contains(&format!("127.0.0.1:{}", api.port))
            && warning.contains("invalid peer certificate")
            && warning.contains("UnknownIssuer"),
        "{warning}"
    );
    assert!(!log.contains(TOKEN), "the token never reaches a log: {log}");
    assert_eq!(
        api.requests(),
        vec![],
        "no request crossed the failed handshake"
    );
}

/// Addresses added to `lo` for a test (Service cluster IPs), removed when it ends.
struct LoopbackAddresses(Vec<&'static str>);

impl LoopbackAddresses {
    fn add(addresses: &[&'static str]) -> LoopbackAddresses {
        for a in addresses {
            let _ = Command::new("ip")
                .args(["addr", "del", &format!("{a}/32"), "dev", "lo"])
                .stderr(Stdio::null())
                .status();
            run(Command::new("ip").args(["addr", "add", &format!("{a}/32"), "dev", "lo"]));
        }
        LoopbackAddresses(addresses.to_vec())
    }
}

impl Drop for LoopbackAddresses {
    fn drop(&mut self) {
        for a in &self.0 {
            let _ = Command::new("ip")
                .args(["addr", "del", &format!("{a}/32"), "dev", "lo"])
                .status();
        }
    }
}

/// A server sonde does not see (its process is excluded, as one on another node would be)
/// is named in the service graph by the Kubernetes Service at the address the client called:
/// a Service from the list, one the watch added, and, at an address no Service has, the
/// HTTP `Host` as before.
#[test]
fn services_name_the_servers_off_this_host() {
    let _serial = serial();
    // The cluster IPs of `inventory` (in the list) and `pricing` (added by the watch).
    let _addresses = LoopbackAddresses::add(&["10.96.0.50", "10.96.0.51"]);
    let api = FakeApi::start();
    let port = free_port();
    let _nginx = Nginx::start(
        "k8s-services",
        &[format!("0.0.0.0:{port}")],
        port,
        "location / { return 200 \"ok\\n\"; }",
    );
    let env = api.in_cluster_env(&api.dir.join("ca.crt"));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let sonde = Sonde::start_with_env(
        &["--kubernetes-api", "in-cluster", "--exclude", "exe=nginx"],
        &env,
    );
    let reqs = api.wait_requests("/api/v1/services", 2);
    assert_eq!(reqs[0].0, "GET /api/v1/services HTTP/1.1");
    assert_eq!(
        reqs[1].0,
        "GET /api/v1/services?watch=1&allowWatchBookmarks=true&resourceVersion=18320 HTTP/1.1"
    );
    std::thread::sleep(Duration::from_millis(300));

    let client = format!(
        "import urllib.request\n\
         for host, n in (('10.96.0.50', 3), ('10.96.0.51', 2), ('127.0.0.1', 1)):\n\
         \x20   for _ in range(n):\n\
         \x20       urllib.request.urlopen(f'http://{{host}}:{port}/svc-{{host}}').read()\n"
    );
    let status = Command::new("python3")
        .args(["-c", &client])
        .env("OTEL_SERVICE_NAME", "storefront")
        .status()
        .unwrap();
    assert!(status.success());
    let spans = sonde.wait_spans(6, |s| {
        kind(s) == "CLIENT" && path_starts(s, "/svc-") && s["service.name"] == "storefront"
    });
    assert_eq!(spans.len(), 6, "{spans:?}");
    let servers = sonde.spans(|s| kind(s) == "SERVER" && path_starts(s, "/svc-"));
    assert!(servers.is_empty(), "nginx is not seen: {servers:?}");
    let metrics = sonde.metrics();
    let edge = |server: &str| {
        metrics.sum(
            "traces_service_graph_request_total",
            &[
                ("client", "storefront"),
                ("server", server),
                ("connection_type", "virtual_node"),
            ],
        )
    };
    assert_eq!(edge("inventory"), 3.0, "{}", metrics.0);
    assert_eq!(edge("pricing"), 2.0, "the Service the watch added");
    assert_eq!(edge("127.0.0.1"), 1.0, "no Service there: the Host");
    assert_eq!(
        metrics.sum(
            "traces_service_graph_request_total",
            &[("client", "storefront")]
        ),
        6.0
    );
}
