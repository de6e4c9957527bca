//! `protocols` (here from a configuration file): a protocol left out is not captured at
//! all, while the others are, exactly.
use std::process::Command;

use sonde_tests::*;

#[test]
fn a_protocol_left_out_gives_no_spans_and_the_others_still_do() {
    let redis = Redis::start("protocols-redis");
    let pg = Postgres::start("protocols-postgres", &[]);
    let dir = tempdir("protocols-config");
    let config = dir.join("sonde.yaml");
    std::fs::write(&config, "protocols: [http, postgresql]\n").unwrap();
    let config = config.display().to_string();
    let sonde = Sonde::start_with(&["--config", &config]);

    let port = redis.port.to_string();
    for i in 0..3 {
        let key = format!("protocols:{i}");
        let out = run(Command::new("redis-cli").args(["-p", &port, "SET", &key, "v"]));
        assert_eq!(out.trim(), "OK");
    }
    for i in 0..3 {
        assert_eq!(
            pg.psql("postgres", &format!("SELECT {i}")).trim(),
            i.to_string()
        );
    }

    let is =
        |s: &serde_json::Value, system: &str| attr(s, "db.system.name").as_deref() == Some(system);
    let client = sonde.wait_spans(3, |s| is(s, "postgresql") && kind(s) == "CLIENT");
    let server = sonde.wait_spans(3, |s| is(s, "postgresql") && kind(s) == "SERVER");
    assert_eq!(client.len(), 3, "{client:?}");
    assert_eq!(server.len(), 3, "{server:?}");
    let redis_spans = sonde.spans(|s| is(s, "redis"));
    assert!(redis_spans.is_empty(), "{redis_spans:?}");
    let m = sonde.metrics();
    let redis_ops = m.sum(
        "db_client_operation_duration_seconds_count",
        &[("db_system_name", "redis")],
    ) + m.sum(
        "db_server_operation_duration_seconds_count",
        &[("db_system_name", "redis")],
    );
    assert_eq!(redis_ops, 0.0);
}
