"""A threaded server whose handler reads to EOF and returns without closing; the
socket object is kept in a list, so nothing ever closes it. No fork anywhere:
CLOSE-WAIT, held by the listening process itself.
Run: python3 threaded_never_closes.py PORT"""
import socket, sys, threading

srv = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=1024)
seen = []

def handle(conn):
    conn.recv(4096)
    conn.sendall(b"ok\n")
    while conn.recv(4096):
        pass
    seen.append(conn)  # the bug: no close()

while True:
    conn, _ = srv.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
