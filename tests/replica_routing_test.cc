// Replica routing through a real query_server (and cache_server) on a primary
// with two streaming replicas (docs/replicas.md):
//  - reads spread over both replicas, writes and forced-primary calls land on
//    the primary, read-only transactions on a replica, others on the primary;
//    a named query declared readOnly on a replica even when it calls a
//    function of ours, the same query not declared on the primary;
//  - a replica paused with pg_wal_replay_pause() is banned past maxLagMs and
//    used again after resume, and a read whose token is beyond its replay
//    position is never answered by it (member and value checked);
//  - the cache with replicas: a write through the service, then reads with
//    its token (and cached reads without one) never return the old value,
//    from the cache or from a lagging replica;
//  - statements that write though they may look like reads (writable CTEs,
//    locking reads, volatile functions, a view over nextval the catalog
//    snapshot does not know yet) run on the primary or are refused, never
//    fail on a replica with 25006; a transaction that reads first and
//    writes later runs on the primary; a read-only one that writes is
//    refused and writes nothing;
//  - tokens no member has reached (far future, the largest values): never
//    answered by a replica, answered by the primary after the token wait,
//    or by the call's deadline when that is shorter; replicas paused while
//    token reads wait on them never answer them; concurrent callers each
//    read their own writes with their tokens (cached and not) while others
//    force the primary; nothing is left outstanding or held after any of it;
//  - a read whose session on a replica is terminated (57P01) runs again on a
//    fresh connection to it (also a named query declared read-only, which
//    poolside cannot prove a read), and when that is terminated too, answers
//    from the other replica;
//  - a replica frozen (SIGSTOP: no answer, no reset) under reads: once the
//    probes find it unhealthy, the reads waiting on it are given up on and
//    answer from elsewhere (retry reason member_unhealthy), a stream that
//    had sent rows from it ends UNAVAILABLE, nothing is read from it until
//    it is thawed and healthy again, and its pool keeps no connection;
//  - a replica killed under concurrent reads and writes: no read fails (one
//    running on it when it died answers from the other replica, with the
//    right value), a stream that had sent rows from it fails UNAVAILABLE
//    without repeating any, every write applies once, an SQL error on a
//    replica is not run again, and once the probes saw it its reads go to
//    the other replica;
//  - the primary killed under write load and the last replica promoted:
//    writes sent meanwhile are held and land on the new primary; only calls
//    sent while it was dying, and before the first of them failed (which
//    made the primary suspect), may fail (UNAVAILABLE, saying their commit
//    is unknown), and every acknowledged write is there afterwards.
// Members are told apart by ExecuteResponse.member ("host:port").

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/cache.grpc.pb.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/query.grpc.pb.h"
#include "tests/fixtures/http_get.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/replicated_cluster.h"

namespace poolside::testing {
namespace {

constexpr char kDb[] = "rr";
// Only reached when something is broken.
constexpr absl::Duration kWait = absl::Seconds(20);
constexpr uint32_t kProbeIntervalMs = 50;
constexpr uint32_t kProbeTimeoutMs = 500;
constexpr uint32_t kMaxLagMs = 400;

std::string MemberId(testing::PostgresCluster& pg) {
  return absl::StrCat(pg.host(), ":", pg.port());
}

// One cluster, one sidecar and one query_server for every test, in order
// (the last test kills a replica).
class Env {
 public:
  static Env& Get() {
    static Env* env = [] {
      auto* e = new Env;
      if (absl::Status s = e->Start(); !s.ok()) {
        std::cerr << "cannot start the environment: " << s << "\n";
        std::abort();
      }
      return e;
    }();
    return *env;
  }

  ReplicatedCluster& cluster() { return *cluster_; }
  v1::QueryService::Stub& query() { return *query_; }
  std::string primary_id() { return MemberId(cluster_->primary()); }
  std::string replica_id(int i) { return MemberId(cluster_->replica(i)); }

  absl::StatusOr<v1::ExecuteResponse> Execute(
      v1::ExecuteRequest request, std::chrono::seconds timeout = std::chrono::seconds(10)) {
    request.set_database(kDb);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + timeout);
    v1::ExecuteResponse response;
    grpc::Status s = query_->Execute(&ctx, request, &response);
    if (!s.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    }
    return response;
  }
  // SELECT v FROM kv WHERE id = 1.
  absl::StatusOr<v1::ExecuteResponse> Read(uint64_t min_lsn = 0, bool cached = false,
                                           bool primary = false, int64_t id = 1) {
    v1::ExecuteRequest r;
    r.set_sql("SELECT v FROM kv WHERE id = $1");
    r.add_params()->set_int64_value(id);
    r.set_min_lsn(min_lsn);
    r.set_primary(primary);
    if (cached) r.mutable_cache()->set_ttl_ms(60000);
    return Execute(r);
  }
  // Sets v of row 1; returns the commit token.
  absl::StatusOr<v1::ExecuteResponse> Write(int64_t v) {
    v1::ExecuteRequest r;
    r.set_sql("UPDATE kv SET v = $1 WHERE id = 1");
    r.add_params()->set_int64_value(v);
    return Execute(r);
  }
  absl::StatusOr<v1::GetPoolStatsResponse> Stats() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::GetPoolStatsRequest request;
    request.set_database(kDb);
    v1::GetPoolStatsResponse response;
    grpc::Status s = query_->GetPoolStats(&ctx, request, &response);
    if (!s.ok()) return absl::InternalError(s.error_message());
    return response;
  }
  // The member's stats as last probed (nullopt: not listed).
  std::optional<v1::MemberStats> Member(const std::string& id) {
    absl::StatusOr<v1::GetPoolStatsResponse> s = Stats();
    if (!s.ok()) return std::nullopt;
    for (const v1::MemberStats& m : s->members()) {
      if (m.member() == id) return m;
    }
    return std::nullopt;
  }

 private:
  absl::Status Start() {
    absl::StatusOr<std::unique_ptr<ReplicatedCluster>> c =
        ReplicatedCluster::Start({.replicas = 2});
    if (!c.ok()) return c.status();
    cluster_ = *std::move(c);
    testing::PostgresCluster& primary = cluster_->primary();
    if (absl::Status s = primary.CreateDatabase(kDb); !s.ok()) return s;
    if (absl::Status s =
            primary.Exec(kDb,
                         "CREATE TABLE kv (id int PRIMARY KEY, v bigint NOT NULL);"
                         "INSERT INTO kv SELECT g, 0 FROM generate_series(1, 10) g;"
                         "CREATE TABLE log (id bigint PRIMARY KEY);"
                         "CREATE TABLE fixed (id int PRIMARY KEY, v bigint NOT NULL);"
                         "INSERT INTO fixed SELECT g, g * 7 FROM generate_series(1, 100) g;"
                         "CREATE TABLE hits (id int PRIMARY KEY, n bigint NOT NULL);"
                         "INSERT INTO hits VALUES (1, 0);"
                         // A function of our own: the catalog cannot prove it harmless.
                         "CREATE FUNCTION same(x bigint) RETURNS bigint LANGUAGE sql IMMUTABLE AS "
                         "'SELECT x'");
        !s.ok()) {
      return s;
    }
    if (absl::Status s = cluster_->WaitForAllReplicas(kWait); !s.ok()) return s;

    socket_ = absl::StrCat("/tmp/poolside-rr-", getpid(), ".sock");
    {
      auto p = StartSidecar(socket_, 16 << 20);
      if (!p.ok()) return p.status();
      sidecar_ = *std::move(p);
    }
    v1::QueryServiceConfig config;
    v1::DatabaseConfig* db = AddDatabase(&config, kDb, primary.Dsn(kDb));
    db->mutable_pool()->set_max_size(4);
    v1::TopologyConfig* t = db->mutable_topology();
    for (int i = 0; i < cluster_->replica_count(); ++i) {
      t->add_replicas(absl::StrCat("host=", cluster_->replica(i).host(),
                                   " port=", cluster_->replica(i).port()));
    }
    t->set_probe_interval_ms(kProbeIntervalMs);
    t->set_probe_timeout_ms(kProbeTimeoutMs);
    t->set_max_lag_ms(kMaxLagMs);
    t->set_token_wait_ms(300);
    t->set_failover_buffer_ms(15000);
    for (bool read_only : {true, false}) {
      AddNamedQuery(&config, read_only ? "kv_declared_read_only" : "kv_not_declared",
                    "SELECT v FROM kv WHERE id = same($1)", {{"", "int64"}})
          ->set_read_only(read_only);
    }
    {
      // A read that sleeps only on the server listening on port $2 (a
      // replica about to be killed), so it is surely running there when it
      // dies, and answers at once anywhere else.
      v1::NamedQuery* q = config.add_named_queries();
      q->set_name("fixed_slow_on_port");
      q->set_sql(
          "SELECT v FROM fixed, pg_catalog.pg_sleep(CASE WHEN pg_catalog.inet_server_port() = $2 "
          "THEN 60 ELSE 0 END) WHERE id = $1");
      q->set_read_only(true);
      q->add_params()->set_type("int64");
      q->add_params()->set_type("int64");
    }
    // Streams long enough to be held back by a caller that stops reading.
    config.mutable_limits()->set_max_rows(10000000);
    v1::QueryCacheConfig* cache = config.mutable_cache();
    cache->set_target(absl::StrCat("unix:", socket_));
    cache->set_call_timeout_ms(1000);
    AddTables(cache, kDb, {"kv"});
    v1::WalInvalidationConfig* wal = cache->mutable_wal();
    wal->set_heartbeat_ms(100);
    wal->set_election_retry_ms(200);
    wal->set_token_wait_ms(1000);
    config.mutable_server()->set_drain_timeout_ms(1000);
    auto started = StartWithStub<v1::QueryService>("services/query/query_server", config);
    if (!started.ok()) return started.status();
    server_ = std::move(started->process);
    metrics_port_ = started->metrics_port;
    query_ = std::move(started->stub);
    // Routable once the catalog proves the read side-effect free and the
    // probes have seen both replicas.
    if (!WaitFor(
            [&] {
              auto a = Member(replica_id(0));
              auto b = Member(replica_id(1));
              auto r = Read();
              return a && b && a->healthy() && b->healthy() && r.ok() &&
                     r->member() != primary_id();
            },
            kWait)) {
      return absl::DeadlineExceededError("reads never reached a replica");
    }
    return absl::OkStatus();
  }

  std::unique_ptr<ReplicatedCluster> cluster_;
  std::string socket_;
  std::unique_ptr<ServiceProcess> sidecar_;
  std::unique_ptr<ServiceProcess> server_;
  std::unique_ptr<v1::QueryService::Stub> query_;
  int metrics_port_ = 0;

 public:
  // A series of /metrics, e.g. `poolside_query_member_banned{...}`.
  std::optional<double> Metric(absl::string_view series) const {
    return testing::MetricValue(metrics_port_, series);
  }
  // The status page ("/" on the metrics port); "" when it cannot be read.
  std::string StatusPage() const {
    absl::StatusOr<testing::HttpResponse> r = testing::HttpGet("127.0.0.1", metrics_port_, "/");
    return r.ok() && r->status == 200 ? r->body : "";
  }
};

int64_t ValueOf(const v1::ExecuteResponse& r) {
  if (r.result().rows_size() != 1 || r.result().rows(0).values_size() != 1) return -1;
  return r.result().rows(0).values(0).int64_value();
}

TEST(ReplicaRoutingTest, ReadsSpreadOverReplicasWritesOnPrimary) {
  Env& env = Env::Get();
  std::map<std::string, int> by_member;
  for (int i = 0; i < 40; ++i) {
    absl::StatusOr<v1::ExecuteResponse> r = env.Read();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_GE(ValueOf(*r), 0);
    ++by_member[r->member()];
  }
  // Sequential calls: least outstanding ties are taken in turn.
  EXPECT_GE(by_member[env.replica_id(0)], 10) << env.replica_id(0);
  EXPECT_GE(by_member[env.replica_id(1)], 10) << env.replica_id(1);
  EXPECT_EQ(by_member[env.primary_id()], 0);

  absl::StatusOr<v1::ExecuteResponse> w = env.Write(7);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->member(), env.primary_id());
  EXPECT_EQ(w->result().rows_affected(), 1);
  EXPECT_GT(w->commit_lsn(), 0u);

  // A streamed read names its member in its first message: a replica.
  std::map<std::string, int> streamed;
  for (int i = 0; i < 4; ++i) {
    v1::ExecuteRequest sr;
    sr.set_database(kDb);
    sr.set_sql("SELECT id, v FROM kv ORDER BY id");
    sr.set_chunk_rows(3);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    std::unique_ptr<grpc::ClientReader<v1::ExecuteStreamResponse>> reader =
        env.query().ExecuteStream(&ctx, sr);
    v1::ExecuteStreamResponse chunk;
    int chunks = 0, rows = 0;
    while (reader->Read(&chunk)) {
      if (chunks++ == 0) {
        EXPECT_GT(chunk.columns_size(), 0);
        ++streamed[chunk.member()];
      } else {
        EXPECT_EQ(chunk.member(), "") << "only the first message names the member";
      }
      rows += chunk.rows_size();
    }
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_EQ(rows, 10);
    EXPECT_GT(chunks, 1);
  }
  EXPECT_EQ(streamed[env.replica_id(0)] + streamed[env.replica_id(1)], 4)
      << "a streamed read was not answered by a replica, or did not say which";

  // Forced primary: the primary answers, and has the write.
  absl::StatusOr<v1::ExecuteResponse> forced = env.Read(0, false, /*primary=*/true);
  ASSERT_TRUE(forced.ok()) << forced.status();
  EXPECT_EQ(forced->member(), env.primary_id());
  EXPECT_EQ(ValueOf(*forced), 7);

  // A read whose function the catalog cannot prove harmless stays on the
  // primary (a replica would refuse nextval anyway).
  ASSERT_TRUE(env.cluster().primary().Exec(kDb, "CREATE SEQUENCE IF NOT EXISTS s").ok());
  v1::ExecuteRequest next;
  next.set_sql("SELECT nextval('s')");
  absl::StatusOr<v1::ExecuteResponse> n = env.Execute(next);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(n->member(), env.primary_id());

  // Transactions: read-only ones on a replica, others on the primary. Once a
  // replica's probes show the write replayed: on a loaded machine that can
  // take longer than tokenWaitMs, after which a read carrying the token
  // rightly runs on the primary.
  ASSERT_TRUE(WaitFor(
      [&] {
        for (int i = 0; i < 2; ++i) {
          std::optional<v1::MemberStats> m = env.Member(env.replica_id(i));
          if (m && m->healthy() && !m->banned() && m->lsn() >= w->commit_lsn()) return true;
        }
        return false;
      },
      kWait));
  for (bool read_only : {true, false}) {
    v1::ExecuteTransactionRequest t;
    t.set_database(kDb);
    t.set_read_only(read_only);
    t.set_min_lsn(w->commit_lsn());
    t.add_statements()->set_sql("SELECT v FROM kv WHERE id = 1");
    grpc::ClientContext ctx;
    v1::ExecuteTransactionResponse response;
    grpc::Status s = env.query().ExecuteTransaction(&ctx, t, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(response.results_size(), 1);
    EXPECT_EQ(response.results(0).rows(0).values(0).int64_value(), 7);
    if (read_only) {
      EXPECT_NE(response.member(), env.primary_id());
      EXPECT_GE(response.lsn(), w->commit_lsn());
    } else {
      EXPECT_EQ(response.member(), env.primary_id());
    }
  }
  // The pools: one per member that served calls, beside the DSN's own.
  absl::StatusOr<v1::GetPoolStatsResponse> stats = env.Stats();
  ASSERT_TRUE(stats.ok());
  std::set<std::string> pools;
  for (const v1::PoolStats& p : stats->pools()) pools.insert(p.member());
  EXPECT_EQ(pools,
            (std::set<std::string>{"", env.primary_id(), env.replica_id(0), env.replica_id(1)}));
  EXPECT_EQ(stats->members_size(), 3);
}

TEST(ReplicaRoutingTest, NamedQueriesDeclaredReadOnlyGoToReplicas) {
  Env& env = Env::Get();
  for (const char* name : {"kv_declared_read_only", "kv_not_declared"}) {
    v1::ExecuteRequest r;
    r.set_named_query(name);
    r.add_params()->set_int64_value(1);
    absl::StatusOr<v1::ExecuteResponse> got = env.Execute(r);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_GE(ValueOf(*got), 0);
    if (absl::string_view(name) == "kv_declared_read_only") {
      EXPECT_NE(got->member(), env.primary_id()) << name;
      EXPECT_FALSE(got->member().empty());
    } else {
      EXPECT_EQ(got->member(), env.primary_id()) << name;
    }
  }
}

TEST(ReplicaRoutingTest, PausedReplicaIsBannedAndNeverAnswersPastItsReplay) {
  Env& env = Env::Get();
  ASSERT_TRUE(env.cluster().PauseReplay(1).ok());
  const std::string paused = env.replica_id(1);
  // Writes with token reads, from the pause until the ban: the token is
  // beyond the paused replica's replay position, so it never answers.
  int64_t v = 100;
  bool banned = false;
  const absl::Time until = absl::Now() + kWait;
  while (!banned && absl::Now() < until) {
    ++v;
    absl::StatusOr<v1::ExecuteResponse> w = env.Write(v);
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_GT(w->commit_lsn(), 0u);
    absl::StatusOr<v1::ExecuteResponse> r = env.Read(w->commit_lsn());
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_NE(r->member(), paused);
    EXPECT_EQ(ValueOf(*r), v) << "from " << r->member();
    EXPECT_GE(r->lsn(), w->commit_lsn());
    std::optional<v1::MemberStats> m = env.Member(paused);
    banned = m && m->banned();
  }
  ASSERT_TRUE(banned) << "the paused replica was never banned";
  EXPECT_EQ(env.Metric(absl::StrCat("poolside_query_member_banned{database=\"rr\",member=\"",
                                    paused, "\"}")),
            1);
  std::optional<v1::MemberStats> m = env.Member(paused);
  ASSERT_TRUE(m);
  EXPECT_GT(m->lag_seconds(), kMaxLagMs / 1000.0);
  EXPECT_GE(m->bans_total(), 1u);
  // Banned: plain reads (no token) avoid it too.
  for (int i = 0; i < 20; ++i) {
    absl::StatusOr<v1::ExecuteResponse> r = env.Read();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_NE(r->member(), paused);
  }
  ASSERT_TRUE(env.cluster().ResumeReplay(1).ok());
  EXPECT_TRUE(WaitFor(
      [&] {
        std::optional<v1::MemberStats> s = env.Member(paused);
        return s && !s->banned() && s->healthy();
      },
      kWait));
  EXPECT_TRUE(WaitFor(
      [&] {
        absl::StatusOr<v1::ExecuteResponse> r = env.Read();
        return r.ok() && r->member() == paused && ValueOf(*r) == v;
      },
      kWait))
      << "the resumed replica never served a read";
}

TEST(ReplicaRoutingTest, CacheAndTokensNeverServeTheOldValue) {
  Env& env = Env::Get();
  // One replica lags (paused, not yet banned or banned: either way it must
  // not refill the cache with what a write invalidated).
  ASSERT_TRUE(env.cluster().PauseReplay(0).ok());
  int stale = 0;
  int from_replica = 0;
  for (int64_t v = 1000; v < 1040; ++v) {
    absl::StatusOr<v1::ExecuteResponse> w = env.Write(v);
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_GT(w->commit_lsn(), 0u);
    // Cached, with the token; twice (the second may be a hit).
    for (int k = 0; k < 2; ++k) {
      absl::StatusOr<v1::ExecuteResponse> r = env.Read(w->commit_lsn(), /*cached=*/true);
      ASSERT_TRUE(r.ok()) << r.status();
      if (ValueOf(*r) != v) ++stale;
      if (r->member() == env.replica_id(1)) ++from_replica;
      EXPECT_NE(r->member(), env.replica_id(0));
    }
    // Cached, without a token: this service's own write is seen.
    absl::StatusOr<v1::ExecuteResponse> r = env.Read(0, /*cached=*/true);
    ASSERT_TRUE(r.ok()) << r.status();
    if (ValueOf(*r) != v) ++stale;
    EXPECT_NE(r->member(), env.replica_id(0));
  }
  EXPECT_EQ(stale, 0);
  ASSERT_TRUE(env.cluster().ResumeReplay(0).ok());
  ASSERT_TRUE(env.cluster().WaitForAllReplicas(kWait).ok());
  // Plain token reads after the resume: the value of the last write.
  absl::StatusOr<v1::ExecuteResponse> w = env.Write(2000);
  ASSERT_TRUE(w.ok()) << w.status();
  for (int i = 0; i < 10; ++i) {
    absl::StatusOr<v1::ExecuteResponse> r = env.Read(w->commit_lsn());
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(ValueOf(*r), 2000) << "from " << r->member();
  }
  std::cerr << "cache reads answered by replica 1: " << from_replica << "\n";
  // Once both replicas' probes show the last write replayed, a miss fills
  // from a replica (rows 2..10 were never read: each is a miss).
  ASSERT_TRUE(WaitFor(
      [&] {
        for (int i = 0; i < 2; ++i) {
          std::optional<v1::MemberStats> m = env.Member(env.replica_id(i));
          if (!m || m->lsn() < w->commit_lsn()) return false;
        }
        return true;
      },
      kWait));
  std::set<std::string> fillers;
  for (int64_t id = 2; id <= 10; ++id) {
    absl::StatusOr<v1::ExecuteResponse> r = env.Read(0, /*cached=*/true, false, id);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(ValueOf(*r), 0);
    if (r->cache() == v1::MISS) fillers.insert(r->member());
  }
  EXPECT_TRUE(fillers.count(env.replica_id(0)) + fillers.count(env.replica_id(1)) > 0)
      << "no miss was filled from a replica";
}

// A call answered OK by the primary, or refused: never a 25006 from a
// replica (a write the analyzer took for a read), never a replica's answer.
void ExpectPrimaryOrRefused(Env& env, const absl::StatusOr<v1::ExecuteResponse>& got,
                            absl::string_view sql) {
  if (got.ok()) {
    EXPECT_EQ(got->member(), env.primary_id()) << sql;
    return;
  }
  EXPECT_FALSE(absl::StrContains(got.status().message(), "25006")) << sql << ": " << got.status();
  EXPECT_NE(got.status().code(), absl::StatusCode::kUnavailable) << sql << ": " << got.status();
}

// The first message of a stream of `sql` (its member), and how it ended.
struct StreamOutcome {
  grpc::Status status;
  std::string member;
  std::vector<int64_t> values;
};
StreamOutcome Stream(Env& env, const std::string& sql, uint64_t min_lsn = 0, bool primary = false) {
  v1::ExecuteRequest sr;
  sr.set_database(kDb);
  sr.set_sql(sql);
  sr.set_min_lsn(min_lsn);
  sr.set_primary(primary);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  std::unique_ptr<grpc::ClientReader<v1::ExecuteStreamResponse>> reader =
      env.query().ExecuteStream(&ctx, sr);
  StreamOutcome out;
  v1::ExecuteStreamResponse chunk;
  for (bool first = true; reader->Read(&chunk); first = false) {
    if (first) out.member = chunk.member();
    for (const v1::Row& row : chunk.rows()) out.values.push_back(row.values(0).int64_value());
  }
  out.status = reader->Finish();
  return out;
}

// Every member has no call outstanding, and nothing is held for a primary:
// what calls leave behind once answered. A call whose caller's deadline
// passed may still be finishing in the service: waited for, not forever.
void ExpectNothingOutstanding(Env& env) {
  std::string busy;
  EXPECT_TRUE(WaitFor(
      [&] {
        busy.clear();
        absl::StatusOr<v1::GetPoolStatsResponse> stats = env.Stats();
        if (!stats.ok()) {
          busy = stats.status().ToString();
          return false;
        }
        for (const v1::MemberStats& m : stats->members()) {
          if (m.outstanding() != 0) absl::StrAppend(&busy, m.member(), ": ", m.outstanding(), "; ");
        }
        const std::optional<double> held =
            env.Metric("poolside_query_failover_held_calls{database=\"rr\"}");
        if (held != 0) absl::StrAppend(&busy, "held: ", held.value_or(-1));
        return busy.empty();
      },
      kWait))
      << busy;
}

// Statements that look like reads but write, or that a stale catalog takes
// for reads: each runs on the primary (or is refused), never fails on a
// replica with 25006, and what it wrote is there once. A view created after
// the service's catalog snapshot hides its volatile function from the
// analysis until the next snapshot (10 s): its reads are routed to a
// replica, which refuses them.
TEST(ReplicaRoutingTest, StatementsThatWriteRunOnThePrimaryNeverFailOnAReplica) {
  Env& env = Env::Get();
  PostgresCluster& primary = env.cluster().primary();
  ASSERT_TRUE(primary
                  .Exec(kDb,
                        "CREATE SEQUENCE IF NOT EXISTS s;"
                        "CREATE VIEW next_a AS SELECT nextval('s') AS n;"
                        "CREATE VIEW next_b AS SELECT nextval('s') AS n;"
                        "CREATE VIEW next_c AS SELECT nextval('s') AS n;"
                        // A function of ours that writes.
                        "CREATE FUNCTION bump() RETURNS bigint LANGUAGE sql AS "
                        "'UPDATE fixed SET v = v WHERE id = 1 RETURNING v'")
                  .ok());
  ASSERT_TRUE(env.cluster().WaitForAllReplicas(kWait).ok());
  for (const char* sql : {"SELECT n FROM next_a", "SELECT n FROM next_b"}) {
    v1::ExecuteRequest r;
    r.set_sql(sql);
    absl::StatusOr<v1::ExecuteResponse> got = env.Execute(r);
    ASSERT_TRUE(got.ok()) << sql << ": " << got.status();
    EXPECT_EQ(got->member(), env.primary_id()) << sql;
    EXPECT_GT(ValueOf(*got), 0) << sql;
  }
  {
    StreamOutcome st = Stream(env, "SELECT n FROM next_c");
    EXPECT_TRUE(st.status.ok()) << st.status.error_message();
    EXPECT_EQ(st.member, env.primary_id());
    EXPECT_EQ(st.values.size(), 1u);
  }

  // Writable CTE: it runs once, on the primary.
  absl::StatusOr<v1::ExecuteResponse> before = env.Execute([] {
    v1::ExecuteRequest r;
    r.set_sql("SELECT v FROM kv WHERE id = 10");
    r.set_primary(true);
    return r;
  }());
  ASSERT_TRUE(before.ok()) << before.status();
  {
    v1::ExecuteRequest r;
    r.set_sql("WITH u AS (UPDATE kv SET v = v + 1 WHERE id = 10 RETURNING v) SELECT v FROM u");
    absl::StatusOr<v1::ExecuteResponse> got = env.Execute(r);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->member(), env.primary_id());
    EXPECT_EQ(ValueOf(*got), ValueOf(*before) + 1);
    ASSERT_GT(got->commit_lsn(), 0u);
    absl::StatusOr<v1::ExecuteResponse> after = env.Execute([&] {
      v1::ExecuteRequest a;
      a.set_sql("SELECT v FROM kv WHERE id = 10");
      a.set_min_lsn(got->commit_lsn());
      return a;
    }());
    ASSERT_TRUE(after.ok()) << after.status();
    EXPECT_EQ(ValueOf(*after), ValueOf(*before) + 1) << "from " << after->member();
  }
  // Locking reads, volatile functions, SELECT INTO: the primary, or refused.
  for (const char* sql :
       {"SELECT v FROM fixed WHERE id = 3 FOR UPDATE", "SELECT v FROM fixed WHERE id = 3 FOR SHARE",
        "SELECT v FROM fixed WHERE id = 3 FOR KEY SHARE", "VALUES (nextval('s'))",
        "SELECT n FROM nextval('s') n", "SELECT txid_current()",
        "SELECT set_config('poolside.adv', '1', true)", "SELECT pg_catalog.nextval('s')",
        "SELECT * INTO kv_copy FROM kv", "EXPLAIN ANALYZE SELECT nextval('s')", "SELECT bump()"}) {
    v1::ExecuteRequest r;
    r.set_sql(sql);
    ExpectPrimaryOrRefused(env, env.Execute(r), sql);
  }

  // A transaction that reads first and writes later: the primary; its
  // token then reads the write from anywhere.
  auto transaction = [&](bool read_only, int64_t v, v1::ExecuteTransactionResponse* response) {
    v1::ExecuteTransactionRequest t;
    t.set_database(kDb);
    t.set_read_only(read_only);
    t.add_statements()->set_sql("SELECT v FROM kv WHERE id = 9");
    v1::Statement* w = t.add_statements();
    w->set_sql("UPDATE kv SET v = $1 WHERE id = 9");
    w->add_params()->set_int64_value(v);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return env.query().ExecuteTransaction(&ctx, t, response);
  };
  v1::ExecuteTransactionResponse written;
  grpc::Status s = transaction(false, 909, &written);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(written.member(), env.primary_id());
  ASSERT_GT(written.commit_lsn(), 0u);
  // A read-only transaction that writes is refused (by whichever member:
  // the primary would refuse it as well) and writes nothing.
  v1::ExecuteTransactionResponse refused;
  s = transaction(true, 919, &refused);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  absl::StatusOr<v1::ExecuteResponse> nine = env.Read(written.commit_lsn(), false, false, 9);
  ASSERT_TRUE(nine.ok()) << nine.status();
  EXPECT_EQ(ValueOf(*nine), 909) << "from " << nine->member();
  ExpectNothingOutstanding(env);
}

// Tokens no member has reached (far in the future, the largest values, as
// a client of another cluster or a corrupted one would send): never
// answered by a replica, answered by the primary with the current value
// after the token wait, and a call whose deadline is shorter than the
// waits (the replicas' tokenWaitMs, the cache's) ends by its deadline.
TEST(ReplicaRoutingTest, TokensNoMemberReachedAreAnsweredByThePrimaryOrTheDeadline) {
  Env& env = Env::Get();
  absl::StatusOr<v1::ExecuteResponse> w = env.Write(3000);
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_GT(w->commit_lsn(), 0u);
  const uint64_t future = w->commit_lsn() + (uint64_t{1} << 40);
  for (uint64_t token : {future, UINT64_MAX}) {
    absl::StatusOr<v1::ExecuteResponse> r = env.Read(token);
    ASSERT_TRUE(r.ok()) << token << ": " << r.status();
    EXPECT_EQ(r->member(), env.primary_id()) << token;
    EXPECT_EQ(ValueOf(*r), 3000) << token;
  }
  StreamOutcome st = Stream(env, "SELECT v FROM kv WHERE id = 1", future);
  EXPECT_TRUE(st.status.ok()) << st.status.error_message();
  EXPECT_EQ(st.member, env.primary_id());
  EXPECT_EQ(st.values, std::vector<int64_t>{3000});
  {
    v1::ExecuteTransactionRequest t;
    t.set_database(kDb);
    t.set_read_only(true);
    t.set_min_lsn(future);
    t.add_statements()->set_sql("SELECT v FROM kv WHERE id = 1");
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ExecuteTransactionResponse response;
    grpc::Status s = env.query().ExecuteTransaction(&ctx, t, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(response.member(), env.primary_id());
    ASSERT_EQ(response.results_size(), 1);
    EXPECT_EQ(response.results(0).rows(0).values(0).int64_value(), 3000);
  }
  // Deadlines shorter than the waits, cached (the cache waits for its
  // invalidations first) and not.
  for (bool cached : {false, true}) {
    v1::ExecuteRequest r;
    r.set_sql("SELECT v FROM kv WHERE id = $1");
    r.add_params()->set_int64_value(1);
    r.set_min_lsn(future);
    if (cached) r.mutable_cache()->set_ttl_ms(60000);
    r.set_database(kDb);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(150));
    v1::ExecuteResponse response;
    grpc::Status s = env.query().Execute(&ctx, r, &response);
    if (s.ok()) {
      EXPECT_EQ(response.member(), env.primary_id()) << "cached " << cached;
      EXPECT_EQ(ValueOf(response), 3000) << "cached " << cached;
    } else {
      EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
          << "cached " << cached << ": " << s.error_message();
    }
  }
  ExpectNothingOutstanding(env);
}

// Both replicas paused while token reads wait on them: the reads answer
// from the primary with the written value, never from a paused replica;
// after the resume, token reads reach the replicas again.
TEST(ReplicaRoutingTest, TokenReadsWaitingOnPausedReplicasNeverAnswerFromThem) {
  Env& env = Env::Get();
  ASSERT_TRUE(env.cluster().PauseReplay(0).ok());
  ASSERT_TRUE(env.cluster().PauseReplay(1).ok());
  for (int64_t v = 4000; v < 4003; ++v) {
    absl::StatusOr<v1::ExecuteResponse> w = env.Write(v);
    ASSERT_TRUE(w.ok()) << w.status();
    absl::StatusOr<v1::ExecuteResponse> r = env.Read(w->commit_lsn());
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->member(), env.primary_id());
    EXPECT_EQ(ValueOf(*r), v);
  }
  ASSERT_TRUE(env.cluster().ResumeReplay(0).ok());
  ASSERT_TRUE(env.cluster().ResumeReplay(1).ok());
  absl::StatusOr<v1::ExecuteResponse> w = env.Write(4100);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE(WaitFor(
      [&] {
        absl::StatusOr<v1::ExecuteResponse> r = env.Read(w->commit_lsn());
        EXPECT_TRUE(r.ok()) << r.status();
        if (r.ok()) {
          EXPECT_EQ(ValueOf(*r), 4100) << "from " << r->member();
        }
        return r.ok() && r->member() != env.primary_id();
      },
      kWait))
      << "token reads never reached a resumed replica";
  ASSERT_TRUE(WaitFor(
      [&] {
        for (int i = 0; i < 2; ++i) {
          std::optional<v1::MemberStats> m = env.Member(env.replica_id(i));
          if (!m || !m->healthy() || m->banned()) return false;
        }
        return true;
      },
      kWait));
  ExpectNothingOutstanding(env);
}

// Callers each writing their own row and reading it back with their token
// (cached and not), while others force the primary: every read sees its
// caller's last write, every forced call is answered by the primary, and
// nothing is left outstanding.
TEST(ReplicaRoutingTest, ConcurrentCallersEachReadTheirOwnWrites) {
  Env& env = Env::Get();
  constexpr int kCallers = 4;
  constexpr int kRounds = 5;
  std::atomic<int> stale{0}, failed{0}, forced_elsewhere{0}, from_replica{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < kCallers; ++t) {
    callers.emplace_back([&, t] {
      const int64_t id = 2 + t;
      for (int64_t round = 0; round < kRounds; ++round) {
        const int64_t v = 5000 + t * 100 + round;
        v1::ExecuteRequest wr;
        wr.set_sql("UPDATE kv SET v = $1 WHERE id = $2");
        wr.add_params()->set_int64_value(v);
        wr.add_params()->set_int64_value(id);
        absl::StatusOr<v1::ExecuteResponse> w = env.Execute(wr);
        if (!w.ok() || w->commit_lsn() == 0) {
          ++failed;
          continue;
        }
        for (int k = 0; k < 3; ++k) {
          // 0: plain, 1: cached, 2: forced to the primary.
          absl::StatusOr<v1::ExecuteResponse> r =
              env.Read(k == 2 ? 0 : w->commit_lsn(), k == 1, k == 2, id);
          if (!r.ok()) {
            ++failed;
            continue;
          }
          if (ValueOf(*r) != v) ++stale;
          if (k == 2 && r->member() != env.primary_id()) ++forced_elsewhere;
          if (k == 0 && r->member() != env.primary_id()) ++from_replica;
        }
      }
    });
  }
  for (std::thread& c : callers) c.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(stale.load(), 0);
  EXPECT_EQ(forced_elsewhere.load(), 0);
  std::cerr << "token reads answered by a replica: " << from_replica.load() << " of "
            << kCallers * kRounds << "\n";
  // A stream forced to the primary too.
  StreamOutcome st = Stream(env, "SELECT v FROM kv WHERE id = 2", 0, /*primary=*/true);
  EXPECT_TRUE(st.status.ok()) << st.status.error_message();
  EXPECT_EQ(st.member, env.primary_id());
  EXPECT_EQ(st.values, std::vector<int64_t>{5000 + kRounds - 1});
  ExpectNothingOutstanding(env);
}

// The routed calls each member has had so far, by member.
std::map<std::string, uint64_t> RoutedByMember(Env& env) {
  std::map<std::string, uint64_t> out;
  absl::StatusOr<v1::GetPoolStatsResponse> s = env.Stats();
  if (!s.ok()) return out;
  for (const v1::MemberStats& m : s->members()) out[m.member()] = m.routed_total();
  return out;
}

double ReadRetries(Env& env) {
  double sum = 0;
  for (const char* reason :
       {"server_shutdown", "connect_failed", "connection_lost", "member_unhealthy"}) {
    sum += env.Metric(absl::StrCat("poolside_query_read_retries_total{database=\"rr\",reason=\"",
                                   reason, "\"}"))
               .value_or(-1000);
  }
  return sum;
}

// SELECT v FROM fixed WHERE id = $1: v is id * 7.
absl::StatusOr<v1::ExecuteResponse> ReadFixed(Env& env, int64_t id) {
  v1::ExecuteRequest r;
  r.set_sql("SELECT v FROM fixed WHERE id = $1");
  r.add_params()->set_int64_value(id);
  return env.Execute(r);
}

TEST(ReplicaRoutingTest, SqlErrorOnAReplicaIsNotRunAgain) {
  Env& env = Env::Get();
  const double retries = ReadRetries(env);
  ASSERT_GE(retries, 0) << "poolside_query_read_retries_total is missing";
  const std::map<std::string, uint64_t> before = RoutedByMember(env);
  v1::ExecuteRequest r;
  r.set_sql("SELECT v / (v - v) FROM fixed WHERE id = $1");  // division by zero (22012)
  r.add_params()->set_int64_value(1);
  absl::StatusOr<v1::ExecuteResponse> got = env.Execute(r);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << got.status();
  EXPECT_TRUE(absl::StrContains(got.status().message(), "22012")) << got.status();
  // Routed once, to a replica, and never again.
  const std::map<std::string, uint64_t> after = RoutedByMember(env);
  uint64_t routed = 0;
  for (const auto& [member, n] : after) {
    const uint64_t was = before.count(member) ? before.at(member) : 0;
    routed += n - was;
    if (n != was) {
      EXPECT_NE(member, env.primary_id());
    }
  }
  EXPECT_EQ(routed, 1u);
  EXPECT_EQ(ReadRetries(env), retries);
  // Both replicas still take reads: an SQL error says nothing of a member.
  for (int i = 0; i < 2; ++i) {
    std::optional<v1::MemberStats> m = env.Member(env.replica_id(i));
    ASSERT_TRUE(m);
    EXPECT_TRUE(m->healthy()) << env.replica_id(i);
  }
}

// Runs the named query fixed_slow_on_port for ids 10 and 11 at once, both
// sleeping only on replica 0: routed one after the other they land on both
// replicas (least outstanding, ties in turn), so one runs on replica 0 until
// something ends it and the other answers at once from replica 1. Returns
// once replica 0 runs one; join `readers` for the outcomes.
struct SlowOutcome {
  absl::Status status;
  std::string member;
  int64_t value = -1;
};
bool StartSlowReads(Env& env, std::vector<SlowOutcome>* slow, std::vector<std::thread>* readers) {
  slow->assign(2, SlowOutcome{});
  for (int i = 0; i < 2; ++i) {
    readers->emplace_back([&env, slow, i] {
      v1::ExecuteRequest r;
      r.set_named_query("fixed_slow_on_port");
      r.add_params()->set_int64_value(10 + i);
      r.add_params()->set_int64_value(env.cluster().replica(0).port());
      absl::StatusOr<v1::ExecuteResponse> got = env.Execute(r, std::chrono::seconds(40));
      (*slow)[i].status = got.status();
      if (got.ok()) {
        (*slow)[i].member = got->member();
        (*slow)[i].value = ValueOf(*got);
      }
    });
  }
  return WaitFor(
      [&] {
        absl::StatusOr<std::string> n = env.cluster().replica(0).QueryValue(
            kDb,
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
            "query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()");
        return n.ok() && *n != "0";
      },
      kWait);
}

// After the readers are joined: both slow reads answered OK with their
// values, neither from `lost` (replica 0, which died or hung under one).
void ExpectSlowReadsAnsweredElsewhere(const std::vector<SlowOutcome>& slow,
                                      const std::string& lost) {
  for (int i = 0; i < 2; ++i) {
    EXPECT_TRUE(slow[i].status.ok()) << "slow read " << i << ": " << slow[i].status;
    if (!slow[i].status.ok()) continue;
    EXPECT_EQ(slow[i].value, (10 + i) * 7);
    EXPECT_NE(slow[i].member, lost) << "slow read " << i;
  }
}

// Three callers reading fixed's rows by key (ReadFixed) until Stop(),
// counting the answers: failures (printed), wrong values, and by member, in
// all and among the reads sent after Mark().
class PointReads {
 public:
  explicit PointReads(Env& env) {
    for (int t = 0; t < 3; ++t) {
      callers_.emplace_back([this, &env, t] {
        for (int64_t i = t; !stop_.load(); i += 3) {
          const int64_t id = 1 + i % 100;
          const bool marked = marked_.load();
          absl::StatusOr<v1::ExecuteResponse> r = ReadFixed(env, id);
          absl::MutexLock lock(&mu_);
          ++reads_;
          if (!r.ok()) {
            ++failed_;
            std::cerr << "read failed: " << r.status() << "\n";
            continue;
          }
          if (ValueOf(*r) != id * 7) ++wrong_;
          ++by_member_[r->member()];
          if (marked) ++marked_by_member_[r->member()];
        }
      });
    }
  }
  ~PointReads() { Stop(); }
  void Stop() {
    stop_.store(true);
    for (std::thread& t : callers_) t.join();
    callers_.clear();
  }
  void Mark() { marked_.store(true); }
  int reads() const {
    absl::MutexLock lock(&mu_);
    return reads_;
  }
  int failed() const {
    absl::MutexLock lock(&mu_);
    return failed_;
  }
  int wrong() const {
    absl::MutexLock lock(&mu_);
    return wrong_;
  }
  int answered_by(const std::string& member) const {
    absl::MutexLock lock(&mu_);
    auto it = by_member_.find(member);
    return it == by_member_.end() ? 0 : it->second;
  }
  int answered_after_mark_by(const std::string& member) const {
    absl::MutexLock lock(&mu_);
    auto it = marked_by_member_.find(member);
    return it == marked_by_member_.end() ? 0 : it->second;
  }

 private:
  std::atomic<bool> stop_{false}, marked_{false};
  mutable absl::Mutex mu_;
  int reads_ ABSL_GUARDED_BY(mu_) = 0;
  int failed_ ABSL_GUARDED_BY(mu_) = 0;
  int wrong_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int> by_member_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> marked_by_member_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> callers_;
};

TEST(ReplicaRoutingTest, ReadWhoseSessionIsTerminatedAnswersFromAnotherMember) {
  Env& env = Env::Get();
  const std::string metric =
      "poolside_query_read_retries_total{database=\"rr\",reason=\"server_shutdown\"}";
  const double shutdowns = env.Metric(metric).value_or(-1);
  ASSERT_GE(shutdowns, 0);
  std::vector<SlowOutcome> slow;
  std::vector<std::thread> readers;
  const bool started = StartSlowReads(env, &slow, &readers);
  // pg_terminate_backend: the server ends the session with 57P01. The read
  // (it only reads: on a replica nothing can write) runs again on a fresh
  // connection to the same replica, where it sleeps again: that session is
  // ended too, and the read goes to the other replica.
  auto terminate = [&] {
    return env.cluster().replica(0).QueryValue(
        kDb,
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
        "state = 'active' AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()) t");
  };
  absl::StatusOr<std::string> ended = terminate();
  bool again = false;
  absl::StatusOr<std::string> ended_again = absl::UnknownError("not run again on replica 0");
  if (started && ended.ok() && *ended == "1") {
    again = WaitFor(
        [&] {
          ended_again = terminate();
          return ended_again.ok() && *ended_again == "1";
        },
        kWait);
  }
  for (std::thread& t : readers) t.join();
  ASSERT_TRUE(started) << "no slow read reached replica 0";
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(*ended, "1");
  EXPECT_TRUE(again) << "the read did not run again on replica 0: " << ended_again.status();
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(slow[i].status.ok()) << "slow read " << i << ": " << slow[i].status;
    EXPECT_EQ(slow[i].value, (10 + i) * 7);
    EXPECT_EQ(slow[i].member, env.replica_id(1)) << "slow read " << i;
  }
  EXPECT_EQ(env.Metric(metric), shutdowns + 1);
  // A terminated session does not make replica 0 suspect: it stays routable.
  EXPECT_TRUE(WaitFor(
      [&] {
        std::optional<v1::MemberStats> m = env.Member(env.replica_id(0));
        return m && m->healthy();
      },
      kWait));
}

// A stream of generate_series(1, rows) that has sent its first rows, its
// caller no longer reading: the server is held back by flow control.
struct StreamOnMember {
  std::unique_ptr<grpc::ClientContext> ctx;
  std::unique_ptr<grpc::ClientReader<v1::ExecuteStreamResponse>> reader;
  std::string member;
  std::vector<int64_t> values;
};
StreamOnMember OpenStream(Env& env, int64_t rows) {
  StreamOnMember st;
  st.ctx = std::make_unique<grpc::ClientContext>();
  st.ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::ExecuteRequest sr;
  sr.set_database(kDb);
  sr.set_sql(absl::StrCat("SELECT g::int8 FROM generate_series(1, ", rows, ") g"));
  sr.set_chunk_rows(100);
  st.reader = env.query().ExecuteStream(st.ctx.get(), sr);
  v1::ExecuteStreamResponse chunk;
  if (st.reader->Read(&chunk)) {
    st.member = chunk.member();
    for (const v1::Row& row : chunk.rows()) st.values.push_back(row.values(0).int64_value());
  }
  return st;
}
// Opens streams until one is routed to `member` (at most three); the others
// are cancelled (`member` then has fewer outstanding calls). *out: the last
// one opened.
void OpenStreamOn(Env& env, const std::string& member, int64_t rows, StreamOnMember* out) {
  std::vector<StreamOnMember> streams;
  for (int i = 0; i < 3 && (streams.empty() || streams.back().member != member); ++i) {
    streams.push_back(OpenStream(env, rows));
    ASSERT_FALSE(streams.back().values.empty()) << "a stream sent no rows";
    ASSERT_NE(streams.back().member, env.primary_id()) << "the stream was not routed to a replica";
  }
  *out = std::move(streams.back());
  streams.pop_back();
  for (StreamOnMember& st : streams) {
    st.ctx->TryCancel();
    v1::ExecuteStreamResponse chunk;
    while (st.reader->Read(&chunk)) {
    }
    EXPECT_EQ(st.reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
}

// What a test of replica 0's loss watches: the slow reads (StartSlowReads:
// one runs on it) and a stream from it that has sent rows. The readers are
// joined on destruction, so a failed assertion cannot leave them running.
struct WatchedReads {
  std::vector<SlowOutcome> slow;
  std::vector<std::thread> readers;
  StreamOnMember stream;
  ~WatchedReads() { JoinReaders(); }
  void JoinReaders() {
    for (std::thread& t : readers) t.join();
    readers.clear();
  }
};
// Starts them on `member` (replica 0); a fatal failure if a slow read or the
// stream did not get there.
void StartWatchedReads(Env& env, const std::string& member, int64_t stream_rows, WatchedReads* w) {
  // Neither slow read sleeps anywhere but on `member`: if none got there,
  // both answer at once.
  ASSERT_TRUE(StartSlowReads(env, &w->slow, &w->readers)) << "no slow read reached " << member;
  OpenStreamOn(env, member, stream_rows, &w->stream);
  ASSERT_EQ(w->stream.member, member) << "no stream was routed to " << member;
}

// Reads the rest of a stream that failed: its status, and whether what
// arrived is 1, 2, 3... with no row twice (checked with gtest).
grpc::Status FinishStream(StreamOnMember& st, int64_t rows) {
  v1::ExecuteStreamResponse chunk;
  while (st.reader->Read(&chunk)) {
    EXPECT_EQ(chunk.member(), "");
    for (const v1::Row& row : chunk.rows()) st.values.push_back(row.values(0).int64_value());
  }
  grpc::Status end = st.reader->Finish();
  EXPECT_LT(st.values.size(), size_t(rows));
  for (size_t i = 0; i < st.values.size(); ++i) {
    if (st.values[i] != static_cast<int64_t>(i) + 1) {
      ADD_FAILURE() << "row " << i << " is " << st.values[i];
      break;
    }
  }
  return end;
}

// Resumes a frozen member whatever happens to the test (later tests need it).
class ThawOnExit {
 public:
  explicit ThawOnExit(PostgresCluster& pg) : pg_(pg) {}
  ~ThawOnExit() { (void)pg_.Thaw(); }

 private:
  PostgresCluster& pg_;
};

TEST(ReplicaRoutingTest, FrozenReplicaIsGivenUpOnOnceItsProbesFail) {
  Env& env = Env::Get();
  const std::string frozen = env.replica_id(0);
  const std::string metric =
      "poolside_query_read_retries_total{database=\"rr\",reason=\"member_unhealthy\"}";
  const double given_up_before = env.Metric(metric).value_or(-1);
  ASSERT_GE(given_up_before, 0) << metric << " is missing";

  // A read running on `frozen` (its query sleeps there only; 40 s deadline),
  // one answered elsewhere, and a stream from `frozen` that has sent rows.
  constexpr int64_t kStreamRows = 5000000;
  WatchedReads watched;
  ASSERT_NO_FATAL_FAILURE(StartWatchedReads(env, frozen, kStreamRows, &watched));

  // Point reads under way while it hangs; those sent once the probes had
  // seen it (marked) must not be answered by it.
  PointReads point(env);
  ASSERT_TRUE(WaitFor([&] { return point.reads() > 60; }, kWait));
  ThawOnExit thaw(env.cluster().replica(0));
  ASSERT_TRUE(env.cluster().replica(0).Freeze().ok());
  const bool noticed = WaitFor(
      [&] {
        std::optional<v1::MemberStats> m = env.Member(frozen);
        return m && !m->healthy();
      },
      kWait);
  point.Mark();
  const int reads_at_detection = point.reads();
  // Load goes on past the detection.
  const bool went_on = WaitFor([&] { return point.reads() > reads_at_detection + 150; }, kWait);
  point.Stop();
  watched.JoinReaders();
  ASSERT_TRUE(noticed) << "the probes never found the frozen replica unhealthy";
  ASSERT_TRUE(went_on) << "the load stalled";

  // Every read answered, with the right value, none from `frozen` once it
  // was known to hang.
  EXPECT_EQ(point.failed(), 0) << "of " << point.reads();
  EXPECT_EQ(point.wrong(), 0);
  EXPECT_EQ(point.answered_after_mark_by(frozen), 0);
  // The slow read that was waiting on `frozen` answered from elsewhere (not
  // DEADLINE_EXCEEDED after its 40 s).
  ExpectSlowReadsAnsweredElsewhere(watched.slow, frozen);
  EXPECT_GE(env.Metric(metric).value_or(-1), given_up_before + 1);
  // The stream that had sent rows from `frozen` ends UNAVAILABLE, saying
  // so, without repeating a row.
  {
    grpc::Status end = FinishStream(watched.stream, kStreamRows);
    EXPECT_EQ(end.error_code(), grpc::StatusCode::UNAVAILABLE) << end.error_message();
    EXPECT_TRUE(absl::StrContains(end.error_message(), "stopped answering")) << end.error_message();
  }

  // Thawed: healthy again, it gets reads again.
  ASSERT_TRUE(env.cluster().replica(0).Thaw().ok());
  ASSERT_TRUE(WaitFor(
      [&] {
        std::optional<v1::MemberStats> m = env.Member(frozen);
        return m && m->healthy() && !m->banned();
      },
      kWait))
      << env.Member(frozen).value_or(v1::MemberStats()).ShortDebugString();
  EXPECT_TRUE(WaitFor(
      [&] {
        absl::StatusOr<v1::ExecuteResponse> r = ReadFixed(env, 3);
        return r.ok() && ValueOf(*r) == 21 && r->member() == frozen;
      },
      kWait))
      << "the thawed replica gets no reads";
  // The slow query its session ran is still sleeping there: ended, so the
  // next test finds only its own.
  EXPECT_TRUE(WaitFor(
      [&] {
        absl::StatusOr<std::string> n = env.cluster().replica(0).QueryValue(
            kDb,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
            "query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()");
        return n.ok() && *n == "0";
      },
      kWait));
  // No connection leaked: the connections given up were discarded.
  v1::PoolStats pool;
  EXPECT_TRUE(WaitFor(
      [&] {
        absl::StatusOr<v1::GetPoolStatsResponse> s = env.Stats();
        if (!s.ok()) return false;
        for (const v1::PoolStats& p : s->pools()) {
          if (p.member() == frozen && p.role().empty()) pool = p;
        }
        return pool.in_use() == 0 && pool.size() <= pool.max_size();
      },
      kWait))
      << pool.ShortDebugString();
  EXPECT_GT(pool.broken_total(), 0u) << pool.ShortDebugString();
  std::cerr << "reads: " << point.reads()
            << ", stream rows before the freeze: " << watched.stream.values.size()
            << ", given up: " << env.Metric(metric).value_or(-1) - given_up_before << "\n";
}

TEST(ReplicaRoutingTest, KilledReplicaCostsNoReadAndNoWriteRunsTwice) {
  Env& env = Env::Get();
  const std::string dead = env.replica_id(0);
  const std::string alive = env.replica_id(1);
  const double retries_before = ReadRetries(env);
  ASSERT_GE(retries_before, 0);

  // A read running on `dead` until it dies (and one answered by `alive`),
  // and a stream from `dead` that has sent rows, its caller no longer reading.
  constexpr int64_t kStreamRows = 5000000;
  WatchedReads watched;
  ASSERT_NO_FATAL_FAILURE(StartWatchedReads(env, dead, kStreamRows, &watched));

  // Point reads and increments under way while the replica dies.
  PointReads point(env);
  std::atomic<bool> stop{false};
  std::atomic<int> writes{0}, failed_writes{0}, writes_off_primary{0};
  std::vector<std::thread> load;
  load.emplace_back([&] {
    while (!stop.load()) {
      v1::ExecuteRequest w;
      w.set_sql("UPDATE hits SET n = n + 1 WHERE id = 1");
      absl::StatusOr<v1::ExecuteResponse> r = env.Execute(w);
      if (!r.ok()) {
        ++failed_writes;
      } else {
        ++writes;
        if (r->member() != env.primary_id() || r->result().rows_affected() != 1) {
          ++writes_off_primary;
        }
      }
    }
  });
  ASSERT_TRUE(WaitFor([&] { return point.reads() > 60 && writes.load() > 10; }, kWait));
  ASSERT_TRUE(env.cluster().replica(0).Kill().ok());
  const int reads_at_kill = point.reads();
  const int writes_at_kill = writes.load();
  // Load goes on past the kill, through the probes noticing it.
  const bool noticed = WaitFor(
      [&] {
        std::optional<v1::MemberStats> m = env.Member(dead);
        return m && !m->healthy() && point.reads() > reads_at_kill + 150 &&
               writes.load() > writes_at_kill + 20;
      },
      kWait);
  stop.store(true);
  for (std::thread& t : load) t.join();
  point.Stop();
  watched.JoinReaders();
  ASSERT_TRUE(noticed) << "the load stalled or the probes never saw the replica die";

  // No read failed, and each answered the right value.
  EXPECT_EQ(point.failed(), 0) << "of " << point.reads();
  EXPECT_EQ(point.wrong(), 0);
  EXPECT_GT(point.answered_by(alive), 0);
  // The read running on `dead` when it died answered from elsewhere.
  ExpectSlowReadsAnsweredElsewhere(watched.slow, dead);
  EXPECT_GE(ReadRetries(env), retries_before + 1);

  // The stream that had sent rows from `dead` fails, and is not run again:
  // what arrived is 1, 2, 3... with no row twice.
  {
    grpc::Status end = FinishStream(watched.stream, kStreamRows);
    EXPECT_EQ(end.error_code(), grpc::StatusCode::UNAVAILABLE) << end.error_message();
  }

  // Every write ran once, on the primary: the count is the acknowledged ones.
  EXPECT_EQ(failed_writes.load(), 0);
  EXPECT_EQ(writes_off_primary.load(), 0);
  absl::StatusOr<std::string> n =
      env.cluster().primary().QueryValue(kDb, "SELECT n FROM hits WHERE id = 1");
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, absl::StrCat(writes.load()));

  // Once the probes saw it, reads go to the other replica only (while that
  // one is healthy and within the lag bound, as its probes say; on a loaded
  // machine a late probe can briefly say otherwise, and reads then go to the
  // primary, which is the configured fallback).
  auto routable = [&](const std::string& id) {
    std::optional<v1::MemberStats> m = env.Member(id);
    return m && m->healthy() && !m->banned();
  };
  ASSERT_TRUE(WaitFor([&] { return routable(alive); }, kWait))
      << env.Member(alive).value_or(v1::MemberStats()).ShortDebugString();
  const uint64_t alive_bans = env.Member(alive).value_or(v1::MemberStats()).bans_total();
  std::map<std::string, int> by_member;
  for (int i = 0; i < 40; ++i) {
    absl::StatusOr<v1::ExecuteResponse> r = env.Read();
    ASSERT_TRUE(r.ok()) << r.status();
    ++by_member[r->member()];
  }
  EXPECT_EQ(by_member[dead], 0);
  EXPECT_EQ(by_member[alive], 40)
      << "to the primary: " << by_member[env.primary_id()] << "; " << alive
      << " now: " << env.Member(alive).value_or(v1::MemberStats()).ShortDebugString()
      << " (bans before: " << alive_bans << ")";
  std::cerr << "reads: " << point.reads() << ", writes: " << writes.load()
            << ", stream rows before the kill: " << watched.stream.values.size()
            << ", read retries: " << ReadRetries(env) - retries_before << "\n";
}

TEST(ReplicaRoutingTest, PrimaryKilledWritesAreHeldForTheNewPrimary) {
  Env& env = Env::Get();
  const absl::Time start = absl::Now();
  const std::string next_primary = env.replica_id(1);
  struct Outcome {
    int64_t id;
    absl::StatusCode code;
    std::string member;
    std::string error;
    absl::Time sent;
    absl::Time answered;
  };
  constexpr int kWriters = 3;
  std::atomic<bool> stop{false};
  std::atomic<int64_t> next_id{1};
  std::vector<std::vector<Outcome>> outcomes(kWriters);
  std::vector<std::thread> writers;
  for (int t = 0; t < kWriters; ++t) {
    writers.emplace_back([&, t] {
      while (!stop.load()) {
        const int64_t id = next_id.fetch_add(1);
        v1::ExecuteRequest r;
        r.set_sql("INSERT INTO log (id) VALUES ($1)");
        r.add_params()->set_int64_value(id);
        const absl::Time sent = absl::Now();
        absl::StatusOr<v1::ExecuteResponse> w = env.Execute(r);
        outcomes[t].push_back({id, w.status().code(), w.ok() ? w->member() : "",
                               std::string(w.status().message()), sent, absl::Now()});
      }
    });
  }
  auto acknowledged_on = [&](const std::string& member) {
    int n = 0;
    for (auto& o : outcomes) {
      for (const Outcome& x : o) n += x.code == absl::StatusCode::kOk && x.member == member;
    }
    return n;
  };
  // Writes flow on the old primary, then it dies and the replica is promoted.
  ASSERT_TRUE(WaitFor([&] { return next_id.load() > 30; }, kWait));
  const absl::Time kill_at = absl::Now();
  ASSERT_TRUE(env.cluster().primary().Kill().ok());
  // Every process of the old primary is gone (Kill waits for that).
  const absl::Time dead_at = absl::Now();
  const int64_t sent_before_promotion = next_id.load();
  const absl::Time promote_at = absl::Now();
  ASSERT_TRUE(env.cluster().Promote(1).ok());
  const absl::Time promoted_at = absl::Now();
  // Writes resume on the new primary.
  const bool resumed = WaitFor(
      [&] {
        absl::StatusOr<v1::ExecuteResponse> r = env.Read(0, false, /*primary=*/true);
        return r.ok() && r->member() == next_primary;
      },
      kWait);
  const int64_t after = next_id.load();
  ASSERT_TRUE(WaitFor([&] { return next_id.load() > after + 30; }, kWait));
  stop.store(true);
  for (auto& w : writers) w.join();
  ASSERT_TRUE(resumed);

  // The first write to fail lost its connection to the primary, which made
  // the primary suspect before that write was answered: from then on writes
  // are held for the next probe (which found it dead), not sent out on the
  // pool's other connections to the dying server.
  absl::Time first_failed = absl::InfiniteFuture();
  for (auto& o : outcomes) {
    for (const Outcome& x : o) {
      if (x.code != absl::StatusCode::kOk) first_failed = std::min(first_failed, x.answered);
    }
  }
  int failed = 0;
  std::set<int64_t> acked;
  for (auto& o : outcomes) {
    for (const Outcome& x : o) {
      if (x.code == absl::StatusCode::kOk) {
        acked.insert(x.id);
      } else {
        EXPECT_LT(x.sent, first_failed)
            << "write " << x.id << " was sent after another write had failed: " << x.error;
        ++failed;
        // Only a write the dying primary may have run fails, saying so: one
        // sent before its last process was gone (the server's backends die
        // one by one, and a write can reach one that is still alive after
        // another write's connection failed). A write sent later found no
        // connection to it and was held for the new primary.
        EXPECT_EQ(x.code, absl::StatusCode::kUnavailable) << "write " << x.id;
        EXPECT_TRUE(absl::StrContains(x.error, "may or may not have been committed"))
            << "write " << x.id << ": " << x.error;
        EXPECT_LT(x.sent, dead_at) << "write " << x.id << " was sent after the primary was dead";
        EXPECT_GE(x.answered, kill_at) << "write " << x.id << " failed before the kill";
        std::cerr << "write " << x.id << " sent " << absl::ToInt64Milliseconds(x.sent - start)
                  << " ms into the test failed at " << absl::ToInt64Milliseconds(x.answered - start)
                  << " ms: " << x.error << "\n";
      }
    }
  }
  EXPECT_GT(acknowledged_on(next_primary), 0);
  std::cerr << "killed " << absl::ToInt64Milliseconds(kill_at - start) << "-"
            << absl::ToInt64Milliseconds(dead_at - start) << " ms, promoted "
            << absl::ToInt64Milliseconds(promote_at - start) << "-"
            << absl::ToInt64Milliseconds(promoted_at - start) << " ms\n";
  std::cerr << "writes sent before the promotion: " << sent_before_promotion
            << ", acknowledged: " << acked.size() << ", failed: " << failed << "\n";
  // Every write the new primary acknowledged is there. (Writes the old
  // primary acknowledged may be lost with it: replication is asynchronous,
  // and a killed primary's last commits may not have streamed.)
  std::vector<int64_t> on_new;
  for (auto& o : outcomes) {
    for (const Outcome& x : o) {
      if (x.code == absl::StatusCode::kOk && x.member == next_primary) on_new.push_back(x.id);
    }
  }
  absl::StatusOr<std::string> present = env.cluster().replica(1).QueryValue(
      kDb, absl::StrCat("SELECT count(*) FROM log WHERE id IN (", absl::StrJoin(on_new, ","), ")"));
  ASSERT_TRUE(present.ok()) << present.status();
  EXPECT_EQ(*present, absl::StrCat(on_new.size()));
  // The held writes are counted, and none timed out.
  EXPECT_GT(env.Metric("poolside_query_failover_held_total{database=\"rr\"}").value_or(0), 0);
  EXPECT_EQ(env.Metric("poolside_query_failover_held_timeouts_total{database=\"rr\"}"), 0);
  EXPECT_EQ(env.Metric("poolside_query_failover_held_calls{database=\"rr\"}"), 0);
  // Each hold's time is in the histogram: as many as were held, together as
  // long as the total, none longer than this test.
  const double elapsed = absl::ToDoubleSeconds(absl::Now() - start);
  const std::optional<double> held =
      env.Metric("poolside_query_failover_held_total{database=\"rr\"}");
  const std::optional<double> held_s =
      env.Metric("poolside_query_failover_held_seconds_total{database=\"rr\"}");
  const std::string duration = "poolside_query_failover_held_duration_seconds";
  EXPECT_EQ(env.Metric(absl::StrCat(duration, "_count{database=\"rr\"}")), held);
  EXPECT_EQ(env.Metric(absl::StrCat(duration, "_bucket{database=\"rr\",le=\"+Inf\"}")), held);
  const std::optional<double> sum = env.Metric(absl::StrCat(duration, "_sum{database=\"rr\"}"));
  EXPECT_EQ(sum, held_s);
  EXPECT_GT(sum.value_or(0), 0);
  EXPECT_LE(sum.value_or(0), held.value_or(0) * elapsed);
  // The status page shows them: none held now, the count, and the p99.
  const std::string page = env.StatusPage();
  const size_t holds = page.find("<section id=\"failover-holds\">");
  ASSERT_NE(holds, std::string::npos) << page;
  const std::string row = page.substr(holds, page.find("</section>", holds) - holds);
  EXPECT_TRUE(absl::StrContains(
      row, absl::StrCat("<tr><td>rr</td><td>0</td><td>", static_cast<int64_t>(held.value_or(-1)),
                        "</td><td>0</td>")))
      << row;
  EXPECT_TRUE(absl::StrContains(row, "<th>held p99</th>")) << row;
  EXPECT_FALSE(absl::StrContains(row, "—")) << "a p50 or p99 is missing: " << row;
  EXPECT_EQ(env.Metric(absl::StrCat("poolside_query_member_role{database=\"rr\",member=\"",
                                    next_primary, "\",role=\"primary\"}")),
            1);
  // Writes go on after the failover: the pools' members say so.
  std::optional<v1::MemberStats> m = env.Member(next_primary);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->role(), "primary");

  // The cache follows the new primary (its WAL relay, listener and fences
  // connect where the primary is now, not to the dead DSN): it serves hits
  // again, and a write there by a plain client, which only the WAL tells the
  // cache about, is never answered from the old entry once relayed.
  ASSERT_TRUE(WaitFor(
      [&] {
        absl::StatusOr<v1::ExecuteResponse> r = env.Read(0, /*cached=*/true, false, 10);
        return r.ok() && r->cache() == v1::HIT;
      },
      kWait))
      << "the cache never served a hit after the failover";
  ASSERT_TRUE(env.cluster().replica(1).Exec(kDb, "UPDATE kv SET v = 4242 WHERE id = 10").ok());
  ASSERT_TRUE(WaitFor(
      [&] {
        absl::StatusOr<v1::ExecuteResponse> r = env.Read(0, /*cached=*/true, false, 10);
        return r.ok() && ValueOf(*r) == 4242;
      },
      kWait))
      << "the new primary's write never reached the cache";
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<v1::ExecuteResponse> r = env.Read(0, /*cached=*/true, false, 10);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(ValueOf(*r), 4242);
  }
}

}  // namespace
}  // namespace poolside::testing
