"""Two services for the trace propagation test of tests/traces.rs, each a threaded HTTP/1.1
server (one thread per connection, keep-alive).

usage: relay.py echo BIND PORT
       relay.py front BIND PORT DOWNSTREAM_BASE_URL

- echo answers GET PATH with JSON {"path": PATH, "traceparent": [every traceparent header
  it received]}.
- front answers GET PATH by calling DOWNSTREAM_BASE_URL + PATH (a new connection each time,
  on the thread serving the request) and passing the downstream's answer back.
"""
import http.server
import json
import sys
import urllib.request

mode, bind, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
downstream = sys.argv[4] if mode == "front" else None
if mode not in ("echo", "front") or (mode == "front" and not downstream):
    sys.exit(__doc__)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if mode == "echo":
            seen = {"path": self.path, "traceparent": self.headers.get_all("traceparent") or []}
            body = json.dumps(seen).encode()
        else:
            with urllib.request.urlopen(downstream + self.path, timeout=10) as r:
                body = r.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer((bind, port), Handler).serve_forever()
