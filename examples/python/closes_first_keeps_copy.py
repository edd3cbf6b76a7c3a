"""The server speaks and closes first, but the parent keeps its copy: the child replies and
close()s, no FIN goes out, and a client waiting for the server's EOF (`--read eof`) waits in
vain. When it gives up and closes, the server's socket sits in CLOSE-WAIT, held by the parent.
Run: python3 closes_first_keeps_copy.py PORT"""
import os, signal, socket, sys

signal.signal(signal.SIGCHLD, signal.SIG_IGN)
srv = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=1024)
kept = []
while True:
    conn, _ = srv.accept()
    if os.fork() == 0:
        srv.close()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nbye\n")
        conn.close()  # the server is done; the parent's copy keeps the FIN from going out
        os._exit(0)
    kept.append(conn)
