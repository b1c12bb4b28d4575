#include "tools/restart_backoff.h"

#include "gtest/gtest.h"

namespace poolside::devstack {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1700000000);

TEST(RestartBackoffTest, DoublesWhileCrashingUpToTheCeiling) {
  RestartBackoff backoff({absl::Milliseconds(500), absl::Seconds(4), absl::Seconds(60)});
  absl::Time t = kT0;
  const absl::Duration expected[] = {absl::Milliseconds(500), absl::Seconds(1), absl::Seconds(2),
                                     absl::Seconds(4),        absl::Seconds(4), absl::Seconds(4)};
  for (absl::Duration want : expected) {
    const absl::Time exited = t + absl::Seconds(1);
    EXPECT_EQ(backoff.NextDelay(t, exited), want);
    t = exited + want;
  }
  EXPECT_EQ(backoff.consecutive_exits(), 6);
}

TEST(RestartBackoffTest, AHealthyRunStartsOver) {
  RestartBackoff backoff({absl::Milliseconds(500), absl::Seconds(30), absl::Seconds(60)});
  EXPECT_EQ(backoff.NextDelay(kT0, kT0), absl::Milliseconds(500));
  EXPECT_EQ(backoff.NextDelay(kT0, kT0 + absl::Seconds(59)), absl::Seconds(1));
  EXPECT_EQ(backoff.consecutive_exits(), 2);
  EXPECT_EQ(backoff.NextDelay(kT0, kT0 + absl::Seconds(60)), absl::Milliseconds(500));
  EXPECT_EQ(backoff.consecutive_exits(), 1);
  EXPECT_EQ(backoff.NextDelay(kT0, kT0), absl::Seconds(1));
}

TEST(RestartBackoffTest, ClockGoingBackwardsIsAnUnhealthyRun) {
  RestartBackoff backoff;
  EXPECT_EQ(backoff.NextDelay(kT0, kT0 - absl::Hours(1)), absl::Milliseconds(500));
  EXPECT_EQ(backoff.NextDelay(kT0, kT0 - absl::Hours(1)), absl::Seconds(1));
}

TEST(RestartBackoffTest, ACeilingBelowTheInitialDelayWins) {
  RestartBackoff backoff({absl::Seconds(10), absl::Seconds(2), absl::Seconds(60)});
  EXPECT_EQ(backoff.NextDelay(kT0, kT0), absl::Seconds(2));
  EXPECT_EQ(backoff.NextDelay(kT0, kT0), absl::Seconds(2));
}

}  // namespace
}  // namespace poolside::devstack
