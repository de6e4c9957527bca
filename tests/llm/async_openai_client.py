"""Calls the fake server (fake_llm.py) over HTTPS with the official openai SDK's async client
(AsyncOpenAI: httpx over asyncio, OpenSSL through memory BIOs) and prints what the client
saw as one JSON object. No call is retried (max_retries=0).

usage: async_openai_client.py BASE_URL    (https://.../v1; the certificate is not verified)

Calls, in order, on one connection (key in the output):
  model-json          json          chat, JSON: {id, model (the response's), input, output}
  model-stream-usage  stream-usage  chat stream with include_usage: {ttft, chunks}
"""
import asyncio
import json
import sys
import time

import openai

prompt = [{"role": "system", "content": "You are terse."},
          {"role": "user", "content": "PROMPT-MARKER tell me something"}]


async def main():
    client = openai.AsyncOpenAI(base_url=sys.argv[1], api_key="sk-test-SECRET-KEY",
                                max_retries=0,
                                http_client=openai.DefaultAsyncHttpxClient(verify=False))
    seen = {}
    r = await client.chat.completions.create(model="model-json", messages=prompt,
                                             max_tokens=50)
    seen["json"] = {"id": r.id, "model": r.model, "input": r.usage.prompt_tokens,
                    "output": r.usage.completion_tokens}
    start = time.monotonic()
    first = None
    chunks = 0
    stream = await client.chat.completions.create(
        model="model-stream-usage", messages=prompt, stream=True,
        stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
            if first is None:
                first = time.monotonic() - start
    seen["stream-usage"] = {"ttft": first, "chunks": chunks}
    await client.close()
    print(json.dumps(seen))


asyncio.run(main())
