"""A server that ignores SIGTERM (and closes well): at the end of a check it is still
running after the grace, and goes with SIGKILL of its namespace.
Run: python3 ignores_sigterm.py PORT"""
import signal, socket, sys, threading

signal.signal(signal.SIGTERM, signal.SIG_IGN)
srv = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=1024)

def handle(conn):
    conn.recv(4096)
    conn.sendall(b"ok\n")
    while conn.recv(4096):
        pass
    conn.close()

while True:
    conn, _ = srv.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
