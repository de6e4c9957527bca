//! A real OTLP receiver for the tests: gRPC (tonic, the generated opentelemetry-proto
//! services) and HTTP/protobuf (a small HTTP/1.1 server), both decoding the real protobuf.
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, HistogramDataPoint};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// Everything a collector received.
#[derive(Default)]
pub struct Received {
    pub traces: Vec<ExportTraceServiceRequest>,
    pub metrics: Vec<ExportMetricsServiceRequest>,
    /// Request headers (lower-case names) of every HTTP request or gRPC call.
    pub headers: Vec<HashMap<String, String>>,
}

/// One received span with the attributes of its resource.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub resource: HashMap<String, String>,
    pub span: Span,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<String> {
        attrs(&self.span.attributes).remove(key)
    }
}

/// Attributes as strings (integers rendered).
pub fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                _ => String::new(),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn resource_attrs(r: Option<&Resource>) -> HashMap<String, String> {
    r.map(|r| attrs(&r.attributes)).unwrap_or_default()
}

/// A histogram point of a named metric with its resource's attributes.
#[derive(Clone, Debug)]
pub struct ReceivedPoint {
    pub resource: HashMap<String, String>,
    pub attributes: HashMap<String, String>,
    pub point: HistogramDataPoint,
}

/// The shared record; both collectors fill one.
#[derive(Clone, Default)]
pub struct Collector {
    pub received: Arc<Mutex<Received>>,
}

impl Collector {
    pub fn spans(&self, pred: impl Fn(&ReceivedSpan) -> bool) -> Vec<ReceivedSpan> {
        let r = self.received.lock().unwrap();
        let mut out = Vec::new();
        for req in &r.traces {
            for rs in &req.resource_spans {
                let resource = resource_attrs(rs.resource.as_ref());
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        let s = ReceivedSpan {
                            resource: resource.clone(),
                            span: span.clone(),
                        };
                        if pred(&s) {
                            out.push(s);
                        }
                    }
                }
            }
        }
        out
    }

    /// Waits until `n` spans match (or `secs` pass), then returns all that match.
    pub fn wait_spans(
        &self,
        n: usize,
        secs: u64,
        pred: impl Fn(&ReceivedSpan) -> bool,
    ) -> Vec<ReceivedSpan> {
        let start = Instant::now();
        loop {
            let found = self.spans(&pred);
            if found.len() >= n || start.elapsed() > Duration::from_secs(secs) {
                return found;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The histogram points of `name` in the newest metrics request that has any.
    pub fn latest_histogram(&self, name: &str) -> Vec<ReceivedPoint> {
        let r = self.received.lock().unwrap();
        for req in r.metrics.iter().rev() {
            let mut out = Vec::new();
            for rm in &req.resource_metrics {
                let resource = resource_attrs(rm.resource.as_ref());
                for sm in &rm.scope_metrics {
                    for m in sm.metrics.iter().filter(|m| m.name == name) {
                        if let Some(metric::Data::Histogram(h)) = &m.data {
                            for p in &h.data_points {
                                out.push(ReceivedPoint {
                                    resource: resource.clone(),
                                    attributes: attrs(&p.attributes),
                                    point: p.clone(),
                                });
                            }
                        }
                    }
                }
            }
            if !out.is_empty() {
                return out;
            }
        }
        Vec::new()
    }

    /// The value of a counter of sonde's own in the newest metrics request.
    pub fn latest_counter(&self, name: &str, labels: &[(&str, &str)]) -> Option<i64> {
        let r = self.received.lock().unwrap();
        let req = r.metrics.last()?;
        let mut total = None;
        for rm in &req.resource_metrics {
            for sm in &rm.scope_metrics {
                for m in sm.metrics.iter().filter(|m| m.name == name) {
                    if let Some(metric::Data::Sum(s)) = &m.data {
                        for p in &s.data_points {
                            let a = attrs(&p.attributes);
                            if labels
                                .iter()
                                .all(|(k, v)| a.get(*k).map(String::as_str) == Some(*v))
                            {
                                if let Some(
                                    opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(v),
                                ) = p.value
                                {
                                    *total.get_or_insert(0) += v;
                                }
                            }
                        }
                    }
                }
            }
        }
        total
    }
}

struct Grpc(Collector);

#[async_trait::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut r = self.0.received.lock().unwrap();
        r.headers.push(metadata(request.metadata()));
        r.traces.push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[async_trait::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut r = self.0.received.lock().unwrap();
        r.headers.push(metadata(request.metadata()));
        r.metrics.push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

fn metadata(m: &tonic::metadata::MetadataMap) -> HashMap<String, String> {
    m.clone()
        .into_headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect()
}

/// A gRPC OTLP collector on `port`, serving until the test process ends.
pub fn start_grpc(port: u16) -> Collector {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind gRPC port");
    serve_grpc(listener, None)
}

/// A gRPC OTLP collector over TLS on a port the kernel picks: (collector, port).
pub fn start_grpc_tls(tls: tonic::transport::ServerTlsConfig) -> (Collector, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind gRPC port");
    let port = listener.local_addr().unwrap().port();
    (serve_grpc(listener, Some(tls)), port)
}

fn serve_grpc(
    listener: std::net::TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Collector {
    let collector = Collector::default();
    let c = collector.clone();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let mut server = tonic::transport::Server::builder();
            if let Some(tls) = tls {
                server = server.tls_config(tls).unwrap();
            }
            server
                .add_service(
                    TraceServiceServer::new(Grpc(c.clone()))
                        .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
                )
                .add_service(
                    MetricsServiceServer::new(Grpc(c))
                        .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
                )
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
    });
    collector
}

/// An HTTP/protobuf OTLP collector that can be stopped and started again on its port.
pub struct HttpCollector {
    pub port: u16,
    pub collector: Collector,
    running: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Serves HTTPS with this configuration.
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl HttpCollector {
    /// Listens on a port the kernel picks (a port chosen first and bound later can be
    /// taken in between by any connection's ephemeral port).
    pub fn start() -> HttpCollector {
        HttpCollector::start_with(None)
    }

    /// The same over HTTPS.
    pub fn start_tls(tls: Arc<rustls::ServerConfig>) -> HttpCollector {
        HttpCollector::start_with(Some(tls))
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> HttpCollector {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind HTTP port");
        let mut c = HttpCollector {
            port: listener.local_addr().unwrap().port(),
            collector: Collector::default(),
            running: Arc::new(AtomicBool::new(false)),
            thread: None,
            tls,
        };
        c.serve(listener);
        c
    }

    /// Stops listening and closes every connection: the collector is down.
    pub fn stop(&mut self) {
        self.running.store(false, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Listens again on the same port.
    pub fn resume(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("bind HTTP port");
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).unwrap();
        self.running.store(true, Ordering::SeqCst);
        let running = self.running.clone();
        let received = self.collector.received.clone();
        let tls = self.tls.clone();
        self.thread = Some(std::thread::spawn(move || {
            let mut conns: Vec<std::thread::JoinHandle<()>> = Vec::new();
            while running.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (running, received) = (running.clone(), received.clone());
                        let tls = tls.clone();
                        conns.push(std::thread::spawn(move || {
                            stream
                                .set_read_timeout(Some(Duration::from_millis(100)))
                                .unwrap();
                            match tls {
                                Some(config) => {
                                    let conn = rustls::ServerConnection::new(config).unwrap();
                                    let stream = rustls::StreamOwned::new(conn, stream);
                                    serve_http(stream, &running, &received)
                                }
                                None => serve_http(stream, &running, &received),
                            }
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        }));
    }
}

impl Drop for HttpCollector {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves one connection (plain or TLS; reads time out every 100 ms to look at `running`).
fn serve_http(stream: impl Read + Write, running: &AtomicBool, received: &Mutex<Received>) {
    let mut reader = BufReader::new(stream);
    'requests: while running.load(Ordering::SeqCst) {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(_) => return,
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            match reader.read_line(&mut h) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    if !running.load(Ordering::SeqCst) {
                        return;
                    }
                    continue;
                }
                Err(_) => return,
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match reader.read(&mut body[got..]) {
                Ok(0) => return,
                Ok(n) => got += n,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    if !running.load(Ordering::SeqCst) {
                        break 'requests;
                    }
                }
                Err(_) => return,
            }
        }
        if headers.get("content-encoding").map(String::as_str) == Some("gzip") {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut plain)
                .unwrap();
            body = plain;
        }
        let ok = {
            let mut r = received.lock().unwrap();
            r.headers.push(headers);
            match path.as_str() {
                "/v1/traces" => ExportTraceServiceRequest::decode(&body[..])
                    .map(|t| r.traces.push(t))
                    .is_ok(),
                "/v1/metrics" => ExportMetricsServiceRequest::decode(&body[..])
                    .map(|m| r.metrics.push(m))
                    .is_ok(),
                _ => false,
            }
        };
        let status = if ok { "200 OK" } else { "400 Bad Request" };
        let _ = write!(
            reader.get_mut(),
            "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
        );
    }
}
