"""Calls the fake server (fake_llm.py) with the official ollama SDK and prints what the client
itself saw as one JSON object, keyed by model. The SDK never retries: one HTTP request per call.

usage: ollama_client.py HOST            (the server root, e.g. http://127.0.0.1:PORT)

Calls, in order (every prompt holds PROMPT-MARKER):
  llama-chat              POST /api/chat      "stream": false, 2 messages (system, user)
  llama-chat-stream       POST /api/chat      NDJSON stream, 3 messages (system, user, user)
  llama-generate          POST /api/generate  "stream": false
  llama-generate-stream   POST /api/generate  NDJSON stream
  error-400, error-429, error-500   POST /api/chat, "stream": false, JSON error answers
  cut-stream              POST /api/chat      NDJSON stream the server cuts after 2 lines

Each value: {model, path, status, response_model, input, output, done_reason, ttft, chunks,
failed, error, error_message}: status is the HTTP status (200 when the SDK raised nothing);
input/output the final object's prompt_eval_count/eval_count; ttft the seconds from the call to
the first non-empty content; chunks the number of non-empty content parts; failed/error whether
iterating raised, and the exception's class; error_message the SDK's ResponseError.error.
Fields that do not apply are null.
"""
import json
import sys
import time

import ollama

client = ollama.Client(host=sys.argv[1])
SYSTEM = {"role": "system", "content": "You are terse."}
USER = {"role": "user", "content": "PROMPT-MARKER tell me something"}
TWO = [SYSTEM, USER]
THREE = [SYSTEM, {"role": "user", "content": "PROMPT-MARKER hello"}, USER]
PROMPT = "PROMPT-MARKER tell me something"
seen = {}


def record(model, path, **fields):
    base = dict.fromkeys(["response_model", "input", "output", "done_reason", "ttft", "chunks",
                          "error", "error_message"])
    seen[model] = {"model": model, "path": path, "status": 200, **base, "failed": False,
                   **fields}


def from_final(r):
    return {"response_model": r.model, "input": r.prompt_eval_count, "output": r.eval_count,
            "done_reason": r.done_reason}


def text_of(part):
    return part.message.content if hasattr(part, "message") else part.response


def stream(model, path, call):
    start = time.monotonic()
    first = None
    chunks = 0
    fields = {}
    failed = None
    try:
        for part in call():
            if text_of(part):
                chunks += 1
                if first is None:
                    first = time.monotonic() - start
            if part.done:
                fields = from_final(part)
    except Exception as e:  # a cut stream: httpx's RemoteProtocolError, unwrapped by the SDK
        failed = type(e).__name__
    record(model, path, **fields, ttft=first, chunks=chunks, failed=failed is not None,
           error=failed)


r = client.chat(model="llama-chat", messages=TWO, stream=False, options={"temperature": 0.5})
record("llama-chat", "/api/chat", **from_final(r))
stream("llama-chat-stream", "/api/chat",
       lambda: client.chat(model="llama-chat-stream", messages=THREE, stream=True))
r = client.generate(model="llama-generate", prompt=PROMPT, stream=False)
record("llama-generate", "/api/generate", **from_final(r))
stream("llama-generate-stream", "/api/generate",
       lambda: client.generate(model="llama-generate-stream", prompt=PROMPT, stream=True))

for model in ["error-400", "error-429", "error-500"]:
    try:
        client.chat(model=model, messages=TWO, stream=False)
        record(model, "/api/chat")
    except ollama.ResponseError as e:
        record(model, "/api/chat", status=e.status_code, error=type(e).__name__,
               error_message=e.error)

stream("cut-stream", "/api/chat", lambda: client.chat(model="cut-stream", messages=TWO, stream=True))
print(json.dumps(seen))
