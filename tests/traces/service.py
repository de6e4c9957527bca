"""The middle service of tests/traces.rs: a threaded HTTP server (one thread per connection,
`http.server.ThreadingHTTPServer`) that, for each GET /chain/<marker>, on the thread serving
the request and in this order:

  1. SET trace:<marker>:k <marker>   and   GET trace:<marker>:k   with redis-py (one shared
     client; its pool is filled at start so no connection is made while serving);
  2. SELECT 1 with psycopg 3 over TCP on one shared connection (autocommit, behind a lock),
     opened at start;
  3. GET /leaf/<marker> to the leaf service (a new connection each time);

then answers 200 "chain <marker>". Any other path answers 404; a failed call answers 500
with the error.

usage: service.py PORT REDIS_PORT PG_PORT LEAF_PORT

It connects to Redis and PostgreSQL before it listens: once PORT accepts connections, no
more set-up traffic follows. It exits when its parent does (or on SIGTERM).
"""
import http.client
import http.server
import os
import sys
import threading
import time

import psycopg
import redis

PORT, REDIS_PORT, PG_PORT, LEAF_PORT = (int(a) for a in sys.argv[1:5])
# At most this many requests are served at once (the test runs 8 clients).
POOL = 16

# One keep-alive connection to the leaf, shared under a lock: the leaf is a Node.js server,
# which accepts without asking for the peer's address, so sonde reads it from the socket
# while the connection lives (see docs/traces.md).
leaf = http.client.HTTPConnection("127.0.0.1", LEAF_PORT, timeout=10)
leaf_lock = threading.Lock()
rds = redis.Redis(host="127.0.0.1", port=REDIS_PORT, socket_timeout=10)
# Open the pool's connections now (redis-py sends CLIENT SETINFO on each new connection),
# then give them back: requests find them idle.
conns = [rds.connection_pool.get_connection() for _ in range(POOL)]
for c in conns:
    c.connect()
for c in conns:
    rds.connection_pool.release(c)
rds.ping()

pg = psycopg.connect(
    f"host=127.0.0.1 port={PG_PORT} user=postgres dbname=postgres "
    "sslmode=disable gssencmode=disable connect_timeout=10",
    autocommit=True,
)
pg_lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        prefix = "/chain/"
        if not self.path.startswith(prefix):
            self.answer(404, "not found\n")
            return
        marker = self.path[len(prefix):]
        try:
            key = f"trace:{marker}:k"
            rds.set(key, marker)
            got = rds.get(key)
            if got != marker.encode():
                raise RuntimeError(f"redis GET {key} returned {got!r}")
            with pg_lock:
                row = pg.execute("SELECT 1").fetchone()
            if row != (1,):
                raise RuntimeError(f"SELECT 1 returned {row!r}")
            with leaf_lock:
                leaf.request("GET", f"/leaf/{marker}")
                r = leaf.getresponse()
                body = r.read()
            if r.status != 200:
                raise RuntimeError(f"leaf answered {r.status}: {body!r}")
        except Exception as e:  # the test sees the status and the reason
            self.answer(500, f"{type(e).__name__}: {e}\n")
            return
        self.answer(200, f"chain {marker}\n")

    def answer(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def exit_with_parent():
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True


threading.Thread(target=exit_with_parent, daemon=True).start()
server = Server(("127.0.0.1", PORT), Handler)
print(f"listening on {PORT}", flush=True)
server.serve_forever()
