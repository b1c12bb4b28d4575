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
#   BENCH_ONLY=query,ingest,cache,query_cache,pgpool,writetax,replicas
#                              the sections to run (default: all of them)
#   BENCH_FAST=1               PostgreSQL with fsync, synchronous_commit and
#                              full_page_writes off (default: on, durable)
#   BENCH_SECONDS=8            measured seconds per point
#   BENCH_ROUNDS=3             runs of each compared point, alternating with its
#                              baseline (the report takes each one's median)
#   BENCH_CONCURRENCY="8 32 64"
#   BENCH_SCALE=10             pgbench -i scale (100k accounts per unit)
#   BENCH_WARMUP=2             loadgen warm-up seconds (not measured)
#   BENCH_POOL_SIZE=4          the query service's pool max_size
#   BENCH_POOL_SIZES="2 4 8 16"  PgBouncer default_pool_size values swept at each
#                              concurrency; the best is measured against poolside
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
#   BENCH_REDIS_PIPELINE=16    redis-benchmark -P of the pipelined GET rows (also
#                              measured without pipelining)
#   BENCH_QUERY_CACHE_KEYS=1000   key range of the cached vs uncached query reads
#                              (and of pgpool-II's cached reads)
#   BENCH_WRITES_PER_SEC=1000  rate of the writer beside the "with writes" cached reads
#   BENCH_PGPOOL_MODES="simple prepared"  pgbench -M through pgpool-II (the faster is used)
#   BENCH_INGEST_ROWS=1000000  rows per ingest run (0: skip the ingest section)
#   BENCH_WRITE_CONCURRENCY="8 32"  pgbench clients of the write tax rows
#   BENCH_REPLICA_CONCURRENCY="32 64"  loadgen callers of the replicas rows
#   BENCH_REPLICA_POOL_SIZE=$BENCH_POOL_SIZE  the routed service's pool max_size per member
set -euo pipefail

cd "$(dirname "$0")/.."
BAZEL=${BAZEL:-bazel}
SECS=${BENCH_SECONDS:-8}
ROUNDS=${BENCH_ROUNDS:-3}
CONCURRENCY=${BENCH_CONCURRENCY:-"8 32 64"}
SCALE=${BENCH_SCALE:-10}
WARMUP=${BENCH_WARMUP:-2}
POOL_SIZE=${BENCH_POOL_SIZE:-4}
POOL_SIZES=${BENCH_POOL_SIZES:-"2 4 8 16"}
PGBENCH_THREADS=${BENCH_PGBENCH_THREADS:-2}
SAMPLING=${BENCH_SAMPLING_RATE:-0.1}
IDLE_WAIT=${BENCH_IDLE_WAIT:-60}
OUT=${BENCH_OUT:-bench/results}
NPROC=$(nproc)
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)

log() { echo "== $*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }

# The sections: BENCH_ONLY names the ones to run (comma- or space-separated);
# BENCH_NO_CACHE=1 drops the four cache ones, BENCH_INGEST_ROWS=0 the ingest one.
ALL_SECTIONS="query ingest cache query_cache pgpool writetax replicas"
declare -A WANT=()
only=${BENCH_ONLY:-$ALL_SECTIONS}
for s in ${only//,/ }; do
  [[ " $ALL_SECTIONS " == *" $s "* ]] || die "BENCH_ONLY: unknown section '$s' (sections: $ALL_SECTIONS)"
  WANT[$s]=1
done
[[ -n ${BENCH_NO_CACHE:-} ]] && unset 'WANT[cache]' 'WANT[query_cache]' 'WANT[pgpool]' 'WANT[writetax]'
[[ ${BENCH_INGEST_ROWS:-1} == 0 ]] && unset 'WANT[ingest]'
want() { [[ -n ${WANT[$1]:-} ]]; }
SECTIONS=""
for s in $ALL_SECTIONS; do want "$s" && SECTIONS+="${SECTIONS:+,}$s"; done
[[ -n $SECTIONS ]] || die "no section left to run (BENCH_ONLY=${BENCH_ONLY:-}, BENCH_NO_CACHE, BENCH_INGEST_ROWS)"

command -v pgbench >/dev/null || die "pgbench not found (make deps)"
[[ -x $PGBOUNCER ]] || die "pgbouncer not found (make deps)"
command -v python3 >/dev/null || die "python3 not found (make deps)"

TMP=$(mktemp -d /tmp/poolside-bench.XXXXXX)
chmod 755 "$TMP"
DEVSTACK_PID=""
BOUNCER_PIDS=()
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
  stop_pid "${QUERY_CACHE_PID:-}" 20   # query_cache section
  stop_pid "${QUERY_SINGLE_PID:-}" 20  # replicas section
  stop_pid "${QUERY_ROUTED_PID:-}" 20  # replicas section
  stop_pid "${QS_PID:-}" 20            # the last query_server started
  stop_pid "${WRITER_PID:-}" 5         # query_cache and pgpool sections
  stop_pid "${INGEST_PID:-}" 20
  local p f
  for p in "${BOUNCER_PIDS[@]}"; do stop_pid "$p" 10; done
  for f in "$TMP"/bouncer-*/pgbouncer.pid; do
    [[ -f $f ]] && stop_pid "$(cat "$f")" 5
  done
  stop_pid "${PGPOOL_PID:-}" 20  # pgpool section
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
  want cache && targets+=(//bench:cache_loadgen //services/cache:cache_server)
  if want query_cache || want writetax; then
    targets+=(//services/cache:cache_server //services/query:query_server)
  fi
  want replicas && targets+=(//services/query:query_server)
  want ingest && targets+=(//bench:ingest_loadgen //services/ingest:ingest_server)
  if [[ -z ${BENCH_PG_PORT:-} ]]; then
    targets+=(//tools:devstack)
    want query && [[ -z ${BENCH_NO_POOLSIDE:-} ]] && targets+=(//services/query:query_server)
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
  if [[ -n ${BENCH_NO_POOLSIDE:-} ]] || ! want query; then no_query=(--no_query); fi
  # The query service's own pool size: BENCH_POOL_SIZE (PgBouncer's is swept).
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
  [[ ${no_query[*]:-} ]] || QUERY_CONFIG=$TMP/stack/query.json
fi

export PGHOST=127.0.0.1 PGUSER=postgres PGDATABASE=demo
PG_VERSION=$(psql -p "$PG_PORT" -Atc 'SHOW server_version' | cut -d' ' -f1)
if want query || want query_cache || want pgpool || want writetax || want replicas; then
  log "pgbench -i -s $SCALE"
  run pgbench -p "$PG_PORT" -i -s "$SCALE" -q >"$TMP/pgbench-init.log" 2>&1 \
    || { tail -20 "$TMP/pgbench-init.log" >&2; die "pgbench -i failed"; }
  # devstack's query service connects as its own unprivileged roles
  # (tools/devstack, tests/fixtures/demo_schema.h): let them read the table.
  psql -p "$PG_PORT" -q -c 'GRANT SELECT ON pgbench_accounts TO PUBLIC' >/dev/null \
    || die "cannot grant SELECT on pgbench_accounts"
fi

# Durable commits by default: devstack's PostgreSQL starts with fsync,
# synchronous_commit and full_page_writes off (fast tests, and a fast pgbench -i
# above); ALTER SYSTEM overrides its settings file, all three take effect on
# reload, and a checkpoint then writes out what was written without fsync.
# BENCH_FAST=1 keeps them off. An existing server (BENCH_PG_PORT) is left as it is.
if [[ -z ${BENCH_PG_PORT:-} ]]; then
  if [[ -n ${BENCH_FAST:-} ]]; then v=off; else v=on; fi
  psql -p "$PG_PORT" -q -v ON_ERROR_STOP=1 -c "ALTER SYSTEM SET fsync = $v" \
    -c "ALTER SYSTEM SET synchronous_commit = $v" -c "ALTER SYSTEM SET full_page_writes = $v" \
    -c "SELECT pg_reload_conf()" >/dev/null || die "cannot set fsync/synchronous_commit"
  for ((i = 0; i < 50; i++)); do
    [[ $(psql -p "$PG_PORT" -Atc 'SHOW fsync') == "$v" ]] && break
    sleep 0.1
  done
  psql -p "$PG_PORT" -q -c CHECKPOINT >/dev/null || die "CHECKPOINT failed"
fi
PG_DURABILITY=$(psql -p "$PG_PORT" -Atc "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name)
  FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes')")
log "PostgreSQL $PG_DURABILITY"
if [[ -z ${BENCH_FAST:-} && $PG_DURABILITY != *fsync=on* ]]; then
  echo "bench: WARNING: PostgreSQL runs with $PG_DURABILITY" >&2
fi
MAX_CONN=$(psql -p "$PG_PORT" -Atc 'SHOW max_connections')
max_c=0
for c in $CONCURRENCY; do ((c > max_c)) && max_c=$c; done
bouncer_conns=0
for size in $POOL_SIZES; do bouncer_conns=$((bouncer_conns + size)); done
if ((MAX_CONN < max_c + bouncer_conns + POOL_SIZE + 20)); then
  echo "bench: WARNING: max_connections=$MAX_CONN may be too low for $max_c pgbench clients" \
    "beside $bouncer_conns PgBouncer server connections" >&2
fi

# --- PgBouncer ------------------------------------------------------------------
# One PgBouncer per default_pool_size swept (BENCH_POOL_SIZES), each with its own
# ini file, port and directory, all started before the first point: the sweep
# then switches instances, not settings, and no point pays for a restart.
declare -A BOUNCER_PORT_OF=()
declare -A BOUNCER_PID_OF=()
BOUNCER_VERSION=""

start_bouncer() {  # default_pool_size
  local size=$1 port dir i pid
  port=$(free_port)
  dir=$TMP/bouncer-$size
  mkdir -p "$dir"
  printf '%s\n' "[databases]" \
    "demo = host=127.0.0.1 port=$PG_PORT dbname=demo user=postgres" "" "[pgbouncer]" \
    "listen_addr = 127.0.0.1" "listen_port = $port" "unix_socket_dir =" \
    "auth_type = trust" "auth_file = $dir/userlist.txt" "pool_mode = transaction" \
    "default_pool_size = $size" "min_pool_size = 0" "reserve_pool_size = 0" \
    "max_client_conn = 1000" "log_connections = 0" "log_disconnections = 0" \
    "logfile = $dir/pgbouncer.log" "pidfile = $dir/pgbouncer.pid" >"$dir/pgbouncer.ini"
  echo '"postgres" ""' >"$dir/userlist.txt"
  chown -R postgres: "$dir"
  # PgBouncer refuses to run as root.
  if command -v setpriv >/dev/null; then
    setpriv --reuid=postgres --regid=postgres --init-groups \
      "$PGBOUNCER" "$dir/pgbouncer.ini" >/dev/null 2>&1 &
  else
    runuser -u postgres -- "$PGBOUNCER" "$dir/pgbouncer.ini" >/dev/null 2>&1 &
  fi
  pid=$!
  BOUNCER_PIDS+=("$pid")
  for ((i = 0; i < 100; i++)); do
    psql -p "$port" -Atc 'SELECT 1' >/dev/null 2>&1 && break
    is_alive "$pid" || { cat "$dir/pgbouncer.log" >&2; die "pgbouncer exited"; }
    sleep 0.1
  done
  psql -p "$port" -Atc 'SELECT 1' >/dev/null || die "pgbouncer (pool size $size) not answering"
  BOUNCER_PORT_OF[$size]=$port
  BOUNCER_PID_OF[$size]=$pid
}

if want query; then
  for size in $POOL_SIZES; do start_bouncer "$size"; done
  BOUNCER_VERSION=$("$PGBOUNCER" --version | head -1 | awk '{print $2}')
fi

# --- measurements ---------------------------------------------------------------
POINTS=$TMP/points.jsonl
: >"$POINTS"
LOAD_START=$(loadavg)

# measured BASE SECONDS CMD...: runs the load generator CMD through
# bench/cpu_window.py, the one place server CPU per operation is measured
# (machine busy CPU minus the load generator's own), over the window from BASE
# seconds after CMD starts (its warm-up) through SECONDS of load, less a margin
# at each end (a tenth of SECONDS, at most 0.5 s); SECONDS "-": to CMD's exit.
# Writes $TMP/cpu.json. CPU_ARGS (an array): more cpu_window.py options
# (--client PID of another load generator, --proc/--tree NAME=PID to split).
CPU_ARGS=()
measured() {
  local base=$1 secs=$2 win
  shift 2
  if [[ $secs == - ]]; then
    win=(--offset "$base")
  else
    read -r -a win < <(awk -v b="$base" -v s="$secs" \
      'BEGIN { m = s / 10; if (m > 0.5) m = 0.5; printf "--offset %.3f --length %.3f\n", b + m, s - 2 * m }')
  fi
  rm -f "$TMP/cpu.json"
  run python3 bench/cpu_window.py --out "$TMP/cpu.json" "${win[@]}" "${CPU_ARGS[@]}" -- "$@"
}

# The devstack PostgreSQL's postmaster (its CPU, with its backends', is split
# out of the server CPU), or nothing for an external server.
postmaster_pid() {
  [[ -z ${BENCH_PG_PORT:-} ]] && head -1 "$TMP/stack/pgdata/postmaster.pid" 2>/dev/null
}

# add_point KIND [report.py options]: the last measurement as a result point
# (report.py KIND-point, with $TMP/cpu.json), appended to $POINTS. BUSY is the
# other CPU load wait_idle saw before it.
BUSY=0
add_point() {
  local kind=$1
  shift
  python3 bench/report.py "$kind-point" "$@" --loadavg "$(loadavg)" --busy "$BUSY" \
    --busy-after "$(cpu_busy_pct)" --cpu "$TMP/cpu.json" | tee -a "$POINTS" >&2
}

last_ops() {  # ops/s of the last point added
  tail -1 "$POINTS" | python3 -c 'import json, sys; print(json.load(sys.stdin)["ops_per_sec"] or 0)'
}

pgbench_point() {  # scenario port mode clients [report.py options]
  local scenario=$1 port=$2 mode=$3 c=$4
  shift 4
  BUSY=$(wait_idle)
  log "$scenario c=$c $* (other CPU load ${BUSY}%)"
  rm -f "$TMP/pgb_log".*
  measured 0 "$SECS" pgbench -p "$port" -n -S -M "$mode" -c "$c" -j "$PGBENCH_THREADS" -T "$SECS" \
    -l --sampling-rate="$SAMPLING" --log-prefix="$TMP/pgb_log" >"$TMP/out.txt" 2>&1 \
    || { tail -20 "$TMP/out.txt" >&2; die "pgbench failed ($scenario c=$c)"; }
  add_point pgbench --scenario "$scenario" --concurrency "$c" --output "$TMP/out.txt" \
    --log-prefix "$TMP/pgb_log" --setting "pgbench -M $mode -j $PGBENCH_THREADS" "$@"
}

loadgen_point() {  # clients
  local c=$1
  BUSY=$(wait_idle)
  log "poolside_execute c=$c (other CPU load ${BUSY}%)"
  measured "$WARMUP" "$SECS" "$LOADGEN" --addr="$QUERY_ADDR" --callers="$c" --duration="$SECS" \
    --warmup="$WARMUP" --keys=$((SCALE * 100000)) --primary=false --label="c=$c" \
    >"$TMP/out.txt" 2>"$TMP/loadgen.err" \
    || { cat "$TMP/loadgen.err" >&2; die "loadgen failed (c=$c)"; }
  [[ -s $TMP/loadgen.err ]] && cat "$TMP/loadgen.err" >&2
  add_point loadgen --scenario poolside_execute --concurrency "$c" --output "$TMP/out.txt" \
    --setting "$POOLSIDE_SETTING"
}
POOLSIDE_SETTING="query pool max_size=$POOL_SIZE; loadgen 1 thread, 1 connection per 8 callers"

# PgBouncer is swept over BENCH_POOL_SIZES at each concurrency (one run each);
# the best pool size is then the baseline, alternating with poolside ROUNDS
# times so that a burst of other load on the shared machine hits both sides
# alike; the report keeps the median of each, and the sweep.
# split_cpu [NAME=PID]: CPU_ARGS for a point of this section: the server CPU
# split into PostgreSQL (devstack's) and the named pooler or service.
split_cpu() {
  local pm
  CPU_ARGS=()
  pm=$(postmaster_pid) || true
  [[ -n $pm ]] && CPU_ARGS+=(--tree "postgres=$pm")
  [[ -n ${1:-} && ${1#*=} != "" ]] && CPU_ARGS+=(--proc "$1")
  return 0
}

query_bench() {
  local c size best best_ops ops sizes setting qpid=""
  read -r -a sizes <<<"$POOL_SIZES"
  [[ -n $DEVSTACK_PID ]] && qpid=$(pgrep -P "$DEVSTACK_PID" -f services/query/query_server | head -1)
  for c in $CONCURRENCY; do
    split_cpu
    pgbench_point direct_prepared "$PG_PORT" prepared "$c"
    pgbench_point direct_simple "$PG_PORT" simple "$c"
    best=${sizes[0]}
    best_ops=0
    setting="default_pool_size=$best"
    if ((${#sizes[@]} > 1)); then
      for size in "${sizes[@]}"; do
        split_cpu "pgbouncer=${BOUNCER_PID_OF[$size]}"
        pgbench_point pgbouncer_sweep "${BOUNCER_PORT_OF[$size]}" simple "$c" --pool-size "$size" \
          --setting "default_pool_size=$size"
        ops=$(last_ops)
        if awk -v a="$ops" -v b="$best_ops" 'BEGIN { exit !(a > b) }'; then
          best=$size
          best_ops=$ops
        fi
      done
      setting="default_pool_size=$best (best of ${POOL_SIZES// //})"
    fi
    for ((r = 0; r < ROUNDS; r++)); do
      split_cpu "pgbouncer=${BOUNCER_PID_OF[$best]}"
      pgbench_point pgbouncer_simple "${BOUNCER_PORT_OF[$best]}" simple "$c" --pool-size "$best" \
        --setting "$setting"
      if [[ -n $QUERY_ADDR ]]; then
        split_cpu "query_server=$qpid"
        loadgen_point "$c"
      fi
    done
  done
  CPU_ARGS=()
}
want query && query_bench

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

ingest_point() {  # scenario concurrency rows seconds setting
  add_point ingest --scenario "$1" --concurrency "$2" --rows "$3" --seconds "$4" --setting "$5"
}

cpu_window_json_field() {  # field of $TMP/cpu.json
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$TMP/cpu.json" "$1"
}

ingest_json_field() {  # file field: from ingest_loadgen's JSON line
  python3 -c 'import json, sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])[sys.argv[2]])' "$1" "$2"
}

ingest_bench() {
  local tps port n secs i pm csv=$TMP/ingest_rows.csv
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
  pm=$(postmaster_pid) || true
  CPU_ARGS=(--proc "ingest_server=$INGEST_PID")
  [[ -n $pm ]] && CPU_ARGS+=(--tree "postgres=$pm")
  # psql \copy and poolside alternate ROUNDS times, each into its emptied table;
  # the table shows the median run of each.
  for ((r = 0; r < ROUNDS; r++)); do
    psql -p "$PG_PORT" -q -c "TRUNCATE ingest_copy, ingest_poolside" >/dev/null \
      || die "cannot empty the ingest tables"
    BUSY=$(wait_idle)
    log "ingest_psql_copy ($INGEST_ROWS rows, other CPU load ${BUSY}%)"
    measured 0 - psql -p "$PG_PORT" -q -v ON_ERROR_STOP=1 \
      -c "\\copy ingest_copy (id, device, at, value, payload) FROM '$csv' WITH (FORMAT csv)" \
      >"$TMP/out.txt" 2>&1 || { cat "$TMP/out.txt" >&2; die "psql \\copy failed"; }
    ingest_point ingest_psql_copy 1 "$INGEST_ROWS" "$(cpu_window_json_field command_s)" "as is"

    BUSY=$(wait_idle)
    log "ingest_poolside p=$INGEST_PRODUCERS ($INGEST_ROWS rows, other CPU load ${BUSY}%)"
    measured 0 - "$loadgen" --addr="127.0.0.1:$port" --table=ingest_poolside --rows="$INGEST_ROWS" \
      --producers="$INGEST_PRODUCERS" >"$TMP/out.txt" 2>"$TMP/loadgen.err" \
      || { cat "$TMP/loadgen.err" "$TMP/ingest.log" >&2; die "ingest_loadgen failed"; }
    n=$(ingest_json_field "$TMP/out.txt" rows)
    secs=$(ingest_json_field "$TMP/out.txt" seconds)
    ingest_point ingest_poolside "$INGEST_PRODUCERS" "$n" "$secs" \
      "copyConnections=$INGEST_COPY_CONNECTIONS, $INGEST_PRODUCERS producers"
    [[ $(psql -p "$PG_PORT" -Atc 'SELECT count(*) FROM ingest_poolside') == "$INGEST_ROWS" ]] \
      || die "ingest_poolside does not hold exactly $INGEST_ROWS rows"
  done
  stop_pid "$INGEST_PID" 20
  INGEST_PID=""
  CPU_ARGS=()

  printf '%s\n' '\set id random(1, 1000000000000)' \
    "INSERT INTO ingest_insert (id, device, at, value, payload) VALUES (:id, 'device-' || (:id % 997), to_timestamp(1700000000 + :id % 100000000), :id * 0.25, rpad('event payload ' || :id || ' ', 48, 'x')) ON CONFLICT DO NOTHING;" \
    >"$TMP/insert.sql"
  BUSY=$(wait_idle)
  log "ingest_pgbench_insert c=$INGEST_PRODUCERS (other CPU load ${BUSY}%)"
  measured 0 "$SECS" pgbench -p "$PG_PORT" -n -f "$TMP/insert.sql" -c "$INGEST_PRODUCERS" \
    -j "$PGBENCH_THREADS" -T "$SECS" >"$TMP/out.txt" 2>&1 \
    || { tail -20 "$TMP/out.txt" >&2; die "pgbench insert failed"; }
  tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' "$TMP/out.txt")
  [[ -n $tps ]] || { tail -20 "$TMP/out.txt" >&2; die "pgbench insert printed no tps"; }
  ingest_point ingest_pgbench_insert "$INGEST_PRODUCERS" "$tps" 1 "pgbench -c $INGEST_PRODUCERS"
  INGEST_SUMMARY="$INGEST_ROWS rows (id int8, device text, at timestamptz, value float8, 48-byte payload text); ingest_server defaults (batch maxRows 50000, maxBytes 4 MiB, linger 10 ms), copyConnections=$INGEST_COPY_CONNECTIONS; ingest_loadgen: $INGEST_PRODUCERS Channel calls, 1000 rows per request, 8 unacknowledged per call, rows built on the client during the run; psql \\copy of the same rows from CSV; pgbench -f with one single-row INSERT ... ON CONFLICT DO NOTHING per transaction, -c $INGEST_PRODUCERS -T $SECS"
}
want ingest && ingest_bench
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
REDIS_PIPELINE=${BENCH_REDIS_PIPELINE:-16}

start_cache_server() {
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
}

start_redis() {
  local i
  mkdir -p "$TMP/cache"
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
  local scenario=$1 addr=$2 c=$3
  BUSY=$(wait_idle)
  log "$scenario c=$c (other CPU load ${BUSY}%)"
  CPU_ARGS=(--proc "cache_server=$CACHE_SERVER_PID")
  measured "$WARMUP" "$SECS" "$BIN/bench/cache_loadgen" --addr="$addr" --callers="$c" \
    --duration="$SECS" --warmup="$WARMUP" --keys="$CACHE_KEYS" --value_bytes="$CACHE_VALUE_BYTES" \
    --label="c=$c" >"$TMP/out.txt" 2>"$TMP/loadgen.err" \
    || { cat "$TMP/loadgen.err" >&2; die "cache_loadgen failed ($scenario c=$c)"; }
  [[ -s $TMP/loadgen.err ]] && cat "$TMP/loadgen.err" >&2
  add_point loadgen --scenario "$scenario" --concurrency "$c" --output "$TMP/out.txt" \
    --setting "1 thread, 1 connection per 8 callers"
}

# redis-benchmark runs a number of requests, not a time: a first short run (not
# recorded) measures the rate, and every run asks for about SECS s of it.
declare -A REDIS_RATE=()
redis_point() {  # scenario clients pipeline
  local scenario=$1 c=$2 pipeline=$3 n
  if [[ -z ${REDIS_RATE[$scenario-$c]:-} ]]; then
    run redis-benchmark -p "$REDIS_PORT" -c "$c" -P "$pipeline" -n $((20000 * pipeline)) \
      -r "$CACHE_KEYS" -t get -d "$CACHE_VALUE_BYTES" --csv >"$TMP/out.txt" 2>&1 \
      || { tail -20 "$TMP/out.txt" >&2; die "redis-benchmark failed (c=$c -P $pipeline)"; }
    REDIS_RATE[$scenario-$c]=$(python3 bench/report.py redis-rate --output "$TMP/out.txt")
  fi
  n=$(awk -v r="${REDIS_RATE[$scenario-$c]}" -v s="$SECS" 'BEGIN { printf "%d\n", r * s }')
  BUSY=$(wait_idle)
  log "$scenario c=$c -P $pipeline, $n requests (other CPU load ${BUSY}%)"
  CPU_ARGS=(--proc "redis_server=$REDIS_PID")
  measured 0 "$SECS" redis-benchmark -p "$REDIS_PORT" -c "$c" -P "$pipeline" -n "$n" \
    -r "$CACHE_KEYS" -t get -d "$CACHE_VALUE_BYTES" --csv >"$TMP/out.txt" 2>&1 \
    || { tail -20 "$TMP/out.txt" >&2; die "redis-benchmark failed (c=$c -P $pipeline)"; }
  add_point redis --scenario "$scenario" --concurrency "$c" --output "$TMP/out.txt" \
    --setting "-P $pipeline"
  REDIS_RATE[$scenario-$c]=$(last_ops)
}

cache_bench() {
  local c
  command -v redis-benchmark >/dev/null || die "redis-benchmark not found (make deps)"
  start_cache_server
  start_redis
  for c in $CACHE_CONCURRENCY; do
    for ((r = 0; r < ROUNDS; r++)); do
      redis_point redis_get "$c" 1
      ((REDIS_PIPELINE > 1)) && redis_point redis_get_pipelined "$c" "$REDIS_PIPELINE"
      cache_point cache_get_tcp "$CACHE_TCP" "$c"
      cache_point cache_get_unix "unix:$CACHE_SOCKET" "$c"
    done
  done
  CPU_ARGS=()
  stop_pid "$CACHE_SERVER_PID" 10
  stop_pid "$REDIS_PID" 10
  CACHE_SERVER_PID=""
  REDIS_PID=""
  CACHE_SUMMARY="cache_server (256 MiB, 16 shards, admission on) vs redis-server $REDIS_VERSION (no persistence); $CACHE_KEYS keys of $CACHE_VALUE_BYTES bytes preloaded, a random key per GET; bench/cache_loadgen (async gRPC like loadgen) over TCP and over the unix socket; redis-benchmark -t get -r $CACHE_KEYS -d $CACHE_VALUE_BYTES with the same number of clients, without pipelining and with -P $REDIS_PIPELINE"
}
want cache && cache_bench
# --- end of cache section ---------------------------------------------------------

# --- query_cache and pgpool: cached point reads, read-only and with writes -------
# query_cache: point selects through a query_server of its own (same pool as
# devstack's) whose cache is a cache_server of this section over its unix
# socket, with pgbench_accounts configured as cached; the same hot keys without
# and with a cache policy, so the uncached run reads from PostgreSQL's buffer
# cache too. Invalidation is cache.invalidation's default, "wal" (devstack's
# PostgreSQL runs wal_level=logical): no trigger, writers pay nothing.
# pgpool: pgpool-II with its in-memory query cache (shared memory, invalidated
# by writes through pgpool), the same selects by pgbench -M simple.
# "With writes": a pgbench writer beside the reads, BENCH_WRITES_PER_SEC single-
# row UPDATEs of the same hot keys (straight to PostgreSQL for query, through
# pgpool for pgpool: each invalidates the way its cache expects).
# Both interleave at each concurrency, ROUNDS times.
QUERY_CACHE_KEYS=${BENCH_QUERY_CACHE_KEYS:-1000}
WRITES_PER_SEC=${BENCH_WRITES_PER_SEC:-1000}
QUERY_CACHE_PID=""
PGPOOL_PID=""
WRITER_PID=""
QUERY_CACHE_SUMMARY="not measured"
PGPOOL_SUMMARY="not measured"
PGPOOL=$(command -v pgpool || echo /usr/sbin/pgpool)
PGPOOL_MODES=${BENCH_PGPOOL_MODES:-"simple prepared"}

# start_query_server DIR DATABASE_EXTRA [TOP_LEVEL_EXTRA]: a query_server of a
# section on devstack's database demo (as postgres, pool min_idle=2
# max_size=BENCH_POOL_SIZE), listening and serving /metrics on free ports; its
# configuration DIR/query.json with DATABASE_EXTRA (JSON members, each with a
# leading comma) added to the database and TOP_LEVEL_EXTRA to the top level.
# Sets QS_PID, QS_ADDR and QS_METRICS (host:port of /metrics).
start_query_server() {
  local dir=$1 db_extra=$2 top_extra=${3:-} i
  mkdir -p "$dir"
  rm -f "$dir/query.port" "$dir/metrics.port"
  printf '%s\n' \
    "{\"auth\": {\"disabled\": true}, \"server\": {\"listen\": \"127.0.0.1:0\", \"tls\": {\"plaintext\": true}, \"portFile\": \"$dir/query.port\"," \
    "   \"telemetry\": {\"metrics\": {\"listen\": \"127.0.0.1:0\", \"portFile\": \"$dir/metrics.port\"}}}," \
    " \"databases\": [{\"name\": \"demo\", \"dsn\": \"host=127.0.0.1 port=$PG_PORT dbname=demo user=postgres\", \"allowPrivilegedRole\": true," \
    "   \"pool\": {\"minIdle\": 2, \"maxSize\": $POOL_SIZE}$db_extra}]," \
    " \"defaultDatabase\": \"demo\"$top_extra}" >"$dir/query.json"
  "$BIN/services/query/query_server" --config="$dir/query.json" --log_level=warning >"$dir/query.log" 2>&1 &
  QS_PID=$!
  for ((i = 0; i < 300; i++)); do
    [[ -s $dir/query.port ]] && break
    is_alive "$QS_PID" || { cat "$dir/query.log" >&2; die "query_server ($dir) exited"; }
    sleep 0.1
  done
  QS_ADDR=127.0.0.1:$(cat "$dir/query.port" 2>/dev/null) || die "query_server ($dir) did not start"
  for ((i = 0; i < 100; i++)); do
    [[ -s $dir/metrics.port ]] && break
    sleep 0.1
  done
  QS_METRICS=127.0.0.1:$(cat "$dir/metrics.port" 2>/dev/null) || die "query_server ($dir) serves no /metrics"
}

start_query_cache() {
  start_query_server "$TMP/cache" "" \
    ", \"cache\": {\"target\": \"unix:$CACHE_SOCKET\", \"tables\": [{\"database\": \"demo\", \"tables\": [\"pgbench_accounts\"]}]}"
  QUERY_CACHE_PID=$QS_PID
  QUERY_CACHE_ADDR=$QS_ADDR
  QUERY_CACHE_METRICS=$QS_METRICS
  # Wait until reads are answered from the cache (the listener has subscribed).
  for ((i = 0; i < 100; i++)); do
    "$LOADGEN" --addr="$QUERY_CACHE_ADDR" --callers=1 --duration=0.2 --warmup=0 --keys=1 \
      --cache_ttl_ms=60000 2>/dev/null | grep -q '"not_hits":0' && break
    sleep 0.2
  done
}

start_pgpool() {
  local dir=$TMP/pgpool i max_c=0 c
  for c in $CACHE_CONCURRENCY; do ((c > max_c)) && max_c=$c; done
  mkdir -p "$dir/oiddir"
  PGPOOL_PORT=$(free_port)
  # raw mode (one backend, no replication checks); one pgpool child per client
  # (num_init_children covers the most readers plus the writer), each keeping
  # its backend connection; the query cache in shared memory.
  printf '%s\n' "backend_clustering_mode = 'raw'" \
    "listen_addresses = '127.0.0.1'" "port = $PGPOOL_PORT" "unix_socket_directories = '$dir'" \
    "pcp_listen_addresses = ''" "pcp_port = $(free_port)" "pcp_socket_dir = '$dir'" \
    "backend_hostname0 = '127.0.0.1'" "backend_port0 = $PG_PORT" "backend_weight0 = 1" \
    "backend_flag0 = 'DISALLOW_TO_FAILOVER'" \
    "enable_pool_hba = off" "pool_passwd = ''" "allow_clear_text_frontend_auth = off" \
    "num_init_children = $((max_c + WRITER_CLIENTS + 4))" "max_pool = 1" "child_life_time = 0" \
    "child_max_connections = 0" "connection_life_time = 0" "client_idle_limit = 0" \
    "connection_cache = on" "load_balance_mode = off" \
    "health_check_period = 0" "sr_check_period = 0" "failover_on_backend_error = off" \
    "memory_cache_enabled = on" "memqcache_method = 'shmem'" "memqcache_total_size = 64MB" \
    "memqcache_max_num_cache = 100000" "memqcache_expire = 0" \
    "memqcache_auto_cache_invalidation = on" "memqcache_oiddir = '$dir/oiddir'" \
    "logdir = '$dir'" "pid_file_name = '$dir/pgpool.pid'" "log_destination = 'stderr'" \
    "logging_collector = off" "log_min_messages = warning" >"$dir/pgpool.conf"
  : >"$dir/pcp.conf"
  : >"$dir/pool_hba.conf"
  chown -R postgres: "$dir"
  if command -v setpriv >/dev/null; then
    setpriv --reuid=postgres --regid=postgres --init-groups \
      "$PGPOOL" -n -f "$dir/pgpool.conf" -F "$dir/pcp.conf" -a "$dir/pool_hba.conf" \
      >"$dir/pgpool.log" 2>&1 &
  else
    runuser -u postgres -- "$PGPOOL" -n -f "$dir/pgpool.conf" -F "$dir/pcp.conf" \
      -a "$dir/pool_hba.conf" >"$dir/pgpool.log" 2>&1 &
  fi
  PGPOOL_PID=$!
  for ((i = 0; i < 200; i++)); do
    psql -p "$PGPOOL_PORT" -Atc 'SELECT 1' >/dev/null 2>&1 && break
    is_alive "$PGPOOL_PID" || { tail -30 "$dir/pgpool.log" >&2; die "pgpool exited"; }
    sleep 0.1
  done
  psql -p "$PGPOOL_PORT" -Atc 'SELECT 1' >/dev/null || { tail -30 "$dir/pgpool.log" >&2; die "pgpool not answering"; }
  PGPOOL_VERSION=$("$PGPOOL" --version 2>&1 | awk '{print $3}')
  # Warm-up (not measured): every pgpool child gets its backend connection and
  # the hot keys are cached (10 random reads per key: ~all of them), as
  # loadgen's warm-up does for the query rows.
  printf '%s\n' "\\set aid random(1, $QUERY_CACHE_KEYS)" \
    'SELECT abalance FROM pgbench_accounts WHERE aid = :aid;' >"$TMP/select_hot.sql"
  run pgbench -p "$PGPOOL_PORT" -n -M simple -f "$TMP/select_hot.sql" -c "$max_c" \
    -j "$PGBENCH_THREADS" -t $(((10 * QUERY_CACHE_KEYS + max_c - 1) / max_c)) \
    >"$TMP/out.txt" 2>&1 || { tail -20 "$TMP/out.txt" >&2; die "pgbench warm-up through pgpool failed"; }
  log "pgpool: $(psql -p "$PGPOOL_PORT" -AtF ' ' -c 'SHOW pool_cache' | awk '{ print $6 }') query results cached after the warm-up"
}

# start_writer PORT MODE SECONDS: WRITES_PER_SEC single-row UPDATEs of the hot
# keys, in the background (WRITER_PID), until SECONDS have passed; from
# WRITER_CLIENTS connections, so that commits waiting for fsync do not hold
# the rate down (the rate reached is reported).
WRITER_CLIENTS=8
start_writer() {
  printf '%s\n' "\\set aid random(1, $QUERY_CACHE_KEYS)" \
    'UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;' >"$TMP/write.sql"
  pgbench -p "$1" -n -M "$2" -f "$TMP/write.sql" -c "$WRITER_CLIENTS" -j 1 -R "$WRITES_PER_SEC" -T "$3" \
    >"$TMP/writer.log" 2>&1 &
  WRITER_PID=$!
}

# finish_writer: waits for the writer's end; WRITES_DONE: the writes/s it did.
finish_writer() {
  local rc=0
  wait "$WRITER_PID" || rc=$?
  WRITER_PID=""
  ((rc == 0)) || { tail -20 "$TMP/writer.log" >&2; die "the pgbench writer failed"; }
  WRITES_DONE=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' "$TMP/writer.log")
}

# scrape_metrics FILE [HOST:PORT]: a query_server's /metrics, by default the
# cached one's (its invalidation delay histogram: commit on the server to
# applied in this replica).
scrape_metrics() {
  local at=${2:-$QUERY_CACHE_METRICS}
  python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
    "http://$at/metrics" >"$1" || die "cannot read http://$at/metrics"
}

query_cache_point() {  # scenario clients ttl [writes]
  local scenario=$1 c=$2 ttl=$3 writes=${4:-} pm setting="no cache policy" w=()
  BUSY=$(wait_idle)
  log "$scenario c=$c (other CPU load ${BUSY}%)"
  pm=$(postmaster_pid) || true
  CPU_ARGS=(--proc "query_server=$QUERY_CACHE_PID" --proc "cache_server=$CACHE_SERVER_PID")
  [[ -n $pm ]] && CPU_ARGS+=(--tree "postgres=$pm")
  ((ttl > 0)) && setting="cache ttl ${ttl} ms; query pool max_size=$POOL_SIZE"
  if [[ -n $writes ]]; then
    scrape_metrics "$TMP/metrics.before"
    start_writer "$PG_PORT" prepared "$(awk -v s="$SECS" -v w="$WARMUP" 'BEGIN { printf "%d\n", s + w + 1.999 }')"
    CPU_ARGS+=(--client "$WRITER_PID")
  fi
  measured "$WARMUP" "$SECS" "$LOADGEN" --addr="$QUERY_CACHE_ADDR" --callers="$c" \
    --duration="$SECS" --warmup="$WARMUP" --keys="$QUERY_CACHE_KEYS" --cache_ttl_ms="$ttl" \
    --label="c=$c" >"$TMP/out.txt" 2>"$TMP/loadgen.err" \
    || { cat "$TMP/loadgen.err" >&2; die "loadgen failed ($scenario c=$c)"; }
  CPU_ARGS=()
  if [[ -n $writes ]]; then
    finish_writer
    # The last batches' invalidations are applied within the heartbeat.
    sleep 0.5
    scrape_metrics "$TMP/metrics.after"
    w=(--writes-per-sec "$WRITES_DONE" --delay-before "$TMP/metrics.before"
       --delay-after "$TMP/metrics.after")
  fi
  [[ -s $TMP/loadgen.err ]] && cat "$TMP/loadgen.err" >&2
  add_point loadgen --scenario "$scenario" --concurrency "$c" --output "$TMP/out.txt" \
    --setting "$setting" "${w[@]}"
}

# pgpool's query cache counters: hits and SELECTs since it started.
pgpool_cache_counts() {
  psql -p "$PGPOOL_PORT" -AtF ' ' -c 'SHOW pool_cache' | awk '{ print $1, $2; exit }'
}

pgpool_point() {  # scenario clients mode [writes]
  local scenario=$1 c=$2 mode=$3 writes=${4:-} w=() pm hits0 hits1
  BUSY=$(wait_idle)
  log "$scenario c=$c -M $mode (other CPU load ${BUSY}%)"
  pm=$(postmaster_pid) || true
  CPU_ARGS=(--tree "pgpool=$PGPOOL_PID")
  [[ -n $pm ]] && CPU_ARGS+=(--tree "postgres=$pm")
  if [[ -n $writes ]]; then
    start_writer "$PGPOOL_PORT" simple "$(awk -v s="$SECS" 'BEGIN { printf "%d\n", s + 1.999 }')"
    CPU_ARGS+=(--client "$WRITER_PID")
  fi
  rm -f "$TMP/pgb_log".*
  read -r -a hits0 < <(pgpool_cache_counts)
  measured 0 "$SECS" pgbench -p "$PGPOOL_PORT" -n -M "$mode" -f "$TMP/select_hot.sql" -c "$c" \
    -j "$PGBENCH_THREADS" -T "$SECS" -l --sampling-rate="$SAMPLING" --log-prefix="$TMP/pgb_log" \
    >"$TMP/out.txt" 2>&1 || { tail -20 "$TMP/out.txt" >&2; die "pgbench through pgpool failed ($scenario c=$c)"; }
  CPU_ARGS=()
  read -r -a hits1 < <(pgpool_cache_counts)
  if [[ -n $writes ]]; then
    finish_writer
    w=(--writes-per-sec "$WRITES_DONE")
  fi
  w+=(--cache-hits "$((hits1[0] - hits0[0]))" --cache-selects "$((hits1[1] - hits0[1]))")
  add_point pgbench --scenario "$scenario" --concurrency "$c" --output "$TMP/out.txt" \
    --log-prefix "$TMP/pgb_log" --setting "pgbench -M $mode${PGPOOL_BEST_OF:-} -j $PGBENCH_THREADS" "${w[@]}"
}

# pgpool_best_mode CLIENTS: with more than one of PGPOOL_MODES, one read-only
# run in each (scenario pgpool_sweep, kept in the JSON) and PGPOOL_MODE the
# fastest; pgpool-II caches simple and extended-protocol SELECTs alike.
pgpool_best_mode() {
  local c=$1 mode best_ops=0 ops modes
  read -r -a modes <<<"$PGPOOL_MODES"
  PGPOOL_MODE=${modes[0]}
  PGPOOL_BEST_OF=""
  ((${#modes[@]} > 1)) || return 0
  for mode in "${modes[@]}"; do
    pgpool_point pgpool_sweep "$c" "$mode"
    ops=$(last_ops)
    if awk -v a="$ops" -v b="$best_ops" 'BEGIN { exit !(a > b) }'; then
      PGPOOL_MODE=$mode
      best_ops=$ops
    fi
  done
  PGPOOL_BEST_OF=" (best of ${PGPOOL_MODES// //})"
}

# --- writetax: what caching a table costs its writers ----------------------------
# pgbench single-row UPDATEs at random rows of pgbench_accounts (cached: the
# query_server of this section publishes it and its WAL relay decodes and relays
# every change) against the same UPDATEs of pgbench_accounts_plain, an identical
# copy nobody caches, alternating ROUNDS times at each concurrency, both with
# the same services running; durable commits unless BENCH_FAST.
WRITE_CONCURRENCY=${BENCH_WRITE_CONCURRENCY:-"8 32"}
WRITETAX_SUMMARY="not measured"

write_point() {  # scenario table clients
  local scenario=$1 table=$2 c=$3 pm
  BUSY=$(wait_idle)
  log "$scenario c=$c (other CPU load ${BUSY}%)"
  printf '%s\n' "\\set aid random(1, $((SCALE * 100000)))" \
    "UPDATE $table SET abalance = abalance + 1 WHERE aid = :aid;" >"$TMP/update.sql"
  pm=$(postmaster_pid) || true
  CPU_ARGS=(--proc "query_server=$QUERY_CACHE_PID" --proc "cache_server=$CACHE_SERVER_PID")
  [[ -n $pm ]] && CPU_ARGS+=(--tree "postgres=$pm")
  rm -f "$TMP/pgb_log".*
  measured 0 "$SECS" pgbench -p "$PG_PORT" -n -M prepared -f "$TMP/update.sql" -c "$c" \
    -j "$PGBENCH_THREADS" -T "$SECS" -l --sampling-rate="$SAMPLING" --log-prefix="$TMP/pgb_log" \
    >"$TMP/out.txt" 2>&1 || { tail -20 "$TMP/out.txt" >&2; die "pgbench UPDATEs failed ($scenario c=$c)"; }
  CPU_ARGS=()
  add_point pgbench --scenario "$scenario" --concurrency "$c" --output "$TMP/out.txt" \
    --log-prefix "$TMP/pgb_log" --setting "pgbench -M prepared -j $PGBENCH_THREADS; table $table"
}

writetax_bench() {
  local c r
  log "writetax: copying pgbench_accounts to pgbench_accounts_plain"
  psql -p "$PG_PORT" -q -v ON_ERROR_STOP=1 \
    -c 'DROP TABLE IF EXISTS pgbench_accounts_plain' \
    -c 'CREATE TABLE pgbench_accounts_plain (LIKE pgbench_accounts INCLUDING ALL)' \
    -c 'INSERT INTO pgbench_accounts_plain SELECT * FROM pgbench_accounts' \
    -c 'VACUUM ANALYZE pgbench_accounts_plain' -c 'VACUUM ANALYZE pgbench_accounts' -c CHECKPOINT \
    >/dev/null || die "cannot copy pgbench_accounts"
  # The cached table is in poolside's publication by now (the query_server
  # waited for cache hits before this).
  psql -p "$PG_PORT" -Atc "SELECT count(*) FROM pg_publication_tables WHERE tablename = 'pgbench_accounts'" \
    | grep -qx '[1-9][0-9]*' || die "pgbench_accounts is not published for the cache"
  for c in $WRITE_CONCURRENCY; do
    for ((r = 0; r < ROUNDS; r++)); do
      write_point write_uncached pgbench_accounts_plain "$c"
      write_point write_cached pgbench_accounts "$c"
    done
  done
  psql -p "$PG_PORT" -q -c 'DROP TABLE pgbench_accounts_plain' >/dev/null || true
  WRITETAX_SUMMARY="pgbench -M prepared single-row UPDATE ... SET abalance = abalance + 1 at a random aid of $((SCALE * 100000)) rows; pgbench_accounts is cached by a running query_server (invalidation from the WAL: published, decoded and relayed), pgbench_accounts_plain is an identical copy nobody caches; both with the same services running, $PG_DURABILITY"
}

cached_reads_bench() {
  local c
  if want query_cache && [[ ! -x $BIN/services/query/query_server || -n ${BENCH_PG_PORT:-} ]]; then
    log "query_cache: skipped (no query_server, or an external PostgreSQL)"
    unset 'WANT[query_cache]'
  fi
  if want pgpool && [[ ! -x $PGPOOL ]]; then
    [[ -n ${BENCH_ONLY:-} ]] && die "pgpool not found (make deps)"
    log "pgpool: skipped (pgpool not installed; make deps)"
    unset 'WANT[pgpool]'
  fi
  if want writetax && [[ ! -x $BIN/services/query/query_server || -n ${BENCH_PG_PORT:-} ]]; then
    [[ -n ${BENCH_ONLY:-} ]] && die "writetax needs the query_server build and devstack's PostgreSQL"
    log "writetax: skipped (no query_server, or an external PostgreSQL)"
    unset 'WANT[writetax]'
  fi
  want query_cache || want pgpool || want writetax || return 0
  if want query_cache || want writetax; then
    start_cache_server
    start_query_cache
  fi
  want writetax && writetax_bench
  want pgpool && start_pgpool
  for c in $CACHE_CONCURRENCY; do
    want query_cache || want pgpool || break
    want pgpool && pgpool_best_mode "$c"
    for ((r = 0; r < ROUNDS; r++)); do
      if want query_cache; then
        query_cache_point query_uncached "$c" 0
        query_cache_point query_cached "$c" 60000
      fi
      want pgpool && pgpool_point pgpool_cached "$c" "$PGPOOL_MODE"
      if want query_cache; then
        query_cache_point query_uncached_writes "$c" 0 writes
        query_cache_point query_cached_writes "$c" 60000 writes
      fi
      want pgpool && pgpool_point pgpool_cached_writes "$c" "$PGPOOL_MODE" writes
    done
  done
  if want query_cache || want writetax; then
    stop_pid "$QUERY_CACHE_PID" 20
    stop_pid "$CACHE_SERVER_PID" 10
    QUERY_CACHE_PID=""
    CACHE_SERVER_PID=""
  fi
  if want query_cache; then
    QUERY_CACHE_SUMMARY="SELECT abalance FROM pgbench_accounts WHERE aid = \$1 with aid random in [1, $QUERY_CACHE_KEYS] (hot: every key cached after the warm-up); a query_server (pool min_idle=2 max_size=$POOL_SIZE) whose sidecar is a cache_server over its unix socket; loadgen without a cache policy, then with ttl 60 s, then without a cache policy and with ttl 60 s beside $WRITES_PER_SEC UPDATEs/s of the same keys straight to PostgreSQL (invalidation from the WAL)"
  fi
  if want pgpool; then
    stop_pid "$PGPOOL_PID" 20
    PGPOOL_PID=""
    PGPOOL_SUMMARY="pgpool-II $PGPOOL_VERSION (raw mode, one child per client, memory_cache_enabled with memqcache_method=shmem, auto invalidation); the same SELECT with aid random in [1, $QUERY_CACHE_KEYS] by pgbench (-M of ${PGPOOL_MODES// //}, the faster at each concurrency), read-only and beside $WRITES_PER_SEC UPDATEs/s of the same keys through pgpool (-M simple)"
  fi
}
cached_reads_bench
# --- end of query_cache and pgpool sections --------------------------------------

# --- replicas: point reads routed over two streaming replicas vs the primary alone
# Two streaming replicas of devstack's PostgreSQL on this host, made as
# tests/fixtures/replicated_cluster makes them (pg_basebackup -R from the
# primary, a physical replication slot each; the primary's settings, durable
# ones included, come with the copy), each on a free port in $TMP/replica-N.
# Two query_servers of this section on database demo, alike but for the
# topology: one with the primary alone, one with the two replicas listed
# (topology.replicas: reads go to a replica, docs/replicas.md). Both run
# throughout, and the replicas too, so what runs idle (the topology's probes,
# WAL replay) weighs on both rows alike. The same point selects as the query
# section (loadgen, random aid) through each, alternating ROUNDS times at each
# concurrency in BENCH_REPLICA_CONCURRENCY. Every server shares the machine's
# cores: this measures what routing costs per read, not read scaling.
REPLICA_CONCURRENCY=${BENCH_REPLICA_CONCURRENCY:-"32 64"}
# The routed service's pool max_size per member (each replica gets its own
# pool: with the default, twice the connections reading as the primary alone).
REPLICA_POOL_SIZE=${BENCH_REPLICA_POOL_SIZE:-$POOL_SIZE}
REPLICA_COUNT=2
REPLICAS_SUMMARY="not measured"
QUERY_SINGLE_PID=""
QUERY_ROUTED_PID=""
REPLICA_MEMBERS=""

# as_postgres CMD...: CMD as the postgres user (PostgreSQL refuses root).
as_postgres() {
  if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi
}

start_replica() {  # index: $TMP/replica-INDEX, streaming from devstack's primary
  local i=$1 dir=$TMP/replica-$1 port
  port=$(free_port)
  mkdir -p "$dir"
  ((EUID == 0)) && chown postgres: "$dir"
  chmod 700 "$dir"
  as_postgres "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$dir" -R \
    -X stream -C -S "bench_replica_$i" --checkpoint=fast --no-sync >"$TMP/basebackup-$i.log" 2>&1 \
    || { cat "$TMP/basebackup-$i.log" >&2; die "pg_basebackup for replica $i failed"; }
  # Its own port and socket directory (the copied settings name the primary's).
  as_postgres "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -o "-p $port -k $dir" -w -t 120 \
    start >/dev/null || { tail -30 "$dir/server.log" >&2; die "replica $i did not start"; }
  [[ $(psql -p "$port" -Atc 'SELECT pg_is_in_recovery()') == t ]] || die "replica $i is not in recovery"
  REPLICA_MEMBERS+="${REPLICA_MEMBERS:+ }127.0.0.1:$port"
}

stop_replicas() {
  local i dir
  for ((i = 1; i <= REPLICA_COUNT; i++)); do
    dir=$TMP/replica-$i
    [[ -f $dir/postmaster.pid ]] && as_postgres "$PG_BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
    psql -p "$PG_PORT" -q -c "SELECT pg_drop_replication_slot('bench_replica_$i')
      WHERE EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = 'bench_replica_$i')" \
      >/dev/null 2>&1 || true
  done
}

# replica_point SCENARIO CLIENTS: loadgen through the single-primary or the
# routed query_server; the routed calls per member from its /metrics.
replica_point() {
  local scenario=$1 c=$2 addr pid metrics setting i primary=false
  if [[ $scenario == replicas_routed || $scenario == replicas_routed_primary ]]; then
    addr=$QUERY_ROUTED_ADDR pid=$QUERY_ROUTED_PID metrics=$QUERY_ROUTED_METRICS
    setting="topology: primary + $REPLICA_COUNT replicas; pool max_size=$REPLICA_POOL_SIZE per member"
    if [[ $scenario == replicas_routed_primary ]]; then
      primary=true
      setting+="; every read forced to the primary (ExecuteRequest.primary)"
    fi
  else
    addr=$QUERY_SINGLE_ADDR pid=$QUERY_SINGLE_PID metrics=$QUERY_SINGLE_METRICS
    setting="primary alone; pool max_size=$POOL_SIZE"
  fi
  BUSY=$(wait_idle)
  log "$scenario c=$c (other CPU load ${BUSY}%)"
  split_cpu "query_server=$pid"
  for ((i = 1; i <= REPLICA_COUNT; i++)); do
    CPU_ARGS+=(--tree "replica_$i=$(head -1 "$TMP/replica-$i/postmaster.pid")")
  done
  scrape_metrics "$TMP/replicas/metrics.before" "$metrics"
  measured "$WARMUP" "$SECS" "$LOADGEN" --addr="$addr" --callers="$c" --duration="$SECS" \
    --warmup="$WARMUP" --keys=$((SCALE * 100000)) --primary="$primary" --label="c=$c" \
    >"$TMP/out.txt" 2>"$TMP/loadgen.err" \
    || { cat "$TMP/loadgen.err" >&2; die "loadgen failed ($scenario c=$c)"; }
  CPU_ARGS=()
  scrape_metrics "$TMP/replicas/metrics.after" "$metrics"
  [[ -s $TMP/loadgen.err ]] && cat "$TMP/loadgen.err" >&2
  add_point loadgen --scenario "$scenario" --concurrency "$c" --output "$TMP/out.txt" \
    --setting "$setting" --routed-before "$TMP/replicas/metrics.before" \
    --routed-after "$TMP/replicas/metrics.after"
}

replicas_bench() {
  local c r i m members=""
  if [[ -n ${BENCH_PG_PORT:-} || ! -x $BIN/services/query/query_server ]]; then
    [[ -n ${BENCH_ONLY:-} ]] && die "replicas needs devstack's PostgreSQL and the query_server build"
    log "replicas: skipped (no query_server, or an external PostgreSQL)"
    return 0
  fi
  mkdir -p "$TMP/replicas"
  for ((i = 1; i <= REPLICA_COUNT; i++)); do start_replica "$i"; done
  for ((i = 0; i < 300; i++)); do
    (($(psql -p "$PG_PORT" -Atc "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") \
      >= REPLICA_COUNT)) && break
    sleep 0.1
  done
  (($(psql -p "$PG_PORT" -Atc "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") \
    >= REPLICA_COUNT)) || die "the replicas are not streaming"
  for m in $REPLICA_MEMBERS; do
    members+="${members:+, }\"host=${m%:*} port=${m#*:}\""
  done
  start_query_server "$TMP/replicas/single" ""
  QUERY_SINGLE_PID=$QS_PID QUERY_SINGLE_ADDR=$QS_ADDR QUERY_SINGLE_METRICS=$QS_METRICS
  POOL_SIZE=$REPLICA_POOL_SIZE start_query_server "$TMP/replicas/routed" \
    ", \"topology\": {\"replicas\": [$members]}"
  QUERY_ROUTED_PID=$QS_PID QUERY_ROUTED_ADDR=$QS_ADDR QUERY_ROUTED_METRICS=$QS_METRICS
  # Reads reach a replica once the routed service's probes have seen them.
  for ((i = 0; i < 100; i++)); do
    "$LOADGEN" --addr="$QUERY_ROUTED_ADDR" --callers=1 --duration=0.2 --warmup=0 --keys=1 \
      >/dev/null 2>&1 || true
    scrape_metrics "$TMP/replicas/metrics.ready" "$QUERY_ROUTED_METRICS"
    grep -qE '^poolside_query_member_routed_total\{[^}]*member="('"${REPLICA_MEMBERS// /|}"')"[^}]*\} [1-9]' \
      "$TMP/replicas/metrics.ready" && break
    sleep 0.2
  done
  ((i < 100)) || { cat "$TMP/replicas/routed/query.log" >&2; die "the routed query_server sends no read to a replica"; }
  for c in $REPLICA_CONCURRENCY; do
    for ((r = 0; r < ROUNDS; r++)); do
      replica_point replicas_single_primary "$c"
      replica_point replicas_routed "$c"
      replica_point replicas_routed_primary "$c"
    done
  done
  stop_pid "$QUERY_ROUTED_PID" 20
  stop_pid "$QUERY_SINGLE_PID" 20
  QUERY_ROUTED_PID="" QUERY_SINGLE_PID=""
  stop_replicas
  REPLICAS_SUMMARY="the query section's point selects (loadgen, random aid of $((SCALE * 100000))) through two query_servers on the same database, one configured with the primary alone, one with the primary and $REPLICA_COUNT streaming replicas on this host (pg_basebackup -R, a replication slot each; topology defaults: probes every 250 ms, maxLagMs 5000), pool min_idle=2 max_size=$POOL_SIZE (routed: max_size=$REPLICA_POOL_SIZE per member), alternating; both services and all three PostgreSQL servers ran throughout; $PG_DURABILITY"
}
want replicas && replicas_bench
# --- end of replicas section --------------------------------------------------------

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
print("; ".join(parts) + " (devstack, BENCH_POOL_SIZE)")
EOF
)
elif [[ -n $QUERY_ADDR ]]; then
  query_summary="external, $QUERY_ADDR"
fi

cmd="bench/run.sh"
vars=""
for v in BENCH_ONLY BENCH_FAST BENCH_SECONDS BENCH_ROUNDS BENCH_CONCURRENCY BENCH_SCALE \
         BENCH_WARMUP BENCH_POOL_SIZE BENCH_POOL_SIZES BENCH_PGBENCH_THREADS BENCH_SAMPLING_RATE \
         BENCH_IDLE_WAIT BENCH_NO_POOLSIDE BENCH_NO_CACHE BENCH_CACHE_CONCURRENCY \
         BENCH_REDIS_PIPELINE BENCH_QUERY_CACHE_KEYS BENCH_WRITES_PER_SEC BENCH_PGPOOL_MODES \
         BENCH_INGEST_ROWS BENCH_WRITE_CONCURRENCY BENCH_REPLICA_CONCURRENCY BENCH_REPLICA_POOL_SIZE \
         BENCH_INGEST_PRODUCERS BENCH_INGEST_COPY_CONNECTIONS; do
  if [[ ${!v:-} =~ ^[A-Za-z0-9_,./:-]+$ ]]; then
    vars+="$v=${!v} "
  elif [[ -n ${!v:-} ]]; then
    vars+="$v='${!v//\'/\'\\\'\'}' "
  fi
done
cmd="${vars:-}$cmd"
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
    "sections": "$SECTIONS".split(","),
    "postgres_version": "$PG_VERSION",
    "postgres_durability": "$PG_DURABILITY",
    "fast": $([[ -n ${BENCH_FAST:-} ]] && echo True || echo False),
    "postgres_source": "$([[ -n ${BENCH_PG_PORT:-} ]] && echo "an existing server" || echo devstack)",
    "pgbouncer_version": "$BOUNCER_VERSION",
    "pgbouncer_pool_sizes": [int(x) for x in "$POOL_SIZES".split()],
    "query_pool_size": $POOL_SIZE,
    "redis_pipeline": $REDIS_PIPELINE,
    "writes_per_sec": $WRITES_PER_SEC,
    "query_service": """$query_summary""",
    "cache": """${CACHE_SUMMARY:-not measured}""",
    "query_cache": """${QUERY_CACHE_SUMMARY:-not measured}""",
    "pgpool": """${PGPOOL_SUMMARY:-not measured}""",
    "writetax": """${WRITETAX_SUMMARY:-not measured}""",
    "replicas": """${REPLICAS_SUMMARY:-not measured}""",
    "replicas_primary": "127.0.0.1:$PG_PORT",
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
