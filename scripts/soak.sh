#!/usr/bin/env bash
# make soak: every scenario 50 times in a row, then 8 at once, then 50 in a row with both cores
# kept busy by two spinning processes. Prints pass counts per scenario; exits 1 on any failure.
# Failing runs keep their report and summary in target/soak/.
set -u
cd "$(dirname "$0")/.."
CWLAB=${CWLAB:-target/release/cwlab}
ROUNDS=${SOAK_ROUNDS:-50}
PARALLEL=${SOAK_PARALLEL:-8}
out=target/soak
rm -rf "$out"; mkdir -p "$out"
scenarios=$(ls scenarios/*.toml | xargs -n1 basename | sed 's/\.toml$//')
declare -A pass total
failed=0

one() { # name label i
  local name=$1 label=$2 i=$3
  "$CWLAB" run "scenarios/$name.toml" --report "$out/$name-$label-$i.json" > "$out/$name-$label-$i.txt" 2>&1
}

tally() { # name rc
  total[$1]=$(( ${total[$1]:-0} + 1 ))
  if [ "$2" = 0 ]; then pass[$1]=$(( ${pass[$1]:-0} + 1 )); else failed=1; fi
}

stage() { echo "== $1"; }

stage "$ROUNDS in a row"
for name in $scenarios; do
  for i in $(seq 1 "$ROUNDS"); do one "$name" seq "$i"; tally "$name" $?; done
done

stage "$PARALLEL at once"
for name in $scenarios; do
  pids=()
  for i in $(seq 1 "$PARALLEL"); do one "$name" par "$i" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p"; tally "$name" $?; done
done

stage "$ROUNDS in a row, both cores busy"
spin() { while :; do :; done; }
spin & s1=$!; spin & s2=$!
trap 'kill $s1 $s2 2>/dev/null' EXIT
for name in $scenarios; do
  for i in $(seq 1 "$ROUNDS"); do one "$name" busy "$i"; tally "$name" $?; done
done
kill $s1 $s2 2>/dev/null; trap - EXIT

echo
for name in $scenarios; do
  printf '%-16s %d of %d passed\n' "$name" "${pass[$name]:-0}" "${total[$name]}"
done
# Keep only the failures.
for f in "$out"/*.txt; do
  grep -q '^  PASS' "$f" && rm -f "$f" "${f%.txt}.json"
done
if [ "$failed" != 0 ]; then echo "soak: failures kept in $out/"; exit 1; fi
echo "soak: every run passed"
