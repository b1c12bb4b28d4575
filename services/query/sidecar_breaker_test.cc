#include "services/query/sidecar_breaker.h"

#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "common/clock/clock.h"
#include "gtest/gtest.h"

namespace poolside::query {
namespace {

SidecarBreaker::Options Options(uint32_t threshold, absl::Duration retry_after) {
  SidecarBreaker::Options o;
  o.failure_threshold = threshold;
  o.retry_after = retry_after;
  o.target = "unix:/run/test.sock";
  return o;
}

// Records `n` failed calls.
void Fail(SidecarBreaker& breaker, int n) {
  for (int i = 0; i < n; ++i) breaker.Record(false);
}

TEST(SidecarBreakerTest, OpensAfterThresholdFailuresInARowForRetryAfter) {
  SimulatedClock clock;
  SidecarBreaker breaker(Options(3, absl::Seconds(1)), &clock);
  EXPECT_TRUE(breaker.Usable());
  Fail(breaker, 2);
  EXPECT_TRUE(breaker.Usable());
  Fail(breaker, 1);
  EXPECT_FALSE(breaker.Usable());
  clock.Advance(absl::Milliseconds(999));
  EXPECT_FALSE(breaker.Usable());
  clock.Advance(absl::Milliseconds(1));
  EXPECT_TRUE(breaker.Usable());
  // Closed again, with a fresh count: one more failure does not open it.
  Fail(breaker, 1);
  EXPECT_TRUE(breaker.Usable());
  Fail(breaker, 2);
  EXPECT_FALSE(breaker.Usable());
}

TEST(SidecarBreakerTest, ASuccessResetsTheCount) {
  SimulatedClock clock;
  SidecarBreaker breaker(Options(3, absl::Seconds(1)), &clock);
  for (int i = 0; i < 10; ++i) {
    Fail(breaker, 2);
    breaker.Record(true);
  }
  EXPECT_TRUE(breaker.Usable());
}

TEST(SidecarBreakerTest, FailuresWhileOpenKeepItOpenFromTheLastOne) {
  SimulatedClock clock;
  SidecarBreaker breaker(Options(2, absl::Seconds(1)), &clock);
  Fail(breaker, 2);
  ASSERT_FALSE(breaker.Usable());
  // Calls that were under way when it opened fail too: the window restarts
  // at the threshold-th of them.
  clock.Advance(absl::Milliseconds(600));
  Fail(breaker, 2);
  clock.Advance(absl::Milliseconds(600));
  EXPECT_FALSE(breaker.Usable());
  clock.Advance(absl::Milliseconds(400));
  EXPECT_TRUE(breaker.Usable());
}

TEST(SidecarBreakerTest, ThresholdZeroOpensOnTheFirstFailure) {
  for (uint32_t threshold : {0u, 1u}) {
    SimulatedClock clock;
    SidecarBreaker breaker(Options(threshold, absl::Milliseconds(50)), &clock);
    breaker.Record(true);
    EXPECT_TRUE(breaker.Usable()) << threshold;
    breaker.Record(false);
    EXPECT_FALSE(breaker.Usable()) << threshold;
    clock.Advance(absl::Milliseconds(50));
    EXPECT_TRUE(breaker.Usable()) << threshold;
  }
}

TEST(SidecarBreakerTest, ConcurrentOutcomesLeaveItConsistent) {
  SimulatedClock clock;
  SidecarBreaker breaker(Options(5, absl::Seconds(1)), &clock);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&breaker] {
      for (int i = 0; i < 1000; ++i) {
        breaker.Record(false);
        breaker.Usable();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  // 4000 failures opened it; time has not moved, so it stays open.
  EXPECT_FALSE(breaker.Usable());
  clock.Advance(absl::Seconds(1));
  EXPECT_TRUE(breaker.Usable());
}

}  // namespace
}  // namespace poolside::query
