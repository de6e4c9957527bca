// The leaf service of tests/traces.rs: answers every request 200 "leaf <path>" (node's
// `http` module, keep-alive as node's default).
//
// usage: node leaf.js PORT
// It exits when its parent does (or on SIGTERM).
'use strict';
const http = require('http');

const port = Number(process.argv[2]);
if (!port) {
  console.error('usage: node leaf.js PORT');
  process.exit(2);
}

const server = http.createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    const body = `leaf ${req.url}\n`;
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
});
server.listen(port, '127.0.0.1', () => console.log(`listening on ${port}`));

const parent = process.ppid;
setInterval(() => {
  if (process.ppid !== parent) process.exit(0);
}, 500).unref();
