"""A threaded server that opens its log file lazily, on its first connection, and keeps it;
every connection is read to EOF and closed. Clean: one descriptor more once, not one per
connection.
Run: python3 lazy_log.py PORT"""
import os, socket, sys, tempfile, threading

port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ["PORT"])
srv = socket.create_server(("127.0.0.1", port), backlog=1024)
log = None
lock = threading.Lock()

def handle(conn):
    global log
    with conn:
        request = conn.recv(4096)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        while conn.recv(4096):
            pass
    with lock:
        if log is None:
            log = tempfile.TemporaryFile("w")  # opened once, kept for the life of the server
        log.write(request.split(b"\r\n", 1)[0].decode(errors="replace") + "\n")

while True:
    conn, _ = srv.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
