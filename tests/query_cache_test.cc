// Cached reads through the real query_server and cache_server binaries, on a
// real PostgreSQL: outcomes, expiry, stale-while-revalidate, invalidation by
// writes through poolside and by other clients (committed only), two replicas,
// the fill that races a write, single flight, and a sidecar killed under load.
// The replicas run with their near cache (in-process, in front of the
// sidecar) on, with a max ttl as long as the reads' ttl: a near cache that
// missed an invalidation would serve the old value for the whole test.
// Before asserting a sequence of outcomes, tests wait until the replica is
// done with the invalidations caused before (Quiesce): a late one correctly
// refuses a fill that began before it, which turns an expected HIT into a MISS.

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/cache.grpc.pb.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/query.grpc.pb.h"
#include "tests/fixtures/http_get.h"
#include "tests/fixtures/pg_session.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/postgres_cluster.h"

namespace poolside::testing {
namespace {

constexpr char kDb[] = "qc";

// A cache sidecar, with the calls these tests make to it.
struct CacheSidecar : Sidecar {
  // Get/GetMany lookups the sidecar answered.
  uint64_t Lookups() {
    const v1::CacheStats s = Stats();
    return s.hits() + s.stale_hits() + s.misses();
  }

  // The invalidation's generation.
  absl::StatusOr<uint64_t> Invalidate(std::vector<std::string> tags,
                                      std::vector<std::string> prefixes = {}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::CacheInvalidateRequest request;
    for (std::string& t : tags) request.add_tags(std::move(t));
    for (std::string& p : prefixes) request.add_prefixes(std::move(p));
    request.set_source("test");
    v1::CacheInvalidateResponse response;
    grpc::Status s = stub->Invalidate(&ctx, request, &response);
    if (!s.ok()) return absl::UnavailableError(s.error_message());
    return response.generation();
  }

  // Stores an entry of the test's own, whatever was invalidated before (its
  // read_generation is the current one, from GetStats); any later
  // invalidation of one of `tags` removes it.
  absl::Status Put(const std::string& key, const std::vector<std::string>& tags) {
    v1::CacheStats stats;
    {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
      grpc::Status s = stub->GetStats(&ctx, v1::CacheGetStatsRequest(), &stats);
      if (!s.ok()) return absl::UnavailableError(s.error_message());
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::CacheSetRequest request;
    request.set_read_generation(stats.generation());
    request.set_key(key);
    request.set_value("probe");
    request.set_ttl_ms(60000);
    for (const std::string& t : tags) request.add_tags(t);
    v1::CacheSetResponse response;
    grpc::Status s = stub->Set(&ctx, request, &response);
    if (!s.ok()) return absl::UnavailableError(s.error_message());
    if (!response.stored()) {
      return absl::InternalError(absl::StrCat(
          "the sidecar refused ", key, ": ", v1::CacheSetResponse::Reason_Name(response.reason())));
    }
    return absl::OkStatus();
  }

  // Whether the sidecar holds `key` (fresh or stale).
  absl::StatusOr<bool> Holds(const std::string& key) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::CacheGetRequest request;
    request.set_key(key);
    v1::CacheGetResponse response;
    grpc::Status s = stub->Get(&ctx, request, &response);
    if (!s.ok()) return absl::UnavailableError(s.error_message());
    return response.outcome() != v1::CacheGetResponse::MISS;
  }

  v1::CacheStats Stats() {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::CacheStats stats;
    grpc::Status s = stub->GetStats(&ctx, v1::CacheGetStatsRequest(), &stats);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return stats;
  }
};

struct Replica {
  CacheSidecar sidecar;
  // A cached table of its own, written by Quiesce() only.
  std::string fence;
  std::unique_ptr<ServiceProcess> process;
  std::unique_ptr<v1::QueryService::Stub> stub;
  int metrics_port = 0;
};

v1::QueryServiceConfig ReplicaConfig(PostgresCluster& pg, const std::string& socket,
                                     const std::string& fence) {
  v1::QueryServiceConfig config;
  v1::DatabaseConfig* db = AddDatabase(&config, kDb, pg.Dsn(kDb));
  db->mutable_pool()->set_max_size(4);
  db->mutable_pool()->set_min_idle(1);
  config.mutable_server()->set_drain_timeout_ms(2000);
  v1::QueryCacheConfig* cache = config.mutable_cache();
  cache->set_target(absl::StrCat("unix:", socket));
  cache->set_call_timeout_ms(500);
  cache->mutable_near()->set_max_ttl_ms(60000);
  AddTables(cache, kDb, {"items", "other", "counters", fence});
  return config;
}

absl::Status StartReplica(PostgresCluster& pg, Replica* r) {
  // Created before the replica's listener looks for its cached tables.
  static std::atomic<int> n{0};
  r->fence = absl::StrCat("fence_", n.fetch_add(1));
  if (absl::Status s =
          pg.Exec(kDb, absl::StrCat("CREATE TABLE ", r->fence, " (id int PRIMARY KEY, n int);",
                                    "INSERT INTO ", r->fence, " VALUES (1, 0)"));
      !s.ok()) {
    return s;
  }
  if (absl::Status s = r->sidecar.Start(); !s.ok()) return s;
  v1::QueryServiceConfig config = ReplicaConfig(pg, r->sidecar.socket, r->fence);
  auto started = StartWithStub<v1::QueryService>("services/query/query_server", config);
  if (!started.ok()) return started.status();
  r->process = std::move(started->process);
  r->metrics_port = started->metrics_port;
  r->stub = std::move(started->stub);
  return absl::OkStatus();
}

v1::ExecuteRequest Read(const std::string& sql, uint32_t ttl_ms = 60000, uint32_t swr_ms = 0) {
  v1::ExecuteRequest r;
  r.set_database(kDb);
  r.set_sql(sql);
  r.mutable_cache()->set_ttl_ms(ttl_ms);
  r.mutable_cache()->set_stale_while_revalidate_ms(swr_ms);
  return r;
}

struct Outcome {
  grpc::Status status;
  v1::CacheOutcome cache = v1::CACHE_OUTCOME_UNSPECIFIED;
  std::string first;  // first column of the first row, as text
};

Outcome Call(v1::QueryService::Stub& stub, const v1::ExecuteRequest& request,
             absl::Duration timeout = absl::Seconds(20)) {
  v1::ExecuteResponse response;
  Outcome out;
  out.status = CallExecute(stub, request, &response, "", timeout);
  out.cache = response.cache();
  if (const v1::Value* v = FirstValue(response)) {
    out.first = v->has_text_value() ? v->text_value() : absl::StrCat(v->int64_value());
  }
  return out;
}

Outcome Write(v1::QueryService::Stub& stub, const std::string& sql) {
  v1::ExecuteRequest r;
  r.set_database(kDb);
  r.set_sql(sql);
  return Call(stub, r);
}

// Waits until reads of `database` use the cache (the listener subscribed and
// flushed): a read that is not BYPASS.
bool CacheReady(v1::QueryService::Stub& stub) {
  return WaitFor([&] { return Call(stub, Read("SELECT 1 AS ready", 1000)).cache != v1::BYPASS; },
                 absl::Seconds(20));
}

// What a replica's /metrics says about its near cache's watch of the sidecar.
struct NearWatch {
  bool serving = false;
  uint64_t generation = 0;  // poolside_query_cache_near_watch_generation
};

// The value of the unlabelled series `name` on replica `r`'s /metrics.
absl::StatusOr<double> ScrapeValue(const Replica& r, absl::string_view name) {
  absl::StatusOr<testing::HttpResponse> got = HttpGet("127.0.0.1", r.metrics_port, "/metrics");
  if (!got.ok()) return got.status();
  if (got->status != 200) return absl::UnavailableError(absl::StrCat("/metrics: ", got->status));
  for (absl::string_view line : absl::StrSplit(got->body, '\n')) {
    double v;
    if (absl::ConsumePrefix(&line, name) && absl::ConsumePrefix(&line, " ") &&
        absl::SimpleAtod(line, &v)) {
      return v;
    }
  }
  return absl::NotFoundError(absl::StrCat("no series ", name, " on /metrics"));
}

absl::StatusOr<NearWatch> ScrapeNearWatch(const Replica& r) {
  absl::StatusOr<double> serving = ScrapeValue(r, "poolside_query_cache_near_serving");
  if (!serving.ok()) return serving.status();
  absl::StatusOr<double> generation = ScrapeValue(r, "poolside_query_cache_near_watch_generation");
  if (!generation.ok()) return generation.status();
  // Generations (microseconds since the epoch plus a count) are exact in a double.
  return NearWatch{*serving == 1, static_cast<uint64_t>(*generation)};
}

// Waits until replica `r` is done with every invalidation caused so far, by
// `sql` (run first, if any) and by anything before it: tests assert sequences
// of outcomes (a MISS, then a HIT) that a late invalidation would rightly
// change, by refusing a fill that began before it.
//
// The invalidations of a committed write reach r in order: r's listener takes
// the NOTIFYs in commit order, a batch at a time, and for each batch
// invalidates its near cache, then the sidecar (waiting for the reply), then
// its near cache again; the sidecar echoes every invalidation it applied over
// its watch, in the order applied, and the near cache applies those too. So:
//  1. `sql` runs in a transaction that writes r's fence table last, whose
//     NOTIFY is thereby last too. A probe entry put in r's sidecar with the
//     fence table's tag is gone once the listener's invalidation of the batch
//     holding that NOTIFY reached the sidecar.
//  2. That batch's second near-cache invalidation follows the sidecar's reply.
//     A second fence write and probe show the listener went on to a later batch.
//  3. So the sidecar applied all of those before the test's own invalidation
//     of a tag nothing else carries, and echoed them before it: once r's near
//     cache received that one (its watch generation reached the generation
//     the sidecar gave it), it received every earlier echo too.
// Only the second fence write's own invalidations may still be on their way
// then, and nothing reads the fence table. Each replica has its own fence
// table, so that fence writes for one replica cannot satisfy another's probe.
absl::Status Quiesce(PostgresCluster& pg, Replica& r, const std::string& sql = "") {
  const std::string probe = "test|quiesce-probe";
  const std::string bump = absl::StrCat("UPDATE ", r.fence, " SET n = n + 1");
  for (int round = 0; round < 2; ++round) {
    // Tagged as a table-level read of the fence table: dropped by any change to it.
    if (absl::Status s = r.sidecar.Put(probe, {absl::StrCat("t:", kDb, ":public.", r.fence),
                                               absl::StrCat("tl:", kDb, ":public.", r.fence)});
        !s.ok()) {
      return s;
    }
    // One PQexec: one transaction.
    const std::string statements = round == 0 && !sql.empty() ? absl::StrCat(sql, ";", bump) : bump;
    if (absl::Status s = pg.Exec(kDb, statements); !s.ok()) return s;
    absl::StatusOr<bool> held;
    if (!WaitFor(
            [&] {
              held = r.sidecar.Holds(probe);
              return held.ok() && !*held;
            },
            absl::Seconds(20))) {
      return absl::DeadlineExceededError(
          absl::StrCat("the listener did not invalidate the fence table (round ", round,
                       "): ", held.ok() ? "probe still held" : held.status().ToString()));
    }
  }
  absl::StatusOr<uint64_t> generation = r.sidecar.Invalidate({"test:quiesce"});
  if (!generation.ok()) return generation.status();
  absl::StatusOr<NearWatch> watch;
  if (!WaitFor(
          [&] {
            watch = ScrapeNearWatch(r);
            return watch.ok() && watch->serving && watch->generation >= *generation;
          },
          absl::Seconds(20))) {
    return absl::DeadlineExceededError(absl::StrCat(
        "the near cache did not receive generation ", *generation, " over its watch: ",
        watch.ok() ? absl::StrCat("serving ", watch->serving, ", at ", watch->generation)
                   : watch.status().ToString()));
  }
  return absl::OkStatus();
}

class QueryCacheTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    PostgresCluster& pg = SharedPostgres();
    ASSERT_TRUE(
        pg.CreateDatabase(kDb,
                          "CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, name text);"
                          "CREATE TABLE IF NOT EXISTS other (id int PRIMARY KEY, v int);"
                          "CREATE TABLE IF NOT EXISTS counters (id int PRIMARY KEY, n int);"
                          "CREATE TABLE IF NOT EXISTS unwatched (id int PRIMARY KEY, v int);"
                          "CREATE OR REPLACE VIEW item_names AS SELECT name FROM items;"
                          "CREATE SEQUENCE IF NOT EXISTS flight_seq")
            .ok());
    a_ = new Replica();
    absl::Status s = StartReplica(pg, a_);
    ASSERT_TRUE(s.ok()) << s;
    ASSERT_TRUE(CacheReady(*a_->stub)) << "replica A never used its cache";
  }
  static void TearDownTestSuite() {
    delete a_;
    a_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(a_, nullptr);
    // The reset's invalidations (and whatever the previous test left on its
    // way) are all applied before the test begins.
    absl::Status s = Quiesce(SharedPostgres(), *a_,
                             "TRUNCATE items, other, counters;"
                             "INSERT INTO items VALUES (1, 'one'), (2, 'two');"
                             "INSERT INTO other VALUES (1, 10);"
                             "INSERT INTO counters VALUES (1, 0)");
    ASSERT_TRUE(s.ok()) << s;
  }
  v1::QueryService::Stub& stub() { return *a_->stub; }
  static Replica* a_;
};

Replica* QueryCacheTest::a_ = nullptr;

TEST_F(QueryCacheTest, MissThenHitAndOnlyReadsAreCached) {
  const auto read = Read("SELECT name FROM items WHERE id = 1 /* hit */");
  Outcome first = Call(stub(), read);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  EXPECT_EQ(first.cache, v1::MISS);
  EXPECT_EQ(first.first, "one");
  Outcome second = Call(stub(), read);
  EXPECT_EQ(second.cache, v1::HIT);
  EXPECT_EQ(second.first, "one");
  // Different parameters are a different entry.
  v1::ExecuteRequest with_param = Read("SELECT name FROM items WHERE id = $1");
  with_param.add_params()->set_int64_value(2);
  EXPECT_EQ(Call(stub(), with_param).cache, v1::MISS);
  EXPECT_EQ(Call(stub(), with_param).first, "two");
  // Keys embed the serialized parameters, which are not UTF-8 text in
  // general (an int64 above 127, raw bytes): they are cached all the same.
  v1::ExecuteRequest binary = Read("SELECT name FROM items WHERE id = $1 OR $2::bytea IS NULL");
  binary.add_params()->set_int64_value(200);
  binary.add_params()->set_bytes_value(std::string("\xff\xfe\x00\x80", 4));
  Outcome binary_first = Call(stub(), binary);
  ASSERT_TRUE(binary_first.status.ok()) << binary_first.status.error_message();
  EXPECT_EQ(binary_first.cache, v1::MISS);
  EXPECT_EQ(Call(stub(), binary).cache, v1::HIT);
  // No policy, bypass, a write and FOR UPDATE are never cached.
  v1::ExecuteRequest plain = read;
  plain.clear_cache();
  EXPECT_EQ(Call(stub(), plain).cache, v1::BYPASS);
  v1::ExecuteRequest bypass = read;
  bypass.mutable_cache()->set_bypass(true);
  EXPECT_EQ(Call(stub(), bypass).cache, v1::BYPASS);
  EXPECT_EQ(Call(stub(), Read("SELECT name FROM items WHERE id = 1 FOR UPDATE")).cache, v1::BYPASS);
  Outcome write = Call(stub(), Read("UPDATE items SET name = 'uno' WHERE id = 1"));
  EXPECT_TRUE(write.status.ok()) << write.status.error_message();
  EXPECT_EQ(write.cache, v1::BYPASS);
  // An error is an error, not a cache outcome.
  Outcome bad = Call(stub(), Read("SELECT nope FROM items"));
  EXPECT_EQ(bad.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(QueryCacheTest, ReadsOfTablesNotConfiguredAsCachedAreNeverCached) {
  // A write to `unwatched` by any client outside poolside would not be
  // notified, so neither it nor a join with it is ever served from the cache.
  for (const char* sql : {"SELECT v FROM unwatched WHERE id = 1 /* unwatched */",
                          "SELECT i.name, u.v FROM items i LEFT JOIN unwatched u USING (id) "
                          "WHERE i.id = 1 /* join */"}) {
    const auto read = Read(sql);
    Outcome first = Call(stub(), read);
    ASSERT_TRUE(first.status.ok()) << first.status.error_message();
    EXPECT_EQ(first.cache, v1::BYPASS) << sql;
    EXPECT_EQ(Call(stub(), read).cache, v1::BYPASS) << sql;
  }
}

TEST_F(QueryCacheTest, EntriesExpireAndStaleOnesAreServedWhileRefreshing) {
  const auto read = Read("SELECT name FROM items WHERE id = 2 /* ttl */", 300);
  EXPECT_EQ(Call(stub(), read).cache, v1::MISS);
  // Once the ttl passed it misses again (no stale window).
  EXPECT_TRUE(WaitFor([&] { return Call(stub(), read).cache == v1::MISS; }, absl::Seconds(10)));

  // A read whose value changes every time it runs, with a stale window.
  const auto clock = Read("SELECT 'v' || nextval('flight_seq') /* swr clock */", 300, 60000);
  Outcome first = Call(stub(), clock);
  ASSERT_EQ(first.cache, v1::MISS);
  Outcome stale;
  ASSERT_TRUE(WaitFor(
      [&] {
        stale = Call(stub(), clock);
        return stale.cache == v1::STALE;
      },
      absl::Seconds(10)));
  EXPECT_EQ(stale.first, first.first) << "a stale read serves the old value";
  // The background refresh replaces it with a fresh one.
  Outcome fresh;
  ASSERT_TRUE(WaitFor(
      [&] {
        fresh = Call(stub(), clock);
        return fresh.cache == v1::HIT && fresh.first != first.first;
      },
      absl::Seconds(10)));
}

TEST_F(QueryCacheTest, WriteThroughQueryInvalidatesBeforeItsReply) {
  const auto read = Read("SELECT name FROM item_names ORDER BY name LIMIT 1 /* view */");
  EXPECT_EQ(Call(stub(), read).first, "one");
  EXPECT_EQ(Call(stub(), read).cache, v1::HIT);
  ASSERT_TRUE(Write(stub(), "UPDATE items SET name = 'aaa' WHERE id = 2").status.ok());
  // No waiting: the write's reply came after its invalidation.
  Outcome after = Call(stub(), read);
  EXPECT_EQ(after.cache, v1::MISS);
  EXPECT_EQ(after.first, "aaa") << "the view's base table was invalidated";
}

TEST_F(QueryCacheTest, CommittedWritesOutsidePoolsideInvalidateRolledBackOnesDoNot) {
  const auto items = Read("SELECT name FROM items WHERE id = 1 /* external */");
  const auto other = Read("SELECT v FROM other WHERE id = 1 /* external */");
  EXPECT_EQ(Call(stub(), items).first, "one");
  EXPECT_EQ(Call(stub(), other).first, "10");
  ASSERT_EQ(Call(stub(), items).cache, v1::HIT);
  ASSERT_EQ(Call(stub(), other).cache, v1::HIT);

  PostgresCluster& pg = SharedPostgres();
  // Rolled back: no notification, the entry stays.
  ASSERT_TRUE(
      pg.Exec(kDb, "BEGIN; UPDATE items SET name = 'rolled back' WHERE id = 1; ROLLBACK").ok());
  // Committed afterwards on another table: once its invalidation is seen,
  // everything notified before it has been processed too.
  ASSERT_TRUE(pg.Exec(kDb, "UPDATE other SET v = 11 WHERE id = 1").ok());
  EXPECT_TRUE(WaitFor([&] { return Call(stub(), other).first == "11"; }, absl::Seconds(10)));
  Outcome kept = Call(stub(), items);
  EXPECT_EQ(kept.cache, v1::HIT);
  EXPECT_EQ(kept.first, "one");

  // Committed by a plain client: the cached read changes.
  ASSERT_TRUE(pg.Exec(kDb, "UPDATE items SET name = 'psql' WHERE id = 1").ok());
  EXPECT_TRUE(WaitFor([&] { return Call(stub(), items).first == "psql"; }, absl::Seconds(10)));
}

TEST_F(QueryCacheTest, WriteThroughOneReplicaIsSeenByAnother) {
  Replica b;
  absl::Status s = StartReplica(SharedPostgres(), &b);
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_TRUE(CacheReady(*b.stub));
  // B's first flush may still be echoed to its near cache.
  s = Quiesce(SharedPostgres(), b);
  ASSERT_TRUE(s.ok()) << s;
  const auto read = Read("SELECT name FROM items WHERE id = 1 /* replicas */");
  EXPECT_EQ(Call(*b.stub, read).first, "one");
  ASSERT_EQ(Call(*b.stub, read).cache, v1::HIT);
  ASSERT_TRUE(Write(stub(), "UPDATE items SET name = 'from A' WHERE id = 1").status.ok());
  EXPECT_TRUE(WaitFor([&] { return Call(*b.stub, read).first == "from A"; }, absl::Seconds(10)));
  // The read that first saw the write may have filled the near cache before
  // B's listener was done with the write (its last near-cache invalidation
  // and the sidecar's echo then rightly remove that fill), and its sidecar
  // fill is sent after its reply: once B is done, the new value is cached
  // again.
  s = Quiesce(SharedPostgres(), b);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(Call(*b.stub, read).first, "from A");
  EXPECT_EQ(Call(*b.stub, read).cache, v1::HIT);
}

TEST_F(QueryCacheTest, AFillThatRacedACommittedWriteIsNotStored) {
  PostgresCluster& pg = SharedPostgres();
  PgSession holder(pg.Dsn(kDb));
  ASSERT_TRUE(holder.ok());
  ASSERT_EQ(holder.Exec("SELECT pg_advisory_lock(4242)"), "");
  // The read takes its snapshot, then waits for the lock the test holds.
  const auto slow = Read(
      "SELECT i.name FROM items i, (SELECT pg_advisory_xact_lock_shared(4242)) l "
      "WHERE i.id = 1 /* race */");
  Outcome slow_result;
  std::thread reader([&] { slow_result = Call(stub(), slow, absl::Seconds(30)); });
  ASSERT_TRUE(WaitFor(
      [&] {
        return pg.QueryValue(kDb,
                             "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                             "'Lock' AND query LIKE '%race%' AND query NOT LIKE '%EXPLAIN%'")
                   .value_or("0") == "1";
      },
      absl::Seconds(10)))
      << "the slow read never started";
  const uint64_t rejected_before = a_->sidecar.Stats().sets_rejected();
  // A write commits while the read is running, and its invalidation lands.
  const uint64_t invalidations_before = a_->sidecar.Stats().invalidations();
  ASSERT_TRUE(pg.Exec(kDb, "UPDATE items SET name = 'new' WHERE id = 1").ok());
  ASSERT_TRUE(WaitFor([&] { return a_->sidecar.Stats().invalidations() > invalidations_before; },
                      absl::Seconds(10)));
  ASSERT_EQ(holder.Exec("SELECT pg_advisory_unlock(4242)"), "");
  reader.join();
  ASSERT_TRUE(slow_result.status.ok()) << slow_result.status.error_message();
  EXPECT_EQ(slow_result.first, "one") << "the read's snapshot predates the write";
  EXPECT_EQ(slow_result.cache, v1::MISS);
  // Its fill was refused; the next read sees the write.
  EXPECT_TRUE(WaitFor([&] { return a_->sidecar.Stats().sets_rejected() > rejected_before; },
                      absl::Seconds(10)));
  Outcome next = Call(stub(), slow);
  EXPECT_EQ(next.cache, v1::MISS);
  EXPECT_EQ(next.first, "new");
}

constexpr char kCoalesced[] = "poolside_query_cache_coalesced_total";

TEST_F(QueryCacheTest, ConcurrentIdenticalMissesRunTheStatementOnce) {
  PostgresCluster& pg = SharedPostgres();
  PgSession holder(pg.Dsn(kDb));
  ASSERT_TRUE(holder.ok());
  // Each execution bumps the sequence; the lock keeps the first one running
  // until all callers have missed. The statement's tables are learned first
  // (with another parameter), so that the callers only wait on the cache.
  v1::ExecuteRequest read = Read(
      "SELECT nextval('flight_seq') AS n FROM counters c, "
      "(SELECT pg_advisory_xact_lock_shared(4343)) l WHERE c.id = $1 /* flight */");
  read.add_params()->set_int64_value(2);  // no such row: nothing consumed
  ASSERT_TRUE(Call(stub(), read).status.ok());
  ASSERT_EQ(holder.Exec("SELECT pg_advisory_lock(4343)"), "");
  read.mutable_params(0)->set_int64_value(1);
  const std::string before = *pg.QueryValue(kDb, "SELECT last_value FROM flight_seq");
  const uint64_t misses_before = a_->sidecar.Stats().misses();
  absl::StatusOr<double> coalesced_before = ScrapeValue(*a_, kCoalesced);
  ASSERT_TRUE(coalesced_before.ok()) << coalesced_before.status();
  constexpr int kCallers = 50;
  std::vector<Outcome> results(kCallers);
  std::vector<std::thread> callers;
  for (int i = 0; i < kCallers; ++i) {
    callers.emplace_back([&, i] { results[i] = Call(stub(), read, absl::Seconds(60)); });
  }
  EXPECT_TRUE(WaitFor([&] { return a_->sidecar.Stats().misses() >= misses_before + kCallers; },
                      absl::Seconds(30)))
      << "not every caller reached the cache";
  // The sidecar answered every miss; the replica has handled the answers
  // once all but the first caller joined its flight.
  EXPECT_TRUE(WaitFor(
      [&] {
        absl::StatusOr<double> now = ScrapeValue(*a_, kCoalesced);
        return now.ok() && *now >= *coalesced_before + kCallers - 1;
      },
      absl::Seconds(30)))
      << "not every caller joined the flight";
  EXPECT_EQ(holder.Exec("SELECT pg_advisory_unlock(4343)"), "");
  for (std::thread& t : callers) t.join();
  const std::string after = *pg.QueryValue(kDb, "SELECT last_value FROM flight_seq");
  EXPECT_EQ(std::stoll(after) - std::stoll(before), 1) << "the statement ran more than once";
  for (const Outcome& o : results) {
    EXPECT_TRUE(o.status.ok()) << o.status.error_message();
    EXPECT_EQ(o.cache, v1::MISS);
    EXPECT_EQ(o.first, results[0].first);
  }
}

TEST_F(QueryCacheTest, KilledSidecarFailsNoCallAndCachingResumes) {
  Replica r;
  absl::Status s = StartReplica(SharedPostgres(), &r);
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_TRUE(CacheReady(*r.stub));
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0}, calls{0};
  absl::Mutex mu;
  std::string first_failure;
  std::vector<std::thread> load;
  for (int t = 0; t < 4; ++t) {
    load.emplace_back([&, t] {
      const auto read =
          Read(absl::StrCat("SELECT name FROM items WHERE id = ", 1 + t % 2, " /* load */"));
      while (!stop.load()) {
        Outcome o = Call(*r.stub, read, absl::Seconds(10));
        calls.fetch_add(1);
        if (!o.status.ok() || o.first.empty()) {
          failures.fetch_add(1);
          absl::MutexLock lock(&mu);
          if (first_failure.empty()) first_failure = o.status.error_message();
        }
      }
    });
  }
  ASSERT_TRUE(WaitFor([&] { return calls.load() > 200; }, absl::Seconds(30)));
  ASSERT_TRUE(r.sidecar.process->Signal(SIGKILL).ok());
  ASSERT_TRUE(r.sidecar.process->Wait(absl::Seconds(10)).ok());
  const int at_kill = calls.load();
  ASSERT_TRUE(WaitFor([&] { return calls.load() > at_kill + 200; }, absl::Seconds(30)))
      << "calls stopped while the sidecar was down";
  s = r.sidecar.Start();  // same socket path
  ASSERT_TRUE(s.ok()) << s;
  const auto probe = Read("SELECT name FROM items WHERE id = 1 /* load */");
  EXPECT_TRUE(WaitFor([&] { return Call(*r.stub, probe).cache == v1::HIT; }, absl::Seconds(30)))
      << "caching did not resume after the sidecar restarted";
  stop.store(true);
  for (std::thread& t : load) t.join();
  EXPECT_EQ(failures.load(), 0) << "first failure: " << first_failure;
  // Hits may all come from the near cache: the new sidecar shows it is used
  // again by a read it has never seen, looked up there and then filled there.
  const uint64_t lookups = r.sidecar.Lookups();
  const uint64_t sets = r.sidecar.Stats().sets();
  Outcome fresh = Call(*r.stub, Read("SELECT name FROM items WHERE id = 2 /* after restart */"));
  ASSERT_TRUE(fresh.status.ok()) << fresh.status.error_message();
  EXPECT_EQ(fresh.cache, v1::MISS);
  EXPECT_EQ(fresh.first, "two");
  EXPECT_GT(r.sidecar.Lookups(), lookups) << "the new sidecar was not asked";
  // The fill is sent after the reply.
  EXPECT_TRUE(WaitFor([&] { return r.sidecar.Stats().sets() > sets; }, absl::Seconds(10)))
      << "the new sidecar stored no fill";
}

// Waits until `read` is a HIT that took no sidecar lookup (the near cache
// serves once its watch of the sidecar is up).
bool ServedFromNearCache(v1::QueryService::Stub& stub, CacheSidecar& sidecar,
                         const v1::ExecuteRequest& read) {
  return WaitFor(
      [&] {
        const uint64_t before = sidecar.Lookups();
        const bool hit = Call(stub, read).cache == v1::HIT;
        return hit && sidecar.Lookups() == before;
      },
      absl::Seconds(20));
}

TEST_F(QueryCacheTest, RepeatedReadsAreServedInProcessWithoutTheSidecar) {
  v1::ExecuteRequest read = Read("SELECT name FROM items WHERE id = $1 /* near */");
  read.add_params()->set_int64_value(2);
  EXPECT_EQ(Call(stub(), read).first, "two");
  ASSERT_TRUE(ServedFromNearCache(stub(), a_->sidecar, read));
  const uint64_t lookups = a_->sidecar.Lookups();
  for (int i = 0; i < 50; ++i) {
    Outcome o = Call(stub(), read);
    ASSERT_TRUE(o.status.ok()) << o.status.error_message();
    EXPECT_EQ(o.cache, v1::HIT);
    EXPECT_EQ(o.first, "two");
  }
  EXPECT_EQ(a_->sidecar.Lookups(), lookups) << "near-cache hits must not call the sidecar";
  // Other parameters: another entry.
  read.mutable_params(0)->set_int64_value(1);
  EXPECT_EQ(Call(stub(), read).cache, v1::MISS);
}

// Query and its sidecar client are served by one queue thread
// (docs/design.md, Threading). One use of gRPC's callback API anywhere in the process (a
// callback service, a callback client call) would start its polling threads
// again, which gRPC 1.51 names "nexting_thread", and with them the hand-offs
// that queue thread exists to avoid. Checked after hits, misses, a write and
// the sidecar's invalidations have all been through the process.
TEST_F(QueryCacheTest, NoGrpcCallbackPollersRunInTheQueryServer) {
  const auto read = Read("SELECT name FROM items WHERE id = 2 /* pollers */");
  EXPECT_TRUE(Call(stub(), read).status.ok());
  EXPECT_EQ(Call(stub(), read).cache, v1::HIT);
  Outcome write = Call(stub(), Read("UPDATE items SET name = 'dos' WHERE id = 2"));
  ASSERT_TRUE(write.status.ok()) << write.status.error_message();
  EXPECT_EQ(Call(stub(), read).first, "dos");
  const std::string tasks = absl::StrCat("/proc/", a_->process->pid(), "/task");
  std::vector<std::string> names;
  for (const auto& task : std::filesystem::directory_iterator(tasks)) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    if (std::getline(comm, name)) names.push_back(name);
  }
  ASSERT_GT(names.size(), 1u) << "cannot read the threads of " << tasks;
  for (const std::string& name : names) {
    EXPECT_NE(name, "nexting_thread") << "query_server runs a gRPC callback-API poller";
  }
}

TEST_F(QueryCacheTest, InvalidationsSentStraightToTheSidecarReachTheNearCache) {
  const v1::ExecuteRequest items = Read("SELECT name FROM items WHERE id = 1 /* direct */");
  v1::ExecuteRequest tagged = Read("SELECT v FROM other WHERE id = 1 /* direct */");
  tagged.mutable_cache()->add_tags("report:7");
  const v1::ExecuteRequest prefixed = Read("SELECT name FROM items WHERE id = 2 /* direct */");
  const std::vector<const v1::ExecuteRequest*> reads = {&items, &tagged, &prefixed};
  for (const v1::ExecuteRequest* r : reads) {
    ASSERT_TRUE(Call(stub(), *r).status.ok());
    ASSERT_TRUE(ServedFromNearCache(stub(), a_->sidecar, *r)) << r->sql();
  }
  // As `poolside cache invalidate --tag T` does: by a table's tag, by an
  // explicit tag, by a key prefix (all keys of reads without access scope).
  ASSERT_TRUE(a_->sidecar.Invalidate({absl::StrCat("t:", kDb, ":public.items")}).ok());
  EXPECT_TRUE(WaitFor([&] { return Call(stub(), items).cache == v1::MISS; }, absl::Seconds(10)));
  ASSERT_TRUE(a_->sidecar.Invalidate({"report:7"}).ok());
  EXPECT_TRUE(WaitFor([&] { return Call(stub(), tagged).cache == v1::MISS; }, absl::Seconds(10)));
  ASSERT_TRUE(ServedFromNearCache(stub(), a_->sidecar, prefixed));
  ASSERT_TRUE(a_->sidecar.Invalidate({}, {absl::StrCat("q1|", kDb, "|")}).ok());
  EXPECT_TRUE(WaitFor([&] { return Call(stub(), prefixed).cache == v1::MISS; }, absl::Seconds(10)));
}

TEST_F(QueryCacheTest, ARestartedSidecarEmptiesTheNearCache) {
  Replica r;
  absl::Status s = StartReplica(SharedPostgres(), &r);
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_TRUE(CacheReady(*r.stub));
  const auto read = Read("SELECT name FROM items WHERE id = 1 /* restart */");
  const auto probe = Read("SELECT name FROM items WHERE id = 2 /* restart */");
  ASSERT_EQ(Call(*r.stub, read).first, "one");
  ASSERT_TRUE(ServedFromNearCache(*r.stub, r.sidecar, read));
  ASSERT_TRUE(r.sidecar.process->Signal(SIGKILL).ok());
  ASSERT_TRUE(r.sidecar.process->Wait(absl::Seconds(10)).ok());
  // Down: no call fails, and the near cache does not serve (what the sidecar
  // applies while the watch is down is not seen).
  EXPECT_TRUE(WaitFor(
      [&] {
        Outcome o = Call(*r.stub, read);
        EXPECT_TRUE(o.status.ok()) << o.status.error_message();
        return o.cache == v1::BYPASS;
      },
      absl::Seconds(10)));
  s = r.sidecar.Start();  // same socket path
  ASSERT_TRUE(s.ok()) << s;
  // Once another read is served in process, the watch is back...
  ASSERT_TRUE(ServedFromNearCache(*r.stub, r.sidecar, probe));
  // ...and what the near cache held before it is gone.
  Outcome o = Call(*r.stub, read);
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  EXPECT_EQ(o.cache, v1::MISS) << "the near cache was not emptied when its watch came back";
  EXPECT_EQ(o.first, "one");
}

}  // namespace
}  // namespace poolside::testing
