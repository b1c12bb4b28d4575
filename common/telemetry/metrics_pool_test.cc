#include "common/telemetry/metrics_pool.h"

#include <cmath>

#include "gtest/gtest.h"

namespace poolside::telemetry {
namespace {

const prometheus::MetricFamily* Find(const std::vector<prometheus::MetricFamily>& all,
                                     const std::string& name) {
  for (const auto& f : all) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

// The value of the first sample of the family `name`, which must be of type
// `type` (a gauge or a counter); NaN, with a test failure, if it is not there.
double FirstValue(const std::vector<prometheus::MetricFamily>& all, const std::string& name,
                  prometheus::MetricType type) {
  const prometheus::MetricFamily* family = Find(all, name);
  if (family == nullptr || family->metric.empty()) {
    ADD_FAILURE() << "no samples of " << name;
    return std::nan("");
  }
  EXPECT_EQ(family->type, type) << name;
  const prometheus::ClientMetric& first = family->metric[0];
  return type == prometheus::MetricType::Counter ? first.counter.value : first.gauge.value;
}

TEST(MetricsPoolTest, OneSamplePerDatabase) {
  pool::PoolStats app;
  app.size = 4;
  app.idle = 1;
  app.in_use = 3;
  app.waiters = 2;
  app.max_size = 4;
  app.max_overflow = 2;
  app.overflow_in_use = 1;
  app.overflow_created = 7;
  app.acquired = 100;
  app.timeouts = 1;
  Histogram wait;
  wait.Observe(0.001);
  wait.Observe(0.002);
  app.acquire_wait = wait.Take();
  pool::PoolStats reports;
  reports.size = 1;
  std::vector<prometheus::MetricFamily> out;
  AppendPoolMetrics({{"app", app}, {"reports", reports}}, &out);

  const auto* in_use = Find(out, "poolside_pool_in_use");
  ASSERT_NE(in_use, nullptr);
  EXPECT_EQ(in_use->type, prometheus::MetricType::Gauge);
  ASSERT_EQ(in_use->metric.size(), 2u);
  EXPECT_EQ(in_use->metric[0].label[0].value, "app");
  EXPECT_EQ(in_use->metric[0].gauge.value, 3);
  EXPECT_EQ(FirstValue(out, "poolside_pool_acquired_total", prometheus::MetricType::Counter), 100);
  const auto* hist = Find(out, "poolside_pool_acquire_wait_seconds");
  ASSERT_NE(hist, nullptr);
  EXPECT_EQ(hist->metric[0].histogram.sample_count, 2u);
  EXPECT_EQ(hist->metric[1].histogram.sample_count, 0u);
  EXPECT_EQ(FirstValue(out, "poolside_pool_overflow_in_use", prometheus::MetricType::Gauge), 1);
  EXPECT_EQ(
      FirstValue(out, "poolside_pool_overflow_created_total", prometheus::MetricType::Counter), 7);
  EXPECT_EQ(FirstValue(out, "poolside_pool_max_overflow", prometheus::MetricType::Gauge), 2);
  for (const char* name :
       {"poolside_pool_size", "poolside_pool_idle", "poolside_pool_waiters",
        "poolside_pool_max_size", "poolside_pool_acquire_timeouts_total",
        "poolside_pool_connections_created_total", "poolside_pool_connections_broken_total"}) {
    EXPECT_NE(Find(out, name), nullptr) << name;
  }

  const StatusTable t = PoolsTable({{"app", app}});
  ASSERT_EQ(t.rows.size(), 1u);
  EXPECT_EQ(t.rows[0][0], "app");
  EXPECT_EQ(t.rows[0][3], "3");  // in use
  EXPECT_EQ(t.rows[0][4], "2");  // waiters
  EXPECT_EQ(t.columns[6], "overflow");
  EXPECT_EQ(t.rows[0][6], "1 of 2 (7 opened)");
}

TEST(MetricsPoolTest, HoldSeriesPerDatabase) {
  struct Hold {
    uint64_t total = 0, timeouts = 0, now = 0;
    Histogram::Snapshot durations;
  };
  Histogram waits;
  waits.Observe(0.5);
  waits.Observe(1.5);
  Hold app{.total = 5, .timeouts = 1, .now = 2, .durations = waits.Take()};
  std::vector<prometheus::MetricFamily> out;
  AppendHoldMetrics("poolside_ingest", "batches", "Flushes",
                    std::vector<std::pair<std::string, Hold>>{{"app", app}, {"reports", Hold{}}},
                    &out);

  ASSERT_EQ(out.size(), 5u);
  const auto* total = Find(out, "poolside_ingest_failover_held_total");
  ASSERT_NE(total, nullptr);
  EXPECT_EQ(total->type, prometheus::MetricType::Counter);
  ASSERT_EQ(total->metric.size(), 2u);
  EXPECT_EQ(total->metric[0].label[0].name, "database");
  EXPECT_EQ(total->metric[0].label[0].value, "app");
  EXPECT_EQ(total->metric[0].counter.value, 5);
  EXPECT_EQ(total->metric[1].counter.value, 0);
  EXPECT_EQ(Find(out, "poolside_ingest_failover_held_timeouts_total")->metric[0].counter.value, 1);
  const auto* now = Find(out, "poolside_ingest_failover_held_batches");
  ASSERT_NE(now, nullptr);
  EXPECT_EQ(now->type, prometheus::MetricType::Gauge);
  EXPECT_EQ(now->metric[0].gauge.value, 2);
  EXPECT_EQ(Find(out, "poolside_ingest_failover_held_seconds_total")->metric[0].counter.value, 2.0);
  const auto* durations = Find(out, "poolside_ingest_failover_held_duration_seconds");
  ASSERT_NE(durations, nullptr);
  EXPECT_EQ(durations->type, prometheus::MetricType::Histogram);
  EXPECT_EQ(durations->metric[0].histogram.sample_count, 2u);
  EXPECT_EQ(durations->metric[1].histogram.sample_count, 0u);
}

}  // namespace
}  // namespace poolside::telemetry
