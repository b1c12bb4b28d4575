#!/usr/bin/env bash
# bench/instructions_per_call.sh QUERY_SERVER CACHE_SERVER LOADGEN KIND CALLERS SECONDS
#
# Instructions (valgrind's callgrind, Ir) one query_server build executes per
# Execute call: a throwaway PostgreSQL (pgbench scale 1), a cache_server, the
# query_server under callgrind; 10 s of load as warm-up, then the counters are
# zeroed, LOADGEN (bench/loadgen) runs CALLERS callers for SECONDS, and the
# counters are dumped. KIND: "uncached" (random aid of 100,000) or "cached"
# (100 hot keys, cache ttl). Prints ops, Ir and Ir per call; KEEP=FILE keeps the
# callgrind output for callgrind_annotate. Counts do not depend on what else the
# machine runs (unlike ops/s on a shared VM), so two builds compare to a percent;
# time-driven background work (catalog refresh, the WAL relay) is counted too
# and weighs more than in a real run, since the server runs ~50x slower.
set -euo pipefail
QS=$1 CS=$2 LG=$3 KIND=$4 C=$5 SECS=$6
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
T=$(mktemp -d /tmp/irpc.XXXXXX); chmod 755 "$T"
trap 'kill $QPID $CPID 2>/dev/null; sleep 1; runuser -u postgres -- $PG_BIN/pg_ctl -D $T/pg stop -m immediate >/dev/null 2>&1; rm -rf $T' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p $T/pg && chown postgres: $T/pg
runuser -u postgres -- $PG_BIN/initdb -D $T/pg -A trust -U postgres >/dev/null
printf '%s\n' "port = $port" "listen_addresses = '127.0.0.1'" "unix_socket_directories = ''" "wal_level = logical" "fsync = off" >> $T/pg/postgresql.conf
runuser -u postgres -- $PG_BIN/pg_ctl -D $T/pg -l $T/pg/log -w start >/dev/null
export PGHOST=127.0.0.1 PGUSER=postgres
createdb -p $port demo; pgbench -p $port -i -s 1 -q demo >/dev/null 2>&1
psql -p $port -q -d demo -c 'GRANT SELECT ON pgbench_accounts TO PUBLIC'
echo "{\"server\": {\"listen\": \"unix:$T/cache.sock\", \"tls\": {\"plaintext\": true}}}" > $T/cache.json
$CS --config=$T/cache.json --log_level=warning > $T/cache.log 2>&1 & CPID=$!
echo "{\"auth\": {\"disabled\": true}, \"server\": {\"listen\": \"127.0.0.1:0\", \"tls\": {\"plaintext\": true}, \"portFile\": \"$T/q.port\"}, \"databases\": [{\"name\": \"demo\", \"dsn\": \"host=127.0.0.1 port=$port dbname=demo user=postgres\", \"allowPrivilegedRole\": true, \"pool\": {\"minIdle\": 2, \"maxSize\": 4}}], \"defaultDatabase\": \"demo\", \"cache\": {\"target\": \"unix:$T/cache.sock\", \"tables\": [{\"database\": \"demo\", \"tables\": [\"pgbench_accounts\"]}]}}" > $T/q.json
sleep 1
valgrind --tool=callgrind --callgrind-out-file=$T/cg.out.%p $QS --config=$T/q.json --log_level=warning > $T/q.log 2>&1 & QPID=$!
for i in $(seq 600); do [[ -s $T/q.port ]] && break; sleep 0.2; done
addr=127.0.0.1:$(cat $T/q.port)
if [[ $KIND == cached ]]; then args=(--keys=100 --cache_ttl_ms=600000); else args=(--keys=100000); fi
$LG --addr=$addr --callers=$C --duration=10 --warmup=0 "${args[@]}" >/dev/null 2>&1
callgrind_control -z $QPID >/dev/null
out=$($LG --addr=$addr --callers=$C --duration=$SECS --warmup=0 "${args[@]}" 2>/dev/null)
callgrind_control -d $QPID >/dev/null
sleep 2
ops=$(grep -oE '"ops":[0-9]+' <<<"$out" | cut -d: -f2)
nh=$(grep -oE '"not_hits":[0-9]+' <<<"$out" | cut -d: -f2 || true)
ir=0
for f in $T/cg.out.$QPID.*; do
  v=$(grep -E '^summary:|^totals:' "$f" | head -1 | awk '{print $2}'); ir=$((ir + v))
done
[[ -n ${KEEP:-} ]] && cat $T/cg.out.$QPID.* > $KEEP
echo "$KIND c=$C ops=$ops not_hits=${nh:-?} Ir=$ir Ir/call=$((ir / ops))"
