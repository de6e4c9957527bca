//! Where finished calls go: RED histograms and self-metrics, sampled spans (printed as JSON
//! lines, queued for OTLP), and the summary table.
use std::io::{BufWriter, Stdout, Write};

use crate::conn::CallSink;
use crate::protocols::call::{DbCall, HttpCall, Role};
use crate::protocols::http1::routes::Routes;
use crate::telemetry::metrics::{HistogramCaches, Metrics};
use crate::telemetry::sampler::Sampler;
use crate::telemetry::span::{http_error_type, Clock, Span, SpanIds};

/// Where sampled spans are sent besides stdout (the OTLP exporter's queue). It must not
/// block: the capture thread calls it.
pub trait SpanExport: Send {
    fn export(&self, span: Span);
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
        }
    }

    /// Writes out the spans printed so far.
    pub fn flush(&mut self) {
        if let Some(out) = &mut self.spans_out {
            let _ = out.flush();
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
    /// Whether a sampled span goes anywhere, and so is worth building.
    fn wants_spans(&self) -> bool {
        self.spans_out.is_some() || self.otlp.is_some()
    }

    fn emit(&mut self, span: Span) {
        if let Some(out) = &mut self.spans_out {
            let _ = span.write_json(out);
        }
        if let Some(q) = &self.otlp {
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
        let ids = SpanIds::new(call.request.traceparent.as_deref(), &self.sampler);
        let ex = exemplar(ids, call.end_ts, self.clock);
        self.metrics.observe_http(&call, ex, &mut self.histograms);
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
        if ids.sampled && self.wants_spans() {
            self.emit(Span::from_http_call(&call, ids, self.clock));
        }
    }

    fn db_call(&mut self, call: DbCall) {
        let ids = SpanIds::new(None, &self.sampler);
        let ex = exemplar(ids, call.op.end_ts, self.clock);
        self.metrics.observe_db(&call, ex, &mut self.histograms);
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
        if ids.sampled && self.wants_spans() {
            self.emit(Span::from_db_call(&call, ids, self.clock));
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
}
