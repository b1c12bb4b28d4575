#ifndef POOLSIDE_SERVICES_CACHE_CACHE_METRICS_H_
#define POOLSIDE_SERVICES_CACHE_CACHE_METRICS_H_

// The cache sidecar's series on /metrics and its status page section, read at
// scrape time from CacheStore::Stats():
//   poolside_cache_lookups_total{outcome=hit|stale|miss}
//   poolside_cache_sets_total{result=stored|rejected}
//   poolside_cache_evictions_total, poolside_cache_expirations_total
//   poolside_cache_invalidations_total                    Invalidate calls
//   poolside_cache_invalidation_targets_total{kind=tag|prefix|all}
//   poolside_cache_invalidated_entries_total
//   poolside_cache_entries, poolside_cache_bytes, poolside_cache_capacity_bytes
//   poolside_cache_generation
//
//   CacheMetrics cache_metrics(&store, &metrics);
//
// Thread-safe. Unregisters in its destructor: declare it after the store.

#include "common/cache/cache_store.h"
#include "common/telemetry/metrics.h"

namespace poolside::cache {

class CacheMetrics {
 public:
  CacheMetrics(const CacheStore* store, telemetry::MetricsRegistry* registry);

 private:
  telemetry::MetricsRegistry::Registration collector_;
  telemetry::MetricsRegistry::Registration section_;
};

}  // namespace poolside::cache

#endif  // POOLSIDE_SERVICES_CACHE_CACHE_METRICS_H_
