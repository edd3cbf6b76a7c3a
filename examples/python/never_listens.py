"""A server that never listens (it waits for something that never comes).
Run: python3 never_listens.py PORT"""
import time

print("waiting for the database", flush=True)
while True:
    time.sleep(3600)
