#!/bin/bash
# What gRPC's threading model costs a cached read through query
# (bench/results/execute-threading-models-*.md): bench/loadgen at --callers
# against a running query_server without and with a cache policy, then
# against execute_models --model=callback and --model=async (Execute hits
# answered from memory), ROUNDS times in alternation. Prints one line per run.
#
#   bazel build //bench:loadgen //bench:execute_models
#   bench/execute_models.sh QUERY_ADDR [callers=32] [rounds=3] [seconds=5]
#
# QUERY_ADDR: a query_server whose sidecar caches pgbench_accounts, over a
# database loaded with pgbench -i (the setup of make bench's cached reads).
set -euo pipefail
cd "$(dirname "$0")/.."
ADDR=${1:?usage: bench/execute_models.sh QUERY_ADDR [callers] [rounds] [seconds]}
C=${2:-32}
ROUNDS=${3:-3}
SECS=${4:-5}
MODEL_ADDR=127.0.0.1:${EXECUTE_MODELS_PORT:-50071}
BIN=bazel-bin
for b in bench/loadgen bench/execute_models; do
  [[ -x $BIN/$b ]] || { echo "missing $BIN/$b (bazel build it)" >&2; exit 1; }
done
PID=""
trap '[[ -n $PID ]] && kill "$PID" 2>/dev/null || true' EXIT

point() {  # name addr ttl
  "$BIN/bench/loadgen" --addr="$2" --callers="$C" --duration="$SECS" --warmup=1 --keys=1000 \
    --cache_ttl_ms="$3" 2>/dev/null | tail -1 | python3 -c "
import json, sys; d = json.loads(sys.stdin.read())
print('%-16s %7d ops/s  p50 %5d us  p99 %5d us  errors %d  not hits %s' % ('$1',
      d['ops_per_sec'], d['p50_us'], d['p99_us'], d['errors'], d.get('not_hits', '-')))"
}

for ((r = 0; r < ROUNDS; r++)); do
  point query_uncached "$ADDR" 0
  point query_cached "$ADDR" 60000
  for m in callback async; do
    "$BIN/bench/execute_models" --model="$m" --addr="$MODEL_ADDR" 2>/dev/null &
    PID=$!
    sleep 0.5
    point "model_$m" "$MODEL_ADDR" 60000
    kill "$PID"
    wait "$PID" 2>/dev/null || true
    PID=""
  done
done
