//! LLM request bodies (`llm::RequestReader`) and the API and provider names (`llm::api`).
//! Input: `[mode] [cuts] payload` (see `sonde_fuzz`); the payload's first line is also tried
//! as a path, a host and a header name; mode bit 7 puts a gap after the first piece.
//!
//! Invariants: every split gives the same call as the whole body; the model kept is bounded;
//! a gap marks the call truncated; a call's API is one for the method and path it came with.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sonde::protocols::llm::json::MAX_STRING;
use sonde::protocols::llm::{api_of, provider_of_header, provider_of_host, LlmCall, RequestReader};
use sonde_fuzz::{pieces, Input};

fn read(parts: &[&[u8]], gap_after_first: bool) -> LlmCall {
    let mut call = LlmCall::default();
    let mut r = RequestReader::default();
    for (i, part) in parts.iter().enumerate() {
        r.feed(part, &mut call);
        if i == 0 && gap_after_first {
            r.gap(&mut call);
        }
    }
    r.finish(&mut call);
    if let Some(model) = &call.request_model {
        assert!(model.chars().count() <= MAX_STRING, "{model:?}");
    }
    call
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.byte();
    let lens = input.cuts();
    let payload = input.rest();

    let line = payload.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    for method in ["GET", "POST"] {
        if let Some(api) = api_of(method, &line) {
            assert_eq!(method, "POST", "{api:?} for a GET");
            let _ = (api.operation(), api.default_provider());
        }
    }
    let _ = (provider_of_host(&line), provider_of_header(&line));

    // Debug, not PartialEq: a NaN temperature is equal to itself here.
    let whole = format!("{:?}", read(&[payload], false));
    let parts = pieces(payload, &lens);
    assert_eq!(
        format!("{:?}", read(&parts, false)),
        whole,
        "split at {lens:?}"
    );
    if mode & 0x80 != 0 {
        assert!(read(&parts, true).truncated);
    }
});
