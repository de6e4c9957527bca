//! LLM response bodies (`llm::ResponseReader`): one JSON document, an SSE stream or NDJSON,
//! read as they arrive. Input: `[mode] [cuts] payload` (see `sonde_fuzz`); mode bit 7 puts a
//! gap after the first piece.
//!
//! Invariants: every split gives the same call as the whole body (timestamps aside); kept
//! strings, finish reasons and chunk gaps stay within their bounds; content chunks never
//! outnumber the body's bytes; a gap marks the call truncated.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sonde::protocols::llm::call::MAX_CHUNK_GAPS;
use sonde::protocols::llm::json::MAX_STRING;
use sonde::protocols::llm::{LlmCall, ResponseReader};
use sonde_fuzz::{pieces, Input};

fn read(parts: &[&[u8]], gap_after_first: bool) -> LlmCall {
    let mut call = LlmCall::default();
    let mut r = ResponseReader::default();
    for (i, part) in parts.iter().enumerate() {
        r.feed(part, 100 + i as u64, &mut call);
        if i == 0 && gap_after_first {
            r.gap(&mut call);
        }
    }
    r.finish(&mut call);
    let strings = [&call.response_model, &call.response_id, &call.error_type];
    for s in strings.into_iter().flatten().chain(&call.finish_reasons) {
        assert!(s.chars().count() <= MAX_STRING, "{s:?}");
    }
    assert!(call.finish_reasons.len() <= 16);
    assert!(call.chunk_gaps_us.len() <= MAX_CHUNK_GAPS);
    let fed: usize = parts.iter().map(|p| p.len()).sum();
    assert!(call.chunks as usize <= fed);
    call
}

/// The call without what depends on when the pieces came.
fn timeless(mut call: LlmCall) -> String {
    call.first_chunk_ts = None;
    call.last_chunk_ts = None;
    call.chunk_gaps_us.clear();
    // Debug, not PartialEq: a NaN is equal to itself here.
    format!("{call:?}")
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.byte();
    let lens = input.cuts();
    let payload = input.rest();

    let whole = timeless(read(&[payload], false));
    let parts = pieces(payload, &lens);
    assert_eq!(timeless(read(&parts, false)), whole, "split at {lens:?}");
    if mode & 0x80 != 0 {
        assert!(read(&parts, true).truncated);
    }
});
