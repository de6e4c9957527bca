//! Reading LLM request and response bodies as they arrive: the request's parameters, and
//! the response's id, model, finish reasons, token usage and errors, from one JSON
//! document, an SSE stream (`data:` lines, `[DONE]`), or NDJSON (Ollama). Work and memory
//! are bounded per call; content strings are only tested for being non-empty.
use super::call::LlmCall;
use super::json::{path_is, JsonScanner, Level, Scalar};
use super::tail::TailBuffer;

/// Longest SSE line kept; a longer one is skipped (its event is lost and `truncated` set).
const MAX_LINE: usize = 64 * 1024;

/// Reads a request body's parameters into an `LlmCall`.
#[derive(Debug, Default)]
pub struct RequestReader {
    scanner: JsonScanner,
    /// Bytes were lost: the rest of the body cannot be scanned from its start, only its
    /// end (`tail`) read back when it ends.
    lost: bool,
    tail: TailBuffer,
}

fn request_wants(l: &[Level]) -> bool {
    path_is(l, &["model"])
}

impl RequestReader {
    pub fn feed(&mut self, data: &[u8], call: &mut LlmCall) {
        if self.lost {
            self.tail.push(data);
            return;
        }
        self.scanner
            .feed(data, &request_wants, &mut |levels, value| {
                request_field(levels, value, call)
            });
    }

    pub fn gap(&mut self, call: &mut LlmCall) {
        self.lost = true;
        self.tail.gap();
        call.truncated = true;
    }

    /// The body ended: after a gap, the members its end shows (the model after a long
    /// prompt).
    pub fn finish(&mut self, call: &mut LlmCall) {
        if self.lost {
            self.tail.members(&request_wants, &mut |levels, value| {
                request_field(levels, value, call)
            });
            self.tail = TailBuffer::default();
        }
    }
}

fn request_field(levels: &[Level], value: Scalar, call: &mut LlmCall) {
    let at = |p: &[&str]| path_is(levels, p);
    match value {
        Scalar::Str(s) if at(&["model"]) => call.request_model = Some(s),
        Scalar::Bool(b) if at(&["stream"]) => call.stream = Some(b),
        Scalar::Num(n) => {
            if at(&["max_tokens"])
                || at(&["max_completion_tokens"])
                || at(&["max_output_tokens"])
                || at(&["options", "num_predict"])
            {
                call.max_tokens = whole(n);
            } else if at(&["temperature"]) || at(&["options", "temperature"]) {
                call.temperature = Some(n);
            } else if at(&["top_p"]) || at(&["options", "top_p"]) {
                call.top_p = Some(n);
            } else if at(&["n"]) {
                call.choice_count = whole(n);
            }
        }
        _ => {}
    }
}

fn whole(n: f64) -> Option<u64> {
    (n >= 0.0 && n.fract() == 0.0 && n < 1e15).then_some(n as u64)
}

#[derive(Debug, Default, PartialEq, Eq)]
enum Format {
    /// Nothing but whitespace yet.
    #[default]
    Unknown,
    /// JSON documents, one after another (one for a plain response, one per line for NDJSON).
    Documents,
    /// Server-sent events.
    Sse,
}

/// Reads a response body into an `LlmCall`.
#[derive(Debug, Default)]
pub struct ResponseReader {
    format: Format,
    scanner: JsonScanner,
    /// The current document carried content (a non-empty text delta).
    content: bool,
    line: Vec<u8>,
    /// The current SSE line is longer than `MAX_LINE`: skipped to its end.
    skipping_line: bool,
    /// A JSON body stopped being JSON: nothing more of it is read, its end included (where
    /// it broke inside a piece is unknown, so reading on would depend on the pieces).
    broken: bool,
    /// A document ended before the end of its line: the rest of the line is not a document
    /// (NDJSON has one per line), however the body was split.
    rest_of_line: bool,
    lost: bool,
    /// The end of a JSON body after a gap (`usage` after a long completion).
    tail: TailBuffer,
}

impl ResponseReader {
    pub fn feed(&mut self, data: &[u8], ts: u64, call: &mut LlmCall) {
        if self.broken {
            return;
        }
        if self.lost {
            if self.format == Format::Documents {
                self.tail.push(data);
            }
            return;
        }
        let mut data = data;
        if self.format == Format::Unknown {
            let start = data.iter().position(|b| !b.is_ascii_whitespace());
            let Some(start) = start else {
                return;
            };
            data = &data[start..];
            self.format = if matches!(data[0], b'{' | b'[') {
                Format::Documents
            } else {
                Format::Sse
            };
        }
        match self.format {
            Format::Documents => self.feed_documents(data, ts, call),
            Format::Sse => self.feed_sse(data, ts, call),
            Format::Unknown => {}
        }
    }

    /// Body bytes were not captured: what was in them is unknown, and the stream cannot be
    /// followed after them.
    pub fn gap(&mut self, call: &mut LlmCall) {
        self.lost = true;
        self.tail.gap();
        call.truncated = true;
    }

    /// The body ended: after a gap in a JSON body, the members its end shows.
    pub fn finish(&mut self, call: &mut LlmCall) {
        if self.lost && self.format == Format::Documents {
            let mut content = false;
            self.tail.members(&wants_response, &mut |levels, value| {
                response_field(levels, value, call, &mut content)
            });
            self.tail = TailBuffer::default();
        }
    }

    fn feed_documents(&mut self, mut data: &[u8], ts: u64, call: &mut LlmCall) {
        while !data.is_empty() {
            if self.rest_of_line {
                match document_end(data) {
                    Some(end) => data = &data[end..],
                    None => return,
                }
                self.rest_of_line = false;
                continue;
            }
            if self.scanner.is_done() {
                // The next document (NDJSON) starts after whitespace.
                match data.iter().position(|b| !b.is_ascii_whitespace()) {
                    Some(start) => data = &data[start..],
                    None => return,
                }
                self.scanner = JsonScanner::default();
                self.content = false;
            }
            // Feed up to the end of the current document, so that a document ending mid-way
            // through `data` is closed before the next one starts.
            let end = document_end(data).unwrap_or(data.len());
            let (mut scanner, mut content) = (std::mem::take(&mut self.scanner), self.content);
            scanner.feed(&data[..end], &wants_response, &mut |levels, value| {
                response_field(levels, value, call, &mut content)
            });
            self.scanner = scanner;
            self.content = content;
            let line_ended = data[..end].ends_with(b"\n");
            data = &data[end..];
            if self.scanner.is_done() {
                // What followed the document on its line was passed over with it when the
                // line came whole; the same when it comes in a later piece.
                self.rest_of_line = !line_ended;
                self.end_event(ts, call);
            } else if self.scanner.is_broken() {
                self.broken = true;
                return;
            }
        }
    }

    fn feed_sse(&mut self, data: &[u8], ts: u64, call: &mut LlmCall) {
        for piece in data.split_inclusive(|b| *b == b'\n') {
            let complete = piece.ends_with(b"\n");
            if !self.skipping_line {
                if self.line.len() + piece.len() > MAX_LINE {
                    self.skipping_line = true;
                    self.line.clear();
                    call.truncated = true;
                } else {
                    self.line.extend_from_slice(piece);
                }
            }
            if complete {
                if !self.skipping_line {
                    let line = std::mem::take(&mut self.line);
                    self.sse_line(&line, ts, call);
                    self.line = line;
                    self.line.clear();
                }
                self.skipping_line = false;
            }
        }
    }

    fn sse_line(&mut self, line: &[u8], ts: u64, call: &mut LlmCall) {
        let line = line.trim_ascii_end();
        let Some(payload) = line.strip_prefix(b"data:") else {
            return; // `event:`, `id:`, comments and blank lines carry no fields we read
        };
        let payload = payload.trim_ascii();
        if payload == b"[DONE]" {
            call.stream_completed = true;
            return;
        }
        let mut scanner = JsonScanner::default();
        let mut content = false;
        scanner.feed(payload, &wants_response, &mut |levels, value| {
            response_field(levels, value, call, &mut content)
        });
        self.content = content;
        self.end_event(ts, call);
    }

    /// One event (an SSE `data:` line, an NDJSON line, a whole JSON body) ended.
    fn end_event(&mut self, ts: u64, call: &mut LlmCall) {
        if self.content {
            call.content_chunk(ts);
        }
        self.content = false;
    }
}

/// Where the top-level JSON document starting at `data[0]` ends, if it ends in `data`: the
/// newline after it (NDJSON puts one document on each line). A plain JSON body has no such
/// newline before its end, and is scanned whole.
fn document_end(data: &[u8]) -> Option<usize> {
    data.iter().position(|b| *b == b'\n').map(|i| i + 1)
}

/// The string fields a response carries that telemetry keeps (ids, models, reasons,
/// error types) or tests for content.
fn wants_response(l: &[Level]) -> bool {
    const KEPT: [&[&str]; 16] = [
        &["id"],
        &["model"],
        &["type"],
        &["choices", "[]", "finish_reason"],
        &["stop_reason"],
        &["done_reason"],
        &["delta", "stop_reason"],
        &["message", "id"],
        &["message", "model"],
        &["response", "id"],
        &["response", "model"],
        &["error", "type"],
        &["error", "code"],
        &["choices", "[]", "delta", "content"],
        &["choices", "[]", "text"],
        &["delta", "text"],
    ];
    const CONTENT: [&[&str]; 3] = [&["message", "content"], &["response"], &["delta"]];
    KEPT.iter().chain(CONTENT.iter()).any(|p| path_is(l, p))
}

fn response_field(levels: &[Level], value: Scalar, call: &mut LlmCall, content: &mut bool) {
    let at = |p: &[&str]| path_is(levels, p);
    match value {
        Scalar::Str(s) => {
            if at(&["choices", "[]", "delta", "content"])
                || at(&["choices", "[]", "text"])
                || at(&["delta", "text"])
                || at(&["message", "content"])
                || at(&["response"])
                || at(&["delta"])
            {
                // Content: only whether there was some.
                *content |= !s.is_empty();
            } else if at(&["id"]) || at(&["message", "id"]) || at(&["response", "id"]) {
                call.response_id = Some(s);
            } else if at(&["model"]) || at(&["message", "model"]) || at(&["response", "model"]) {
                call.response_model = Some(s);
            } else if at(&["choices", "[]", "finish_reason"])
                || at(&["stop_reason"])
                || at(&["delta", "stop_reason"])
                || at(&["done_reason"])
            {
                if call.finish_reasons.len() < 16 {
                    call.finish_reasons.push(s);
                }
            } else if at(&["error", "type"]) {
                call.error_type = Some(s);
            } else if at(&["error", "code"]) {
                call.error_type.get_or_insert(s);
            } else if at(&["type"]) && (s == "message_stop" || s == "response.completed") {
                call.stream_completed = true;
            }
        }
        Scalar::Num(n) => {
            let Some(n) = whole(n) else {
                return;
            };
            let usage = |p: &[&str]| {
                at(&[&["usage"], p].concat())
                    || at(&[&["message", "usage"], p].concat())
                    || at(&[&["response", "usage"], p].concat())
            };
            if usage(&["prompt_tokens"]) || usage(&["input_tokens"]) || at(&["prompt_eval_count"]) {
                call.input_tokens = Some(n);
            } else if usage(&["completion_tokens"])
                || usage(&["output_tokens"])
                || at(&["eval_count"])
            {
                call.output_tokens = Some(n);
            } else if usage(&["prompt_tokens_details", "cached_tokens"])
                || usage(&["input_tokens_details", "cached_tokens"])
                || usage(&["cache_read_input_tokens"])
            {
                call.cached_input_tokens = Some(n);
            } else if usage(&["completion_tokens_details", "reasoning_tokens"])
                || usage(&["output_tokens_details", "reasoning_tokens"])
            {
                call.reasoning_tokens = Some(n);
            }
        }
        Scalar::Bool(true) if at(&["done"]) => call.stream_completed = true,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_response(pieces: &[&[u8]]) -> LlmCall {
        let mut call = LlmCall::default();
        let mut r = ResponseReader::default();
        for (i, p) in pieces.iter().enumerate() {
            r.feed(p, 100 + i as u64, &mut call);
        }
        call
    }

    /// The same call whatever the splits (timestamps aside, which follow the pieces).
    fn assert_every_split(body: &[u8]) -> LlmCall {
        let whole = read_response(&[body]);
        for cut in 1..body.len() {
            let mut split = read_response(&[&body[..cut], &body[cut..]]);
            split.first_chunk_ts = whole.first_chunk_ts;
            split.last_chunk_ts = whole.last_chunk_ts;
            split.chunk_gaps_us.clone_from(&whole.chunk_gaps_us);
            assert_eq!(split, whole, "cut at {cut}");
        }
        whole
    }

    const OPENAI_JSON: &[u8] = br#"{
  "id": "chatcmpl-123",
  "object": "chat.completion",
  "model": "gpt-4o-mini-2024-07-18",
  "choices": [{"index": 0, "message": {"role": "assistant", "content": "SECRET answer"},
               "finish_reason": "stop"}],
  "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2}}
}"#;

    #[test]
    fn openai_json_response() {
        let call = assert_every_split(OPENAI_JSON);
        assert_eq!(call.response_id.as_deref(), Some("chatcmpl-123"));
        assert_eq!(
            call.response_model.as_deref(),
            Some("gpt-4o-mini-2024-07-18")
        );
        assert_eq!(call.finish_reasons, ["stop"]);
        assert_eq!(
            (call.input_tokens, call.output_tokens),
            (Some(19), Some(10))
        );
        assert_eq!(
            (call.cached_input_tokens, call.reasoning_tokens),
            (Some(4), Some(2))
        );
        assert!(!format!("{call:?}").contains("SECRET"));
    }

    const OPENAI_SSE: &[u8] = b"data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"SECRET\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" more\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n\
data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn openai_stream_counts_content_chunks_and_reads_the_usage_chunk() {
        let call = assert_every_split(OPENAI_SSE);
        assert_eq!(
            call.chunks, 2,
            "the role-only first chunk carries no content"
        );
        assert_eq!(call.finish_reasons, ["length"]);
        assert_eq!((call.input_tokens, call.output_tokens), (Some(7), Some(2)));
        assert!(call.stream_completed);
        // Each SSE line in its own piece: the first content chunk is the second piece.
        let lines: Vec<&[u8]> = OPENAI_SSE.split_inclusive(|b| *b == b'\n').collect();
        assert_eq!(read_response(&lines).first_chunk_ts, Some(102));
        // Cut short: no [DONE], no usage.
        let cut = read_response(&[&OPENAI_SSE[..300]]);
        assert!(!cut.stream_completed);
        assert_eq!(cut.output_tokens, None);
    }

    #[test]
    fn anthropic_stream_and_error() {
        let body = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let call = assert_every_split(body);
        assert_eq!(call.response_id.as_deref(), Some("msg_1"));
        assert_eq!(call.response_model.as_deref(), Some("claude-x"));
        assert_eq!(
            (call.input_tokens, call.output_tokens),
            (Some(25), Some(15))
        );
        assert_eq!(call.finish_reasons, ["end_turn"]);
        assert_eq!(call.chunks, 1);
        assert!(call.stream_completed);
        let error = br#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#;
        assert_eq!(
            assert_every_split(error).error_type.as_deref(),
            Some("overloaded_error")
        );
    }

    #[test]
    fn ollama_ndjson_stream() {
        let body = b"{\"model\":\"llama3\",\"message\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"done\":false}\n\
{\"model\":\"llama3\",\"message\":{\"role\":\"assistant\",\"content\":\"lo\"},\"done\":false}\n\
{\"model\":\"llama3\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":26,\"eval_count\":290}\n";
        let call = assert_every_split(body);
        assert_eq!(call.chunks, 2);
        assert_eq!(call.finish_reasons, ["stop"]);
        assert_eq!(
            (call.input_tokens, call.output_tokens),
            (Some(26), Some(290))
        );
        assert!(call.stream_completed);
    }

    #[test]
    fn request_parameters_and_a_gap_before_the_model() {
        let body = br#"{"messages":[{"role":"user","content":"SECRET"}],"model":"gpt-4o","stream":true,"max_completion_tokens":64,"temperature":0.2,"top_p":0.9,"n":2}"#;
        let mut call = LlmCall::default();
        let mut r = RequestReader::default();
        r.feed(body, &mut call);
        assert_eq!(call.request_model.as_deref(), Some("gpt-4o"));
        assert_eq!(call.stream, Some(true));
        assert_eq!(call.max_tokens, Some(64));
        assert_eq!((call.temperature, call.top_p), (Some(0.2), Some(0.9)));
        assert_eq!(call.choice_count, Some(2));
        assert!(!format!("{call:?}").contains("SECRET"));

        // The model sits after a prompt the capture did not copy whole: absent, and said so.
        let mut call = LlmCall::default();
        let mut r = RequestReader::default();
        r.feed(&body[..30], &mut call);
        r.gap(&mut call);
        r.feed(&body[60..], &mut call);
        assert_eq!(call.request_model, None);
        assert!(call.truncated);
    }

    /// The call `body` gives read whole, checked to be the same cut in two anywhere.
    fn read_every_split(body: &[u8]) -> LlmCall {
        let read = |pieces: &[&[u8]]| {
            let mut r = ResponseReader::default();
            let mut call = LlmCall::default();
            for p in pieces {
                r.feed(p, 100, &mut call);
            }
            r.finish(&mut call);
            call
        };
        let whole = read(&[body]);
        for cut in 1..body.len() {
            assert_eq!(read(&[&body[..cut], &body[cut..]]), whole, "cut at {cut}");
        }
        whole
    }

    /// Found by the `llm_response` fuzz target: after a body broke, the pieces that came
    /// later went to the tail buffer and their members were read at the end, while the rest
    /// of the piece it broke in was dropped: the call depended on how the body was split.
    #[test]
    fn a_broken_body_reads_the_same_whatever_the_splits() {
        let body = br#"{"id":"x", "choices": [\0], "usage": {"prompt_tokens": 19}}"#;
        let whole = read_every_split(body);
        assert_eq!(whole.response_id.as_deref(), Some("x"));
        assert_eq!(whole.input_tokens, None);
    }

    /// Found by the `llm_response` fuzz target: bytes after a document's end on its line
    /// were passed over when the line came whole, but read as the next document (and
    /// broke the body) when they came in a later piece.
    #[test]
    fn the_rest_of_a_line_after_a_document_is_passed_over_whatever_the_splits() {
        let body =
            b"{\"id\":\"x\",\"a\":\"b\"},\"done\":false}\n{\"model\":\"llama3\",\"done\":true}\n";
        let whole = read_every_split(body);
        assert_eq!(whole.response_id.as_deref(), Some("x"));
        assert_eq!(whole.response_model.as_deref(), Some("llama3"));
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u32 = 7;
        for _ in 0..500 {
            let bytes: Vec<u8> = (0..200)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    const ALPHABET: &[u8] = b"data: {}[],:\"\\\n 0123tfn-[DONE]";
                    ALPHABET[(x >> 16) as usize % ALPHABET.len()]
                })
                .collect();
            read_response(&[&bytes]);
            let mut call = LlmCall::default();
            RequestReader::default().feed(&bytes, &mut call);
        }
    }
}
