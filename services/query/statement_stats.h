#ifndef POOLSIDE_SERVICES_QUERY_STATEMENT_STATS_H_
#define POOLSIDE_SERVICES_QUERY_STATEMENT_STATS_H_

// Per-statement statistics seen from the client side, like pg_stat_statements:
// calls, errors, rows and a latency histogram per (database, statement
// fingerprint), shown with the statement normalized by PostgreSQL's parser
// (every literal replaced by $n), so statements differing only in constants
// share an entry and no literal is ever shown. At most `max_entries`
// statements are tracked; the rest are counted under "<other>".
//
// Thread-safe.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/sql/statement_analyzer.h"
#include "common/telemetry/histogram.h"
#include "proto/poolside/v1/query.pb.h"

namespace poolside::query {

class StatementStatsRegistry {
 public:
  explicit StatementStatsRegistry(size_t max_entries = 5000);

  // `statement` must have parsed (the engine runs nothing else).
  void Record(absl::string_view database, const sql::Analysis& statement, absl::Duration latency,
              uint64_t rows, bool ok);

  // Sorted by total time, descending; `database` empty means all; limit 0: all.
  std::vector<v1::StatementStats> Snapshot(absl::string_view database, size_t limit) const;

  // Record() logs statements that took at least `threshold` ("slow statement",
  // warning level, with the normalized SQL; the log line carries the trace id
  // of the recording thread's current span). Zero (the default) turns it off.
  void SetSlowThreshold(absl::Duration threshold);

  // Every statement's latency merged per database (for /metrics), by database name.
  std::vector<std::pair<std::string, telemetry::Histogram::Snapshot>> LatencyByDatabase() const;

 private:
  struct Entry {
    std::string database;
    std::string statement;
    uint64_t fingerprint = 0;
    uint64_t calls = 0;
    uint64_t errors = 0;
    uint64_t rows = 0;
    double total_seconds = 0;
    telemetry::Histogram latency;
  };
  const size_t max_entries_;
  std::atomic<int64_t> slow_threshold_ns_{0};
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<Entry>> entries_ ABSL_GUARDED_BY(mu_);
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_STATEMENT_STATS_H_
