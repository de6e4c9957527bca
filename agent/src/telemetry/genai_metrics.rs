//! The GenAI histograms of the semantic conventions, on the caller's side and the model
//! server's, and the count of LLM calls whose wire did not carry a field (the model, the
//! token usage): such fields are absent, never estimated.
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::protocols::call::{HttpCall, Role};
use crate::protocols::llm::LlmCall;
use crate::telemetry::attr::server_endpoint;
use crate::telemetry::genai;
use crate::telemetry::red::{HistogramFamily, Series};

/// `gen_ai.client.operation.duration`, `gen_ai.server.request.duration` and
/// `gen_ai.client.operation.time_to_first_chunk` buckets (seconds).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// `gen_ai.client.token.usage` buckets (tokens).
pub const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
/// `gen_ai.server.time_to_first_token` buckets (seconds).
pub const TIME_TO_FIRST_TOKEN_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// `gen_ai.server.time_per_output_token` and `gen_ai.client.operation.time_per_output_chunk`
/// buckets (seconds).
pub const TIME_PER_TOKEN_BUCKETS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];

/// Labels of the duration histograms.
pub const DURATION_LABELS: [&str; 8] = [
    "service.name",
    genai::OPERATION_NAME,
    genai::PROVIDER_NAME,
    genai::REQUEST_MODEL,
    genai::RESPONSE_MODEL,
    "error.type",
    "server.address",
    "server.port",
];
/// Labels of the token histograms.
pub const TOKEN_LABELS: [&str; 8] = [
    "service.name",
    genai::OPERATION_NAME,
    genai::PROVIDER_NAME,
    genai::REQUEST_MODEL,
    genai::RESPONSE_MODEL,
    genai::TOKEN_TYPE,
    "server.address",
    "server.port",
];
/// Labels of the stream timing histograms (successful streams only).
pub const STREAM_LABELS: [&str; 7] = [
    "service.name",
    genai::OPERATION_NAME,
    genai::PROVIDER_NAME,
    genai::REQUEST_MODEL,
    genai::RESPONSE_MODEL,
    "server.address",
    "server.port",
];

/// Fields an LLM call may lack on the wire, as counted in `sonde_gen_ai_missing_fields`.
pub const MISSING_FIELDS: [&str; 2] = ["request_model", "usage"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FieldLabels {
    pub field: String,
}

pub struct GenAiMetrics {
    pub client_duration: HistogramFamily,
    pub client_tokens: HistogramFamily,
    pub client_time_to_first_chunk: HistogramFamily,
    pub client_time_per_output_chunk: HistogramFamily,
    pub server_duration: HistogramFamily,
    pub server_tokens: HistogramFamily,
    pub server_time_to_first_token: HistogramFamily,
    pub server_time_per_output_token: HistogramFamily,
    /// LLM calls that lacked a field, by field.
    pub missing_fields: Family<FieldLabels, Counter>,
}

impl GenAiMetrics {
    pub fn new(max: usize, registry: &mut Registry) -> GenAiMetrics {
        let h = HistogramFamily::new;
        let missing_fields = Family::<FieldLabels, Counter>::default();
        registry.register(
            "sonde_gen_ai_missing_fields",
            "LLM calls whose wire did not carry a field, by field: request_model (the request body was not captured as far as the model), usage (a successful response without token counts); such fields are absent, never estimated",
            missing_fields.clone(),
        );
        for field in MISSING_FIELDS {
            drop(missing_fields.get_or_create(&FieldLabels {
                field: field.into(),
            }));
        }
        GenAiMetrics {
            client_duration: h(
                "gen_ai.client.operation.duration",
                "gen_ai_client_operation_duration",
                "s",
                "Duration of LLM calls seen by their callers (gen_ai.client.operation.duration)",
                &DURATION_BUCKETS,
                &DURATION_LABELS,
                max,
            ),
            client_tokens: h(
                "gen_ai.client.token.usage",
                "gen_ai_client_token_usage",
                "{token}",
                "Input and output tokens of LLM calls, as the responses reported them (gen_ai.client.token.usage)",
                &TOKEN_BUCKETS,
                &TOKEN_LABELS,
                max,
            ),
            client_time_to_first_chunk: h(
                "gen_ai.client.operation.time_to_first_chunk",
                "gen_ai_client_operation_time_to_first_chunk",
                "s",
                "Time from a streamed LLM call's request to its first content chunk (gen_ai.client.operation.time_to_first_chunk)",
                &DURATION_BUCKETS,
                &STREAM_LABELS,
                max,
            ),
            client_time_per_output_chunk: h(
                "gen_ai.client.operation.time_per_output_chunk",
                "gen_ai_client_operation_time_per_output_chunk",
                "s",
                "Time between consecutive content chunks of streamed LLM calls (gen_ai.client.operation.time_per_output_chunk)",
                &TIME_PER_TOKEN_BUCKETS,
                &STREAM_LABELS,
                max,
            ),
            server_duration: h(
                "gen_ai.server.request.duration",
                "gen_ai_server_request_duration",
                "s",
                "Duration of LLM requests seen by the model server (gen_ai.server.request.duration)",
                &DURATION_BUCKETS,
                &DURATION_LABELS,
                max,
            ),
            server_tokens: h(
                "sonde.gen_ai.server.token.usage",
                "sonde_gen_ai_server_token_usage",
                "{token}",
                "Input and output tokens the model server reported in its responses",
                &TOKEN_BUCKETS,
                &TOKEN_LABELS,
                max,
            ),
            server_time_to_first_token: h(
                "gen_ai.server.time_to_first_token",
                "gen_ai_server_time_to_first_token",
                "s",
                "Time from a streamed request to the model server's first content chunk (gen_ai.server.time_to_first_token)",
                &TIME_TO_FIRST_TOKEN_BUCKETS,
                &STREAM_LABELS,
                max,
            ),
            server_time_per_output_token: h(
                "gen_ai.server.time_per_output_token",
                "gen_ai_server_time_per_output_token",
                "s",
                "Time per output token after the first, of successful streams that reported their output tokens (gen_ai.server.time_per_output_token)",
                &TIME_PER_TOKEN_BUCKETS,
                &STREAM_LABELS,
                max,
            ),
            missing_fields,
        }
    }

    /// Every GenAI histogram, in exposition order.
    pub fn histograms(&self) -> [&HistogramFamily; 8] {
        [
            &self.client_duration,
            &self.client_tokens,
            &self.client_time_to_first_chunk,
            &self.client_time_per_output_chunk,
            &self.server_duration,
            &self.server_tokens,
            &self.server_time_to_first_token,
            &self.server_time_per_output_token,
        ]
    }

    /// Records one LLM call (its provider already resolved). Returns the series it
    /// observed, for the caller's overflow accounting.
    pub fn observe(
        &self,
        call: &HttpCall,
        llm: &LlmCall,
        exemplar: Option<(u128, u64, u64)>,
    ) -> Vec<Arc<Series>> {
        let mut touched = Vec::new();
        let (client, server) = (call.role == Role::Client, call.role == Role::Server);
        let fam = |client_family, server_family| if client { client_family } else { server_family };
        let base = Base::of(call, llm);
        let seconds = call.end_ts.saturating_sub(call.start_ts) as f64 / 1e9;
        // A caller's 4xx and 5xx, a server's 5xx, as the API typed them where it did.
        let error_type = genai::error_type(call);
        let duration = fam(&self.client_duration, &self.server_duration)
            .series(base.labels(Some(error_type.clone().unwrap_or_default())));
        duration.observe(seconds, exemplar);
        touched.push(duration);

        let tokens = fam(&self.client_tokens, &self.server_tokens);
        for (kind, n) in [("input", llm.input_tokens), ("output", llm.output_tokens)] {
            if let Some(n) = n {
                let series = tokens.series(base.labels_with_token(kind));
                series.observe(n as f64, exemplar);
                touched.push(series);
            }
        }

        let succeeded = error_type.is_none();
        let ok_stream = llm.stream == Some(true) && succeeded;
        if let (true, Some(first)) = (ok_stream, llm.first_chunk_ts) {
            let ttft = first.saturating_sub(call.start_ts) as f64 / 1e9;
            let series = fam(
                &self.client_time_to_first_chunk,
                &self.server_time_to_first_token,
            )
            .series(base.labels(None));
            series.observe(ttft, exemplar);
            touched.push(series);
            if client && !llm.chunk_gaps_us.is_empty() {
                let series = self.client_time_per_output_chunk.series(base.labels(None));
                for gap in &llm.chunk_gaps_us {
                    series.observe(*gap as f64 / 1e6, None);
                }
                touched.push(series);
            }
            let generated = (llm.output_tokens, llm.last_chunk_ts);
            if let (true, Some(tokens), Some(last)) = (server, generated.0, generated.1) {
                if tokens > 1 && llm.stream_completed {
                    let per_token = last.saturating_sub(first) as f64 / 1e9 / (tokens - 1) as f64;
                    let series = self.server_time_per_output_token.series(base.labels(None));
                    series.observe(per_token, exemplar);
                    touched.push(series);
                }
            }
        }

        if llm.request_model.is_none() {
            self.missing("request_model");
        }
        let answered = call.status.is_some_and(|s| (200..300).contains(&s));
        if answered && succeeded && llm.input_tokens.is_none() && llm.output_tokens.is_none() {
            self.missing("usage");
        }
        touched
    }

    fn missing(&self, field: &str) {
        self.missing_fields
            .get_or_create(&FieldLabels {
                field: field.into(),
            })
            .inc();
    }
}

/// The label values every GenAI histogram shares.
struct Base {
    service: String,
    operation: String,
    provider: String,
    request_model: String,
    response_model: String,
    address: String,
    port: String,
}

impl Base {
    fn of(call: &HttpCall, llm: &LlmCall) -> Base {
        let (address, port) = match call.role {
            Role::Client => server_endpoint(call.request.host.as_deref(), call.peer, call.tls),
            Role::Server => (
                call.local.map(|a| a.ip().to_string()),
                call.local.map(|a| a.port()),
            ),
        };
        Base {
            service: call.process.service_name.clone(),
            operation: llm.api.map(|a| a.operation()).unwrap_or_default().into(),
            provider: llm.provider.clone().unwrap_or_default(),
            request_model: llm.request_model.clone().unwrap_or_default(),
            response_model: llm.response_model.clone().unwrap_or_default(),
            address: address.unwrap_or_default(),
            port: port.map(|p| p.to_string()).unwrap_or_default(),
        }
    }

    fn head(&self) -> Vec<String> {
        vec![
            self.service.clone(),
            self.operation.clone(),
            self.provider.clone(),
            self.request_model.clone(),
            self.response_model.clone(),
        ]
    }

    /// Duration labels with `error`, stream labels without.
    fn labels(&self, error: Option<String>) -> Vec<String> {
        let mut v = self.head();
        v.extend(error);
        v.push(self.address.clone());
        v.push(self.port.clone());
        v
    }

    fn labels_with_token(&self, kind: &str) -> Vec<String> {
        self.labels(Some(kind.to_string()))
    }
}
