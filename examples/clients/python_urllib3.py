"""urllib3's pool (what requests uses): in each burst 5 threads hold a response at once, so the
pool keeps 5 connections. It looks at a connection only when it next takes it
(is_connection_dropped): the ones the server closed between bursts wait in CLOSE-WAIT until the
next burst finds and closes them. At most 5, cleared by every burst: bounded ("expected with
bursty traffic", urllib3 #2100).
Run: python3 python_urllib3.py URL"""
import sys, threading, time
import urllib3

pool = urllib3.PoolManager(maxsize=5)
together = threading.Barrier(5)

def one():
    r = pool.request("GET", sys.argv[1], preload_content=False)
    together.wait()  # five connections in use at once: the pool keeps five
    r.read()
    r.release_conn()

for _ in range(3):
    threads = [threading.Thread(target=one) for _ in range(5)]
    for t in threads: t.start()
    for t in threads: t.join()
    time.sleep(0.6)
time.sleep(1.5)
