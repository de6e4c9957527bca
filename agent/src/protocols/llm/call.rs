//! What one LLM call carried.
use super::api::Api;

/// What one LLM call carried, as far as the wire showed it. A field the capture did not
/// reach is `None`: never guessed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LlmCall {
    pub api: Option<Api>,
    /// The provider a response header named (`openai-version`: `openai`).
    pub header_provider: Option<&'static str>,
    /// `gen_ai.provider.name` as telemetry resolved it (known host, header, configured
    /// rule, else the API's shape); set by the sink.
    pub provider: Option<String>,
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
    /// Monotonic ns of the last chunk that carried content (streams).
    pub last_chunk_ts: Option<u64>,
    /// Microseconds between consecutive content chunks, the first `MAX_CHUNK_GAPS` of them
    /// (`gen_ai.client.operation.time_per_output_chunk`).
    pub chunk_gaps_us: Vec<u32>,
    /// Stream events that carried content.
    pub chunks: u32,
    /// The stream ended as the API ends one (`[DONE]`, `message_stop`, `"done": true`).
    pub stream_completed: bool,
    /// Body bytes were not captured somewhere, so fields may be missing.
    pub truncated: bool,
}

/// Chunk gaps kept per call (16 KiB); later chunks still count in `chunks`.
pub const MAX_CHUNK_GAPS: usize = 4096;

impl LlmCall {
    /// A chunk that carried content arrived at `ts`.
    pub fn content_chunk(&mut self, ts: u64) {
        self.chunks += 1;
        self.first_chunk_ts.get_or_insert(ts);
        if let Some(last) = self.last_chunk_ts {
            if self.chunk_gaps_us.len() < MAX_CHUNK_GAPS {
                let us = ts.saturating_sub(last) / 1000;
                self.chunk_gaps_us.push(us.min(u32::MAX as u64) as u32);
            }
        }
        self.last_chunk_ts = Some(ts);
    }

    /// `gen_ai.request.model`, else the response's model.
    pub fn model(&self) -> Option<&str> {
        self.request_model
            .as_deref()
            .or(self.response_model.as_deref())
    }
}
