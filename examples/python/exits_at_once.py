"""A server that fails before it listens (a bad configuration).
Run: python3 exits_at_once.py PORT"""
import sys

print("loading configuration from /etc/example.conf", flush=True)
print("error: no such file: /etc/example.conf", file=sys.stderr, flush=True)
sys.exit(3)
