#include "common/db/managed_database.h"

#include <atomic>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/config/database_config.h"
#include "common/db/catalog.h"
#include "common/db/database_set.h"
#include "gtest/gtest.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/refusing_port.h"
#include "tests/fixtures/wait_for.h"

namespace poolside::db {
namespace {

constexpr absl::Duration kWait = absl::Seconds(20);

class ManagedDatabaseTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pg_ = &testing::SharedPostgres();
    ASSERT_TRUE(pg_->CreateDatabase("app",
                                    "CREATE ROLE writer LOGIN;"
                                    "CREATE ROLE reader LOGIN;")
                    .ok());
  }
  // A finalized configuration of "app" as the unprivileged `writer`, with
  // role "reader"; with `topology`, two members (both this server, under two
  // spellings of its DSN) for the probes that tests record by hand.
  // Two spellings of this server's "app" as `writer`: members "a" and "b".
  static std::string DsnA() {
    return absl::StrCat("host=127.0.0.1 port=", pg_->port(), " dbname=app user=writer");
  }
  static std::string DsnB() {
    return absl::StrCat("host=localhost port=", pg_->port(), " dbname=app user=writer");
  }

  // `tweak` changes it before it is finalized.
  static v1::DatabaseConfig Config(bool topology = false, const std::string& dsn = "",
                                   const std::function<void(v1::DatabaseConfig&)>& tweak = {}) {
    v1::DatabaseConfig c;
    c.set_name("app");
    c.set_dsn(dsn.empty() ? DsnA() : dsn);
    v1::PoolConfig* p = c.mutable_pool();
    p->set_min_idle(2);
    p->set_max_size(4);
    p->set_acquire_timeout_ms(5000);
    p->set_connect_timeout_ms(5000);
    p->set_validate_after_idle_ms(1000);
    p->set_max_lifetime_ms(600000);
    p->set_idle_timeout_ms(600000);
    p->set_leak_threshold_ms(600000);
    p->set_startup_retry_ms(2000);
    c.add_roles()->set_name("reader");
    if (topology) {
      c.mutable_topology()->add_replicas(absl::StrCat("host=localhost port=", pg_->port()));
      c.mutable_topology()->set_failover_buffer_ms(60000);
    }
    if (tweak) tweak(c);
    absl::flat_hash_set<std::string> names;
    absl::Status s = config::FinalizeDatabase("databases[0]", &c, &names);
    EXPECT_TRUE(s.ok()) << s;
    return c;
  }

  // Members "a" and "b" of `db`'s topology, both reaching this server.
  static void SetMembers(ManagedDatabase& db) {
    ASSERT_TRUE(db.topology()->SetMembers({{"a", DsnA()}, {"b", DsnB()}}).ok());
  }
  // Probes that find `primary` writable and the other member in recovery
  // ("" for neither writable).
  static void RecordPrimary(ManagedDatabase& db, const std::string& primary, Lsn lsn = 100) {
    for (const std::string id : {"a", "b"}) {
      db.topology()->Record(id, MemberSample{.in_recovery = id != primary, .lsn = lsn});
    }
  }

  // Members a and b, a found primary, then neither: returns the primary
  // generation of a's term.
  static uint64_t PrimaryLost(ManagedDatabase& db) {
    SetMembers(db);
    RecordPrimary(db, "a");
    const uint64_t seen = db.primary_generation();
    RecordPrimary(db, "");
    return seen;
  }

  static std::string CurrentUser(ConnectionPool& pool) {
    auto lease = pool.Acquire(absl::Now() + kWait);
    if (!lease.ok()) return std::string(lease.status().message());
    absl::StatusOr<SessionRole> role = ReadSessionRole(**lease, absl::Now() + kWait);
    return role.ok() ? role->user : std::string(role.status().message());
  }

  static testing::PostgresCluster* pg_;
};

testing::PostgresCluster* ManagedDatabaseTest::pg_ = nullptr;

TEST_F(ManagedDatabaseTest, PoolsPerRoleMadeOnceUnderConcurrentFirstUse) {
  ManagedDatabase db(Config(), {.application = "test"});
  constexpr int kThreads = 16;
  std::vector<std::shared_ptr<ConnectionPool>> got(kThreads * 2);
  std::vector<std::thread> threads;
  absl::Notification go;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      go.WaitForNotification();
      auto own = db.Pool("");
      auto reader = db.Pool("reader");
      if (own.ok()) got[2 * i] = *own;
      if (reader.ok()) got[2 * i + 1] = *reader;
    });
  }
  go.Notify();
  for (auto& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i) {
    ASSERT_NE(got[2 * i], nullptr);
    EXPECT_EQ(got[2 * i], got[0]);
    EXPECT_EQ(got[2 * i + 1], got[1]);
  }
  EXPECT_NE(got[0], got[1]);
  std::vector<ManagedDatabase::NamedPool> pools = db.Pools();
  ASSERT_EQ(pools.size(), 2u);
  EXPECT_EQ(pools[0].name, "app");
  EXPECT_EQ(pools[1].name, "app/reader");
  EXPECT_EQ(CurrentUser(*got[0]), "writer");
  EXPECT_EQ(CurrentUser(*got[1]), "reader");
  EXPECT_EQ(db.LoginUser("reader"), "reader");
  EXPECT_EQ(db.RoleLoginUsers(), std::vector<std::string>{"reader"});
}

TEST_F(ManagedDatabaseTest, UnknownRoleRefusedAndNothingMade) {
  ManagedDatabase db(Config(), {});
  EXPECT_FALSE(db.HasRole("admin"));
  auto pool = db.Pool("admin");
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(db.PrimaryPool("admin").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(db.PrimaryDsn("admin").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(db.Pools().empty());
}

TEST_F(ManagedDatabaseTest, PrivilegedLoginRefusedByEveryPool) {
  ManagedDatabase db(Config(false, pg_->Dsn("app")), {});  // the superuser
  auto pool = db.Pool("");
  ASSERT_TRUE(pool.ok());
  auto lease = (*pool)->Acquire(absl::Now() + kWait);
  EXPECT_EQ(lease.status().code(), absl::StatusCode::kFailedPrecondition) << lease.status();
  EXPECT_EQ((*pool)->Stats().size, 0u);
}

TEST_F(ManagedDatabaseTest, WarmUpFillsThePrimaryPoolToMinIdle) {
  ManagedDatabase db(Config(), {});
  ASSERT_TRUE(db.WarmUp().ok());
  auto pool = db.Pool("");
  ASSERT_TRUE(pool.ok());
  EXPECT_EQ((*pool)->Stats().idle, 2u);
  EXPECT_EQ(db.Pools().size(), 1u);  // no role's pool made by warm-up
}

TEST_F(ManagedDatabaseTest, StopClosesPoolsAndRefusesNewOnes) {
  ManagedDatabase db(Config(), {});
  auto pool = db.Pool("");
  ASSERT_TRUE(pool.ok());
  auto lease = (*pool)->Acquire(absl::Now() + kWait);
  ASSERT_TRUE(lease.ok());
  db.Stop();
  EXPECT_EQ(db.Pool("").status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(db.PrimaryPool("reader").status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*pool)->Acquire(absl::Now() + kWait).status().code(), absl::StatusCode::kCancelled);
  // The lease out still works and goes back.
  EXPECT_TRUE((*lease)->Ping(absl::Now() + kWait));
  lease->Release();
  db.Stop();  // idempotent
}

TEST_F(ManagedDatabaseTest, WriterOnlyPoolFollowsThePrimaryAndClosesTheFormerOne) {
  ManagedDatabase db(Config(true), {.writer_only = true});
  SetMembers(db);
  EXPECT_EQ(db.PrimaryPool("").status().code(), absl::StatusCode::kUnavailable);
  RecordPrimary(db, "a");
  auto first = db.PrimaryPool("reader");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->member, "a");
  auto lease = first->pool->Acquire(absl::Now() + kWait);
  ASSERT_TRUE(lease.ok());
  RecordPrimary(db, "b");
  auto second = db.PrimaryPool("reader");
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->member, "b");
  EXPECT_GT(second->generation, first->generation);
  EXPECT_EQ(CurrentUser(*second->pool), "reader");
  // The former primary's: no new leases, the one out still works.
  EXPECT_EQ(first->pool->Acquire(absl::Now() + kWait).status().code(),
            absl::StatusCode::kCancelled);
  EXPECT_TRUE((*lease)->Ping(absl::Now() + kWait));
  std::vector<ManagedDatabase::NamedPool> pools = db.Pools();
  ASSERT_EQ(pools.size(), 1u);
  EXPECT_EQ(pools[0].name, "app/reader@b");
}

TEST_F(ManagedDatabaseTest, MemberPoolsAreKeptAndReplacedWhenTheirDsnChanges) {
  ManagedDatabase db(Config(true), {});
  SetMembers(db);
  RecordPrimary(db, "a");
  auto a = db.MemberPool("", "a", DsnA());
  auto b = db.MemberPool("", "b", DsnB());
  ASSERT_TRUE(a.ok() && b.ok());
  auto primary = db.PrimaryPool("");
  ASSERT_TRUE(primary.ok());
  EXPECT_EQ(primary->pool, *a);  // not writer_only: the replica's stays
  EXPECT_EQ(db.Pools().size(), 2u);
  auto moved = db.MemberPool("", "b", DsnB() + " application_name=x");
  ASSERT_TRUE(moved.ok());
  EXPECT_NE(*moved, *b);
  // Whoever holds the old one may finish with it.
  EXPECT_EQ(CurrentUser(**b), "writer");
  EXPECT_EQ(db.Pools().size(), 2u);
  // The database's own pool follows the primary.
  auto own = db.Pool("reader");
  ASSERT_TRUE(own.ok());
  EXPECT_EQ(CurrentUser(**own), "reader");
}

// Pickers racing a primary that moves back and forth: every pool handed out
// is for the member that was primary under the generation it came with, and
// once the primary settles the role has one pool, on it.
TEST_F(ManagedDatabaseTest, PoolsMadeWhileThePrimaryMovesAreForThePrimaryOfTheirGeneration) {
  ManagedDatabase db(Config(true), {.writer_only = true});
  SetMembers(db);
  absl::flat_hash_map<uint64_t, std::string> primary_of;  // by generation
  RecordPrimary(db, "a");
  primary_of[db.primary_generation()] = "a";
  constexpr int kPickers = 8;
  std::atomic<bool> done{false};
  std::atomic<int> picking{0};  // pickers that have a pool
  std::vector<std::vector<ManagedDatabase::PoolRef>> refs(kPickers);
  std::vector<std::thread> pickers;
  for (int i = 0; i < kPickers; ++i) {
    pickers.emplace_back([&, i] {
      while (!done.load()) {
        absl::StatusOr<ManagedDatabase::PoolRef> ref = db.PrimaryPool("");
        if (!ref.ok()) continue;
        if (refs[i].empty()) ++picking;
        refs[i].push_back(*std::move(ref));
      }
    });
  }
  // Every picker under way before the primary starts moving (on a loaded
  // machine the moves could otherwise all be over before one pick).
  if (!testing::WaitFor([&] { return picking.load() == kPickers; }, kWait)) {
    done.store(true);
    for (auto& t : pickers) t.join();
    FAIL() << "only " << picking.load() << " of " << kPickers << " pickers got a pool";
  }
  for (int flip = 0; flip <= 100; ++flip) {  // ends on b
    const std::string primary = flip % 2 == 0 ? "b" : "a";
    RecordPrimary(db, primary);
    primary_of[db.primary_generation()] = primary;
  }
  done.store(true);
  for (auto& t : pickers) t.join();
  size_t handed_out = 0;
  for (const auto& mine : refs) {
    for (const ManagedDatabase::PoolRef& ref : mine) {
      ++handed_out;
      ASSERT_TRUE(primary_of.contains(ref.generation)) << ref.generation;
      EXPECT_EQ(ref.member, primary_of[ref.generation]) << ref.generation;
    }
  }
  EXPECT_GT(handed_out, 0u);
  refs.clear();  // the pools of former primaries go
  auto settled = db.PrimaryPool("");
  ASSERT_TRUE(settled.ok());
  EXPECT_EQ(settled->member, "b");
  std::vector<ManagedDatabase::NamedPool> pools = db.Pools();
  ASSERT_EQ(pools.size(), 1u);
  EXPECT_EQ(pools[0].name, "app@b");
  EXPECT_EQ(pools[0].pool, settled->pool);
  EXPECT_EQ(CurrentUser(*settled->pool), "writer");
}

TEST_F(ManagedDatabaseTest, HoldEndsWhenANewPrimaryIsNamed) {
  ManagedDatabase db(Config(true), {});
  const uint64_t seen = PrimaryLost(db);
  absl::Notification released;
  std::atomic<bool> outcome{false};
  ASSERT_TRUE(db.HoldForPrimary(seen, 10, absl::InfiniteFuture(), [&](bool known) {
                  outcome.store(known);
                  released.Notify();
                }).ok());
  EXPECT_EQ(db.hold_stats().now, 1u);
  RecordPrimary(db, "b");
  ASSERT_TRUE(released.WaitForNotificationWithTimeout(kWait));
  EXPECT_TRUE(outcome.load());
  ManagedDatabase::HoldStats s = db.hold_stats();
  EXPECT_EQ(s.total, 1u);
  EXPECT_EQ(s.timeouts, 0u);
  EXPECT_EQ(s.now, 0u);
}

TEST_F(ManagedDatabaseTest, EachHoldsTimeIsRecordedUntilReleasedOrStopped) {
  ManagedDatabase db(Config(true), {});
  const uint64_t seen = PrimaryLost(db);
  EXPECT_EQ(db.hold_stats().durations.count, 0u);
  const absl::Time start = absl::Now();
  constexpr int kReleased = 3;
  absl::Mutex mu;
  int known = 0, unknown = 0;
  auto then = [&](bool k) {
    absl::MutexLock lock(&mu);
    ++(k ? known : unknown);
  };
  for (int i = 0; i < kReleased; ++i) {
    ASSERT_TRUE(db.HoldForPrimary(seen, 10, absl::InfiniteFuture(), then).ok());
  }
  // Nothing is recorded while the calls are held.
  ManagedDatabase::HoldStats s = db.hold_stats();
  EXPECT_EQ(s.now, size_t{kReleased});
  EXPECT_EQ(s.durations.count, 0u);
  EXPECT_EQ(s.durations.sum, 0);
  RecordPrimary(db, "b");  // a new generation: the three are released
  {
    absl::MutexLock lock(&mu);
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(
                                        +[](int* n) { return *n >= kReleased; }, &known),
                                    kWait));
  }
  // A call that saw the new primary's generation is held until Stop().
  ASSERT_TRUE(db.HoldForPrimary(db.primary_generation(), 10, absl::InfiniteFuture(), then).ok());
  db.Stop();
  const absl::Duration elapsed = absl::Now() - start;
  // Refused once stopped: not held, not recorded.
  EXPECT_EQ(db.HoldForPrimary(0, 1, absl::InfiniteFuture(), then).code(),
            absl::StatusCode::kUnavailable);

  s = db.hold_stats();
  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(known, kReleased);
    EXPECT_EQ(unknown, 1);
  }
  EXPECT_EQ(s.total, uint64_t{kReleased + 1});
  EXPECT_EQ(s.timeouts, 1u);
  EXPECT_EQ(s.now, 0u);
  EXPECT_EQ(s.durations.count, uint64_t{kReleased + 1});
  ASSERT_EQ(s.durations.cumulative_counts.size(), s.durations.bounds.size() + 1);
  EXPECT_EQ(s.durations.cumulative_counts.back(), s.durations.count);
  EXPECT_GT(s.durations.sum, 0);
  EXPECT_GT(s.durations.max, 0);
  EXPECT_LE(s.durations.max, absl::ToDoubleSeconds(elapsed));
  EXPECT_LE(s.durations.sum, (kReleased + 1) * absl::ToDoubleSeconds(elapsed));
  EXPECT_LE(s.durations.Percentile(0.99), s.durations.max);
}

TEST_F(ManagedDatabaseTest, HoldsAreBoundedInCountAndBytes) {
  v1::DatabaseConfig c = Config(true);
  c.mutable_topology()->set_failover_buffer_calls(2);
  c.mutable_topology()->set_failover_buffer_bytes(1000);
  ManagedDatabase db(c, {});
  SetMembers(db);
  std::atomic<int> ended{0};
  auto then = [&](bool known) {
    EXPECT_FALSE(known);
    ended.fetch_add(1);
  };
  EXPECT_EQ(db.HoldForPrimary(0, 1001, absl::InfiniteFuture(), then).code(),
            absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(db.HoldForPrimary(0, 600, absl::InfiniteFuture(), then).ok());
  EXPECT_EQ(db.HoldForPrimary(0, 600, absl::InfiniteFuture(), then).code(),
            absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(db.HoldForPrimary(0, 10, absl::InfiniteFuture(), then).ok());
  absl::Status third = db.HoldForPrimary(0, 1, absl::InfiniteFuture(), then);
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(third.message().find("failoverBufferCalls (2)"), std::string::npos) << third;
  EXPECT_EQ(db.hold_stats().now, 2u);
  db.EndHolds();
  EXPECT_EQ(db.HoldForPrimary(0, 1, absl::InfiniteFuture(), then).code(),
            absl::StatusCode::kUnavailable);
  db.Stop();
  EXPECT_EQ(ended.load(), 2);
  EXPECT_EQ(db.hold_stats().now, 0u);
  EXPECT_EQ(db.hold_stats().timeouts, 2u);
}

TEST_F(ManagedDatabaseTest, HoldEndsUnsuccessfullyWhenItsWindowCloses) {
  v1::DatabaseConfig c = Config(true);
  c.mutable_topology()->set_failover_buffer_ms(50);
  ManagedDatabase db(c, {});
  SetMembers(db);
  ManagedDatabase::FailoverHold hold;
  EXPECT_FALSE(db.WaitForPrimary(db.primary_generation(), &hold));
  EXPECT_NE(hold.until, absl::InfinitePast());
  // The window stays closed for the same caller.
  EXPECT_FALSE(db.WaitForPrimary(db.primary_generation(), &hold));
  ManagedDatabase::HoldStats s = db.hold_stats();
  EXPECT_EQ(s.total, 1u);  // one caller
  EXPECT_EQ(s.timeouts, 2u);
  EXPECT_EQ(s.now, 0u);
  EXPECT_EQ(s.durations.count, 2u);  // held twice
}

TEST_F(ManagedDatabaseTest, WaitingCallersEndOnANewPrimaryOrOnStop) {
  ManagedDatabase db(Config(true), {});
  SetMembers(db);
  const uint64_t seen = db.primary_generation();
  constexpr int kCallers = 4;
  std::atomic<int> known{0}, unknown{0};
  // Callers that saw generation `seen` (the next probe moves past it) and
  // callers that saw the one after it (nothing moves past that).
  std::vector<std::thread> now_known, never_known;
  for (int i = 0; i < kCallers; ++i) {
    for (auto* group : {&now_known, &never_known}) {
      const uint64_t generation = group == &now_known ? seen : seen + 1;
      group->emplace_back([&, generation] {
        ManagedDatabase::FailoverHold hold;
        (db.WaitForPrimary(generation, &hold) ? known : unknown).fetch_add(1);
      });
    }
  }
  RecordPrimary(db, "a");
  ASSERT_EQ(db.primary_generation(), seen + 1);
  for (auto& t : now_known) t.join();
  EXPECT_EQ(known.load(), kCallers);
  db.Stop();
  for (auto& t : never_known) t.join();
  EXPECT_EQ(known.load(), kCallers);
  EXPECT_EQ(unknown.load(), kCallers);
  EXPECT_EQ(db.hold_stats().now, 0u);
  ManagedDatabase::FailoverHold late;
  EXPECT_FALSE(db.WaitForPrimary(seen, &late));
}

TEST_F(ManagedDatabaseTest, SuspectPrimaryHoldsCallersUntilItsNextProbeNamesItAgain) {
  ManagedDatabase db(Config(true), {});
  SetMembers(db);
  RecordPrimary(db, "a");
  const uint64_t seen = db.primary_generation();
  ASSERT_TRUE(db.PrimaryPool("").ok());
  // A probe of a starts; a call loses its connection to a.
  const uint64_t marks = db.topology()->suspect_marks();
  EXPECT_TRUE(db.MarkSuspect("a", absl::UnavailableError("server closed the connection")));
  // New primary-bound calls find none and are held (as query's routing and
  // ingest's flushes do), as is the call that lost its connection (it saw
  // `seen`).
  absl::StatusOr<ManagedDatabase::PoolRef> none = db.PrimaryPool("");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable) << none.status();
  const uint64_t lost = db.primary_generation();
  EXPECT_NE(lost, seen);
  std::atomic<int> released{0}, known{0};
  for (uint64_t generation : {seen, lost}) {
    ASSERT_TRUE(db.HoldForPrimary(generation, 10, absl::InfiniteFuture(), [&](bool k) {
                    known.fetch_add(k ? 1 : 0);
                    released.fetch_add(1);
                  }).ok());
  }
  std::thread waiter([&] {
    ManagedDatabase::FailoverHold hold;
    const bool k = db.WaitForPrimary(lost, &hold);
    known.fetch_add(k ? 1 : 0);
    released.fetch_add(1);
  });
  ASSERT_TRUE(testing::WaitFor([&] { return db.hold_stats().now == 3; }, kWait));
  // The probe that was out answers: it does not speak for a since the mark.
  db.topology()->Record("a", MemberSample{.in_recovery = false, .lsn = 110}, marks);
  EXPECT_EQ(db.topology()->primary(), "");
  EXPECT_EQ(db.hold_stats().now, 3u);
  EXPECT_EQ(released.load(), 0);
  // a's next probe names it again: every hold ends with a primary known, and
  // the calls go to a.
  db.topology()->Record("a", MemberSample{.in_recovery = false, .lsn = 120});
  waiter.join();
  ASSERT_TRUE(testing::WaitFor([&] { return released.load() == 3; }, kWait));
  EXPECT_EQ(known.load(), 3);
  absl::StatusOr<ManagedDatabase::PoolRef> again = db.PrimaryPool("");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->member, "a");
  EXPECT_EQ(db.hold_stats().timeouts, 0u);
  // Not without a topology.
  ManagedDatabase plain(Config(), {});
  EXPECT_FALSE(plain.MarkSuspect("a", absl::UnavailableError("x")));
}

TEST_F(ManagedDatabaseTest, SuspectPrimaryIsProbedAtOnceNotAtItsNextInterval) {
  // One member this server, one that refuses connections (never writable):
  // this server is the primary. Probes a minute apart: only the probe the
  // mark asks for can name it again within the failover window.
  testing::RefusingPort refusing;
  ASSERT_NE(refusing.port(), 0);
  ManagedDatabase db(
      Config(true, "",
             [&](v1::DatabaseConfig& c) {
               v1::TopologyConfig* t = c.mutable_topology();
               t->clear_replicas();
               t->add_replicas(absl::StrCat("host=127.0.0.1 port=", refusing.port()));
               t->set_probe_interval_ms(60000);
               t->set_max_lag_ms(120000);
               t->set_failover_buffer_ms(15000);
             }),
      {});
  ASSERT_TRUE(db.StartMonitor().ok());
  ASSERT_TRUE(testing::WaitFor([&] { return !db.topology()->primary().empty(); }, kWait));
  const std::string primary = db.topology()->primary();
  const uint64_t seen = db.primary_generation();
  EXPECT_TRUE(db.MarkSuspect(primary, absl::UnavailableError("server closed the connection")));
  ManagedDatabase::FailoverHold hold;
  EXPECT_TRUE(db.WaitForPrimary(seen, &hold));
  EXPECT_EQ(db.topology()->primary(), primary);
  EXPECT_EQ(db.hold_stats().timeouts, 0u);
  db.Stop();
}

TEST_F(ManagedDatabaseTest, WithoutATopologyNothingIsHeld) {
  ManagedDatabase db(Config(), {});
  EXPECT_EQ(db.topology(), nullptr);
  ManagedDatabase::FailoverHold hold;
  EXPECT_FALSE(db.WaitForPrimary(0, &hold));
  EXPECT_EQ(db.HoldForPrimary(0, 1, absl::InfiniteFuture(), [](bool) {}).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(db.hold_stats().total, 0u);
  auto dsn = db.PrimaryDsn("reader");
  ASSERT_TRUE(dsn.ok());
  EXPECT_NE(dsn->find("reader"), std::string::npos);
}

TEST_F(ManagedDatabaseTest, SetWarmsEveryDatabaseThenReports) {
  testing::RefusingPort down;
  google::protobuf::RepeatedPtrField<v1::DatabaseConfig> configs;
  *configs.Add() = Config();
  v1::DatabaseConfig gone =
      Config(false, absl::StrCat("host=127.0.0.1 port=", down.port(), " dbname=app user=writer"));
  gone.set_name("gone");
  gone.mutable_pool()->set_startup_retry_ms(200);
  *configs.Add() = gone;
  DatabaseSet set(configs, {.maintenance_every = absl::Milliseconds(50)});
  ASSERT_NE(set.Find("app"), nullptr);
  ASSERT_NE(set.Find("gone"), nullptr);
  EXPECT_EQ(set.Find("other"), nullptr);
  absl::Notification warm;
  set.WhenWarm([&] { warm.Notify(); });
  set.Start();
  ASSERT_TRUE(warm.WaitForNotificationWithTimeout(kWait));
  auto pool = set.Find("app")->Pool("");
  ASSERT_TRUE(pool.ok());
  // Exactly min_idle, also when a maintenance pass tops up at the same moment
  // (the warm-up waits for its creations instead of adding more).
  EXPECT_EQ((*pool)->Stats().idle, 2u);
  auto gone_pool = set.Find("gone")->Pool("");
  ASSERT_TRUE(gone_pool.ok());
  // Nothing connected. Not Stats().size: it counts creations in flight, and
  // the maintenance pass (every 50 ms here) may be retrying one right now.
  const pool::PoolStats gone_stats = (*gone_pool)->Stats();
  EXPECT_EQ(gone_stats.idle + gone_stats.in_use, 0u);
  EXPECT_GT(gone_stats.create_failures, 0u);
  // Already warm: at once.
  bool now = false;
  set.WhenWarm([&] { now = true; });
  EXPECT_TRUE(now);
  set.Stop();
  EXPECT_EQ(set.Find("app")->Pool("").status().code(), absl::StatusCode::kUnavailable);
  bool after_stop = false;
  set.WhenWarm([&] { after_stop = true; });
  EXPECT_FALSE(after_stop);
}

TEST_F(ManagedDatabaseTest, StopEndsAWarmUpRetryingAgainstADatabaseThatIsDown) {
  testing::RefusingPort down;
  google::protobuf::RepeatedPtrField<v1::DatabaseConfig> configs;
  v1::DatabaseConfig gone =
      Config(false, absl::StrCat("host=127.0.0.1 port=", down.port(), " dbname=app user=writer"));
  gone.mutable_pool()->set_startup_retry_ms(600000);
  *configs.Add() = gone;
  DatabaseSet set(configs, {});
  std::atomic<bool> warm{false};
  set.WhenWarm([&] { warm.store(true); });
  set.Start();
  // Returns although the warm-up would retry for ten minutes.
  set.Stop();
  EXPECT_FALSE(warm.load());
  EXPECT_EQ(set.Find("app")->PrimaryPool("").status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace poolside::db
