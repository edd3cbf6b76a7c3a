// half_open_leak.js listening on ::1 only: the same event-loop leak (CLOSE-WAIT held by the node
// process), which a client dialling 127.0.0.1 never reaches: it is refused.
// Run: node ipv6_only_leak.js PORT
const net = require('net');

const port = Number(process.argv[2] || process.env.PORT);
const reply = 'HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n';

net.createServer({ allowHalfOpen: true }, (socket) => {
  let replied = false;
  socket.on('data', () => {
    if (!replied) socket.write(reply);
    replied = true;
  });
  socket.on('end', () => {}); // the bug: no socket.end()
}).listen({ port, host: '::1', ipv6Only: true, backlog: 1024 });
