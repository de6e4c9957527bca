//! HTTP/1 framing (`HttpStream`), one direction. Input: `[mode] [cuts] payload` (see
//! `sonde_fuzz`); mode bit 0 picks responses, bits 1-3 the kinds of up to three awaited
//! requests (HEAD, CONNECT), bit 7 adds a gap after each piece.
//!
//! Invariants: body sizes never exceed the bytes fed (gaps included), tapped body bytes never
//! exceed those fed, no message ends that did not start, no query string is kept; and when the
//! whole payload frames without error, every split gives the same messages and bodies.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sonde::protocols::http1::framing::{
    Head, HttpEvent, HttpStream, ParseError, RequestKind, StreamKind, MAX_HEAD,
};
use sonde_fuzz::{pieces, Input};

struct Run {
    /// Heads, ends (with body sizes) and upgrades, without timestamps.
    messages: Vec<String>,
    body: Vec<u8>,
    errors: Vec<ParseError>,
}

fn run(mode: u8, parts: &[&[u8]], gaps: &[u64]) -> Run {
    let kind = if mode & 1 == 0 {
        StreamKind::Requests
    } else {
        StreamKind::Responses
    };
    let mut s = HttpStream::new(kind);
    if kind == StreamKind::Requests {
        s.tap_requests(|_| true);
    }
    for bit in 1..4 {
        let request = if mode & (1 << bit) != 0 {
            [RequestKind::Head, RequestKind::Connect][bit % 2]
        } else {
            RequestKind::Normal
        };
        s.expect_response_to(request);
        s.tap_last_response();
    }
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let ts = i as u64 + 1;
        errors.extend(s.feed(part, ts, &mut out));
        if let Some(&n) = gaps.get(i).filter(|n| **n > 0) {
            errors.extend(s.gap(n, ts, &mut out));
        }
    }
    s.close(parts.len() as u64 + 1, &mut out);

    let fed: u64 = parts.iter().map(|p| p.len() as u64).sum::<u64>() + gaps.iter().sum::<u64>();
    let (mut heads, mut ends, mut body_sizes, mut tapped, mut tapped_gaps) = (0, 0, 0u64, 0, 0);
    let mut messages = Vec::new();
    let mut body = Vec::new();
    for e in &out {
        match e {
            HttpEvent::Head { head, .. } => {
                heads += 1;
                if let Head::Request(r) = head {
                    assert!(!r.path.contains(['?', '#']), "query kept: {:?}", r.path);
                }
                messages.push(format!("{head:?}"));
            }
            HttpEvent::End { body_size, .. } => {
                ends += 1;
                body_sizes += body_size;
                messages.push(format!("end {body_size}"));
            }
            HttpEvent::Upgraded => messages.push("upgraded".into()),
            HttpEvent::Body { data, .. } => {
                tapped += data.len() as u64;
                body.extend_from_slice(data);
            }
            HttpEvent::BodyGap { n } => tapped_gaps += n,
        }
    }
    assert!(ends <= heads, "{ends} ends for {heads} heads: {out:?}");
    assert!(
        body_sizes <= fed,
        "body sizes {body_sizes} > {fed} bytes fed"
    );
    assert!(
        tapped + tapped_gaps <= fed,
        "tapped {tapped} + {tapped_gaps} > {fed}"
    );
    Run {
        messages,
        body,
        errors,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.byte();
    let lens = input.cuts();
    let payload = input.rest();

    let whole = run(mode, &[payload], &[]);
    let parts = pieces(payload, &lens);
    let split = run(mode, &parts, &[]);
    if whole.errors.is_empty() && payload.len() <= MAX_HEAD {
        assert_eq!(
            split.errors,
            [],
            "split gives errors the whole payload does not"
        );
        assert_eq!(split.messages, whole.messages, "split at {lens:?}");
        assert_eq!(split.body, whole.body, "tapped body, split at {lens:?}");
    }
    if mode & 0x80 != 0 {
        let gaps: Vec<u64> = lens.iter().map(|&n| n as u64 * 1000).collect();
        run(mode, &parts, &gaps);
    }
});
