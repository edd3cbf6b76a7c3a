"""A chatty server that closes well: it logs a hundred long lines per connection to
stdout and stderr. The lab drains both as it goes (keeping the last lines), so the
server never blocks on a full pipe.
Run: python3 chatty.py PORT"""
import socket, sys, threading

srv = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=1024)

def handle(conn):
    for i in range(100):
        print(f"request {i}: " + "x" * 1000, flush=True)
        print(f"debug {i}: " + "y" * 1000, file=sys.stderr, flush=True)
    conn.recv(4096)
    conn.sendall(b"ok\n")
    while conn.recv(4096):
        pass
    conn.close()

while True:
    conn, _ = srv.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
