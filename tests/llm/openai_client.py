"""Calls the fake server with the official openai SDK: one plain chat completion, one stream
with usage, one stream without, one error. Prints what the client itself measured as JSON.

usage: openai_client.py BASE_URL
"""
import json
import sys
import time

import openai
from openai import OpenAI

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
print(json.dumps(seen))
