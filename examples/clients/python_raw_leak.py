"""A line-protocol client (no HTTP): each request on a new TCP connection, one line sent and its
echo read, the socket kept in a list and never read again. For `cwlab check --client --protocol
raw`, whose server echoes each line and closes a connection once it has been idle: each closed
one waits in CLOSE-WAIT in this process, one more per request.
Run: python3 python_raw_leak.py HOST PORT"""
import socket, sys, time

kept = []
for _ in range(3):
    for _ in range(5):
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
        s.sendall(b"PING\n")
        s.recv(64)
        kept.append(s)
    time.sleep(0.6)
time.sleep(1.5)
