// A 3-member Patroni cluster (etcd + Patroni + PostgreSQL 15 on loopback):
// the fixture's own behaviour, and the topology monitor discovering members
// and following the leader through a switchover and a failover.

#include <signal.h>
#include <sys/stat.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/clock/clock.h"
#include "common/db/topology.h"
#include "common/db/topology_monitor.h"
#include "gtest/gtest.h"
#include "tests/fixtures/patroni_cluster.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/wait_for.h"

namespace poolside::testing {
namespace {

using ::poolside::db::MemberRole;
using ::poolside::db::MemberStatus;
using ::poolside::db::Topology;

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

TEST(PatroniTopologyTest, MissingPackagesFailClearly) {
  absl::StatusOr<std::unique_ptr<PatroniCluster>> c =
      PatroniCluster::Start({.patroni_bin = "/nonexistent/patroni"});
  ASSERT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition) << c.status();
  EXPECT_NE(c.status().message().find("/nonexistent/patroni (Debian package `patroni`)"),
            absl::string_view::npos)
      << c.status();
  EXPECT_NE(c.status().message().find("make deps"), absl::string_view::npos) << c.status();
}

TEST(PatroniTopologyTest, SwitchoverAndFailoverFollowedByTheMonitor) {
  std::vector<std::string> data_dirs;
  std::vector<pid_t> postmasters;
  {
    // The shortest TTL the fixture allows: the failover below waits for it.
    absl::StatusOr<std::unique_ptr<PatroniCluster>> started = PatroniCluster::Start({.ttl = 5});
    ASSERT_TRUE(started.ok()) << started.status();
    PatroniCluster& c = **started;
    ASSERT_EQ(c.member_count(), 3);
    absl::StatusOr<int> leader = c.Leader();
    ASSERT_TRUE(leader.ok()) << leader.status();
    for (int i = 0; i < 3; ++i) {
      data_dirs.push_back(c.data_dir(i));
      postmasters.push_back(testing::RunningPostmaster(c.data_dir(i)));
      EXPECT_GT(postmasters.back(), 0) << c.name(i);
      absl::StatusOr<std::string> recovery =
          testing::QueryDsn(c.Dsn(i), "SELECT pg_is_in_recovery()");
      ASSERT_TRUE(recovery.ok()) << recovery.status();
      EXPECT_EQ(*recovery, i == *leader ? "f" : "t");
    }

    // The monitor finds the members from any one member's REST API.
    Topology topology("postgres", {.max_sample_age = absl::Seconds(2)}, Clock::Real());
    db::TopologyMonitor monitor(
        &topology, {.interval = absl::Milliseconds(100), .probe_timeout = absl::Milliseconds(800)});
    const int other = (*leader + 1) % 3;
    ASSERT_TRUE(monitor.StartPatroni({"http://127.0.0.1:1", c.api_url(other)}, c.Dsn(0)).ok());
    ASSERT_TRUE(WaitFor(
        [&] {
          if (topology.primary() != c.name(*leader)) return false;
          for (const MemberStatus& s : topology.Snapshot()) {
            if (!s.healthy) return false;
          }
          return true;
        },
        absl::Seconds(15)))
        << topology.primary() << " " << monitor.discovery_status();
    EXPECT_TRUE(monitor.discovery_status().ok()) << monitor.discovery_status();
    ASSERT_EQ(topology.Snapshot().size(), 3u);
    for (const MemberStatus& s : topology.Snapshot()) {
      EXPECT_EQ(s.role, s.id == c.name(*leader) ? MemberRole::kPrimary : MemberRole::kReplica)
          << s.id;
    }
    EXPECT_EQ(topology.Pick(false)->dsn().find(absl::StrCat("port='", c.pg_port(*leader), "'")) !=
                  std::string::npos,
              true)
        << topology.Pick(false)->dsn();

    // Switchover: the monitor names the new primary within a bound.
    // (A command returns no row: NOT_FOUND is QueryDsn's success here.)
    ASSERT_EQ(testing::QueryDsn(c.Dsn(*leader), "CREATE TABLE marks (v int)").status().code(),
              absl::StatusCode::kNotFound);
    const uint64_t generation = topology.primary_generation();
    ASSERT_TRUE(c.Switchover(*leader, other).ok());
    const absl::Time switched = absl::Now();
    ASSERT_TRUE(WaitFor([&] { return topology.primary() == c.name(other); }, absl::Seconds(10)))
        << "primary: '" << topology.primary() << "'\n"
        << c.LogTail(other);
    EXPECT_LT(absl::Now() - switched, absl::Seconds(10));
    EXPECT_GT(topology.primary_generation(), generation);
    absl::StatusOr<Topology::Route> write = topology.Pick(false);
    ASSERT_TRUE(write.ok()) << write.status();
    EXPECT_EQ(write->id(), c.name(other));
    EXPECT_TRUE(testing::QueryDsn(write->dsn(), "INSERT INTO marks VALUES (1) RETURNING v").ok());
    ASSERT_TRUE(c.WaitForLeaderWithReplicas(other, 2, absl::Seconds(30)).ok());
    ASSERT_TRUE(WaitFor([&] { return topology.Pick(true).ok() && !topology.Pick(true)->primary(); },
                        absl::Seconds(10)));
    // Replication is asynchronous: the write must reach the replicas before
    // the leader dies for it to survive.
    for (int i = 0; i < 3; ++i) {
      if (i == other) continue;
      ASSERT_TRUE(WaitFor(
          [&] {
            absl::StatusOr<std::string> n =
                testing::QueryDsn(c.Dsn(i), "SELECT count(*) FROM marks");
            return n.ok() && *n == "1";
          },
          absl::Seconds(10)));
    }

    // Failover: the leader's machine dies; the monitor follows Patroni's pick.
    ASSERT_TRUE(c.KillMember(other).ok());
    EXPECT_EQ(testing::RunningPostmaster(c.data_dir(other)), 0);
    EXPECT_FALSE(c.MemberRunning(other));
    ASSERT_TRUE(WaitFor([&] { return topology.primary() != c.name(other); }, absl::Seconds(5)))
        << "the dead primary is still named";
    absl::StatusOr<int> next = c.WaitForLeader(absl::Seconds(40));
    ASSERT_TRUE(next.ok()) << next.status();
    ASSERT_NE(*next, other);
    ASSERT_TRUE(WaitFor([&] { return topology.primary() == c.name(*next); }, absl::Seconds(10)))
        << "primary: '" << topology.primary() << "'";
    absl::StatusOr<Topology::Route> after = topology.Pick(false);
    ASSERT_TRUE(after.ok()) << after.status();
    EXPECT_EQ(*testing::QueryDsn(after->dsn(), "SELECT count(*) FROM marks"), "1")
        << "the acknowledged write survived the failover";
    monitor.Stop();
  }
  // Nothing left behind: no PostgreSQL, no files.
  for (pid_t pid : postmasters) {
    EXPECT_FALSE(pid > 0 && kill(pid, 0) == 0 && Exists(absl::StrCat("/proc/", pid, "/exe")))
        << "postmaster " << pid << " still running";
  }
  for (const std::string& dir : data_dirs) EXPECT_FALSE(Exists(dir)) << dir;
}

}  // namespace
}  // namespace poolside::testing
