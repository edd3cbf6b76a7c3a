#!/bin/sh
# nginx from Debian's nginx-light: a master and 2 workers serving a static page on
# 127.0.0.1:PORT, with a minimal configuration (pid, logs, temporary files) in a folder of its
# own, removed when it stops. A real server that closes well: clean.
# Run: sh examples/debian/nginx.sh PORT
port=${1:-${PORT:?usage: nginx.sh PORT}}
dir=$(mktemp -d) || exit 1
trap 'rm -rf "$dir"' EXIT
echo '<p>ok</p>' >"$dir/index.html"
# As root, the workers run as root too: they must read a folder that may be root's alone.
[ "$(id -u)" = 0 ] && user="user root root;" || user=""
cat >"$dir/nginx.conf" <<CONF
$user
daemon off;
master_process on;
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 1024; }
http {
    access_log $dir/access.log;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    default_type text/html;
    server {
        listen 127.0.0.1:$port backlog=1024;
        root $dir;
    }
}
CONF
nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" &
pid=$!
# The server gets the signal that stopped this script (TERM from the lab, ^C by hand), and the
# temporary folder goes once it has exited.
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
status=0
wait "$pid" 2>/dev/null || status=$? # 2>/dev/null: no "Terminated" from the shell
kill -0 "$pid" 2>/dev/null && { wait "$pid" 2>/dev/null || status=$?; }
exit "$status"
