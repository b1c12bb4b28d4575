#include "common/db/topology_monitor.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/clock/clock.h"
#include "common/db/member_probe.h"
#include "common/db/topology.h"
#include "gtest/gtest.h"
#include "tests/fixtures/replicated_cluster.h"

namespace poolside::db {
namespace {

using ::poolside::testing::ReplicatedCluster;

// Polls `done` until it holds or `timeout` passes.
bool WaitFor(const std::function<bool()>& done, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return true;
}

MemberStatus StatusOf(const Topology& topology, const std::string& id) {
  for (MemberStatus& s : topology.Snapshot()) {
    if (s.id == id) return s;
  }
  return {};
}

std::string Id(const testing::PostgresCluster& pg) { return absl::StrCat("127.0.0.1:", pg.port()); }

TEST(MembersFromDsnsTest, ReplicaEntriesOverrideTheDatabaseDsn) {
  absl::StatusOr<std::vector<MemberSpec>> members =
      MembersFromDsns("postgresql://app@db-0:5432/shop?sslmode=require",
                      {"host=db-1", "host=db-2 port=6432", "hostaddr=10.0.0.9 port=5433"});
  ASSERT_TRUE(members.ok()) << members.status();
  ASSERT_EQ(members->size(), 4u);
  EXPECT_EQ((*members)[0].id, "db-0:5432");
  EXPECT_EQ((*members)[1].id, "db-1:5432");
  EXPECT_EQ((*members)[2].id, "db-2:6432");
  EXPECT_EQ((*members)[3].id, "10.0.0.9:5433");
  for (const MemberSpec& m : *members) {
    EXPECT_TRUE(absl::StrContains(m.dsn, "dbname='shop'")) << m.dsn;
    EXPECT_TRUE(absl::StrContains(m.dsn, "user='app'")) << m.dsn;
    EXPECT_TRUE(absl::StrContains(m.dsn, "sslmode='require'")) << m.dsn;
  }
  EXPECT_FALSE(absl::StrContains((*members)[1].dsn, "db-0")) << (*members)[1].dsn;

  for (const char* bad :
       {"dbname=other", "host=x user=postgres", "host=x password=p", "host='", "host=db-0"}) {
    absl::StatusOr<std::vector<MemberSpec>> refused =
        MembersFromDsns("host=db-0 dbname=shop", {bad});
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_FALSE(absl::StrContains(refused.status().message(), "=p")) << refused.status();
  }
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

class TopologyMonitorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<ReplicatedCluster>> c =
        ReplicatedCluster::Start({.replicas = 2});
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = c->release();
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }

  static ReplicatedCluster* cluster_;
};

ReplicatedCluster* TopologyMonitorTest::cluster_ = nullptr;

TEST_F(TopologyMonitorTest, LagBansAndTokensOnRealReplicas) {
  ReplicatedCluster& c = *cluster_;
  Topology topology("postgres",
                    {.max_lag = absl::Milliseconds(400),
                     .max_lag_bytes = 1 << 30,
                     .max_sample_age = absl::Seconds(10)},
                    Clock::Real());
  absl::StatusOr<std::vector<MemberSpec>> members = MembersFromDsns(
      c.primary().Dsn(),
      {absl::StrCat("port=", c.replica(0).port()), absl::StrCat("port=", c.replica(1).port())});
  ASSERT_TRUE(members.ok()) << members.status();
  TopologyMonitor monitor(&topology, {.interval = absl::Milliseconds(50)});
  ASSERT_TRUE(monitor.Start(*members).ok());
  const std::string primary = Id(c.primary()), r0 = Id(c.replica(0)), r1 = Id(c.replica(1));

  ASSERT_TRUE(WaitFor(
      [&] {
        return topology.primary() == primary && StatusOf(topology, r0).healthy &&
               StatusOf(topology, r1).healthy;
      },
      absl::Seconds(20)));
  EXPECT_EQ(StatusOf(topology, r0).role, MemberRole::kReplica);
  EXPECT_EQ(topology.Pick(false)->id(), primary);
  std::map<std::string, int> spread;
  for (int i = 0; i < 10; ++i) ++spread[topology.Pick(true)->id()];
  EXPECT_EQ(spread[r0], 5);
  EXPECT_EQ(spread[r1], 5);

  // Replica 0 stops replaying while the primary writes: banned past 400 ms.
  ASSERT_TRUE(c.primary().Exec("postgres", "CREATE TABLE IF NOT EXISTS w (v int)").ok());
  ASSERT_TRUE(c.WaitForAllReplicas(absl::Seconds(20)).ok());
  ASSERT_TRUE(c.PauseReplay(0).ok());
  absl::Time paused_at = absl::Now();
  bool banned = WaitFor(
      [&] {
        EXPECT_TRUE(c.primary().Exec("postgres", "INSERT INTO w VALUES (1)").ok());
        return StatusOf(topology, r0).banned;
      },
      absl::Seconds(20));
  ASSERT_TRUE(banned) << "lag " << StatusOf(topology, r0).lag;
  EXPECT_GE(absl::Now() - paused_at, absl::Milliseconds(400)) << "not banned before the bound";
  EXPECT_GT(StatusOf(topology, r0).lag_bytes, 0u);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(topology.Pick(true)->id(), r1);

  // A token past the paused replica's replay position never reaches it, even
  // once the ban is lifted by a relaxed bound: here, the token check alone.
  absl::StatusOr<std::string> lsn_text = c.CurrentLsn();
  ASSERT_TRUE(lsn_text.ok());
  absl::StatusOr<Lsn> token = ParseLsn(*lsn_text);
  ASSERT_TRUE(token.ok());
  ASSERT_TRUE(c.WaitForReplay(1, *lsn_text, absl::Seconds(20)).ok());
  ASSERT_TRUE(WaitFor([&] { return StatusOf(topology, r1).lsn >= *token; }, absl::Seconds(20)));
  for (int i = 0; i < 20; ++i) {
    absl::StatusOr<Topology::Route> r = topology.Pick(true, *token);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->id(), r1);
    EXPECT_GE(r->lsn(), *token);
  }
  absl::StatusOr<Topology::Route> beyond = topology.Pick(true, *token + (1 << 20));
  ASSERT_TRUE(beyond.ok());
  EXPECT_EQ(beyond->id(), primary) << "beyond every replica: the primary";

  // Resumed: it catches up, is let back and gets reads again.
  ASSERT_TRUE(c.ResumeReplay(0).ok());
  ASSERT_TRUE(WaitFor([&] { return !StatusOf(topology, r0).banned; }, absl::Seconds(20)));
  spread.clear();
  for (int i = 0; i < 10; ++i) ++spread[topology.Pick(true, *token)->id()];
  EXPECT_EQ(spread[r0], 5);
  EXPECT_EQ(StatusOf(topology, r0).bans, 1u);
  monitor.Stop();
  // Stopped: nothing is probed any more (the samples age).
  const absl::Time last = StatusOf(topology, r0).last_sample;
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(StatusOf(topology, r0).last_sample, last);
}

// Last in the suite: it kills and promotes members.
TEST_F(TopologyMonitorTest, ZKilledReplicaAndFailover) {
  ReplicatedCluster& c = *cluster_;
  Topology topology("postgres", {.max_sample_age = absl::Milliseconds(600)}, Clock::Real());
  absl::StatusOr<std::vector<MemberSpec>> members = MembersFromDsns(
      c.primary().Dsn(),
      {absl::StrCat("port=", c.replica(0).port()), absl::StrCat("port=", c.replica(1).port())});
  ASSERT_TRUE(members.ok()) << members.status();
  TopologyMonitor monitor(
      &topology, {.interval = absl::Milliseconds(50), .probe_timeout = absl::Milliseconds(500)});
  ASSERT_TRUE(monitor.Start(*members).ok());
  const std::string primary = Id(c.primary()), r0 = Id(c.replica(0)), r1 = Id(c.replica(1));
  ASSERT_TRUE(WaitFor(
      [&] {
        return topology.primary() == primary && StatusOf(topology, r0).healthy &&
               StatusOf(topology, r1).healthy;
      },
      absl::Seconds(20)));

  // A replica killed: after detection its reads go to the other.
  ASSERT_TRUE(c.replica(1).Kill().ok());
  ASSERT_TRUE(WaitFor([&] { return !StatusOf(topology, r1).healthy; }, absl::Seconds(10)));
  for (int i = 0; i < 10; ++i) EXPECT_EQ(topology.Pick(true)->id(), r0);
  EXPECT_FALSE(StatusOf(topology, r1).last_error.ok());

  // The primary killed, replica 0 promoted: named the new primary.
  const uint64_t generation = topology.primary_generation();
  ASSERT_TRUE(c.primary().Kill().ok());
  ASSERT_TRUE(WaitFor([&] { return topology.primary().empty(); }, absl::Seconds(10)));
  absl::StatusOr<Topology::Route> write = topology.Pick(false);
  EXPECT_EQ(write.status().code(), absl::StatusCode::kUnavailable) << write.status();
  ASSERT_TRUE(c.Promote(0).ok());
  const absl::Time promoted = absl::Now();
  ASSERT_TRUE(WaitFor([&] { return topology.primary() == r0; }, absl::Seconds(10)));
  EXPECT_LT(absl::Now() - promoted, absl::Seconds(5));
  EXPECT_GT(topology.primary_generation(), generation);
  EXPECT_EQ(topology.Pick(false)->id(), r0);
  // No replica left: reads fall back to the new primary.
  EXPECT_EQ(topology.Pick(true)->id(), r0);
}

}  // namespace
}  // namespace poolside::db
