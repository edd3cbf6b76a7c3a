"""A client that keeps every connection it opened and never looks at them again: each request
opens a new http.client.HTTPConnection, reads the response, and keeps the connection in a list (a
cache nobody reads). The server closes each after its keep-alive timeout; the kernel acknowledges
the FIN and the socket waits in CLOSE-WAIT in this process: one more per request.
Run: python3 python_leak.py URL"""
import http.client, sys, time, urllib.parse

url = urllib.parse.urlsplit(sys.argv[1])
kept = []
for _ in range(3):
    for _ in range(5):
        c = http.client.HTTPConnection(url.hostname, url.port)
        c.request("GET", "/")
        c.getresponse().read()
        kept.append(c)
    time.sleep(0.6)
time.sleep(1.5)
