#ifndef POOLSIDE_SERVICES_QUERY_QUERY_METRICS_H_
#define POOLSIDE_SERVICES_QUERY_QUERY_METRICS_H_

// The query service's series on /metrics and its status page sections, read at
// scrape time from the engine's own statistics (pool stats, statement stats,
// the read cache's counters):
//   poolside_pool_*{database}                      (common/telemetry/metrics_pool.h)
//   poolside_query_queued_calls{database}
//   poolside_query_pipelines_total, poolside_query_pipelined_statements_total{database}
//   poolside_statement_duration_seconds{database}                 histogram
//   poolside_statements_total, poolside_statement_errors_total,
//   poolside_statement_rows_total{database}
//   poolside_query_cache_requests_total{outcome=hit|stale|miss|bypass}
//   poolside_query_cache_{near_hits,coalesced,fills,fills_refused,sidecar_errors}_total
//   poolside_query_cache_invalidations_total{source=notify|write|flush}
//   poolside_query_cache_bypass_total{reason}, poolside_query_cache_keyed_fills_total,
//   poolside_query_cache_token_waits_total{result=reached|timeout}
//   poolside_query_cache_invalidation_{mode{mode},ready}{database}
//   poolside_query_cache_wal_{holder,applied_lsn,silence_seconds,lag_seconds}{database}
//   poolside_query_cache_wal_{streams,terms}_total{database}
//   poolside_query_cache_wal_token_fences_total{database,result=committed|failed}
//   poolside_query_cache_invalidation_delay_seconds{database}        histogram
//   poolside_query_cache_near_{entries,bytes,capacity_bytes,serving,watch_generation}
//   poolside_query_cache_near_{misses,fills,fills_refused,evictions,invalidations,
//                              watch_events,subscriptions}_total
//   poolside_query_member_{role{role},healthy,banned,lag_seconds,lag_bytes,
//                          outstanding_calls}{database,member}
//   poolside_query_member_{routed,bans}_total{database,member}
//   poolside_query_replica_token_waits_total{database,result=reached|timeout}
//   poolside_query_read_retries_total{database,reason=server_shutdown|connect_failed|
//                                     connection_lost}
//   poolside_query_failover_{held,held_timeouts,held_seconds}_total{database},
//   poolside_query_failover_held_calls{database}
//   poolside_query_failover_held_duration_seconds{database}          histogram
// Also applies server.telemetry.log.slow_statement_ms to the statement stats.
//
//   QueryMetrics query_metrics(&engine, &metrics, config.server().telemetry());
//
// Thread-safe. Unregisters in its destructor: declare it after the engine.

#include "common/telemetry/metrics.h"
#include "proto/poolside/v1/config.pb.h"
#include "services/query/query_engine.h"

namespace poolside::query {

class QueryMetrics {
 public:
  QueryMetrics(QueryEngine* engine, telemetry::MetricsRegistry* registry,
               const v1::TelemetryConfig& config);

 private:
  QueryEngine* const engine_;
  telemetry::MetricsRegistry::Registration collector_;
  telemetry::MetricsRegistry::Registration pools_;
  telemetry::MetricsRegistry::Registration members_;
  telemetry::MetricsRegistry::Registration holds_;
  telemetry::MetricsRegistry::Registration cache_;
  telemetry::MetricsRegistry::Registration invalidation_;
  telemetry::MetricsRegistry::Registration statements_;
};

// The slow-statement threshold a LogConfig asks for: absent 1 s, 0 off.
absl::Duration SlowStatementThreshold(const v1::LogConfig& config);

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_QUERY_METRICS_H_
