"""An OpenAI-compatible chat completions server for sonde's tests: it answers in the API's
exact wire format, as JSON or as an SSE stream (chunked), with the usage the test expects.

usage: fake_openai.py PORT
The completion text is fixed; the usage is derived from the request so tests can predict it:
prompt_tokens = 10 + the number of messages, completion_tokens = 3 content chunks.
A request whose model is "error-model" gets a 429 with an OpenAI error object.
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNKS = ["COMPLETION-MARKER one", " two", " three"]
FIRST_CHUNK_DELAY = 0.15


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        req = json.loads(body)
        model = req["model"]
        usage = {"prompt_tokens": 10 + len(req["messages"]), "completion_tokens": len(CHUNKS)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if model == "error-model":
            self.send_json(429, {"error": {"message": "slow down", "type": "rate_limit_exceeded",
                                           "code": "rate_limit_exceeded"}})
            return
        if not req.get("stream"):
            self.send_json(200, {
                "id": "chatcmpl-json-1", "object": "chat.completion", "created": 1,
                "model": model + "-2024",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "".join(CHUNKS)}}],
                "usage": usage,
            })
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def event(obj):
            data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        base = {"id": "chatcmpl-stream-1", "object": "chat.completion.chunk", "created": 1,
                "model": model + "-2024"}
        event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None}]})
        time.sleep(FIRST_CHUNK_DELAY)
        for text in CHUNKS:
            event({**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})
            time.sleep(0.02)
        event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (req.get("stream_options") or {}).get("include_usage"):
            event({**base, "choices": [], "usage": usage})
        event(b"[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def send_json(self, status, obj):
        data = json.dumps(obj, indent=2).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
