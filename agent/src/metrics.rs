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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: String,
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

/// What decides the labels of one database observation, borrowed from the call.
#[derive(Clone, Copy, Hash, PartialEq, Eq)]
struct DbKey<'a> {
    role: Role,
    service: &'a str,
    system: &'static str,
    operation: &'a str,
    namespace: &'a str,
    error: Option<&'a str>,
    server: Option<SocketAddr>,
}

impl<'a> DbKey<'a> {
    fn of(call: &'a DbCall) -> DbKey<'a> {
        DbKey {
            role: call.role,
            service: &call.process.service_name,
            system: call.op.system,
            operation: &call.op.operation,
            namespace: &call.op.namespace,
            error: call.error_type(),
            server: call.server(),
        }
    }
}

/// A `DbKey` kept in the cache.
struct OwnedDbKey {
    role: Role,
    service: String,
    system: &'static str,
    operation: String,
    namespace: String,
    error: Option<String>,
    server: Option<SocketAddr>,
}

impl OwnedDbKey {
    fn borrow(&self) -> DbKey<'_> {
        DbKey {
            role: self.role,
            service: &self.service,
            system: self.system,
            operation: &self.operation,
            namespace: &self.namespace,
            error: self.error.as_deref(),
            server: self.server,
        }
    }
}

impl From<DbKey<'_>> for OwnedDbKey {
    fn from(k: DbKey<'_>) -> Self {
        OwnedDbKey {
            role: k.role,
            service: k.service.to_string(),
            system: k.system,
            operation: k.operation.to_string(),
            namespace: k.namespace.to_string(),
            error: k.error.map(str::to_string),
            server: k.server,
        }
    }
}

/// Histograms by label set (owned key `O`). Looked up by the hash of a borrowed key, so the
/// common case builds no label strings and takes no family lock. Bounded: past
/// `MAX_ENTRIES` it starts over; the histograms themselves stay registered.
struct HistogramCache<O> {
    by_hash: FxHashMap<u64, Vec<(O, Histogram)>>,
    len: usize,
}

impl<O> Default for HistogramCache<O> {
    fn default() -> Self {
        HistogramCache {
            by_hash: FxHashMap::default(),
            len: 0,
        }
    }
}

impl<O> HistogramCache<O> {
    const MAX_ENTRIES: usize = 4096;

    /// The histogram cached under `hash` for which `same` holds, or the one `create` makes.
    fn get_or_create(
        &mut self,
        hash: u64,
        same: impl Fn(&O) -> bool,
        create: impl FnOnce() -> (O, Histogram),
    ) -> &Histogram {
        if self.len >= Self::MAX_ENTRIES {
            self.by_hash.clear();
            self.len = 0;
        }
        let entries = self.by_hash.entry(hash).or_default();
        let i = match entries.iter().position(|(owned, _)| same(owned)) {
            Some(i) => i,
            None => {
                entries.push(create());
                self.len += 1;
                entries.len() - 1
            }
        };
        &entries[i].1
    }
}

/// The histogram caches of the capture thread (see `Metrics::observe_http`).
#[derive(Default)]
pub struct HistogramCaches {
    hasher: FxBuildHasher,
    http: HistogramCache<OwnedHttpKey>,
    db: HistogramCache<OwnedDbKey>,
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
    pub encrypted_connections: Family<ProtocolLabels, Counter>,
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
        let encrypted_connections = Family::<ProtocolLabels, Counter>::default();
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
            "sonde_encrypted_connections",
            "Connections that switched to TLS or GSS encryption, whose traffic sonde cannot read",
            encrypted_connections.clone(),
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
            .chain(["decode_error", "probation_limit"].iter())
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
            encrypted_connections,
            connections_tracked,
            spans,
        }
    }

    /// Records one HTTP call in the histogram of its label set.
    pub fn observe_http(&self, call: &HttpCall, caches: &mut HistogramCaches) {
        let seconds = call.end_ts.saturating_sub(call.start_ts) as f64 / 1e9;
        let key = HttpKey::of(call);
        let hash = caches.hasher.hash_one(key);
        caches
            .http
            .get_or_create(
                hash,
                |owned| owned.borrow() == key,
                || (OwnedHttpKey::from(key), self.http_histogram(call)),
            )
            .observe(seconds);
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

    /// Records one database operation in the client or server histogram of its label set.
    pub fn observe_db(&self, call: &DbCall, caches: &mut HistogramCaches) {
        let op = &call.op;
        let seconds = op.end_ts.saturating_sub(op.start_ts) as f64 / 1e9;
        let key = DbKey::of(call);
        let hash = caches.hasher.hash_one(key);
        caches
            .db
            .get_or_create(
                hash,
                |owned| owned.borrow() == key,
                || (OwnedDbKey::from(key), self.db_histogram(call)),
            )
            .observe(seconds);
    }

    fn db_histogram(&self, call: &DbCall) -> Histogram {
        let op = &call.op;
        let server = call.server();
        let labels = DbLabels {
            service_name: call.process.service_name.clone(),
            db_system_name: op.system.to_string(),
            db_operation_name: op.operation.to_string(),
            db_namespace: op.namespace.to_string(),
            error_type: call.error_type().unwrap_or_default().to_string(),
            server_address: server.map(|s| s.ip().to_string()).unwrap_or_default(),
            server_port: server.map(|s| s.port().to_string()).unwrap_or_default(),
        };
        let family = match call.role {
            Role::Client => &self.db_client,
            Role::Server => &self.db_server,
        };
        family.get_or_create(&labels).clone()
    }

    pub fn parse_error(&self, protocol: &str, kind: &str) {
        self.parse_errors
            .get_or_create(&ParseErrorLabels {
                protocol: protocol.into(),
                kind: kind.into(),
            })
            .inc();
    }

    pub fn encrypted_connection(&self, protocol: &str) {
        self.encrypted_connections
            .get_or_create(&ProtocolLabels {
                protocol: protocol.into(),
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
