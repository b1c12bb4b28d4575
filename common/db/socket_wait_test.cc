#include "common/db/socket_wait.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace poolside::db {
namespace {

class SocketPair : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds_), 0); }
  void TearDown() override {
    close(fds_[0]);
    if (fds_[1] >= 0) close(fds_[1]);
  }
  int fds_[2] = {-1, -1};
};

TEST_F(SocketPair, ReadyWhenThePeerWrote) {
  ASSERT_EQ(write(fds_[1], "x", 1), 1);
  absl::StatusOr<bool> ready = WaitForSocket(fds_[0], POLLIN, absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(ready.ok()) << ready.status();
  EXPECT_TRUE(*ready);
  char c = 0;
  EXPECT_EQ(read(fds_[0], &c, 1), 1);  // the byte is still there to read
  EXPECT_EQ(c, 'x');
}

TEST_F(SocketPair, WritableAtOnce) {
  absl::StatusOr<bool> ready = WaitForSocket(fds_[0], POLLOUT, absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(ready.ok()) << ready.status();
  EXPECT_TRUE(*ready);
}

TEST_F(SocketPair, FalseAtTheDeadline) {
  absl::StatusOr<bool> ready = WaitForSocket(fds_[0], POLLIN, absl::Now() + absl::Milliseconds(20));
  ASSERT_TRUE(ready.ok()) << ready.status();
  EXPECT_FALSE(*ready);
  ready = WaitForSocket(fds_[0], POLLIN, absl::InfinitePast());
  ASSERT_TRUE(ready.ok()) << ready.status();
  EXPECT_FALSE(*ready);
}

TEST_F(SocketPair, ReadyWhenThePeerHungUp) {
  close(fds_[1]);
  fds_[1] = -1;
  absl::StatusOr<bool> ready = WaitForSocket(fds_[0], POLLIN, absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(ready.ok()) << ready.status();
  EXPECT_TRUE(*ready);
}

TEST(WaitForSocketTest, AClosedConnectionIsUnavailable) {
  EXPECT_EQ(WaitForSocket(-1, POLLIN, absl::Now() + absl::Seconds(10)).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(PollTimeoutMsTest, RoundsUpAndClamps) {
  const absl::Time now = absl::Now();
  EXPECT_EQ(PollTimeoutMs(now, now + absl::Microseconds(1), 100), 1);
  EXPECT_EQ(PollTimeoutMs(now, now + absl::Milliseconds(42), 100), 42);
  EXPECT_EQ(PollTimeoutMs(now, now + absl::Seconds(5), 100), 100);
  EXPECT_EQ(PollTimeoutMs(now, now - absl::Seconds(1), 100), 0);
  EXPECT_EQ(PollTimeoutMs(now, absl::InfiniteFuture(), 60000), 60000);
}

}  // namespace
}  // namespace poolside::db
