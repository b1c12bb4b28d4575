#include "services/cache/cache_metrics.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/telemetry/metrics_family.h"
#include "common/telemetry/status_page.h"

namespace poolside::cache {
namespace {

using telemetry::AddCounter;
using telemetry::AppendCounter;
using telemetry::AppendGauge;
using telemetry::CounterFamily;

void Collect(const CacheStoreStats& s, std::vector<prometheus::MetricFamily>* out) {
  prometheus::MetricFamily lookups =
      CounterFamily("poolside_cache_lookups_total", "Get calls by outcome.");
  AddCounter(&lookups, {{"outcome", "hit"}}, double(s.hits));
  AddCounter(&lookups, {{"outcome", "stale"}}, double(s.stale_hits));
  AddCounter(&lookups, {{"outcome", "miss"}}, double(s.misses));
  out->push_back(std::move(lookups));
  prometheus::MetricFamily sets = CounterFamily(
      "poolside_cache_sets_total",
      "Set calls: stored, rejected (invalidated meanwhile, too large, not admitted), or "
      "refused for a read_generation this sidecar never handed out (unknown_generation).");
  AddCounter(&sets, {{"result", "stored"}}, double(s.sets));
  AddCounter(&sets, {{"result", "rejected"}}, double(s.sets_rejected - s.sets_unknown_generation));
  AddCounter(&sets, {{"result", "unknown_generation"}}, double(s.sets_unknown_generation));
  out->push_back(std::move(sets));
  AppendCounter(out, "poolside_cache_evictions_total", "Entries evicted to make room.",
                s.evictions);
  AppendCounter(out, "poolside_cache_expirations_total", "Entries removed past their stale window.",
                s.expirations);
  AppendCounter(out, "poolside_cache_invalidations_total", "Invalidate calls.", s.invalidations);
  prometheus::MetricFamily targets =
      CounterFamily("poolside_cache_invalidation_targets_total",
                    "What invalidations named: tags, key prefixes, or everything (kind=all).");
  AddCounter(&targets, {{"kind", "tag"}}, double(s.invalidated_tags));
  AddCounter(&targets, {{"kind", "prefix"}}, double(s.invalidated_prefixes));
  AddCounter(&targets, {{"kind", "all"}}, double(s.flushes));
  out->push_back(std::move(targets));
  AppendCounter(out, "poolside_cache_invalidated_entries_total",
                "Entries removed by invalidations.", s.invalidated_entries);
  AppendGauge(out, "poolside_cache_entries", "Entries held.", s.entries);
  AppendGauge(out, "poolside_cache_bytes", "Bytes charged (keys, values, tags, overhead).",
              s.bytes);
  AppendGauge(out, "poolside_cache_capacity_bytes", "The memory budget.", s.capacity_bytes);
  AppendGauge(out, "poolside_cache_generation", "Current invalidation generation.", s.generation);
}

telemetry::StatusTable Table(const CacheStoreStats& s) {
  telemetry::StatusTable t;
  t.title = "Cache";
  t.columns = {"hit ratio", "hits", "stale",    "misses",    "entries",      "bytes",
               "capacity",  "sets", "rejected", "evictions", "invalidations"};
  t.rows.push_back(
      {telemetry::FormatRatio(double(s.hits + s.stale_hits),
                              double(s.hits + s.stale_hits + s.misses)),
       telemetry::FormatCount(double(s.hits)), telemetry::FormatCount(double(s.stale_hits)),
       telemetry::FormatCount(double(s.misses)), telemetry::FormatCount(double(s.entries)),
       telemetry::FormatBytes(double(s.bytes)), telemetry::FormatBytes(double(s.capacity_bytes)),
       telemetry::FormatCount(double(s.sets)), telemetry::FormatCount(double(s.sets_rejected)),
       telemetry::FormatCount(double(s.evictions)),
       telemetry::FormatCount(double(s.invalidations))});
  return t;
}

}  // namespace

CacheMetrics::CacheMetrics(const CacheStore* store, telemetry::MetricsRegistry* registry)
    : collector_(registry->AddCollector(
          [store](std::vector<prometheus::MetricFamily>* out) { Collect(store->Stats(), out); })),
      section_(registry->AddStatusSection([store] { return Table(store->Stats()); })) {}

}  // namespace poolside::cache
