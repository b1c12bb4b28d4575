#include "common/db/topology.h"

#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "common/clock/clock.h"
#include "gtest/gtest.h"

namespace poolside::db {
namespace {

constexpr uint64_t kMiB = 1 << 20;

MemberSample Primary(Lsn lsn) { return {.in_recovery = false, .lsn = lsn}; }
MemberSample Replica(Lsn lsn) { return {.in_recovery = true, .lsn = lsn}; }

class TopologyTest : public ::testing::Test {
 protected:
  TopologyTest()
      : topology_("app",
                  {.max_lag = absl::Seconds(4),
                   .max_lag_bytes = 16 * kMiB,
                   .max_sample_age = absl::Seconds(3)},
                  &clock_) {
    EXPECT_TRUE(topology_.SetMembers({{"p", "host=p"}, {"r1", "host=r1"}, {"r2", "host=r2"}}).ok());
  }

  // One probe round with the primary at `p` and the replicas at r1, r2.
  void Round(Lsn p, Lsn r1, Lsn r2) {
    topology_.Record("p", Primary(p));
    topology_.Record("r1", Replica(r1));
    topology_.Record("r2", Replica(r2));
  }

  MemberStatus Status(const std::string& id) {
    for (MemberStatus& s : topology_.Snapshot()) {
      if (s.id == id) return s;
    }
    ADD_FAILURE() << "no member " << id;
    return {};
  }

  // Which members `n` reads go to while all are held (least outstanding).
  std::map<std::string, int> SpreadOf(int n, Lsn min_lsn = 0) {
    std::vector<Topology::Route> held;
    std::map<std::string, int> count;
    for (int i = 0; i < n; ++i) {
      absl::StatusOr<Topology::Route> r = topology_.Pick(true, min_lsn);
      EXPECT_TRUE(r.ok()) << r.status();
      if (!r.ok()) break;
      ++count[r->id()];
      held.push_back(*std::move(r));
    }
    return count;
  }

  SimulatedClock clock_;
  Topology topology_;
};

TEST_F(TopologyTest, RolesFromProbesAndReadsSpreadOverReplicas) {
  // Nothing probed yet: no primary, reads have nowhere to go either.
  EXPECT_EQ(topology_.Pick(false).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(topology_.Pick(true).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(topology_.primary(), "");

  Round(1000, 1000, 1000);
  EXPECT_EQ(topology_.primary(), "p");
  absl::StatusOr<Topology::Route> write = topology_.Pick(false);
  ASSERT_TRUE(write.ok()) << write.status();
  EXPECT_EQ(write->id(), "p");
  EXPECT_TRUE(write->primary());
  EXPECT_EQ(write->dsn(), "host=p");

  // Least outstanding: held reads alternate between the two replicas.
  std::map<std::string, int> spread = SpreadOf(10);
  EXPECT_EQ(spread["r1"], 5);
  EXPECT_EQ(spread["r2"], 5);
  EXPECT_EQ(spread.count("p"), 0u);
  // Released reads are still taken in turn.
  std::map<std::string, int> turns;
  for (int i = 0; i < 10; ++i) ++turns[topology_.Pick(true)->id()];
  EXPECT_EQ(turns["r1"], 5);
  EXPECT_EQ(turns["r2"], 5);

  // A busy replica gets fewer: with 3 held on each, release r2's; the next
  // 3 go to r2.
  std::vector<Topology::Route> held;
  std::vector<Topology::Route> on_r2;
  for (int i = 0; i < 6; ++i) {
    absl::StatusOr<Topology::Route> r = topology_.Pick(true);
    ASSERT_TRUE(r.ok());
    (r->id() == "r1" ? held : on_r2).push_back(*std::move(r));
  }
  ASSERT_EQ(held.size(), 3u);
  on_r2.clear();
  for (int i = 0; i < 3; ++i) on_r2.push_back(*topology_.Pick(true));
  for (const Topology::Route& r : on_r2) EXPECT_EQ(r.id(), "r2");
  EXPECT_EQ(Status("r1").outstanding, 3);
  held.clear();
  EXPECT_EQ(Status("r1").outstanding, 0);
  EXPECT_EQ(Status("p").role, MemberRole::kPrimary);
  EXPECT_EQ(Status("r1").role, MemberRole::kReplica);
  EXPECT_GE(Status("r1").routed, 10u);
}

TEST_F(TopologyTest, TimeLagBansUntilHalfTheBound) {
  Round(1000, 1000, 1000);
  // The primary writes every second; r1 replays, r2 stops at 1000.
  for (int s = 1; s <= 4; ++s) {
    clock_.Advance(absl::Seconds(1));
    Round(1000 + s * 100, 1000 + s * 100, 1000);
  }
  // r2 lacks what the primary had 4 s ago (sampled at t=1): lag 3 s.
  MemberStatus r2 = Status("r2");
  EXPECT_EQ(r2.lag, absl::Seconds(3));
  EXPECT_EQ(r2.lag_bytes, 400u);
  EXPECT_FALSE(r2.banned);
  // The clock alone makes it stale past the bound: banned at the next pick.
  clock_.Advance(absl::Milliseconds(1500));
  Round(1400, 1400, 1000);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(topology_.Pick(true)->id(), "r1");
  r2 = Status("r2");
  EXPECT_TRUE(r2.banned);
  EXPECT_EQ(r2.bans, 1u);
  EXPECT_EQ(r2.lag, absl::Milliseconds(4500));

  // Replaying part of the way is not enough: lag 2.5 s > 2 s (half of 4).
  Round(1400, 1400, 1200);
  EXPECT_TRUE(Status("r2").banned);
  EXPECT_EQ(Status("r2").lag, absl::Milliseconds(2500));
  // Caught up to within half: used again.
  Round(1400, 1400, 1400);
  EXPECT_FALSE(Status("r2").banned);
  EXPECT_EQ(SpreadOf(4)["r2"], 2);
  EXPECT_EQ(Status("r2").bans, 1u);
}

TEST(TopologyLagTest, ALateProbeDoesNotBanAReplicaThatKeptUp) {
  // A lag bound below the sample age bound, as with a short probe interval
  // and a long probe timeout.
  SimulatedClock clock;
  Topology topology("app", {.max_lag = absl::Seconds(1), .max_sample_age = absl::Seconds(3)},
                    &clock);
  ASSERT_TRUE(topology.SetMembers({{"p", "host=p"}, {"r", "host=r"}}).ok());
  topology.Record("p", MemberSample{.in_recovery = false, .lsn = 1000});
  topology.Record("r", MemberSample{.in_recovery = true, .lsn = 1000});
  clock.Advance(absl::Milliseconds(500));
  topology.Record("p", MemberSample{.in_recovery = false, .lsn = 1100});
  topology.Record("r", MemberSample{.in_recovery = true, .lsn = 1090});  // just behind
  // The primary keeps writing; r's next probes are late (the machine is
  // busy), but within the sample age bound.
  for (int i = 0; i < 2; ++i) {
    clock.Advance(absl::Seconds(1));
    topology.Record("p",
                    MemberSample{.in_recovery = false, .lsn = static_cast<Lsn>(1200 + 100 * i)});
  }
  absl::StatusOr<Topology::Route> read = topology.Pick(true);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->id(), "r") << "banned for the clock alone";
  // Its late probe shows it did stop at 1090 two seconds ago: banned.
  clock.Advance(absl::Milliseconds(100));
  topology.Record("r", MemberSample{.in_recovery = true, .lsn = 1090});
  read = topology.Pick(true);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->id(), "p");
  bool banned = false;
  for (const MemberStatus& m : topology.Snapshot()) {
    if (m.id == "r") {
      banned = m.banned;
      EXPECT_EQ(m.lag, absl::Milliseconds(2100));
    }
  }
  EXPECT_TRUE(banned);
}

TEST_F(TopologyTest, IdlePrimaryMeansNoLagForACaughtUpReplica) {
  Round(5000, 5000, 5000);
  clock_.Advance(absl::Hours(2));
  Round(5000, 5000, 5000);
  EXPECT_EQ(Status("r1").lag, absl::ZeroDuration());
  EXPECT_FALSE(Status("r1").banned);
  EXPECT_EQ(SpreadOf(2).size(), 2u);
}

TEST_F(TopologyTest, ByteLagBans) {
  Round(1000, 1000, 1000);
  Round(1000 + 17 * kMiB, 1000 + 17 * kMiB, 1000);  // same instant: no time lag
  EXPECT_TRUE(Status("r2").banned);
  EXPECT_EQ(Status("r2").lag_bytes, 17 * kMiB);
  EXPECT_EQ(SpreadOf(3)["r1"], 3);
  Round(1000 + 17 * kMiB, 1000 + 17 * kMiB, 1000 + 9 * kMiB);  // 8 MiB behind: half
  EXPECT_FALSE(Status("r2").banned);
}

TEST_F(TopologyTest, TokenNeverPicksAReplicaBehindIt) {
  Round(1000, 1000, 800);
  for (int i = 0; i < 20; ++i) {
    absl::StatusOr<Topology::Route> r = topology_.Pick(true, 900);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->id(), "r1");
    EXPECT_GE(r->lsn(), 900u);
  }
  // Beyond every replica: the primary.
  absl::StatusOr<Topology::Route> r = topology_.Pick(true, 1001);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->id(), "p");
  EXPECT_TRUE(r->primary());
}

// After a failover that promoted r1 (timeline 2) while r2 had replayed
// further on the old timeline: r2's rows and position are not the new
// primary's history. It gets no reads, not even for a token its position
// passes, until it streams the primary's timeline.
TEST_F(TopologyTest, AReplicaOnAnotherTimelineThanThePrimaryGetsNoReads) {
  topology_.Record("p", MemberSample{.in_recovery = false, .lsn = 1000, .timeline = 2});
  topology_.Record("r1", MemberSample{.in_recovery = true, .lsn = 1000, .timeline = 2});
  topology_.Record("r2", MemberSample{.in_recovery = true, .lsn = 1200, .timeline = 1});
  EXPECT_TRUE(Status("r2").banned);
  EXPECT_EQ(Status("r2").timeline, 1u);
  EXPECT_FALSE(Status("r1").banned);
  EXPECT_EQ(SpreadOf(4)["r1"], 4);
  absl::StatusOr<Topology::Route> r = topology_.Pick(true, 1100);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->id(), "p");
  // Streaming the new timeline: routable again.
  topology_.Record("r2", MemberSample{.in_recovery = true, .lsn = 1000, .timeline = 2});
  EXPECT_FALSE(Status("r2").banned);
  EXPECT_EQ(SpreadOf(4)["r2"], 2);
  // A timeline the probe cannot see (no WAL receiver, no privilege) changes
  // nothing.
  topology_.Record("r2", MemberSample{.in_recovery = true, .lsn = 1000, .timeline = 0});
  EXPECT_FALSE(Status("r2").banned);
}

TEST_F(TopologyTest, NoHealthyReplicaFallsBackOrFails) {
  Round(1000, 1000, 1000);
  topology_.Record("r1", absl::UnavailableError("connection refused"));
  topology_.Record("r2", absl::UnavailableError("connection refused"));
  EXPECT_EQ(topology_.Pick(true)->id(), "p");
  EXPECT_FALSE(Status("r1").healthy);
  EXPECT_TRUE(absl::StrContains(Status("r1").last_error.message(), "refused"));

  Topology strict("app", {.fail_without_replica = true}, &clock_);
  ASSERT_TRUE(strict.SetMembers({{"p", "host=p"}, {"r1", "host=r1"}}).ok());
  strict.Record("p", Primary(10));
  strict.Record("r1", Replica(10));
  EXPECT_EQ(strict.Pick(true)->id(), "r1");
  clock_.Advance(absl::Seconds(10));  // r1's sample is stale now
  strict.Record("p", Primary(10));
  absl::StatusOr<Topology::Route> refused = strict.Pick(true);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "noReplica")) << refused.status();
  EXPECT_EQ(strict.Pick(false)->id(), "p") << "writes are unaffected";

  // A database without replicas reads from its primary whatever the setting.
  Topology single("solo", {.fail_without_replica = true}, &clock_);
  ASSERT_TRUE(single.SetMembers({{"p", "host=p"}}).ok());
  single.Record("p", Primary(10));
  EXPECT_EQ(single.Pick(true)->id(), "p");
}

TEST_F(TopologyTest, PromotionDemotionAndSplitBrain) {
  Round(1000, 1000, 1000);
  const uint64_t g0 = topology_.primary_generation();
  // The primary is lost: no primary, reads still go to replicas.
  topology_.Record("p", absl::UnavailableError("server closed the connection"));
  EXPECT_EQ(topology_.primary(), "");
  EXPECT_GT(topology_.primary_generation(), g0);
  absl::StatusOr<Topology::Route> write = topology_.Pick(false);
  EXPECT_EQ(write.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(write.status().message(), "no member")) << write.status();
  EXPECT_EQ(topology_.PrimaryDsn().status(), write.status());
  EXPECT_EQ(topology_.Pick(true)->id().substr(0, 1), "r");

  // r1 promoted: the new primary, and no longer a read replica.
  const uint64_t g1 = topology_.primary_generation();
  topology_.Record("r1", Primary(1100));
  EXPECT_EQ(topology_.primary(), "r1");
  EXPECT_GT(topology_.primary_generation(), g1);
  EXPECT_EQ(topology_.Pick(false)->id(), "r1");
  EXPECT_EQ(topology_.PrimaryDsn().value_or(""), "host=r1");
  for (int i = 0; i < 4; ++i) EXPECT_EQ(topology_.Pick(true)->id(), "r2");

  // The old primary comes back writable: two primaries, no writes anywhere.
  topology_.Record("p", Primary(1000));
  absl::StatusOr<Topology::Route> split = topology_.Pick(false);
  EXPECT_EQ(split.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(split.status().message(), "more than one primary"))
      << split.status();
  EXPECT_EQ(topology_.PrimaryDsn().status().code(), absl::StatusCode::kUnavailable);
  // ... until the HA manager names its leader.
  topology_.SetLeaderHint("r1");
  EXPECT_EQ(topology_.Pick(false)->id(), "r1");
  // The old primary, demoted, is a replica again.
  topology_.Record("p", Replica(1100));
  topology_.SetLeaderHint("");
  EXPECT_EQ(topology_.primary(), "r1");
  EXPECT_EQ(SpreadOf(4).size(), 2u);
}

TEST_F(TopologyTest, PrimaryDsnOnlyWhileThePrimaryIsProbed) {
  EXPECT_EQ(topology_.PrimaryDsn().status().code(), absl::StatusCode::kUnavailable);
  Round(1000, 1000, 1000);
  EXPECT_EQ(topology_.PrimaryDsn().value_or(""), "host=p");
  // Probes that hang leave an old sample: no longer trusted, as by Pick.
  clock_.Advance(absl::Seconds(4));
  EXPECT_EQ(topology_.PrimaryDsn().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(topology_.Pick(false).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(topology_.Pick(true).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(TopologyTest, LeaderHintWaitsForTheLeaderToAcceptWrites) {
  Round(1000, 1000, 1000);
  topology_.SetLeaderHint("r1");  // switchover under way: r1 not promoted yet
  absl::StatusOr<Topology::Route> write = topology_.Pick(false);
  EXPECT_EQ(write.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(write.status().message(), "r1")) << write.status();
  topology_.Record("r1", Primary(1000));
  EXPECT_EQ(topology_.primary(), "r1");
}

TEST_F(TopologyTest, MembersChangeWithoutLosingState) {
  Round(1000, 1000, 1000);
  absl::StatusOr<Topology::Route> held = topology_.Pick(true);
  ASSERT_TRUE(held.ok());
  const std::string held_id = held->id();
  // The held member is removed: its route stays valid.
  const std::string other = held_id == "r1" ? "r2" : "r1";
  ASSERT_TRUE(topology_.SetMembers({{"p", "host=p"}, {other, "host=" + other}}).ok());
  EXPECT_EQ(held->id(), held_id);
  EXPECT_EQ(held->dsn(), "host=" + held_id);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(topology_.Pick(true)->id(), other);
  EXPECT_EQ(topology_.primary(), "p") << "kept its probe state";
  // Probes of removed members are ignored.
  topology_.Record(held_id, Primary(99999));
  EXPECT_EQ(topology_.primary(), "p");

  EXPECT_EQ(topology_.SetMembers({{"p", "a"}, {"p", "b"}}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(topology_.SetMembers({{"", "a"}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(topology_.Snapshot().size(), 2u) << "a rejected set changes nothing";
}

TEST_F(TopologyTest, AwaitPrimaryChangeWakesOnChange) {
  Round(1000, 1000, 1000);
  const uint64_t seen = topology_.primary_generation();
  EXPECT_EQ(topology_.AwaitPrimaryChange(seen, absl::Milliseconds(10)), seen);
  std::thread failover([&] { topology_.Record("p", absl::UnavailableError("gone")); });
  EXPECT_NE(topology_.AwaitPrimaryChange(seen, absl::Seconds(30)), seen);
  failover.join();
  EXPECT_EQ(topology_.primary(), "");
}

TEST_F(TopologyTest, PrimaryLostAtStartsTheFailoverWindow) {
  // Never had a primary: lost since the topology was made.
  const absl::Time made = clock_.Now();
  clock_.Advance(absl::Seconds(2));
  EXPECT_EQ(topology_.primary_lost_at(), made);
  Round(1000, 1000, 1000);
  EXPECT_EQ(topology_.primary_lost_at(), absl::InfiniteFuture());
  clock_.Advance(absl::Seconds(1));
  const absl::Time lost = clock_.Now();
  topology_.Record("p", absl::UnavailableError("gone"));
  clock_.Advance(absl::Seconds(1));
  // Further probes without a primary do not move it.
  topology_.Record("r1", Replica(1000));
  topology_.Record("p", absl::UnavailableError("still gone"));
  EXPECT_EQ(topology_.primary_lost_at(), lost);
  topology_.Record("r1", Primary(1100));
  EXPECT_EQ(topology_.primary_lost_at(), absl::InfiniteFuture());
  // Losing the new one starts a new window.
  clock_.Advance(absl::Seconds(1));
  topology_.Record("r1", Replica(1100));
  EXPECT_EQ(topology_.primary_lost_at(), clock_.Now());
}

TEST_F(TopologyTest, ConcurrentPicksAndProbes) {
  Round(1000, 1000, 1000);
  std::atomic<bool> stop{false};
  std::thread prober([&] {
    for (Lsn lsn = 1000; !stop.load(); lsn += 10) Round(lsn, lsn, lsn - 5);
  });
  std::vector<std::thread> callers;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) {
        if (!topology_.Pick(i % 3 != 0).ok()) failures.fetch_add(1);
      }
    });
  }
  for (std::thread& t : callers) t.join();
  stop = true;
  prober.join();
  EXPECT_EQ(failures.load(), 0);
  for (const MemberStatus& s : topology_.Snapshot()) EXPECT_EQ(s.outstanding, 0) << s.id;
}

TEST_F(TopologyTest, ExcludedMembersArePassedOver) {
  Round(1000, 1000, 1000);
  const std::vector<std::string> r1 = {"r1"};
  for (int i = 0; i < 4; ++i) EXPECT_EQ(topology_.Pick(true, 0, r1)->id(), "r2");
  // Both replicas excluded: the primary, as for no healthy replica.
  const std::vector<std::string> both = {"r1", "r2"};
  EXPECT_EQ(topology_.Pick(true, 0, both)->id(), "p");
  // The token still rules the remaining replica: r2 behind it, so the primary.
  topology_.Record("r2", Replica(900));
  EXPECT_EQ(topology_.Pick(true, 950, r1)->id(), "p");
  // An excluded primary is never the fallback.
  const std::vector<std::string> all = {"p", "r1", "r2"};
  absl::StatusOr<Topology::Route> none = topology_.Pick(true, 0, all);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(none.status().message(), "already failed on p, the primary now"))
      << none.status();
  EXPECT_EQ(topology_.Pick(false, 0, {"p"}).status().code(), absl::StatusCode::kUnavailable);
  // A read failed on replica r1, which was promoted since (p is gone): the
  // answer names it as the member the read failed on, not as a primary
  // already tried.
  {
    topology_.Record("p", absl::UnavailableError("refused"));
    topology_.Record("r1", Primary(1010));
    ASSERT_EQ(topology_.primary(), "r1");
    const std::vector<std::string> failed = {"r1", "r2"};
    absl::StatusOr<Topology::Route> promoted = topology_.Pick(true, 0, failed);
    EXPECT_EQ(promoted.status().code(), absl::StatusCode::kUnavailable);
    EXPECT_TRUE(
        absl::StrContains(promoted.status().message(), "already failed on r1, the primary now"))
        << promoted.status();
    EXPECT_FALSE(absl::StrContains(promoted.status().message(), "primary r1 was already tried"))
        << promoted.status();
    Round(1020, 1020, 1020);
    ASSERT_EQ(topology_.primary(), "p");
  }
  // An unknown id excludes nothing: held reads spread over both replicas.
  {
    const std::vector<std::string> unknown = {"nobody"};
    std::vector<Topology::Route> held;
    std::map<std::string, int> count;
    for (int i = 0; i < 4; ++i) {
      absl::StatusOr<Topology::Route> r = topology_.Pick(true, 0, unknown);
      ASSERT_TRUE(r.ok()) << r.status();
      ++count[r->id()];
      held.push_back(*std::move(r));
    }
    EXPECT_EQ(count, (std::map<std::string, int>{{"r1", 2}, {"r2", 2}}));
  }
  for (const MemberStatus& s : topology_.Snapshot()) EXPECT_EQ(s.outstanding, 0) << s.id;
}

TEST_F(TopologyTest, SuspectReplicaGetsNoReadsUntilItsNextGoodProbe) {
  Round(1000, 1000, 1000);
  int listened = 0;
  topology_.SetRecordListener([&] { ++listened; });
  EXPECT_TRUE(topology_.MarkSuspect("r1", absl::UnavailableError("server closed the connection")));
  EXPECT_EQ(listened, 1);
  EXPECT_FALSE(Status("r1").healthy);
  EXPECT_TRUE(absl::StrContains(Status("r1").last_error.message(), "server closed"));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(topology_.Pick(true)->id(), "r2");
  // Unknown ids and writable members that are not the primary are the
  // probes'.
  EXPECT_FALSE(topology_.MarkSuspect("nobody", absl::UnavailableError("x")));
  EXPECT_EQ(listened, 1);
  EXPECT_EQ(topology_.primary(), "p");
  EXPECT_TRUE(Status("p").healthy);
  const uint64_t generation = topology_.primary_generation();
  // Split brain: r2 writable too, so no primary; marking either must not
  // name the other.
  topology_.Record("r2", Primary(1000));
  EXPECT_EQ(topology_.primary(), "");
  EXPECT_FALSE(topology_.MarkSuspect("r2", absl::UnavailableError("x")));
  EXPECT_FALSE(topology_.MarkSuspect("p", absl::UnavailableError("x")));
  EXPECT_EQ(topology_.primary(), "");
  EXPECT_NE(topology_.primary_generation(), generation);
  // The next good probe lets r1 back.
  Round(1010, 1010, 1010);
  EXPECT_TRUE(Status("r1").healthy);
  EXPECT_EQ(SpreadOf(4), (std::map<std::string, int>{{"r1", 2}, {"r2", 2}}));
  topology_.SetRecordListener(nullptr);
}

TEST_F(TopologyTest, SuspectPrimaryHoldsWritesUntilItsNextProbeNamesItOrLosesIt) {
  Round(1000, 1000, 1000);
  int listened = 0;
  topology_.SetRecordListener([&] { ++listened; });
  const uint64_t before = topology_.primary_generation();
  EXPECT_TRUE(topology_.MarkSuspect("p", absl::UnavailableError("server closed the connection")));
  EXPECT_EQ(listened, 1);
  // No primary now: writes fail UNAVAILABLE saying why (callers hold them),
  // under a new generation; reads still go to the replicas.
  EXPECT_EQ(topology_.primary(), "");
  EXPECT_NE(topology_.primary_generation(), before);
  EXPECT_NE(topology_.primary_lost_at(), absl::InfiniteFuture());
  absl::StatusOr<Topology::Route> write = topology_.Pick(false);
  EXPECT_EQ(write.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(write.status().message(), "lost its connection to p"))
      << write.status();
  EXPECT_TRUE(absl::StrContains(write.status().message(), "server closed")) << write.status();
  EXPECT_EQ(topology_.PrimaryDsn().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(Status("p").healthy);
  EXPECT_TRUE(topology_.Pick(true).ok());
  // A replica promoted meanwhile is not named primary on the mark's account.
  topology_.Record("r2", Primary(1000));
  EXPECT_EQ(topology_.primary(), "");
  topology_.Record("r2", Replica(1000));
  // The primary's next probe names it again, under another generation (so
  // held writes are released).
  const uint64_t lost = topology_.primary_generation();
  topology_.Record("p", Primary(1010));
  EXPECT_EQ(topology_.primary(), "p");
  EXPECT_NE(topology_.primary_generation(), lost);
  EXPECT_TRUE(Status("p").healthy);
  EXPECT_TRUE(Status("p").last_error.ok());
  EXPECT_EQ(topology_.Pick(false)->id(), "p");
  // Marked again and its next probe fails: lost as by the probes alone, and
  // a promoted replica becomes the primary.
  EXPECT_TRUE(topology_.MarkSuspect("p", absl::UnavailableError("reset")));
  topology_.Record("p", absl::UnavailableError("connection refused"));
  EXPECT_EQ(topology_.primary(), "");
  topology_.Record("r1", Primary(1020));
  EXPECT_EQ(topology_.primary(), "r1");
  topology_.SetRecordListener(nullptr);
}

TEST_F(TopologyTest, ProbeStartedBeforeAMarkDoesNotClearIt) {
  Round(1000, 1000, 1000);
  for (const std::string id : {"p", "r1"}) {
    // A probe starts, a call marks the member, the probe answers OK.
    const uint64_t marks = topology_.suspect_marks();
    EXPECT_TRUE(topology_.MarkSuspect(id, absl::UnavailableError("server closed the connection")));
    EXPECT_GT(topology_.suspect_marks(), marks);
    topology_.Record(id, id == "p" ? Primary(1010) : Replica(1010), marks);
    EXPECT_FALSE(Status(id).healthy) << id;
    EXPECT_TRUE(absl::StrContains(Status(id).last_error.message(), "server closed")) << id;
    EXPECT_EQ(topology_.primary(), id == "p" ? "" : "p") << id;
    // The next probe, started after the mark, clears it.
    topology_.Record(id, id == "p" ? Primary(1020) : Replica(1020), topology_.suspect_marks());
    EXPECT_TRUE(Status(id).healthy) << id;
    EXPECT_EQ(topology_.primary(), "p") << id;
  }
  // A mark while a probe is out, then another member's mark: the probe
  // still counts for the first member only if it started after its mark.
  const uint64_t marks = topology_.suspect_marks();
  EXPECT_TRUE(topology_.MarkSuspect("r1", absl::UnavailableError("x")));
  const uint64_t after_r1 = topology_.suspect_marks();
  EXPECT_TRUE(topology_.MarkSuspect("r2", absl::UnavailableError("y")));
  topology_.Record("r1", Replica(1030), after_r1);
  EXPECT_TRUE(Status("r1").healthy);
  topology_.Record("r2", Replica(1030), marks);
  EXPECT_FALSE(Status("r2").healthy);
}

}  // namespace
}  // namespace poolside::db
