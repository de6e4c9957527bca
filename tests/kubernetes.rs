//! Pod metadata: sonde lists and watches the pods of its node through an HTTP server that
//! serves pod-list and watch responses in the Kubernetes API's exact shape (kept under
//! tests/fixtures/k8s/; no cluster runs in CI), and processes in those pods' containers get
//! the `k8s.*` attributes and the pod's service name.
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use sonde_tests::*;

const CHECKOUT: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
const LEDGER: &str = "beef0000beef0000beef0000beef0000beef0000beef0000beef0000beef0000";

/// Serves the list, then the watch events (chunked, the stream held open); returns the
/// address and the request lines it got.
fn fake_api() -> (String, Arc<Mutex<Vec<String>>>) {
    let dir = workspace_root().join("tests/fixtures/k8s");
    let list = std::fs::read_to_string(dir.join("pods-list.json")).unwrap();
    let watch = std::fs::read_to_string(dir.join("pods-watch.jsonl")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            seen.lock().unwrap().push(request.trim().to_string());
            let mut out = stream;
            if request.contains("watch=1") {
                let _ = out.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                );
                for event in watch.lines() {
                    let chunk = format!("{event}\n");
                    let _ = write!(out, "{:x}\r\n{chunk}\r\n", chunk.len());
                }
                let _ = out.flush();
                // A watch stays open; this one until the test ends.
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_secs(300));
                    drop(out);
                });
            } else {
                let _ = write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{list}",
                    list.len()
                );
            }
        }
    });
    (addr, requests)
}

#[test]
fn pods_give_k8s_attributes_and_service_names() {
    let (api, requests) = fake_api();
    let port = free_port();
    let _nginx = Nginx::start(
        "k8s-nginx",
        &[format!("127.0.0.1:{port}")],
        port,
        "location / { return 200 \"ok\\n\"; }",
    );
    let url = format!("http://{api}");
    let sonde = Sonde::start_with_env(&["--kubernetes-api", &url], &[("K8S_NODE_NAME", "node-a")]);
    let start = std::time::Instant::now();
    while requests.lock().unwrap().len() < 2 {
        assert!(
            start.elapsed().as_secs() < 20,
            "sonde did not list and watch: {requests:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let reqs = requests.lock().unwrap().clone();
    assert_eq!(
        reqs[0],
        "GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a HTTP/1.1"
    );
    assert_eq!(
        reqs[1],
        "GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&watch=1&allowWatchBookmarks=true&resourceVersion=18231 HTTP/1.1"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));

    let client = |path: &str| {
        format!(
            "python3 -c \"import time, urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}{path}').read()\ntime.sleep(1)\""
        )
    };
    // A pod from the list (a Deployment's), one that arrived through the watch (a
    // StatefulSet's, named by annotation), and a process with its own OTEL_SERVICE_NAME.
    in_container(CHECKOUT, &client("/k8s-checkout"));
    in_container(LEDGER, &client("/k8s-ledger"));
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
}
