#!/bin/sh
# lighttpd from Debian's lighttpd: one event-loop process in the foreground (-D) serving a
# static page on 127.0.0.1:PORT, configured in a folder of its own, removed when it stops.
# A real server that closes well: clean.
# Run: sh examples/debian/lighttpd.sh PORT
port=${1:-${PORT:?usage: lighttpd.sh PORT}}
dir=$(mktemp -d) || exit 1
trap 'rm -rf "$dir"' EXIT
echo '<p>ok</p>' >"$dir/index.html"
cat >"$dir/lighttpd.conf" <<CONF
server.document-root = "$dir"
server.bind = "127.0.0.1"
server.port = $port
server.errorlog = "$dir/error.log"
server.upload-dirs = ( "$dir" )
server.listen-backlog = 1024
index-file.names = ( "index.html" )
mimetype.assign = ( ".html" => "text/html" )
CONF
lighttpd -D -f "$dir/lighttpd.conf" &
pid=$!
# The server gets the signal that stopped this script (TERM from the lab, ^C by hand), and the
# temporary folder goes once it has exited.
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
status=0
wait "$pid" 2>/dev/null || status=$? # 2>/dev/null: no "Terminated" from the shell
kill -0 "$pid" 2>/dev/null && { wait "$pid" 2>/dev/null || status=$?; }
exit "$status"
