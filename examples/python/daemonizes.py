"""A server that daemonizes (double fork, setsid) and then leaks like fork_leak.py.
The command returns at once; the daemon lives on, out of the caller's process group:
the lab's PID namespace still holds it, sees its leak, and stops it with the run.
Run: python3 daemonizes.py PORT"""
import os, runpy, sys

if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fork_leak.py"),
               run_name="__main__")
