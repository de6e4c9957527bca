//! What one LLM call carried.
use super::api::Api;

/// What one LLM call carried, as far as the wire showed it. A field the capture did not
/// reach is `None`: never guessed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LlmCall {
    pub api: Option<Api>,
    pub request_model: Option<String>,
    pub stream: Option<bool>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub choice_count: Option<u64>,
    pub response_id: Option<String>,
    pub response_model: Option<String>,
    pub finish_reasons: Vec<String>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cached_input_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
    /// `error.type` of an error object in the response.
    pub error_type: Option<String>,
    /// Monotonic ns of the first chunk that carried content (streams).
    pub first_chunk_ts: Option<u64>,
    /// Stream events that carried content.
    pub chunks: u32,
    /// The stream ended as the API ends one (`[DONE]`, `message_stop`, `"done": true`).
    pub stream_completed: bool,
    /// Body bytes were not captured somewhere, so fields may be missing.
    pub truncated: bool,
}

impl LlmCall {
    /// `gen_ai.request.model`, else the response's model.
    pub fn model(&self) -> Option<&str> {
        self.request_model
            .as_deref()
            .or(self.response_model.as_deref())
    }
}
