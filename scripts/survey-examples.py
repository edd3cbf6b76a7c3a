#!/usr/bin/env python3
"""Surveys one example server by hand, outside cwlab: runs it in the current network namespace
(meant to be a fresh one) and drives clients at it as `cwlab check`'s do: connect, send
`GET / HTTP/1.0\r\n\r\n`, read until EOF or a 100 ms pause, close. A sequential warm-up
(WARMUP, 4), then concurrent waves (WAVES, "50,50"); after each, once nothing is in flight: the
descriptors of every process of the server's session, the socket states on both sides (sock_diag
and /proc/net/tcp), who holds the server's CLOSE-WAIT. Then SIGTERM to the group, timed.
Prints one JSON line. It is how the rows of issue 18's truth table were first observed.
Usage: unshare -n python3 scripts/survey-examples.py NAME HOST PORT -- ARGV... ({port} is PORT)
e.g.   unshare -n python3 scripts/survey-examples.py node-leak 127.0.0.1 40000 -- \
           node examples/node/half_open_leak.js {port}"""
import json, os, re, signal, socket, subprocess, sys, tempfile, threading, time

REQ = b"GET / HTTP/1.0\r\n\r\n"
QUIET = 0.1
REPLY_TIMEOUT = float(os.environ.get("REPLY_TIMEOUT", "10"))
WAVES = [int(w) for w in os.environ.get("WAVES", "50,50").split(",")]
WARMUP = int(os.environ.get("WARMUP", "4"))

def sh(*a):
    return subprocess.run(a, capture_output=True, text=True).stdout

def session_pids(sid):
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            st = open(f"/proc/{p}/stat").read()
        except OSError:
            continue
        rest = st[st.rindex(")") + 2:].split()
        if int(rest[3]) == sid and rest[0] != "Z":
            out.append((int(p), int(rest[1]), st[st.index("(") + 1:st.rindex(")")]))
    return out  # (pid, ppid, comm)

def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None

INO = re.compile(r"ino:(\d+)")
SID = None  # the server's session: holders are looked for among its processes only

def inode_owners():
    owners = {}
    for pid, _, comm in session_pids(SID):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    t = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if t.startswith("socket:["):
                    owners.setdefault(int(t[8:-1]), set()).add((comm, pid))
        except OSError:
            pass
    return owners

def sockets():
    """[(state, local, peer, [(comm,pid)])] for every TCP socket (sock_diag, no -p: holders from
    the session's own /proc/PID/fd, as a walk of every process is slow on a busy host)."""
    rows = []
    owners = inode_owners()
    for line in sh("ss", "-tanHe").splitlines():
        f = line.split()
        if len(f) < 5:
            continue
        m = INO.search(line)
        users = sorted(owners.get(int(m.group(1)), ())) if m and m.group(1) != "0" else []
        rows.append((f[0], f[3], f[4], users))
    return rows

def port_of(addr):
    return int(addr.rsplit(":", 1)[1]) if addr.rsplit(":", 1)[1].isdigit() else None

def listeners():
    return [(l, u) for s, l, p, u in sockets() if s == "LISTEN"]

def client(host, port, res):
    t0 = time.monotonic()
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.settimeout(REPLY_TIMEOUT)
        s.connect((host, port))
        s.sendall(REQ)
        got = s.recv(16384)
        first = time.monotonic() - t0
        eof = not got
        s.settimeout(QUIET)
        while not eof:
            try:
                if not s.recv(16384):
                    eof = True
            except socket.timeout:
                break
        res.append(("ok", first, eof))
    except socket.timeout:
        res.append(("hung", None, False))
    except OSError as e:
        res.append(("failed", str(e), False))
    finally:
        s.close()

def wave(host, port, n, concurrent):
    res = []
    if concurrent:
        ts = [threading.Thread(target=client, args=(host, port, res)) for _ in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    else:
        for _ in range(n):
            client(host, port, res)
    ok = [r for r in res if r[0] == "ok"]
    return {
        "completed": len(ok), "hung": sum(r[0] == "hung" for r in res),
        "failed": sum(r[0] == "failed" for r in res),
        "first_error": next((r[1] for r in res if r[0] == "failed"), None),
        "eof": sum(r[2] for r in ok),
        "max_first_byte_ms": round(1000 * max((r[1] for r in ok), default=0)),
    }

def settle(port, sid, deadline=8.0):
    """Until no connection of the port is still in flight and descriptor counts stand still."""
    end = time.monotonic() + deadline
    busy = {"ESTAB", "SYN-RECV", "SYN-SENT", "LAST-ACK", "FIN-WAIT-1", "CLOSING"}
    last, still = None, 0
    while time.monotonic() < end:
        inflight = [s for s in sockets() if s[0] in busy and port in (port_of(s[1]), port_of(s[2]))]
        snap = sorted((p, fds(p)) for p, _, _ in session_pids(sid))
        cw = sum(1 for s in sockets() if s[0] == "CLOSE-WAIT")
        key = (snap, cw)
        still = still + 1 if key == last and not inflight else 0
        last = key
        if still >= 6:
            return True
        time.sleep(0.05)
    return False

PROC_STATES = {"01": "ESTAB", "02": "SYN-SENT", "03": "SYN-RECV", "04": "FIN-WAIT-1", "05": "FIN-WAIT-2",
               "06": "TIME-WAIT", "07": "UNCONN", "08": "CLOSE-WAIT", "09": "LAST-ACK", "0A": "LISTEN", "0B": "CLOSING"}

def proc_states(port):
    """The same count from /proc/net/tcp{,6}: a cross-check of the sock_diag dump."""
    srv, cli = {}, {}
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(f).read().splitlines()[1:]:
            x = line.split()
            st = PROC_STATES.get(x[3], x[3])
            if st == "LISTEN":
                continue
            if int(x[1].split(":")[1], 16) == port:
                srv[st] = srv.get(st, 0) + 1
            elif int(x[2].split(":")[1], 16) == port:
                cli[st] = cli.get(st, 0) + 1
    return srv, cli

def snapshot(port, sid, top):
    procs = session_pids(sid)
    srv = {}
    cli = {}
    holders = {}
    for st, l, p, users in sockets():
        if st == "LISTEN":
            continue
        if port_of(l) == port:
            srv[st] = srv.get(st, 0) + 1
            if st == "CLOSE-WAIT":
                for c, pid in set(users):
                    role = "listener" if pid == top else c
                    holders[f"{role}:{pid}"] = holders.get(f"{role}:{pid}", 0) + 1
                if not users:
                    holders["nobody"] = holders.get("nobody", 0) + 1
        elif port_of(p) == port:
            cli[st] = cli.get(st, 0) + 1
    psrv, pcli = proc_states(port)
    return {
        "proc_server_states": psrv, "proc_client_states": pcli,
        "listener_fds": fds(top),
        "all_fds": {f"{c}:{p}": fds(p) for p, _, c in procs},
        "server_states": srv, "client_states": cli, "close_wait_holders": holders,
    }

def main():
    global SID
    name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    argv = [a.replace("{port}", str(port)) for a in sys.argv[sys.argv.index("--") + 1:]]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    tmp_before = set(os.listdir("/tmp"))
    log = tempfile.TemporaryFile("w+")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True,
                            env=dict(os.environ, PORT=str(port)))
    sid = proc.pid
    SID = sid
    row = {"name": name, "argv": " ".join(argv)}
    top = None
    # Start-up: until a LISTEN shows (cheap polls of the namespace's dump, nothing else).
    while time.monotonic() - t0 < 60 and proc.poll() is None:
        if any(l.split()[0] == "LISTEN" for l in sh("ss", "-tlnH").splitlines()):
            break
        time.sleep(0.005)
    row["startup_ms"] = round(1000 * (time.monotonic() - t0))
    while time.monotonic() - t0 < 60 and proc.poll() is None:
        ls = listeners()
        mine = [(l, u) for l, u in ls if any(p in {q for q, _, _ in session_pids(sid)} for _, p in u)]
        ours = [(l, u) for l, u in mine if port_of(l) == port]
        if mine and not ours:
            time.sleep(0.3)
            row["listens_elsewhere"] = [l for l, _ in listeners()]
            break
        if ours:
            row["listen"] = ours[0][0]
            pids = {p for _, p in ours[0][1]}
            ppid = {p: pp for p, pp, _ in session_pids(sid)}
            top = min((p for p in pids if ppid.get(p) not in pids), default=min(pids))
            row["listen_holders"] = sorted(pids)
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        row["exited"] = proc.returncode
    if top is None:
        row["dial"] = wave(host, port, 1, False)
    else:
        row["listener"] = top
        row["top_is_started_process"] = top == proc.pid
        time.sleep(0.2)
        row["before"] = snapshot(port, sid, top)
        row["warmup"] = wave(host, port, WARMUP, False)
        settle(port, sid)
        row["after_warmup"] = snapshot(port, sid, top)
        total = WARMUP
        for i, n in enumerate(WAVES):
            w = wave(host, port, n, True)
            total += n
            row[f"wave{i + 1}"] = w
            row[f"settled{i + 1}"] = settle(port, sid)
            row[f"after_{sum(WAVES[:i + 1])}"] = snapshot(port, sid, top)
    # Stop as the lab does: SIGTERM to the group, then wait for every process of the session.
    t1 = time.monotonic()
    try:
        os.killpg(sid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    while time.monotonic() - t1 < 5:
        proc.poll()
        if not session_pids(sid):
            break
        time.sleep(0.01)
    row["stop_ms"] = round(1000 * (time.monotonic() - t1))
    left = session_pids(sid)
    if left:
        row["left_after_5s"] = left
        os.killpg(sid, signal.SIGKILL)
    proc.wait()
    row["exit"] = proc.returncode
    time.sleep(0.1)
    row["tmp_left"] = sorted(x for x in set(os.listdir("/tmp")) - tmp_before if x.startswith("tmp."))
    log.seek(0)
    row["output"] = log.read()[-400:]
    print(json.dumps(row))

main()
