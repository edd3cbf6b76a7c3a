// An event-loop leak in Node.js: with allowHalfOpen the socket stays open for writing after the
// client's FIN ('end'), and nothing ever ends it. No fork, no thread: CLOSE-WAIT, held by the
// node process itself, one more descriptor per connection.
// Run: node half_open_leak.js PORT
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
}).listen({ port, host: '127.0.0.1', backlog: 1024 });
