// The event-loop service of tests/traces.rs: for each GET /loop/<marker> it waits DELAY_MS
// (setTimeout), then makes GET /down/<marker> to the downstream server, then answers 200
// "loop <marker>" (502 with the reason if the downstream call fails). Other paths: 404.
// Every request is served on node's one event-loop thread, so with concurrent clients the
// thread serves several requests when a downstream call starts, and the downstream path is
// never the path of a request being served.
//
// usage: node fanout.js PORT DOWN_PORT [DELAY_MS (50)]
// It exits when its parent does (or on SIGTERM).
'use strict';
const http = require('http');

const port = Number(process.argv[2]);
const downPort = Number(process.argv[3]);
const delay = Number(process.argv[4] || 50);
if (!port || !downPort) {
  console.error('usage: node fanout.js PORT DOWN_PORT [DELAY_MS]');
  process.exit(2);
}

function answer(res, status, text) {
  res.writeHead(status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

const server = http.createServer((req, res) => {
  req.resume();
  const prefix = '/loop/';
  if (!req.url.startsWith(prefix)) {
    answer(res, 404, 'not found\n');
    return;
  }
  const marker = req.url.slice(prefix.length);
  setTimeout(() => {
    const down = http.get({ host: '127.0.0.1', port: downPort, path: `/down/${marker}` }, (r) => {
      r.resume();
      r.on('end', () => {
        if (r.statusCode === 200) answer(res, 200, `loop ${marker}\n`);
        else answer(res, 502, `downstream answered ${r.statusCode}\n`);
      });
    });
    down.setTimeout(10000, () => down.destroy(new Error('downstream timed out')));
    down.on('error', (e) => answer(res, 502, `downstream: ${e.message}\n`));
  }, delay);
});
server.listen(port, '127.0.0.1', () => console.log(`listening on ${port}`));

const parent = process.ppid;
setInterval(() => {
  if (process.ppid !== parent) process.exit(0);
}, 500).unref();
