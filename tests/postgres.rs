//! PostgreSQL end to end: a real PostgreSQL server (initdb'd into a temporary directory, run
//! as the postgres user) driven by pgbench and psql, watched by one sonde (started once for
//! this file). Each test works in its own database and counts only the spans whose
//! `db.namespace` is that database.
use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::Value;
use sonde_tests::*;

struct Env {
    sonde: Sonde,
    pg: Postgres,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let pg = Postgres::start("postgres", &[]);
        let sonde = Sonde::start();
        Env { sonde, pg }
    })
}

fn is_db(s: &Value, db: &str) -> bool {
    attr(s, "db.system.name").as_deref() == Some("postgresql")
        && attr(s, "db.namespace").as_deref() == Some(db)
}

/// Spans of `db` seen by `service` on the given side, counted by span name, once at least
/// `n` of them arrived.
fn names(env: &Env, db: &str, side: &str, service: &str, n: usize) -> BTreeMap<String, usize> {
    let spans = env.sonde.wait_spans(n, |s| {
        is_db(s, db) && kind(s) == side && s["service.name"] == service
    });
    let mut counts = BTreeMap::new();
    for s in spans {
        *counts
            .entry(s["name"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    counts
}

/// What pgbench's built-in tpcb-like script runs `t` times, plus the two queries pgbench
/// runs once on its set-up connection before a built-in script.
fn tpcb(t: usize) -> BTreeMap<String, usize> {
    let mut m: BTreeMap<String, usize> = [
        "BEGIN",
        "UPDATE pgbench_accounts",
        "SELECT pgbench_accounts",
        "UPDATE pgbench_tellers",
        "UPDATE pgbench_branches",
        "INSERT pgbench_history",
        "COMMIT",
    ]
    .iter()
    .map(|n| (n.to_string(), t))
    .collect();
    m.insert("SELECT pgbench_branches".into(), 1);
    m.insert("SELECT".into(), 1);
    m
}

fn db_count(m: &Metrics, side: &str, service: &str, db: &str, operation: &str) -> f64 {
    m.sum(
        &format!("db_{side}_operation_duration_seconds_count"),
        &[
            ("service_name", service),
            ("db_system_name", "postgresql"),
            ("db_namespace", db),
            ("db_operation_name", operation),
        ],
    )
}

/// `pgbench -M mode`: every statement of every transaction is one CLIENT span in pgbench
/// and one SERVER span in the postgres backend, and one observation in each histogram.
fn pgbench_counts(mode: &str, update_text: &str) {
    let env = env();
    let db = format!("bench_{mode}");
    env.pg.pgbench_db(&db);
    let (clients, per_client) = (2, 50);
    let t = clients * per_client;
    run(env.pg.client("pgbench").args([
        "-n",
        "-M",
        mode,
        "-c",
        &clients.to_string(),
        "-t",
        &per_client.to_string(),
        &db,
    ]));
    let expected = tpcb(t);
    let total: usize = expected.values().sum();
    assert_eq!(
        names(env, &db, "CLIENT", "pgbench", total),
        expected,
        "client, -M {mode}"
    );
    assert_eq!(
        names(env, &db, "SERVER", "postgres", total),
        expected,
        "server, -M {mode}"
    );

    let updates = env
        .sonde
        .spans(|s| is_db(s, &db) && s["name"] == "UPDATE pgbench_accounts" && kind(s) == "CLIENT");
    for s in &updates {
        let text = attr(s, "db.query.text").unwrap().replace("-?", "?");
        assert_eq!(text, update_text, "-M {mode}");
        assert_eq!(attr(s, "db.response.returned_rows").as_deref(), Some("1"));
        assert_eq!(attr(s, "db.operation.name").as_deref(), Some("UPDATE"));
        assert_eq!(attr(s, "server.port"), Some(env.pg.port.to_string()), "{s}");
        assert_eq!(attr(s, "error.type"), None);
    }

    let m = env.sonde.metrics();
    for (side, service) in [("client", "pgbench"), ("server", "postgres")] {
        assert_eq!(
            db_count(&m, side, service, &db, "UPDATE"),
            (3 * t) as f64,
            "{side}"
        );
        assert_eq!(
            db_count(&m, side, service, &db, "COMMIT"),
            t as f64,
            "{side}"
        );
    }
}

#[test]
fn pgbench_simple_protocol_gives_exact_counts() {
    pgbench_counts(
        "simple",
        "UPDATE pgbench_accounts SET abalance = abalance + ? WHERE aid = ?;",
    );
}

#[test]
fn pgbench_extended_protocol_gives_exact_counts() {
    pgbench_counts(
        "extended",
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
    );
}

#[test]
fn pgbench_prepared_statements_give_exact_counts() {
    pgbench_counts(
        "prepared",
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
    );
}

/// Three statements sent in one pipeline before one Sync: results pair in order, which the
/// row counts show (5, 3 and 1 rows).
#[test]
fn pgbench_pipeline_mode_pairs_in_order() {
    let env = env();
    let db = "bench_pipeline";
    env.pg.pgbench_db(db);
    let script = tempdir("pipeline").join("pipeline.sql");
    std::fs::write(
        &script,
        "\\set aid random(1, 100000)\n\\startpipeline\n\
         SELECT aid FROM pgbench_accounts WHERE aid <= 5;\n\
         UPDATE pgbench_tellers SET tbalance = tbalance WHERE tid <= 3;\n\
         SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n\
         \\endpipeline\n",
    )
    .unwrap();
    let t = 30;
    run(env
        .pg
        .client("pgbench")
        .args(["-n", "-M", "extended", "-t", &t.to_string(), "-f"])
        .arg(&script)
        .arg(db));
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    expected.insert("SELECT pgbench_accounts".into(), 2 * t);
    expected.insert("UPDATE pgbench_tellers".into(), t);
    for (side, service) in [("CLIENT", "pgbench"), ("SERVER", "postgres")] {
        assert_eq!(names(env, db, side, service, 3 * t), expected, "{side}");
        let spans = env
            .sonde
            .spans(|s| is_db(s, db) && kind(s) == side && s["service.name"] == service);
        let mut rows_by_text: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for s in &spans {
            let text = attr(s, "db.query.text").unwrap_or_default();
            if !text.contains("pgbench_accounts WHERE") && !text.contains("pgbench_tellers") {
                continue;
            }
            let rows = attr(s, "db.response.returned_rows").unwrap_or_default();
            *rows_by_text
                .entry(text)
                .or_default()
                .entry(rows)
                .or_insert(0) += 1;
        }
        let one = |rows: &str| BTreeMap::from([(rows.to_string(), t)]);
        assert_eq!(
            rows_by_text,
            BTreeMap::from([
                (
                    "SELECT aid FROM pgbench_accounts WHERE aid <= ?;".to_string(),
                    one("5")
                ),
                (
                    "UPDATE pgbench_tellers SET tbalance = tbalance WHERE tid <= ?;".to_string(),
                    one("3")
                ),
                (
                    "SELECT abalance FROM pgbench_accounts WHERE aid = $1;".to_string(),
                    one("1")
                ),
            ]),
            "{side}"
        );
    }
}

#[test]
fn psql_errors_masking_batches_and_copy() {
    let env = env();
    let db = "shop";
    env.pg.psql("postgres", &format!("CREATE DATABASE {db}"));
    env.pg
        .psql(db, "CREATE TABLE items (id int PRIMARY KEY, secret text)");
    env.pg.psql(
        db,
        "INSERT INTO items VALUES (1, 'hunter2'), (2, 'swordfish')",
    );
    env.pg.psql(db, "SELECT secret FROM items WHERE id = 2");
    // Two statements in one Query message: one span for the batch.
    env.pg.psql(
        db,
        "UPDATE items SET secret = 'opensesame' WHERE id = 1; DELETE FROM items WHERE id = 2",
    );
    let csv = tempdir("copy").join("items.csv");
    std::fs::write(&csv, "10,alpha\n11,beta\n12,gamma\n").unwrap();
    env.pg
        .psql(db, &format!("\\copy items FROM '{}' csv", csv.display()));
    let failed = env
        .pg
        .client("psql")
        .args(["-X", "-q", "-d", db, "-c", "SELECT * FROM no_such_table"])
        .output()
        .unwrap();
    assert!(!failed.status.success());

    let client = names(env, db, "CLIENT", "psql", 6);
    let expected: BTreeMap<String, usize> = [
        ("CREATE TABLE", 1),
        ("INSERT items", 1),
        ("SELECT items", 1),
        ("BATCH", 1),
        ("COPY items", 1),
        ("SELECT no_such_table", 1),
    ]
    .iter()
    .map(|(n, c)| (n.to_string(), *c))
    .collect();
    // psql asks the server for nothing else when run with -c (no \d, no tab completion).
    assert_eq!(client, expected);
    assert_eq!(names(env, db, "SERVER", "postgres", 6), expected);

    let one = |name: &str| {
        let spans = env
            .sonde
            .spans(|s| is_db(s, db) && kind(s) == "CLIENT" && s["name"] == name);
        assert_eq!(spans.len(), 1, "{name}");
        spans[0].clone()
    };
    let select = one("SELECT items");
    assert_eq!(
        attr(&select, "db.query.text").as_deref(),
        Some("SELECT secret FROM items WHERE id = ?")
    );
    assert_eq!(
        attr(&select, "db.collection.name").as_deref(),
        Some("items")
    );
    assert_eq!(
        attr(&select, "db.response.returned_rows").as_deref(),
        Some("1")
    );
    let insert = one("INSERT items");
    assert_eq!(
        attr(&insert, "db.query.text").as_deref(),
        Some("INSERT INTO items VALUES (?, ?), (?, ?)")
    );
    assert_eq!(
        attr(&insert, "db.response.returned_rows").as_deref(),
        Some("2")
    );
    let batch = one("BATCH");
    assert_eq!(
        attr(&batch, "db.operation.batch.size").as_deref(),
        Some("2")
    );
    assert_eq!(attr(&batch, "db.operation.name").as_deref(), Some("BATCH"));
    let copy = one("COPY items");
    assert_eq!(
        attr(&copy, "db.response.returned_rows").as_deref(),
        Some("3")
    );
    let error = one("SELECT no_such_table");
    assert_eq!(attr(&error, "error.type").as_deref(), Some("42P01"));
    assert_eq!(
        attr(&error, "db.response.status_code").as_deref(),
        Some("42P01")
    );

    let m = env.sonde.metrics();
    let errors = m.sum(
        "db_client_operation_duration_seconds_count",
        &[
            ("db_namespace", db),
            ("error_type", "42P01"),
            ("service_name", "psql"),
        ],
    );
    assert_eq!(errors, 1.0);

    let everything = format!("{:?}", env.sonde.spans(|s| is_db(s, db)));
    for secret in ["hunter2", "swordfish", "opensesame", "alpha", "gamma"] {
        assert!(!everything.contains(secret), "{secret} leaked into a span");
    }
}

/// Each `psql -c` is a new backend, forked by the postmaster, that meets its socket only
/// through recv and closes it within milliseconds: often before sonde looks it up in /proc.
/// Its queries still give SERVER spans, every one of them.
#[test]
fn short_lived_backends_give_every_server_span() {
    let env = env();
    let db = "short";
    env.pg.psql("postgres", &format!("CREATE DATABASE {db}"));
    let runs = 25;
    for i in 0..runs {
        assert_eq!(
            env.pg.psql(db, &format!("SELECT {i}")).trim(),
            i.to_string()
        );
    }
    let expected = BTreeMap::from([("SELECT".to_string(), runs)]);
    assert_eq!(names(env, db, "CLIENT", "psql", runs), expected);
    assert_eq!(names(env, db, "SERVER", "postgres", runs), expected);
}

/// A server with SSL on and a client that requires it: after the server's `S` nothing can
/// be read; the connection is counted on both sides and gives no span.
/// PostgreSQL with SSL (`sslmode=require`) through OpenSSL: after the SSLRequest is
/// answered `S`, the plaintext comes from the TLS uprobes and gives the same spans as in
/// clear text, on both sides: psql's query, and every statement of pgbench's (prepared)
/// transactions exactly; nothing is counted as unreadable.
#[test]
fn ssl_connections_are_read_through_openssl() {
    // Not while the other SSL test's sonde, which counts every switch it sees, looks on.
    let _serial = serial();
    let env = env();
    let pg = postgres_with_ssl("postgres-tls");
    let before = env.sonde.metrics();
    assert_eq!(ssl_query(&pg), "over tls");
    let port = pg.port.to_string();
    let on_port = |s: &Value| {
        attr(s, "db.system.name").as_deref() == Some("postgresql")
            && attr(s, "server.port").as_deref() == Some(port.as_str())
            && attr(s, "db.operation.name").as_deref() == Some("SELECT")
    };
    let spans = env.sonde.wait_spans(2, on_port);
    let mut sides: Vec<(String, String)> = spans
        .iter()
        .map(|s| {
            (
                kind(s).to_string(),
                s["service.name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    sides.sort();
    assert_eq!(
        sides,
        [
            ("CLIENT".to_string(), "psql".to_string()),
            ("SERVER".to_string(), "postgres".to_string())
        ],
        "{spans:#?}"
    );
    // pgbench over SSL, two clients, extended protocol: exact statement counts.
    let db = "bench_ssl";
    pg.pgbench_db(db);
    let (clients, per_client) = (2, 20);
    run(pg
        .client("pgbench")
        .env("PGSSLMODE", "require")
        .args(["-n", "-M", "prepared", "-c", &clients.to_string()])
        .args(["-t", &per_client.to_string(), db]));
    let expected = tpcb(clients * per_client);
    let total: usize = expected.values().sum();
    assert_eq!(
        names(env, db, "CLIENT", "pgbench", total),
        expected,
        "client"
    );
    assert_eq!(
        names(env, db, "SERVER", "postgres", total),
        expected,
        "server"
    );
    // Past the grace the counter waits for plaintext (2 s): still nothing unreadable.
    std::thread::sleep(std::time::Duration::from_millis(3000));
    assert_eq!(encrypted(&env.sonde.metrics()) - encrypted(&before), 0.0);
}

/// With TLS reading off (or a TLS library sonde does not probe) the switch to encryption
/// is counted, on both sides, and the connection is left alone.
#[test]
fn encrypted_connections_without_plaintext_are_counted_not_parsed() {
    let _serial = serial();
    let _ = env();
    let sonde = Sonde::start_with(&["--tls", "false"]);
    let pg = postgres_with_ssl("postgres-tls-off");
    assert_eq!(ssl_query(&pg), "over tls");
    let start = std::time::Instant::now();
    while encrypted(&sonde.metrics()) < 2.0 && start.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(encrypted(&sonde.metrics()), 2.0, "client and server side");
    let port = pg.port.to_string();
    let spans = sonde.spans(|s| {
        attr(s, "db.system.name").as_deref() == Some("postgresql")
            && attr(s, "server.port").as_deref() == Some(port.as_str())
    });
    assert!(spans.is_empty(), "{spans:?}");
}

fn encrypted(m: &Metrics) -> f64 {
    m.sum(
        "sonde_encrypted_connections_total",
        &[("protocol", "postgresql")],
    )
}

/// PostgreSQL with `ssl=on` and a certificate made for it.
fn postgres_with_ssl(name: &str) -> Postgres {
    let (crt, key) = self_signed_certificate(&tempdir(&format!("{name}-cert")));
    // The server reads its key as the postgres user and wants it private to that user.
    chown_to_postgres(std::path::Path::new(&key));
    chown_to_postgres(std::path::Path::new(&crt));
    Postgres::start(
        name,
        &[
            "ssl=on",
            &format!("ssl_cert_file={crt}"),
            &format!("ssl_key_file={key}"),
        ],
    )
}

/// One query over `sslmode=require`; returns its output.
fn ssl_query(pg: &Postgres) -> String {
    let out = run(pg.client("psql").env("PGSSLMODE", "require").args([
        "-X",
        "-A",
        "-t",
        "-d",
        "postgres",
        "-c",
        "SELECT 'over tls'",
    ]));
    out.trim().to_string()
}
