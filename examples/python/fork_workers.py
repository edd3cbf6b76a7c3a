"""Forked background workers: the server serves every connection itself and, for
each, forks a worker that never execs and lives on. Each worker inherits every
connection open when it was born; the server closes its own, the workers' copies
stay: CLOSE-WAIT, held by forked workers that never handled them.
Run: python3 fork_workers.py PORT"""
import os, selectors, signal, socket, sys, time

signal.signal(signal.SIGCHLD, signal.SIG_IGN)
srv = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=1024)
sel = selectors.DefaultSelector()
sel.register(srv, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is srv:
            conn, _ = srv.accept()
            sel.register(conn, selectors.EVENT_READ)
            if os.fork() == 0:  # a background worker, e.g. a cache refresher
                while True:
                    time.sleep(3600)
        else:
            data = key.fileobj.recv(4096)
            if data:
                key.fileobj.sendall(b"ok\n")
            else:
                sel.unregister(key.fileobj)
                key.fileobj.close()
