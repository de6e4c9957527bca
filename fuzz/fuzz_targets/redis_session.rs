//! Redis sessions (`RedisSession`): commands and replies of one connection, as records in
//! both directions with gaps and restarts (see `sonde_fuzz::records`).
//!
//! Invariants: pairing never yields more operations than commands sent (counted by a second
//! framing of the client's bytes that resynchronises as the session's does); credentials
//! keep no argument; no more than one argument (the key, at most `MAX_ELEMENT` bytes) is ever
//! shown unmasked; the namespace is a database index.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sonde::protocols::redis::framing::{RespStream, MAX_ELEMENT};
use sonde::protocols::redis::RedisSession;
use sonde::protocols::DbSession;
use sonde_fuzz::{records, Record};

fuzz_target!(|data: &[u8]| {
    let mut s = RedisSession::default();
    let mut done = Vec::new();
    let mut commands = RespStream::new();
    let mut frames = Vec::new();
    for (i, record) in records(data).into_iter().enumerate() {
        let ts = i as u64 + 1;
        match record {
            Record::Data {
                from_client,
                payload,
                gap,
            } => {
                s.feed(from_client, payload, gap, ts, 1, &mut done);
                if from_client {
                    commands.resync(payload.first().copied());
                    if commands.feed(payload, ts, &mut frames).is_ok() && gap > 0 {
                        let _ = commands.gap(gap, &mut frames);
                    }
                }
            }
            Record::Restart => {
                s.restart();
                commands = RespStream::new();
            }
            Record::Closed { .. } | Record::Failed => {}
        }
    }
    let sent = frames.iter().filter(|f| !f.kept.is_empty()).count();
    assert!(
        done.len() <= sent,
        "{} operations for {sent} commands",
        done.len()
    );
    for op in &done {
        let text = op.query_text.as_deref().expect("a query text");
        assert!(text.starts_with(&*op.operation), "{op:?}");
        let name = op.operation.split(' ').next().unwrap_or("");
        if ["AUTH", "HELLO", "MIGRATE"].contains(&name) {
            assert_eq!(text, &*op.operation, "credentials shown");
        }
        // What follows the operation: a key, then `?` for each other argument.
        let mut args = &text[op.operation.len()..];
        args = args.strip_suffix(" ...").unwrap_or(args);
        while let Some(rest) = args.strip_suffix(" ?") {
            args = rest;
        }
        assert!(
            args.chars().count() <= 1 + MAX_ELEMENT,
            "unmasked: {text:?}"
        );
        assert!(op.namespace.parse::<u32>().is_ok(), "{op:?}");
    }
});
