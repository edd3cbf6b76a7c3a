"""The real fix: the parent closes its copy right after fork(); the child serves,
reads to EOF and close()s, and that last reference sends the FIN.
Run: python3 parent_closes.py PORT"""
import os, signal, socket, sys

signal.signal(signal.SIGCHLD, lambda *_: None)
srv = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=1024)
while True:
    try:
        conn, _ = srv.accept()
    except InterruptedError:
        continue
    finally:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
    if os.fork() == 0:
        srv.close()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        while conn.recv(4096):
            pass
        conn.close()
        os._exit(0)
    conn.close()  # the fix
