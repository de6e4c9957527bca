//! RED metrics (OpenTelemetry semantic-convention names) and sonde's own health counters,
//! in one prometheus-client registry.
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustc_hash::{FxBuildHasher, FxHashMap};

use crate::gpu::SharedSnapshot;
use crate::identity::process::ProcessInfo;
use crate::protocols::call::DbCall;
use crate::protocols::call::{HttpCall, Role};
use crate::protocols::llm::LlmCall;
use crate::telemetry::genai_metrics::GenAiMetrics;
use crate::telemetry::graph::{Edge, EdgeCache, ServiceGraph};
use crate::telemetry::red::{HistogramFamily, Series};
use crate::telemetry::series_memo::{DbMemo, HttpMemo};
use crate::telemetry::span::{http_error_type, normalize_method, server_endpoint};
use crate::traces::links::LINK_OUTCOMES;

/// `http.server.request.duration` / `http.client.request.duration` buckets (seconds).
pub const HTTP_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Labels of `http.server.request.duration`.
pub const HTTP_SERVER_LABELS: [&str; 6] = [
    "service.name",
    "http.request.method",
    "http.response.status_code",
    "url.scheme",
    "error.type",
    "http.route",
];

/// Labels of `http.client.request.duration`.
pub const HTTP_CLIENT_LABELS: [&str; 7] = [
    "service.name",
    "http.request.method",
    "http.response.status_code",
    "url.scheme",
    "error.type",
    "server.address",
    "server.port",
];

/// `db.client.operation.duration` buckets (seconds).
pub const DB_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// Labels of both database histograms. On the server side `server.*` is the socket the
/// database listens on.
pub const DB_LABELS: [&str; 7] = [
    "service.name",
    "db.system.name",
    "db.operation.name",
    "db.namespace",
    "error.type",
    "server.address",
    "server.port",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLinkLabels {
    pub kind: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ParseErrorLabels {
    pub protocol: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExportDropLabels {
    pub signal: String,
    pub reason: String,
}

/// Why exported data is dropped: the queue was full, the collector stayed unavailable
/// through the retries, it rejected the data, sonde was shutting down, or capture was
/// overloaded (spans only: see `Sink::set_overloaded`).
pub const EXPORT_DROP_REASONS: [&str; 5] = [
    "queue_full",
    "unavailable",
    "rejected",
    "shutdown",
    OVERLOAD,
];
/// The export drop reason of spans not built while capture was overloaded.
pub const OVERLOAD: &str = "overload";
/// The `signal` label value of spans.
pub const TRACES: &str = "traces";
/// The `signal` label values of export drops (`Signal::as_str` in the OTLP settings).
pub const EXPORT_SIGNALS: [&str; 2] = [TRACES, "metrics"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetricLabels {
    pub metric: String,
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
    tls: bool,
    service: &'a str,
    method: &'a str,
    status: Option<u16>,
    failure: Option<&'a str>,
    host: Option<&'a str>,
    peer: Option<SocketAddr>,
    route: Option<&'a str>,
}

impl<'a> HttpKey<'a> {
    fn of(call: &'a HttpCall) -> HttpKey<'a> {
        let client = call.role == Role::Client;
        HttpKey {
            role: call.role,
            tls: call.tls,
            service: &call.process.service_name,
            method: &call.request.method,
            status: call.status,
            failure: call.failure.as_deref(),
            host: call.request.host.as_deref().filter(|_| client),
            peer: call.peer.filter(|_| client),
            route: call.route.as_deref(),
        }
    }
}

/// An `HttpKey` kept in the cache.
struct OwnedHttpKey {
    role: Role,
    tls: bool,
    service: String,
    method: String,
    status: Option<u16>,
    failure: Option<String>,
    host: Option<String>,
    peer: Option<SocketAddr>,
    route: Option<String>,
}

impl OwnedHttpKey {
    fn borrow(&self) -> HttpKey<'_> {
        HttpKey {
            role: self.role,
            tls: self.tls,
            service: &self.service,
            method: &self.method,
            status: self.status,
            failure: self.failure.as_deref(),
            host: self.host.as_deref(),
            peer: self.peer,
            route: self.route.as_deref(),
        }
    }
}

impl From<HttpKey<'_>> for OwnedHttpKey {
    fn from(k: HttpKey<'_>) -> Self {
        OwnedHttpKey {
            role: k.role,
            tls: k.tls,
            service: k.service.to_string(),
            method: k.method.to_string(),
            status: k.status,
            failure: k.failure.map(str::to_string),
            host: k.host.map(str::to_string),
            peer: k.peer,
            route: k.route.map(str::to_string),
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

/// Series by label set (owned key `O`). Looked up by the hash of a borrowed key, so the
/// common case builds no label strings and takes no family lock. Bounded: past
/// `MAX_ENTRIES` it starts over; the series themselves stay in their family.
struct HistogramCache<O> {
    by_hash: FxHashMap<u64, Vec<(O, Arc<Series>)>>,
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
        create: impl FnOnce() -> (O, Arc<Series>),
    ) -> &Arc<Series> {
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
    db_memo: DbMemo,
    http_memo: HttpMemo,
}

pub struct Metrics {
    pub registry: Registry,
    pub http_server: HistogramFamily,
    pub http_client: HistogramFamily,
    pub db_client: HistogramFamily,
    pub db_server: HistogramFamily,
    /// LLM calls: the GenAI histograms and the missing-field counts.
    pub genai: GenAiMetrics,
    /// Observations that found their metric's label sets at the cap, by metric.
    pub label_set_overflow: Family<MetricLabels, Counter>,
    pub events_received: Counter,
    pub events_dropped: Family<ReasonLabels, Counter>,
    pub parse_errors: Family<ParseErrorLabels, Counter>,
    pub encrypted_connections: Family<ProtocolLabels, Counter>,
    pub connections_tracked: Gauge,
    /// TLS: library files with the OpenSSL uprobes, processes mapping one, plaintext events.
    pub tls_libraries: Gauge,
    pub tls_processes: Gauge,
    pub tls_plaintext_events: Counter,
    pub spans: Counter,
    pub spans_exported: Counter,
    pub export_dropped: Family<ExportDropLabels, Counter>,
    /// The GPU collector's newest snapshot (empty without GPUs).
    pub gpu: SharedSnapshot,
    /// Trace links tried, by kind and result (see `traces::links`).
    pub trace_links: Family<TraceLinkLabels, Counter>,
    /// What the kernel did with the HTTP/1 requests processes sent (`inject_traceparent`).
    pub traceparent_injections: Family<ResultLabels, Counter>,
    pub graph: ServiceGraph,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LABEL_SETS)
    }
}

/// Every reason an event can be dropped for: the kernel's, then userspace's.
fn drop_reasons() -> impl Iterator<Item = &'static str> {
    sonde_ebpf::drop_reason::NAMES.iter().copied().chain([
        "decode_error",
        "probation_limit",
        crate::protocols::session::PENDING_LIMIT,
    ])
}

/// Label sets a histogram may hold before new ones go to its overflow series (the
/// OpenTelemetry SDKs' default cardinality limit).
pub const DEFAULT_MAX_LABEL_SETS: usize = 2000;

impl Metrics {
    pub fn new(max_label_sets: usize) -> Metrics {
        let mut registry = Registry::default();
        let max = max_label_sets;
        let http_server = HistogramFamily::new(
            "http.server.request.duration",
            "http_server_request_duration",
            "s",
            "Duration of HTTP server requests (http.server.request.duration)",
            &HTTP_BUCKETS,
            &HTTP_SERVER_LABELS,
            max,
        );
        let http_client = HistogramFamily::new(
            "http.client.request.duration",
            "http_client_request_duration",
            "s",
            "Duration of HTTP client requests (http.client.request.duration)",
            &HTTP_BUCKETS,
            &HTTP_CLIENT_LABELS,
            max,
        );
        let db_client = HistogramFamily::new(
            "db.client.operation.duration",
            "db_client_operation_duration",
            "s",
            "Duration of database operations seen by their clients (db.client.operation.duration)",
            &DB_BUCKETS,
            &DB_LABELS,
            max,
        );
        let db_server = HistogramFamily::new(
            "sonde.db.server.operation.duration",
            "db_server_operation_duration",
            "s",
            "Duration of database operations seen by the database process itself",
            &DB_BUCKETS,
            &DB_LABELS,
            max,
        );
        let genai = GenAiMetrics::new(max, &mut registry);
        let graph = ServiceGraph::new(&mut registry);
        let trace_links = Family::<TraceLinkLabels, Counter>::default();
        registry.register(
            "sonde_trace_links",
            "Links between spans sonde tried to make, by kind (thread, connection, traceparent) and result",
            trace_links.clone(),
        );
        for (kind, result) in LINK_OUTCOMES {
            drop(trace_links.get_or_create(&TraceLinkLabels {
                kind: kind.into(),
                result: result.into(),
            }));
        }
        let traceparent_injections = Family::<ResultLabels, Counter>::default();
        registry.register(
            "sonde_traceparent_injections",
            "HTTP/1 requests the kernel saw processes send with inject_traceparent on, by result (injected, has_own, ambiguous, failed)",
            traceparent_injections.clone(),
        );
        for result in sonde_ebpf::injection::NAMES {
            drop(traceparent_injections.get_or_create(&ResultLabels {
                result: result.into(),
            }));
        }
        let label_set_overflow = Family::<MetricLabels, Counter>::default();
        registry.register(
            "sonde_metric_label_set_overflow",
            "Observations recorded in a metric's overflow series because it already had the maximum number of label sets (max_label_sets)",
            label_set_overflow.clone(),
        );
        let events_received = Counter::default();
        let events_dropped = Family::<ReasonLabels, Counter>::default();
        let parse_errors = Family::<ParseErrorLabels, Counter>::default();
        let encrypted_connections = Family::<ProtocolLabels, Counter>::default();
        let connections_tracked = Gauge::default();
        let (tls_libraries, tls_processes) = (Gauge::default(), Gauge::default());
        let tls_plaintext_events = Counter::default();
        registry.register(
            "sonde_tls_libraries",
            "TLS library files (libssl) the OpenSSL uprobes are attached to",
            tls_libraries.clone(),
        );
        registry.register(
            "sonde_tls_processes",
            "Processes that map a TLS library sonde is attached to (at the last full scan)",
            tls_processes.clone(),
        );
        registry.register(
            "sonde_tls_plaintext_events",
            "Events carrying TLS plaintext read by the OpenSSL uprobes",
            tls_plaintext_events.clone(),
        );
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
        let spans_exported = Counter::default();
        registry.register(
            "sonde_spans_exported",
            "Spans the OTLP collector accepted",
            spans_exported.clone(),
        );
        let export_dropped = Family::<ExportDropLabels, Counter>::default();
        registry.register(
            "sonde_export_dropped",
            "Spans and metric points that could not be exported over OTLP, by signal and reason",
            export_dropped.clone(),
        );
        for signal in EXPORT_SIGNALS {
            for reason in EXPORT_DROP_REASONS {
                drop(export_dropped.get_or_create(&ExportDropLabels {
                    signal: signal.into(),
                    reason: reason.into(),
                }));
            }
        }
        // Every drop reason, and the overflow count of every histogram, is exported from
        // the start, at zero.
        for reason in drop_reasons() {
            drop(events_dropped.get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            }));
        }
        let red = [
            &http_server,
            &http_client,
            &db_client,
            &db_server,
            &graph.server_seconds,
            &graph.client_seconds,
        ];
        for family in red.into_iter().chain(genai.histograms()) {
            drop(label_set_overflow.get_or_create(&MetricLabels {
                metric: family.otel_name.to_string(),
            }));
        }
        Metrics {
            gpu: SharedSnapshot::default(),
            registry,
            http_server,
            http_client,
            db_client,
            db_server,
            genai,
            label_set_overflow,
            events_received,
            events_dropped,
            parse_errors,
            encrypted_connections,
            connections_tracked,
            tls_libraries,
            tls_processes,
            tls_plaintext_events,
            spans,
            spans_exported,
            export_dropped,
            trace_links,
            traceparent_injections,
            graph,
        }
    }

    /// Records one HTTP call in the histogram of its label set; `exemplar` is the
    /// (trace id, span id, end time) of its span when that span is sampled.
    pub fn observe_http(
        &self,
        call: &HttpCall,
        exemplar: Option<(u128, u64, u64)>,
        caches: &mut HistogramCaches,
    ) {
        let seconds = call.end_ts.saturating_sub(call.start_ts) as f64 / 1e9;
        let HistogramCaches {
            hasher,
            http,
            http_memo,
            ..
        } = caches;
        let lookup = || {
            let key = HttpKey::of(call);
            http.get_or_create(
                hasher.hash_one(key),
                |owned| owned.borrow() == key,
                || (OwnedHttpKey::from(key), self.http_series(call)),
            )
            .clone()
        };
        http_memo.with_series(call, lookup, |s| self.observe(s, seconds, exemplar));
    }

    fn observe(&self, series: &Series, seconds: f64, exemplar: Option<(u128, u64, u64)>) {
        series.observe(seconds, exemplar);
        if series.is_overflow() {
            self.count_overflow(series);
        }
    }

    #[cold]
    fn count_overflow(&self, series: &Series) {
        for family in self.histograms() {
            if family.owns_overflow(series) {
                self.label_set_overflow
                    .get_or_create(&MetricLabels {
                        metric: family.otel_name.to_string(),
                    })
                    .inc();
            }
        }
    }

    /// The series of `call`'s label set, created on first use.
    fn http_series(&self, call: &HttpCall) -> Arc<Series> {
        let method = normalize_method(&call.request.method).to_string();
        let status = call.status.map(|s| s.to_string()).unwrap_or_default();
        let error_type = http_error_type(call).unwrap_or_default();
        let service_name = call.process.service_name.clone();
        match call.role {
            Role::Server => self.http_server.series(vec![
                service_name,
                method,
                status,
                call.scheme().into(),
                error_type,
                call.route.as_deref().unwrap_or_default().to_string(),
            ]),
            Role::Client => {
                let (addr, port) =
                    server_endpoint(call.request.host.as_deref(), call.peer, call.tls);
                self.http_client.series(vec![
                    service_name,
                    method,
                    status,
                    call.scheme().into(),
                    error_type,
                    addr.unwrap_or_default(),
                    port.map(|p| p.to_string()).unwrap_or_default(),
                ])
            }
        }
    }

    /// Records one database operation in the client or server histogram of its label set.
    pub fn observe_db(
        &self,
        call: &DbCall,
        exemplar: Option<(u128, u64, u64)>,
        caches: &mut HistogramCaches,
    ) {
        let op = &call.op;
        let seconds = op.end_ts.saturating_sub(op.start_ts) as f64 / 1e9;
        let HistogramCaches {
            hasher,
            db,
            db_memo,
            ..
        } = caches;
        let lookup = || {
            let key = DbKey::of(call);
            db.get_or_create(
                hasher.hash_one(key),
                |owned| owned.borrow() == key,
                || (OwnedDbKey::from(key), self.db_series(call)),
            )
            .clone()
        };
        db_memo.with_series(call, lookup, |s| self.observe(s, seconds, exemplar));
    }

    fn db_series(&self, call: &DbCall) -> Arc<Series> {
        let op = &call.op;
        let server = call.server();
        let labels = vec![
            call.process.service_name.clone(),
            op.system.to_string(),
            op.operation.to_string(),
            op.namespace.to_string(),
            call.error_type().unwrap_or_default().to_string(),
            server.map(|s| s.ip().to_string()).unwrap_or_default(),
            server.map(|s| s.port().to_string()).unwrap_or_default(),
        ];
        match call.role {
            Role::Client => self.db_client.series(labels),
            Role::Server => self.db_server.series(labels),
        }
    }

    /// Every histogram, in exposition order.
    pub fn histograms(&self) -> Vec<&HistogramFamily> {
        let mut all = vec![
            &self.http_server,
            &self.http_client,
            &self.db_client,
            &self.db_server,
            &self.graph.server_seconds,
            &self.graph.client_seconds,
        ];
        all.extend(self.genai.histograms());
        all
    }

    /// Records an LLM call in the GenAI histograms (its provider already resolved).
    pub fn observe_llm(&self, call: &HttpCall, llm: &LlmCall, exemplar: Option<(u128, u64, u64)>) {
        for series in self.genai.observe(call, llm, exemplar) {
            if series.is_overflow() {
                self.count_overflow(&series);
            }
        }
    }

    pub fn parse_error(&self, protocol: &str, kind: &str) {
        self.parse_errors
            .get_or_create(&ParseErrorLabels {
                protocol: protocol.into(),
                kind: kind.into(),
            })
            .inc();
    }

    /// The `sonde_trace_links_total` series of (kind, result), for a caller to keep.
    pub fn trace_link_counter(&self, kind: &str, result: &str) -> Counter {
        self.trace_links
            .get_or_create(&TraceLinkLabels {
                kind: kind.into(),
                result: result.into(),
            })
            .clone()
    }

    /// Records one call on its service-graph edge (see `graph`).
    pub fn observe_edge(&self, edge: &Edge<'_>, cache: &mut EdgeCache) {
        if !cache.record(&self.graph, edge) {
            self.count_edge_overflow();
        }
    }

    /// `observe_edge` for a call between two processes seen (see
    /// `EdgeCache::record_between`).
    pub fn observe_edge_between(
        &self,
        client: &Arc<ProcessInfo>,
        server: &Arc<ProcessInfo>,
        edge: &Edge<'_>,
        cache: &mut EdgeCache,
    ) {
        if !cache.record_between(&self.graph, client, server, edge) {
            self.count_edge_overflow();
        }
    }

    #[cold]
    fn count_edge_overflow(&self) {
        self.label_set_overflow
            .get_or_create(&MetricLabels {
                metric: "traces_service_graph_request_total".to_string(),
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

    /// `signal`: `traces` or `metrics`.
    pub fn export_dropped(&self, signal: &str, reason: &str, n: u64) {
        self.export_dropped
            .get_or_create(&ExportDropLabels {
                signal: signal.into(),
                reason: reason.into(),
            })
            .inc_by(n);
    }

    /// Every drop reason with its count.
    pub fn dropped_counts(&self) -> Vec<(String, u64)> {
        drop_reasons()
            .map(|reason| {
                let labels = ReasonLabels {
                    reason: reason.to_string(),
                };
                let n = self.events_dropped.get(&labels).map_or(0, |c| c.get());
                (labels.reason, n)
            })
            .collect()
    }

    /// Every (signal, reason) of export drops with its count.
    pub fn export_dropped_counts(&self) -> Vec<(String, String, u64)> {
        let mut out = Vec::new();
        for signal in EXPORT_SIGNALS {
            for reason in EXPORT_DROP_REASONS {
                let labels = ExportDropLabels {
                    signal: signal.into(),
                    reason: reason.into(),
                };
                let n = self.export_dropped.get(&labels).map_or(0, |c| c.get());
                out.push((labels.signal, labels.reason, n));
            }
        }
        out
    }

    pub fn dropped(&self, reason: &str, n: u64) {
        self.events_dropped
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc_by(n);
    }

    pub fn injected(&self, result: &str, n: u64) {
        self.traceparent_injections
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc_by(n);
    }
}
