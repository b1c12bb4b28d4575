#include "common/telemetry/metrics_pool.h"

#include "absl/strings/str_cat.h"
#include "common/telemetry/metrics_family.h"

namespace poolside::telemetry {

void AppendPoolMetrics(const NamedPoolStats& pools, std::vector<prometheus::MetricFamily>* out) {
  struct Series {
    const char* name;
    const char* help;
    bool counter;
    double (*value)(const pool::PoolStats&);
  };
  static const Series kSeries[] = {
      {"poolside_pool_size", "Connections open or being opened.", false,
       [](const pool::PoolStats& p) { return double(p.size); }},
      {"poolside_pool_idle", "Idle connections.", false,
       [](const pool::PoolStats& p) { return double(p.idle); }},
      {"poolside_pool_in_use", "Connections leased out.", false,
       [](const pool::PoolStats& p) { return double(p.in_use); }},
      {"poolside_pool_waiters", "Acquire calls waiting for a connection.", false,
       [](const pool::PoolStats& p) { return double(p.waiters); }},
      {"poolside_pool_min_idle", "Configured minimum of idle connections.", false,
       [](const pool::PoolStats& p) { return double(p.min_idle); }},
      {"poolside_pool_max_size", "Configured maximum of connections.", false,
       [](const pool::PoolStats& p) { return double(p.max_size); }},
      {"poolside_pool_max_overflow", "Configured connections allowed above max_size.", false,
       [](const pool::PoolStats& p) { return double(p.max_overflow); }},
      {"poolside_pool_overflow_in_use", "Connections open above max_size (never idle).", false,
       [](const pool::PoolStats& p) { return double(p.overflow_in_use); }},
      {"poolside_pool_overflow_created_total", "Connections opened above max_size.", true,
       [](const pool::PoolStats& p) { return double(p.overflow_created); }},
      {"poolside_pool_acquired_total", "Successful connection acquisitions.", true,
       [](const pool::PoolStats& p) { return double(p.acquired); }},
      {"poolside_pool_acquire_timeouts_total", "Acquisitions that ran out of time.", true,
       [](const pool::PoolStats& p) { return double(p.timeouts); }},
      {"poolside_pool_connections_created_total", "Connections opened.", true,
       [](const pool::PoolStats& p) { return double(p.created); }},
      {"poolside_pool_connections_closed_total", "Connections closed, for any reason.", true,
       [](const pool::PoolStats& p) { return double(p.closed); }},
      {"poolside_pool_connections_recycled_total", "Connections closed past their max lifetime.",
       true, [](const pool::PoolStats& p) { return double(p.recycled); }},
      {"poolside_pool_connections_broken_total", "Connections closed as broken.", true,
       [](const pool::PoolStats& p) { return double(p.broken); }},
      {"poolside_pool_leaks_total", "Leases held past the leak threshold.", true,
       [](const pool::PoolStats& p) { return double(p.leaks); }},
      {"poolside_pool_connect_failures_total", "Failed connection attempts.", true,
       [](const pool::PoolStats& p) { return double(p.create_failures); }},
  };
  for (const Series& s : kSeries) {
    prometheus::MetricFamily f =
        s.counter ? CounterFamily(s.name, s.help) : GaugeFamily(s.name, s.help);
    for (const auto& [db, p] : pools) {
      if (s.counter) {
        AddCounter(&f, {{"database", db}}, s.value(p));
      } else {
        AddGauge(&f, {{"database", db}}, s.value(p));
      }
    }
    out->push_back(std::move(f));
  }
  prometheus::MetricFamily wait =
      HistogramFamily("poolside_pool_acquire_wait_seconds",
                      "Time from asking the pool for a connection to getting one.");
  for (const auto& [db, p] : pools) AddHistogram(&wait, {{"database", db}}, p.acquire_wait);
  out->push_back(std::move(wait));
}

StatusTable PoolsTable(const NamedPoolStats& pools) {
  StatusTable t;
  t.title = "Pools";
  t.columns = {"database", "size",     "idle",        "in use",   "waiters",
               "max",      "overflow", "acquire p99", "timeouts", "broken"};
  t.empty_text = "no databases configured";
  for (const auto& [db, p] : pools) {
    t.rows.push_back({db, absl::StrCat(p.size), absl::StrCat(p.idle), absl::StrCat(p.in_use),
                      absl::StrCat(p.waiters), absl::StrCat(p.max_size),
                      absl::StrCat(p.overflow_in_use, " of ", p.max_overflow, " (",
                                   p.overflow_created, " opened)"),
                      p.acquire_wait.count ? FormatSeconds(p.acquire_wait.Percentile(0.99)) : "-",
                      absl::StrCat(p.timeouts), absl::StrCat(p.broken)});
  }
  return t;
}

}  // namespace poolside::telemetry
