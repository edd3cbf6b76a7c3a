"""The fork leak on ::1 only (IPV6_V6ONLY): the parent keeps its copy of every accepted
socket; the child serves, reads to EOF and only close()s. No FIN: CLOSE-WAIT, held by the
parent. A client dialling 127.0.0.1 is refused: it must dial [::1].
Run: python3 ipv6_fork_leak.py PORT"""
import os, signal, socket, sys

signal.signal(signal.SIGCHLD, lambda *_: None)
port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ["PORT"])
srv = socket.create_server(("::1", port), family=socket.AF_INET6, backlog=1024)
kept = []  # the bug: the parent's copies live on
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
    kept.append(conn)
