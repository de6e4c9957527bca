//! PostgreSQL sessions (`PostgresSession`): startup, simple and extended queries, results,
//! as records in both directions with gaps and restarts (see `sonde_fuzz::records`).
//!
//! Invariants: pairing never yields more operations than the client's bytes could hold
//! requests (a Query, Execute or Sync type byte each); every query text is masked SQL (masking
//! it again changes nothing); kept names are bounded by the bytes kept of their messages.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sonde::protocols::postgres::sql::summarize;
use sonde::protocols::postgres::PostgresSession;
use sonde::protocols::DbSession;
use sonde_fuzz::{records, Record};

fuzz_target!(|data: &[u8]| {
    let mut s = PostgresSession::default();
    let mut done = Vec::new();
    let mut requests = 0;
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
                    requests += payload
                        .iter()
                        .filter(|b| matches!(b, b'Q' | b'E' | b'S'))
                        .count();
                }
            }
            Record::Restart => s.restart(),
            Record::Closed { .. } | Record::Failed => {}
        }
    }
    assert!(
        done.len() <= requests,
        "{} operations for {requests} requests",
        done.len()
    );
    for op in &done {
        if let Some(text) = &op.query_text {
            assert_eq!(&summarize(text).masked, text, "not masked: {op:?}");
        }
        // A startup packet keeps 1024 bytes; a Bind 256.
        assert!(op.namespace.chars().count() <= 1024, "{op:?}");
        if let Some(name) = &op.statement_name {
            assert!(name.chars().count() <= 256, "{op:?}");
        }
        if let Some(code) = &op.status_code {
            assert_eq!(code.len(), 5, "{op:?}");
        }
    }
});
