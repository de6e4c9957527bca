//! The OpenTelemetry GenAI names sonde uses, in one place. The GenAI semantic conventions
//! are still in development; these follow the released semconv 1.37 (where
//! `gen_ai.provider.name` replaced `gen_ai.system`). Names of our own carry `sonde.`.
use std::fmt;
use std::str::FromStr;

use crate::identity::selector::{selector_rule, Selector};
use crate::protocols::call::{HttpCall, Role};
use crate::protocols::llm::{provider_of_host, LlmCall};
use crate::telemetry::attr::AttrValue;
use crate::telemetry::attr::{http_error_type, server_endpoint};

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
/// Metric attribute of the token histograms: `input` or `output`.
pub const TOKEN_TYPE: &str = "gen_ai.token.type";
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

/// `SELECTOR:PROVIDER` (`port=8000:vllm`, `exe=ollama:ollama`): LLM calls on connections
/// the selector matches are `gen_ai.provider.name=PROVIDER`. The port is the server's (the
/// peer port of a caller, the listening port of a model server); `exe` and `container`
/// match the process the span belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderRule {
    pub selector: Selector,
    pub provider: String,
}

impl FromStr for ProviderRule {
    type Err = String;

    fn from_str(s: &str) -> Result<ProviderRule, String> {
        let (selector, provider) = selector_rule(s, "provider", "port=8000:vllm")?;
        Ok(ProviderRule { selector, provider })
    }
}

impl fmt::Display for ProviderRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.selector, self.provider)
    }
}

/// `gen_ai.provider.name` of an LLM call, the first that applies: the known provider host
/// the request named (`api.openai.com`), a provider's own response header
/// (`openai-version`), the first configured rule that matches, else the API's shape
/// (`openai` for the OpenAI-compatible one).
pub fn provider(call: &HttpCall, llm: &LlmCall, rules: &[ProviderRule]) -> String {
    let host = call
        .request
        .host
        .as_deref()
        .map(|h| server_endpoint(Some(h), None, false).0);
    if let Some(p) = host.flatten().as_deref().and_then(provider_of_host) {
        return p.to_string();
    }
    if let Some(p) = llm.header_provider {
        return p.to_string();
    }
    let port = match call.role {
        Role::Client => call.peer.map(|a| a.port()),
        Role::Server => call.local.map(|a| a.port()),
    };
    if let Some(rule) = rules
        .iter()
        .find(|r| r.selector.matches(&call.process, port))
    {
        return rule.provider.clone();
    }
    llm.api
        .map_or("openai", |api| api.default_provider())
        .to_string()
}

/// `error.type` of an LLM call: the API's error type (`rate_limit_exceeded`) where the
/// HTTP call failed and the body named one, else the HTTP error type.
pub fn error_type(call: &HttpCall) -> Option<String> {
    let http = http_error_type(call)?;
    let api = call.llm.as_ref().and_then(|l| l.error_type.clone());
    Some(api.unwrap_or(http))
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
    if let Some(p) = &call.provider {
        a.push((PROVIDER_NAME, s(p)));
    }
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
