#ifndef POOLSIDE_COMMON_TELEMETRY_METRICS_POOL_H_
#define POOLSIDE_COMMON_TELEMETRY_METRICS_POOL_H_

// The series of a service's databases: connection pool series for /metrics
// and the status page's "Pools" table, from pool::PoolStats (common/pool)
// taken at scrape time, one per database:
//   poolside_pool_{size,idle,in_use,waiters,min_idle,max_size}{database}
//   poolside_pool_{max_overflow,overflow_in_use}{database}
//   poolside_pool_overflow_created_total{database}
//   poolside_pool_acquire_wait_seconds{database}                      histogram
//   poolside_pool_{acquired,acquire_timeouts,leaks,connect_failures}_total{database}
//   poolside_pool_connections_{created,closed,recycled,broken}_total{database}
// and the databases' failover holds (AppendHoldMetrics).
//
// Pure functions; thread-safe.

#include <string>
#include <utility>
#include <vector>

#include "common/pool/pool.h"
#include "common/telemetry/metrics_family.h"
#include "common/telemetry/status_page.h"
#include "prometheus/metric_family.h"

namespace poolside::telemetry {

using NamedPoolStats = std::vector<std::pair<std::string, pool::PoolStats>>;

void AppendPoolMetrics(const NamedPoolStats& pools, std::vector<prometheus::MetricFamily>* out);

// Columns database, size, idle, in use, waiters, max, overflow ("1 of 2 (5
// opened)"), acquire p99, timeouts, broken.
StatusTable PoolsTable(const NamedPoolStats& pools);

// The failover-hold series of each database, labelled by database:
//   <prefix>_failover_held_{total,timeouts_total,seconds_total}     counters
//   <prefix>_failover_held_<unit>                                   held now
//   <prefix>_failover_held_duration_seconds                         histogram
// `holds`: (database, common/db's ManagedDatabase::HoldStats) pairs, or any
// value with its members total, timeouts, now and durations; `what` names the
// held work in the help texts ("Calls for the primary").
template <typename Holds>
void AppendHoldMetrics(const std::string& prefix, const std::string& unit, const std::string& what,
                       const Holds& holds, std::vector<prometheus::MetricFamily>* out) {
  const std::string name = prefix + "_failover_held";
  prometheus::MetricFamily total = CounterFamily(
      name + "_total", what + " held while no primary was known (failover buffering).");
  prometheus::MetricFamily timeouts = CounterFamily(
      name + "_timeouts_total",
      what + " held and then failed because no primary was named within failoverBufferMs.");
  prometheus::MetricFamily now = GaugeFamily(name + "_" + unit, what + " held for a primary now.");
  prometheus::MetricFamily seconds =
      CounterFamily(name + "_seconds_total", "Time held work waited for a primary, summed.");
  prometheus::MetricFamily durations = HistogramFamily(
      name + "_duration_seconds",
      "Each hold's time, from held to released: a new primary named, failoverBufferMs over, or "
      "shutdown. Work held again counts again.");
  for (const auto& [database, hold] : holds) {
    const MetricLabels labels = {{"database", database}};
    AddCounter(&total, labels, double(hold.total));
    AddCounter(&timeouts, labels, double(hold.timeouts));
    AddGauge(&now, labels, double(hold.now));
    AddCounter(&seconds, labels, hold.durations.sum);
    AddHistogram(&durations, labels, hold.durations);
  }
  for (auto* f : {&total, &timeouts, &now, &seconds, &durations}) out->push_back(std::move(*f));
}

}  // namespace poolside::telemetry

#endif  // POOLSIDE_COMMON_TELEMETRY_METRICS_POOL_H_
