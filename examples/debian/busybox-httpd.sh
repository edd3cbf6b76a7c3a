#!/bin/sh
# busybox httpd from Debian's busybox, in the foreground (-f): it forks a process per
# connection, which serves a static page from a folder of its own (removed when it stops) and
# exits. A real server that closes well: clean.
# Run: sh examples/debian/busybox-httpd.sh PORT
port=${1:-${PORT:?usage: busybox-httpd.sh PORT}}
dir=$(mktemp -d) || exit 1
trap 'rm -rf "$dir"' EXIT
echo '<p>ok</p>' >"$dir/index.html"
busybox httpd -f -p "127.0.0.1:$port" -h "$dir" &
pid=$!
# The server gets the signal that stopped this script (TERM from the lab, ^C by hand), and the
# temporary folder goes once it has exited.
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
status=0
wait "$pid" 2>/dev/null || status=$? # 2>/dev/null: no "Terminated" from the shell
kill -0 "$pid" 2>/dev/null && { wait "$pid" 2>/dev/null || status=$?; }
exit "$status"
