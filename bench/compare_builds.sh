#!/usr/bin/env bash
# bench/compare_builds.sh — two query_server builds side by side, on one
# PostgreSQL, in one run: did a change cost throughput or CPU?
#
#   bench/compare_builds.sh OLD_QUERY_SERVER NEW_QUERY_SERVER [CACHE_SERVER]
#
# Starts a throwaway PostgreSQL (durable settings, pgbench scale COMPARE_SCALE,
# default 10), and for each build a query_server (auth disabled, pool max_size 4
# like make bench, pgbench_accounts cached) with a cache_server of its own on a
# unix socket. Then at each concurrency in COMPARE_CONCURRENCY ("8 32 64") it
# alternates the two builds COMPARE_ROUNDS (5) times, COMPARE_SECONDS (8) s each,
# for uncached point selects (bench/loadgen, random aid over the whole table) and
# cached ones (--cache_ttl_ms, 1,000 hot keys), and prints per row the median
# ops/s of each build, new ÷ old, and the query_server's own CPU per call
# (from /proc/PID/stat over the measured window). Build OLD from a worktree of
# the older commit: `bazel build //services/query:query_server //services/cache:cache_server`
# and copy the binaries out (bazel-bin moves with the next build).
# CACHE_SERVER defaults to bazel-bin's, and bazel-bin's bench/loadgen (or
# COMPARE_LOADGEN) drives both.
set -euo pipefail
cd "$(dirname "$0")/.."

OLD=${1:?usage: bench/compare_builds.sh OLD_QUERY_SERVER NEW_QUERY_SERVER [CACHE_SERVER]}
NEW=${2:?usage: bench/compare_builds.sh OLD_QUERY_SERVER NEW_QUERY_SERVER [CACHE_SERVER]}
BIN=$(bazel info bazel-bin 2>/dev/null || true)
CACHE=${3:-$BIN/services/cache/cache_server}
LOADGEN=${COMPARE_LOADGEN:-$BIN/bench/loadgen}
SCALE=${COMPARE_SCALE:-10}
CONC=${COMPARE_CONCURRENCY:-"8 32 64"}
ROUNDS=${COMPARE_ROUNDS:-5}
SECS=${COMPARE_SECONDS:-8}
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
for b in "$OLD" "$NEW" "$CACHE" "$LOADGEN"; do [[ -x $b ]] || { echo "not executable: $b" >&2; exit 1; }; done

TMP=$(mktemp -d /tmp/poolside-compare.XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 1
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$TMP/pg" stop -m fast >/dev/null 2>&1 || true
  [[ -n ${COMPARE_KEEP:-} ]] && echo "kept $TMP" >&2 || rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
PG_PORT=$(free_port)
mkdir -p "$TMP/pg" && chown postgres: "$TMP/pg"
runuser -u postgres -- "$PG_BIN/initdb" -D "$TMP/pg" -A trust -U postgres >/dev/null
printf '%s\n' "port = $PG_PORT" "listen_addresses = '127.0.0.1'" "unix_socket_directories = ''" \
  "wal_level = logical" "max_connections = 300" "shared_buffers = 256MB" \
  >>"$TMP/pg/postgresql.conf"
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$TMP/pg" -l "$TMP/pg/server.log" -w start >/dev/null
export PGHOST=127.0.0.1 PGUSER=postgres
createdb -p "$PG_PORT" demo
pgbench -p "$PG_PORT" -i -s "$SCALE" -q demo >/dev/null 2>&1
psql -p "$PG_PORT" -q -d demo -c 'GRANT SELECT ON pgbench_accounts TO PUBLIC' -c CHECKPOINT

start() {  # name binary -> sets ADDR_<name>, PID_<name>
  local name=$1 bin=$2 dir=$TMP/$1 i
  mkdir -p "$dir"
  printf '%s\n' "{\"server\": {\"listen\": \"unix:$dir/cache.sock\", \"tls\": {\"plaintext\": true}}}" \
    >"$dir/cache.json"
  "$CACHE" --config="$dir/cache.json" --log_level=warning >"$dir/cache.log" 2>&1 &
  PIDS+=($!)
  printf '%s\n' \
    "{\"auth\": {\"disabled\": true}, \"server\": {\"listen\": \"127.0.0.1:0\", \"tls\": {\"plaintext\": true}, \"portFile\": \"$dir/query.port\"}," \
    " \"databases\": [{\"name\": \"demo\", \"dsn\": \"host=127.0.0.1 port=$PG_PORT dbname=demo user=postgres\", \"allowPrivilegedRole\": true," \
    "   \"pool\": {\"minIdle\": 2, \"maxSize\": 4}}], \"defaultDatabase\": \"demo\"," \
    " \"cache\": {\"target\": \"unix:$dir/cache.sock\", \"tables\": [{\"database\": \"demo\", \"tables\": [\"pgbench_accounts\"]}]}}" \
    >"$dir/query.json"
  for ((i = 0; i < 50; i++)); do [[ -S $dir/cache.sock ]] && break; sleep 0.1; done
  "$bin" --config="$dir/query.json" --log_level=warning >"$dir/query.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  for ((i = 0; i < 300; i++)); do [[ -s $dir/query.port ]] && break; sleep 0.1; done
  [[ -s $dir/query.port ]] || { cat "$dir/query.log" >&2; echo "$name query_server did not start" >&2; exit 1; }
  printf -v "ADDR_$name" '127.0.0.1:%s' "$(cat "$dir/query.port")"
  printf -v "PID_$name" '%s' "$pid"
  # Until cached reads hit (the cache is subscribed).
  for ((i = 0; i < 100; i++)); do
    "$LOADGEN" --addr="127.0.0.1:$(cat "$dir/query.port")" --callers=1 --duration=0.2 --warmup=0 \
      --keys=1 --cache_ttl_ms=60000 2>/dev/null | grep -q '"not_hits":0' && break
    sleep 0.2
  done
}
start old "$OLD"
start new "$NEW"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# point NAME CALLERS KIND: one run; appends "name kind c ops cpu_us_per_call" to results.
point() {
  local name=$1 c=$2 kind=$3 addr pid args=() t0 t1 out ops
  addr=ADDR_$name; pid=PID_$name
  if [[ $kind == cached ]]; then args=(--keys=1000 --cache_ttl_ms=60000); else args=(--keys=$((SCALE * 100000))); fi
  "$LOADGEN" --addr="${!addr}" --callers="$c" --duration=1 --warmup=0 "${args[@]}" >/dev/null 2>&1
  t0=$(cpu_ticks "${!pid}")
  out=$("$LOADGEN" --addr="${!addr}" --callers="$c" --duration="$SECS" --warmup=0 "${args[@]}" 2>/dev/null)
  t1=$(cpu_ticks "${!pid}")
  ops=$(grep -oE '"ops_per_sec":[0-9.]+' <<<"$out" | cut -d: -f2)
  echo "$name $kind $c $ops $(awk -v d=$((t1 - t0)) -v hz="$HZ" -v o="$ops" -v s="$SECS" \
    'BEGIN { printf "%.1f", d / hz / (o * s) * 1e6 }')" | tee -a "$TMP/results" >&2
}

for kind in uncached cached; do
  for c in $CONC; do
    for ((r = 0; r < ROUNDS; r++)); do
      if ((r % 2 == 0)); then point old "$c" "$kind"; point new "$c" "$kind"
      else point new "$c" "$kind"; point old "$c" "$kind"; fi
    done
  done
done

python3 - "$TMP/results" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, kind, c, ops, cpu = line.split()
    rows.setdefault((kind, int(c)), {}).setdefault(name, []).append((float(ops), float(cpu)))
print("| reads | callers | old ops/s (median) | new ops/s (median) | new ÷ old | old query_server CPU µs/call | new | runs old | runs new |")
print("|---|---:|---:|---:|---:|---:|---:|---|---|")
for (kind, c), by in sorted(rows.items()):
    o, n = by["old"], by["new"]
    om, nm = statistics.median(x[0] for x in o), statistics.median(x[0] for x in n)
    oc, nc = statistics.median(x[1] for x in o), statistics.median(x[1] for x in n)
    print(f"| {kind} | {c} | {om:,.0f} | {nm:,.0f} | {nm / om:.3f} | {oc:.1f} | {nc:.1f} | "
          f"{', '.join(f'{x[0]:,.0f}' for x in o)} | {', '.join(f'{x[0]:,.0f}' for x in n)} |")
EOF
