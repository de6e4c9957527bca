//! Where finished calls go: RED histograms and self-metrics, sampled spans (printed as JSON
//! lines, queued for OTLP), and the summary table.
use std::io::{BufWriter, Stdout, Write};
use std::net::SocketAddr;

use crate::conn::CallSink;
use crate::protocols::call::{DbCall, HttpCall, Role};
use crate::protocols::http1::routes::Routes;
use crate::telemetry::graph::{Edge, EdgeCache, DATABASE, DIRECT, USER, VIRTUAL_NODE};
use crate::telemetry::metrics::{HistogramCaches, Metrics, OVERLOAD, TRACES};
use crate::telemetry::sampler::Sampler;
use crate::telemetry::span::{http_error_type, server_endpoint, Clock, Span, SpanIds};
use crate::traces::node::{EdgeHalf, Served};
use crate::traces::NodeRef;
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;

use crate::identity::process::ProcessInfo;
use crate::identity::services::SharedServiceIndex;

/// Where sampled spans are sent besides stdout (the OTLP exporter's queue). It must not
/// block: the capture thread calls it.
pub trait SpanExport: Send {
    fn export(&mut self, span: Span);
    /// Called after every drain of the ring buffer: hands on what has waited long enough.
    fn flush_due(&mut self);
    /// Whether the next span would be dropped (the queue is full); if so it is counted as
    /// dropped here, and the caller need not build it.
    fn refuse_if_full(&mut self) -> bool;
}
use crate::telemetry::genai::{self, ProviderRule};
use crate::telemetry::summary::{LlmSummary, Summary};

/// Receives what the connection table finds and turns it into telemetry: RED histograms,
/// self-metrics, sampled spans (printed and queued for OTLP) and the summary table.
pub struct Sink<'a> {
    metrics: &'a Metrics,
    spans_out: Option<BufWriter<Stdout>>,
    summary: Option<Summary>,
    clock: Clock,
    histograms: HistogramCaches,
    sampler: Sampler,
    otlp: Option<Box<dyn SpanExport>>,
    routes: Routes,
    providers: Vec<ProviderRule>,
    edges: EdgeCache,
    /// The cluster's Services, naming a server that is not on this host by its address.
    services: Option<SharedServiceIndex>,
    /// `sonde_trace_links_total` series by (kind, result), looked up without building labels.
    link_counters: Vec<((&'static str, &'static str), Counter)>,
    /// Capture is overloaded (see `capture::ring::Overload`): spans for OTLP are not built,
    /// so that capture keeps up and the metrics stay exact; they are counted as dropped.
    overloaded: bool,
    /// Spans not built while overloaded, not counted yet.
    shed: u64,
}

impl<'a> Sink<'a> {
    /// `print_spans`: spans as JSON lines on stdout; `summary`: the periodic table there
    /// instead; `otlp`: the queue of the OTLP span exporter.
    pub fn new(
        metrics: &'a Metrics,
        print_spans: bool,
        summary: bool,
        sampler: Sampler,
        otlp: Option<Box<dyn SpanExport>>,
        routes: Routes,
        providers: Vec<ProviderRule>,
    ) -> Sink<'a> {
        Sink {
            metrics,
            spans_out: print_spans.then(|| BufWriter::with_capacity(1 << 16, std::io::stdout())),
            summary: summary.then(Summary::default),
            clock: Clock::now(),
            histograms: HistogramCaches::default(),
            sampler,
            otlp,
            routes,
            providers,
            edges: EdgeCache::default(),
            services: None,
            link_counters: Vec::new(),
            overloaded: false,
            shed: 0,
        }
    }

    /// Capture is (or is no longer) overloaded: while it is, spans bound for OTLP are
    /// dropped before they are built (`sonde_export_dropped_total{reason="overload"}`).
    /// Printed spans are not: printing is for looking at everything.
    pub fn set_overloaded(&mut self, on: bool) {
        self.overloaded = on;
    }

    /// Names servers that are not on this host by the Service at their address.
    pub fn with_services(mut self, services: Option<SharedServiceIndex>) -> Sink<'a> {
        self.services = services;
        self
    }

    /// Writes out the spans printed so far, and hands the OTLP exporter the batch that has
    /// waited long enough.
    pub fn flush(&mut self) {
        if let Some(out) = &mut self.spans_out {
            let _ = out.flush();
        }
        if self.shed > 0 {
            let shed = std::mem::take(&mut self.shed);
            self.metrics.export_dropped(TRACES, OVERLOAD, shed);
        }
        if let Some(q) = &mut self.otlp {
            q.flush_due();
        }
    }

    /// Prints the summary table of the last `secs` seconds and starts a new one.
    pub fn print_summary(&mut self, secs: f64) {
        if let Some(summary) = &mut self.summary {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "{}", summary.take_table(secs));
            let _ = out.flush();
        }
    }
}

impl Sink<'_> {
    /// Builds a sampled span if it goes anywhere (printed, or queued for OTLP where the
    /// queue has room: under a collector that falls behind, capture spends nothing on spans
    /// it would drop) and sends it there.
    fn emit(&mut self, build: impl FnOnce() -> Span) {
        let to_otlp = match &mut self.otlp {
            Some(_) if self.overloaded => {
                self.shed += 1;
                false
            }
            Some(q) => !q.refuse_if_full(),
            None => false,
        };
        if self.spans_out.is_none() && !to_otlp {
            return;
        }
        let span = build();
        if let Some(out) = &mut self.spans_out {
            let _ = span.write_json(out);
        }
        if let (true, Some(q)) = (to_otlp, &mut self.otlp) {
            q.export(span);
        }
    }
}

/// The exemplar of a sampled span: its trace, its id, and when it ended.
fn exemplar(ids: SpanIds, end_ts: u64, clock: Clock) -> Option<(u128, u64, u64)> {
    ids.sampled
        .then(|| (ids.trace_id, ids.span_id, clock.to_unix(end_ts)))
}

impl CallSink for Sink<'_> {
    fn http_call(&mut self, mut call: HttpCall) {
        if call.role == Role::Server && !self.routes.is_empty() {
            call.route = self
                .routes
                .route(&call.process.service_name, &call.request.path);
        }
        let provider = (call.llm.as_deref()).map(|l| genai::provider(&call, l, &self.providers));
        if let (Some(llm), Some(p)) = (call.llm.as_deref_mut(), provider) {
            llm.provider = Some(p);
        }
        let ids = match &call.trace {
            Some(node) => SpanIds::of_node(node, &self.sampler),
            None => SpanIds::new(call.request.traceparent.as_deref(), &self.sampler),
        };
        let ex = exemplar(ids, call.end_ts, self.clock);
        self.metrics.observe_http(&call, ex, &mut self.histograms);
        let failed = http_error_type(&call).is_some();
        let seconds = call.end_ts.saturating_sub(call.start_ts) as f64 / 1e9;
        let virtual_server = || {
            let fallback = call.peer;
            let (host, port) = server_endpoint(call.request.host.as_deref(), fallback, call.tls);
            match (host, port) {
                (Some(h), Some(p)) if call.request.host.is_none() => format!("{h}:{p}"),
                (Some(h), _) => h,
                _ => "unknown".to_string(),
            }
        };
        self.record_edge(
            call.role,
            &call.process,
            call.trace.as_ref(),
            DIRECT,
            seconds,
            failed,
            (call.peer, virtual_server),
        );
        if let Some(llm) = &call.llm {
            self.metrics.observe_llm(&call, llm, ex);
        }
        self.metrics.spans.inc();
        if let Some(summary) = &mut self.summary {
            let error = http_error_type(&call).is_some();
            let duration_ns = call.end_ts.saturating_sub(call.start_ts);
            let (service, role) = (&call.process.service_name, call.role.as_str());
            summary.observe(service, "http", role, duration_ns, error);
            if let Some(llm) = &call.llm {
                let ttft_ns = llm
                    .first_chunk_ts
                    .filter(|_| llm.stream == Some(true))
                    .map(|first| first.saturating_sub(call.start_ts));
                let row = LlmSummary {
                    duration_ns,
                    error: genai::error_type(&call).is_some(),
                    ttft_ns,
                    output_tokens: llm.output_tokens,
                };
                summary.observe_llm(service, llm.model().unwrap_or_default(), role, row);
            }
        }
        if ids.sampled {
            let clock = self.clock;
            self.emit(|| Span::from_http_call(&call, ids, clock));
        }
    }

    fn db_call(&mut self, call: DbCall) {
        let ids = match &call.trace {
            Some(node) => SpanIds::of_node(node, &self.sampler),
            None => SpanIds::new(None, &self.sampler),
        };
        let ex = exemplar(ids, call.op.end_ts, self.clock);
        self.metrics.observe_db(&call, ex, &mut self.histograms);
        let seconds = call.op.end_ts.saturating_sub(call.op.start_ts) as f64 / 1e9;
        let virtual_server = || match call.server() {
            Some(a) => format!("{} {}", call.op.system, a),
            None => call.op.system.to_string(),
        };
        self.record_edge(
            call.role,
            &call.process,
            call.trace.as_ref(),
            DATABASE,
            seconds,
            call.error_type().is_some(),
            (call.server(), virtual_server),
        );
        self.metrics.spans.inc();
        if let Some(summary) = &mut self.summary {
            summary.observe(
                &call.process.service_name,
                call.op.system,
                call.role.as_str(),
                call.op.end_ts.saturating_sub(call.op.start_ts),
                call.error_type().is_some(),
            );
        }
        if ids.sampled {
            let clock = self.clock;
            self.emit(|| Span::from_db_call(&call, ids, clock));
        }
    }

    fn parse_error(&mut self, protocol: &'static str, kind: &'static str) {
        self.metrics.parse_error(protocol, kind);
    }

    fn dropped(&mut self, reason: &'static str, n: u64) {
        self.metrics.dropped(reason, n);
    }

    fn encrypted_connection(&mut self, protocol: &'static str) {
        self.metrics.encrypted_connection(protocol);
    }

    fn trace_link(&mut self, kind: &'static str, result: &'static str) {
        let key = (kind, result);
        let i = match self.link_counters.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                let counter = self.metrics.trace_link_counter(kind, result);
                self.link_counters.push((key, counter));
                self.link_counters.len() - 1
            }
        };
        self.link_counters[i].1.inc();
    }
}

impl Sink<'_> {
    /// The service-graph edge of a finished call (see `telemetry::graph`). When both ends
    /// of a call are seen, the one that finishes last records the edge (the client reads the
    /// answer after the server wrote it, but its event may reach sonde first).
    /// `connection_type` is that of a call whose server is seen. A server that is not is
    /// named by the Kubernetes Service at its address, else by `virtual_server`'s second
    /// half (the HTTP `Host`, the address).
    #[allow(clippy::too_many_arguments)]
    fn record_edge(
        &mut self,
        role: Role,
        process: &Arc<ProcessInfo>,
        trace: Option<&NodeRef>,
        connection_type: &'static str,
        seconds: f64,
        failed: bool,
        virtual_server: (Option<SocketAddr>, impl FnOnce() -> String),
    ) {
        let this = Served {
            process: process.clone(),
            seconds,
            failed,
        };
        match role {
            Role::Server => match trace
                .and_then(|n| n.parent_node())
                .filter(|c| c.has_server())
            {
                // The client is seen: the edge is recorded by whichever end finishes last.
                Some(client) => {
                    if let EdgeHalf::Client(c) = client.meet(EdgeHalf::Server(this.clone())) {
                        self.pair_edge(&c, &this, connection_type);
                    }
                }
                None => {
                    let edge = Edge {
                        client: USER,
                        server: &process.service_name,
                        connection_type: VIRTUAL_NODE,
                        client_seconds: None,
                        server_seconds: Some(seconds),
                        failed,
                    };
                    self.metrics.observe_edge(&edge, &mut self.edges);
                }
            },
            Role::Client => match trace.filter(|n| n.has_server()) {
                Some(node) => {
                    if let EdgeHalf::Server(s) = node.meet(EdgeHalf::Client(this.clone())) {
                        self.pair_edge(&this, &s, connection_type);
                    }
                }
                None => {
                    let (address, name_of_call) = virtual_server;
                    let service = self.services.as_ref().zip(address).and_then(|(s, a)| {
                        let services = s.read().unwrap_or_else(|e| e.into_inner());
                        services.name_at(a.ip())
                    });
                    let name = match service {
                        Some(service) => service.to_string(),
                        None => name_of_call(),
                    };
                    let connection_type = if connection_type == DATABASE {
                        DATABASE
                    } else {
                        VIRTUAL_NODE
                    };
                    let edge = Edge {
                        client: &process.service_name,
                        server: &name,
                        connection_type,
                        client_seconds: Some(seconds),
                        server_seconds: None,
                        failed,
                    };
                    self.metrics.observe_edge(&edge, &mut self.edges);
                }
            },
        }
    }

    /// Records a call whose two ends were both seen.
    fn pair_edge(&mut self, client: &Served, server: &Served, connection_type: &'static str) {
        let edge = Edge {
            client: &client.process.service_name,
            server: &server.process.service_name,
            connection_type,
            client_seconds: Some(client.seconds),
            server_seconds: Some(server.seconds),
            failed: client.failed || server.failed,
        };
        self.metrics
            .observe_edge_between(&client.process, &server.process, &edge, &mut self.edges);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::identity::process::ProcessInfo;
    use crate::protocols::call::{DbOperation, REDIS};

    /// Counts the spans handed to it.
    struct Counting(Arc<Mutex<usize>>);

    impl SpanExport for Counting {
        fn export(&mut self, _: Span) {
            *self.0.lock().unwrap() += 1;
        }
        fn flush_due(&mut self) {}
        fn refuse_if_full(&mut self) -> bool {
            false
        }
    }

    fn get(end_ts: u64) -> DbCall {
        DbCall {
            role: Role::Client,
            process: Arc::new(ProcessInfo::for_tests(7, "app", "app")),
            tid: 7,
            local: None,
            peer: None,
            op: DbOperation {
                system: REDIS,
                operation: "GET".into(),
                start_ts: 1,
                end_ts,
                ..DbOperation::default()
            },
            trace: None,
        }
    }

    #[test]
    fn overloaded_capture_sheds_spans_but_keeps_the_metrics_exact() {
        let metrics = Metrics::new(100);
        let exported = Arc::new(Mutex::new(0));
        let mut sink = Sink::new(
            &metrics,
            false,
            false,
            Sampler::default(),
            Some(Box::new(Counting(exported.clone()))),
            Routes::new(&[]),
            Vec::new(),
        );
        sink.db_call(get(2));
        sink.set_overloaded(true);
        sink.db_call(get(3));
        sink.db_call(get(4));
        sink.flush();
        sink.set_overloaded(false);
        sink.db_call(get(5));
        sink.flush();
        assert_eq!(*exported.lock().unwrap(), 2);
        let overload = metrics
            .export_dropped_counts()
            .into_iter()
            .find(|(signal, reason, _)| signal == TRACES && reason == OVERLOAD);
        assert_eq!(overload, Some((TRACES.into(), OVERLOAD.into(), 2)));
        let observed: u64 = metrics
            .db_client
            .all_series()
            .iter()
            .map(|s| s.snapshot().count)
            .sum();
        assert_eq!(observed, 4);
    }
}
