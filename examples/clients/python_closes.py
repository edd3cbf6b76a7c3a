"""A client that closes each connection when its response is read: nothing is left for the
server's FIN to find. Clean.
Run: python3 python_closes.py URL"""
import http.client, sys, time, urllib.parse

url = urllib.parse.urlsplit(sys.argv[1])
for _ in range(3):
    for _ in range(5):
        c = http.client.HTTPConnection(url.hostname, url.port)
        c.request("GET", "/")
        c.getresponse().read()
        c.close()
    time.sleep(0.6)
time.sleep(1.5)
