#ifndef POOLSIDE_SERVICES_INGEST_INGEST_METRICS_H_
#define POOLSIDE_SERVICES_INGEST_INGEST_METRICS_H_

// The ingest service's series on /metrics and its status page sections, read at
// scrape time from IngestEngine::GetStats() and its pools:
//   poolside_ingest_rows_total, poolside_ingest_bytes_total       committed
//   poolside_ingest_rows_rejected_total
//   poolside_ingest_batches_total{result=committed|failed}
//   poolside_ingest_flushes_total{reason=rows|bytes|linger|drain}
//   poolside_ingest_copy_statements_total
//   poolside_ingest_requests_total, poolside_ingest_requests_failed_total,
//   poolside_ingest_duplicate_requests_total
//   poolside_ingest_refused_total, poolside_ingest_stream_waits_total
//   poolside_ingest_queued_requests, poolside_ingest_queued_batches
//   poolside_ingest_buffer_bytes, poolside_ingest_buffer_bytes_max,
//   poolside_ingest_buffer_limit_bytes
//   poolside_pool_*{database}                      (common/telemetry/metrics_pool.h)
// and for each database with a topology:
//   poolside_ingest_member_role{database,member,role}   1 for its current role
//   poolside_ingest_writing_member{database,member}     1: the last flush's
//   poolside_ingest_failover_held_total, ..._held_timeouts_total,
//   ..._held_seconds_total, poolside_ingest_failover_held_batches{database}
//   poolside_ingest_failover_held_duration_seconds{database}   histogram
// The status page shows the ingest rate: rows/s over the last minute of page
// views and scrapes (or since start when there was none before), the pools,
// and the members of databases with a topology (with the p99 of held time).
//
//   IngestMetrics ingest_metrics(&engine, &metrics);
//
// Thread-safe. Unregisters in its destructor: declare it after the engine.

#include <cstdint>
#include <deque>
#include <memory>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/telemetry/metrics.h"
#include "services/ingest/ingest_engine.h"

namespace poolside::ingest {

// Rows per second from cumulative counts sampled at arbitrary times: the rate
// over the last `window` of samples (at least one earlier sample needed),
// else the average since `start`.
class RateMeter {
 public:
  RateMeter(absl::Time start, absl::Duration window) : start_(start), window_(window) {}
  double Sample(uint64_t total, absl::Time now);

 private:
  const absl::Time start_;
  const absl::Duration window_;
  absl::Mutex mu_;
  std::deque<std::pair<absl::Time, uint64_t>> samples_ ABSL_GUARDED_BY(mu_);
};

class IngestMetrics {
 public:
  IngestMetrics(const IngestEngine* engine, telemetry::MetricsRegistry* registry);

 private:
  const IngestEngine* const engine_;
  RateMeter rows_rate_;
  telemetry::MetricsRegistry::Registration collector_;
  telemetry::MetricsRegistry::Registration ingest_;
  telemetry::MetricsRegistry::Registration pools_;
  telemetry::MetricsRegistry::Registration members_;
};

}  // namespace poolside::ingest

#endif  // POOLSIDE_SERVICES_INGEST_INGEST_METRICS_H_
