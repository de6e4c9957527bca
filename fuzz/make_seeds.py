#!/usr/bin/env python3
"""Writes fuzz/seeds/<target>/: the byte fixtures of the parsers' unit tests, in each
target's input layout (see fuzz/src/lib.rs). Run from anywhere; it rewrites the seeds."""
import os
import shutil
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def write(target, seeds):
    d = os.path.join(ROOT, target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


def stream(mode, payload, cuts=()):
    """Single-stream layout: mode, cut count, cut lengths, payload."""
    return bytes([mode, len(cuts)] + list(cuts)) + payload


def records(parts):
    """Connection layout: (from_client, bytes) parts, each in records of up to 255 bytes."""
    out = b""
    for client, data in parts:
        for i in range(0, max(len(data), 1), 255):
            piece = data[i:i + 255]
            out += bytes([1 if client else 0, len(piece)]) + piece
    return out


# HTTP/1 (agent/src/protocols/http1/framing.rs and session.rs tests).
REQUESTS = {
    "get": b"GET /a/b?token=secret HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\n\r\n",
    "post": b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world",
    "pipelined": b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: h\r\n\r\n",
    "chunked": b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /n HTTP/1.1\r\nHost: h\r\n\r\n",
    "traceparent": b"GET / HTTP/1.1\r\nhost: example:8080\r\nTRACEPARENT: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n",
    "llm": b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 58\r\n\r\n"
    b'{"messages":[],"model":"gpt-4o","stream":true,"n":2}      ',
}
RESPONSES = {
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: v\r\n\r\n",
    "no_body": b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "continue": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    "until_close": b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of this until close",
    "upgrade": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
    "sse": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\ndata:\r\n6\r\n {}\n\n\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno",
}
http_stream = {}
for name, data in REQUESTS.items():
    http_stream["request_" + name] = stream(0, data)
    http_stream["request_split_" + name] = stream(0x80, data, [len(data) // 2])
for name, data in RESPONSES.items():
    http_stream["response_" + name] = stream(1, data)
    http_stream["response_split_" + name] = stream(0x81, data, [len(data) // 3, 5])
write("http1_stream", http_stream)

SESSION_REQUESTS = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\nHost: x\r\n\r\n"
SESSION_RESPONSES = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\nHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnope\r\n0\r\n\r\n"
OPENAI_SSE = (
    b'data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
    b'data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"SECRET"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
    b'data: {"id":"c1","model":"m","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}\n\n'
    b"data: [DONE]\n\n"
)
write("http1_session", {
    "pipelined": records([(True, SESSION_REQUESTS), (False, SESSION_RESPONSES)]),
    "interleaved": records([(True, b"GET /x HTTP/1.1\r\n\r\n"), (False, b"HTTP/1.0 200 OK\r\n\r\nbody"),
                            (True, b"GET /z HTTP/1.1\r\n\r\n")]) + bytes([0xF1, 0xF0]),
    "failed": records([(True, b"GET /x HTTP/1.1\r\n\r\n")]) + bytes([0xF2]),
    "upgrade": records([(True, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")])
    + bytes([0xF3])
    + records([(False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
               (True, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
               (False, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")]),
    "llm_stream": records([
        (True, REQUESTS["llm"]),
        (False, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
         + b"%x\r\n" % len(OPENAI_SSE) + OPENAI_SSE + b"\r\n0\r\n\r\n"),
    ]),
})

# Redis (agent/src/protocols/redis tests).
def cmd(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


RESP = {
    "command": cmd(b"SET", b"key", b"value"),
    "pipelined": cmd(b"GET", b"a") + cmd(b"INCR", b"n") + b"PING\r\n",
    "resp2_replies": b"+OK\r\n-WRONGTYPE Operation against a key\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*2\r\n$1\r\na\r\n:1\r\n*-1\r\n*0\r\n",
    "resp3": b"%1\r\n+server\r\n+redis\r\n_\r\n,1.5\r\n#t\r\n(123\r\n=8\r\ntxt:abcd\r\n~1\r\n:1\r\n!9\r\nERR boom!\r\n>3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n|1\r\n+ttl\r\n:3\r\n+OK\r\n",
    "nested": b"*2\r\n*2\r\n:1\r\n:2\r\n*1\r\n+x\r\n+after\r\n",
    "inline": b"PING\r\nSET k v\r\n",
}
redis_stream = {}
for name, data in RESP.items():
    redis_stream[name] = stream(0, data)
    redis_stream["split_" + name] = stream(0x80, data, [len(data) // 2, 3])
write("redis_stream", redis_stream)
write("redis_session", {
    "pipelined": records([(True, cmd(b"SET", b"k", b"secret") + cmd(b"GET", b"k") + cmd(b"CONFIG", b"GET", b"maxmemory")),
                          (False, b"+OK\r\n$6\r\nsecret\r\n*2\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n")]),
    "auth_select": records([(True, cmd(b"AUTH", b"user", b"hunter2") + cmd(b"SELECT", b"3") + cmd(b"GET", b"x")),
                            (False, b"+OK\r\n+OK\r\n$-1\r\n")]),
    "multi_exec": records([(True, cmd(b"MULTI") + cmd(b"INCR", b"a") + cmd(b"EXEC")),
                           (False, b"+OK\r\n+QUEUED\r\n*1\r\n:1\r\n")]),
    "pubsub": records([(True, cmd(b"SUBSCRIBE", b"a", b"b")),
                       (False, b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n"
                        b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n"),
                       (True, cmd(b"UNSUBSCRIBE")),
                       (False, b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n")]),
    "resp3_push": records([(True, cmd(b"GET", b"k")), (False, b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n$1\r\nv\r\n")]),
    "large_value": bytes([3, 20]) + b"*2\r\n$3\r\nGET\r\n$10000\r\n" [:20] + records([(False, b"+OK\r\n")]),
})

# PostgreSQL (agent/src/protocols/postgres tests).
def msg(tag, body):
    return bytes([tag]) + struct.pack(">I", len(body) + 4) + body


def untyped(code, params=b""):
    body = struct.pack(">I", code) + params
    return struct.pack(">I", len(body) + 4) + body


PROTOCOL_3, SSL_REQUEST = 196608, 80877103
STARTUP = untyped(PROTOCOL_3, b"user\0app\0database\0shop\0application_name\0psql\0\0")
READY = msg(ord("Z"), b"I")
def q(sql): return msg(ord("Q"), sql + b"\0")
def parse(name, sql): return msg(ord("P"), name + b"\0" + sql + b"\0\0\0")
def bind(portal, stmt): return msg(ord("B"), portal + b"\0" + stmt + b"\0\0\0\0\x01\0\0\0\x0242\0\0")
def execute(portal): return msg(ord("E"), portal + b"\0\0\0\0\0")
def complete(tag): return msg(ord("C"), tag + b"\0")
def error(code): return msg(ord("E"), b"SERROR\0VERROR\0C" + code + b"\0Mrelation \"secret_table\" does not exist\0\0")
ROW = msg(ord("D"), b"\0\x01\0\0\0\x011")
SYNC = msg(ord("S"), b"")
AUTH_OK = msg(ord("R"), struct.pack(">I", 0)) + msg(ord("S"), b"TimeZone\0UTC\0") + msg(ord("K"), bytes(8)) + READY

write("postgres_stream", {
    "frontend_startup": stream(1, STARTUP + q(b"SELECT 1") + parse(b"s1", b"SELECT $1") + bind(b"", b"s1") + execute(b"") + SYNC),
    "frontend_split": stream(0x81, untyped(SSL_REQUEST) + STARTUP + q(b"SELECT 1"), [3, 9, 20]),
    "backend_answer": stream(2, b"N" + msg(ord("R"), struct.pack(">I", 10)) + AUTH_OK),
    "backend_results": stream(0, ROW + ROW + complete(b"SELECT 2") + error(b"42P01") + READY),
    "backend_split": stream(0x80, ROW + complete(b"INSERT 0 1") + READY, [4, 4]),
})
write("postgres_session", {
    "simple": records([(True, untyped(SSL_REQUEST)), (False, b"N"), (True, STARTUP),
                       (False, msg(ord("R"), struct.pack(">I", 10))),
                       (True, msg(ord("p"), b"SCRAM-SHA-256\0\0\0\0\x05hunter2")), (False, AUTH_OK),
                       (True, q(b"SELECT name FROM users WHERE id = 42")),
                       (False, ROW + complete(b"SELECT 1") + READY)]),
    "batch": records([(True, q(b"INSERT INTO t VALUES (1); UPDATE t SET a = 'x'")),
                      (False, complete(b"INSERT 0 1") + complete(b"UPDATE 1") + READY)]),
    "extended": records([(True, parse(b"s1", b"SELECT * FROM accounts WHERE aid = $1") + bind(b"", b"s1") + execute(b"") + SYNC),
                         (False, msg(ord("1"), b"") + msg(ord("2"), b"") + ROW + complete(b"SELECT 1") + READY)]),
    "pipeline_error": records([(True, parse(b"", b"SELECT 1/0") + bind(b"", b"") + execute(b"") + parse(b"", b"SELECT 2") + bind(b"", b"") + execute(b"") + SYNC),
                               (False, msg(ord("1"), b"") + msg(ord("2"), b"") + error(b"22012") + READY)]),
    "copy": records([(True, q(b"COPY t FROM STDIN")), (False, msg(ord("G"), b"\0\0\0")),
                     (True, msg(ord("d"), b"1\tsecret\n") + msg(ord("c"), b"")), (False, complete(b"COPY 1") + READY)]),
    "ssl_accepted": records([(True, untyped(SSL_REQUEST)), (False, b"S"), (True, b"\x16\x03\x01garbage")]),
})

# SQL masking (agent/src/protocols/postgres/sql.rs tests).
SQL = {
    "pgbench_update": "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5678;",
    "pgbench_insert": "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 42, -12, CURRENT_TIMESTAMP);",
    "literals": "SELECT 'a''b', E'x\\'y', B'0101', X'ff', N'n', U&'d\\0061', $$dollar$$, $tag$in $$ side$tag$, 1.5e-3, .5, 0x1F, $1 FROM t",
    "comments": "/* a /* nested */ comment */ SELECT \"Quoted\"\"Ident\", col -- trailing\nFROM s.t WHERE x = 'v'",
    "cut": "SELECT * FROM t WHERE name = 'unterminated",
    "with": "WITH x AS (SELECT 1) SELECT * FROM x JOIN y ON x.a = y.b",
    "copy": "COPY t (a, b) FROM STDIN WITH (FORMAT csv)",
}
write("sql_mask", {k: v.encode() for k, v in SQL.items()})

# Ring-buffer events (agent/src/capture/event.rs tests): header (112 bytes) then payload.
def event(kind, total, captured, payload, tail=0, family=0, peer=bytes(16), port=0, comm=b"nginx"):
    conn = struct.pack("<Q16sHHBBBBiI", 1, peer, family, port, 1, 1, 0, 0, -1, 0)
    conn += bytes(56 - len(conn))
    header = struct.pack("<IIQIIiIIBBH", kind, total, 123, 42, 43, 5, captured, 0, 1, 0, tail)
    header += conn + comm.ljust(16, b"\0")
    assert len(header) == 112
    return header + payload


write("event_decode", {
    "data": event(0, 10, 3, b"abc"),
    "tail": event(0, 10, 5, b"abcij", tail=2),
    "v4_mapped": event(0, 3, 3, b"GET", family=10, peer=bytes(10) + b"\xff\xff\x7f\0\0\x01", port=80),
    "v4": event(1, 0, 0, b"", family=2, peer=b"\x0a\0\0\x01" + bytes(12), port=6379),
    "short": bytes(10),
})

# The Kubernetes watch stream (agent/src/identity/k8s.rs tests).
POD = (b'{"metadata":{"name":"web-7d4b9c8f6-x2x9q","namespace":"shop","uid":"u1","resourceVersion":"7",'
       b'"labels":{"pod-template-hash":"7d4b9c8f6"},"ownerReferences":[{"kind":"ReplicaSet","name":"web-7d4b9c8f6","controller":true}]},'
       b'"spec":{"nodeName":"n1"},"status":{"containerStatuses":[{"name":"app","containerID":"containerd://abc"}]}}')
EVENTS = (b'{"type":"ADDED","object":' + POD + b'}\n{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"8"}}}\n'
          + b'{"type":"DELETED","object":' + POD + b'}\n{"type":"ERROR","object":{"code":410}}\n')
SERVICE = (b'{"metadata":{"name":"checkout","namespace":"shop","uid":"s1","resourceVersion":"9"},'
           b'"spec":{"clusterIP":"10.96.0.10","clusterIPs":["10.96.0.10","fd00::10"],"externalIPs":["203.0.113.7"]},'
           b'"status":{"loadBalancer":{"ingress":[{"ip":"198.51.100.4"}]}}}')
SERVICE_EVENTS = (b'{"type":"ADDED","object":' + SERVICE + b'}\n{"type":"MODIFIED","object":' + SERVICE
                  + b'}\n{"type":"DELETED","object":' + SERVICE + b'}\n')
def chunked(body, size):
    out = b""
    for i in range(0, len(body), size):
        piece = body[i:i + size]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    return out + b"0\r\n\r\n"
write("k8s_watch", {
    "chunked": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(EVENTS, 100),
    "length": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(EVENTS) + EVENTS,
    "until_close": b"HTTP/1.1 200 OK\r\n\r\n" + EVENTS,
    "extensions": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n2;ext=1\r\n:1\r\n1\r\n}\r\n0\r\n\r\n",
    "gone": b"HTTP/1.1 410 Gone\r\nContent-Length: 2\r\n\r\n{}",
    "services": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(SERVICE_EVENTS, 100),
})

# LLM bodies (agent/src/protocols/llm tests).
OPENAI_JSON = b'''{
  "id": "chatcmpl-123",
  "object": "chat.completion",
  "model": "gpt-4o-mini-2024-07-18",
  "choices": [{"index": 0, "message": {"role": "assistant", "content": "SECRET answer"},
               "finish_reason": "stop"}],
  "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2}}
}'''
ANTHROPIC = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","model":"claude-x","usage":{"input_tokens":25,"output_tokens":1}}}\n\n'
             b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}\n\n'
             b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}\n\n'
             b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
OLLAMA = (b'{"model":"llama3","message":{"role":"assistant","content":"Hel"},"done":false}\n'
          b'{"model":"llama3","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":26,"eval_count":290}\n')
ERROR = b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}'
write("llm_response", {
    "openai_json": stream(0, OPENAI_JSON), "openai_json_split": stream(0x80, OPENAI_JSON, [100, 50]),
    "openai_sse": stream(0, OPENAI_SSE), "openai_sse_split": stream(0, OPENAI_SSE, [7, 200]),
    "anthropic": stream(0, ANTHROPIC), "ollama": stream(0, OLLAMA), "error": stream(0, ERROR),
})
CHAT = (b'{"messages":[{"role":"user","content":"SECRET \\"prompt\\" {not json} [x]"}],\n'
        b'"model":"gpt-4o-mini","stream":true,"max_tokens":256,"temperature":0.5,"n":1,\n'
        b'"stop":null,"stream_options":{"include_usage":true},"tools":[[1,2],[3]]}')
REQUEST = b'{"messages":[{"role":"user","content":"SECRET"}],"model":"gpt-4o","stream":true,"max_completion_tokens":64,"temperature":0.2,"top_p":0.9,"n":2}'
OLLAMA_REQUEST = b'{"model":"llama3","messages":[],"options":{"num_predict":10,"temperature":0.1,"top_p":1}}'
write("llm_request", {
    "chat": stream(0, CHAT), "request": stream(0, REQUEST), "request_gap": stream(0x80, REQUEST, [30]),
    "ollama": stream(0, OLLAMA_REQUEST),
    "path": stream(0, b"/openai/v1/chat/completions\n" + REQUEST),
})
write("llm_tail", {
    "openai": stream(128, REQUEST), "chat": stream(40, CHAT), "response": stream(200, OPENAI_JSON),
    "nested": stream(100, b'{"a":{"b":[1,{"c":"d,\\"e\\":1"}]},"f":"g","h":{"i":2}}'),
})
