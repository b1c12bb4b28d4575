#!/bin/bash
# What gRPC's threading model costs the cache sidecar's Get (bench/results/
# get-threading-models-*.md): cache_loadgen at --callers over a unix socket
# against cache_server (the sidecar), get_server_models --model=callback,
# --model=async (1 and 2 threads) and --model=hybrid (Get async on 1 thread,
# the rest callback), and redis-benchmark GET with as many
# clients, ROUNDS times in alternation. Prints one line per run.
#
#   bazel build //services/cache:cache_server //bench:cache_loadgen //bench:get_server_models
#   bench/get_models.sh [callers=32] [rounds=3] [seconds=6]
set -euo pipefail
cd "$(dirname "$0")/.."
C=${1:-32}
ROUNDS=${2:-3}
SECS=${3:-6}
BIN=bazel-bin
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
for b in services/cache/cache_server bench/cache_loadgen bench/get_server_models; do
  [[ -x $BIN/$b ]] || { echo "missing $BIN/$b (bazel build it)" >&2; exit 1; }
done
command -v redis-benchmark >/dev/null || { echo "redis-benchmark missing (make deps)" >&2; exit 1; }

wait_socket() {
  for _ in $(seq 100); do [[ -S $1 ]] && return 0; sleep 0.1; done
  echo "no socket $1" >&2
  exit 1
}

# server_point NAME COMMAND...: starts the server on $TMP/s.sock, runs the load.
server_point() {
  local name=$1
  shift
  rm -f "$TMP/s.sock"
  "$@" >"$TMP/server.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_socket "$TMP/s.sock"
  "$BIN/bench/cache_loadgen" --addr="unix:$TMP/s.sock" --callers="$C" --duration="$SECS" \
    --warmup=2 --keys=10000 --value_bytes=100 >"$TMP/out.json" 2>/dev/null
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  python3 -c "
import json; d = json.load(open('$TMP/out.json'))
print('%-28s %8d ops/s  p50 %5d us  p99 %5d us  p99.9 %5d us  errors %d' % ('$name',
      d['ops_per_sec'], d['p50_us'], d['p99_us'], d['p999_us'], d['errors']))"
}

cat >"$TMP/cache.json" <<JSON
{"server": {"listen": "127.0.0.1:0", "tls": {"plaintext": true}},
 "unixSocket": "$TMP/s.sock", "capacityBytes": "268435456"}
JSON
REDIS_PORT=$((20000 + RANDOM % 20000))
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
sleep 0.5
redis-benchmark -p "$REDIS_PORT" -c 8 -n 50000 -r 10000 -t set -d 100 -q >/dev/null

for r in $(seq "$ROUNDS"); do
  echo "# round $r"
  server_point "cache_server" "$BIN/services/cache/cache_server" \
    --config="$TMP/cache.json" --log_level=warning
  server_point "models --model=callback" "$BIN/bench/get_server_models" \
    --addr="unix:$TMP/s.sock" --model=callback
  server_point "models --model=async (1)" "$BIN/bench/get_server_models" \
    --addr="unix:$TMP/s.sock" --model=async --threads=1
  server_point "models --model=hybrid (1)" "$BIN/bench/get_server_models" \
    --addr="unix:$TMP/s.sock" --model=hybrid --threads=1
  server_point "models --model=async (2)" "$BIN/bench/get_server_models" \
    --addr="unix:$TMP/s.sock" --model=async --threads=2
  redis-benchmark -p "$REDIS_PORT" -c "$C" -n $((SECS * 90000)) -r 10000 -t get -d 100 --csv \
    >"$TMP/redis.csv" 2>&1
  python3 -c "
import csv; rows = list(csv.reader(open('$TMP/redis.csv')))
h, v = rows[0], rows[1]; d = dict(zip(h, v))
print('%-28s %8d ops/s  p50 %5d us  p99 %5d us' % ('redis-benchmark GET', float(d['rps']),
      float(d['p50_latency_ms']) * 1000, float(d['p99_latency_ms']) * 1000))"
done
