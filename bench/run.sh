#!/usr/bin/env bash
# bench/run.sh — the comparison harness behind `make bench` (see bench/README.md).
#
# Starts PostgreSQL and the query service (tools/devstack) and PgBouncer on
# loopback, loads a pgbench table, and measures point selects at each
# concurrency with: pgbench -M prepared and -M simple directly, pgbench -M simple
# through PgBouncer, and poolside's Execute through bench/loadgen. Writes
# bench/results/latest.json and latest.md. Everything started here is stopped on
# exit, also on failure or Ctrl-C.
#
# Environment (all optional):
#   BENCH_SECONDS=8            measured seconds per point
#   BENCH_ROUNDS=3             runs of each compared point, alternating with its
#                              baseline (the report takes each one's median)
#   BENCH_CONCURRENCY="8 32 64"
#   BENCH_SCALE=10             pgbench -i scale (100k accounts per unit)
#   BENCH_WARMUP=2             loadgen warm-up seconds (not measured)
#   BENCH_POOL_SIZE=4          PgBouncer default_pool_size
#   BENCH_PGBENCH_THREADS=2    pgbench -j
#   BENCH_SAMPLING_RATE=0.1    share of pgbench transactions logged for latency
#   BENCH_IDLE_WAIT=60         seconds to wait for other CPU load to settle per point
#   BENCH_OUT=bench/results    where latest.{json,md} go
#   BENCH_SKIP_BUILD=1         use what is in bazel-bin
#   BENCH_KEEP=1               keep the temporary directory (logs) for inspection
#   BENCH_NO_POOLSIDE=1        baselines only (devstack --no_query, no loadgen)
#   BENCH_PG_PORT=P            use a running PostgreSQL on 127.0.0.1:P (database
#                              demo, user postgres, trust) instead of devstack;
#                              its pgbench tables are re-created
#   BENCH_QUERY_ADDR=H:P       with BENCH_PG_PORT: a running query service to
#                              measure (otherwise the poolside rows are skipped)
#   BENCH_NO_CACHE=1           skip the cache sidecar vs redis-benchmark GET rows
#   BENCH_CACHE_CONCURRENCY="8 32 64"  cache_loadgen callers = redis-benchmark clients
#                              (also the callers of cached vs uncached reads through query)
#   BENCH_QUERY_CACHE_KEYS=1000   key range of the cached vs uncached query reads
set -euo pipefail

cd "$(dirname "$0")/.."
BAZEL=${BAZEL:-bazel}
SECS=${BENCH_SECONDS:-8}
ROUNDS=${BENCH_ROUNDS:-3}
CONCURRENCY=${BENCH_CONCURRENCY:-"8 32 64"}
SCALE=${BENCH_SCALE:-10}
WARMUP=${BENCH_WARMUP:-2}
POOL_SIZE=${BENCH_POOL_SIZE:-4}
PGBENCH_THREADS=${BENCH_PGBENCH_THREADS:-2}
SAMPLING=${BENCH_SAMPLING_RATE:-0.1}
IDLE_WAIT=${BENCH_IDLE_WAIT:-60}
OUT=${BENCH_OUT:-bench/results}
NPROC=$(nproc)
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)

log() { echo "== $*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }

command -v pgbench >/dev/null || die "pgbench not found (make deps)"
[[ -x $PGBOUNCER ]] || die "pgbouncer not found (make deps)"
command -v python3 >/dev/null || die "python3 not found (make deps)"

TMP=$(mktemp -d /tmp/poolside-bench.XXXXXX)
chmod 755 "$TMP"
DEVSTACK_PID=""
BOUNCER_PID=""
CHILD_PID=""

is_alive() {
  [[ -n $1 && -e /proc/$1 ]] && ! grep -qE '^[0-9]+ \(.*\) Z' "/proc/$1/stat" 2>/dev/null
}

# stop_pid PID SECONDS: SIGTERM, then SIGKILL if still running after SECONDS.
stop_pid() {
  local pid=$1 secs=$2 i
  is_alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < secs * 10; i++)); do
    is_alive "$pid" || return 0
    sleep 0.1
  done
  echo "bench: process $pid did not stop in ${secs}s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  stop_pid "$CHILD_PID" 5
  stop_pid "${CACHE_SERVER_PID:-}" 10  # cache section
  stop_pid "${REDIS_PID:-}" 10         # cache section
  stop_pid "${QUERY_CACHE_PID:-}" 20   # cache section
  stop_pid "${INGEST_PID:-}" 20
  stop_pid "$BOUNCER_PID" 10
  if [[ -f $TMP/bouncer/pgbouncer.pid ]]; then
    stop_pid "$(cat "$TMP/bouncer/pgbouncer.pid")" 5
  fi
  stop_pid "$DEVSTACK_PID" 30
  # If devstack had to be killed, PostgreSQL may have outlived it.
  while IFS= read -r pidfile; do
    local datadir
    datadir=$(dirname "$pidfile")
    echo "bench: stopping leftover PostgreSQL in $datadir" >&2
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$datadir" stop -m immediate >/dev/null 2>&1 \
      || kill -KILL "$(head -1 "$pidfile")" 2>/dev/null
  done < <(find "$TMP" -name postmaster.pid 2>/dev/null)
  if [[ -n ${BENCH_KEEP:-} || $rc -ne 0 ]]; then
    echo "bench: logs kept in $TMP" >&2
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command in the background and waits for it, so that a signal to this
# script is handled at once (and the command stopped by cleanup).
run() {
  "$@" &
  CHILD_PID=$!
  local rc=0
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  return "$rc"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Percentage of CPU time in use over the last second (all processes).
cpu_busy_pct() {
  local a b
  a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
  local idle=$(( (b[4] + b[5]) - (a[4] + a[5]) )) total=0 i
  for ((i = 1; i < ${#a[@]}; i++)); do total=$((total + b[i] - a[i])); done
  echo $(( total > 0 ? 100 * (total - idle) / total : 0 ))
}

# Waits (up to IDLE_WAIT s) until other work on the machine is below 15% of the
# CPU, so that a point is not measured while something else is compiling.
# Prints the last busy percentage seen.
wait_idle() {
  local busy waited=0
  busy=$(cpu_busy_pct)
  while ((busy > 15 && waited < IDLE_WAIT)); do
    ((waited == 0)) && echo "bench: machine busy (${busy}% CPU), waiting up to ${IDLE_WAIT}s" >&2
    sleep 4; waited=$((waited + 5))
    busy=$(cpu_busy_pct)
  done
  ((busy > 15)) && echo "bench: WARNING: measuring on a busy machine (${busy}% CPU in use by others)" >&2
  echo "$busy"
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# --- build --------------------------------------------------------------------
if [[ -z ${BENCH_SKIP_BUILD:-} ]]; then
  log "building"
  targets=(//bench:loadgen)
  [[ -z ${BENCH_NO_CACHE:-} ]] && targets+=(//bench:cache_loadgen //services/cache:cache_server //services/query:query_server)  # cache section
  targets+=(//bench:ingest_loadgen //services/ingest:ingest_server)  # ingest section
  if [[ -z ${BENCH_PG_PORT:-} ]]; then
    targets+=(//tools:devstack)
    [[ -z ${BENCH_NO_POOLSIDE:-} ]] && targets+=(//services/query:query_server)
  fi
  "$BAZEL" build "${targets[@]}" >&2
fi
# Not the bazel-bin symlink: another build (--config=asan, ...) may have moved it.
BIN=$("$BAZEL" info bazel-bin 2>/dev/null) || die "bazel info failed"
LOADGEN=$BIN/bench/loadgen
[[ -x $LOADGEN ]] || die "$LOADGEN missing (bazel build //bench:loadgen)"

# --- PostgreSQL and the query service ------------------------------------------
QUERY_ADDR=""
QUERY_CONFIG=""
if [[ -n ${BENCH_PG_PORT:-} ]]; then
  PG_PORT=$BENCH_PG_PORT
  QUERY_ADDR=${BENCH_QUERY_ADDR:-}
  log "using the running PostgreSQL on 127.0.0.1:$PG_PORT"
else
  DEVSTACK=$BIN/tools/devstack
  [[ -x $DEVSTACK ]] || die "$DEVSTACK missing (bazel build //tools:devstack)"
  PG_PORT=$(free_port)
  QUERY_PORT=$(free_port)
  log "starting devstack (PostgreSQL on $PG_PORT, query service on $QUERY_PORT)"
  no_query=()
  [[ -n ${BENCH_NO_POOLSIDE:-} ]] && no_query=(--no_query)
  # The query service gets as many server connections as PgBouncer.
  "$DEVSTACK" --run_dir="$TMP/stack" --pg_port="$PG_PORT" --query_port="$QUERY_PORT" \
    --query_pool_size="$POOL_SIZE" --ready_file="$TMP/ready" "${no_query[@]}" \
    >"$TMP/devstack.log" 2>&1 &
  DEVSTACK_PID=$!
  for ((i = 0; i < 1800; i++)); do
    [[ -e $TMP/ready ]] && break
    if ! is_alive "$DEVSTACK_PID"; then
      tail -30 "$TMP/devstack.log" >&2
      die "devstack exited before it was ready"
    fi
    sleep 0.1
  done
  [[ -e $TMP/ready ]] || { tail -30 "$TMP/devstack.log" >&2; die "devstack not ready after 180s"; }
  # A shell fragment: PG_PORT, QUERY_ADDR, ...
  # shellcheck disable=SC1091
  source "$TMP/ready"
  [[ -z ${BENCH_NO_POOLSIDE:-} ]] && QUERY_CONFIG=$TMP/stack/query.json
fi

export PGHOST=127.0.0.1 PGUSER=postgres PGDATABASE=demo
PG_VERSION=$(psql -p "$PG_PORT" -Atc 'SHOW server_version' | cut -d' ' -f1)
MAX_CONN=$(psql -p "$PG_PORT" -Atc 'SHOW max_connections')
max_c=0
for c in $CONCURRENCY; do ((c > max_c)) && max_c=$c; done
if ((MAX_CONN < max_c + POOL_SIZE + 20)); then
  echo "bench: WARNING: max_connections=$MAX_CONN may be too low for $max_c pgbench clients" >&2
fi

log "pgbench -i -s $SCALE"
run pgbench -p "$PG_PORT" -i -s "$SCALE" -q >"$TMP/pgbench-init.log" 2>&1 \
  || { tail -20 "$TMP/pgbench-init.log" >&2; die "pgbench -i failed"; }

# --- PgBouncer ------------------------------------------------------------------
BOUNCER_PORT=$(free_port)
mkdir -p "$TMP/bouncer"
cat >"$TMP/bouncer/pgbouncer.ini" <<EOF
[databases]
demo = host=127.0.0.1 port=$PG_PORT dbname=demo user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $TMP/bouncer/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 1000
log_connections = 0
log_disconnections = 0
logfile = $TMP/bouncer/pgbouncer.log
pidfile = $TMP/bouncer/pgbouncer.pid
EOF
echo '"postgres" ""' >"$TMP/bouncer/userlist.txt"
chown -R postgres: "$TMP/bouncer"
# PgBouncer refuses to run as root.
if command -v setpriv >/dev/null; then
  setpriv --reuid=postgres --regid=postgres --init-groups \
    "$PGBOUNCER" "$TMP/bouncer/pgbouncer.ini" >/dev/null 2>&1 &
else
  runuser -u postgres -- "$PGBOUNCER" "$TMP/bouncer/pgbouncer.ini" >/dev/null 2>&1 &
fi
BOUNCER_PID=$!
for ((i = 0; i < 100; i++)); do
  psql -p "$BOUNCER_PORT" -Atc 'SELECT 1' >/dev/null 2>&1 && break
  is_alive "$BOUNCER_PID" || { cat "$TMP/bouncer/pgbouncer.log" >&2; die "pgbouncer exited"; }
  sleep 0.1
done
psql -p "$BOUNCER_PORT" -Atc 'SELECT 1' >/dev/null || die "pgbouncer not answering"
BOUNCER_VERSION=$("$PGBOUNCER" --version | head -1 | awk '{print $2}')

# --- measurements ---------------------------------------------------------------
POINTS=$TMP/points.jsonl
: >"$POINTS"
LOAD_START=$(loadavg)

pgbench_point() {  # scenario port mode clients
  local scenario=$1 port=$2 mode=$3 c=$4 busy
  busy=$(wait_idle)
  log "$scenario c=$c (other CPU load ${busy}%)"
  rm -f "$TMP/pgb_log".*
  run pgbench -p "$port" -n -S -M "$mode" -c "$c" -j "$PGBENCH_THREADS" -T "$SECS" \
    -l --sampling-rate="$SAMPLING" --log-prefix="$TMP/pgb_log" >"$TMP/out.txt" 2>&1 \
    || { tail -20 "$TMP/out.txt" >&2; die "pgbench failed ($scenario c=$c)"; }
  python3 bench/report.py pgbench-point --scenario "$scenario" --concurrency "$c" \
    --output "$TMP/out.txt" --log-prefix "$TMP/pgb_log" --loadavg "$(loadavg)" \
    --busy "$busy" --busy-after "$(cpu_busy_pct)" | tee -a "$POINTS" >&2
}

loadgen_point() {  # clients
  local c=$1 busy
  busy=$(wait_idle)
  log "poolside_execute c=$c (other CPU load ${busy}%)"
  run "$LOADGEN" --addr="$QUERY_ADDR" --callers="$c" --duration="$SECS" --warmup="$WARMUP" \
    --keys=$((SCALE * 100000)) --label="c=$c" >"$TMP/out.txt" 2>"$TMP/loadgen.err" \
    || { cat "$TMP/loadgen.err" >&2; die "loadgen failed (c=$c)"; }
  [[ -s $TMP/loadgen.err ]] && cat "$TMP/loadgen.err" >&2
  python3 bench/report.py loadgen-point --scenario poolside_execute --concurrency "$c" \
    --output "$TMP/out.txt" --loadavg "$(loadavg)" --busy "$busy" \
    --busy-after "$(cpu_busy_pct)" | tee -a "$POINTS" >&2
}

# The compared points alternate with their baseline ROUNDS times, so a burst of
# other load on the shared machine hits both sides alike; the report keeps the
# median of each.
for c in $CONCURRENCY; do
  pgbench_point direct_prepared "$PG_PORT" prepared "$c"
  pgbench_point direct_simple "$PG_PORT" simple "$c"
  for ((r = 0; r < ROUNDS; r++)); do
    pgbench_point pgbouncer_simple "$BOUNCER_PORT" simple "$c"
    if [[ -n $QUERY_ADDR ]]; then
      loadgen_point "$c"
    fi
  done
done

# --- ingest: poolside ingest vs psql \copy vs single-row INSERTs ----------------
# The same realistic 5-column rows (bench/ingest_loadgen.cc) three ways, each
# into its own fresh table: `psql \copy` of a CSV file (the COPY ceiling), a
# pgbench custom script doing one single-row INSERT per transaction, and
# bench/ingest_loadgen pushing them through the ingest service (acknowledged
# after COMMIT). \copy and poolside alternate ROUNDS times (a single run was
# too noisy: the first after the server starts is the slowest). BENCH_INGEST_ROWS (1000000), BENCH_INGEST_PRODUCERS (8),
# BENCH_INGEST_COPY_CONNECTIONS (ingest batch.copyConnections, default 2:
# on a 2-core machine more parallel COPYs only contend with client and server).
INGEST_ROWS=${BENCH_INGEST_ROWS:-1000000}
INGEST_PRODUCERS=${BENCH_INGEST_PRODUCERS:-8}
INGEST_COPY_CONNECTIONS=${BENCH_INGEST_COPY_CONNECTIONS:-2}
INGEST_PID=""
INGEST_SUMMARY="not measured"

ingest_point() {  # scenario concurrency rows seconds busy
  python3 bench/report.py ingest-point --scenario "$1" --concurrency "$2" --rows "$3" \
    --seconds "$4" --loadavg "$(loadavg)" --busy "$5" --busy-after "$(cpu_busy_pct)" \
    | tee -a "$POINTS" >&2
}

ingest_json_field() {  # file field: from ingest_loadgen's JSON line
  python3 -c 'import json, sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])[sys.argv[2]])' "$1" "$2"
}

ingest_bench() {
  local busy t0 t1 tps port n secs i csv=$TMP/ingest_rows.csv
  local loadgen=$BIN/bench/ingest_loadgen server=$BIN/services/ingest/ingest_server
  if [[ ! -x $loadgen || ! -x $server ]]; then
    log "ingest: $loadgen or $server missing, skipped"
    return 0
  fi
  run "$loadgen" --rows="$INGEST_ROWS" --write_csv="$csv" || die "ingest_loadgen --write_csv failed"
  for t in ingest_copy ingest_insert ingest_poolside; do
    psql -p "$PG_PORT" -q -c "DROP TABLE IF EXISTS $t; CREATE TABLE $t (id int8 PRIMARY KEY,
      device text NOT NULL, at timestamptz NOT NULL, value float8, payload text)" >/dev/null \
      || die "cannot create $t"
  done

  printf '%s\n' \
    "{\"auth\": {\"disabled\": true}, \"server\": {\"listen\": \"127.0.0.1:0\", \"tls\": {\"plaintext\": true}, \"portFile\": \"$TMP/ingest.port\"}," \
    " \"databases\": [{\"name\": \"demo\", \"dsn\": \"host=127.0.0.1 port=$PG_PORT dbname=demo user=postgres\", \"allowPrivilegedRole\": true}]," \
    " \"tables\": [{\"database\": \"demo\", \"tables\": [\"ingest_poolside\"]}]," \
    " \"batch\": {\"copyConnections\": $INGEST_COPY_CONNECTIONS}}" >"$TMP/ingest.json"
  rm -f "$TMP/ingest.port"
  "$server" --config="$TMP/ingest.json" --log_level=warning >"$TMP/ingest.log" 2>&1 &
  INGEST_PID=$!
  for ((i = 0; i < 300; i++)); do
    [[ -s $TMP/ingest.port ]] && break
    is_alive "$INGEST_PID" || { cat "$TMP/ingest.log" >&2; die "ingest_server exited"; }
    sleep 0.1
  done
  port=$(cat "$TMP/ingest.port" 2>/dev/null) || die "ingest_server did not start"
  # psql \copy and poolside alternate ROUNDS times, each into its emptied table;
  # the table shows the median run of each.
  for ((r = 0; r < ROUNDS; r++)); do
    psql -p "$PG_PORT" -q -c "TRUNCATE ingest_copy, ingest_poolside" >/dev/null \
      || die "cannot empty the ingest tables"
    busy=$(wait_idle)
    log "ingest_psql_copy ($INGEST_ROWS rows, other CPU load ${busy}%)"
    t0=$(date +%s.%N)
    run psql -p "$PG_PORT" -q -v ON_ERROR_STOP=1 \
      -c "\\copy ingest_copy (id, device, at, value, payload) FROM '$csv' WITH (FORMAT csv)" \
      >"$TMP/out.txt" 2>&1 || { cat "$TMP/out.txt" >&2; die "psql \\copy failed"; }
    t1=$(date +%s.%N)
    ingest_point ingest_psql_copy 1 "$INGEST_ROWS" "$(awk "BEGIN {print $t1 - $t0}")" "$busy"

    busy=$(wait_idle)
    log "ingest_poolside p=$INGEST_PRODUCERS ($INGEST_ROWS rows, other CPU load ${busy}%)"
    run "$loadgen" --addr="127.0.0.1:$port" --table=ingest_poolside --rows="$INGEST_ROWS" \
      --producers="$INGEST_PRODUCERS" >"$TMP/out.txt" 2>"$TMP/loadgen.err" \
      || { cat "$TMP/loadgen.err" "$TMP/ingest.log" >&2; die "ingest_loadgen failed"; }
    n=$(ingest_json_field "$TMP/out.txt" rows)
    secs=$(ingest_json_field "$TMP/out.txt" seconds)
    ingest_point ingest_poolside "$INGEST_PRODUCERS" "$n" "$secs" "$busy"
    [[ $(psql -p "$PG_PORT" -Atc 'SELECT count(*) FROM ingest_poolside') == "$INGEST_ROWS" ]] \
      || die "ingest_poolside does not hold exactly $INGEST_ROWS rows"
  done
  stop_pid "$INGEST_PID" 20
  INGEST_PID=""

  printf '%s\n' '\set id random(1, 1000000000000)' \
    "INSERT INTO ingest_insert (id, device, at, value, payload) VALUES (:id, 'device-' || (:id % 997), to_timestamp(1700000000 + :id % 100000000), :id * 0.25, rpad('event payload ' || :id || ' ', 48, 'x')) ON CONFLICT DO NOTHING;" \
    >"$TMP/insert.sql"
  busy=$(wait_idle)
  log "ingest_pgbench_insert c=$INGEST_PRODUCERS (other CPU load ${busy}%)"
  run pgbench -p "$PG_PORT" -n -f "$TMP/insert.sql" -c "$INGEST_PRODUCERS" -j "$PGBENCH_THREADS" \
    -T "$SECS" >"$TMP/out.txt" 2>&1 || { tail -20 "$TMP/out.txt" >&2; die "pgbench insert failed"; }
  tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' "$TMP/out.txt")
  [[ -n $tps ]] || { tail -20 "$TMP/out.txt" >&2; die "pgbench insert printed no tps"; }
  ingest_point ingest_pgbench_insert "$INGEST_PRODUCERS" "$tps" 1 "$busy"
  INGEST_SUMMARY="$INGEST_ROWS rows (id int8, device text, at timestamptz, value float8, 48-byte payload text); ingest_server defaults (batch maxRows 10000, maxBytes 4 MiB, linger 10 ms), copyConnections=$INGEST_COPY_CONNECTIONS; ingest_loadgen: $INGEST_PRODUCERS Channel calls, 1000 rows per request, 8 unacknowledged per call, rows built on the client during the run; psql \\copy of the same rows from CSV; pgbench -f with one single-row INSERT ... ON CONFLICT DO NOTHING per transaction, -c $INGEST_PRODUCERS -T $SECS"
}
ingest_bench
# --- end of ingest section --------------------------------------------------------

# --- cache: the sidecar's Get (TCP and unix socket) vs redis-benchmark GET -------
# Own processes: a cache_server and a redis-server (no persistence), both on free
# ports in $TMP/cache, stopped here and by cleanup. Same value size, key range
# and client count on both sides; both are preloaded so GETs hit.
CACHE_SERVER_PID=""
REDIS_PID=""
CACHE_CONCURRENCY=${BENCH_CACHE_CONCURRENCY:-"8 32 64"}
CACHE_KEYS=10000
CACHE_VALUE_BYTES=100
CACHE_SUMMARY="not measured"

cache_bench_start() {
  local cache_port i
  mkdir -p "$TMP/cache"
  cache_port=$(free_port)
  CACHE_SOCKET=$TMP/cache/cache.sock
  printf '%s\n' "{\"server\": {\"listen\": \"127.0.0.1:$cache_port\", \"tls\": {\"plaintext\": true}, \"portFile\": \"$TMP/cache/port\"}," \
    " \"unixSocket\": \"$CACHE_SOCKET\", \"capacityBytes\": \"268435456\"}" >"$TMP/cache/cache.json"
  "$BIN/services/cache/cache_server" --config="$TMP/cache/cache.json" --log_level=warning \
    >"$TMP/cache/cache_server.log" 2>&1 &
  CACHE_SERVER_PID=$!
  for ((i = 0; i < 100; i++)); do
    [[ -s $TMP/cache/port && -S $CACHE_SOCKET ]] && break
    is_alive "$CACHE_SERVER_PID" || { cat "$TMP/cache/cache_server.log" >&2; die "cache_server exited"; }
    sleep 0.1
  done
  [[ -S $CACHE_SOCKET ]] || die "cache_server is not serving on $CACHE_SOCKET"
  CACHE_TCP=127.0.0.1:$cache_port
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no --dir "$TMP/cache" >"$TMP/cache/redis.log" 2>&1 &
  REDIS_PID=$!
  for ((i = 0; i < 100; i++)); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    is_alive "$REDIS_PID" || { cat "$TMP/cache/redis.log" >&2; die "redis-server exited"; }
    sleep 0.1
  done
  redis-cli -p "$REDIS_PORT" ping >/dev/null || die "redis-server not answering"
  REDIS_VERSION=$(redis-server --version | grep -oE 'v=[0-9.]+' | cut -d= -f2)
  # Preload random keys of the range the GETs use (5 writes per key: ~all set).
  run redis-benchmark -p "$REDIS_PORT" -c 8 -n $((CACHE_KEYS * 5)) -r "$CACHE_KEYS" -t set \
    -d "$CACHE_VALUE_BYTES" -q >"$TMP/out.txt" 2>&1 || { cat "$TMP/out.txt" >&2; die "redis preload failed"; }
}

cache_point() {  # scenario addr clients
  local scenario=$1 addr=$2 c=$3 busy
  busy=$(wait_idle)
  log "$scenario c=$c (other CPU load ${busy}%)"
  run "$BIN/bench/cache_loadgen" --addr="$addr" --callers="$c" --duration="$SECS" \
    --warmup="$WARMUP" --keys="$CACHE_KEYS" --value_bytes="$CACHE_VALUE_BYTES" \
    --label="c=$c" >"$TMP/out.txt" 2>"$TMP/loadgen.err" \
    || { cat "$TMP/loadgen.err" >&2; die "cache_loadgen failed ($scenario c=$c)"; }
  [[ -s $TMP/loadgen.err ]] && cat "$TMP/loadgen.err" >&2
  python3 bench/report.py loadgen-point --scenario "$scenario" --concurrency "$c" \
    --output "$TMP/out.txt" --loadavg "$(loadavg)" --busy "$busy" \
    --busy-after "$(cpu_busy_pct)" | tee -a "$POINTS" >&2
}

redis_point() {  # clients
  local c=$1 busy
  busy=$(wait_idle)
  log "redis_get c=$c (other CPU load ${busy}%)"
  # redis-benchmark runs a number of requests, not a time: aim at about SECS s.
  run redis-benchmark -p "$REDIS_PORT" -c "$c" -n $((SECS * 90000)) -r "$CACHE_KEYS" -t get \
    -d "$CACHE_VALUE_BYTES" --csv >"$TMP/out.txt" 2>&1 \
    || { tail -20 "$TMP/out.txt" >&2; die "redis-benchmark failed (c=$c)"; }
  python3 bench/report.py redis-point --scenario redis_get --concurrency "$c" \
    --output "$TMP/out.txt" --loadavg "$(loadavg)" --busy "$busy" \
    --busy-after "$(cpu_busy_pct)" | tee -a "$POINTS" >&2
}

# Cached against uncached point selects through query: a query_server of its
# own (same pool as devstack's) whose cache is this section's sidecar over the
# unix socket, with pgbench_accounts configured as cached; the same hot keys
# both ways, so the uncached run reads from PostgreSQL's buffer cache too.
# Invalidation is cache.invalidation's default, "wal" (devstack's PostgreSQL
# runs wal_level=logical): no trigger on pgbench_accounts, writers pay nothing.
QUERY_CACHE_KEYS=${BENCH_QUERY_CACHE_KEYS:-1000}
QUERY_CACHE_PID=""
QUERY_CACHE_SUMMARY="not measured"

# Clock ticks of CPU (user + system) the given processes have used so far.
cpu_ticks() {
  local t=0 p v
  for p in "$@"; do
    v=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null) && t=$((t + v))
  done
  echo "$t"
}

# CPU ticks of the devstack PostgreSQL: the postmaster's own and those of its
# children, live ones read directly and ended ones from the postmaster's
# cutime/cstime (the kernel adds a child's time there when it is reaped), so a
# backend that ends during a window is neither lost nor counted twice.
db_ticks() {
  local pm t
  pm=$(head -1 "$TMP/stack/pgdata/postmaster.pid" 2>/dev/null) || { echo 0; return; }
  t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat" 2>/dev/null) || t=0
  echo $((t + $(cpu_ticks $(pgrep -P "$pm"))))
}

# Cores used by query_server ($1) and by PostgreSQL over the loadgen's measured
# window (after its warm-up), written to $TMP/cpu.txt as "query db".
sample_server_cpu() {
  local qpid=$1 hz q0 q1 d0 d1
  hz=$(getconf CLK_TCK)
  sleep "$WARMUP"
  q0=$(cpu_ticks "$qpid"); d0=$(db_ticks)
  sleep "$SECS"
  q1=$(cpu_ticks "$qpid"); d1=$(db_ticks)
  python3 -c "print('%.3f %.3f' % (($q1 - $q0) / $hz / $SECS, ($d1 - $d0) / $hz / $SECS))" \
    >"$TMP/cpu.txt"
}

query_cache_point() {  # scenario addr clients ttl
  local scenario=$1 addr=$2 c=$3 ttl=$4 busy sampler cpu
  busy=$(wait_idle)
  log "$scenario c=$c (other CPU load ${busy}%)"
  rm -f "$TMP/cpu.txt"
  sample_server_cpu "$QUERY_CACHE_PID" &
  sampler=$!
  run "$LOADGEN" --addr="$addr" --callers="$c" --duration="$SECS" --warmup="$WARMUP" \
    --keys="$QUERY_CACHE_KEYS" --cache_ttl_ms="$ttl" --label="c=$c" \
    >"$TMP/out.txt" 2>"$TMP/loadgen.err" \
    || { cat "$TMP/loadgen.err" >&2; die "loadgen failed ($scenario c=$c)"; }
  wait "$sampler" || true
  [[ -s $TMP/loadgen.err ]] && cat "$TMP/loadgen.err" >&2
  read -r -a cpu <"$TMP/cpu.txt" || die "no CPU sample for $scenario c=$c"
  python3 bench/report.py loadgen-point --scenario "$scenario" --concurrency "$c" \
    --output "$TMP/out.txt" --loadavg "$(loadavg)" --busy "$busy" \
    --busy-after "$(cpu_busy_pct)" --server-cpu-cores "${cpu[0]}" --db-cpu-cores "${cpu[1]}" \
    | tee -a "$POINTS" >&2
}

query_cache_bench() {
  local server=$BIN/services/query/query_server port i c
  if [[ ! -x $server || -n ${BENCH_PG_PORT:-} ]]; then
    log "cached reads through query: skipped (no query_server, or an external PostgreSQL)"
    return 0
  fi
  printf '%s\n' \
    "{\"auth\": {\"disabled\": true}, \"server\": {\"listen\": \"127.0.0.1:0\", \"tls\": {\"plaintext\": true}, \"portFile\": \"$TMP/cache/query.port\"}," \
    " \"databases\": [{\"name\": \"demo\", \"dsn\": \"host=127.0.0.1 port=$PG_PORT dbname=demo user=postgres\", \"allowPrivilegedRole\": true," \
    "   \"pool\": {\"minIdle\": 2, \"maxSize\": $POOL_SIZE}}]," \
    " \"defaultDatabase\": \"demo\"," \
    " \"cache\": {\"target\": \"unix:$CACHE_SOCKET\"," \
    "   \"tables\": [{\"database\": \"demo\", \"tables\": [\"pgbench_accounts\"]}]}}" \
    >"$TMP/cache/query.json"
  "$server" --config="$TMP/cache/query.json" --log_level=warning >"$TMP/cache/query.log" 2>&1 &
  QUERY_CACHE_PID=$!
  for ((i = 0; i < 300; i++)); do
    [[ -s $TMP/cache/query.port ]] && break
    is_alive "$QUERY_CACHE_PID" || { cat "$TMP/cache/query.log" >&2; die "query_server (cached) exited"; }
    sleep 0.1
  done
  port=$(cat "$TMP/cache/query.port" 2>/dev/null) || die "query_server (cached) did not start"
  # Wait until reads are answered from the cache (the listener has subscribed).
  for ((i = 0; i < 100; i++)); do
    "$LOADGEN" --addr="127.0.0.1:$port" --callers=1 --duration=0.2 --warmup=0 --keys=1 \
      --cache_ttl_ms=60000 2>/dev/null | grep -q '"not_hits":0' && break
    sleep 0.2
  done
  for c in $CACHE_CONCURRENCY; do
    for ((r = 0; r < ROUNDS; r++)); do
      query_cache_point query_uncached "127.0.0.1:$port" "$c" 0
      query_cache_point query_cached "127.0.0.1:$port" "$c" 60000
    done
  done
  stop_pid "$QUERY_CACHE_PID" 20
  QUERY_CACHE_PID=""
  QUERY_CACHE_SUMMARY="SELECT abalance FROM pgbench_accounts WHERE aid = \$1 with aid random in [1, $QUERY_CACHE_KEYS] (hot: every key cached after the warm-up); a query_server (pool min_idle=2 max_size=$POOL_SIZE) whose sidecar is the cache_server above over its unix socket; loadgen without a cache policy, then with ttl 60 s"
}

cache_bench() {
  local c
  command -v redis-benchmark >/dev/null || die "redis-benchmark not found (make deps)"
  cache_bench_start
  for c in $CACHE_CONCURRENCY; do
    for ((r = 0; r < ROUNDS; r++)); do
      redis_point "$c"
      cache_point cache_get_tcp "$CACHE_TCP" "$c"
      cache_point cache_get_unix "unix:$CACHE_SOCKET" "$c"
    done
  done
  query_cache_bench
  stop_pid "$CACHE_SERVER_PID" 10
  stop_pid "$REDIS_PID" 10
  CACHE_SERVER_PID=""
  REDIS_PID=""
  CACHE_SUMMARY="cache_server (256 MiB, 16 shards, admission on) vs redis-server $REDIS_VERSION (no persistence); $CACHE_KEYS keys of $CACHE_VALUE_BYTES bytes preloaded, a random key per GET; bench/cache_loadgen (async gRPC like loadgen) over TCP and over the unix socket; redis-benchmark -t get -r $CACHE_KEYS -d $CACHE_VALUE_BYTES with the same number of clients"
}
[[ -z ${BENCH_NO_CACHE:-} ]] && cache_bench
# --- end of cache section ---------------------------------------------------------

LOAD_END=$(loadavg)

# --- report ---------------------------------------------------------------------
query_summary="not measured (no query service)"
if [[ -n $QUERY_CONFIG && -f $QUERY_CONFIG ]]; then
  query_summary=$(python3 - "$QUERY_CONFIG" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
def g(d, *names, default=0):
    for n in names:
        if n in d:
            return d[n]
    return default
parts = []
for d in c.get("databases", []):
    p = d.get("pool", {})
    parts.append("database %s: pool min_idle=%s max_size=%s (one worker per connection), "
                 "max_pipeline_depth=%s" % (
        d.get("name", "?"), g(p, "min_idle", "minIdle", default="default"),
        g(p, "max_size", "maxSize") or "default",
        g(p, "max_pipeline_depth", "maxPipelineDepth") or "default"))
print("; ".join(parts) + " (devstack, pool sized like PgBouncer's)")
EOF
)
elif [[ -n $QUERY_ADDR ]]; then
  query_summary="external, $QUERY_ADDR"
fi

cmd="bench/run.sh"
for v in BENCH_SECONDS BENCH_CONCURRENCY BENCH_SCALE BENCH_WARMUP BENCH_POOL_SIZE \
         BENCH_PGBENCH_THREADS BENCH_SAMPLING_RATE; do
  [[ -n ${!v:-} ]] && cmd="$v=$(printf %q "${!v}") $cmd"
done
[[ ${MAKELEVEL:-0} -gt 0 ]] && cmd="make bench ($cmd)"

python3 - "$TMP/meta.json" <<EOF
import json, sys
meta = {
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "command": """$cmd""",
  "machine": {
    "nproc": $NPROC,
    "cpu": """$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')""",
    "kernel": "$(uname -sr)",
    "loadavg_start": "$LOAD_START",
    "loadavg_end": "$LOAD_END",
  },
  "settings": {
    "seconds": $SECS,
    "rounds": $ROUNDS,
    "warmup": $WARMUP,
    "scale": $SCALE,
    "concurrency": [int(x) for x in "$CONCURRENCY".split()],
    "pgbench_threads": $PGBENCH_THREADS,
    "pgbench_sampling_rate": $SAMPLING,
    "postgres_version": "$PG_VERSION",
    "postgres_source": "$([[ -n ${BENCH_PG_PORT:-} ]] && echo "an existing server" || echo devstack)",
    "pgbouncer_version": "$BOUNCER_VERSION",
    "pgbouncer_pool_size": $POOL_SIZE,
    "query_service": """$query_summary""",
    "cache": """${CACHE_SUMMARY:-not measured}""",
    "query_cache": """${QUERY_CACHE_SUMMARY:-not measured}""",
    "ingest": """${INGEST_SUMMARY:-not measured}""",
    "loadgen": "async gRPC, one completion queue per thread, one client thread, one TCP connection per 8 callers, no gRPC retry filter, random aid",
  },
}
json.dump(meta, open(sys.argv[1], "w"))
EOF

mkdir -p "$OUT"
python3 bench/report.py report --points "$POINTS" --meta "$TMP/meta.json" \
  --json "$OUT/latest.json" --md "$OUT/latest.md"
log "wrote $OUT/latest.md and $OUT/latest.json"
cat "$OUT/latest.md"
