"""A client of tests/traces.rs whose application sets W3C trace context: on one keep-alive
connection to 127.0.0.1:PORT it sends, in order, GET PATH with the header
`traceparent: TRACEPARENT` for each pair, reads each answer before the next request, and
prints each status on its own line. It then stays alive for a second (so its identity can
still be read from /proc) and exits.

usage: traceparent_client.py PORT PATH TRACEPARENT [PATH TRACEPARENT ...]
"""
import http.client
import sys
import time

port = int(sys.argv[1])
pairs = sys.argv[2:]
if not pairs or len(pairs) % 2:
    sys.exit("usage: traceparent_client.py PORT PATH TRACEPARENT [PATH TRACEPARENT ...]")

conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
for path, traceparent in zip(pairs[0::2], pairs[1::2]):
    conn.request("GET", path, headers={"traceparent": traceparent})
    r = conn.getresponse()
    r.read()
    print(r.status, flush=True)
conn.close()
time.sleep(1)
