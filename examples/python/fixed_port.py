"""A server that ignores the port it is given and always listens on 8080: it closes every
connection well, but nothing reaches it on the port the lab gave it.
Run: python3 fixed_port.py PORT"""
import socket, threading

srv = socket.create_server(("127.0.0.1", 8080), backlog=1024)  # the bug: sys.argv[1] unread

def handle(conn):
    with conn:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        while conn.recv(4096):
            pass

while True:
    conn, _ = srv.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
