// The cache's invalidation from the WAL, through real query_server,
// cache_server and ingest_server binaries on a real PostgreSQL with
// wal_level=logical (docs/cache.md):
//  - writes through query, ingest, a plain client, COPY and TRUNCATE
//    invalidate exactly what they changed: other rows' key lookups stay
//    cached, table-level reads go; a rolled-back write invalidates nothing;
//  - an UPDATE of the key drops the old key's and the new key's lookups;
//    tokens no stream reaches (past any WAL) read the database;
//  - a history checker: writers on both replicas and a plain client
//    increment counters and ingest inserts rows, readers on both replicas
//    pass the latest token they saw, and no read returns a value older than
//    a write it was given the token of (nor older than the replica's own
//    acknowledged write);
//  - a commit decoded before it is visible (held by a synchronous standby
//    that never answers) is invalidated only once visible;
//  - a replica's own write, read back while the relay is held, stays cached
//    when the relay delivers it; its cascade into another cached table, a
//    commit its snapshot did not see and a later plain write still go;
//  - the holder of the replication slot SIGKILLed: the other replica takes
//    over within a bound, and nothing stale is served meanwhile or after;
//  - the stream's connection terminated and PostgreSQL restarted under load:
//    reads bypass until resubscribed and flushed, nothing stale afterwards;
//  - once every replica stopped, no replication slot is left;
//  - a server without wal_level=logical: query_server refuses to start
//    (walUnavailable "fail"), or falls back to triggers ("trigger").
// Reads are judged by their values, never by timing: a read may always
// bypass the cache, it may never be stale.

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/cache.grpc.pb.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/ingest.grpc.pb.h"
#include "proto/poolside/v1/query.grpc.pb.h"
#include "tests/fixtures/http_get.h"
#include "tests/fixtures/pg_session.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/values.h"

namespace poolside::testing {
namespace {

constexpr char kDb[] = "wc";
constexpr int kRows = 40;                            // rows (id 1..kRows)
constexpr int kCounters = 16;                        // counters (id 1..kCounters)
constexpr int64_t kIngestedIds = 100000;             // rows ingest inserts: above this
constexpr absl::Duration kWait = absl::Seconds(30);  // only reached when something is broken
// How long a holder's death may leave the database without a stream.
constexpr absl::Duration kTakeoverBound = absl::Seconds(10);

// Commits flush the WAL at once (the shared fixture's asynchronous commit
// would leave decoding to wait for the WAL writer); "local": a session that
// asks for "on" waits for synchronous_standby_names, the others do not.
// No autovacuum: its VACUUM or ANALYZE of a table these cases write makes
// PostgreSQL describe the table again in the stream, which drops all of its
// entries (docs/cache.md); the cases check what a write drops by key.
PostgresCluster& Cluster() {
  static PostgresCluster* pg = [] {
    testing::PostgresOptions o;
    o.extra_settings = {"synchronous_commit=local", "autovacuum=off"};
    auto c = PostgresCluster::Start(o);
    if (!c.ok()) {
      std::cerr << "cannot start PostgreSQL: " << c.status() << "\n";
      std::abort();
    }
    return c->release();
  }();
  return *pg;
}

struct Replica {
  std::string name;
  Sidecar sidecar;
  std::unique_ptr<ServiceProcess> process;
  std::unique_ptr<v1::QueryService::Stub> stub;
  int metrics_port = 0;

  // Starts its query_server (its sidecar once).
  absl::Status Start(PostgresCluster& pg) {
    if (sidecar.process == nullptr) {
      if (absl::Status s = sidecar.Start(); !s.ok()) return s;
    }
    v1::QueryServiceConfig config;
    v1::DatabaseConfig* db = AddDatabase(&config, kDb, pg.Dsn(kDb));
    db->mutable_pool()->set_max_size(8);
    db->mutable_pool()->set_min_idle(1);
    v1::QueryCacheConfig* cache = config.mutable_cache();
    cache->set_target(absl::StrCat("unix:", sidecar.socket));
    cache->set_call_timeout_ms(1000);
    cache->mutable_near()->set_max_ttl_ms(60000);
    AddTables(cache, kDb, {"rows", "other", "counters", "parents", "children"});
    v1::WalInvalidationConfig* wal = cache->mutable_wal();
    // Heartbeats far apart, tokenWaitMs at its default (100): a read whose
    // token no batch covers reaches it in time only through a fence.
    wal->set_heartbeat_ms(1000);
    wal->set_max_lag_ms(3000);
    wal->set_election_retry_ms(200);
    auto started = StartWithStub<v1::QueryService>("services/query/query_server", config,
                                                   absl::StrCat("query_server_", name));
    if (!started.ok()) return started.status();
    process = std::move(started->process);
    metrics_port = started->metrics_port;
    stub = std::move(started->stub);
    return absl::OkStatus();
  }

  // A series of this replica's /metrics, e.g.
  // `poolside_query_cache_wal_holder{database="wc"}`; nullopt if absent.
  std::optional<double> Metric(absl::string_view series) const {
    return testing::MetricValue(metrics_port, series);
  }
  // What the cache did with reads, for the log.
  std::string Summary() const {
    std::string out = name;
    for (const char* outcome : {"hit", "miss", "bypass"}) {
      absl::StrAppend(
          &out, " ", outcome, "=",
          Metric(absl::StrCat("poolside_query_cache_requests_total{outcome=\"", outcome, "\"}"))
              .value_or(0));
    }
    for (const char* reason : {"stream", "lag", "token", "plan", "sidecar", "unwatched"}) {
      absl::StrAppend(&out, " bypass_", reason, "=", Bypassed(reason));
    }
    absl::StrAppend(&out, " flushes=", Flushes(), " streams=", Streams(),
                    " token_waits_reached=", TokenWaits("reached"),
                    " token_waits_timeout=", TokenWaits("timeout"), " fences=", Fences("committed"),
                    " fences_failed=", Fences("failed"));
    return out;
  }
  // Every commit before this position is invalidated here.
  double Applied() const {
    return Metric("poolside_query_cache_wal_applied_lsn{database=\"wc\"}").value_or(0);
  }
  // Relayed changes not applied again: this replica's own writes had.
  double OwnWriteSkips() const {
    return Metric("poolside_query_cache_wal_own_write_skips_total{database=\"wc\"}").value_or(0);
  }
  bool Holder() const {
    return Metric("poolside_query_cache_wal_holder{database=\"wc\"}").value_or(0) == 1;
  }
  bool Ready() const {
    return Metric("poolside_query_cache_invalidation_ready{database=\"wc\"}").value_or(0) == 1;
  }
  double Streams() const {
    return Metric("poolside_query_cache_wal_streams_total{database=\"wc\"}").value_or(0);
  }
  // Flushes of the database's entries (subscriptions, new streams).
  double Flushes() const {
    return Metric("poolside_query_cache_invalidations_total{source=\"flush\"}").value_or(0);
  }
  double Bypassed(absl::string_view reason) const {
    return Metric(absl::StrCat("poolside_query_cache_bypass_total{reason=\"", reason, "\"}"))
        .value_or(0);
  }
  // Reads that waited for their min_lsn: `result` "reached" or "timeout".
  double TokenWaits(absl::string_view result) const {
    return Metric(absl::StrCat("poolside_query_cache_token_waits_total{result=\"", result, "\"}"))
        .value_or(0);
  }
  // Token fences this replica ran: `result` "committed" or "failed".
  double Fences(absl::string_view result) const {
    return Metric(
               absl::StrCat("poolside_query_cache_wal_token_fences_total{database=\"wc\",result=\"",
                            result, "\"}"))
        .value_or(0);
  }
};

struct Result {
  grpc::Status status;
  v1::CacheOutcome cache = v1::CACHE_OUTCOME_UNSPECIFIED;
  v1::ResultSource source = v1::RESULT_SOURCE_UNSPECIFIED;
  uint64_t lsn = 0;
  uint64_t commit_lsn = 0;
  bool has_row = false;
  int64_t value = 0;  // first column of the first row
};

Result Call(v1::QueryService::Stub& stub, const std::string& sql, std::vector<int64_t> params,
            bool cached, uint64_t min_lsn = 0, absl::Duration timeout = absl::Seconds(20)) {
  v1::ExecuteRequest request;
  request.set_database(kDb);
  request.set_sql(sql);
  for (int64_t p : params) request.add_params()->set_int64_value(p);
  if (cached) request.mutable_cache()->set_ttl_ms(60000);
  request.set_min_lsn(min_lsn);
  v1::ExecuteResponse response;
  Result out;
  out.status = CallExecute(stub, request, &response, "", timeout);
  out.cache = response.cache();
  out.source = response.source();
  out.lsn = response.lsn();
  out.commit_lsn = response.commit_lsn();
  if (const v1::Value* v = FirstValue(response)) {
    out.has_row = true;
    if (v->has_int64_value()) {
      out.value = v->int64_value();
    } else if (v->has_numeric_value()) {
      absl::SimpleAtoi(v->numeric_value(), &out.value);
    } else if (v->has_text_value()) {
      absl::SimpleAtoi(v->text_value(), &out.value);
    }
  }
  return out;
}

// A write through ingest of the one row (id, v) into `rows`.
v1::WriteRequest RowWrite(int64_t id, int64_t v) {
  return IdRowsWrite(kDb, "rows", id, 1, "v", Int(v));
}

constexpr char kRowRead[] = "SELECT v FROM rows WHERE id = $1";
constexpr char kSumRead[] = "SELECT coalesce(sum(v), 0)::int8 FROM rows";
constexpr char kOtherRead[] = "SELECT v FROM other WHERE id = 1";
constexpr char kCounterRead[] = "SELECT n FROM counters WHERE id = $1";
constexpr char kCounterSum[] = "SELECT coalesce(sum(n), 0)::int8 FROM counters";

// Reads until the entry is cached (a fill is stored after the reply).
bool Cached(v1::QueryService::Stub& stub, const std::string& sql, std::vector<int64_t> params) {
  return WaitFor(
      [&] {
        Result r = Call(stub, sql, params, true);
        return r.status.ok() && r.cache == v1::HIT;
      },
      kWait);
}

class WalCacheTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    PostgresCluster& pg = Cluster();
    ASSERT_TRUE(pg.CreateDatabase(
                      kDb,
                      "CREATE TABLE IF NOT EXISTS rows (id int8 PRIMARY KEY, v int8 NOT NULL);"
                      "CREATE TABLE IF NOT EXISTS other (id int PRIMARY KEY, v int8 NOT NULL);"
                      "CREATE TABLE IF NOT EXISTS counters (id int PRIMARY KEY, n int8 NOT "
                      "NULL);"
                      "CREATE TABLE IF NOT EXISTS uncached (v int8);"
                      "CREATE TABLE IF NOT EXISTS parents (id int PRIMARY KEY, v int8 NOT NULL);"
                      "CREATE TABLE IF NOT EXISTS children (id int PRIMARY KEY, parent int NOT "
                      "NULL REFERENCES parents ON UPDATE CASCADE ON DELETE CASCADE)")
                    .ok());
    for (const char* name : {"a", "b"}) {
      auto r = std::make_unique<Replica>();
      r->name = name;
      absl::Status s = r->Start(pg);
      ASSERT_TRUE(s.ok()) << s;
      replicas_.push_back(std::move(r));
    }
    // The ingest service, writing `rows`.
    v1::IngestServiceConfig ingest;
    AddDatabase(&ingest, kDb, pg.Dsn(kDb));
    AddTables(&ingest, kDb, {"rows"});
    ingest.mutable_batch()->set_linger_ms(2);
    auto p = StartWithStub<v1::IngestService>("services/ingest/ingest_server", ingest);
    ASSERT_TRUE(p.ok()) << p.status();
    ingest_process_ = p->process.release();
    ingest_ = p->stub.release();
  }
  static void TearDownTestSuite() {
    replicas_.clear();
    delete ingest_;
    delete ingest_process_;
  }

  void SetUp() override {
    for (auto& r : replicas_) {
      ASSERT_TRUE(WaitFor([&] { return r->Ready(); }, kWait)) << r->name << " never got ready";
    }
  }

  Replica& A() { return *replicas_[0]; }
  Replica& B() { return *replicas_[1]; }

  // Resets the tables (as a plain client would); returns its token.
  uint64_t Reset() {
    PgSession s(Cluster().Dsn(kDb));
    EXPECT_TRUE(s.ok());
    std::string sql = "BEGIN; TRUNCATE rows, other, counters;";
    for (int i = 1; i <= kRows; ++i) absl::StrAppend(&sql, "INSERT INTO rows VALUES (", i, ", 0);");
    for (int i = 1; i <= kCounters; ++i) {
      absl::StrAppend(&sql, "INSERT INTO counters VALUES (", i, ", 0);");
    }
    absl::StrAppend(&sql, "INSERT INTO other VALUES (1, 100); COMMIT");
    EXPECT_EQ(s.Exec(sql), "");
    // After a TRUNCATE, a table's next change comes with its description
    // again, which the cache takes for possible DDL (the whole table goes):
    // have that happen now, before the tests cache anything.
    EXPECT_EQ(s.Exec("UPDATE rows SET v = v WHERE id = 1; UPDATE other SET v = v; "
                     "UPDATE counters SET n = n WHERE id = 1"),
              "");
    const uint64_t token = static_cast<uint64_t>(s.Token().value_or(0));
    // Applied by every running replica before a test caches anything: an
    // entry filled before the reset's invalidations arrive would go with
    // them (the tables described again drop whole).
    for (auto& r : replicas_) {
      EXPECT_TRUE(WaitFor(
          [&] {
            return r->Metric("poolside_query_cache_wal_applied_lsn{database=\"wc\"}").value_or(0) >=
                   static_cast<double>(token);
          },
          kWait))
          << r->name << " never applied the reset";
    }
    return token;
  }

  static std::vector<std::unique_ptr<Replica>> replicas_;
  static ServiceProcess* ingest_process_;
  static v1::IngestService::Stub* ingest_;
};

std::vector<std::unique_ptr<Replica>> WalCacheTest::replicas_;
ServiceProcess* WalCacheTest::ingest_process_ = nullptr;
v1::IngestService::Stub* WalCacheTest::ingest_ = nullptr;

TEST_F(WalCacheTest, EachKindOfWriteInvalidatesItsRowsAndTheTableLevelReadsOnly) {
  const uint64_t reset = Reset();
  Replica& a = A();
  // What A keeps: five rows by key (one not there yet), a table-level read
  // of `rows`, and a read of another table.
  const std::vector<int64_t> keys = {1, 2, 3, 4, kRows + 1, kRows + 2};
  ASSERT_TRUE(Call(*a.stub, kOtherRead, {}, true, reset).status.ok());
  for (int64_t id : keys) ASSERT_TRUE(Cached(*a.stub, kRowRead, {id})) << id;
  ASSERT_TRUE(Cached(*a.stub, kSumRead, {}));
  ASSERT_TRUE(Cached(*a.stub, kOtherRead, {}));

  // Each write changes one row; afterwards, with its token, A reads that
  // row anew, the table-level read anew, and every other entry from cache.
  struct Write {
    std::string how;
    int64_t id;
    int64_t value;                  // the row's value afterwards
    std::function<uint64_t()> run;  // the token
  };
  std::vector<Write> writes = {
      {"query (replica B)", 1, 1,
       [&] {
         Result r = Call(*B().stub, "UPDATE rows SET v = v + 1 WHERE id = $1", {1}, false);
         EXPECT_TRUE(r.status.ok()) << r.status.error_message();
         EXPECT_GT(r.commit_lsn, 0u);
         EXPECT_EQ(r.source, v1::DATABASE);
         return r.commit_lsn;
       }},
      {"a plain client", 2, 7,
       [&] {
         PgSession s(Cluster().Dsn(kDb));
         EXPECT_EQ(s.Exec("UPDATE rows SET v = 7 WHERE id = 2"), "");
         return static_cast<uint64_t>(s.Token().value_or(0));
       }},
      {"COPY", kRows + 1, 11,
       [&] {
         PgSession s(Cluster().Dsn(kDb));
         EXPECT_TRUE(
             s.Copy("COPY rows (id, v) FROM STDIN", absl::StrCat(kRows + 1, "\t11\n")).ok());
         return static_cast<uint64_t>(s.Token().value_or(0));
       }},
      {"ingest", kRows + 2, 13,
       [&] {
         const v1::WriteRequest w = RowWrite(kRows + 2, 13);
         grpc::ClientContext ctx;
         ctx.set_deadline(absl::ToChronoTime(absl::Now() + kWait));
         v1::WriteResponse response;
         grpc::Status s = ingest_->Write(&ctx, w, &response);
         EXPECT_TRUE(s.ok()) << s.error_message();
         EXPECT_EQ(response.rows_written(), 1u);
         EXPECT_GT(response.commit_lsn(), 0u) << "the acknowledgement carries its commit LSN";
         return response.commit_lsn();
       }},
  };
  // The relay's messages, as any session on the channel sees them: PostgreSQL
  // describes a table again (a Relation message: possibly DDL, so the whole
  // table goes) after anything invalidated the walsender's cache of it, which
  // the server does for reasons of its own (e.g. autovacuum). A round whose
  // write came with such a description may drop the other rows too.
  PgSession watch(Cluster().Dsn(kDb));
  ASSERT_EQ(watch.Exec("LISTEN poolside_invalidate"), "");
  bool described = false;
  auto drain = [&] {
    for (const std::string& payload : watch.Notifications()) {
      if (absl::StrContains(payload, "\n11:public.rows d")) described = true;
    }
  };
  int redescribed_rounds = 0;
  std::map<int64_t, int64_t> values = {{1, 0}, {2, 0}, {3, 0}, {4, 0}};
  for (const Write& w : writes) {
    SCOPED_TRACE(w.how);
    drain();
    described = false;
    const uint64_t token = w.run();
    ASSERT_GT(token, 0u);
    values[w.id] = w.value;
    Result changed = Call(*a.stub, kRowRead, {w.id}, true, token);
    ASSERT_TRUE(changed.status.ok()) << changed.status.error_message();
    EXPECT_NE(changed.cache, v1::HIT);
    EXPECT_EQ(changed.value, w.value);
    EXPECT_GE(changed.lsn, token) << "a result reflects at least its min_lsn";
    int64_t sum = 0;
    for (const auto& [id, v] : values) sum += v;
    Result total = Call(*a.stub, kSumRead, {}, true, token);
    EXPECT_EQ(total.cache, v1::MISS) << "a table-level read goes with any row";
    EXPECT_EQ(total.value, sum);
    std::vector<Result> kept_reads;
    for (const auto& [id, v] : values) {
      if (id == w.id) continue;
      Result kept = Call(*a.stub, kRowRead, {id}, true, token);
      EXPECT_EQ(kept.value, v) << id;
      EXPECT_GE(kept.lsn, token);
      kept_reads.push_back(kept);
    }
    bool all_kept = true;
    for (const Result& kept : kept_reads) all_kept = all_kept && kept.cache == v1::HIT;
    // The description, if any, came in the write's own batch, applied before
    // the reads; this session may get it a moment later.
    if (!all_kept && WaitFor(
                         [&] {
                           drain();
                           return described;
                         },
                         absl::Seconds(5))) {
      ++redescribed_rounds;
      std::cerr << w.how << ": the server described public.rows again; its entries went\n";
    } else {
      for (const Result& kept : kept_reads) {
        EXPECT_EQ(kept.cache, v1::HIT) << "a row that was not written; " << a.Summary();
        EXPECT_NE(kept.source, v1::DATABASE);
      }
    }
    Result other = Call(*a.stub, kOtherRead, {}, true, token);
    EXPECT_EQ(other.cache, v1::HIT) << "another table";
    EXPECT_EQ(other.value, 100);
    // Cached again for the next write's round.
    ASSERT_TRUE(Cached(*a.stub, kRowRead, {w.id}));
    ASSERT_TRUE(Cached(*a.stub, kSumRead, {}));
  }

  EXPECT_LT(redescribed_rounds, static_cast<int>(writes.size()))
      << "no round showed rows kept by key";

  // A rolled-back write invalidates nothing; a later commit to `other` shows
  // the stream went past it.
  PgSession s(Cluster().Dsn(kDb));
  ASSERT_EQ(s.Exec("BEGIN; UPDATE rows SET v = 999 WHERE id = 3; "
                   "INSERT INTO rows VALUES (500, 5); ROLLBACK"),
            "");
  ASSERT_EQ(s.Exec("UPDATE other SET v = 101 WHERE id = 1"), "");
  uint64_t token = static_cast<uint64_t>(*s.Token());
  Result other = Call(*a.stub, kOtherRead, {}, true, token);
  EXPECT_NE(other.cache, v1::HIT);
  EXPECT_EQ(other.value, 101);
  Result kept = Call(*a.stub, kRowRead, {3}, true, token);
  EXPECT_EQ(kept.cache, v1::HIT) << "the rolled-back update invalidated row 3";
  EXPECT_EQ(kept.value, 0);
  EXPECT_EQ(Call(*a.stub, kSumRead, {}, true, token).cache, v1::HIT)
      << "the rolled-back insert invalidated the table-level read";

  ASSERT_TRUE(Cached(*a.stub, kOtherRead, {}));

  // TRUNCATE: every entry of the table, key lookups included.
  ASSERT_EQ(s.Exec("TRUNCATE rows"), "");
  token = static_cast<uint64_t>(*s.Token());
  for (int64_t id : keys) {
    Result gone = Call(*a.stub, kRowRead, {id}, true, token);
    EXPECT_NE(gone.cache, v1::HIT) << id;
    EXPECT_FALSE(gone.has_row) << id;
  }
  EXPECT_EQ(Call(*a.stub, kSumRead, {}, true, token).value, 0);
  EXPECT_EQ(Call(*a.stub, kOtherRead, {}, true, token).cache, v1::HIT);

  // A replica's own write: read back without a token, at once.
  Result own = Call(*a.stub, "INSERT INTO rows VALUES (77, 77)", {}, false);
  ASSERT_TRUE(own.status.ok()) << own.status.error_message();
  EXPECT_EQ(Call(*a.stub, kRowRead, {77}, true).value, 77);
  // The cache was used by row: fills tagged with their key.
  EXPECT_GT(a.Metric("poolside_query_cache_keyed_fills_total").value_or(0), 0);
}

// What a replica's counters say about the token reads between two snapshots.
struct TokenCounters {
  double reached = 0, timeouts = 0, bypassed = 0, fences = 0, fence_failures = 0;
  static TokenCounters Of(const Replica& r) {
    return {r.TokenWaits("reached"), r.TokenWaits("timeout"), r.Bypassed("token"),
            r.Fences("committed"), r.Fences("failed")};
  }
};

// A token past every commit to a cached table: the caller wrote a table that
// is not cached (or nothing since). No batch covers it and heartbeats are a
// second apart, so only a fence brings the other replica's stream there
// within the default tokenWaitMs; it does, and the read is a hit.
TEST_F(WalCacheTest, ATokenPastTheLastCachedWriteIsReachedThroughAFence) {
  Reset();
  Replica& a = A();
  ASSERT_TRUE(Cached(*a.stub, kRowRead, {7}));
  const TokenCounters before = TokenCounters::Of(a);
  constexpr int kWrites = 5;
  for (int i = 0; i < kWrites; ++i) {
    Result w = Call(*B().stub, "INSERT INTO uncached VALUES ($1)", {i}, false);
    ASSERT_TRUE(w.status.ok()) << w.status.error_message();
    ASSERT_GT(w.commit_lsn, 0u);
    Result r = Call(*a.stub, kRowRead, {7}, true, w.commit_lsn);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.cache, v1::HIT) << "write " << i << ": " << a.Summary();
    EXPECT_EQ(r.value, 0);
    EXPECT_GE(r.lsn, w.commit_lsn) << "a result reflects at least its min_lsn";
  }
  // No write at all: a plain client's position now.
  PgSession s(Cluster().Dsn(kDb));
  const uint64_t token = static_cast<uint64_t>(*s.Token());
  Result r = Call(*a.stub, kRowRead, {7}, true, token);
  EXPECT_EQ(r.cache, v1::HIT) << a.Summary();
  EXPECT_GE(r.lsn, token);
  const TokenCounters after = TokenCounters::Of(a);
  // Each read waited and got there (unless a heartbeat happened to come
  // first); none gave up.
  EXPECT_GE(after.reached - before.reached, 1);
  EXPECT_LE(after.reached - before.reached, kWrites + 1);
  EXPECT_EQ(after.timeouts - before.timeouts, 0);
  EXPECT_EQ(after.bypassed - before.bypassed, 0);
  EXPECT_GE(after.fences - before.fences, 1);
  EXPECT_EQ(after.fence_failures - before.fence_failures, 0);
  // Nothing was left waiting: a read with the same token again answers at once.
  EXPECT_EQ(Call(*a.stub, kRowRead, {7}, true, token).cache, v1::HIT);
  EXPECT_EQ(TokenCounters::Of(a).reached, after.reached);
}

// The token's write changed a cached row: the read with it returns the new
// value (never the cached old one), through the cache, and then hits it.
TEST_F(WalCacheTest, ATokenOfAWriteToACachedRowReadsTheNewValue) {
  Reset();
  Replica& a = A();
  ASSERT_TRUE(Cached(*a.stub, kRowRead, {8}));
  const TokenCounters before = TokenCounters::Of(a);
  constexpr int kWrites = 4;
  for (int i = 1; i <= kWrites; ++i) {
    uint64_t token = 0;
    if (i % 2 == 1) {
      Result w = Call(*B().stub, "UPDATE rows SET v = $1 WHERE id = 8", {i}, false);
      ASSERT_TRUE(w.status.ok()) << w.status.error_message();
      token = w.commit_lsn;
    } else {
      PgSession s(Cluster().Dsn(kDb));
      ASSERT_EQ(s.Exec(absl::StrCat("UPDATE rows SET v = ", i, " WHERE id = 8")), "");
      token = static_cast<uint64_t>(*s.Token());
    }
    ASSERT_GT(token, 0u);
    Result r = Call(*a.stub, kRowRead, {8}, true, token);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.value, i) << "the cached old value was served";
    EXPECT_EQ(r.cache, v1::MISS) << "write " << i << ": " << a.Summary();
    EXPECT_GE(r.lsn, token);
    EXPECT_TRUE(Cached(*a.stub, kRowRead, {8}));
    Result again = Call(*a.stub, kRowRead, {8}, true, token);
    EXPECT_EQ(again.cache, v1::HIT);
    EXPECT_EQ(again.value, i);
  }
  // A read may find its write's batch applied already; none waited in vain.
  const TokenCounters after = TokenCounters::Of(a);
  EXPECT_LE(after.reached - before.reached, kWrites);
  EXPECT_EQ(after.timeouts - before.timeouts, 0);
  EXPECT_EQ(after.bypassed - before.bypassed, 0);
}

// An UPDATE of the key itself changes two rows' lookups: the old key's
// (now no row) and the new one's (until then no row, cached as such). Both
// go; a third row stays. Then tokens no server issued (past any WAL, or the
// largest there is): each waits its bounded while and reads the database,
// never the entry the cache holds.
TEST_F(WalCacheTest, AnUpdateOfTheKeyDropsBothKeysAndTokensNeverReachedReadTheDatabase) {
  Reset();
  Replica& a = A();
  const int64_t from = 9, to = kRows + 9;
  for (int64_t id : {from, to, int64_t{10}}) ASSERT_TRUE(Cached(*a.stub, kRowRead, {id})) << id;
  PgSession s(Cluster().Dsn(kDb));
  ASSERT_EQ(s.Exec(absl::StrCat("UPDATE rows SET id = ", to, ", v = 9 WHERE id = ", from)), "");
  const uint64_t token = static_cast<uint64_t>(s.Token().value_or(0));
  ASSERT_GT(token, 0u);
  Result old_key = Call(*a.stub, kRowRead, {from}, true, token);
  ASSERT_TRUE(old_key.status.ok()) << old_key.status.error_message();
  EXPECT_FALSE(old_key.has_row) << "the old key's entry outlived the update; " << a.Summary();
  EXPECT_NE(old_key.cache, v1::HIT);
  Result new_key = Call(*a.stub, kRowRead, {to}, true, token);
  ASSERT_TRUE(new_key.status.ok()) << new_key.status.error_message();
  EXPECT_TRUE(new_key.has_row) << "the new key's empty entry outlived the update";
  EXPECT_EQ(new_key.value, 9);
  EXPECT_NE(new_key.cache, v1::HIT);
  Result kept = Call(*a.stub, kRowRead, {10}, true, token);
  EXPECT_EQ(kept.value, 0);  // (a HIT unless PostgreSQL described the table again)

  // Row 10 cached; a plain client changes it without telling anyone its
  // token. Reads with tokens no stream reaches wait, then read the database.
  ASSERT_TRUE(Cached(*a.stub, kRowRead, {10}));
  const double bypassed = a.Bypassed("token");
  ASSERT_EQ(s.Exec("UPDATE rows SET v = 10 WHERE id = 10"), "");
  for (uint64_t never :
       {std::numeric_limits<uint64_t>::max(), token + (uint64_t{1} << 40), uint64_t{1} << 63}) {
    SCOPED_TRACE(never);
    Result r = Call(*a.stub, kRowRead, {10}, true, never);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.source, v1::DATABASE);
    EXPECT_NE(r.cache, v1::HIT);
    EXPECT_EQ(r.value, 10) << "a token never reached was served the cached row";
  }
  EXPECT_GE(a.Bypassed("token") - bypassed, 3);
}

// DDL changes what a statement reads without a change to any table it read:
// redefining a view drops the entries of the database on every replica (the
// event trigger's message, relayed) and the statements' learned plans, so
// the view's next fill is tagged with the table it reads now.
TEST_F(WalCacheTest, RedefiningAViewDropsWhatWasCachedThroughItOnEveryReplica) {
  Reset();
  PgSession s(Cluster().Dsn(kDb));
  ASSERT_EQ(s.Exec("DROP VIEW IF EXISTS shown; "
                   "CREATE VIEW shown AS SELECT v FROM rows WHERE id = 1"),
            "");
  constexpr char kShown[] = "SELECT v FROM shown";
  for (Replica* r : {&A(), &B()}) {
    ASSERT_TRUE(Cached(*r->stub, kShown, {})) << r->name;
    EXPECT_EQ(Call(*r->stub, kShown, {}, true).value, 0) << r->name;
  }
  ASSERT_EQ(s.Exec("CREATE OR REPLACE VIEW shown AS SELECT v FROM other WHERE id = 1"), "");
  const uint64_t redefined = static_cast<uint64_t>(s.Token().value_or(0));
  ASSERT_GT(redefined, 0u);
  for (Replica* r : {&A(), &B()}) {
    Result now = Call(*r->stub, kShown, {}, true, redefined);
    ASSERT_TRUE(now.status.ok()) << now.status.error_message();
    EXPECT_EQ(now.value, 100) << r->name << ": the view's old rows outlived its redefinition; "
                              << r->Summary();
  }
  // Learned anew: a write to `other` drops the view's entry.
  ASSERT_TRUE(Cached(*A().stub, kShown, {}));
  ASSERT_EQ(s.Exec("UPDATE other SET v = 101 WHERE id = 1"), "");
  const uint64_t written = static_cast<uint64_t>(s.Token().value_or(0));
  Result after = Call(*A().stub, kShown, {}, true, written);
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.value, 101) << "the view's entry kept the tables of its old definition; "
                              << A().Summary();
  ASSERT_EQ(s.Exec("DROP VIEW shown"), "");
}

// The counters every writer increments, and what readers may expect.
class History {
 public:
  explicit History(int rows) : known_(rows + 1) {}
  // A write acknowledged `value` for `id` with `token`.
  void Acknowledged(int id, int64_t value, uint64_t token, std::string by) {
    absl::MutexLock lock(&mu_);
    if (value > known_[id].value) {
      known_[id] = {value, std::max(known_[id].token, token), std::move(by)};
    }
    max_token_ = std::max(max_token_, token);
    ++writes_;
  }
  struct Known {
    int64_t value = 0;
    uint64_t token = 0;
    std::string by;  // who wrote it
  };
  Known Of(int id) {
    absl::MutexLock lock(&mu_);
    return known_[id];
  }
  // The sum of every acknowledged value, and a token covering all of them.
  Known Sum() {
    absl::MutexLock lock(&mu_);
    Known k{0, max_token_, "all"};
    for (const Known& v : known_) k.value += v.value;
    return k;
  }
  // An ingest acknowledgement: row `id` of `rows` holds `value` from `token` on.
  void Ingested(int64_t id, int64_t value, uint64_t token) {
    absl::MutexLock lock(&mu_);
    ingested_.push_back({id, value, token});
    max_token_ = std::max(max_token_, token);
    ++writes_;
  }
  struct Row {
    int64_t id = 0, value = 0;
    uint64_t token = 0;
  };
  std::optional<Row> AnyIngested(uint32_t random) {
    absl::MutexLock lock(&mu_);
    if (ingested_.empty()) return std::nullopt;
    return ingested_[random % ingested_.size()];
  }
  int64_t writes() {
    absl::MutexLock lock(&mu_);
    return writes_;
  }
  // An acknowledged write without a token (allowed only when the
  // connection failed right after its commit): it cannot be checked.
  void Untokened() {
    absl::MutexLock lock(&mu_);
    ++untokened_;
  }
  int untokened() {
    absl::MutexLock lock(&mu_);
    return untokened_;
  }
  void Stale(std::string what) {
    absl::MutexLock lock(&mu_);
    if (stale_.size() < 20) stale_.push_back(std::move(what));
    ++stale_count_;
  }
  int stale_count() {
    absl::MutexLock lock(&mu_);
    return stale_count_;
  }
  std::string stale() {
    absl::MutexLock lock(&mu_);
    return absl::StrJoin(stale_, "\n");
  }

 private:
  absl::Mutex mu_;
  std::vector<Known> known_ ABSL_GUARDED_BY(mu_);
  std::vector<Row> ingested_ ABSL_GUARDED_BY(mu_);
  uint64_t max_token_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t writes_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> stale_ ABSL_GUARDED_BY(mu_);
  int stale_count_ ABSL_GUARDED_BY(mu_) = 0;
  int untokened_ ABSL_GUARDED_BY(mu_) = 0;
};

// Writers and readers over `counters` (and rows of `rows` that ingest
// inserts) until stop(): see the file comment. Failed calls (a replica or
// the server going away) are no violations; a successful read older than
// what it was promised is.
class Load {
 public:
  Load(std::vector<Replica*> replicas, History* history, v1::IngestService::Stub* ingest)
      : history_(history) {
    for (size_t i = 0; i < replicas.size(); ++i) {
      Replica* r = replicas[i];
      threads_.emplace_back([this, r, i] { ReplicaWriter(*r, static_cast<int>(i)); });
      for (int k = 0; k < 2; ++k) {
        threads_.emplace_back([this, r, i, k] { Reader(*r, static_cast<int>(i * 2 + k)); });
      }
    }
    threads_.emplace_back([this] { PlainWriter(); });
    threads_.emplace_back([this, ingest] { IngestWriter(*ingest); });
  }
  ~Load() { Stop(); }
  void Stop() {
    stop_.store(true);
    for (std::thread& t : threads_) t.join();
    threads_.clear();
  }
  int64_t reads() const { return reads_.load(); }
  int64_t cached_reads() const { return cached_reads_.load(); }

 private:
  void ReplicaWriter(Replica& r, int seed) {
    std::mt19937 rng(seed);
    while (!stop_.load()) {
      const int id = 1 + static_cast<int>(rng() % kCounters);
      Result w = Call(*r.stub, "UPDATE counters SET n = n + 1 WHERE id = $1 RETURNING n", {id},
                      false, 0, absl::Seconds(5));
      if (!w.status.ok() || !w.has_row) continue;
      if (w.commit_lsn == 0) {
        history_->Untokened();
      } else {
        history_->Acknowledged(id, w.value, w.commit_lsn, r.name);
      }
      // Read-your-writes on the writing replica, without a token.
      Result back = Call(*r.stub, kCounterRead, {id}, true, 0, absl::Seconds(5));
      if (back.status.ok() && back.value < w.value) {
        history_->Stale(absl::StrCat(r.name, " read its own write of counter ", id, " = ", w.value,
                                     " back as ", back.value, " (", back.cache, ")"));
      }
    }
  }
  void PlainWriter() {
    std::mt19937 rng(99);
    std::unique_ptr<PgSession> s;
    while (!stop_.load()) {
      if (s == nullptr || !s->ok()) {
        s = std::make_unique<PgSession>(Cluster().Dsn(kDb) + " connect_timeout=2");
        if (!s->ok()) {
          absl::SleepFor(absl::Milliseconds(50));  // the server is restarting
          continue;
        }
      }
      const int id = 1 + static_cast<int>(rng() % kCounters);
      absl::StatusOr<int64_t> n =
          s->Int(absl::StrCat("UPDATE counters SET n = n + 1 WHERE id = ", id, " RETURNING n"));
      if (!n.ok()) {
        s.reset();
        continue;
      }
      absl::StatusOr<int64_t> token = s->Token();
      if (!token.ok()) {
        s.reset();
        continue;
      }
      history_->Acknowledged(id, *n, static_cast<uint64_t>(*token), "plain");
    }
  }
  // Inserts rows through ingest, each with a new key.
  void IngestWriter(v1::IngestService::Stub& ingest) {
    for (int64_t n = 1; !stop_.load(); ++n) {
      const int64_t id = kIngestedIds + n;
      const v1::WriteRequest w = RowWrite(id, n);
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
      v1::WriteResponse response;
      if (!ingest.Write(&ctx, w, &response).ok() || response.rows_written() != 1) continue;
      if (response.commit_lsn() == 0) {
        history_->Untokened();
        continue;
      }
      history_->Ingested(id, n, response.commit_lsn());
    }
  }
  void Reader(Replica& r, int seed) {
    std::mt19937 rng(1000 + seed);
    while (!stop_.load()) {
      if (rng() % 8 == 1) {
        if (std::optional<History::Row> want = history_->AnyIngested(rng())) {
          Result got = Call(*r.stub, kRowRead, {want->id}, true, want->token, absl::Seconds(5));
          if (!got.status.ok()) continue;
          reads_.fetch_add(1);
          if (got.cache == v1::HIT || got.cache == v1::STALE) cached_reads_.fetch_add(1);
          if (!got.has_row || got.value != want->value) {
            history_->Stale(absl::StrCat(r.name, ": ingested row ", want->id, " read as ",
                                         got.has_row ? absl::StrCat(got.value) : "missing",
                                         " with min_lsn ", want->token, " (outcome ", got.cache,
                                         ", source ", got.source, ")"));
          }
          continue;
        }
      }
      if (rng() % 8 == 0) {
        const History::Known want = history_->Sum();
        Result got = Call(*r.stub, kCounterSum, {}, true, want.token, absl::Seconds(5));
        Check(r, "sum", want, got);
        continue;
      }
      const int id = 1 + static_cast<int>(rng() % kCounters);
      const History::Known want = history_->Of(id);
      Result got = Call(*r.stub, kCounterRead, {id}, true, want.token, absl::Seconds(5));
      Check(r, absl::StrCat("counter ", id), want, got);
    }
  }
  void Check(Replica& r, const std::string& what, const History::Known& want, const Result& got) {
    if (!got.status.ok()) return;
    reads_.fetch_add(1);
    if (got.cache == v1::HIT || got.cache == v1::STALE) cached_reads_.fetch_add(1);
    if (got.value < want.value) {
      history_->Stale(absl::StrCat(r.name, ": ", what, " = ", got.value, " with min_lsn ",
                                   want.token, ", a write by ", want.by, " acknowledged ",
                                   want.value, " (outcome ", got.cache, ", source ", got.source,
                                   ", reflecting ", got.lsn, ")"));
    }
  }

  History* const history_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> reads_{0}, cached_reads_{0};
  std::vector<std::thread> threads_;
};

TEST_F(WalCacheTest, HistoryCheckerNoReadIsOlderThanAWriteWhoseTokenItCarries) {
  Reset();
  History history(kCounters);
  Load load({&A(), &B()}, &history, ingest_);
  // Until enough writes and cached reads to judge (writers can be much faster
  // than the readers' first reads, which learn their statements' plans), or
  // 20 s: then the checks below say which was missing.
  const absl::Time until = absl::Now() + absl::Seconds(20);
  ASSERT_TRUE(WaitFor(
      [&] {
        return (history.writes() >= 3000 && load.cached_reads() >= 50) || absl::Now() > until;
      },
      absl::Seconds(40)));
  load.Stop();
  EXPECT_EQ(history.stale_count(), 0) << history.stale();
  EXPECT_EQ(history.untokened(), 0) << "acknowledged writes without commit_lsn";
  EXPECT_GE(history.writes(), 1500) << "too few writes to judge";
  EXPECT_GT(load.cached_reads(), 0) << "the cache was not used: " << load.reads() << " reads";
  std::cerr << history.writes() << " writes, " << load.reads() << " reads, " << load.cached_reads()
            << " from cache\n";
  std::cerr << A().Summary() << "\n" << B().Summary() << "\n";
}

TEST_F(WalCacheTest, AKilledHolderIsReplacedAndNothingStaleIsServed) {
  Reset();
  ASSERT_TRUE(WaitFor([&] { return A().Holder() || B().Holder(); }, kWait));
  const bool a_holds = A().Holder();
  Replica& holder = a_holds ? A() : B();
  Replica& survivor = a_holds ? B() : A();
  const double streams = survivor.Streams();
  History history(kCounters);
  {
    // The survivor keeps reading and writing; a plain client writes too.
    Load load({&survivor}, &history, ingest_);
    ASSERT_TRUE(WaitFor([&] { return history.writes() > 200; }, kWait));
    ASSERT_TRUE(holder.process->Signal(SIGKILL).ok());
    const absl::Time killed = absl::Now();
    ASSERT_TRUE(holder.process->Wait(kWait).ok());
    // Taken over: the survivor holds the lock and applies its own stream
    // (which began with a flush of its entries).
    ASSERT_TRUE(WaitFor(
        [&] { return survivor.Holder() && survivor.Streams() > streams && survivor.Ready(); },
        kTakeoverBound))
        << "no takeover within " << kTakeoverBound;
    const absl::Duration took = absl::Now() - killed;
    std::cerr << "takeover after " << took << "\n";
    const int64_t at = history.writes();
    ASSERT_TRUE(WaitFor([&] { return history.writes() > at + 300; }, kWait));
  }
  EXPECT_EQ(history.stale_count(), 0) << history.stale();
  // Quiet now: without any token, the survivor serves what is committed.
  PgSession s(Cluster().Dsn(kDb));
  const uint64_t token = static_cast<uint64_t>(*s.Token());
  ASSERT_EQ(Call(*survivor.stub, kCounterRead, {1}, true, token).status.error_code(), grpc::OK);
  for (int id = 1; id <= kCounters; ++id) {
    const int64_t truth = *s.Int(absl::StrCat("SELECT n FROM counters WHERE id = ", id));
    Result got = Call(*survivor.stub, kCounterRead, {id}, true);
    EXPECT_EQ(got.value, truth) << "counter " << id << " (" << got.cache << ")";
  }
  // The killed replica comes back (its sidecar lived on) as a follower.
  ASSERT_TRUE(holder.Start(Cluster()).ok());
  ASSERT_TRUE(WaitFor([&] { return holder.Ready(); }, kWait));
  EXPECT_FALSE(holder.Holder());
}

TEST_F(WalCacheTest, CutStreamAndRestartedServerBypassUntilFlushedThenServeFresh) {
  Reset();
  History history(kCounters);
  const double streams_a = A().Streams(), streams_b = B().Streams();
  const double bypassed = A().Bypassed("stream") + B().Bypassed("stream");
  {
    Load load({&A(), &B()}, &history, ingest_);
    ASSERT_TRUE(WaitFor([&] { return history.writes() > 200; }, kWait));
    // The walsender of the slot: its stream ends; another begins.
    PgSession admin(Cluster().Dsn(kDb));
    ASSERT_EQ(admin.Exec("SELECT pg_terminate_backend(pid) FROM pg_stat_replication"), "");
    ASSERT_TRUE(WaitFor(
        [&] {
          return A().Streams() > streams_a && B().Streams() > streams_b && A().Ready() &&
                 B().Ready();
        },
        kWait));
    int64_t at = history.writes();
    ASSERT_TRUE(WaitFor([&] { return history.writes() > at + 200; }, kWait));
    // PostgreSQL itself: each listener subscribes again (and flushes).
    const double flushes_a = A().Flushes(), flushes_b = B().Flushes();
    ASSERT_TRUE(Cluster().Restart().ok());
    ASSERT_TRUE(WaitFor(
        [&] {
          return A().Flushes() > flushes_a && B().Flushes() > flushes_b && A().Ready() &&
                 B().Ready();
        },
        kWait))
        << "the replicas did not resubscribe after the restart";
    at = history.writes();
    ASSERT_TRUE(WaitFor([&] { return history.writes() > at + 300; }, kWait));
  }
  EXPECT_EQ(history.stale_count(), 0) << history.stale();
  EXPECT_GT(A().Bypassed("stream") + B().Bypassed("stream"), bypassed)
      << "reads bypassed the cache while no stream was up";
  PgSession s(Cluster().Dsn(kDb));
  for (Replica* r : {&A(), &B()}) {
    for (int id = 1; id <= kCounters; ++id) {
      const int64_t truth = *s.Int(absl::StrCat("SELECT n FROM counters WHERE id = ", id));
      EXPECT_EQ(Call(*r->stub, kCounterRead, {id}, true).value, truth)
          << r->name << " counter " << id;
    }
  }
}

// Sets synchronous_standby_names to a standby that never connects, so that a
// session with synchronous_commit=on commits (record flushed, decodable) but
// stays invisible until Release().
class AbsentStandby {
 public:
  AbsentStandby() : admin_(Cluster().Dsn(kDb)) {
    set_ = admin_.Exec("ALTER SYSTEM SET synchronous_standby_names = 'poolside_absent'") == "" &&
           admin_.Exec("SELECT pg_reload_conf()") == "" &&
           WaitFor([&] { return CommitsWait(); }, kWait);
  }
  ~AbsentStandby() {
    Release();
    for (std::thread& t : probes_) t.join();
  }
  bool set() const { return set_; }
  // Whether the backend `pid` comes, within kWait, to wait for this standby:
  // its commit is in the WAL and invisible until Release().
  bool Holds(int64_t pid) {
    return WaitFor([&] { return Waiting(pid); }, kWait);
  }
  // Releases the waiting commits (the setting is read again on reload).
  void Release() {
    if (released_) return;
    released_ = true;
    EXPECT_EQ(admin_.Exec("ALTER SYSTEM RESET synchronous_standby_names"), "");
    EXPECT_EQ(admin_.Exec("SELECT pg_reload_conf()"), "");
  }

 private:
  bool Waiting(int64_t pid) {
    return admin_
               .Int(absl::StrCat("SELECT count(*) FROM pg_stat_activity WHERE pid = ", pid,
                                 " AND wait_event = 'SyncRep'"))
               .value_or(0) == 1;
  }
  // A session's commit waits for the standby. A new session seeing the
  // setting is not enough: whether commits wait is the checkpointer's word,
  // which reads the setting on its own, later. A probe that waits is left
  // waiting until Release().
  bool CommitsWait() {
    auto probe = std::make_shared<PgSession>(Cluster().Dsn(kDb));
    const int64_t pid = probe->Int("SELECT pg_backend_pid()").value_or(0);
    if (pid == 0) return false;
    auto done = std::make_shared<std::atomic<bool>>(false);
    std::thread t([probe, done] {
      // A commit that wrote nothing does not wait: write a row of a
      // table nobody reads.
      (void)probe->Exec("SET synchronous_commit = on; INSERT INTO uncached VALUES (0)");
      done->store(true);
    });
    const bool waits =
        WaitFor([&] { return done->load() || Waiting(pid); }, kWait) && !done->load();
    if (!waits) {
      t.join();
      return false;
    }
    probes_.push_back(std::move(t));
    return true;
  }

  PgSession admin_;
  std::vector<std::thread> probes_;
  bool set_ = false;
  bool released_ = false;
};

// PostgreSQL flushes a commit record (the stream can decode it) before the
// committing backend leaves the proc array: a read in between still sees the
// old row. A replica that applied the invalidation and then read in that gap
// would keep the old row cached past the write; the holder relays a batch
// only once its transactions are visible.
TEST_F(WalCacheTest, ACommitDecodedBeforeItIsVisibleIsInvalidatedOnlyOnceVisible) {
  Reset();
  Replica& a = A();
  ASSERT_TRUE(Cached(*a.stub, kRowRead, {5}));
  ASSERT_TRUE(Cached(*a.stub, kRowRead, {6}));
  ASSERT_TRUE(WaitFor([&] { return A().Holder() || B().Holder(); }, kWait));
  Replica& holder = A().Holder() ? A() : B();
  const std::string retries_series =
      "poolside_query_cache_wal_visibility_retries_total{database=\"wc\"}";
  const double retries = holder.Metric(retries_series).value_or(0);

  PgSession writer(Cluster().Dsn(kDb));
  ASSERT_TRUE(writer.ok());
  const int64_t writer_pid = *writer.Int("SELECT pg_backend_pid()");
  ASSERT_EQ(writer.Exec("SET synchronous_commit = on"), "");
  std::atomic<bool> committed{false};
  uint64_t token = 0;
  std::thread write;
  {
    AbsentStandby standby;
    ASSERT_TRUE(standby.set());
    write = std::thread([&] {
      EXPECT_EQ(writer.Exec("UPDATE rows SET v = 555 WHERE id = 5"), "");
      token = static_cast<uint64_t>(writer.Token().value_or(0));
      committed.store(true);
    });
    // Committed in the WAL, waiting for the standby: invisible.
    EXPECT_TRUE(standby.Holds(writer_pid));
    PgSession admin(Cluster().Dsn(kDb));
    // Decoded: the walsender has read past it.
    const int64_t decoded = *admin.Token();
    EXPECT_TRUE(WaitFor(
        [&] {
          return admin
                     .Int(absl::StrCat("SELECT count(*) FROM pg_stat_replication WHERE "
                                       "(sent_lsn - '0/0'::pg_lsn) >= ",
                                       decoded))
                     .value_or(0) == 1;
        },
        kWait));
    EXPECT_TRUE(WaitFor([&] { return holder.Metric(retries_series).value_or(0) > retries; }, kWait))
        << "the holder relayed a batch whose transaction is not visible";
    // A read that asks for that position gets the old row (the write is not
    // acknowledged), from the database: the stream cannot reach it yet.
    Result during = Call(*a.stub, kRowRead, {5}, true, static_cast<uint64_t>(decoded));
    EXPECT_TRUE(during.status.ok()) << during.status.error_message();
    EXPECT_EQ(during.value, 0);
    EXPECT_EQ(during.source, v1::DATABASE);
    EXPECT_FALSE(committed.load());
    standby.Release();
    write.join();
  }
  ASSERT_TRUE(committed.load());
  ASSERT_GT(token, 0u);
  Result after = Call(*a.stub, kRowRead, {5}, true, token);
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.value, 555) << "the row read while the commit was invisible stayed cached";
  EXPECT_NE(after.cache, v1::HIT);
  // The held batch arrived late (reads bypassed meanwhile); once caught up,
  // the other row is still cached.
  ASSERT_TRUE(WaitFor([&] { return a.Ready(); }, kWait));
  // A token read may still bypass while the replica's applied position
  // catches up (a bounded wait, longer under load): the entry is judged by
  // the first answer that does not bypass (MISS if it went).
  Result kept;
  ASSERT_TRUE(WaitFor(
      [&] {
        kept = Call(*a.stub, kRowRead, {6}, true, token);
        return kept.status.ok() && kept.cache != v1::BYPASS;
      },
      kWait));
  EXPECT_EQ(kept.value, 0);
  EXPECT_EQ(kept.cache, v1::HIT) << "another row's entry went too";
}

// A replica invalidates its own write's tables at once, before the write is
// acknowledged, and the WAL relay delivers the same commit later. A read in
// between reflects the write; the relay's delivery must not drop what it
// filled. Everything else still goes: what the write changed in another
// cached table through a foreign key's cascade (the statement's plan never
// names it), a commit to the same table that the write's snapshot did not
// see finished, and a plain client's write afterwards.
//
// The relay is held back deterministically: a commit to a cached table
// waits for a synchronous standby that never answers (decoded, invisible),
// and the holder relays nothing past it until it is visible.
TEST_F(WalCacheTest, AnOwnWriteReadBackBeforeTheRelayDeliversItStaysCached) {
  Reset();
  Replica& a = A();
  ASSERT_TRUE(WaitFor([&] { return A().Holder() || B().Holder(); }, kWait));
  Replica& holder = A().Holder() ? A() : B();
  const std::string retries_series =
      "poolside_query_cache_wal_visibility_retries_total{database=\"wc\"}";
  constexpr char kParentRead[] = "SELECT v FROM parents WHERE id = $1";
  constexpr char kChildRead[] = "SELECT parent FROM children WHERE id = $1";
  // A table described again in the stream (possible DDL) drops whole,
  // whoever wrote: such an attempt shows nothing and is made again.
  PgSession watch(Cluster().Dsn(kDb));
  ASSERT_EQ(watch.Exec("LISTEN poolside_invalidate"), "");
  // The first answer that does not bypass (reads bypass while the replica
  // catches up after the hold).
  auto settled = [&](const char* sql, int64_t id, uint64_t token) {
    Result r;
    EXPECT_TRUE(WaitFor(
        [&] {
          r = Call(*a.stub, sql, {id}, true, token);
          return r.status.ok() && r.cache != v1::BYPASS;
        },
        kWait));
    return r;
  };

  bool conclusive = false;
  for (int attempt = 1; attempt <= 3 && !conclusive; ++attempt) {
    SCOPED_TRACE(absl::StrCat("attempt ", attempt));
    PgSession setup(Cluster().Dsn(kDb));
    ASSERT_EQ(setup.Exec("DELETE FROM children; DELETE FROM parents; "
                         "INSERT INTO parents VALUES (1, 10), (5, 50); "
                         "INSERT INTO children VALUES (1, 1)"),
              "");
    const uint64_t ready = static_cast<uint64_t>(*setup.Token());
    ASSERT_TRUE(WaitFor([&] { return a.Applied() >= static_cast<double>(ready); }, kWait));
    ASSERT_TRUE(WaitFor([&] { return a.Ready(); }, kWait));
    ASSERT_TRUE(Cached(*a.stub, kParentRead, {2}));  // no such row yet
    ASSERT_TRUE(Cached(*a.stub, kChildRead, {1}));
    (void)watch.Notifications();
    const double retries = holder.Metric(retries_series).value_or(0);
    const double skips = a.OwnWriteSkips();

    PgSession blocker(Cluster().Dsn(kDb));
    ASSERT_TRUE(blocker.ok());
    const int64_t blocker_pid = *blocker.Int("SELECT pg_backend_pid()");
    ASSERT_EQ(blocker.Exec("SET synchronous_commit = on"), "");
    Result own, refilled, again, unseen;
    std::thread held;
    {
      AbsentStandby standby;
      ASSERT_TRUE(standby.set());
      held = std::thread(
          [&] { EXPECT_EQ(blocker.Exec("UPDATE parents SET v = 900 WHERE id = 5"), ""); });
      EXPECT_TRUE(standby.Holds(blocker_pid));
      EXPECT_TRUE(
          WaitFor([&] { return holder.Metric(retries_series).value_or(0) > retries; }, kWait))
          << "the holder is not holding back its batch";
      // A's own write (its session does not wait for the standby): parent 1
      // becomes 2, and the cascade moves child 1 with it.
      own = Call(*a.stub, "UPDATE parents SET id = 2 WHERE id = 1", {}, false);
      // Read back at once: the write is acknowledged, the relay held.
      refilled = Call(*a.stub, kParentRead, {2}, true);
      again = Call(*a.stub, kParentRead, {2}, true);
      // Read after the own write, without the commit it did not see: this
      // entry must go when that commit is relayed, though its position is
      // below the own write's.
      unseen = Call(*a.stub, kParentRead, {5}, true);
      standby.Release();
      held.join();
    }
    ASSERT_TRUE(own.status.ok()) << own.status.error_message();
    ASSERT_GT(own.commit_lsn, 0u);
    EXPECT_EQ(refilled.value, 10);
    EXPECT_NE(refilled.cache, v1::HIT) << "the own write did not invalidate its table at once";
    EXPECT_EQ(again.value, 10);
    EXPECT_EQ(unseen.value, 50) << "an invisible commit was read";
    const uint64_t unseen_token = static_cast<uint64_t>(*blocker.Token());
    const double through = static_cast<double>(std::max(own.commit_lsn, unseen_token));
    ASSERT_TRUE(WaitFor([&] { return a.Applied() >= through; }, kWait))
        << "the held commits never arrived; " << a.Summary();
    ASSERT_TRUE(WaitFor([&] { return a.Ready(); }, kWait));

    // Whatever the attempt showed, nothing stale: the cascade's row and the
    // commit the write did not see are read anew.
    Result child = settled(kChildRead, 1, own.commit_lsn);
    EXPECT_EQ(child.value, 2) << "the cascade into children was skipped with the own write";
    EXPECT_NE(child.cache, v1::HIT);
    Result other_commit = settled(kParentRead, 5, unseen_token);
    EXPECT_EQ(other_commit.value, 900) << "a commit the own write did not see was skipped";
    EXPECT_NE(other_commit.cache, v1::HIT);
    Result kept = settled(kParentRead, 2, 0);
    EXPECT_EQ(kept.value, 10);

    bool described = false;
    for (const std::string& payload : watch.Notifications()) {
      if (absl::StrContains(payload, ":public.parents d")) described = true;
    }
    if (refilled.cache != v1::MISS || again.cache != v1::HIT || unseen.cache != v1::MISS ||
        described) {
      std::cerr << "attempt " << attempt << " inconclusive: refilled "
                << v1::CacheOutcome_Name(refilled.cache) << ", again "
                << v1::CacheOutcome_Name(again.cache) << ", unseen "
                << v1::CacheOutcome_Name(unseen.cache) << ", described " << described << "\n";
      continue;
    }
    conclusive = true;
    EXPECT_EQ(kept.cache, v1::HIT)
        << "the relay's delivery of A's own write dropped an entry read after it; " << a.Summary();
    EXPECT_GT(a.OwnWriteSkips(), skips);
  }
  EXPECT_TRUE(conclusive) << "no attempt read the own write back before the relay delivered it";

  // A plain client's write of the same row right after: invalidated as ever,
  // with its token and without.
  PgSession s(Cluster().Dsn(kDb));
  ASSERT_EQ(s.Exec("UPDATE parents SET v = 12 WHERE id = 2"), "");
  const uint64_t token = static_cast<uint64_t>(*s.Token());
  Result external = Call(*a.stub, kParentRead, {2}, true, token);
  EXPECT_EQ(external.value, 12);
  EXPECT_NE(external.cache, v1::HIT);
  ASSERT_TRUE(WaitFor([&] { return a.Applied() >= static_cast<double>(token); }, kWait));
  EXPECT_EQ(settled(kParentRead, 2, 0).value, 12);
}

// Last: it stops the replicas.
TEST_F(WalCacheTest, NoSlotIsLeftOnceEveryReplicaStopped) {
  PostgresCluster& pg = Cluster();
  ASSERT_EQ(pg.QueryValue(kDb, "SELECT count(*) FROM pg_replication_slots").value_or(""), "1");
  // One stops cleanly, the other is killed.
  for (auto& r : replicas_) {
    if (r->Holder()) {
      ASSERT_TRUE(r->process->Signal(SIGKILL).ok());
    } else {
      ASSERT_TRUE(testing::Terminate(*r->process).ok());
    }
    ASSERT_TRUE(r->process->Wait(kWait).ok());
  }
  EXPECT_TRUE(WaitFor(
      [&] {
        return pg.QueryValue(kDb, "SELECT count(*) FROM pg_replication_slots").value_or("") == "0";
      },
      kWait))
      << "a poolside slot is left: "
      << pg.QueryValue(kDb, "SELECT string_agg(slot_name, ',') FROM pg_replication_slots")
             .value_or("");
  EXPECT_EQ(pg.QueryValue(kDb, "SELECT count(*) FROM pg_stat_replication").value_or(""), "0");
}

// A server that cannot decode its WAL.
TEST(WalCacheUnavailableTest, FailsToStartOrFallsBackToTriggersAsConfigured) {
  testing::PostgresOptions o;
  o.extra_settings = {"wal_level=replica", "max_wal_senders=0"};
  auto pg = PostgresCluster::Start(o);
  ASSERT_TRUE(pg.ok()) << pg.status();
  ASSERT_TRUE((*pg)->CreateDatabase(kDb).ok());
  ASSERT_TRUE((*pg)
                  ->Exec(kDb,
                         "CREATE TABLE rows (id int8 PRIMARY KEY, v int8 NOT NULL);"
                         "INSERT INTO rows VALUES (1, 1)")
                  .ok());
  Replica failing;
  failing.name = "fail";
  absl::Status s = failing.Start(**pg);  // walUnavailable defaults to "fail"
  ASSERT_FALSE(s.ok()) << "query_server started without logical decoding";
  EXPECT_NE(s.message().find("wal_level"), absl::string_view::npos) << s;

  // "trigger": it starts, says so, and writes by anyone invalidate through
  // the trigger.
  Replica fallback;
  fallback.name = "trigger";
  ASSERT_TRUE(fallback.sidecar.Start().ok());
  v1::QueryServiceConfig config;
  {
    // Replica::Start with walUnavailable "trigger": its config, adjusted.
    AddDatabase(&config, kDb, (*pg)->Dsn(kDb));
    const std::string stem = NewStem("query_server_trigger");
    config.mutable_server()->set_listen("127.0.0.1:0");
    config.mutable_server()->mutable_tls()->set_plaintext(true);
    config.mutable_server()->set_port_file(stem + ".port");
    v1::MetricsConfig* metrics = config.mutable_server()->mutable_telemetry()->mutable_metrics();
    metrics->set_listen("127.0.0.1:0");
    metrics->set_port_file(stem + ".metrics_port");
    v1::QueryCacheConfig* cache = config.mutable_cache();
    cache->set_target(absl::StrCat("unix:", fallback.sidecar.socket));
    cache->set_wal_unavailable("trigger");
    AddTables(cache, kDb, {"rows"});
    auto p = StartConfigured("services/query/query_server", config, stem + ".port", stem);
    ASSERT_TRUE(p.ok()) << p.status();
    fallback.process = *std::move(p);
    std::ifstream(stem + ".metrics_port") >> fallback.metrics_port;
    auto channel = Connect(fallback.process->address());
    ASSERT_TRUE(channel.ok());
    fallback.stub = v1::QueryService::NewStub(*channel);
  }
  ASSERT_TRUE(WaitFor([&] { return fallback.Ready(); }, kWait));
  EXPECT_EQ(fallback.Metric("poolside_query_cache_invalidation_mode{database=\"wc\",mode="
                            "\"trigger\"}"),
            1);
  EXPECT_EQ((*pg)
                ->QueryValue(kDb,
                             "SELECT count(*) FROM pg_trigger WHERE tgname = "
                             "'poolside_invalidate'")
                .value_or(""),
            "1");
  ASSERT_TRUE(Cached(*fallback.stub, kRowRead, {1}));
  ASSERT_TRUE((*pg)->Exec(kDb, "UPDATE rows SET v = 2 WHERE id = 1").ok());
  EXPECT_TRUE(WaitFor([&] { return Call(*fallback.stub, kRowRead, {1}, true).value == 2; }, kWait));
  // Trigger mode knows no positions: a token sends the read to the database.
  Result tokened = Call(*fallback.stub, kRowRead, {1}, true, 1);
  EXPECT_EQ(tokened.cache, v1::BYPASS);
  EXPECT_EQ(tokened.source, v1::DATABASE);
  EXPECT_EQ(tokened.value, 2);
}

}  // namespace
}  // namespace poolside::testing
