"""A helper inherits the connection: the child starts a long-lived program with the
socket passed on (as close_fds=False or a missing CLOEXEC would), then reads to EOF
and closes. The helper's copy keeps the socket open: CLOSE-WAIT, held by the helper.
Run: python3 exec_helper.py PORT"""
import os, signal, socket, subprocess, sys

signal.signal(signal.SIGCHLD, signal.SIG_IGN)
srv = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=1024)
while True:
    conn, _ = srv.accept()
    if os.fork() == 0:
        srv.close()
        subprocess.Popen(["sleep", "3600"], pass_fds=[conn.fileno()])  # the bug
        conn.recv(4096)
        conn.sendall(b"ok\n")
        while conn.recv(4096):
            pass
        conn.close()
        os._exit(0)
    conn.close()
