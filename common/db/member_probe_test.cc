#include "common/db/member_probe.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/fixtures/postgres_cluster.h"

namespace poolside::db {
namespace {

TEST(MemberProbeTest, ReadsRoleAndPositionAndSurvivesARestart) {
  testing::PostgresCluster& pg = testing::SharedPostgres();
  PgMemberProbe probe(pg.Dsn());
  absl::StatusOr<MemberSample> first = probe.Probe(absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->in_recovery);
  EXPECT_EQ(first->timeline, 1u);  // a fresh cluster's
  absl::StatusOr<std::string> now = pg.QueryValue("postgres", "SELECT pg_current_wal_lsn()::text");
  ASSERT_TRUE(now.ok());
  absl::StatusOr<Lsn> lsn = ParseLsn(*now);
  ASSERT_TRUE(lsn.ok());
  EXPECT_LE(first->lsn, *lsn);
  EXPECT_GT(first->lsn, 0u);

  // The kept connection is terminated by the server: one probe fails, the
  // next reconnects.
  ASSERT_TRUE(pg.Exec("postgres",
                      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'poolside-monitor'")
                  .ok());
  absl::StatusOr<MemberSample> after = probe.Probe(absl::Now() + absl::Seconds(10));
  if (!after.ok()) {
    EXPECT_EQ(after.status().code(), absl::StatusCode::kUnavailable) << after.status();
    after = probe.Probe(absl::Now() + absl::Seconds(10));
  }
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_GE(after->lsn, first->lsn);
}

TEST(MemberProbeTest, NeverWaitsPastItsDeadline) {
  // A listener that never answers: the handshake completes in the kernel.
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 4), 0);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  PgMemberProbe probe(absl::StrCat("host=127.0.0.1 port=", ntohs(addr.sin_port), " user=x"));
  const absl::Time start = absl::Now();
  absl::StatusOr<MemberSample> sample = probe.Probe(absl::Now() + absl::Milliseconds(300));
  EXPECT_EQ(sample.status().code(), absl::StatusCode::kDeadlineExceeded) << sample.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
  close(fd);

  PgMemberProbe unparsable("host='");
  EXPECT_EQ(unparsable.Probe(absl::Now() + absl::Seconds(1)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace poolside::db
