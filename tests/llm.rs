//! LLM calls over clear-text HTTP: the official `openai` Python SDK against an
//! OpenAI-compatible server (`tests/llm/fake_openai.py`, stdlib only) that answers in the
//! API's wire format, as JSON and as SSE streams. Both sides get GenAI attributes; token
//! counts equal what the server sent; the prompt, the completion and the API key appear
//! nowhere in sonde's output.
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sonde_tests::*;

fn attr_f64(span: &Value, key: &str) -> Option<f64> {
    span["attributes"][key].as_f64()
}

#[test]
fn openai_sdk_calls_give_genai_spans_on_both_sides() {
    let sonde = Sonde::start();
    let port = free_port();
    let script = workspace_root().join("tests/llm/fake_openai.py");
    let mut server = Command::new("python3");
    server
        .arg(&script)
        .arg(port.to_string())
        .env("OTEL_SERVICE_NAME", "fake-llm")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    std::mem::forget(spawn_owned(server));
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "fake server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = run(Command::new("python3")
        .arg(workspace_root().join("tests/llm/openai_client.py"))
        .arg(format!("http://127.0.0.1:{port}/v1"))
        .env("OTEL_SERVICE_NAME", "llm-client"));
    let seen: Value = serde_json::from_str(out.trim()).expect("client output");

    for (kind, service) in [("CLIENT", "llm-client"), ("SERVER", "fake-llm")] {
        let on_side = |s: &Value| {
            s["kind"] == kind
                && s["service.name"] == service
                && attr(s, "gen_ai.operation.name").as_deref() == Some("chat")
        };
        let spans = sonde.wait_spans(4, on_side);
        assert_eq!(spans.len(), 4, "{kind}: {spans:#?}");
        let by_model = |m: &str| {
            spans
                .iter()
                .find(|s| attr(s, "gen_ai.request.model").as_deref() == Some(m))
                .unwrap_or_else(|| panic!("{kind}: no span for {m}: {spans:#?}"))
        };

        let json = by_model("model-json");
        assert_eq!(json["name"], "chat model-json");
        assert_eq!(
            attr(json, "gen_ai.provider.name").as_deref(),
            Some("openai")
        );
        assert_eq!(
            attr(json, "gen_ai.response.model").as_deref(),
            seen["json"]["model"].as_str()
        );
        assert_eq!(
            attr(json, "gen_ai.response.id").as_deref(),
            seen["json"]["id"].as_str()
        );
        assert_eq!(
            json["attributes"]["gen_ai.usage.input_tokens"].as_i64(),
            seen["json"]["input"].as_i64()
        );
        assert_eq!(
            json["attributes"]["gen_ai.usage.output_tokens"].as_i64(),
            seen["json"]["output"].as_i64()
        );
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

        let streamed = by_model("model-stream-usage");
        assert_eq!(streamed["attributes"]["gen_ai.request.stream"], true);
        assert_eq!(
            streamed["attributes"]["sonde.gen_ai.stream.completed"],
            true
        );
        assert_eq!(
            streamed["attributes"]["sonde.gen_ai.stream.chunks"].as_i64(),
            seen["stream-usage"]["chunks"].as_i64()
        );
        // The usage chunk the server sent: 10 + 2 messages in, 3 chunks out.
        assert_eq!(streamed["attributes"]["gen_ai.usage.input_tokens"], 12);
        assert_eq!(streamed["attributes"]["gen_ai.usage.output_tokens"], 3);
        // Time to first chunk within 50 ms of what the client measured (the server waits
        // 150 ms before its first content chunk).
        let ttft = attr_f64(streamed, "sonde.gen_ai.time_to_first_chunk").expect("ttft");
        let client_ttft = seen["stream-usage"]["ttft"].as_f64().unwrap();
        assert!(ttft >= 0.14, "{kind}: time to first chunk {ttft}");
        assert!(
            (ttft - client_ttft).abs() < 0.05,
            "{kind}: sonde {ttft} s, client {client_ttft} s"
        );

        // A stream without a usage chunk has no token counts: none are guessed.
        let bare = by_model("model-stream-bare");
        assert_eq!(bare["attributes"]["sonde.gen_ai.stream.completed"], true);
        assert!(bare["attributes"]
            .get("gen_ai.usage.output_tokens")
            .is_none());
        assert!(bare["attributes"]
            .get("gen_ai.usage.input_tokens")
            .is_none());

        let error = by_model("error-model");
        assert_eq!(seen["error"], 429);
        assert_eq!(
            attr(error, "http.response.status_code").as_deref(),
            Some("429")
        );
        // The API's error type for the caller; a 429 is no error of the server's.
        let expected = (kind == "CLIENT").then_some("rate_limit_exceeded");
        assert_eq!(attr(error, "error.type").as_deref(), expected);
    }

    // Neither the prompt, nor the completion, nor the API key leaves sonde.
    let everything = serde_json::to_string(&sonde.spans(|_| true)).unwrap() + &sonde.metrics().0;
    for secret in ["PROMPT-MARKER", "COMPLETION-MARKER", "SECRET-KEY"] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
}
