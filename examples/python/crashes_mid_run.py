"""A server that crashes after its tenth connection: the clients after it are refused,
and the lab says the server went away, with its exit status and last lines.
Run: python3 crashes_mid_run.py PORT"""
import os, socket, sys

srv = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=1024)
for n in range(10):
    conn, _ = srv.accept()
    conn.recv(4096)
    conn.sendall(b"ok\n")
print("fatal: out of memory in the request parser", file=sys.stderr, flush=True)
os._exit(7)
