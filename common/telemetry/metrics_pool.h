#ifndef POOLSIDE_COMMON_TELEMETRY_METRICS_POOL_H_
#define POOLSIDE_COMMON_TELEMETRY_METRICS_POOL_H_

// Connection pool series for /metrics and the status page's "Pools" table,
// from pool::PoolStats (common/pool) taken at scrape time, one per database:
//   poolside_pool_{size,idle,in_use,waiters,min_idle,max_size}{database}
//   poolside_pool_{max_overflow,overflow_in_use}{database}
//   poolside_pool_overflow_created_total{database}
//   poolside_pool_acquire_wait_seconds{database}                      histogram
//   poolside_pool_{acquired,acquire_timeouts,leaks,connect_failures}_total{database}
//   poolside_pool_connections_{created,closed,recycled,broken}_total{database}
//
// Pure functions; thread-safe.

#include <string>
#include <utility>
#include <vector>

#include "common/pool/pool.h"
#include "common/telemetry/status_page.h"
#include "prometheus/metric_family.h"

namespace poolside::telemetry {

using NamedPoolStats = std::vector<std::pair<std::string, pool::PoolStats>>;

void AppendPoolMetrics(const NamedPoolStats& pools, std::vector<prometheus::MetricFamily>* out);

// Columns database, size, idle, in use, waiters, max, overflow ("1 of 2 (5
// opened)"), acquire p99, timeouts, broken.
StatusTable PoolsTable(const NamedPoolStats& pools);

}  // namespace poolside::telemetry

#endif  // POOLSIDE_COMMON_TELEMETRY_METRICS_POOL_H_
