#!/bin/sh
# openbsd-inetd running micro-httpd, both from Debian's packages: inetd listens on
# 127.0.0.1:PORT in the foreground (-i) and, for each connection, forks and execs micro-httpd
# with the connection as its stdin and stdout; micro-httpd serves a static page from a folder
# of its own (removed when it stops) and exits. A real server that closes well: clean.
# inetd stops a service started more than 256 times a minute: this one may start 1000.
# Run: sh examples/debian/inetd-micro-httpd.sh PORT
port=${1:-${PORT:?usage: inetd-micro-httpd.sh PORT}}
dir=$(mktemp -d) || exit 1
trap 'rm -rf "$dir"' EXIT
mkdir "$dir/www"
echo '<p>ok</p>' >"$dir/www/index.html"
echo "127.0.0.1:$port stream tcp4 nowait.1000 root /usr/sbin/micro-httpd micro-httpd $dir/www" \
    >"$dir/inetd.conf"
inetd -i -q 1024 "$dir/inetd.conf" &
pid=$!
# The server gets the signal that stopped this script (TERM from the lab, ^C by hand), and the
# temporary folder goes once it has exited.
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
status=0
wait "$pid" 2>/dev/null || status=$? # 2>/dev/null: no "Terminated" from the shell
kill -0 "$pid" 2>/dev/null && { wait "$pid" 2>/dev/null || status=$?; }
exit "$status"
