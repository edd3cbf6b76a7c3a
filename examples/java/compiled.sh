#!/bin/sh
# Runs one of these single-file servers the way Java servers usually run: compiled first (javac,
# into a temporary folder removed when it stops), then `java -cp`. Run so, a JVM opens its
# AF_UNIX pre-close descriptor lazily, on the first connection it closes; `java FILE.java`
# opens it before the server listens, while javac reads the source.
# Run: sh examples/java/compiled.sh CloseWithResources.java PORT
src=${1:?usage: compiled.sh FILE.java PORT}
port=${2:-${PORT:?usage: compiled.sh FILE.java PORT}}
dir=$(mktemp -d) || exit 1
trap 'rm -rf "$dir"' EXIT
javac -d "$dir" "$(dirname "$0")/$src" || exit 1
java -cp "$dir" "$(basename "$src" .java)" "$port" &
pid=$!
# The JVM gets the signal that stopped this script (TERM from the lab, ^C by hand), and the
# temporary folder goes once it has exited.
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
status=0
wait "$pid" 2>/dev/null || status=$? # 2>/dev/null: no "Terminated" from the shell
kill -0 "$pid" 2>/dev/null && { wait "$pid" 2>/dev/null || status=$?; }
exit "$status"
