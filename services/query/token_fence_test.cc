// TokenFence against a real PostgreSQL: a fence is a transactional message
// decoded after the token it was asked for, requests coalesce, a token past
// the server's WAL costs one fence and no more, and failures (no server, no
// privilege) are counted without ever blocking a caller.

#include "services/query/token_fence.h"

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/db/logical_stream.h"
#include "common/db/pgoutput_decoder.h"
#include "gtest/gtest.h"
#include "services/query/wal_relay.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/wal_position.h"

namespace poolside::query {
namespace {

using ::poolside::testing::InsertLsn;
using ::poolside::testing::PostgresCluster;
using ::poolside::testing::WaitFor;

constexpr char kDb[] = "fence";
constexpr absl::Duration kWait = absl::Seconds(30);  // only reached when something is broken

PostgresCluster& Cluster() { return testing::SharedPostgres(); }

TokenFence::Options FenceOptions(const std::string& dsn) {
  TokenFence::Options o;
  o.database = kDb;
  o.dsn = dsn;
  o.prefix = WalRelay::FencePrefix("fence_pub", "fence_channel");
  o.connect_timeout = absl::Seconds(2);
  return o;
}

class TokenFenceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(Cluster().CreateDatabase(kDb).ok());
    ASSERT_TRUE(Cluster()
                    .Exec(kDb,
                          "CREATE TABLE IF NOT EXISTS published (id int PRIMARY KEY);"
                          "CREATE TABLE IF NOT EXISTS unpublished (v int)")
                    .ok());
  }
};

// A write the stream never sees (an unpublished table), its token, and a
// fence asked for it: the fence's message arrives inside a transaction whose
// commit ends past the token, on a server whose commits are not flushed by
// default (synchronous_commit = off in the shared fixture).
TEST_F(TokenFenceTest, AFenceCommitsPastTheTokenAsATransactionalMessage) {
  db::LogicalStreamOptions so;
  so.dsn = Cluster().Dsn(kDb);
  so.publication = "fence_pub";
  so.tables = {"published"};
  so.messages = true;
  absl::StatusOr<std::unique_ptr<db::LogicalStream>> stream = db::LogicalStream::Open(so);
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_TRUE((*stream)->messages());
  ASSERT_EQ(Cluster().QueryValue(kDb, "SHOW synchronous_commit").value_or(""), "off");

  TokenFence fence(FenceOptions(Cluster().Dsn(kDb)));
  fence.Start();
  ASSERT_TRUE(Cluster().Exec(kDb, "INSERT INTO unpublished VALUES (1)").ok());
  const db::Lsn token = InsertLsn(Cluster(), kDb);
  fence.Request(token);

  bool in_fence = false;
  std::optional<db::CommitEvent> commit;
  const absl::Time give_up = absl::Now() + kWait;
  while (!commit.has_value() && absl::Now() < give_up) {
    absl::StatusOr<std::optional<db::LogicalEvent>> e = (*stream)->Next(give_up);
    ASSERT_TRUE(e.ok()) << e.status();
    if (!e->has_value()) continue;
    if (const auto* m = std::get_if<db::MessageEvent>(&**e)) {
      EXPECT_TRUE(m->transactional);
      EXPECT_EQ(m->prefix, FenceOptions("").prefix);
      EXPECT_EQ(m->content, "");
      EXPECT_GE(m->lsn, token);
      in_fence = true;
    } else if (const auto* c = std::get_if<db::CommitEvent>(&**e)) {
      if (in_fence) commit = *c;
    } else {
      EXPECT_TRUE(std::holds_alternative<db::BeginEvent>(**e)) << "only the fence's transaction";
    }
  }
  ASSERT_TRUE(commit.has_value()) << "no fence decoded";
  EXPECT_GT(commit->end_lsn, token);
  EXPECT_GE((*stream)->delivered_lsn(), token);
  ASSERT_TRUE(WaitFor([&] { return fence.GetStats().fences == 1; }, kWait));
  const TokenFence::Stats stats = fence.GetStats();
  EXPECT_GE(stats.fenced_lsn, token);
  EXPECT_LT(stats.fenced_lsn, commit->end_lsn);
  EXPECT_EQ(stats.failures, 0u);
}

// Many readers waiting for positions one fence covers: one fence. Requests at
// or below a committed fence need none; a later position gets its own.
TEST_F(TokenFenceTest, RequestsCoalesce) {
  TokenFence fence(FenceOptions(Cluster().Dsn(kDb)));
  fence.Start();
  const db::Lsn token = InsertLsn(Cluster(), kDb);
  std::vector<std::thread> readers;
  for (int i = 0; i < 8; ++i) {
    readers.emplace_back([&] {
      for (int j = 0; j < 50; ++j) fence.Request(token - static_cast<db::Lsn>(j));
    });
  }
  for (std::thread& t : readers) t.join();
  ASSERT_TRUE(WaitFor([&] { return fence.GetStats().fenced_lsn >= token; }, kWait));
  EXPECT_EQ(fence.GetStats().fences, 1u);

  for (int i = 0; i < 100; ++i) fence.Request(token);
  ASSERT_TRUE(Cluster().Exec(kDb, "INSERT INTO unpublished VALUES (2)").ok());
  const db::Lsn later = InsertLsn(Cluster(), kDb);
  ASSERT_GT(later, fence.GetStats().fenced_lsn);
  fence.Request(later);
  ASSERT_TRUE(WaitFor([&] { return fence.GetStats().fenced_lsn >= later; }, kWait));
  EXPECT_EQ(fence.GetStats().fences, 2u) << "requests a committed fence covers asked for more";
  EXPECT_EQ(fence.GetStats().failures, 0u);
}

// A token past the server's WAL (made up, or another server's) cannot be
// covered: it costs one fence, is not asked again, and does not keep later
// genuine tokens from getting theirs.
TEST_F(TokenFenceTest, ATokenPastTheServersWalCostsOneFence) {
  TokenFence fence(FenceOptions(Cluster().Dsn(kDb)));
  fence.Start();
  const db::Lsn beyond = InsertLsn(Cluster(), kDb) + (db::Lsn{1} << 40);
  fence.Request(beyond);
  ASSERT_TRUE(WaitFor([&] { return fence.GetStats().fences == 1; }, kWait));
  EXPECT_LT(fence.GetStats().fenced_lsn, beyond);
  ASSERT_TRUE(Cluster().Exec(kDb, "INSERT INTO unpublished VALUES (3)").ok());
  const db::Lsn genuine = InsertLsn(Cluster(), kDb);
  fence.Request(genuine);
  ASSERT_TRUE(WaitFor([&] { return fence.GetStats().fenced_lsn >= genuine; }, kWait));
  EXPECT_EQ(fence.GetStats().fences, 2u) << "the made-up token was asked for again";
}

// No server: each attempt fails and is counted, requests return at once, and
// the destructor does not wait out the backoff.
TEST_F(TokenFenceTest, AnUnreachableServerIsCountedAndNeverBlocks) {
  auto fence = std::make_unique<TokenFence>(
      FenceOptions("host=127.0.0.1 port=1 dbname=fence user=postgres"));
  fence->Start();
  const absl::Time before = absl::Now();
  for (int i = 0; i < 1000; ++i) fence->Request(static_cast<uint64_t>(i + 1));
  EXPECT_LT(absl::Now() - before, absl::Seconds(1)) << "Request blocked";
  ASSERT_TRUE(WaitFor([&] { return fence->GetStats().failures >= 1; }, kWait));
  const TokenFence::Stats stats = fence->GetStats();
  EXPECT_EQ(stats.fences, 0u);
  EXPECT_FALSE(stats.last_error.empty());
  fence.reset();  // returns: the fence thread stops during its backoff
}

// With current_dsn (a database with replicas: its topology's primary), each
// fence runs where it names now: while it names none the fence fails, and a
// new answer moves the fence's session there.
TEST_F(TokenFenceTest, FollowsTheCurrentDsn) {
  constexpr char kOther[] = "fence_other";
  ASSERT_TRUE(Cluster().CreateDatabase(kOther).ok());
  absl::Mutex mu;
  absl::StatusOr<std::string> primary = absl::UnavailableError("database fence has no primary now");
  TokenFence::Options o = FenceOptions("host=127.0.0.1 port=1 dbname=fence user=postgres");
  o.database = "fence-follows";
  o.current_dsn = [&]() -> absl::StatusOr<std::string> {
    absl::MutexLock lock(&mu);
    return primary;
  };
  TokenFence fence(std::move(o));
  fence.Start();
  const db::Lsn token = InsertLsn(Cluster(), kDb);
  fence.Request(token);
  ASSERT_TRUE(WaitFor([&] { return fence.GetStats().failures >= 1; }, kWait));
  EXPECT_EQ(fence.GetStats().fences, 0u);
  EXPECT_NE(fence.GetStats().last_error.find("no primary now"), std::string::npos)
      << fence.GetStats().last_error;

  // The databases the fence's sessions are in.
  auto sessions = [&] {
    return Cluster()
        .QueryValue(kDb,
                    "SELECT coalesce(string_agg(datname, ','), '') FROM pg_stat_activity "
                    "WHERE application_name = 'poolside-token-fence/fence-follows'")
        .value_or("?");
  };
  {
    absl::MutexLock lock(&mu);
    primary = Cluster().Dsn(kDb);
  }
  ASSERT_TRUE(WaitFor(
      [&] {
        fence.Request(token);
        return fence.GetStats().fenced_lsn >= token;
      },
      kWait));
  EXPECT_TRUE(WaitFor([&] { return sessions() == kDb; }, kWait)) << sessions();

  {
    absl::MutexLock lock(&mu);
    primary = Cluster().Dsn(kOther);
  }
  ASSERT_TRUE(Cluster().Exec(kDb, "INSERT INTO unpublished VALUES (4)").ok());
  const db::Lsn later = InsertLsn(Cluster(), kDb);
  fence.Request(later);
  ASSERT_TRUE(WaitFor([&] { return fence.GetStats().fenced_lsn >= later; }, kWait));
  EXPECT_TRUE(WaitFor([&] { return sessions() == kOther; }, kWait))
      << "the fence stayed on the former DSN: " << sessions();
}

// What a fence needs: EXECUTE on pg_logical_emit_message, which PostgreSQL
// grants to PUBLIC (no REPLICATION attribute). Where an administrator revoked
// it, fences fail (counted) and work again once granted.
TEST_F(TokenFenceTest, NeedsOnlyExecuteOnTheFunction) {
  const std::string fn = "pg_catalog.pg_logical_emit_message(boolean, text, text)";
  ASSERT_TRUE(Cluster()
                  .Exec(kDb,
                        "DO $$ BEGIN CREATE ROLE fence_user LOGIN NOREPLICATION; "
                        "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
                  .ok());
  EXPECT_EQ(Cluster()
                .QueryValue(kDb, absl::StrCat("SELECT has_function_privilege('fence_user', '", fn,
                                              "', 'EXECUTE')::text"))
                .value_or(""),
            "true");
  ASSERT_TRUE(
      Cluster().Exec(kDb, absl::StrCat("REVOKE EXECUTE ON FUNCTION ", fn, " FROM PUBLIC")).ok());
  TokenFence fence(FenceOptions(Cluster().Dsn(kDb) + " user=fence_user"));
  fence.Start();
  fence.Request(InsertLsn(Cluster(), kDb));
  ASSERT_TRUE(WaitFor([&] { return fence.GetStats().failures >= 1; }, kWait));
  EXPECT_EQ(fence.GetStats().fences, 0u);
  EXPECT_NE(fence.GetStats().last_error.find("permission denied"), std::string::npos)
      << fence.GetStats().last_error;

  ASSERT_TRUE(
      Cluster().Exec(kDb, absl::StrCat("GRANT EXECUTE ON FUNCTION ", fn, " TO PUBLIC")).ok());
  const db::Lsn token = InsertLsn(Cluster(), kDb);
  // Asked again until the backoff ends and a fence commits.
  ASSERT_TRUE(WaitFor(
      [&] {
        fence.Request(token);
        return fence.GetStats().fenced_lsn >= token;
      },
      kWait));
  EXPECT_GE(fence.GetStats().fences, 1u);
}

}  // namespace
}  // namespace poolside::query
