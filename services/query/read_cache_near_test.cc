// ReadCache's own invalidations must reach its near cache (L1) by themselves.
//
// The real sidecar echoes every invalidation it applied over its
// WatchInvalidations stream, and that echo empties L1 within milliseconds: it
// hides a write path or a NOTIFY listener that forgot to invalidate L1 itself,
// so the end-to-end test (tests/query_cache_test.cc) cannot catch that. Here
// ReadCache runs over a real Database with a fake sidecar that subscribes once
// and never echoes anything: whatever leaves L1 was removed by ReadCache.

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/query.pb.h"
#include "services/query/cache_client.h"
#include "services/query/database.h"
#include "services/query/query_config.h"
#include "services/query/read_cache.h"
#include "services/query/result_sinks.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/postgres_cluster.h"

namespace poolside::query {
namespace {

using ::poolside::testing::SharedPostgres;
using ::poolside::testing::WaitFor;

constexpr char kPgDatabase[] = "read_cache_near";
// The configured name: the cache's tags are "db:near", "t:near:public.items".
constexpr char kDb[] = "near";
constexpr char kItemsTag[] = "t:near:public.items";
// Long enough that no entry expires during a test: only an invalidation
// removes one, from L1 (cache.near.max_ttl_ms too) as from the fake.
constexpr uint32_t kTtlMs = 600000;

constexpr char kItems[] = "SELECT name FROM items WHERE id = 1";
constexpr char kOther[] = "SELECT v FROM other WHERE id = 1";

// An in-memory sidecar: entries with ttl, stale window and tags; one
// generation counter advanced by every invalidation; a Set whose
// read_generation is older than an invalidation covering one of its tags (or a
// flush) is refused, as the real store does (common/cache/cache_store.h).
// Watch() reports kSubscribed once and then nothing, ever: no echo of applied
// invalidations. Callbacks run inline on the calling thread (the interface
// allows any thread), after the lock is released.
class FakeSidecar : public CacheClient {
 public:
  // As a sidecar configured with maxKeyBytes 1024 (its default is 4096)
  // refuses longer keys: InvalidArgument.
  static constexpr size_t kMaxKeyBytes = 1024;

  struct Invalidation {
    std::vector<std::string> tags;
    bool flush_all = false;
    std::string source;
  };

  void Get(const std::string& key, std::function<void(absl::StatusOr<CacheLookup>)> done) override {
    if (key.size() > kMaxKeyBytes) {
      done(absl::InvalidArgumentError(absl::StrCat("key is ", key.size(), " bytes")));
      return;
    }
    CacheLookup r;
    {
      absl::MutexLock lock(&mu_);
      ++gets_;
      r.generation = generation_;
      auto it = entries_.find(key);
      if (it != entries_.end()) {
        const absl::Time now = absl::Now();
        if (now < it->second.fresh_until) {
          r.outcome = CacheLookup::kHit;
          r.value = it->second.value;
          r.remaining = it->second.fresh_until - now;
        } else if (now < it->second.stale_until) {
          r.outcome = CacheLookup::kStale;
          r.value = it->second.value;
        } else {
          entries_.erase(it);
        }
      }
    }
    done(std::move(r));
  }

  void Set(CacheFill fill, std::function<void(absl::StatusOr<bool>)> done) override {
    bool stored = false;
    {
      absl::MutexLock lock(&mu_);
      stored = Admits(fill);
      if (stored) {
        const absl::Time now = absl::Now();
        entries_[fill.key] = Entry{std::move(fill.value), now + fill.ttl,
                                   now + fill.ttl + fill.stale, std::move(fill.tags)};
      } else {
        ++sets_refused_;
      }
    }
    done(stored);
  }

  void Invalidate(std::vector<std::string> tags, bool flush_all, std::string source,
                  absl::Duration timeout, std::function<void(absl::Status)> done) override {
    {
      absl::MutexLock lock(&mu_);
      const uint64_t generation = ++generation_;
      if (tags.empty() && flush_all) {
        flush_generation_ = generation;
        entries_.clear();
      }
      const absl::flat_hash_set<std::string> covered(tags.begin(), tags.end());
      for (const std::string& tag : covered) tag_generations_[tag] = generation;
      for (auto it = entries_.begin(); it != entries_.end();) {
        const std::vector<std::string>& has = it->second.tags;
        if (std::any_of(has.begin(), has.end(),
                        [&](const std::string& t) { return covered.contains(t); })) {
          entries_.erase(it++);
        } else {
          ++it;
        }
      }
      log_.push_back(Invalidation{std::move(tags), flush_all, std::move(source)});
    }
    done(absl::OkStatus());
  }

  bool Watch(std::function<void(const CacheInvalidationEvent&)> on_event) override {
    {
      absl::MutexLock lock(&mu_);
      ++watches_;
    }
    CacheInvalidationEvent subscribed;
    subscribed.kind = CacheInvalidationEvent::kSubscribed;
    on_event(subscribed);
    // Nothing else is ever reported: L1 learns of an invalidation only from
    // ReadCache itself.
    return true;
  }

  uint64_t gets() const {
    absl::MutexLock lock(&mu_);
    return gets_;
  }
  uint64_t sets_refused() const {
    absl::MutexLock lock(&mu_);
    return sets_refused_;
  }
  int watches() const {
    absl::MutexLock lock(&mu_);
    return watches_;
  }
  // Whether an invalidation from `source` covered `tag`.
  bool Invalidated(absl::string_view tag, absl::string_view source) const {
    absl::MutexLock lock(&mu_);
    for (const Invalidation& i : log_) {
      if (i.source != source) continue;
      for (const std::string& t : i.tags) {
        if (t == tag) return true;
      }
    }
    return false;
  }

 private:
  struct Entry {
    std::string value;
    absl::Time fresh_until;
    absl::Time stale_until;
    std::vector<std::string> tags;
  };

  bool Admits(const CacheFill& fill) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const uint64_t g = fill.read_generation;
    if (g == 0) return false;  // not handed out by this store: refused, as in the real one
    if (g > generation_ || flush_generation_ > g) return false;
    for (const std::string& tag : fill.tags) {
      auto it = tag_generations_.find(tag);
      if (it != tag_generations_.end() && it->second > g) return false;
    }
    return true;
  }

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t flush_generation_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, uint64_t> tag_generations_ ABSL_GUARDED_BY(mu_);
  std::vector<Invalidation> log_ ABSL_GUARDED_BY(mu_);
  uint64_t gets_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t sets_refused_ ABSL_GUARDED_BY(mu_) = 0;
  int watches_ ABSL_GUARDED_BY(mu_) = 0;
};

struct Outcome {
  absl::Status status;
  v1::CacheOutcome cache = v1::CACHE_OUTCOME_UNSPECIFIED;
  std::string first;  // the first row's first value
};

class ReadCacheNearTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::PostgresCluster& pg = SharedPostgres();
    // Fresh tables for each test (the listener installs their triggers again).
    absl::Status s =
        pg.CreateDatabase(kPgDatabase,
                          "DROP VIEW IF EXISTS shown; DROP TABLE IF EXISTS items, other;"
                          "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);"
                          "INSERT INTO items VALUES (1, 'one'), (2, 'two');"
                          "CREATE TABLE other (id int PRIMARY KEY, v text NOT NULL);"
                          "INSERT INTO other VALUES (1, 'ten')");
    ASSERT_TRUE(s.ok()) << s;

    v1::QueryServiceConfig c;
    c.mutable_server()->mutable_tls()->set_plaintext(true);
    v1::DatabaseConfig* db = testing::AddDatabase(&c, kDb, pg.Dsn(kPgDatabase));
    db->set_allow_privileged_role(true);  // the fixture's superuser
    db->mutable_pool()->set_max_size(4);
    db->mutable_pool()->set_min_idle(0);
    v1::QueryCacheConfig* cache = c.mutable_cache();
    // Required by validation; ReadCache only ever talks to the fake.
    cache->set_target("unix:/nonexistent/poolside-cache.sock");
    testing::AddTables(cache, kDb, {"items", "other"});
    cache->mutable_near()->set_max_ttl_ms(kTtlMs);
    // These tests silence writes' NOTIFYs with session_replication_role,
    // which logical decoding does not see: triggers it is.
    cache->set_invalidation("trigger");
    absl::StatusOr<v1::QueryServiceConfig> finalized = FinalizeQueryConfig(c);
    ASSERT_TRUE(finalized.ok()) << finalized.status();
    config_ = *std::move(finalized);

    databases_.emplace(kDb, std::make_unique<Database>(config_.databases(0)));
    db_ = databases_.at(kDb).get();
    auto sidecar = std::make_unique<FakeSidecar>();
    sidecar_ = sidecar.get();
    cache_ = std::make_unique<ReadCache>(config_.cache(), std::move(sidecar), databases_,
                                         config_.limits());
    cache_->Start();
    // Reads bypass the cache until the listener subscribed and flushed.
    ASSERT_TRUE(WaitFor([&] { return cache_->DatabaseReady(kDb); }, absl::Seconds(30)));
    ASSERT_NE(cache_->near_cache(), nullptr);
    ASSERT_EQ(sidecar_->watches(), 1);
    ASSERT_TRUE(cache_->near_cache()->serving());
  }

  void TearDown() override {
    cache_.reset();  // stops the listener; it reads the databases
    databases_.clear();
  }

  // One cached read made as QueryEngine::Execute makes it (its Work, response
  // and run_plain), waited for.
  Outcome Read(const std::string& sql, const std::vector<int64_t>& params = {},
               uint64_t min_lsn = 0) {
    // Owned by the work's `done`: it stays valid however late the call ends.
    struct Call {
      v1::ExecuteRequest request;
      v1::ExecuteResponse response;
      ResultBudget budget;
      std::unique_ptr<ResultSetSink> sink;
      absl::Status status;
      absl::Notification done;
    };
    auto call = std::make_shared<Call>();
    call->request.set_database(kDb);
    call->request.set_sql(sql);
    for (int64_t p : params) call->request.add_params()->set_int64_value(p);
    call->request.set_min_lsn(min_lsn);
    call->request.mutable_cache()->set_ttl_ms(kTtlMs);
    call->budget.max_rows = config_.limits().max_rows();
    call->budget.max_bytes = config_.limits().max_bytes();
    call->sink = std::make_unique<ResultSetSink>(call->response.mutable_result(), &call->budget);
    auto work = std::make_shared<Work>();
    work->deadline = absl::Now() + absl::Seconds(20);
    work->holder = "read_cache_near_test";
    work->batchable = true;
    work->statement.sql = call->request.sql();
    work->statement.params = &call->request.params();
    work->statement.sink = call->sink.get();
    work->done = [call](absl::Status s) {
      if (call->response.cache() == v1::CACHE_OUTCOME_UNSPECIFIED) {
        call->response.set_cache(v1::BYPASS);
      }
      call->status = std::move(s);
      call->done.Notify();
    };
    Database* db = db_;
    auto run_plain = [db, work] {
      if (absl::Status s = db->Submit(work); !s.ok()) {
        if (work->Claim()) work->done(s);
      }
    };
    if (cache_->Applies(*db, call->request, *sql::AnalyzeOnce(call->request.sql()))) {
      cache_->Execute(db, call->request, work, &call->response, call->budget.max_rows,
                      call->budget.max_bytes, /*read_only=*/false, run_plain);
    } else {
      run_plain();
    }
    Outcome out;
    if (!call->done.WaitForNotificationWithTimeout(absl::Seconds(30))) {
      out.status = absl::DeadlineExceededError("the read did not complete");
      return out;
    }
    out.status = call->status;
    out.cache = call->response.cache();
    const v1::ResultSet& result = call->response.result();
    if (result.rows_size() > 0 && result.rows(0).values_size() > 0) {
      const v1::Value& v = result.rows(0).values(0);
      out.first = v.has_int64_value() ? absl::StrCat(v.int64_value()) : v.text_value();
    }
    return out;
  }

  // Commits `sql` with the tables' NOTIFY triggers silenced (replica mode:
  // ordinary triggers do not fire), then reports it to the cache as
  // QueryEngine::Execute does after a committed write, and returns once
  // AfterWrite ran its `done` (when the engine replies). Without the NOTIFY,
  // the listener cannot race AfterWrite and hide an invalidation it forgot.
  absl::Status WriteThroughReplica(const std::string& sql) {
    absl::Status s = SharedPostgres().Exec(
        kPgDatabase,
        absl::StrCat("BEGIN; SET LOCAL session_replication_role = replica; ", sql, "; COMMIT"));
    if (!s.ok()) return s;
    std::vector<ReadCache::Written> written(1);
    written[0].sql = sql;
    auto done = std::make_shared<absl::Notification>();
    cache_->AfterWrite(db_, std::move(written), /*commit_snapshot=*/"", [done] { done->Notify(); });
    if (!done->WaitForNotificationWithTimeout(absl::Seconds(30))) {
      return absl::DeadlineExceededError("AfterWrite did not finish");
    }
    return absl::OkStatus();
  }

  // A read answered by L1: a HIT that did not ask the sidecar.
  Outcome NearHit(const std::string& sql) {
    const uint64_t gets = sidecar_->gets();
    const uint64_t near_hits = cache_->counters().near_hits.load();
    Outcome out = Read(sql);
    EXPECT_EQ(out.cache, v1::HIT) << sql;
    EXPECT_EQ(sidecar_->gets(), gets) << "asked the sidecar: " << sql;
    EXPECT_EQ(cache_->counters().near_hits.load(), near_hits + 1) << sql;
    return out;
  }

  v1::QueryServiceConfig config_;
  absl::flat_hash_map<std::string, std::unique_ptr<Database>> databases_;
  Database* db_ = nullptr;
  FakeSidecar* sidecar_ = nullptr;  // owned by cache_
  std::unique_ptr<ReadCache> cache_;
};

TEST_F(ReadCacheNearTest, WriteThroughAfterWriteLeavesTheNearCacheBeforeItsReply) {
  Outcome first = Read(kItems);
  ASSERT_TRUE(first.status.ok()) << first.status;
  EXPECT_EQ(first.cache, v1::MISS);
  EXPECT_EQ(first.first, "one");
  EXPECT_EQ(NearHit(kItems).first, "one");
  const uint64_t notifications = cache_->counters().notifications.load();

  // A write whose tables the plan names: their tags.
  absl::Status s = WriteThroughReplica("UPDATE items SET name = 'written' WHERE id = 1");
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(sidecar_->Invalidated(kItemsTag, "write"));
  // No waiting: AfterWrite's `done` came after the invalidation, and nothing
  // else (no echo, no NOTIFY) told L1.
  Outcome after = Read(kItems);
  ASSERT_TRUE(after.status.ok()) << after.status;
  EXPECT_EQ(after.cache, v1::MISS) << "AfterWrite left the entry in the near cache";
  EXPECT_EQ(after.first, "written");
  EXPECT_EQ(NearHit(kItems).first, "written");

  // A statement EXPLAIN refuses (DO): its database is flushed.
  s = WriteThroughReplica("DO $$ BEGIN UPDATE items SET name = 'via do' WHERE id = 1; END $$");
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(sidecar_->Invalidated("db:near", "write"));
  after = Read(kItems);
  ASSERT_TRUE(after.status.ok()) << after.status;
  EXPECT_EQ(after.cache, v1::MISS) << "AfterWrite's flush left the entry in the near cache";
  EXPECT_EQ(after.first, "via do");
  EXPECT_EQ(sidecar_->sets_refused(), 0u);

  // The premise: the writes above sent no NOTIFY. One committed normally is
  // the only notification the listener gets (NOTIFYs arrive in commit order,
  // so one from the writes above would have come first).
  ASSERT_TRUE(SharedPostgres().Exec(kPgDatabase, "UPDATE other SET v = 'fence'").ok());
  ASSERT_TRUE(WaitFor([&] { return cache_->counters().notifications.load() > notifications; },
                      absl::Seconds(10)));
  EXPECT_EQ(cache_->counters().notifications.load(), notifications + 1);
}

TEST_F(ReadCacheNearTest, CommittedWritesOutsideLeaveTheNearCacheRolledBackOnesDoNot) {
  for (const char* sql : {kItems, kOther}) {
    Outcome first = Read(sql);
    ASSERT_TRUE(first.status.ok()) << first.status;
    EXPECT_EQ(first.cache, v1::MISS) << sql;
  }
  EXPECT_EQ(NearHit(kItems).first, "one");
  EXPECT_EQ(NearHit(kOther).first, "ten");

  testing::PostgresCluster& pg = SharedPostgres();
  // Rolled back: no NOTIFY, the entry stays.
  ASSERT_TRUE(
      pg.Exec(kPgDatabase, "BEGIN; UPDATE items SET name = 'rolled back' WHERE id = 1; ROLLBACK")
          .ok());
  // Committed afterwards on another table: once L1 lost that entry, the
  // listener has handled every notification before it.
  ASSERT_TRUE(pg.Exec(kPgDatabase, "UPDATE other SET v = 'eleven' WHERE id = 1").ok());
  EXPECT_TRUE(WaitFor([&] { return Read(kOther).first == "eleven"; }, absl::Seconds(10)))
      << "the listener's invalidation did not reach the near cache";
  EXPECT_EQ(NearHit(kItems).first, "one");

  // Committed by a plain client: L1 drops the entry.
  ASSERT_TRUE(pg.Exec(kPgDatabase, "UPDATE items SET name = 'committed' WHERE id = 1").ok());
  EXPECT_TRUE(WaitFor([&] { return Read(kItems).first == "committed"; }, absl::Seconds(10)))
      << "the listener's invalidation did not reach the near cache";
  EXPECT_TRUE(sidecar_->Invalidated(kItemsTag, "notify"));
  EXPECT_EQ(sidecar_->watches(), 1);
}

// Trigger invalidation knows no positions: a read with any token, even 1 or
// the largest there is, goes to the database, though the cache holds the
// statement's entry (here one a write hid from the cache on purpose, so that
// an answer from the cache would show).
TEST_F(ReadCacheNearTest, InTriggerModeAReadWithATokenReadsTheDatabase) {
  ASSERT_EQ(Read(kItems).cache, v1::MISS);
  EXPECT_EQ(NearHit(kItems).first, "one");
  ASSERT_TRUE(SharedPostgres()
                  .Exec(kPgDatabase,
                        "BEGIN; SET LOCAL session_replication_role = replica; "
                        "UPDATE items SET name = 'hidden' WHERE id = 1; COMMIT")
                  .ok());
  for (uint64_t token : {uint64_t{1}, std::numeric_limits<uint64_t>::max()}) {
    Outcome r = Read(kItems, {}, token);
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.cache, v1::BYPASS) << token;
    EXPECT_EQ(r.first, "hidden") << token;
  }
  // The premise: without a token, the entry is still there.
  EXPECT_EQ(NearHit(kItems).first, "one");
}

// A sidecar that refuses one caller's request as invalid (a key past its
// maxKeyBytes) answered: it is not failing. Such refusals once counted as
// failures, and failureThreshold (3) of them in a row opened the breaker, so
// every caller's reads skipped the sidecar for retryAfterMs.
TEST_F(ReadCacheNearTest, RequestsTheSidecarRefusesAsInvalidDoNotOpenTheBreaker) {
  const std::string padding(FakeSidecar::kMaxKeyBytes, ' ');
  const uint64_t errors = cache_->counters().sidecar_errors.load();
  for (int64_t id = 1; id <= 4; ++id) {
    Outcome r = Read(absl::StrCat("SELECT name FROM items WHERE id = $1", padding), {id});
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.cache, v1::BYPASS) << id;  // the sidecar said no: the database
    EXPECT_EQ(r.first, id == 1 ? "one" : id == 2 ? "two" : "") << id;
  }
  EXPECT_EQ(cache_->counters().sidecar_errors.load(), errors + 4) << "still counted as errors";
  // Another caller's read still asks the sidecar (with the breaker open it
  // would be a BYPASS that never asked) and is cached there.
  const uint64_t gets = sidecar_->gets();
  Outcome other = Read(kOther);
  ASSERT_TRUE(other.status.ok()) << other.status;
  EXPECT_EQ(other.cache, v1::MISS) << "the breaker opened: the sidecar was skipped";
  EXPECT_EQ(other.first, "ten");
  EXPECT_EQ(sidecar_->gets(), gets + 1);
}

// The statement's plan is learned from its first call, whose bound $2 = 0
// lets PostgreSQL fold the table away (the plan names no table); the tables
// the text names are added from the catalog, so the call with $2 = 1 is
// tagged with items and a committed write to items drops it.
TEST_F(ReadCacheNearTest, AFoldedAwayTableStillInvalidates) {
  const std::string sql = "SELECT name FROM items WHERE id = $1 AND $2 = 1";
  Outcome none = Read(sql, {1, 0});
  ASSERT_TRUE(none.status.ok()) << none.status;
  EXPECT_EQ(none.first, "");
  Outcome first = Read(sql, {1, 1});
  ASSERT_TRUE(first.status.ok()) << first.status;
  EXPECT_EQ(first.first, "one");
  EXPECT_EQ(Read(sql, {1, 1}).first, "one");
  EXPECT_EQ(Read(kItems).first, "one");  // cached, tagged with items

  // Committed by a plain client; the trigger's NOTIFY names items. Once a
  // read of items by a plan that names it sees the write, the listener has
  // applied that notification.
  ASSERT_TRUE(
      SharedPostgres().Exec(kPgDatabase, "UPDATE items SET name = 'written' WHERE id = 1").ok());
  ASSERT_TRUE(WaitFor([&] { return Read(kItems).first == "written"; }, absl::Seconds(10)));
  Outcome after = Read(sql, {1, 1});
  ASSERT_TRUE(after.status.ok()) << after.status;
  EXPECT_EQ(after.first, "written") << "a stale entry outlived the write to its table";
}

// A function that is not inlined (PL/pgSQL, or SQL that is not a bare
// expression) reads tables the plan never names: a read that calls one
// (itself, or through a view or policy) is not cached, so a committed write
// to `other` is seen at once.
TEST_F(ReadCacheNearTest, AFunctionsOwnReadsInvalidateItsCaller) {
  ASSERT_TRUE(SharedPostgres()
                  .Exec(kPgDatabase,
                        "CREATE OR REPLACE FUNCTION other_v(int) RETURNS text LANGUAGE plpgsql "
                        "STABLE AS $$ BEGIN RETURN (SELECT v FROM other WHERE id = $1); END $$")
                  .ok());
  const std::string sql = "SELECT other_v(id) FROM items WHERE id = 1";
  Outcome first = Read(sql);
  ASSERT_TRUE(first.status.ok()) << first.status;
  EXPECT_EQ(first.first, "ten");
  EXPECT_EQ(Read(sql).first, "ten");
  EXPECT_EQ(Read(kOther).first, "ten");  // cached, tagged with other

  // Committed by a plain client; once kOther's entry is gone, the listener
  // has applied the write's NOTIFY.
  ASSERT_TRUE(
      SharedPostgres().Exec(kPgDatabase, "UPDATE other SET v = 'eleven' WHERE id = 1").ok());
  ASSERT_TRUE(WaitFor([&] { return Read(kOther).first == "eleven"; }, absl::Seconds(10)));
  Outcome after = Read(sql);
  ASSERT_TRUE(after.status.ok()) << after.status;
  EXPECT_EQ(after.first, "eleven") << "a stale entry outlived a write to a table it read";
}

}  // namespace
}  // namespace poolside::query
