"""A thread pool that grows lazily: a worker thread, each with an eventfd to be woken by, is
started only when every worker is busy, up to 8; then connections wait for a free worker.
Every connection is read to EOF and closed. Clean: the descriptors grow by at most 8, once,
however many connections come.
Run: python3 threaded_lazy_pool.py PORT"""
import os, socket, sys, threading

MAX_WORKERS = 8
port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ["PORT"])
srv = socket.create_server(("127.0.0.1", port), backlog=1024)
free = threading.Condition()
idle, pool = [], []

class Worker:
    def __init__(self):
        self.wake = os.eventfd(0)
        self.conn = None
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while True:
            os.eventfd_read(self.wake)
            with self.conn as conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                while conn.recv(4096):
                    pass
            with free:
                idle.append(self)
                free.notify()

def worker():
    with free:
        while not idle and len(pool) >= MAX_WORKERS:
            free.wait()
        if idle:
            return idle.pop()
        pool.append(Worker())
        return pool[-1]

while True:
    conn, _ = srv.accept()
    w = worker()
    w.conn = conn
    os.eventfd_write(w.wake, 1)
