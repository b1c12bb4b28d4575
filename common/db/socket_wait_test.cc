#include "common/db/socket_wait.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "libpq-fe.h"

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

// A listener that never answers: connections complete in the kernel and the
// server's reply to the startup packet never comes.
class SilentServer : public ::testing::Test {
 protected:
  void SetUp() override {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd_, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ASSERT_EQ(listen(fd_, 4), 0);
    socklen_t len = sizeof(addr);
    ASSERT_EQ(getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    port_ = ntohs(addr.sin_port);
  }
  void TearDown() override {
    if (conn_ != nullptr) PQfinish(conn_);
    close(fd_);
  }
  PGconn* Start() {
    conn_ = PQconnectStart(
        absl::StrCat("host=127.0.0.1 port=", port_, " dbname=x user=x sslmode=disable").c_str());
    return conn_;
  }
  int fd_ = -1;
  int port_ = 0;
  PGconn* conn_ = nullptr;
};

TEST_F(SilentServer, CompleteConnectEndsAtItsDeadline) {
  absl::Status s = CompleteConnect(Start(), absl::Now() + absl::Milliseconds(200));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
}

TEST_F(SilentServer, CompleteConnectGivesUpWhenAFlagIsRaised) {
  std::atomic<bool> quiet{false}, gone{true};
  const std::atomic<bool>* flags[] = {&quiet, &gone};
  absl::Status s = CompleteConnect(Start(), absl::Now() + absl::Seconds(30), flags);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find("given up"), absl::string_view::npos) << s;
}

TEST(CompleteConnectTest, ARefusedConnectionAndNoConnectionAtAll) {
  // A port nobody listens on any more.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  close(fd);
  PGconn* conn = PQconnectStart(
      absl::StrCat("host=127.0.0.1 port=", ntohs(addr.sin_port), " dbname=x user=x").c_str());
  absl::Status s = CompleteConnect(conn, absl::Now() + absl::Seconds(10));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  PQfinish(conn);
  EXPECT_EQ(CompleteConnect(nullptr, absl::Now() + absl::Seconds(10)).code(),
            absl::StatusCode::kResourceExhausted);
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
