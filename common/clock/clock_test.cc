#include "common/clock/clock.h"

#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace poolside {
namespace {

TEST(RealClockTest, IsSingletonAndTracksAbslNow) {
  Clock* clock = Clock::Real();
  ASSERT_NE(clock, nullptr);
  EXPECT_EQ(clock, Clock::Real());
  const absl::Time before = absl::Now();
  const absl::Time now = clock->Now();
  const absl::Time after = absl::Now();
  EXPECT_LE(before, now);
  EXPECT_LE(now, after);
}

TEST(SimulatedClockTest, DefaultStartIsFixed) {
  SimulatedClock clock;
  EXPECT_EQ(clock.Now(), absl::UnixEpoch() + absl::Hours(24 * 365 * 50));
  EXPECT_EQ(clock.Now(), clock.Now());
}

TEST(SimulatedClockTest, AdvanceAndSetTime) {
  const absl::Time start = absl::FromUnixSeconds(1000);
  SimulatedClock clock(start);
  EXPECT_EQ(clock.Now(), start);
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ(clock.Now(), start + absl::Seconds(5));
  clock.Advance(absl::Milliseconds(-2500));
  EXPECT_EQ(clock.Now(), start + absl::Milliseconds(2500));
  clock.SetTime(absl::FromUnixSeconds(42));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(42));
}

TEST(SimulatedClockTest, ConcurrentAdvanceIsNotLost) {
  const absl::Time start = absl::FromUnixSeconds(0);
  SimulatedClock clock(start);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&clock] {
      for (int i = 0; i < 1000; ++i) {
        clock.Advance(absl::Milliseconds(1));
        (void)clock.Now();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(clock.Now(), start + absl::Seconds(4));
}

TEST(SimulatedClockTest, UsableThroughBaseClass) {
  SimulatedClock sim(absl::FromUnixSeconds(7));
  Clock* clock = &sim;
  EXPECT_EQ(clock->Now(), absl::FromUnixSeconds(7));
}

}  // namespace
}  // namespace poolside
