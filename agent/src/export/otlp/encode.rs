//! sonde's spans and metrics as OTLP protobuf messages: one Resource per observed process
//! (spans) or service (metrics), sonde's own counters under its own Resource.
use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    exemplar, metric, number_data_point, AggregationTemporality, Exemplar, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status};
use prost::Message;
use rustc_hash::FxHashMap;

use super::settings::Temporality;
use super::wire;
use crate::gpu::names::Kind;
use crate::gpu::GpuPoint;
use crate::identity::process::ProcessInfo;
use crate::telemetry::attr::IpText;
use crate::telemetry::red::{HistogramData, HistogramFamily, OVERFLOW_LABEL};
use crate::telemetry::span::{AttrValue, Span, SpanKind};

/// Trace flag: sampled.
const FLAG_SAMPLED: u32 = 0x01;
/// Span flags: whether the parent is remote is known / the parent is remote.
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// What every resource carries: the host and sonde itself, and `OTEL_RESOURCE_ATTRIBUTES`.
#[derive(Clone, Debug)]
pub struct ResourceBase {
    pub host_name: String,
    pub extra: Vec<(String, String)>,
    /// Add `process.command_line` (off by default: command lines can hold secrets).
    pub command_line: bool,
}

impl ResourceBase {
    fn attributes(&self, own: Vec<KeyValue>) -> Resource {
        let mut attrs = own;
        let mut add = |k: &str, v: &str| {
            if !attrs.iter().any(|a| a.key == k) {
                attrs.push(kv_str(k, v));
            }
        };
        add("host.name", &self.host_name);
        add("telemetry.distro.name", "sonde");
        add("telemetry.distro.version", env!("CARGO_PKG_VERSION"));
        for (k, v) in &self.extra {
            add(k, v);
        }
        Resource {
            attributes: attrs,
            ..Default::default()
        }
    }

    /// The Resource of one observed process.
    pub fn process(&self, p: &ProcessInfo) -> Resource {
        let mut own = vec![
            kv_str("service.name", &p.service_name),
            kv_str(
                "service.instance.id",
                &format!("{}:{}", self.host_name, p.pid),
            ),
            kv_int("process.pid", p.pid as i64),
            kv_str("process.executable.name", &p.exe_name),
        ];
        if !p.exe_path.is_empty() {
            own.push(kv_str("process.executable.path", &p.exe_path));
        }
        if let Some(c) = &p.container_id {
            own.push(kv_str("container.id", c));
        }
        if let Some(pod) = &p.pod {
            for (k, v) in pod.attributes() {
                own.push(kv_str(k, v));
            }
        }
        if self.command_line {
            if let Some(c) = p.command_line.as_deref().filter(|c| !c.is_empty()) {
                own.push(kv_str("process.command_line", c));
            }
        }
        self.attributes(own)
    }

    /// The Resource of a service's metrics (summed over its processes).
    pub fn service(&self, service_name: &str) -> Resource {
        self.attributes(vec![kv_str("service.name", service_name)])
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "sonde".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

pub fn kv_str(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_string())),
        }),
        ..Default::default()
    }
}

pub fn kv_int(k: &str, v: i64) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
        ..Default::default()
    }
}

/// One span, as the fields of an OTLP `Span` message.
fn write_span(b: &mut Vec<u8>, s: &Span) {
    wire::bytes(b, 1, &s.trace_id.to_be_bytes());
    wire::bytes(b, 2, &s.span_id.to_be_bytes());
    if let Some(parent) = s.parent_span_id {
        wire::bytes(b, 4, &parent.to_be_bytes());
    }
    if !s.name.is_empty() {
        wire::string(b, 5, &s.name);
    }
    let kind = match s.kind {
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Client => span::SpanKind::Client,
    };
    wire::varint(b, 6, kind as u64);
    wire::fixed64(b, 7, s.start_unix_nano);
    wire::fixed64(b, 8, s.end_unix_nano);
    for (k, v) in &s.attributes {
        wire::message(b, 9, |b| {
            wire::string(b, 1, k);
            wire::message(b, 2, |b| write_any_value(b, v));
        });
    }
    if s.attributes.iter().any(|(k, _)| *k == "error.type") {
        wire::message(b, 15, |b| {
            wire::varint(b, 3, status::StatusCode::Error as u64)
        });
    }
    let mut flags = FLAG_SAMPLED | FLAG_HAS_IS_REMOTE;
    if s.parent_span_id.is_some() {
        // Parents come from a traceparent header: another process's span.
        flags |= FLAG_IS_REMOTE;
    }
    wire::fixed32(b, 16, flags);
}

/// The fields of an `AnyValue`: strings, integers, doubles, booleans and string arrays
/// (GenAI attributes).
fn write_any_value(b: &mut Vec<u8>, v: &AttrValue) {
    match v {
        AttrValue::Str(s) => wire::string(b, 1, s),
        AttrValue::Static(s) => wire::string(b, 1, s),
        AttrValue::Shared(s) => wire::string(b, 1, s),
        AttrValue::Ip(ip) => wire::string(b, 1, IpText::of(*ip).as_str()),
        AttrValue::Bool(v) => wire::varint(b, 2, u64::from(*v)),
        AttrValue::Int(i) => wire::varint(b, 3, *i as u64),
        AttrValue::Double(d) => wire::double(b, 4, *d),
        AttrValue::StrArray(items) => wire::message(b, 5, |b| {
            for item in items {
                wire::message(b, 1, |b| wire::string(b, 1, item));
            }
        }),
    }
}

/// Spans encoded as they come, each into the part of the process that made it (one
/// Resource each), so that a span is written once, on the thread that built it, and a
/// queued batch holds its bytes rather than the spans' strings.
#[derive(Default)]
pub struct SpanBatch {
    parts: Vec<(Arc<ProcessInfo>, Vec<u8>)>,
    index: FxHashMap<(u32, u64), usize>,
    spans: usize,
}

impl SpanBatch {
    pub fn push(&mut self, span: &Span) {
        let key = (span.process.pid, span.process.start_time);
        let parts = &mut self.parts;
        let i = *self.index.entry(key).or_insert_with(|| {
            parts.push((span.process.clone(), Vec::with_capacity(4096)));
            parts.len() - 1
        });
        // ScopeSpans.spans
        wire::long_message(&mut self.parts[i].1, 2, |b| write_span(b, span));
        self.spans += 1;
    }

    /// Spans in the batch.
    pub fn len(&self) -> usize {
        self.spans
    }

    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// The batch as one encoded `ExportTraceServiceRequest`. Each part's size is known, so
    /// its spans are copied once, behind heads written first.
    pub fn body(&self, base: &ResourceBase) -> Vec<u8> {
        let scope = scope().encode_to_vec();
        let size: usize = self.parts.iter().map(|(_, b)| b.len() + 1024).sum();
        let mut b = Vec::with_capacity(size);
        for (process, spans) in &self.parts {
            // ResourceSpans.resource: a few per batch, so built as a message struct.
            let resource = base.process(process).encode_to_vec();
            // ResourceSpans.scope_spans: the scope, then the spans.
            let scope_spans = wire::len_field_size(1, scope.len()) + spans.len();
            let resource_spans =
                wire::len_field_size(1, resource.len()) + wire::len_field_size(2, scope_spans);
            // ExportTraceServiceRequest.resource_spans
            wire::len_head(&mut b, 1, resource_spans);
            wire::bytes(&mut b, 1, &resource);
            wire::len_head(&mut b, 2, scope_spans);
            wire::bytes(&mut b, 1, &scope);
            b.extend_from_slice(spans);
        }
        b
    }
}

/// A batch of spans as one encoded `ExportTraceServiceRequest`, grouped by the process that
/// made them (one Resource each).
#[cfg(test)]
pub fn traces_body(spans: &[Span], base: &ResourceBase) -> Vec<u8> {
    let mut batch = SpanBatch::default();
    for s in spans {
        batch.push(s);
    }
    batch.body(base)
}

/// A counter of sonde's own, with its labels.
pub struct CounterPoint {
    pub name: &'static str,
    pub description: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: u64,
}

/// What was last exported, for delta temporality.
#[derive(Default)]
pub struct DeltaState {
    histograms: HashMap<(&'static str, Vec<String>), HistogramData>,
    counters: HashMap<(&'static str, Vec<String>), u64>,
    gpu_counters: HashMap<(&'static str, Vec<String>), f64>,
    last_export_unix_nano: u64,
}

/// What one metrics export holds.
pub struct MetricInputs<'a> {
    pub histograms: &'a [&'a HistogramFamily],
    /// sonde's own counters.
    pub counters: &'a [CounterPoint],
    pub gpu: &'a [GpuPoint],
}

/// Everything as one request: a ResourceMetrics per service, and sonde's own counters, any
/// overflow series and the GPU devices under the resource of sonde itself (which carries
/// `host.name`); per-process GPU points go under their service.
pub fn metrics_request(
    inputs: MetricInputs<'_>,
    base: &ResourceBase,
    temporality: Temporality,
    start_unix_nano: u64,
    now_unix_nano: u64,
    delta: &mut DeltaState,
) -> ExportMetricsServiceRequest {
    let (start, agg) = match temporality {
        Temporality::Cumulative => (start_unix_nano, AggregationTemporality::Cumulative),
        Temporality::Delta => (
            delta.last_export_unix_nano.max(start_unix_nano),
            AggregationTemporality::Delta,
        ),
    };
    // service -> metric name -> points
    let mut services: Vec<(String, Vec<Metric>)> = Vec::new();
    let own_service = "sonde".to_string();
    let metric_of = |services: &mut Vec<(String, Vec<Metric>)>,
                     service: &str,
                     family: &HistogramFamily|
     -> usize {
        let si = service_index(services, service);
        let metrics = &mut services[si].1;
        let mi = match metrics.iter().position(|m| m.name == family.otel_name) {
            Some(i) => i,
            None => {
                metrics.push(Metric {
                    name: family.otel_name.into(),
                    description: family.help.into(),
                    unit: family.unit.into(),
                    data: Some(metric::Data::Histogram(Histogram {
                        data_points: Vec::new(),
                        aggregation_temporality: agg as i32,
                    })),
                    ..Default::default()
                });
                metrics.len() - 1
            }
        };
        si << 16 | mi
    };
    for family in inputs.histograms {
        for series in family.all_series() {
            let mut d = series.snapshot();
            if temporality == Temporality::Delta {
                let key = (family.otel_name, series.labels.clone());
                let prev = delta.histograms.insert(key, d.clone());
                if let Some(prev) = prev {
                    for (c, p) in d.counts.iter_mut().zip(&prev.counts) {
                        *c = c.saturating_sub(*p);
                    }
                    d.count = d.count.saturating_sub(prev.count);
                    d.sum -= prev.sum;
                }
                if d.count == 0 {
                    continue;
                }
            }
            let (service, attributes) = if series.is_overflow() {
                (own_service.as_str(), vec![kv_str(OVERFLOW_LABEL, "true")])
            } else {
                let mut service = own_service.as_str();
                let mut attrs = Vec::new();
                for (k, v) in family.label_names.iter().zip(&series.labels) {
                    if *k == "service.name" {
                        service = v;
                    } else if !v.is_empty() {
                        attrs.push(attribute(k, v));
                    }
                }
                (service, attrs)
            };
            let exemplars = d
                .exemplars
                .iter()
                .flatten()
                .filter(|e| e.time_unix_nano >= start)
                .map(|e| Exemplar {
                    time_unix_nano: e.time_unix_nano,
                    span_id: e.span_id.to_be_bytes().to_vec(),
                    trace_id: e.trace_id.to_be_bytes().to_vec(),
                    value: Some(exemplar::Value::AsDouble(e.value)),
                    ..Default::default()
                })
                .collect();
            let point = HistogramDataPoint {
                attributes,
                start_time_unix_nano: start,
                time_unix_nano: now_unix_nano,
                count: d.count,
                sum: Some(d.sum),
                bucket_counts: d.counts.clone(),
                explicit_bounds: family.bounds.to_vec(),
                exemplars,
                ..Default::default()
            };
            let at = metric_of(&mut services, service, family);
            if let Some(metric::Data::Histogram(h)) = &mut services[at >> 16].1[at & 0xffff].data {
                h.data_points.push(point);
            }
        }
    }
    let mut own: Vec<Metric> = Vec::new();
    for c in inputs.counters {
        let mut value = c.value;
        if temporality == Temporality::Delta {
            let key = (c.name, c.labels.iter().map(|(_, v)| v.clone()).collect());
            let prev = delta.counters.insert(key, c.value).unwrap_or(0);
            value = value.saturating_sub(prev);
        }
        let point = NumberDataPoint {
            attributes: c.labels.iter().map(|(k, v)| kv_str(k, v)).collect(),
            start_time_unix_nano: start,
            time_unix_nano: now_unix_nano,
            value: Some(number_data_point::Value::AsInt(value as i64)),
            ..Default::default()
        };
        match own.iter_mut().find(|m| m.name == c.name) {
            Some(Metric {
                data: Some(metric::Data::Sum(sum)),
                ..
            }) => sum.data_points.push(point),
            _ => own.push(Metric {
                name: c.name.into(),
                description: c.description.into(),
                data: Some(metric::Data::Sum(Sum {
                    data_points: vec![point],
                    aggregation_temporality: agg as i32,
                    is_monotonic: true,
                })),
                ..Default::default()
            }),
        }
    }
    let si = service_index(&mut services, &own_service);
    services[si].1.extend(own);
    for p in inputs.gpu {
        let si = service_index(&mut services, p.service.as_deref().unwrap_or(&own_service));
        push_gpu_point(
            &mut services[si].1,
            p,
            temporality,
            agg,
            start,
            now_unix_nano,
            delta,
        );
    }
    delta.last_export_unix_nano = now_unix_nano;
    ExportMetricsServiceRequest {
        resource_metrics: services
            .into_iter()
            .map(|(service, metrics)| ResourceMetrics {
                resource: Some(base.service(&service)),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// Where `service`'s metrics go in `services`, added when new.
fn service_index(services: &mut Vec<(String, Vec<Metric>)>, service: &str) -> usize {
    match services.iter().position(|(s, _)| s == service) {
        Some(i) => i,
        None => {
            services.push((service.to_string(), Vec::new()));
            services.len() - 1
        }
    }
}

/// One GPU point as a gauge or a monotonic sum in `metrics`.
fn push_gpu_point(
    metrics: &mut Vec<Metric>,
    p: &GpuPoint,
    temporality: Temporality,
    agg: AggregationTemporality,
    start: u64,
    now_unix_nano: u64,
    delta: &mut DeltaState,
) {
    let mut value = p.value;
    if p.metric.kind == Kind::Counter && temporality == Temporality::Delta {
        let key = (
            p.metric.otel,
            p.labels.iter().map(|(_, v)| v.clone()).collect(),
        );
        let prev = delta.gpu_counters.insert(key, p.value).unwrap_or(0.0);
        value = (p.value - prev).max(0.0);
    }
    let point = NumberDataPoint {
        attributes: p.labels.iter().map(|(k, v)| attribute(k, v)).collect(),
        start_time_unix_nano: start,
        time_unix_nano: now_unix_nano,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    };
    let at = match metrics.iter().position(|m| m.name == p.metric.otel) {
        Some(i) => i,
        None => {
            let data = match p.metric.kind {
                Kind::Gauge => metric::Data::Gauge(Gauge::default()),
                Kind::Counter => metric::Data::Sum(Sum {
                    data_points: Vec::new(),
                    aggregation_temporality: agg as i32,
                    is_monotonic: true,
                }),
            };
            metrics.push(Metric {
                name: p.metric.otel.into(),
                description: p.metric.help.into(),
                unit: p.metric.unit.into(),
                data: Some(data),
                ..Default::default()
            });
            metrics.len() - 1
        }
    };
    match &mut metrics[at].data {
        Some(metric::Data::Gauge(g)) => g.data_points.push(point),
        Some(metric::Data::Sum(s)) => s.data_points.push(point),
        _ => {}
    }
}

/// A metric attribute: ports, status codes and pids are integers in the semantic
/// conventions.
fn attribute(k: &str, v: &str) -> KeyValue {
    match k {
        "server.port" | "http.response.status_code" | "process.pid" => match v.parse::<i64>() {
            Ok(n) => kv_int(k, n),
            Err(_) => kv_str(k, v),
        },
        _ => kv_str(k, v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::{DB_BUCKETS, DB_LABELS};

    fn process(pid: u32, service: &str) -> Arc<ProcessInfo> {
        Arc::new(ProcessInfo {
            name_from_env: true,
            start_time: 7,
            ..ProcessInfo::for_tests(pid, "python3", service)
        })
    }

    /// The spans written straight into the wire format read back through prost as the
    /// OTLP messages they stand for: grouping, ids, times, every attribute kind, status and
    /// flags.
    #[test]
    fn spans_encoded_directly_decode_as_otlp() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::common::v1::ArrayValue;
        let (web, worker) = (process(10, "web"), process(11, "worker"));
        let long_path = "/p".repeat(100);
        let span = |p: &Arc<ProcessInfo>, id: u64, parent: Option<u64>, error: bool| Span {
            trace_id: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
            span_id: id,
            parent_span_id: parent,
            name: format!("GET {id}").into(),
            kind: if parent.is_some() {
                SpanKind::Server
            } else {
                SpanKind::Client
            },
            start_unix_nano: 1_700_000_000_000_000_000 + id,
            end_unix_nano: 1_700_000_000_000_500_000 + id,
            process: p.clone(),
            attributes: {
                let mut a = vec![
                    ("url.path", AttrValue::Str(long_path.clone())),
                    ("http.response.status_code", AttrValue::Int(-3)),
                    ("gen_ai.request.temperature", AttrValue::Double(0.5)),
                    ("gen_ai.is_stream", AttrValue::Bool(true)),
                    ("url.scheme", AttrValue::Static("http")),
                    ("client.address", AttrValue::Ip("10.1.2.3".parse().unwrap())),
                    (
                        "network.peer.address",
                        AttrValue::Ip(
                            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
                                .parse()
                                .unwrap(),
                        ),
                    ),
                    (
                        "gen_ai.response.finish_reasons",
                        AttrValue::StrArray(vec!["stop".into(), String::new()]),
                    ),
                ];
                if error {
                    a.push(("error.type", AttrValue::Str("500".into())));
                }
                a
            },
        };
        let spans = [
            span(&web, 1, Some(99), false),
            span(&worker, 2, None, true),
            span(&web, 3, None, false),
        ];
        let body = traces_body(&spans, &base());
        let req = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        assert_eq!(req.resource_spans.len(), 2, "one Resource per process");
        let service = |i: usize| {
            resource_attr(
                req.resource_spans[i].resource.as_ref().unwrap(),
                "service.name",
            )
        };
        assert_eq!(service(0).as_deref(), Some("web"));
        assert_eq!(service(1).as_deref(), Some("worker"));
        let scope_spans = &req.resource_spans[0].scope_spans[0];
        assert_eq!(scope_spans.scope.as_ref().unwrap().name, "sonde");
        let got: Vec<u64> = scope_spans
            .spans
            .iter()
            .map(|s| u64::from_be_bytes(s.span_id[..].try_into().unwrap()))
            .collect();
        assert_eq!(got, [1, 3]);
        let first = &scope_spans.spans[0];
        assert_eq!(first.trace_id, spans[0].trace_id.to_be_bytes());
        assert_eq!(first.parent_span_id, 99u64.to_be_bytes());
        assert_eq!(first.name, "GET 1");
        assert_eq!(first.kind, span::SpanKind::Server as i32);
        assert_eq!(first.start_time_unix_nano, spans[0].start_unix_nano);
        assert_eq!(first.end_time_unix_nano, spans[0].end_unix_nano);
        assert_eq!(
            first.flags,
            FLAG_SAMPLED | FLAG_HAS_IS_REMOTE | FLAG_IS_REMOTE
        );
        assert_eq!(first.status, None);
        let value = |s: &opentelemetry_proto::tonic::trace::v1::Span, k: &str| {
            s.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone()?.value)
        };
        assert_eq!(
            value(first, "url.path"),
            Some(any_value::Value::StringValue(long_path.clone()))
        );
        assert_eq!(
            value(first, "http.response.status_code"),
            Some(any_value::Value::IntValue(-3))
        );
        assert_eq!(
            value(first, "gen_ai.request.temperature"),
            Some(any_value::Value::DoubleValue(0.5))
        );
        assert_eq!(
            value(first, "gen_ai.is_stream"),
            Some(any_value::Value::BoolValue(true))
        );
        let text = |s: &str| Some(any_value::Value::StringValue(s.into()));
        assert_eq!(value(first, "url.scheme"), text("http"));
        assert_eq!(value(first, "client.address"), text("10.1.2.3"));
        assert_eq!(
            value(first, "network.peer.address"),
            text("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            "the longest address text fits"
        );
        let string = |s: &str| AnyValue {
            value: Some(any_value::Value::StringValue(s.into())),
        };
        assert_eq!(
            value(first, "gen_ai.response.finish_reasons"),
            Some(any_value::Value::ArrayValue(ArrayValue {
                values: vec![string("stop"), string("")]
            }))
        );
        let failed = &req.resource_spans[1].scope_spans[0].spans[0];
        assert_eq!(failed.kind, span::SpanKind::Client as i32);
        assert!(failed.parent_span_id.is_empty());
        assert_eq!(failed.flags, FLAG_SAMPLED | FLAG_HAS_IS_REMOTE);
        assert_eq!(
            failed.status.as_ref().map(|s| s.code),
            Some(status::StatusCode::Error as i32)
        );
    }

    fn base() -> ResourceBase {
        ResourceBase {
            host_name: "node1".into(),
            extra: vec![("deployment.environment.name".into(), "prod".into())],
            command_line: false,
        }
    }

    fn resource_attr(r: &Resource, k: &str) -> Option<String> {
        r.attributes.iter().find(|a| a.key == k).map(|a| {
            match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                _ => String::new(),
            }
        })
    }

    #[test]
    fn genai_histograms_keep_their_names_units_and_token_type() {
        let genai = crate::telemetry::genai_metrics::GenAiMetrics::new(
            10,
            &mut prometheus_client::registry::Registry::default(),
        );
        let mut labels = vec![String::new(); 8];
        labels[0] = "gw".into();
        labels[5] = "input".into();
        labels[7] = "8000".into();
        genai.client_tokens.series(labels).observe(12.0, None);
        let req = metrics_request(
            MetricInputs {
                histograms: &genai.histograms(),
                counters: &[],
                gpu: &[],
            },
            &base(),
            Temporality::Cumulative,
            1_000,
            2_000,
            &mut DeltaState::default(),
        );
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 1, "only histograms with data");
        assert_eq!(metrics[0].name, "gen_ai.client.token.usage");
        assert_eq!(metrics[0].unit, "{token}");
        let Some(metric::Data::Histogram(h)) = &metrics[0].data else {
            panic!("a histogram")
        };
        let p = &h.data_points[0];
        assert_eq!((p.count, p.sum), (1, Some(12.0)));
        assert_eq!(p.explicit_bounds[..3], [1.0, 4.0, 16.0]);
        let attr = |k: &str| p.attributes.iter().find(|a| a.key == k).cloned();
        assert_eq!(
            attr("gen_ai.token.type")
                .and_then(|a| a.value)
                .and_then(|v| v.value),
            Some(any_value::Value::StringValue("input".into()))
        );
        assert_eq!(
            attr("server.port")
                .and_then(|a| a.value)
                .and_then(|v| v.value),
            Some(any_value::Value::IntValue(8000))
        );
        // Empty labels are absent attributes.
        assert!(attr("gen_ai.request.model").is_none());
    }

    #[test]
    fn histograms_are_grouped_by_service_and_deltas_subtract() {
        let fam = HistogramFamily::new(
            "db.client.operation.duration",
            "db_client_operation_duration",
            "s",
            "h",
            &DB_BUCKETS,
            &DB_LABELS,
            10,
        );
        let labels = |svc: &str| {
            vec![
                svc.into(),
                "redis".into(),
                "GET".into(),
                "0".into(),
                "".into(),
                "127.0.0.1".into(),
                "6379".into(),
            ]
        };
        let a = fam.series(labels("api"));
        fam.series(labels("worker")).observe(0.002, None);
        a.observe(0.002, Some((7, 8, 1_500)));
        a.observe(0.2, None);
        let mut delta = DeltaState::default();
        let req = metrics_request(
            MetricInputs {
                histograms: &[&fam],
                counters: &[],
                gpu: &[],
            },
            &base(),
            Temporality::Delta,
            1_000,
            2_000,
            &mut delta,
        );
        let api = req
            .resource_metrics
            .iter()
            .find(|r| {
                resource_attr(r.resource.as_ref().unwrap(), "service.name").as_deref()
                    == Some("api")
            })
            .unwrap();
        let res = api.resource.as_ref().unwrap();
        assert_eq!(resource_attr(res, "host.name").as_deref(), Some("node1"));
        assert_eq!(
            resource_attr(res, "deployment.environment.name").as_deref(),
            Some("prod")
        );
        let Some(metric::Data::Histogram(h)) = &api.scope_metrics[0].metrics[0].data else {
            panic!("a histogram")
        };
        let p = &h.data_points[0];
        assert_eq!(p.count, 2);
        assert_eq!(p.bucket_counts, [0, 1, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(p.exemplars.len(), 1);
        assert_eq!(p.exemplars[0].trace_id, 7u128.to_be_bytes());
        assert!(p
            .attributes
            .iter()
            .all(|a| a.key != "service.name" && a.key != "error.type"));
        assert!(p.attributes.iter().any(|a| a.key == "server.port"
            && a.value.as_ref().unwrap().value == Some(any_value::Value::IntValue(6379))));
        // The next delta holds only what came since.
        a.observe(0.002, None);
        let req = metrics_request(
            MetricInputs {
                histograms: &[&fam],
                counters: &[],
                gpu: &[],
            },
            &base(),
            Temporality::Delta,
            1_000,
            3_000,
            &mut delta,
        );
        let points: Vec<_> = req
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics[0].metrics)
            .filter_map(|m| match &m.data {
                Some(metric::Data::Histogram(h)) => Some(h.data_points.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(points.len(), 1, "worker had nothing new");
        assert_eq!(points[0].count, 1);
        assert_eq!(points[0].start_time_unix_nano, 2_000);
        assert!(points[0].exemplars.is_empty());
    }

    #[test]
    fn gpu_points_go_to_the_host_or_their_service_with_kinds_and_units() {
        use crate::gpu::names;
        let point =
            |metric, labels: Vec<(&'static str, &str)>, value, service: Option<&str>| GpuPoint {
                metric,
                labels: labels
                    .into_iter()
                    .map(|(k, v)| (k, v.to_string()))
                    .collect(),
                value,
                service: service.map(str::to_string),
            };
        let mut points = vec![
            point(&names::MEMORY_USAGE, vec![("hw.id", "GPU-1")], 4e10, None),
            point(&names::ENERGY, vec![("hw.id", "GPU-1")], 100.0, None),
            point(
                &names::PROCESS_MEMORY,
                vec![("process.pid", "4242"), ("hw.id", "GPU-1")],
                1e9,
                Some("vllm"),
            ),
        ];
        let mut delta = DeltaState::default();
        let mut export = |points: &[GpuPoint], now| {
            let inputs = MetricInputs {
                histograms: &[],
                counters: &[],
                gpu: points,
            };
            metrics_request(inputs, &base(), Temporality::Delta, 1_000, now, &mut delta)
        };
        export(&points, 2_000);
        points[1].value = 130.0;
        let req = export(&points, 3_000);
        let resource = |svc: &str| {
            req.resource_metrics
                .iter()
                .find(|r| {
                    resource_attr(r.resource.as_ref().unwrap(), "service.name").as_deref()
                        == Some(svc)
                })
                .unwrap()
        };
        let host = resource("sonde");
        assert_eq!(
            resource_attr(host.resource.as_ref().unwrap(), "host.name").as_deref(),
            Some("node1")
        );
        let metric = |r: &ResourceMetrics, name: &str| {
            r.scope_metrics[0]
                .metrics
                .iter()
                .find(|m| m.name == name)
                .unwrap()
                .clone()
        };
        let usage = metric(host, "hw.gpu.memory.usage");
        assert_eq!(usage.unit, "By");
        let Some(metric::Data::Gauge(g)) = usage.data else {
            panic!("{usage:?}")
        };
        assert_eq!(
            g.data_points[0].value,
            Some(number_data_point::Value::AsDouble(4e10))
        );
        let energy = metric(host, "hw.energy");
        assert_eq!(energy.unit, "J");
        let Some(metric::Data::Sum(sum)) = energy.data else {
            panic!("{energy:?}")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Delta as i32
        );
        // 130 J now, 100 J at the previous export.
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsDouble(30.0))
        );
        assert_eq!(sum.data_points[0].start_time_unix_nano, 2_000);
        let process = metric(resource("vllm"), "sonde.gpu.process.memory.usage");
        let Some(metric::Data::Gauge(g)) = process.data else {
            panic!()
        };
        let pid = g.data_points[0]
            .attributes
            .iter()
            .find(|a| a.key == "process.pid")
            .unwrap();
        assert_eq!(
            pid.value.as_ref().unwrap().value,
            Some(any_value::Value::IntValue(4242))
        );
    }
}
