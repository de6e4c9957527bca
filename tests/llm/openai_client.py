"""Calls the fake server (fake_llm.py) with the official openai SDK and prints what the client
itself saw as one JSON object. No call is retried (max_retries=0): one HTTP request per call.

usage: openai_client.py BASE_URL        (BASE_URL ends in /v1)

Calls, in order (model: key in the output):
  model-json          json          chat, JSON: {id, model (the response's), input, output}
  model-stream-usage  stream-usage  chat stream with include_usage: {ttft, chunks}
  model-stream-bare   stream-bare   chat stream without usage: {ttft, chunks}
  error-model         error         the 429's status code (a number)
  error-400           error-400     {model, status}
  error-500           error-500     {model, status}
  cut-stream          cut-stream    stream the server cuts: {model, chunks (content chunks
                                    received before the failure), failed, error (its class)}
  model-big           big           chat, JSON, one 200 kB user message, "model" after
                                    "messages" in the body (sent with client.post): {model, id,
                                    response_model, input, output, body_bytes, keys (the body's
                                    top-level keys as sent: ["messages", "model"])}
  embed-model         embed         embeddings (base64, the SDK's default): {model, input,
                                    total, vectors}
"""
import json
import sys
import time

import openai
from openai import OpenAI
from openai.types.chat import ChatCompletion

client = OpenAI(base_url=sys.argv[1], api_key="sk-test-SECRET-KEY", max_retries=0)
prompt = [{"role": "system", "content": "You are terse."},
          {"role": "user", "content": "PROMPT-MARKER tell me something"}]
seen = {}

r = client.chat.completions.create(model="model-json", messages=prompt, max_tokens=50,
                                   temperature=0.5)
seen["json"] = {"id": r.id, "model": r.model, "input": r.usage.prompt_tokens,
                "output": r.usage.completion_tokens}

for name, usage in [("stream-usage", True), ("stream-bare", False)]:
    start = time.monotonic()
    first = None
    chunks = 0
    stream = client.chat.completions.create(
        model="model-" + name, messages=prompt, stream=True,
        stream_options={"include_usage": True} if usage else None)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
            if first is None:
                first = time.monotonic() - start
    seen[name] = {"ttft": first, "chunks": chunks}

try:
    client.chat.completions.create(model="error-model", messages=prompt)
except openai.RateLimitError as e:
    seen["error"] = e.status_code

for model in ["error-400", "error-500"]:
    try:
        client.chat.completions.create(model=model, messages=prompt)
        seen[model] = {"model": model, "status": 200}
    except openai.APIStatusError as e:
        seen[model] = {"model": model, "status": e.status_code}

chunks = 0
failed = None
try:
    for chunk in client.chat.completions.create(model="cut-stream", messages=prompt, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
except Exception as e:  # the SDK wraps the broken chunked body as APIConnectionError
    failed = type(e).__name__
seen["cut-stream"] = {"model": "cut-stream", "chunks": chunks, "failed": failed is not None,
                      "error": failed}

# A 200 kB prompt, with "model" after "messages" in the body so that a parser must look past
# 200 kB for the model. chat.completions.create writes "model" first in this SDK (3.x; 1.x wrote
# "messages" first), so the call goes through the client's own post() with an ordered body: the
# same SDK request path, headers and response parsing. A request hook reads the body the SDK
# actually sends to prove the order.
sent = {}


def keep_body(request):
    sent["keys"] = list(json.loads(request.content))
    sent["body_bytes"] = len(request.content)


big_client = OpenAI(base_url=sys.argv[1], api_key="sk-test-SECRET-KEY", max_retries=0,
                    http_client=openai.DefaultHttpxClient(event_hooks={"request": [keep_body]}))
big = "PROMPT-MARKER " + "x" * (200 * 1024 - len("PROMPT-MARKER "))
r = big_client.post("/chat/completions", cast_to=ChatCompletion,
                    body={"messages": [{"role": "user", "content": big}], "model": "model-big"})
seen["big"] = {"model": "model-big", "id": r.id, "response_model": r.model,
               "input": r.usage.prompt_tokens, "output": r.usage.completion_tokens, **sent}

e = client.embeddings.create(model="embed-model", input="PROMPT-MARKER embed me")
seen["embed"] = {"model": "embed-model", "input": e.usage.prompt_tokens,
                 "total": e.usage.total_tokens, "vectors": len(e.data)}
print(json.dumps(seen))
