// The invalidation side over a real database: the listener's subscription
// and flush, trigger and WAL invalidations reaching a fake sidecar, the
// applied LSN that tokens wait for, a sidecar that fails, and messages on the
// channel from sessions that do not hold the stream.

#include "services/query/invalidation.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/config.pb.h"
#include "services/query/cache_client.h"
#include "services/query/database.h"
#include "services/query/in_flight.h"
#include "services/query/invalidation_state.h"
#include "services/query/query_config.h"
#include "services/query/relay_message.h"
#include "services/query/row_keys.h"
#include "services/query/statement_plans.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/postgres_cluster.h"

namespace poolside::query {
namespace {

using ::poolside::testing::SharedPostgres;

constexpr char kDb[] = "inv";  // the configured name, in the tags

// Polls `condition` every 10 ms until it holds or `timeout` passes.
template <typename F>
bool Eventually(F condition, absl::Duration timeout = absl::Seconds(30)) {
  const absl::Time until = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > until) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

// A sidecar that records the invalidations it is sent and fails them while
// told to. Lookups and fills are not this side's business.
class FakeSidecar : public CacheClient {
 public:
  void Get(const std::string&, std::function<void(absl::StatusOr<CacheLookup>)> done) override {
    done(absl::UnimplementedError("not here"));
  }
  void Set(CacheFill, std::function<void(absl::StatusOr<bool>)> done) override {
    done(absl::UnimplementedError("not here"));
  }
  void Invalidate(std::vector<std::string> tags, bool flush_all, std::string source, absl::Duration,
                  std::function<void(absl::Status)> done) override {
    absl::Status s;
    {
      absl::MutexLock lock(&mu_);
      if (failing_) {
        s = absl::UnavailableError("sidecar down");
      } else {
        for (std::string& t : tags) received_.push_back({std::move(t), source});
      }
    }
    done(s);
  }

  void SetFailing(bool failing) {
    absl::MutexLock lock(&mu_);
    failing_ = failing;
  }
  bool Received(const std::string& tag, const std::string& source) const {
    absl::MutexLock lock(&mu_);
    return std::find(received_.begin(), received_.end(), std::make_pair(tag, source)) !=
           received_.end();
  }
  // What it received, for failure messages.
  std::string Dump() const {
    absl::MutexLock lock(&mu_);
    std::string out;
    for (const auto& [tag, source] : received_) absl::StrAppend(&out, source, ":", tag, " ");
    return out;
  }
  void Clear() {
    absl::MutexLock lock(&mu_);
    received_.clear();
  }

 private:
  mutable absl::Mutex mu_;
  bool failing_ = false;
  std::vector<std::pair<std::string, std::string>> received_;
};

class InvalidationTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    testing::PostgresCluster& pg = SharedPostgres();
    pg_database_ = absl::StrCat("invalidation_", GetParam());
    ASSERT_TRUE(pg.CreateDatabase(pg_database_).ok());
    absl::Status s = pg.Exec(pg_database_,
                             "DROP TABLE IF EXISTS items, other;"
                             "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);"
                             "CREATE TABLE other (id int PRIMARY KEY)");
    ASSERT_TRUE(s.ok()) << s;

    v1::QueryServiceConfig c;
    c.mutable_server()->mutable_tls()->set_plaintext(true);
    v1::DatabaseConfig* db = testing::AddDatabase(&c, kDb, pg.Dsn(pg_database_));
    db->set_allow_privileged_role(true);  // the fixture's superuser
    db->mutable_pool()->set_max_size(2);
    db->mutable_pool()->set_min_idle(0);
    v1::QueryCacheConfig* cache = c.mutable_cache();
    cache->set_target("unix:/nonexistent/poolside-cache.sock");  // only the fake is used
    testing::AddTables(cache, kDb, {"items"});
    cache->set_invalidation(GetParam());
    cache->mutable_wal()->set_batch_ms(5);
    cache->mutable_wal()->set_heartbeat_ms(200);
    cache->mutable_wal()->set_election_retry_ms(100);
    absl::StatusOr<v1::QueryServiceConfig> finalized = FinalizeQueryConfig(c);
    ASSERT_TRUE(finalized.ok()) << finalized.status();
    config_ = *std::move(finalized);

    databases_.emplace(kDb, std::make_unique<Database>(config_.databases(0)));
    db_ = databases_.at(kDb).get();
    plans_ = std::make_unique<StatementPlans>(&in_flight_, [](const Database&) { return true; });
    Invalidation::Sinks sinks;
    sinks.client = &sidecar_;
    sinks.plans = plans_.get();
    sinks.sidecar_result = [this](bool ok) { (ok ? sidecar_ok_ : sidecar_failed_).fetch_add(1); };
    sinks.notifications = &notifications_;
    sinks.flushes = &flushes_;
    invalidation_ = std::make_unique<Invalidation>(config_.cache(), databases_, std::move(sinks));
    ASSERT_TRUE(invalidation_->CheckWal(absl::Now() + absl::Seconds(10)).ok());
    invalidation_->Start();
    // Subscribed and flushed (in "wal" mode: a stream's hello applied too),
    // and the cached table watched (in "wal" mode: once the holder published
    // it; writes before that are not decoded).
    ASSERT_TRUE(Eventually([&] {
      std::vector<InvalidationStatus> statuses = invalidation_->Statuses();
      return invalidation_->Ready(kDb) && statuses.size() == 1 &&
             statuses[0].watched == std::vector<std::string>{"public.items"};
    }));
  }

  void TearDown() override {
    invalidation_.reset();  // stops the listener, the relay, the fence
    in_flight_.WaitIdle();
    plans_.reset();
    databases_.clear();
  }

  absl::Status Exec(const std::string& sql) { return SharedPostgres().Exec(pg_database_, sql); }

  // A write and the WAL insert position right after it.
  uint64_t WriteAndLsn(const std::string& sql) {
    EXPECT_TRUE(Exec(sql).ok()) << sql;
    absl::StatusOr<std::string> lsn = SharedPostgres().QueryValue(
        pg_database_, "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8");
    EXPECT_TRUE(lsn.ok()) << lsn.status();
    uint64_t value = 0;
    EXPECT_TRUE(lsn.ok() && absl::SimpleAtoi(*lsn, &value));
    return value;
  }

  // NOTIFY on the cache's channel from a session of its own (not the holder's).
  absl::Status NotifyFromElsewhere(const std::string& payload) {
    return Exec(
        absl::StrCat("SELECT pg_notify('", config_.cache().channel(), "', $p$", payload, "$p$)"));
  }

  DatabaseInvalidation& State() { return *invalidation_->Of(*db_); }

  std::string pg_database_;
  v1::QueryServiceConfig config_;
  absl::flat_hash_map<std::string, std::unique_ptr<Database>> databases_;
  Database* db_ = nullptr;
  FakeSidecar sidecar_;
  InFlight in_flight_;
  std::unique_ptr<StatementPlans> plans_;
  std::atomic<uint64_t> notifications_{0}, flushes_{0};
  std::atomic<int> sidecar_ok_{0}, sidecar_failed_{0};
  std::unique_ptr<Invalidation> invalidation_;
};

TEST_P(InvalidationTest, SubscribesFlushesAndInvalidatesWhatIsWritten) {
  const std::string mode = GetParam();
  // Flushed when it subscribed.
  EXPECT_TRUE(sidecar_.Received(DatabaseTag(kDb), "reconnect"));
  EXPECT_GE(flushes_.load(), 1u);
  std::vector<InvalidationStatus> statuses = invalidation_->Statuses();
  ASSERT_EQ(statuses.size(), 1u);
  EXPECT_EQ(statuses[0].database, kDb);
  EXPECT_EQ(statuses[0].mode, mode);
  EXPECT_TRUE(statuses[0].ready);
  EXPECT_TRUE(statuses[0].subscribed);
  EXPECT_EQ(statuses[0].watched, (std::vector<std::string>{"public.items"}));
  EXPECT_EQ(invalidation_->Of(*db_), &State());

  if (mode == "wal") {
    // The stream describes a table before its first change: that drops the
    // whole table once (a description cannot be told from a DDL's).
    ASSERT_TRUE(Exec("INSERT INTO items VALUES (4, 'four')").ok());
    ASSERT_TRUE(Eventually([&] { return sidecar_.Received(TableTag(kDb, "public.items"), "wal"); }))
        << sidecar_.Dump();
  }
  const uint64_t lsn = WriteAndLsn("INSERT INTO items VALUES (5, 'five')");
  if (mode == "trigger") {
    ASSERT_TRUE(
        Eventually([&] { return sidecar_.Received(TableTag(kDb, "public.items"), "notify"); }));
    // Trigger mode knows no positions: a read reflects only its own min_lsn.
    EXPECT_EQ(invalidation_->ReflectedLsn(*db_, 3), 3u);
    EXPECT_EQ(State().ReplicaFillFence(), UINT64_MAX);
  } else {
    // By row: that row's key entries and the table-level entries.
    const std::string row =
        RowTag(kDb, "public.items", RowKeyHash({*CanonicalKeyText(KeyFamily::kInteger, "5")}));
    ASSERT_TRUE(Eventually([&] {
      return sidecar_.Received(row, "wal") &&
             sidecar_.Received(TableScanTag(kDb, "public.items"), "wal");
    })) << sidecar_.Dump();
    // A token for the write is reached: every commit before it is invalidated here.
    auto reached = std::make_shared<absl::Notification>();
    auto result = std::make_shared<std::atomic<bool>>(false);
    invalidation_->WaitForLsn(&State(), lsn, absl::Now() + absl::Seconds(20),
                              [reached, result](bool ok) {
                                result->store(ok);
                                reached->Notify();
                              });
    ASSERT_TRUE(reached->WaitForNotificationWithTimeout(absl::Seconds(30)));
    EXPECT_TRUE(result->load());
    EXPECT_GE(State().applied_lsn.load(), lsn);
    EXPECT_GE(invalidation_->ReflectedLsn(*db_, 0), lsn);
    EXPECT_EQ(invalidation_->ReflectedLsn(*db_, UINT64_MAX - 1), UINT64_MAX - 1);
  }
  EXPECT_GE(notifications_.load(), 1u);
  EXPECT_EQ(sidecar_failed_.load(), 0);
  EXPECT_TRUE(invalidation_->Ready(kDb));
  EXPECT_FALSE(invalidation_->Ready("no_such_database"));

  // Stopped: waiting for a position ends at once, unreached.
  invalidation_->Stop();
  bool told = false, ok = true;
  invalidation_->WaitForLsn(&State(), UINT64_MAX, absl::Now() + absl::Seconds(20), [&](bool r) {
    told = true;
    ok = r;
  });
  EXPECT_TRUE(told);
  EXPECT_FALSE(ok);
}

TEST_P(InvalidationTest, ALostInvalidationBypassesTheDatabaseUntilAFlushSucceeds) {
  sidecar_.SetFailing(true);
  ASSERT_TRUE(Exec("INSERT INTO items VALUES (6, 'six')").ok());
  ASSERT_TRUE(Eventually([&] { return !invalidation_->Ready(kDb); }));
  EXPECT_EQ(invalidation_->NotReady(State()), CacheBypass::kStream);
  EXPECT_GE(sidecar_failed_.load(), 1);
  sidecar_.SetFailing(false);
  // The listener flushes the database again ("resume") and reads may use it.
  ASSERT_TRUE(Eventually([&] { return invalidation_->Ready(kDb); }));
  EXPECT_TRUE(sidecar_.Received(DatabaseTag(kDb), "resume"));
}

INSTANTIATE_TEST_SUITE_P(Modes, InvalidationTest, ::testing::Values("trigger", "wal"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

// Only the session holding the stream may move its state; anyone's message
// on the channel may invalidate (one too many costs a miss), malformed ones
// are ignored, and a table's new definition forgets its statements' plans.
class WalChannelTest : public InvalidationTest {};

TEST_P(WalChannelTest, OtherSessionsMayInvalidateButNotMoveTheStream) {
  // A plan to forget.
  auto learned = std::make_shared<absl::Notification>();
  google::protobuf::RepeatedPtrField<v1::Value> none;
  plans_->Learn(db_, "SELECT name FROM items WHERE id = 1", none, absl::Now() + absl::Seconds(10),
                [learned](StatementPlans::Learned) { learned->Notify(); });
  ASSERT_TRUE(learned->WaitForNotificationWithTimeout(absl::Seconds(30)));
  ASSERT_EQ(plans_->size(), 1u);

  const uint64_t stream = State().stream.load();
  const uint64_t applied = State().applied_lsn.load();
  ASSERT_NE(stream, 0u);
  // A forged heartbeat of another stream, claiming a far position.
  RelayHeader forged;
  forged.kind = RelayHeader::kHeartbeat;
  forged.holder = stream ^ 0xffff;
  forged.seq = 1;
  forged.through = uint64_t{1} << 60;
  RelayTable definition;
  definition.name = "public.items";
  definition.change = RelayTable::kDefinition;
  std::vector<std::string> payloads = EncodeRelay(forged, {definition});
  ASSERT_EQ(payloads.size(), 1u);
  ASSERT_TRUE(NotifyFromElsewhere("psw1 not a relay message").ok());
  ASSERT_TRUE(NotifyFromElsewhere(payloads[0]).ok());
  // Invalidated, and the plan forgotten...
  ASSERT_TRUE(Eventually([&] { return sidecar_.Received(TableTag(kDb, "public.items"), "wal"); }));
  EXPECT_EQ(plans_->size(), 0u);
  // ...but the stream is the holder's still, and its position its own.
  EXPECT_LT(State().applied_lsn.load(), uint64_t{1} << 60);
  EXPECT_GE(State().applied_lsn.load(), applied);
  const uint64_t now_stream = State().stream.load();
  EXPECT_TRUE(now_stream == stream || now_stream == 0) << now_stream;  // 0: briefly, a takeover
  EXPECT_NE(now_stream, forged.holder);

  // The listener goes on: a later write is invalidated as before (the
  // table's first change in the stream drops it whole).
  sidecar_.Clear();
  ASSERT_TRUE(Exec("INSERT INTO items VALUES (9, 'nine')").ok());
  EXPECT_TRUE(Eventually([&] {
    return sidecar_.Received(TableTag(kDb, "public.items"), "wal") ||
           sidecar_.Received(TableScanTag(kDb, "public.items"), "wal");
  })) << sidecar_.Dump();
  EXPECT_TRUE(invalidation_->Ready(kDb));
}

// A relayed table change whose every transaction had finished in the
// snapshot of a write through this replica that invalidated the table
// itself is not applied again; everything else is: other tables, a
// transaction the snapshot saw running or that began after it, a message
// naming no transactions, a new definition.
TEST_P(WalChannelTest, ChangesAnOwnWriteCoveredAreNotAppliedAgainAndNothingElseIsSkipped) {
  sidecar_.Clear();
  const uint64_t stream = State().stream.load();
  ASSERT_NE(stream, 0u);
  State().own_cover.Record({"public.items"}, *XidSnapshot::Parse("1000:1010:1005"), stream,
                           absl::Now());
  const uint64_t skips = State().own_write_skips.load();
  RelayHeader h;
  h.kind = RelayHeader::kChanges;
  h.holder = stream;  // forged, but the covering stream's: only its entries may go unapplied
  h.seq = 1;
  auto send = [&](std::optional<std::vector<uint32_t>> xids, std::vector<RelayTable> tables) {
    h.xids = std::move(xids);
    for (const std::string& payload : EncodeRelay(h, tables)) {
      ASSERT_TRUE(NotifyFromElsewhere(payload).ok());
      ++h.seq;
    }
  };
  auto rows = [](const char* table, uint64_t row) {
    return RelayTable{table, RelayTable::kRows, {row}};
  };
  const std::vector<uint32_t> seen = {1004, 999};
  send(seen, {rows("public.items", 11), rows("public.other", 12)});
  send(std::vector<uint32_t>{1004, 1005}, {rows("public.items", 13)});  // 1005 was running
  send(std::nullopt, {rows("public.items", 14)});
  send(std::vector<uint32_t>{1010}, {rows("public.items", 15)});  // began after
  send(seen, {RelayTable{"public.items", RelayTable::kWhole, {}}});
  h.holder = stream ^ 1;  // another stream's transaction ids: nothing skipped
  send(seen, {rows("public.items", 16)});
  h.holder = stream;
  send(seen, {RelayTable{"public.other", RelayTable::kWhole, {}}});
  ASSERT_TRUE(Eventually([&] { return sidecar_.Received(TableTag(kDb, "public.other"), "wal"); }))
      << sidecar_.Dump();
  EXPECT_FALSE(sidecar_.Received(RowTag(kDb, "public.items", 11), "wal")) << sidecar_.Dump();
  EXPECT_FALSE(sidecar_.Received(TableTag(kDb, "public.items"), "wal")) << sidecar_.Dump();
  for (uint64_t row : {13, 14, 15, 16}) {
    EXPECT_TRUE(sidecar_.Received(RowTag(kDb, "public.items", row), "wal")) << row;
  }
  EXPECT_TRUE(sidecar_.Received(RowTag(kDb, "public.other", 12), "wal"));
  EXPECT_EQ(State().own_write_skips.load(), skips + 2);
  // A new definition goes whatever the transactions.
  send(seen, {RelayTable{"public.items", RelayTable::kDefinition, {}}});
  EXPECT_TRUE(Eventually([&] { return sidecar_.Received(TableTag(kDb, "public.items"), "wal"); }))
      << sidecar_.Dump();
  EXPECT_EQ(State().own_write_skips.load(), skips + 2);
}

INSTANTIATE_TEST_SUITE_P(Wal, WalChannelTest, ::testing::Values("wal"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace poolside::query
