#include "common/telemetry/histogram.h"

#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace poolside::telemetry {
namespace {

TEST(HistogramTest, DefaultBoundsAreAscendingFrom50usTo60s) {
  const std::vector<double> b = Histogram::DefaultLatencyBounds();
  ASSERT_EQ(b.size(), 30u);
  EXPECT_DOUBLE_EQ(b.front(), 50e-6);
  EXPECT_DOUBLE_EQ(b.back(), 60.0);
  for (size_t i = 1; i < b.size(); ++i) {
    EXPECT_GT(b[i], b[i - 1]) << i;
    EXPECT_NEAR(b[i] / b[i - 1], 1.62, 0.02) << i;
  }
}

TEST(HistogramTest, EmptySnapshot) {
  Histogram h({1, 2});
  const Histogram::Snapshot s = h.Take();
  EXPECT_EQ(s.bounds, (std::vector<double>{1, 2}));
  EXPECT_EQ(s.cumulative_counts, (std::vector<uint64_t>{0, 0, 0}));
  EXPECT_EQ(s.count, 0u);
  EXPECT_EQ(s.sum, 0);
  EXPECT_EQ(s.max, 0);
  EXPECT_EQ(s.Percentile(0.5), 0);
  EXPECT_EQ(s.Percentile(1), 0);
}

TEST(HistogramTest, BoundaryValuesLandInBucketWithBoundGreaterOrEqual) {
  Histogram h({1, 2, 4});
  h.Observe(0.0);  // bucket <=1
  h.Observe(1.0);  // bucket <=1 (equal to bound)
  h.Observe(1.5);  // bucket <=2
  h.Observe(2.0);  // bucket <=2
  h.Observe(4.0);  // bucket <=4
  h.Observe(4.5);  // +Inf
  const Histogram::Snapshot s = h.Take();
  EXPECT_EQ(s.cumulative_counts, (std::vector<uint64_t>{2, 4, 5, 6}));
  EXPECT_EQ(s.count, 6u);
  EXPECT_DOUBLE_EQ(s.sum, 13.0);
  EXPECT_DOUBLE_EQ(s.max, 4.5);
}

TEST(HistogramTest, ObserveDurationAndOddInputs) {
  Histogram h({0.001, 0.01});
  h.Observe(absl::Milliseconds(1));     // == 0.001 -> first bucket
  h.Observe(absl::Microseconds(1500));  // second bucket
  h.Observe(-3.0);                      // counted as 0
  h.Observe(std::nan(""));              // ignored
  const Histogram::Snapshot s = h.Take();
  EXPECT_EQ(s.cumulative_counts, (std::vector<uint64_t>{2, 3, 3}));
  EXPECT_EQ(s.count, 3u);
  EXPECT_DOUBLE_EQ(s.sum, 0.0025);
  EXPECT_DOUBLE_EQ(s.max, 0.0015);
}

TEST(HistogramTest, UnsortedBoundsAreNormalized) {
  Histogram h({4, 1, 2, 2});
  EXPECT_EQ(h.Take().bounds, (std::vector<double>{1, 2, 4}));
}

TEST(HistogramTest, PercentileInterpolatesInsideBucket) {
  Histogram h({1, 2, 4});
  // 4 observations in (1, 2], max 2.
  for (double v : {1.2, 1.4, 1.6, 2.0}) h.Observe(v);
  const Histogram::Snapshot s = h.Take();
  // rank = q * 4 within bucket (1, 2] holding 4: value = 1 + (rank / 4).
  EXPECT_DOUBLE_EQ(s.Percentile(0.5), 1.5);
  EXPECT_DOUBLE_EQ(s.Percentile(0.25), 1.25);
  EXPECT_DOUBLE_EQ(s.Percentile(1.0), 2.0);
  EXPECT_DOUBLE_EQ(s.Percentile(0.0),
                   1.0);  // lower bound of first non-empty bucket
}

TEST(HistogramTest, PercentileAcrossBuckets) {
  Histogram h({1, 2, 4});
  for (int i = 0; i < 10; ++i) h.Observe(0.5);  // (0, 1]
  for (int i = 0; i < 10; ++i) h.Observe(3.0);  // (2, 4]
  const Histogram::Snapshot s = h.Take();
  // rank 5 of 20 -> first bucket [0,1], halfway.
  EXPECT_DOUBLE_EQ(s.Percentile(0.25), 0.5);
  // rank 10 -> exactly the top of the first bucket.
  EXPECT_DOUBLE_EQ(s.Percentile(0.5), 1.0);
  // (2, 4] holds ranks 10..20; its upper bound is clamped to max = 3, so
  // rank 15 -> 2 + (3 - 2) * 0.5 and rank 12 -> 2 + (3 - 2) * 0.2.
  EXPECT_DOUBLE_EQ(s.Percentile(0.75), 2.5);
  EXPECT_NEAR(s.Percentile(0.6), 2.2, 1e-12);
  EXPECT_DOUBLE_EQ(s.Percentile(1.0), 3.0);
}

TEST(HistogramTest, PercentileClampedToMax) {
  Histogram h({1, 10});
  h.Observe(1.5);
  h.Observe(1.5);
  const Histogram::Snapshot s = h.Take();
  // Without clamping p100 would be the bucket bound 10.
  EXPECT_DOUBLE_EQ(s.Percentile(1.0), 1.5);
  EXPECT_LE(s.Percentile(0.99), 1.5);
  EXPECT_GE(s.Percentile(0.5), 1.0);
}

TEST(HistogramTest, PercentileInInfBucketUsesMaxAsUpperBound) {
  Histogram h({1});
  h.Observe(3.0);
  h.Observe(5.0);
  const Histogram::Snapshot s = h.Take();
  EXPECT_EQ(s.cumulative_counts, (std::vector<uint64_t>{0, 2}));
  // (1, max=5], rank 1 of 2 -> halfway = 3.
  EXPECT_DOUBLE_EQ(s.Percentile(0.5), 3.0);
  EXPECT_DOUBLE_EQ(s.Percentile(1.0), 5.0);
}

TEST(HistogramTest, PercentileOutOfRangeQIsClamped) {
  Histogram h({1, 2});
  h.Observe(1.5);
  const Histogram::Snapshot s = h.Take();
  EXPECT_DOUBLE_EQ(s.Percentile(-1), s.Percentile(0));
  EXPECT_DOUBLE_EQ(s.Percentile(7), s.Percentile(1));
}

TEST(HistogramTest, NoBoundsHasOnlyInfBucket) {
  Histogram h(std::vector<double>{});
  h.Observe(2.0);
  h.Observe(4.0);
  const Histogram::Snapshot s = h.Take();
  EXPECT_EQ(s.cumulative_counts, (std::vector<uint64_t>{2}));
  EXPECT_DOUBLE_EQ(s.Percentile(0.5), 2.0);
  EXPECT_DOUBLE_EQ(s.Percentile(1.0), 4.0);
}

TEST(HistogramTest, ConcurrentObserversAreAllCounted) {
  Histogram h;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&h, t] {
      for (int i = 0; i < 5000; ++i) {
        h.Observe(absl::Microseconds(10 * (t + 1)));
        if (i % 1000 == 0) (void)h.Take();
      }
    });
  }
  for (auto& t : threads) t.join();
  const Histogram::Snapshot s = h.Take();
  EXPECT_EQ(s.count, 20000u);
  EXPECT_EQ(s.cumulative_counts.back(), 20000u);
  EXPECT_NEAR(s.sum, 5000 * (10 + 20 + 30 + 40) * 1e-6, 1e-9);
  EXPECT_DOUBLE_EQ(s.max, 40e-6);
}

}  // namespace
}  // namespace poolside::telemetry
