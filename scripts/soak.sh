#!/usr/bin/env bash
# make soak: every scenario 50 times in a row, then 8 at once, then 50 in a row with both cores
# kept busy by two spinning processes; then cwlab check's truth table (tests/check.rs, every row)
# 3 times in a row with both cores busy. Prints pass counts per scenario and per row; exits 1 on
# any failure. Failing runs keep their report and summary in target/soak/.
set -u
cd "$(dirname "$0")/.."
CWLAB=${CWLAB:-target/$(rustc -vV | sed -n "s/^host: //p")/release/cwlab}
ROUNDS=${SOAK_ROUNDS:-50}
PARALLEL=${SOAK_PARALLEL:-8}
STAGES=${SOAK_STAGES:-seq par busy check}   # any of: seq par busy check
CHECK_ROUNDS=${SOAK_CHECK_ROUNDS:-3}
out=target/soak
rm -rf "$out"; mkdir -p "$out"
scenarios=${SOAK_ONLY:-$(ls scenarios/*.toml | xargs -n1 basename | sed 's/\.toml$//')}
seq_only=${SOAK_SEQ_ONLY:-$scenarios}   # the scenarios the first stage runs

# Every handler is a process: 8 runs of `scale` at once would need 80,000 of them, more than
# kernel.pid_max (32,768 here). A scenario runs at most as many at once as 60% of pid_max allows.
at_once() { # name
  local clients pid_max
  clients=$(grep -m1 '^count' "scenarios/$1.toml" | tr -dc 0-9)
  pid_max=$(cat /proc/sys/kernel/pid_max)
  local cap=$(( pid_max * 6 / 10 / (clients + 10) ))
  [ "$cap" -lt 1 ] && cap=1
  [ "$cap" -lt "$PARALLEL" ] && echo "$cap" || echo "$PARALLEL"
}
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

case " $STAGES " in *" seq "*)
  stage "$ROUNDS in a row"
  for name in $seq_only; do
    for i in $(seq 1 "$ROUNDS"); do one "$name" seq "$i"; tally "$name" $?; done
  done;;
esac

case " $STAGES " in *" par "*)
  stage "$PARALLEL at once"
  for name in $scenarios; do
    n=$(at_once "$name")
    [ "$n" != "$PARALLEL" ] && echo "   $name: $n at once (pid_max)"
    pids=()
    for i in $(seq 1 "$n"); do one "$name" par "$i" & pids+=($!); done
    for p in "${pids[@]}"; do wait "$p"; tally "$name" $?; done
  done;;
esac

case " $STAGES " in *" busy "*)
  stage "$ROUNDS in a row, both cores busy"
  spin() { while :; do :; done; }
  spin & s1=$!; spin & s2=$!
  trap 'kill $s1 $s2 2>/dev/null' EXIT
  for name in $scenarios; do
    for i in $(seq 1 "$ROUNDS"); do one "$name" busy "$i"; tally "$name" $?; done
  done
  kill $s1 $s2 2>/dev/null; trap - EXIT;;
esac

declare -A row_pass row_total
case " $STAGES " in *" check "*)
  stage "cwlab check's truth table, $CHECK_ROUNDS times in a row, both cores busy"
  spin() { while :; do :; done; }
  spin & s1=$!; spin & s2=$!
  trap 'kill $s1 $s2 2>/dev/null' EXIT
  for i in $(seq 1 "$CHECK_ROUNDS"); do
    cargo test --test check -- --test-threads 1 > "$out/check-$i.txt" 2>&1
    while read -r test result; do
      row_total[$test]=$(( ${row_total[$test]:-0} + 1 ))
      if [ "$result" = ok ]; then row_pass[$test]=$(( ${row_pass[$test]:-0} + 1 )); else failed=1; fi
    done < <(sed -n 's/^test \([a-z0-9_]*\) \.\.\. \(ok\|FAILED\)$/\1 \2/p' "$out/check-$i.txt")
    grep -q '^test result: ok' "$out/check-$i.txt" && rm -f "$out/check-$i.txt"
  done
  kill $s1 $s2 2>/dev/null; trap - EXIT;;
esac

echo
for name in $scenarios; do
  [ -n "${total[$name]:-}" ] || continue
  printf '%-30s %d of %d passed\n' "$name" "${pass[$name]:-0}" "${total[$name]:-0}"
done
for test in $(printf '%s\n' "${!row_total[@]}" | sort); do
  printf '%-60s %d of %d passed\n' "$test" "${row_pass[$test]:-0}" "${row_total[$test]}"
done
# Keep only the failures.
for f in "$out"/*.txt; do
  grep -q '^  PASS' "$f" && rm -f "$f" "${f%.txt}.json"
done
if [ "$failed" != 0 ]; then echo "soak: failures kept in $out/"; exit 1; fi
echo "soak: every run passed"
