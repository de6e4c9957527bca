"""Calls the fake server (fake_llm.py) with the official anthropic SDK and prints what the
client itself saw as one JSON object, keyed by model. max_retries=0: one HTTP request per call.

usage: anthropic_client.py BASE_URL     (the server root: the SDK adds /v1/messages; https:
       is not verified)

Calls, in order (all POST /v1/messages; every prompt holds PROMPT-MARKER):
  claude-json    messages.create, JSON, 1 message (+ system)
  claude-stream  messages.stream (SSE), 3 messages (user, assistant, user)
  error-400, error-429, error-500   messages.create, JSON error answers
  cut-stream     messages.stream the server cuts after 2 text deltas

Each value: {model, status, id, response_model, input, output, stop_reason, ttft, chunks,
failed, error, error_type}: status is the HTTP status (200 when the SDK raised nothing); input/output the
usage the SDK reports (for a stream: the final message's, or for a cut stream what the
events received said: message_start's input_tokens and output_tokens 1); ttft the seconds from the call to the
first text delta; chunks the number of text deltas; failed/error whether iterating raised, and
the exception's class; error_type the API's error type from the error body. Fields that do not apply are null.
"""
import json
import sys
import time

import anthropic

# An https:// BASE_URL is the test's own server with a self-signed certificate.
http_client = anthropic.DefaultHttpxClient(verify=False) if sys.argv[1].startswith("https") else None
client = anthropic.Anthropic(base_url=sys.argv[1], api_key="SECRET-KEY", max_retries=0,
                             http_client=http_client)
SYSTEM = "You are terse."
ONE = [{"role": "user", "content": "PROMPT-MARKER tell me something"}]
THREE = [{"role": "user", "content": "PROMPT-MARKER hello"},
         {"role": "assistant", "content": "hello"},
         {"role": "user", "content": "PROMPT-MARKER tell me something"}]
seen = {}


def record(model, **fields):
    base = dict.fromkeys(["id", "response_model", "input", "output", "stop_reason", "ttft",
                          "chunks", "error", "error_type"])
    seen[model] = {"model": model, "status": 200, **base, "failed": False, **fields}


def from_message(m):
    return {"id": m.id, "response_model": m.model, "input": m.usage.input_tokens,
            "output": m.usage.output_tokens, "stop_reason": m.stop_reason}


m = client.messages.create(model="claude-json", max_tokens=50, system=SYSTEM,
                           messages=ONE)
record("claude-json", **from_message(m))


def stream(model, messages):
    start = time.monotonic()
    first = None
    chunks = 0
    fields = {}
    failed = None
    try:
        with client.messages.stream(model=model, max_tokens=50, system=SYSTEM,
                                    messages=messages) as s:
            for event in s:
                if event.type == "message_start":
                    fields = from_message(event.message)
                elif event.type == "message_delta":
                    fields["output"] = event.usage.output_tokens
                    fields["stop_reason"] = event.delta.stop_reason
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    chunks += 1
                    if first is None:
                        first = time.monotonic() - start
            fields = from_message(s.get_final_message())
    except Exception as e:  # a cut stream: httpx's RemoteProtocolError, unwrapped by the SDK
        failed = type(e).__name__
    record(model, **fields, ttft=first, chunks=chunks, failed=failed is not None, error=failed)


stream("claude-stream", THREE)

for model in ["error-400", "error-429", "error-500"]:
    try:
        client.messages.create(model=model, max_tokens=50, messages=ONE)
        record(model)
    except anthropic.APIStatusError as e:
        record(model, status=e.status_code, error=type(e).__name__,
               error_type=e.body.get("error", {}).get("type") if isinstance(e.body, dict) else None)

stream("cut-stream", ONE)
print(json.dumps(seen))
