"""A requests.Session used for every request, one at a time: its pool keeps one connection and
finds it closed only when the next request takes it. One CLOSE-WAIT between bursts, cleared by
each: bounded.
Run: python3 python_requests.py URL"""
import sys, time
import requests

s = requests.Session()
for _ in range(3):
    for _ in range(5):
        s.get(sys.argv[1]).content
    time.sleep(0.6)
time.sleep(1.5)
