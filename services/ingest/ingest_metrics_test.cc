#include "services/ingest/ingest_metrics.h"

#include "gtest/gtest.h"

namespace poolside::ingest {
namespace {

TEST(RateMeterTest, AverageSinceStartWithoutEarlierSample) {
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  RateMeter meter(t0, absl::Minutes(1));
  EXPECT_DOUBLE_EQ(meter.Sample(500, t0 + absl::Seconds(10)), 50);
}

TEST(RateMeterTest, RateOverTheWindow) {
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  RateMeter meter(t0, absl::Minutes(1));
  meter.Sample(0, t0 + absl::Seconds(10));
  EXPECT_DOUBLE_EQ(meter.Sample(1000, t0 + absl::Seconds(20)), 100);
  EXPECT_DOUBLE_EQ(meter.Sample(1500, t0 + absl::Seconds(30)), 75);  // 1500 over 20 s
  // Samples older than the window are forgotten: only the last minute counts.
  EXPECT_DOUBLE_EQ(meter.Sample(1500, t0 + absl::Seconds(85)), 0);
  // Nothing within the window: the average since start.
  EXPECT_DOUBLE_EQ(meter.Sample(1900, t0 + absl::Seconds(190)), 10);
}

}  // namespace
}  // namespace poolside::ingest
