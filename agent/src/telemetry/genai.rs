//! The OpenTelemetry GenAI names sonde uses, in one place. The GenAI semantic conventions
//! are still in development; these follow the released semconv 1.37 (where
//! `gen_ai.provider.name` replaced `gen_ai.system`). Names of our own carry `sonde.`.
use crate::protocols::llm::LlmCall;
use crate::telemetry::attr::AttrValue;

pub const OPERATION_NAME: &str = "gen_ai.operation.name";
pub const PROVIDER_NAME: &str = "gen_ai.provider.name";
pub const REQUEST_MODEL: &str = "gen_ai.request.model";
pub const REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
pub const REQUEST_TEMPERATURE: &str = "gen_ai.request.temperature";
pub const REQUEST_TOP_P: &str = "gen_ai.request.top_p";
pub const REQUEST_CHOICE_COUNT: &str = "gen_ai.request.choice.count";
pub const REQUEST_STREAM: &str = "gen_ai.request.stream";
pub const RESPONSE_ID: &str = "gen_ai.response.id";
pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
pub const RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
pub const USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
pub const USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
/// Input tokens read from the provider's prompt cache (`usage` details).
pub const USAGE_CACHED_INPUT_TOKENS: &str = "sonde.gen_ai.usage.cached_input_tokens";
pub const USAGE_REASONING_TOKENS: &str = "sonde.gen_ai.usage.reasoning_tokens";
/// Seconds from the start of the request to the first stream chunk that carried content.
pub const TIME_TO_FIRST_CHUNK: &str = "sonde.gen_ai.time_to_first_chunk";
/// Stream chunks that carried content.
pub const STREAM_CHUNKS: &str = "sonde.gen_ai.stream.chunks";
/// Whether the stream ended the way its API ends one (`[DONE]`, `message_stop`, `done`).
pub const STREAM_COMPLETED: &str = "sonde.gen_ai.stream.completed";
/// Some body bytes were not captured: fields after them may be missing.
pub const BODY_TRUNCATED: &str = "sonde.gen_ai.body_truncated";

/// The provider of a call: for now the API's own shape (OpenAI-compatible servers are
/// `openai`).
pub fn provider(call: &LlmCall) -> &'static str {
    call.api.map_or("openai", |api| api.default_provider())
}

/// `chat gpt-4o`: the operation and the model, as the conventions name GenAI spans.
pub fn span_name(call: &LlmCall) -> String {
    let op = call.api.map_or("chat", |api| api.operation());
    match call.model() {
        Some(model) => format!("{op} {model}"),
        None => op.to_string(),
    }
}

/// The span attributes of an LLM call; `start_ts` is the request's start (monotonic ns).
pub fn attributes(call: &LlmCall, start_ts: u64) -> Vec<(&'static str, AttrValue)> {
    let mut a = Vec::with_capacity(16);
    let s = |v: &str| AttrValue::Str(v.to_string());
    let int = |n: u64| AttrValue::Int(n.min(i64::MAX as u64) as i64);
    if let Some(api) = call.api {
        a.push((OPERATION_NAME, s(api.operation())));
    }
    a.push((PROVIDER_NAME, s(provider(call))));
    if let Some(m) = &call.request_model {
        a.push((REQUEST_MODEL, s(m)));
    }
    if let Some(n) = call.max_tokens {
        a.push((REQUEST_MAX_TOKENS, int(n)));
    }
    if let Some(t) = call.temperature {
        a.push((REQUEST_TEMPERATURE, AttrValue::Double(t)));
    }
    if let Some(p) = call.top_p {
        a.push((REQUEST_TOP_P, AttrValue::Double(p)));
    }
    if let Some(n) = call.choice_count {
        a.push((REQUEST_CHOICE_COUNT, int(n)));
    }
    if let Some(stream) = call.stream {
        a.push((REQUEST_STREAM, AttrValue::Bool(stream)));
    }
    if let Some(id) = &call.response_id {
        a.push((RESPONSE_ID, s(id)));
    }
    if let Some(m) = &call.response_model {
        a.push((RESPONSE_MODEL, s(m)));
    }
    if !call.finish_reasons.is_empty() {
        a.push((
            RESPONSE_FINISH_REASONS,
            AttrValue::StrArray(call.finish_reasons.clone()),
        ));
    }
    for (name, value) in [
        (USAGE_INPUT_TOKENS, call.input_tokens),
        (USAGE_OUTPUT_TOKENS, call.output_tokens),
        (USAGE_CACHED_INPUT_TOKENS, call.cached_input_tokens),
        (USAGE_REASONING_TOKENS, call.reasoning_tokens),
    ] {
        if let Some(n) = value {
            a.push((name, int(n)));
        }
    }
    if call.stream == Some(true) {
        if let Some(first) = call.first_chunk_ts {
            let secs = first.saturating_sub(start_ts) as f64 / 1e9;
            a.push((TIME_TO_FIRST_CHUNK, AttrValue::Double(secs)));
        }
        a.push((STREAM_CHUNKS, int(call.chunks.into())));
        a.push((STREAM_COMPLETED, AttrValue::Bool(call.stream_completed)));
    }
    if call.truncated {
        a.push((BODY_TRUNCATED, AttrValue::Bool(true)));
    }
    a
}
