//! RED metrics (OpenTelemetry semantic-convention names) and sonde's own health counters,
//! in one prometheus-client registry.
use std::hash::BuildHasher;
use std::net::SocketAddr;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use rustc_hash::{FxBuildHasher, FxHashMap};

use crate::conn::{HttpCall, Role};
use crate::db::DbCall;
use crate::span::{http_error_type, normalize_method, server_endpoint};

/// `http.server.request.duration` / `http.client.request.duration` buckets (seconds).
pub const HTTP_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpServerLabels {
    pub service_name: String,
    pub http_request_method: String,
    pub http_response_status_code: String,
    pub url_scheme: String,
    pub error_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpClientLabels {
    pub service_name: String,
    pub http_request_method: String,
    pub http_response_status_code: String,
    pub url_scheme: String,
    pub error_type: String,
    pub server_address: String,
    pub server_port: String,
}

/// `db.client.operation.duration` buckets (seconds).
pub const DB_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// Labels of both database histograms. On the server side `server_*` is the socket the
/// database listens on.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DbLabels {
    pub service_name: String,
    pub db_system_name: String,
    pub db_operation_name: String,
    pub db_namespace: String,
    pub error_type: String,
    pub server_address: String,
    pub server_port: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ParseErrorLabels {
    pub protocol: String,
    pub kind: String,
}

/// What decides the labels of one HTTP observation, borrowed from the call: error.type
/// follows from role, status and failure; server address and port (client side only) from
/// the Host header and the peer.
#[derive(Clone, Copy, Hash, PartialEq, Eq)]
struct HttpKey<'a> {
    role: Role,
    service: &'a str,
    method: &'a str,
    status: Option<u16>,
    failure: Option<&'a str>,
    host: Option<&'a str>,
    peer: Option<SocketAddr>,
}

impl<'a> HttpKey<'a> {
    fn of(call: &'a HttpCall) -> HttpKey<'a> {
        let client = call.role == Role::Client;
        HttpKey {
            role: call.role,
            service: &call.process.service_name,
            method: &call.request.method,
            status: call.status,
            failure: call.failure.as_deref(),
            host: call.request.host.as_deref().filter(|_| client),
            peer: call.peer.filter(|_| client),
        }
    }
}

/// An `HttpKey` kept in the cache.
struct OwnedHttpKey {
    role: Role,
    service: String,
    method: String,
    status: Option<u16>,
    failure: Option<String>,
    host: Option<String>,
    peer: Option<SocketAddr>,
}

impl OwnedHttpKey {
    fn borrow(&self) -> HttpKey<'_> {
        HttpKey {
            role: self.role,
            service: &self.service,
            method: &self.method,
            status: self.status,
            failure: self.failure.as_deref(),
            host: self.host.as_deref(),
            peer: self.peer,
        }
    }
}

impl From<HttpKey<'_>> for OwnedHttpKey {
    fn from(k: HttpKey<'_>) -> Self {
        OwnedHttpKey {
            role: k.role,
            service: k.service.to_string(),
            method: k.method.to_string(),
            status: k.status,
            failure: k.failure.map(str::to_string),
            host: k.host.map(str::to_string),
            peer: k.peer,
        }
    }
}

/// Histograms by label set, owned by the capture thread (see `Metrics::observe_http`).
/// Bounded: past `MAX_ENTRIES` it starts over; the histograms themselves stay registered.
#[derive(Default)]
pub struct HttpHistogramCache {
    hasher: FxBuildHasher,
    by_hash: FxHashMap<u64, Vec<(OwnedHttpKey, Histogram)>>,
    len: usize,
}

impl HttpHistogramCache {
    const MAX_ENTRIES: usize = 4096;
}

fn http_histogram() -> Histogram {
    Histogram::new(HTTP_BUCKETS)
}

fn db_histogram() -> Histogram {
    Histogram::new(DB_BUCKETS)
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    pub registry: Registry,
    pub http_server: HistogramFamily<HttpServerLabels>,
    pub http_client: HistogramFamily<HttpClientLabels>,
    pub db_client: HistogramFamily<DbLabels>,
    pub db_server: HistogramFamily<DbLabels>,
    pub events_received: Counter,
    pub events_dropped: Family<ReasonLabels, Counter>,
    pub parse_errors: Family<ParseErrorLabels, Counter>,
    pub connections_tracked: Gauge,
    pub spans: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let http_server: HistogramFamily<HttpServerLabels> =
            Family::new_with_constructor(http_histogram);
        let http_client: HistogramFamily<HttpClientLabels> =
            Family::new_with_constructor(http_histogram);
        registry.register_with_unit(
            "http_server_request_duration",
            "Duration of HTTP server requests (http.server.request.duration)",
            Unit::Seconds,
            http_server.clone(),
        );
        registry.register_with_unit(
            "http_client_request_duration",
            "Duration of HTTP client requests (http.client.request.duration)",
            Unit::Seconds,
            http_client.clone(),
        );
        let db_client: HistogramFamily<DbLabels> = Family::new_with_constructor(db_histogram);
        let db_server: HistogramFamily<DbLabels> = Family::new_with_constructor(db_histogram);
        registry.register_with_unit(
            "db_client_operation_duration",
            "Duration of database operations seen by their clients (db.client.operation.duration)",
            Unit::Seconds,
            db_client.clone(),
        );
        registry.register_with_unit(
            "db_server_operation_duration",
            "Duration of database operations seen by the database process itself",
            Unit::Seconds,
            db_server.clone(),
        );
        let events_received = Counter::default();
        let events_dropped = Family::<ReasonLabels, Counter>::default();
        let parse_errors = Family::<ParseErrorLabels, Counter>::default();
        let connections_tracked = Gauge::default();
        let spans = Counter::default();
        registry.register(
            "sonde_events_received",
            "Events read from the kernel ring buffer",
            events_received.clone(),
        );
        registry.register(
            "sonde_events_dropped",
            "Events lost before they could be processed, by reason",
            events_dropped.clone(),
        );
        registry.register(
            "sonde_parse_errors",
            "Bytes a protocol parser could not frame, by protocol and kind",
            parse_errors.clone(),
        );
        registry.register(
            "sonde_connections_tracked",
            "Connections currently tracked in userspace",
            connections_tracked.clone(),
        );
        registry.register("sonde_spans", "Spans produced", spans.clone());
        // Every drop reason is exported from the start, at zero.
        for reason in sonde_ebpf::drop_reason::NAMES
            .iter()
            .chain(["decode_error"].iter())
        {
            drop(events_dropped.get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            }));
        }
        Metrics {
            registry,
            http_server,
            http_client,
            db_client,
            db_server,
            events_received,
            events_dropped,
            parse_errors,
            connections_tracked,
            spans,
        }
    }

    /// Records one HTTP call. `cache` remembers the histogram of each label set already
    /// seen, so the common case builds no label strings and takes no family lock.
    pub fn observe_http(&self, call: &HttpCall, cache: &mut HttpHistogramCache) {
        let seconds = call.end_ts.saturating_sub(call.start_ts) as f64 / 1e9;
        let key = HttpKey::of(call);
        let hash = cache.hasher.hash_one(key);
        if let Some(entries) = cache.by_hash.get(&hash) {
            if let Some((_, h)) = entries.iter().find(|(owned, _)| owned.borrow() == key) {
                h.observe(seconds);
                return;
            }
        }
        let histogram = self.http_histogram(call);
        histogram.observe(seconds);
        if cache.len >= HttpHistogramCache::MAX_ENTRIES {
            cache.by_hash.clear();
            cache.len = 0;
        }
        cache.len += 1;
        cache
            .by_hash
            .entry(hash)
            .or_default()
            .push((OwnedHttpKey::from(key), histogram));
    }

    /// The histogram of `call`'s label set, created on first use.
    fn http_histogram(&self, call: &HttpCall) -> Histogram {
        let method = normalize_method(&call.request.method).to_string();
        let status = call.status.map(|s| s.to_string()).unwrap_or_default();
        let error_type = http_error_type(call).unwrap_or_default();
        let service_name = call.process.service_name.clone();
        match call.role {
            Role::Server => self
                .http_server
                .get_or_create(&HttpServerLabels {
                    service_name,
                    http_request_method: method,
                    http_response_status_code: status,
                    url_scheme: "http".into(),
                    error_type,
                })
                .clone(),
            Role::Client => {
                let (addr, port) = server_endpoint(call.request.host.as_deref(), call.peer);
                self.http_client
                    .get_or_create(&HttpClientLabels {
                        service_name,
                        http_request_method: method,
                        http_response_status_code: status,
                        url_scheme: "http".into(),
                        error_type,
                        server_address: addr.unwrap_or_default(),
                        server_port: port.map(|p| p.to_string()).unwrap_or_default(),
                    })
                    .clone()
            }
        }
    }

    /// Records one database operation in the client or server histogram.
    pub fn observe_db(&self, call: &DbCall) {
        let op = &call.op;
        let seconds = op.end_ts.saturating_sub(op.start_ts) as f64 / 1e9;
        let server = call.server();
        let labels = DbLabels {
            service_name: call.process.service_name.clone(),
            db_system_name: op.system.to_string(),
            db_operation_name: op.operation.clone(),
            db_namespace: op.namespace.clone(),
            error_type: call.error_type().unwrap_or_default().to_string(),
            server_address: server.map(|s| s.ip().to_string()).unwrap_or_default(),
            server_port: server.map(|s| s.port().to_string()).unwrap_or_default(),
        };
        let family = match call.role {
            Role::Client => &self.db_client,
            Role::Server => &self.db_server,
        };
        family.get_or_create(&labels).observe(seconds);
    }

    pub fn parse_error(&self, protocol: &str, kind: &str) {
        self.parse_errors
            .get_or_create(&ParseErrorLabels {
                protocol: protocol.into(),
                kind: kind.into(),
            })
            .inc();
    }

    pub fn dropped(&self, reason: &str, n: u64) {
        self.events_dropped
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc_by(n);
    }

    /// The registry in OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
