#!/usr/bin/env bash
# The layering rule the build enforces: a service core, and the common
# libraries cores are built on, know no gRPC. They depend on message-only proto
# targets (//proto:*_cc_proto), never on a *_cc_grpc target or @system//:grpc;
# gRPC belongs to the adapters (services/*/*_service, sidecar_client), the
# server mains, common/server and the clients. Part of `make test`
# (tools/test.sh); by hand: tools/check_layers.sh
#
# Fails, naming the dependency path, when a listed core reaches gRPC, and when
# a listed target does not exist (a renamed core must be renamed here too).
set -uo pipefail
cd "$(dirname "$0")/.."
BAZEL=${BAZEL:-bazel}

# The cores: add a new core library here.
CORES=(
  # query: engine, read cache, database layer and their parts
  //services/query:query_engine
  //services/query:read_cache
  //services/query:database
  //services/query:cache_bypass
  //services/query:cache_client
  //services/query:cached_read
  //services/query:index_advice
  //services/query:in_flight
  //services/query:invalidation
  //services/query:invalidation_state
  //services/query:lsn_waiters
  //services/query:named_queries
  //services/query:near_cache
  //services/query:owned_statement
  //services/query:query_config
  //services/query:query_metrics
  //services/query:relay_message
  //services/query:replicas
  //services/query:result_sinks
  //services/query:row_keys
  //services/query:sidecar_breaker
  //services/query:single_flight
  //services/query:statement_plans
  //services/query:statement_stats
  //services/query:wal_relay
  # ingest core
  //services/ingest:ingest_engine
  //services/ingest:batcher
  //services/ingest:flusher
  //services/ingest:request_reader
  //services/ingest:ingest_config
  //services/ingest:ingest_metrics
  # cache sidecar: its store and configuration
  //common/cache:cache_store
  //services/cache:cache_config
  //services/cache:cache_metrics
  # what the cores are built on
  //common/auth:authorizer
  //common/clock
  //common/config:database_config
  //common/config:database_roles
  //common/config:json_config
  //common/config:sizing
  //common/db:catalog
  //common/db:connection
  //common/db:copy
  //common/db:hypothetical_index
  //common/db:logical_stream
  //common/db:topology
  //common/db:topology_monitor
  //common/db:member_probe
  //common/db:patroni_client
  //common/db:value_codec
  //common/pool
  //common/sql:statement_analyzer
  //common/sql:index_candidates
  //common/telemetry:log
  //common/telemetry:metrics
  //common/telemetry:trace
)
# What a core must not reach: gRPC itself (every *_cc_grpc target depends on it).
GRPC=@system//:grpc

fail() {
  echo "check_layers: $*" >&2
  echo "check_layers: FAILED (the layering rule is stated at the top of tools/check_layers.sh)" >&2
  exit 1
}

cores="set(${CORES[*]})"
if ! err=$($BAZEL query --noshow_progress "$cores" 2>&1 >/dev/null); then
  grep -E "no such (target|package)|ERROR" <<<"$err" | head -5 >&2
  fail "a target listed in CORES does not exist (rename it in tools/check_layers.sh too)"
fi

# One query for all: the listed cores from which gRPC is reachable.
offenders=$($BAZEL query --noshow_progress "$cores intersect rdeps($cores, $GRPC)" 2>/dev/null) ||
  fail "bazel query over the cores failed"
if [[ -n $offenders ]]; then
  for core in $offenders; do
    path=$($BAZEL query --noshow_progress "somepath($core, $GRPC)" 2>/dev/null | paste -sd' ')
    echo "check_layers: $core depends on gRPC: ${path// / -> }" >&2
  done
  fail "$(wc -w <<<"$offenders") core(s) depend on gRPC: depend on //proto:*_cc_proto instead of *_cc_grpc, and keep gRPC code in the adapter"
fi
echo "check_layers: ${#CORES[@]} cores, none depends on gRPC"
