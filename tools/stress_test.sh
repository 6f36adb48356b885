#!/usr/bin/env bash
# Run the test suite N times in a row while CPU hogs run (no test may depend on an idle machine).
#
#   tools/stress_test.sh [N]        default N=10
#   HOGS=2 TARGET=test-qgis340 PYTEST_ARGS="-x" tools/stress_test.sh 3
#
# HOGS (default 1): busy-looping processes started beside the suite (1 takes a whole core of a 2-core
# machine). TARGET (default test): the make target (test-qgis340 for Debian 13). Logs of each round go
# to build/stress/round_<i>.log; the summary line of each round is printed. The hogs are ended (by their
# process ids) on any exit. Exit 0 only when every round passed.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${1:-10}"
hogs="${HOGS:-1}"
target="${TARGET:-test}"
logs=build/stress
mkdir -p "$logs"

make setup >/dev/null

hog_pids=()
stop_hogs() {
  local pid
  for pid in "${hog_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${hog_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  hog_pids=()
}
trap stop_hogs EXIT
trap 'exit 130' INT TERM
for ((h = 0; h < hogs; h++)); do
  /usr/bin/python3 -c "while True: pass" &
  hog_pids+=("$!")
done
echo "stress: $rounds round(s) of 'make $target' beside $hogs CPU hog(s) (pids ${hog_pids[*]}) on $(nproc) cores"

failed=0
for ((i = 1; i <= rounds; i++)); do
  start=$SECONDS
  rc=0
  make "$target" PYTEST_ARGS="${PYTEST_ARGS:-}" >"$logs/round_$i.log" 2>&1 || rc=$?
  summary="$(grep -E '^=+ .*(passed|failed|error).* =+$' "$logs/round_$i.log" | tail -n1 || true)"
  echo "stress: round $i/$rounds: exit $rc in $((SECONDS - start)) s, load $(cut -d' ' -f1 /proc/loadavg): ${summary:-no pytest summary}"
  if [ "$rc" != 0 ]; then
    failed=$((failed + 1))
    grep -E '^(FAILED|ERROR) ' "$logs/round_$i.log" | sed 's/^/stress:   /' || true
  fi
done
echo "stress: $((rounds - failed)) of $rounds round(s) passed"
[ "$failed" = 0 ]
