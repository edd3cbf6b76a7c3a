"""A slow closer: after the client's FIN the handler finishes some work (half a
second) and then closes. CLOSE-WAIT rises and drains: not a leak.
Run: python3 slow_close.py PORT"""
import socket, sys, threading, time

srv = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=1024)

def handle(conn):
    conn.recv(4096)
    conn.sendall(b"ok\n")
    while conn.recv(4096):
        pass
    time.sleep(0.5)  # writing a log, flushing a cache
    conn.close()

while True:
    conn, _ = srv.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
