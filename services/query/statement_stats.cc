#include "services/query/statement_stats.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/telemetry/log.h"
#include "common/telemetry/metrics_family.h"

namespace poolside::query {
namespace {

constexpr absl::string_view kOther = "<other>";

}  // namespace

StatementStatsRegistry::StatementStatsRegistry(size_t max_entries)
    : max_entries_(std::max<size_t>(1, max_entries)) {}

void StatementStatsRegistry::Record(absl::string_view database, const sql::Analysis& statement,
                                    absl::Duration latency, uint64_t rows, bool ok) {
  Entry* e;
  {
    absl::MutexLock lock(&mu_);
    std::string key = absl::StrCat(database, "\x1f", statement.fingerprint);
    auto it = entries_.find(key);
    if (it == entries_.end()) {
      std::string normalized = statement.normalized;
      uint64_t fingerprint = statement.fingerprint;
      if (entries_.size() >= max_entries_) {
        key = absl::StrCat(database, "\x1f", kOther);
        normalized = std::string(kOther);
        fingerprint = 0;
        it = entries_.find(key);
      }
      if (it == entries_.end()) {
        auto entry = std::make_unique<Entry>();
        entry->database = std::string(database);
        entry->statement = std::move(normalized);
        entry->fingerprint = fingerprint;
        it = entries_.emplace(std::move(key), std::move(entry)).first;
      }
    }
    e = it->second.get();
    ++e->calls;
    if (!ok) ++e->errors;
    e->rows += rows;
    e->total_seconds += absl::ToDoubleSeconds(latency);
  }
  e->latency.Observe(latency);  // entries are never removed, so e stays valid
  const int64_t slow_ns = slow_threshold_ns_.load(std::memory_order_relaxed);
  if (slow_ns > 0 && latency >= absl::Nanoseconds(slow_ns)) {
    // e->database and e->statement never change once the entry exists.
    telemetry::LogWarning(
        "slow statement",
        {{"database", e->database},
         {"statement", e->statement},
         {"duration_ms", absl::StrFormat("%.3f", absl::ToDoubleMilliseconds(latency))},
         {"rows", absl::StrCat(rows)},
         {"ok", ok ? "true" : "false"}});
  }
}

void StatementStatsRegistry::SetSlowThreshold(absl::Duration threshold) {
  slow_threshold_ns_.store(std::max<int64_t>(0, absl::ToInt64Nanoseconds(threshold)),
                           std::memory_order_relaxed);
}

std::vector<std::pair<std::string, telemetry::Histogram::Snapshot>>
StatementStatsRegistry::LatencyByDatabase() const {
  std::map<std::string, telemetry::Histogram::Snapshot> merged;
  absl::MutexLock lock(&mu_);
  for (const auto& [key, e] : entries_) {
    // Every entry has the default bounds, so merging cannot fail.
    telemetry::MergeSnapshot(e->latency.Take(), &merged[e->database]);
  }
  return {merged.begin(), merged.end()};
}

std::vector<v1::StatementStats> StatementStatsRegistry::Snapshot(absl::string_view database,
                                                                 size_t limit) const {
  std::vector<v1::StatementStats> out;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [key, e] : entries_) {
      if (!database.empty() && e->database != database) continue;
      v1::StatementStats s;
      s.set_database(e->database);
      s.set_statement(e->statement);
      if (e->fingerprint != 0) s.set_fingerprint(absl::StrFormat("%016x", e->fingerprint));
      s.set_calls(e->calls);
      s.set_errors(e->errors);
      s.set_rows(e->rows);
      s.set_total_ms(e->total_seconds * 1000);
      s.set_mean_ms(e->calls ? e->total_seconds * 1000 / e->calls : 0);
      const telemetry::Histogram::Snapshot h = e->latency.Take();
      s.set_p50_ms(h.Percentile(0.5) * 1000);
      s.set_p99_ms(h.Percentile(0.99) * 1000);
      s.set_max_ms(h.max * 1000);
      out.push_back(std::move(s));
    }
  }
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.total_ms() > b.total_ms(); });
  if (limit > 0 && out.size() > limit) out.resize(limit);
  return out;
}

}  // namespace poolside::query
