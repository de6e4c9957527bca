//! HTTP/1 sessions (`HttpSession`): requests and responses of one connection, as records in
//! both directions with gaps, closes, failures and restarts (see `sonde_fuzz::records`).
//!
//! Invariants: pairing never yields more exchanges than the requests the client sent (counted
//! by a second framing of the client's bytes), body sizes never exceed the bytes fed in their
//! direction, no query string is kept, and LLM readings stay within their bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sonde::protocols::call::Role;
use sonde::protocols::http1::framing::{HttpEvent, HttpStream, StreamKind};
use sonde::protocols::http1::HttpSession;
use sonde::protocols::llm::call::MAX_CHUNK_GAPS;
use sonde::protocols::llm::json::MAX_STRING;
use sonde::protocols::{Chunk, Finished, Session};
use sonde_fuzz::{records, Record};

fuzz_target!(|data: &[u8]| {
    let mut s = HttpSession::default();
    let mut out = Finished::default();
    // The client's requests, framed on their own.
    let mut requests = HttpStream::new(StreamKind::Requests);
    let mut events = Vec::new();
    let (mut client_bytes, mut server_bytes) = (0u64, 0u64);
    for (i, record) in records(data).into_iter().enumerate() {
        let ts = i as u64 + 1;
        match record {
            Record::Data {
                from_client,
                payload,
                gap,
            } => {
                let chunk = Chunk {
                    from_client,
                    payload,
                    gap,
                    ts,
                    tid: 1,
                };
                s.feed(&chunk, &mut out);
                let bytes = payload.len() as u64 + gap;
                if from_client {
                    client_bytes += bytes;
                    if !payload.is_empty() {
                        requests.feed(payload, ts, &mut events);
                    }
                    if gap > 0 {
                        requests.gap(gap, ts, &mut events);
                    }
                } else {
                    server_bytes += bytes;
                }
            }
            Record::Closed { client } => {
                let role = if client { Role::Client } else { Role::Server };
                s.closed(ts, role, &mut out);
            }
            Record::Failed => {
                s.failed(ts, Role::Client, "ECONNRESET", &mut out);
                // The session stops reading what it was in the middle of and looks for the
                // next request line; so does the second framing.
                requests.abandon();
            }
            Record::Restart => {
                s.restart();
                requests = HttpStream::new(StreamKind::Requests);
            }
        }
    }
    let sent = events
        .iter()
        .filter(|e| matches!(e, HttpEvent::Head { .. }))
        .count();
    assert!(
        out.http.len() <= sent,
        "{} exchanges for {sent} requests",
        out.http.len()
    );
    for x in &out.http {
        assert!(!x.request.path.contains(['?', '#']), "{:?}", x.request.path);
        assert!(x.request_body_size <= client_bytes, "{x:?}");
        assert!(x.response_body_size <= server_bytes, "{x:?}");
        assert!(x.start_ts <= x.end_ts, "{x:?}");
        if let Some(status) = x.status {
            assert!(
                !(100..200).contains(&status),
                "interim status paired: {x:?}"
            );
        }
        if let Some(llm) = &x.llm {
            assert!(llm.chunk_gaps_us.len() <= MAX_CHUNK_GAPS);
            assert!(llm.finish_reasons.len() <= 16);
            let strings = [
                &llm.request_model,
                &llm.response_model,
                &llm.response_id,
                &llm.error_type,
            ];
            for s in strings.into_iter().flatten().chain(&llm.finish_reasons) {
                assert!(s.chars().count() <= MAX_STRING, "{s:?}");
            }
        }
    }
});
