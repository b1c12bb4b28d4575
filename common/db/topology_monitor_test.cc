#include "common/db/topology_monitor.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/clock/clock.h"
#include "common/db/member_probe.h"
#include "common/db/topology.h"
#include "gtest/gtest.h"
#include "tests/fixtures/loopback_port.h"
#include "tests/fixtures/replicated_cluster.h"
#include "tests/fixtures/wait_for.h"

namespace poolside::db {
namespace {

using ::poolside::testing::ReplicatedCluster;
using ::poolside::testing::WaitFor;

MemberStatus StatusOf(const Topology& topology, const std::string& id) {
  for (MemberStatus& s : topology.Snapshot()) {
    if (s.id == id) return s;
  }
  return {};
}

std::string Id(const testing::PostgresCluster& pg) { return absl::StrCat("127.0.0.1:", pg.port()); }

// Members' answers set by the test, probed through the monitor's factory.
class FakeMembers {
 public:
  void Set(const std::string& id, absl::StatusOr<MemberSample> sample) {
    absl::MutexLock lock(&mu_);
    samples_.insert_or_assign(id, std::move(sample));
  }
  ProbeFactory Factory() {
    return [this](const MemberSpec& spec) -> std::unique_ptr<MemberProbe> {
      {
        absl::MutexLock lock(&mu_);
        dsns_[spec.id] = spec.dsn;
      }
      return std::make_unique<ScriptedProbe>(this, spec.id);
    };
  }
  std::string DsnOf(const std::string& id) {
    absl::MutexLock lock(&mu_);
    return dsns_[id];
  }

 private:
  class ScriptedProbe : public MemberProbe {
   public:
    ScriptedProbe(FakeMembers* members, std::string id) : members_(members), id_(std::move(id)) {}
    absl::StatusOr<MemberSample> Probe(absl::Time) override {
      absl::MutexLock lock(&members_->mu_);
      auto it = members_->samples_.find(id_);
      if (it == members_->samples_.end()) return absl::UnavailableError("no such server");
      return it->second;
    }

   private:
    FakeMembers* members_;
    std::string id_;
  };

  absl::Mutex mu_;
  std::map<std::string, absl::StatusOr<MemberSample>> samples_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> dsns_ ABSL_GUARDED_BY(mu_);
};

// Answers every connection with the current `reply` until stopped (then
// nothing listens on its port).
class FakePatroni {
 public:
  FakePatroni() {
    int port = 0;
    fd_ = testing::BindLoopback(&port);
    EXPECT_GE(fd_, 0);
    EXPECT_EQ(listen(fd_, 16), 0);
    url_ = absl::StrCat("http://127.0.0.1:", port);
    thread_ = std::thread([this] {
      for (;;) {
        const int conn = accept(fd_, nullptr, nullptr);
        if (conn < 0) return;
        char buf[4096];
        (void)recv(conn, buf, sizeof(buf), 0);
        std::string reply;
        {
          absl::MutexLock lock(&mu_);
          reply = absl::StrCat("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n", body_);
        }
        (void)send(conn, reply.data(), reply.size(), MSG_NOSIGNAL);
        close(conn);
      }
    });
  }
  ~FakePatroni() { Stop(); }
  void Stop() {
    if (fd_ < 0) return;
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    fd_ = -1;
    thread_.join();
  }
  void SetBody(std::string body) {
    absl::MutexLock lock(&mu_);
    body_ = std::move(body);
  }
  const std::string& url() const { return url_; }

 private:
  int fd_ = -1;
  std::string url_;
  std::thread thread_;
  absl::Mutex mu_;
  std::string body_ ABSL_GUARDED_BY(mu_);
};

std::string ClusterJson(const std::string& leader, const std::vector<std::string>& names) {
  std::string members;
  for (size_t i = 0; i < names.size(); ++i) {
    absl::StrAppend(&members, i ? "," : "", R"({"name": ")", names[i], R"(", "role": ")",
                    names[i] == leader ? "leader" : "replica",
                    R"(", "state": "running", "host": "10.0.0.)", i + 1, R"(", "port": )", 5000 + i,
                    "}");
  }
  return absl::StrCat(R"({"members": [)", members, "]}");
}

TEST(TopologyMonitorPatroniTest, FollowsPatroniAndFallsBackWhenItIsGone) {
  FakeMembers servers;
  servers.Set("pg0", MemberSample{.in_recovery = false, .lsn = 100});
  servers.Set("pg1", MemberSample{.in_recovery = true, .lsn = 100});
  servers.Set("pg2", MemberSample{.in_recovery = true, .lsn = 100});
  FakePatroni patroni;
  patroni.SetBody(ClusterJson("pg0", {"pg0", "pg1"}));
  Topology topology("app", {.max_sample_age = absl::Seconds(5)}, Clock::Real());
  TopologyMonitor monitor(&topology,
                          {.interval = absl::Milliseconds(20),
                           .probe_timeout = absl::Milliseconds(500),
                           .leader_hint_ttl = absl::Milliseconds(300)},
                          servers.Factory());
  EXPECT_EQ(monitor.StartPatroni({"ftp://x:1"}, "host=db dbname=app").code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(monitor
                  .StartPatroni({"http://127.0.0.1:1", patroni.url()},
                                "host=db hostaddr=10.9.9.9 dbname=app sslmode=require")
                  .ok());
  ASSERT_TRUE(WaitFor([&] { return topology.primary() == "pg0"; }, absl::Seconds(10)));
  EXPECT_TRUE(monitor.discovery_status().ok()) << monitor.discovery_status();
  // pg1's probe may not have been made yet when pg0's named the primary.
  ASSERT_TRUE(WaitFor([&] { return !servers.DsnOf("pg1").empty(); }, absl::Seconds(10)));
  const std::string dsn = servers.DsnOf("pg1");
  EXPECT_TRUE(absl::StrContains(dsn, "host='10.0.0.2'")) << dsn;
  EXPECT_TRUE(absl::StrContains(dsn, "port='5001'")) << dsn;
  EXPECT_TRUE(absl::StrContains(dsn, "dbname='app'")) << dsn;
  EXPECT_TRUE(absl::StrContains(dsn, "sslmode='require'")) << dsn;
  EXPECT_FALSE(absl::StrContains(dsn, "10.9.9.9")) << "the DSN's own address is dropped";

  // A switchover: Patroni names pg1 first; it becomes primary once writable.
  patroni.SetBody(ClusterJson("pg1", {"pg0", "pg1"}));
  servers.Set("pg0", MemberSample{.in_recovery = true, .lsn = 100});
  ASSERT_TRUE(WaitFor([&] { return topology.primary().empty(); }, absl::Seconds(10)));
  servers.Set("pg1", MemberSample{.in_recovery = false, .lsn = 120});
  ASSERT_TRUE(WaitFor([&] { return topology.primary() == "pg1"; }, absl::Seconds(10)));

  // Membership changes: pg0 leaves, pg2 joins.
  patroni.SetBody(ClusterJson("pg1", {"pg1", "pg2"}));
  ASSERT_TRUE(WaitFor(
      [&] {
        std::vector<MemberStatus> s = topology.Snapshot();
        return s.size() == 2 && s[0].id == "pg1" && s[1].id == "pg2" && s[1].healthy;
      },
      absl::Seconds(10)));

  // A malformed answer changes nothing.
  patroni.SetBody(R"({"members": [{"name": "evil", "host": "h dbname=x", "port": 1}]})");
  ASSERT_TRUE(WaitFor(
      [&] { return monitor.discovery_status().code() == absl::StatusCode::kInvalidArgument; },
      absl::Seconds(10)));
  EXPECT_EQ(topology.Snapshot().size(), 2u);
  EXPECT_EQ(topology.primary(), "pg1");

  // Two writable members: Patroni's leader decides while it is reachable...
  patroni.SetBody(ClusterJson("pg1", {"pg1", "pg2"}));
  servers.Set("pg2", MemberSample{.in_recovery = false, .lsn = 90});
  ASSERT_TRUE(WaitFor([&] { return monitor.discovery_status().ok(); }, absl::Seconds(10)));
  // pg2 seen writable (neither primary nor replica), and the leader stays.
  ASSERT_TRUE(WaitFor(
      [&] {
        MemberStatus pg2 = StatusOf(topology, "pg2");
        return pg2.healthy && pg2.role == MemberRole::kUnknown && pg2.lsn == 90;
      },
      absl::Seconds(10)));
  EXPECT_EQ(topology.primary(), "pg1");
  // ... and once it has been gone past the TTL, nobody is guessed.
  patroni.Stop();
  ASSERT_TRUE(WaitFor([&] { return topology.primary().empty(); }, absl::Seconds(10)));
  EXPECT_EQ(monitor.discovery_status().code(), absl::StatusCode::kUnavailable);
  // The single writable member is the primary without Patroni.
  servers.Set("pg1", MemberSample{.in_recovery = true, .lsn = 120});
  ASSERT_TRUE(WaitFor([&] { return topology.primary() == "pg2"; }, absl::Seconds(10)));
  monitor.Stop();
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

  // The cluster's members: the primary's DSN, the replicas by port.
  static absl::StatusOr<std::vector<MemberSpec>> Members() {
    ReplicatedCluster& c = *cluster_;
    return MembersFromDsns(c.primary().Dsn(), {absl::StrCat("port=", c.replica(0).port()),
                                               absl::StrCat("port=", c.replica(1).port())});
  }

  // Whether `topology` comes to name the primary and see both replicas
  // healthy within 20 s.
  static bool SeesAll(const Topology& topology) {
    ReplicatedCluster& c = *cluster_;
    return WaitFor(
        [&] {
          return topology.primary() == Id(c.primary()) &&
                 StatusOf(topology, Id(c.replica(0))).healthy &&
                 StatusOf(topology, Id(c.replica(1))).healthy;
        },
        absl::Seconds(20));
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
  absl::StatusOr<std::vector<MemberSpec>> members = Members();
  ASSERT_TRUE(members.ok()) << members.status();
  TopologyMonitor monitor(&topology, {.interval = absl::Milliseconds(50)});
  ASSERT_TRUE(monitor.Start(*members).ok());
  const std::string primary = Id(c.primary()), r0 = Id(c.replica(0)), r1 = Id(c.replica(1));

  ASSERT_TRUE(SeesAll(topology));
  EXPECT_EQ(StatusOf(topology, r0).role, MemberRole::kReplica);
  EXPECT_EQ(topology.Pick(false)->id(), primary);
  // Every member on the cluster's first timeline (the replicas' as their WAL
  // receivers stream it, once they do).
  EXPECT_EQ(StatusOf(topology, primary).timeline, 1u);
  EXPECT_TRUE(WaitFor(
      [&] {
        return StatusOf(topology, r0).timeline == 1u && StatusOf(topology, r1).timeline == 1u;
      },
      absl::Seconds(20)))
      << StatusOf(topology, r0).timeline << " " << StatusOf(topology, r1).timeline;
  std::map<std::string, int> spread;
  for (int i = 0; i < 10; ++i) ++spread[topology.Pick(true)->id()];
  EXPECT_EQ(spread[r0], 5);
  EXPECT_EQ(spread[r1], 5);

  // Replica 0 stops replaying while the primary writes: banned past 400 ms.
  ASSERT_TRUE(c.primary().Exec("postgres", "CREATE TABLE IF NOT EXISTS w (v int)").ok());
  ASSERT_TRUE(c.WaitForAllReplicas(absl::Seconds(20)).ok());
  ASSERT_TRUE(c.PauseReplay(0).ok());
  bool banned = WaitFor(
      [&] {
        EXPECT_TRUE(c.primary().Exec("postgres", "INSERT INTO w VALUES (1)").ok());
        return StatusOf(topology, r0).banned;
      },
      absl::Seconds(20));
  ASSERT_TRUE(banned) << "lag " << StatusOf(topology, r0).lag;
  EXPECT_GT(StatusOf(topology, r0).lag, absl::Milliseconds(400)) << "banned past the bound";
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
  absl::StatusOr<std::vector<MemberSpec>> members = Members();
  ASSERT_TRUE(members.ok()) << members.status();
  TopologyMonitor monitor(
      &topology, {.interval = absl::Milliseconds(50), .probe_timeout = absl::Milliseconds(500)});
  ASSERT_TRUE(monitor.Start(*members).ok());
  const std::string primary = Id(c.primary()), r0 = Id(c.replica(0)), r1 = Id(c.replica(1));
  ASSERT_TRUE(SeesAll(topology));

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
