// The fix of half_open_leak.js: the same allowHalfOpen server ends its side on 'end', so the
// client's FIN is answered by the server's. Clean.
// Run: node closes.js PORT
const net = require('net');

const port = Number(process.argv[2] || process.env.PORT);
const reply = 'HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n';

net.createServer({ allowHalfOpen: true }, (socket) => {
  let replied = false;
  socket.on('data', () => {
    if (!replied) socket.write(reply);
    replied = true;
  });
  socket.on('end', () => socket.end()); // the fix
}).listen({ port, host: '127.0.0.1', backlog: 1024 });
