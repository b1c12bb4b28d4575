#!/usr/bin/env bash
# Switchover and failover figures (bench/README.md, Switchover): builds and runs
# bench/switchover_bench (a Patroni cluster of the tests' fixture, a
# query_server on it, open-loop reads and writes while the leader changes) and
# writes bench/results/switchover-<date>.md and .jsonl. Not part of `make
# bench` or `make test`. Needs root, Debian's patroni and etcd-server (make deps).
#
#   bench/switchover.sh [switchover|failover|both] [rounds=1] [-- switchover_bench flags]
#   BENCH_SKIP_BUILD=1 BENCH_OUT=/tmp/x bench/switchover.sh both 3 -- --write_rate=200
# BENCH_NOTE=TEXT adds a line to the report (e.g. that the machine was shared).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-both}
ROUNDS=${2:-1}
shift $(($# < 2 ? $# : 2))
[[ ${1:-} == -- ]] && shift
BAZEL=${BAZEL:-bazel}
OUT=${BENCH_OUT:-bench/results}
if [[ -z ${BENCH_SKIP_BUILD:-} ]]; then
  "$BAZEL" build --jobs="${BENCH_JOBS:-2}" //bench:switchover_bench >&2
fi
BIN=$("$BAZEL" info bazel-bin 2>/dev/null) || { echo "bazel info failed" >&2; exit 1; }
[[ -x $BIN/bench/switchover_bench ]] || { echo "missing $BIN/bench/switchover_bench" >&2; exit 1; }
day=$(date -u +%Y-%m-%d)
mkdir -p "$OUT"
jsonl=$OUT/switchover-$day.jsonl
: >"$jsonl"
# The query_servers' configurations and logs (the fixture's TEST_TMPDIR):
# removed after a successful run, kept after a failed one.
TEST_TMPDIR=$(mktemp -d /tmp/poolside-switchover.XXXXXX)
export TEST_TMPDIR
rc=0
"$BIN/bench/switchover_bench" --mode="$MODE" --rounds="$ROUNDS" --json_out="$jsonl" "$@" || rc=$?
if ((rc == 0)); then rm -rf "$TEST_TMPDIR"; else echo "logs kept in $TEST_TMPDIR" >&2; fi
cmd="bench/switchover.sh $MODE $ROUNDS${*:+ -- $*}"
python3 bench/report.py switchover --results "$jsonl" --md "$OUT/switchover-$day.md" \
  --command "$cmd" --loadavg "$(cut -d' ' -f1-3 /proc/loadavg)" --note "${BENCH_NOTE:-}"
cat "$OUT/switchover-$day.md"
exit "$rc"
