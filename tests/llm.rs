//! LLM calls over clear-text HTTP, with the official `openai`, `anthropic` and `ollama`
//! Python clients against a server that answers in each API's wire format
//! (`tests/llm/fake_llm.py`, stdlib only): JSON and streams, usage, errors 400/429/500, a
//! stream the server cuts, a 200 kB prompt with `model` after it. Both sides get GenAI
//! spans and metrics; token sums equal what the server sent; time to first chunk is within
//! 50 ms of what the client measured; the prompt, the completion and the API key appear
//! nowhere in sonde's spans, metrics, logs or summary table.
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sonde_tests::*;

/// Strings the clients and the server put in prompts, completions and credentials.
const SECRETS: [&str; 3] = ["PROMPT-MARKER", "COMPLETION-MARKER", "SECRET-KEY"];

fn attr_f64(span: &Value, key: &str) -> Option<f64> {
    span["attributes"][key].as_f64()
}

fn attr_i64(span: &Value, key: &str) -> Option<i64> {
    span["attributes"][key].as_i64()
}

/// Starts the fake LLM server as `service` and returns its port.
fn fake_llm(service: &str) -> u16 {
    fake_llm_with(service, &[])
}

/// The fake LLM server with extra arguments (a certificate and its key: HTTPS).
fn fake_llm_with(service: &str, args: &[String]) -> u16 {
    let port = free_port();
    let mut server = Command::new("python3");
    server
        .arg(workspace_root().join("tests/llm/fake_llm.py"))
        .arg(port.to_string())
        .args(args)
        .env("OTEL_SERVICE_NAME", service)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    std::mem::forget(spawn_owned(server));
    wait_port(port, "the wire-format LLM server");
    port
}

/// Runs one of the client scripts as `service`; returns what the client saw.
fn client(script: &str, base_url: &str, service: &str) -> Value {
    let out = run(Command::new("python3")
        .arg(workspace_root().join("tests/llm").join(script))
        .arg(base_url)
        .env("OTEL_SERVICE_NAME", service));
    serde_json::from_str(out.trim()).expect("client output")
}

/// The GenAI spans of one side (CLIENT or SERVER) of one service, waiting for `n`.
fn genai_spans(sonde: &Sonde, n: usize, kind: &str, service: &str) -> Vec<Value> {
    let (kind, service) = (kind.to_string(), service.to_string());
    let spans = sonde.wait_spans(n, |s| {
        s["kind"] == kind.as_str()
            && s["service.name"] == service.as_str()
            && attr(s, "gen_ai.operation.name").is_some()
    });
    assert_eq!(spans.len(), n, "{kind} {service}: {spans:#?}");
    spans
}

fn by_model<'a>(spans: &'a [Value], model: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| attr(s, "gen_ai.request.model").as_deref() == Some(model))
        .unwrap_or_else(|| panic!("no span for {model}: {spans:#?}"))
}

/// Time to first chunk on the span, against the client's own measure (the server waits
/// 150 ms before its first content chunk).
fn assert_ttft(span: &Value, client_ttft: f64) {
    let ttft = attr_f64(span, "sonde.gen_ai.time_to_first_chunk").expect("ttft");
    assert!(ttft >= 0.14, "time to first chunk {ttft}");
    assert!(
        (ttft - client_ttft).abs() < 0.05,
        "sonde {ttft} s, client {client_ttft} s"
    );
}

/// The span's tokens and finish reason are what the client saw (`reason`: the key of the
/// client's output that holds the finish reason).
fn assert_usage(span: &Value, saw: &Value, reason: &str) {
    let tokens = |key: &str| attr_i64(span, &format!("gen_ai.usage.{key}_tokens"));
    assert_eq!(tokens("input"), saw["input"].as_i64());
    assert_eq!(tokens("output"), saw["output"].as_i64());
    assert_eq!(
        span["attributes"]["gen_ai.response.finish_reasons"],
        serde_json::json!([saw[reason]])
    );
}

/// The OpenAI JSON chat call's response model, id and tokens are what the client saw
/// (`saw`: the client's "json" entry).
fn assert_json_call(span: &Value, saw: &Value) {
    assert_eq!(
        attr(span, "gen_ai.response.model").as_deref(),
        saw["model"].as_str()
    );
    assert_eq!(
        attr(span, "gen_ai.response.id").as_deref(),
        saw["id"].as_str()
    );
    let tokens = |key: &str| attr_i64(span, &format!("gen_ai.usage.{key}_tokens"));
    assert_eq!(tokens("input"), saw["input"].as_i64());
    assert_eq!(tokens("output"), saw["output"].as_i64());
}

/// The OpenAI stream with include_usage: complete, the chunks and time to first chunk the
/// client saw, and the usage chunk the server sent (10 + 2 messages in, 3 chunks out).
fn assert_usage_stream(span: &Value, saw: &Value) {
    assert_eq!(span["attributes"]["gen_ai.request.stream"], true);
    assert_eq!(span["attributes"]["sonde.gen_ai.stream.completed"], true);
    assert_eq!(
        attr_i64(span, "sonde.gen_ai.stream.chunks"),
        saw["chunks"].as_i64()
    );
    assert_eq!(attr_i64(span, "gen_ai.usage.input_tokens"), Some(12));
    assert_eq!(attr_i64(span, "gen_ai.usage.output_tokens"), Some(3));
    assert_ttft(span, saw["ttft"].as_f64().unwrap());
}

/// Neither prompts, nor completions, nor the API key leave sonde.
fn assert_no_secrets(sonde: &Sonde) {
    let everything =
        serde_json::to_string(&sonde.spans(|_| true)).unwrap() + &sonde.metrics().0 + &sonde.logs();
    for secret in SECRETS {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
}

#[test]
fn openai_sdk_calls_give_genai_spans_and_metrics_on_both_sides() {
    let sonde = Sonde::start();
    let port = fake_llm("oa-server");
    let seen = client(
        "openai_client.py",
        &format!("http://127.0.0.1:{port}/v1"),
        "oa-client",
    );
    // 7 chat calls and one embeddings call on each side; the server's span of the stream it
    // cut ends at its close.
    for (kind, service) in [("CLIENT", "oa-client"), ("SERVER", "oa-server")] {
        let spans = genai_spans(&sonde, 9, kind, service);
        let client = kind == "CLIENT";

        let json = by_model(&spans, "model-json");
        assert_eq!(json["name"], "chat model-json");
        assert_eq!(
            attr(json, "gen_ai.provider.name").as_deref(),
            Some("openai")
        );
        assert_json_call(json, &seen["json"]);
        assert_eq!(
            json["attributes"]["gen_ai.response.finish_reasons"],
            serde_json::json!(["stop"])
        );
        assert_eq!(json["attributes"]["gen_ai.request.max_tokens"], 50);
        assert_eq!(attr_f64(json, "gen_ai.request.temperature"), Some(0.5));
        assert_eq!(
            attr(json, "http.response.status_code").as_deref(),
            Some("200")
        );

        let streamed = by_model(&spans, "model-stream-usage");
        assert_usage_stream(streamed, &seen["stream-usage"]);

        // The SDK stops reading at [DONE] and closes: the stream is complete, not failed.
        assert_eq!(attr(streamed, "error.type"), None);
        // A stream without a usage chunk has no token counts: none are guessed.
        let bare = by_model(&spans, "model-stream-bare");
        assert_eq!(attr(bare, "error.type"), None);
        assert_eq!(bare["attributes"]["sonde.gen_ai.stream.completed"], true);
        assert!(attr(bare, "gen_ai.usage.output_tokens").is_none());
        assert!(attr(bare, "gen_ai.usage.input_tokens").is_none());

        // Errors: the API's error type for the caller; for the server only a 5xx is its own.
        for (model, status, api_type) in [
            ("error-model", 429, "rate_limit_exceeded"),
            ("error-400", 400, "invalid_request_error"),
            ("error-500", 500, "server_error"),
        ] {
            let span = by_model(&spans, model);
            assert_eq!(attr_i64(span, "http.response.status_code"), Some(status));
            let expected = match (client, status) {
                (true, _) => Some(api_type.to_string()),
                (false, 500) => Some(api_type.to_string()),
                (false, _) => None,
            };
            assert_eq!(attr(span, "error.type"), expected, "{kind} {model}");
        }
        assert_eq!(seen["error"], 429);
        assert_eq!(seen["error-400"]["status"], 400);
        assert_eq!(seen["error-500"]["status"], 500);

        // The stream the server cut after 2 chunks: not completed, on both sides.
        let cut = by_model(&spans, "cut-stream");
        assert_eq!(seen["cut-stream"]["failed"], true);
        assert_eq!(
            attr_i64(cut, "sonde.gen_ai.stream.chunks"),
            seen["cut-stream"]["chunks"].as_i64()
        );
        assert_eq!(cut["attributes"]["sonde.gen_ai.stream.completed"], false);
        assert_eq!(
            attr(cut, "error.type").as_deref(),
            Some("connection_closed")
        );

        // 200 kB of prompt before "model": the model still comes from the request body's
        // end, which the kernel copies with the head of a long write.
        let big = by_model(&spans, "model-big");
        assert!(seen["big"]["body_bytes"].as_i64().unwrap() > 200_000);
        assert_eq!(
            seen["big"]["keys"],
            serde_json::json!(["messages", "model"])
        );
        assert_eq!(big["name"], "chat model-big");
        assert_eq!(big["attributes"]["sonde.gen_ai.body_truncated"], true);
        assert_eq!(
            attr_i64(big, "http.request.body.size"),
            seen["big"]["body_bytes"].as_i64()
        );
        assert_eq!(
            attr_i64(big, "gen_ai.usage.input_tokens"),
            seen["big"]["input"].as_i64()
        );

        let embed = by_model(&spans, "embed-model");
        assert_eq!(embed["name"], "embeddings embed-model");
        assert_eq!(
            attr_i64(embed, "gen_ai.usage.input_tokens"),
            seen["embed"]["input"].as_i64()
        );
    }

    // Metrics: one operation per model and side; token sums equal what the server sent
    // (json 12, stream 12, big 11, embeddings 11 in; 3 out for each chat answer with usage).
    let m = sonde.metrics();
    let tokens_in: i64 = ["json", "big", "embed"]
        .iter()
        .map(|k| seen[*k]["input"].as_i64().unwrap())
        .sum::<i64>()
        + 12;
    for (duration, tokens, service) in [
        (
            "gen_ai_client_operation_duration_seconds_count",
            "gen_ai_client_token_usage_sum",
            "oa-client",
        ),
        (
            "gen_ai_server_request_duration_seconds_count",
            "sonde_gen_ai_server_token_usage_sum",
            "oa-server",
        ),
    ] {
        let svc = ("service_name", service);
        for model in [
            "model-json",
            "model-stream-usage",
            "error-400",
            "cut-stream",
        ] {
            let labels = [svc, ("gen_ai_request_model", model)];
            assert_eq!(m.sum(duration, &labels), 1.0, "{duration} {model}");
        }
        let op = [svc, ("gen_ai_operation_name", "embeddings")];
        assert_eq!(m.sum(duration, &op), 1.0, "{duration} embeddings");
        let input = [svc, ("gen_ai_token_type", "input")];
        assert_eq!(m.sum(tokens, &input), tokens_in as f64, "{tokens} input");
        let output = [svc, ("gen_ai_token_type", "output")];
        assert_eq!(m.sum(tokens, &output), 9.0, "{tokens} output");
        let provider = [svc, ("gen_ai_provider_name", "openai")];
        assert_eq!(m.sum(duration, &provider), 9.0, "{duration} provider");
    }
    let client_errors = [
        ("service_name", "oa-client"),
        ("error_type", "rate_limit_exceeded"),
    ];
    assert_eq!(
        m.sum(
            "gen_ai_client_operation_duration_seconds_count",
            &client_errors
        ),
        1.0
    );
    // Streams that completed: time to first chunk and, between their 3 chunks, 2 gaps each.
    let streams = [("service_name", "oa-client")];
    assert_eq!(
        m.sum(
            "gen_ai_client_operation_time_to_first_chunk_seconds_count",
            &streams
        ),
        2.0
    );
    assert_eq!(
        m.sum(
            "gen_ai_client_operation_time_per_output_chunk_seconds_count",
            &streams
        ),
        4.0
    );
    let server = [("service_name", "oa-server")];
    assert_eq!(
        m.sum("gen_ai_server_time_to_first_token_seconds_count", &server),
        2.0
    );
    // Only the stream with usage says how many tokens were generated: (3 - 1) gaps' worth.
    assert_eq!(
        m.sum("gen_ai_server_time_per_output_token_seconds_count", &server),
        1.0
    );
    // The one successful call whose wire carried no usage (the bare stream), seen on both
    // sides, is counted; every request's model was read, the 200 kB one's included. (The
    // other tests' calls, which this sonde sees too, all carry usage or fail.)
    let missing = |field| m.sum("sonde_gen_ai_missing_fields_total", &[("field", field)]);
    assert_eq!(missing("usage"), 2.0);
    assert_eq!(missing("request_model"), 0.0);
    assert_no_secrets(&sonde);
}

#[test]
fn anthropic_sdk_calls_give_genai_spans_on_both_sides() {
    anthropic_calls(false);
}

/// The same calls over HTTPS: the server is Python's `ssl` on OpenSSL, the SDK's httpx
/// too, and sonde reads the plaintext through its OpenSSL uprobes.
#[test]
fn anthropic_sdk_calls_over_https() {
    anthropic_calls(true);
}

fn anthropic_calls(https: bool) {
    let sonde = Sonde::start();
    let (server, client_service) = if https {
        ("ans-server", "ans-client")
    } else {
        ("an-server", "an-client")
    };
    let (port, scheme) = if https {
        let (cert, key) = self_signed_certificate(&tempdir("llm-https"));
        let args = [cert, key];
        (fake_llm_with(server, &args), "https")
    } else {
        (fake_llm(server), "http")
    };
    let seen = client(
        "anthropic_client.py",
        &format!("{scheme}://127.0.0.1:{port}"),
        client_service,
    );
    for (kind, service) in [("CLIENT", client_service), ("SERVER", server)] {
        let spans = genai_spans(&sonde, 6, kind, service);
        for s in &spans {
            assert_eq!(
                attr(s, "gen_ai.provider.name").as_deref(),
                Some("anthropic")
            );
            assert_eq!(attr(s, "url.scheme").as_deref(), Some(scheme));
        }
        for model in ["claude-json", "claude-stream"] {
            let span = by_model(&spans, model);
            let saw = &seen[model];
            assert_eq!(span["name"], format!("chat {model}"));
            assert_eq!(
                attr(span, "gen_ai.response.id"),
                saw["id"].as_str().map(String::from)
            );
            assert_eq!(
                attr(span, "gen_ai.response.model"),
                saw["response_model"].as_str().map(String::from)
            );
            assert_usage(span, saw, "stop_reason");
        }
        let stream = by_model(&spans, "claude-stream");
        assert_eq!(stream["attributes"]["sonde.gen_ai.stream.completed"], true);
        assert_eq!(
            attr_i64(stream, "sonde.gen_ai.stream.chunks"),
            seen["claude-stream"]["chunks"].as_i64()
        );
        assert_ttft(stream, seen["claude-stream"]["ttft"].as_f64().unwrap());

        for (model, api_type) in [
            ("error-400", "invalid_request_error"),
            ("error-429", "rate_limit_error"),
            ("error-500", "api_error"),
        ] {
            let span = by_model(&spans, model);
            assert_eq!(
                attr_i64(span, "http.response.status_code"),
                seen[model]["status"].as_i64()
            );
            let server_error = model == "error-500";
            let expected = (kind == "CLIENT" || server_error).then(|| api_type.to_string());
            assert_eq!(attr(span, "error.type"), expected, "{kind} {model}");
        }
        let cut = by_model(&spans, "cut-stream");
        assert_eq!(cut["attributes"]["sonde.gen_ai.stream.completed"], false);
        assert_eq!(
            attr_i64(cut, "sonde.gen_ai.stream.chunks"),
            seen["cut-stream"]["chunks"].as_i64()
        );
    }
    assert_no_secrets(&sonde);
}

/// AsyncOpenAI over HTTPS (httpx on asyncio: OpenSSL over memory BIOs, the way LLM
/// gateways call providers): the same GenAI spans on both sides as with the sync client.
#[test]
fn async_openai_calls_over_https() {
    let sonde = Sonde::start();
    let (cert, key) = self_signed_certificate(&tempdir("llm-async-https"));
    let port = fake_llm_with("aoa-server", &[cert, key]);
    let seen = client(
        "async_openai_client.py",
        &format!("https://127.0.0.1:{port}/v1"),
        "aoa-client",
    );
    for (kind, service) in [("CLIENT", "aoa-client"), ("SERVER", "aoa-server")] {
        let spans = genai_spans(&sonde, 2, kind, service);
        for s in &spans {
            assert_eq!(attr(s, "url.scheme").as_deref(), Some("https"), "{s}");
            assert_eq!(attr(s, "gen_ai.provider.name").as_deref(), Some("openai"));
            assert_eq!(attr(s, "error.type"), None, "{s}");
        }
        assert_json_call(by_model(&spans, "model-json"), &seen["json"]);
        assert_usage_stream(
            by_model(&spans, "model-stream-usage"),
            &seen["stream-usage"],
        );
    }
    assert_no_secrets(&sonde);
}

#[test]
fn ollama_client_calls_with_a_provider_rule_and_the_summary_table() {
    let port = fake_llm("ol-server");
    let rule = format!("port={port}:local-llm");
    let sonde = Sonde::start_with(&["--genai-provider", &rule]);
    // A second sonde as a user starts it first: the summary table on stdout.
    let mut summary_cmd = Command::new(sonde_bin());
    summary_cmd
        .args(["--summary-interval", "1", "--metrics-addr"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut summary = spawn_owned(summary_cmd);
    std::thread::sleep(Duration::from_secs(2));

    let seen = client(
        "ollama_client.py",
        &format!("http://127.0.0.1:{port}"),
        "ol-client",
    );
    for (kind, service) in [("CLIENT", "ol-client"), ("SERVER", "ol-server")] {
        let spans = genai_spans(&sonde, 8, kind, service);
        for s in &spans {
            // The rule names the server on this port, on both sides.
            assert_eq!(
                attr(s, "gen_ai.provider.name").as_deref(),
                Some("local-llm")
            );
        }
        for model in [
            "llama-chat",
            "llama-chat-stream",
            "llama-generate",
            "llama-generate-stream",
        ] {
            let span = by_model(&spans, model);
            let saw = &seen[model];
            let op = if model.contains("generate") {
                "text_completion"
            } else {
                "chat"
            };
            assert_eq!(span["name"], format!("{op} {model}"));
            assert_usage(span, saw, "done_reason");
            if model.ends_with("stream") {
                assert_eq!(span["attributes"]["sonde.gen_ai.stream.completed"], true);
                assert_eq!(
                    attr_i64(span, "sonde.gen_ai.stream.chunks"),
                    saw["chunks"].as_i64()
                );
                assert_ttft(span, saw["ttft"].as_f64().unwrap());
            }
        }
        for model in ["error-400", "error-429", "error-500"] {
            let span = by_model(&spans, model);
            assert_eq!(
                attr_i64(span, "http.response.status_code"),
                seen[model]["status"].as_i64()
            );
        }
        let cut = by_model(&spans, "cut-stream");
        assert_eq!(cut["attributes"]["sonde.gen_ai.stream.completed"], false);
        assert!(attr(cut, "gen_ai.usage.output_tokens").is_none());
    }

    // The summary table has an LLM row per service and model, and nothing of the prompts.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = Command::new("kill")
        .args(["-TERM", &summary.id().to_string()])
        .status();
    let mut table = String::new();
    summary
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut table)
        .unwrap();
    assert!(
        summary.wait().unwrap().success(),
        "sonde exits 0 on SIGTERM"
    );
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("ol-client ") && l.contains("llama-chat-stream"))
        .collect();
    assert!(!rows.is_empty(), "no LLM row in the summary:\n{table}");
    for secret in SECRETS {
        assert!(!table.contains(secret), "{secret} in the summary table");
    }
    assert_no_secrets(&sonde);
}
