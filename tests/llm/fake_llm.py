"""A fake LLM server for sonde's tests (stdlib only): one HTTP/1.1 server that answers the
OpenAI, Anthropic and Ollama APIs in each provider's exact wire format, as JSON or as a stream
(chunked transfer encoding), with token usage the test can predict.

usage: fake_llm.py PORT [CERT KEY]   (with CERT and KEY: HTTPS)
  FAKE_LLM_LOG=FILE  append one JSON line per request received (method, path, peer port,
                     headers of interest, body size, key order, model, stream); off by default.

Routes (POST; anything else answers 404):
  /v1/chat/completions  OpenAI chat: JSON, or SSE ("data: {...}" ... "data: [DONE]") when
                        "stream" is true; a usage chunk only with stream_options.include_usage.
  /v1/embeddings        OpenAI embeddings: 3 floats per input, as a list or base64 float32
                        (the SDK asks for base64 by default).
  /v1/messages          Anthropic messages: JSON, or SSE ("event: X" + "data: {...}") when
                        "stream" is true: message_start, content_block_start, ping,
                        content_block_delta x3, content_block_stop, message_delta, message_stop.
  /api/chat, /api/generate
                        Ollama: NDJSON stream (application/x-ndjson) unless "stream" is false
                        (Ollama streams by default); the last object has done: true, done_reason,
                        prompt_eval_count, eval_count and the durations.

Text: every completion is the 3 chunks "COMPLETION-MARKER one", " two", " three".
Timing: a stream's first content chunk leaves 150 ms after the request was read, the next ones
20 ms apart. OpenAI and Anthropic send the headers (and the preamble events) at once; Ollama,
like the real one, sends the headers together with its first content line, in one write.
A JSON answer is one write (headers and body); each chunk of a stream one write; TCP_NODELAY.

Token usage (the same in JSON and stream answers):
  input  = 10 + the number of entries in "messages" (chat, messages; Anthropic's top-level
           "system" does not count), 10 + 1 for /api/generate, 10 + the number of inputs for
           /v1/embeddings;
  output = 3 (the number of content chunks); embeddings have none (total_tokens = input).
  Where they appear: OpenAI usage.prompt_tokens / completion_tokens / total_tokens (in a stream
  only in the include_usage chunk); Anthropic usage.input_tokens / output_tokens (stream:
  message_start carries input_tokens and output_tokens 1, message_delta output_tokens 3);
  Ollama prompt_eval_count / eval_count.

Models with special behaviour, on every route:
  error-400, error-429, error-500  that status, with the provider's error body:
      OpenAI    {"error": {"message", "type", "code"}}, type invalid_request_error,
                rate_limit_exceeded, server_error
      Anthropic {"type": "error", "error": {"type", "message"}, "request_id"}, type
                invalid_request_error, rate_limit_error, api_error
      Ollama    {"error": "..."}
  error-model  (kept from fake_openai.py) the same as error-429.
  cut-stream   a stream (whatever "stream" says for OpenAI/Anthropic; Ollama's default) that sends
               the preamble and its first 2 content chunks, then closes the connection: no last
               chunk of the chunked body, no [DONE] / message_stop / done: true.

Ids: OpenAI keeps chatcmpl-json-1 (model-json) and chatcmpl-stream-1 (model-stream-usage,
model-stream-bare), otherwise chatcmpl-<model>; the response model is <model>-2024.
Anthropic: msg_fake_<model with _ for ->, response model <model>-20250101, request-id
req_fake_<model>. Ollama has no id and echoes the model.

Response headers: OpenAI openai-version: 2020-10-01 and openai-processing-ms; Anthropic
anthropic-ratelimit-requests-limit: 50 and request-id; Ollama none of its own.
Any request body size is fine (Content-Length or chunked); 200 kB prompts are answered normally.
"""
import base64
import json
import os
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNKS = ["COMPLETION-MARKER one", " two", " three"]
FIRST_CHUNK_DELAY = 0.15
CHUNK_GAP = 0.02
CUT_AFTER = 2
CREATED_AT = "2025-01-01T00:00:00.000000Z"
EMBEDDING = [0.25, -0.5, 0.75]

OPENAI_ERRORS = {
    400: ("invalid_request_error", "bad request"),
    429: ("rate_limit_exceeded", "slow down"),
    500: ("server_error", "the server had an error"),
}
ANTHROPIC_ERRORS = {
    400: ("invalid_request_error", "bad request"),
    429: ("rate_limit_error", "slow down"),
    500: ("api_error", "internal server error"),
}
ERROR_MODELS = {"error-400": 400, "error-429": 429, "error-500": 500, "error-model": 429}

LOG = os.environ.get("FAKE_LLM_LOG")
LOG_LOCK = threading.Lock()
COUNTER = [0]


def compact(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


class Cut(Exception):
    """The stream is cut here: the connection closes with the chunked body unfinished."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # TCP_NODELAY, like Go's (Ollama's) servers: no 40 ms stalls

    def log_message(self, *args):
        pass

    # ---- plumbing -------------------------------------------------------------------------
    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def log_request_seen(self, body, req):
        if not LOG:
            return
        with LOG_LOCK:
            COUNTER[0] += 1
            entry = {
                "n": COUNTER[0], "method": self.command, "path": self.path,
                "version": self.request_version, "peer_port": self.client_address[1],
                "content_length": self.headers.get("Content-Length"),
                "transfer_encoding": self.headers.get("Transfer-Encoding"),
                "connection": self.headers.get("Connection"),
                "body_bytes": len(body),
                "keys": list(req) if isinstance(req, dict) else None,
                "model": req.get("model") if isinstance(req, dict) else None,
                "stream": req.get("stream") if isinstance(req, dict) else None,
                "retry_count": self.headers.get("x-stainless-retry-count"),
            }
            with open(LOG, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def head(self, status, content_type, headers, length=None, first=b""):
        """Sends the status line and headers, in one write with `first`, the first bytes of the
        body (a Content-Length body, or the first chunk of a chunked one)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for k, v in headers:
            self.send_header(k, v)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self._headers_buffer.append(b"\r\n")
        data = b"".join(self._headers_buffer) + first
        self._headers_buffer = []
        self.wfile.write(data)
        self.wfile.flush()

    def send_body(self, status, content_type, data, headers=()):
        self.head(status, content_type, headers, len(data), data)

    @staticmethod
    def framed(data):
        return b"%x\r\n%s\r\n" % (len(data), data)

    def chunk(self, data):
        self.wfile.write(self.framed(data))
        self.wfile.flush()

    def end_chunks(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def content_chunks(self, cut, send):
        """Sends the content chunks through send(i, text), with the stream's timing; on a cut
        stream stops after CUT_AFTER of them."""
        for i, text in enumerate(CHUNKS):
            if cut and i == CUT_AFTER:
                raise Cut
            delay = FIRST_CHUNK_DELAY - (time.monotonic() - self.t0) if i == 0 else CHUNK_GAP
            if delay > 0:
                time.sleep(delay)
            send(i, text)

    # ---- dispatch -------------------------------------------------------------------------
    def do_POST(self):
        body = self.read_body()
        self.t0 = time.monotonic()
        try:
            req = json.loads(body)
        except ValueError:
            req = None
        self.log_request_seen(body, req)
        route = {
            "/v1/chat/completions": self.openai_chat,
            "/v1/embeddings": self.openai_embeddings,
            "/v1/messages": self.anthropic_messages,
            "/api/chat": self.ollama,
            "/api/generate": self.ollama,
        }.get(self.path.split("?")[0])
        if route is None:
            return self.not_found()
        if not isinstance(req, dict) or not isinstance(req.get("model"), str):
            return self.send_body(400, "application/json", b'{"error":"bad request body"}')
        try:
            route(req, req["model"])
        except Cut:
            self.close_connection = True

    def not_found(self):
        self.send_body(404, "application/json", b'{"error":"not found"}')

    def do_GET(self):
        self.log_request_seen(b"", None)
        self.not_found()

    def do_HEAD(self):
        self.log_request_seen(b"", None)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_DELETE = do_PATCH = do_GET

    # ---- OpenAI ---------------------------------------------------------------------------
    def openai_headers(self):
        return [("openai-version", "2020-10-01"),
                ("openai-processing-ms", str(int((time.monotonic() - self.t0) * 1000)))]

    def openai_error(self, status):
        kind, message = OPENAI_ERRORS[status]
        self.send_json(status, {"error": {"message": message, "type": kind, "code": kind}})

    def send_json(self, status, obj):
        self.send_body(status, "application/json", json.dumps(obj, indent=2).encode(),
                       self.openai_headers())

    def openai_chat(self, req, model):
        if model in ERROR_MODELS:
            return self.openai_error(ERROR_MODELS[model])
        usage = {"prompt_tokens": 10 + len(req.get("messages") or []),
                 "completion_tokens": len(CHUNKS)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        cut = model == "cut-stream"
        if not req.get("stream") and not cut:
            self.send_json(200, {
                "id": "chatcmpl-json-1" if model == "model-json" else "chatcmpl-" + model,
                "object": "chat.completion", "created": 1,
                "model": model + "-2024",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "".join(CHUNKS)}}],
                "usage": usage,
            })
            return
        self.head(200, "text/event-stream", self.openai_headers())

        def event(obj):
            self.chunk(b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode())
                       + b"\n\n")

        stream_id = ("chatcmpl-stream-1" if model in ("model-stream-usage", "model-stream-bare")
                     else "chatcmpl-" + model)
        base = {"id": stream_id, "object": "chat.completion.chunk", "created": 1,
                "model": model + "-2024"}
        event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None}]})
        self.content_chunks(cut, lambda i, text: event(
            {**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}))
        time.sleep(CHUNK_GAP)
        event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (req.get("stream_options") or {}).get("include_usage"):
            event({**base, "choices": [], "usage": usage})
        event(b"[DONE]")
        self.end_chunks()

    def openai_embeddings(self, req, model):
        if model in ERROR_MODELS:
            return self.openai_error(ERROR_MODELS[model])
        inputs = req.get("input")
        inputs = inputs if isinstance(inputs, list) and not (
            inputs and isinstance(inputs[0], int)) else [inputs]
        tokens = 10 + len(inputs)
        if req.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack("<%df" % len(EMBEDDING), *EMBEDDING)).decode()
        else:
            vector = EMBEDDING
        self.send_json(200, {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": vector}
                     for i in range(len(inputs))],
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    # ---- Anthropic ------------------------------------------------------------------------
    def anthropic_messages(self, req, model):
        headers = [("anthropic-ratelimit-requests-limit", "50"),
                   ("request-id", "req_fake_" + model.replace("-", "_"))]
        if model in ERROR_MODELS:
            kind, message = ANTHROPIC_ERRORS[ERROR_MODELS[model]]
            return self.send_body(ERROR_MODELS[model], "application/json", compact(
                {"type": "error", "error": {"type": kind, "message": message},
                 "request_id": "req_fake_" + model.replace("-", "_")}), headers)
        input_tokens = 10 + len(req.get("messages") or [])
        msg_id = "msg_fake_" + model.replace("-", "_")
        cut = model == "cut-stream"
        if not req.get("stream") and not cut:
            return self.send_body(200, "application/json", compact({
                "id": msg_id, "type": "message", "role": "assistant", "model": model + "-20250101",
                "content": [{"type": "text", "text": "".join(CHUNKS)}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0, "output_tokens": len(CHUNKS)},
            }), headers)
        self.head(200, "text/event-stream; charset=utf-8", headers + [("Cache-Control", "no-cache")])

        def event(name, obj):
            self.chunk(b"event: " + name.encode() + b"\ndata: " + compact(obj) + b"\n\n")

        event("message_start", {"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": model + "-20250101",
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": 1}}})
        event("content_block_start", {"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": ""}})
        event("ping", {"type": "ping"})
        self.content_chunks(cut, lambda i, text: event("content_block_delta", {
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": text}}))
        event("content_block_stop", {"type": "content_block_stop", "index": 0})
        time.sleep(CHUNK_GAP)
        event("message_delta", {"type": "message_delta",
                                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                "usage": {"output_tokens": len(CHUNKS)}})
        event("message_stop", {"type": "message_stop"})
        self.end_chunks()

    # ---- Ollama ---------------------------------------------------------------------------
    def ollama(self, req, model):
        if model in ERROR_MODELS:
            return self.send_body(ERROR_MODELS[model], "application/json; charset=utf-8",
                                  compact({"error": "error %d for model %s"
                                                    % (ERROR_MODELS[model], model)}))
        chat = self.path.startswith("/api/chat")
        input_tokens = 10 + (len(req.get("messages") or []) if chat else 1)

        def part(text, done):
            obj = {"model": model, "created_at": CREATED_AT}
            if chat:
                obj["message"] = {"role": "assistant", "content": text}
                if done:
                    obj["done_reason"] = "stop"
                obj["done"] = done
            else:
                obj["response"] = text
                obj["done"] = done
                if done:
                    obj["done_reason"] = "stop"
                    obj["context"] = [1, 2, 3]
            if done:
                obj.update({"total_duration": 200000000, "load_duration": 1000000,
                            "prompt_eval_count": input_tokens, "prompt_eval_duration": 2000000,
                            "eval_count": len(CHUNKS), "eval_duration": 3000000})
            return compact(obj)

        cut = model == "cut-stream"
        if req.get("stream", True) is False and not cut:
            return self.send_body(200, "application/json; charset=utf-8",
                                  part("".join(CHUNKS), True))

        def line(i, text):
            if i == 0:  # Ollama's headers leave with its first line, in one write
                self.head(200, "application/x-ndjson", [],
                          first=self.framed(part(text, False) + b"\n"))
            else:
                self.chunk(part(text, False) + b"\n")

        self.content_chunks(cut, line)
        time.sleep(CHUNK_GAP)
        self.chunk(part("", True) + b"\n")
        self.end_chunks()


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
if len(sys.argv) > 3:  # CERT KEY: HTTPS (OpenSSL through Python's ssl)
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[2], sys.argv[3])
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
