#include "common/telemetry/metrics_family.h"

#include <cmath>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"

namespace poolside::telemetry {
namespace {

using ::testing::HasSubstr;

std::string Text(const std::vector<prometheus::MetricFamily>& families) {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

TEST(MetricsFamilyTest, CounterAndGaugeSamples) {
  prometheus::MetricFamily c = CounterFamily("poolside_x_total", "Xs.");
  AddCounter(&c, {{"database", "app"}}, 3);
  AddCounter(&c, {{"database", "reports"}}, 5);
  prometheus::MetricFamily g = GaugeFamily("poolside_y_bytes", "Y.");
  AddGauge(&g, {}, 1024);
  const std::string text = Text({c, g});
  EXPECT_THAT(text, HasSubstr("# TYPE poolside_x_total counter"));
  EXPECT_THAT(text, HasSubstr("poolside_x_total{database=\"app\"} 3"));
  EXPECT_THAT(text, HasSubstr("poolside_x_total{database=\"reports\"} 5"));
  EXPECT_THAT(text, HasSubstr("# TYPE poolside_y_bytes gauge"));
  EXPECT_THAT(text, HasSubstr("poolside_y_bytes 1024"));
}

TEST(MetricsFamilyTest, AppendAddsOneUnlabelledSampleFamily) {
  std::vector<prometheus::MetricFamily> out;
  AppendCounter(&out, "poolside_z_total", "Zs.", 7);
  AppendGauge(&out, "poolside_w", "W.", 2.5);
  ASSERT_EQ(out.size(), 2u);
  const std::string text = Text(out);
  EXPECT_THAT(text, HasSubstr("# TYPE poolside_z_total counter"));
  EXPECT_THAT(text, HasSubstr("poolside_z_total 7"));
  EXPECT_THAT(text, HasSubstr("# TYPE poolside_w gauge"));
  EXPECT_THAT(text, HasSubstr("poolside_w 2.5"));
}

TEST(MetricsFamilyTest, HistogramFromSnapshot) {
  Histogram h({0.001, 0.01, 0.1});
  h.Observe(0.0005);
  h.Observe(0.005);
  h.Observe(0.005);
  h.Observe(5.0);
  prometheus::MetricFamily f = HistogramFamily("poolside_wait_seconds", "Wait.");
  AddHistogram(&f, {{"database", "app"}}, h.Take());
  ASSERT_EQ(f.metric.size(), 1u);
  const auto& hist = f.metric[0].histogram;
  EXPECT_EQ(hist.sample_count, 4u);
  EXPECT_DOUBLE_EQ(hist.sample_sum, 5.0105);
  ASSERT_EQ(hist.bucket.size(), 4u);
  EXPECT_EQ(hist.bucket[0].cumulative_count, 1u);
  EXPECT_EQ(hist.bucket[1].cumulative_count, 3u);
  EXPECT_EQ(hist.bucket[2].cumulative_count, 3u);
  EXPECT_EQ(hist.bucket[3].cumulative_count, 4u);
  EXPECT_TRUE(std::isinf(hist.bucket[3].upper_bound));
  const std::string text = Text({f});
  EXPECT_THAT(text, HasSubstr("poolside_wait_seconds_bucket{database=\"app\",le=\"0.01\"} 3"));
  EXPECT_THAT(text, HasSubstr("poolside_wait_seconds_bucket{database=\"app\",le=\"+Inf\"} 4"));
  EXPECT_THAT(text, HasSubstr("poolside_wait_seconds_count{database=\"app\"} 4"));
}

TEST(MetricsFamilyTest, MergeSnapshotSumsSameBounds) {
  Histogram a({0.001, 0.01}), b({0.001, 0.01}), other({1.0});
  a.Observe(0.0005);
  b.Observe(0.005);
  b.Observe(0.5);
  other.Observe(0.5);
  Histogram::Snapshot merged;
  ASSERT_TRUE(MergeSnapshot(a.Take(), &merged));
  ASSERT_TRUE(MergeSnapshot(b.Take(), &merged));
  EXPECT_FALSE(MergeSnapshot(other.Take(), &merged));
  EXPECT_EQ(merged.count, 3u);
  EXPECT_DOUBLE_EQ(merged.sum, 0.5055);
  EXPECT_DOUBLE_EQ(merged.max, 0.5);
  EXPECT_EQ(merged.cumulative_counts, (std::vector<uint64_t>{1, 2, 3}));
}

TEST(MetricsFamilyTest, RequestLatencyBucketsAscend) {
  const std::vector<double> b = RequestLatencyBuckets();
  ASSERT_FALSE(b.empty());
  for (size_t i = 1; i < b.size(); ++i) EXPECT_LT(b[i - 1], b[i]);
  EXPECT_DOUBLE_EQ(b.back(), 60);
}

}  // namespace
}  // namespace poolside::telemetry
