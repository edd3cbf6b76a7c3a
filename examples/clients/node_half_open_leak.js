// A hand-made pool of raw sockets opened with allowHalfOpen: true: each request on a new socket,
// kept after its response and never ended. The server's FIN is read as 'end' and nothing
// follows: each socket waits in CLOSE-WAIT. One more per request: a leak.
// Run: node node_half_open_leak.js URL
const net = require('net');
const { hostname, port } = new URL(process.argv[2]);
const kept = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const get = () => new Promise((ok, ko) => {
  const s = net.connect({ host: hostname, port, allowHalfOpen: true }, () => {
    s.write(`GET / HTTP/1.1\r\nHost: ${hostname}\r\n\r\n`);
  });
  s.once('data', () => { kept.push(s); ok(); });
  s.on('error', ko);
});
(async () => {
  for (let i = 0; i < 3; i++) {
    for (let j = 0; j < 5; j++) await get();
    await sleep(600);
  }
  await sleep(1500);
  process.exit(0);
})();
