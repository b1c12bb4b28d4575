// A Patroni cluster under load through a real query_server and ingest_server
// whose database names Patroni's REST API (topology.patroniEndpoints) and
// whose `dsn` names the first leader. Callers read and write all along
// through query (point reads routed to replicas, INSERTs on the primary), and
// write keyed rows through ingest, while the leader changes:
//
// - switchover (`POST /switchover`): no read fails; every write is either
//   acknowledged and present on the new leader afterwards, or answered with
//   an error (UNAVAILABLE: its outcome unknown, or it did not run); writes
//   sent meanwhile are held and land on the new leader; every row ingest
//   acknowledged is on the new leader exactly once, its batches caught by the
//   switchover written there. Index creation and health checks, which use
//   sessions of their own, follow the primary although `dsn` names a replica
//   now.
// - failover (the leader's Patroni and PostgreSQL SIGKILLed, as when its
//   machine dies; synchronous replication, so that no acknowledged commit can
//   be lost with it; Patroni promotes the synchronous standby once the
//   leader's key expires, a few seconds): the same, except that a write sent
//   while the primary was dying may fail UNAVAILABLE, saying its outcome is
//   unknown when it was sent (present or not afterwards) and that it was not
//   committed or not executed otherwise (then absent). Afterwards nothing is
//   held, no held call timed out, a fresh write lands on the new primary, and
//   health checks pass although `dsn` names the dead member.

#include <atomic>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/ingest.grpc.pb.h"
#include "proto/poolside/v1/query.grpc.pb.h"
#include "tests/fixtures/http_get.h"
#include "tests/fixtures/patroni_cluster.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/postgres_cluster.h"

namespace poolside::testing {
namespace {

constexpr absl::Duration kWait = absl::Seconds(40);  // only reached when something is broken

absl::Status FromGrpc(const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

std::unique_ptr<grpc::ClientContext> Context(absl::Duration timeout) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(absl::ToInt64Milliseconds(timeout)));
  return ctx;
}

// A query_server and an ingest_server on the cluster's database "app", its
// DSN naming member `dsn_member`, its topology every member's REST API.
class Services {
 public:
  absl::Status Start(PatroniCluster& c, int dsn_member) {
    v1::QueryServiceConfig config;
    v1::DatabaseConfig* db = AddDatabase(&config, "app", c.Dsn(dsn_member));
    db->mutable_pool()->set_max_size(4);
    v1::TopologyConfig* t = db->mutable_topology();
    for (int i = 0; i < c.member_count(); ++i) t->add_patroni_endpoints(c.api_url(i));
    t->set_probe_interval_ms(100);
    t->set_probe_timeout_ms(800);
    t->set_failover_buffer_ms(30000);
    std::tie(query_, query_metrics_) =
        StartWithMetrics("services/query/query_server", config, "query_server");
    if (query_ == nullptr) return absl::InternalError("query_server did not start");

    v1::IngestServiceConfig ingest_config;
    *ingest_config.add_databases() = *db;
    AddTables(&ingest_config, "app", {"events"});
    ingest_config.mutable_batch()->set_linger_ms(5);
    ingest_config.mutable_batch()->set_copy_connections(2);
    std::tie(ingest_, ingest_metrics_) =
        StartWithMetrics("services/ingest/ingest_server", ingest_config, "ingest_server");
    if (ingest_ == nullptr) return absl::InternalError("ingest_server did not start");

    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = Connect(query_->address());
    if (!channel.ok()) return channel.status();
    query_stub_ = v1::QueryService::NewStub(*channel);
    channel = Connect(ingest_->address());
    if (!channel.ok()) return channel.status();
    ingest_stub_ = v1::IngestService::NewStub(*channel);
    return absl::OkStatus();
  }

  v1::QueryService::Stub& query() { return *query_stub_; }
  v1::IngestService::Stub& ingest() { return *ingest_stub_; }

  // The unary `method` of the query service, within `timeout`.
  template <typename Request, typename Response>
  absl::StatusOr<Response> Ask(grpc::Status (v1::QueryService::Stub::*method)(grpc::ClientContext*,
                                                                              const Request&,
                                                                              Response*),
                               const Request& request, absl::Duration timeout) {
    Response response;
    grpc::Status s = (query_stub_.get()->*method)(Context(timeout).get(), request, &response);
    if (!s.ok()) return FromGrpc(s);
    return response;
  }

  absl::StatusOr<v1::ExecuteResponse> Execute(const v1::ExecuteRequest& request) {
    return Ask(&v1::QueryService::Stub::Execute, request, absl::Seconds(30));
  }
  // SELECT v FROM kv WHERE id = 1 (42), routed to a replica.
  absl::StatusOr<v1::ExecuteResponse> Read() {
    v1::ExecuteRequest read;
    read.set_sql("SELECT v FROM kv WHERE id = $1");
    read.add_params()->set_int64_value(1);
    return Execute(read);
  }
  absl::StatusOr<v1::CheckDatabasesResponse> Check() {
    return Ask(&v1::QueryService::Stub::CheckDatabases, v1::CheckDatabasesRequest(),
               absl::Seconds(10));
  }
  absl::StatusOr<v1::GetPoolStatsResponse> Stats() {
    return Ask(&v1::QueryService::Stub::GetPoolStats, v1::GetPoolStatsRequest(), absl::Seconds(10));
  }
  // A series of query's (or ingest's) /metrics.
  std::optional<double> QueryMetric(absl::string_view series) const {
    return testing::MetricValue(query_metrics_, series);
  }
  std::optional<double> IngestMetric(absl::string_view series) const {
    return testing::MetricValue(ingest_metrics_, series);
  }

 private:
  std::unique_ptr<ServiceProcess> query_, ingest_;
  int query_metrics_ = 0, ingest_metrics_ = 0;
  std::unique_ptr<v1::QueryService::Stub> query_stub_;
  std::unique_ptr<v1::IngestService::Stub> ingest_stub_;
};

// The tables the load uses, made on the leader: log (query's INSERTs),
// events (ingest's rows), kv (query's reads: row 1 is 42).
absl::Status CreateSchema(PatroniCluster& c, int leader) {
  absl::StatusOr<std::string> made =
      testing::QueryDsn(c.Dsn(leader),
                        "CREATE TABLE log (id bigint PRIMARY KEY);"
                        "CREATE TABLE events (id bigint NOT NULL);"
                        "CREATE TABLE kv (id int PRIMARY KEY, v bigint NOT NULL);"
                        "INSERT INTO kv VALUES (1, 42) RETURNING v");
  return made.status();
}

// Callers through the services until Stop(): two writers INSERTing ids in
// order through query, two readers of kv's row 1, and one ingest caller
// writing keyed one-row requests (request i writes row i, key "row-i").
class Load {
 public:
  struct Write {
    int64_t id;
    absl::Status status;
    std::string member;
    absl::Time sent;
  };

  explicit Load(Services& services) : services_(services) {}
  ~Load() { Stop(); }

  void Start() {
    callers_.emplace_back([this] {
      for (int64_t id = 0; !stop_.load(); ++id) {
        v1::WriteRequest w;
        w.set_table("events");
        w.set_idempotency_key(absl::StrCat("row-", id));
        w.add_rows()->add_values()->set_int64_value(id);
        v1::WriteResponse response;
        grpc::Status s = services_.ingest().Write(Context(absl::Seconds(60)).get(), w, &response);
        ingested_.push_back(FromGrpc(s));
        if (s.ok()) ingest_acks_.fetch_add(1);
      }
    });
    for (int k = 0; k < 2; ++k) {
      callers_.emplace_back([this, k] {
        while (!stop_.load()) {
          v1::ExecuteRequest w;
          w.set_sql("INSERT INTO log (id) VALUES ($1)");
          const int64_t id = next_id_.fetch_add(1);
          w.add_params()->set_int64_value(id);
          const absl::Time sent = absl::Now();
          absl::StatusOr<v1::ExecuteResponse> r = services_.Execute(w);
          writes_[k].push_back({id, r.status(), r.ok() ? r->member() : "", sent});
        }
      });
      callers_.emplace_back([this, k] {
        while (!stop_.load()) {
          absl::StatusOr<v1::ExecuteResponse> r = services_.Read();
          if (!r.ok()) {
            failed_reads_[k].push_back(r.status());
          } else if (r->result().rows_size() != 1 ||
                     r->result().rows(0).values(0).int64_value() != 42) {
            failed_reads_[k].push_back(absl::InternalError("wrong value"));
          }
          reads_.fetch_add(1);
        }
      });
    }
  }

  void Stop() {
    stop_.store(true);
    for (std::thread& t : callers_) t.join();
    callers_.clear();
  }

  int64_t writes_sent() const { return next_id_.load(); }
  int reads() const { return reads_.load(); }
  int ingest_acks() const { return ingest_acks_.load(); }
  // Whether a write was acknowledged by `member` so far. After Stop().
  bool AcknowledgedOn(const std::string& member) const {
    for (const Write& w : writes()) {
      if (w.status.ok() && w.member == member) return true;
    }
    return false;
  }

  // After Stop().
  std::vector<Write> writes() const {
    std::vector<Write> all = writes_[0];
    all.insert(all.end(), writes_[1].begin(), writes_[1].end());
    return all;
  }
  std::vector<absl::Status> failed_reads() const {
    std::vector<absl::Status> all = failed_reads_[0];
    all.insert(all.end(), failed_reads_[1].begin(), failed_reads_[1].end());
    return all;
  }
  // Ingest request i's answer.
  const std::vector<absl::Status>& ingested() const { return ingested_; }

 private:
  Services& services_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> next_id_{1};
  std::atomic<int> reads_{0};
  std::atomic<int> ingest_acks_{0};
  std::vector<Write> writes_[2];
  std::vector<absl::Status> failed_reads_[2];
  std::vector<absl::Status> ingested_;
  std::vector<std::thread> callers_;
};

// SELECT count(*) FROM `table` WHERE id IN (ids) on member `i`.
std::string CountOf(PatroniCluster& c, int i, const std::string& table,
                    const std::vector<int64_t>& ids) {
  if (ids.empty()) return "0";
  absl::StatusOr<std::string> n = testing::QueryDsn(
      c.Dsn(i),
      absl::StrCat("SELECT count(*) FROM ", table, " WHERE id IN (", absl::StrJoin(ids, ","), ")"));
  EXPECT_TRUE(n.ok()) << n.status();
  return n.value_or("?");
}

// Every row ingest acknowledged is on member `i` once, and no row twice;
// every request succeeded (keyed requests caught by a primary change are
// retried on the new one).
void ExpectIngestedOnce(PatroniCluster& c, int i, const Load& load) {
  std::vector<int64_t> rows;
  for (size_t id = 0; id < load.ingested().size(); ++id) {
    if (load.ingested()[id].ok()) {
      rows.push_back(static_cast<int64_t>(id));
    } else {
      ADD_FAILURE() << "ingest request " << id << " failed: " << load.ingested()[id];
    }
  }
  std::cerr << "rows ingested: " << rows.size() << " of " << load.ingested().size() << "\n";
  EXPECT_EQ(CountOf(c, i, "events", rows), absl::StrCat(rows.size()))
      << "acknowledged rows are missing";
  absl::StatusOr<std::string> twice =
      testing::QueryDsn(c.Dsn(i), "SELECT count(*) - count(DISTINCT id) FROM events");
  ASSERT_TRUE(twice.ok()) << twice.status();
  EXPECT_EQ(*twice, "0") << "rows written twice";
}

// Nothing is held for a primary any more, and no held call or batch timed
// out.
void ExpectNothingHeld(Services& s) {
  EXPECT_EQ(s.QueryMetric("poolside_query_failover_held_calls{database=\"app\"}"), 0);
  EXPECT_EQ(s.QueryMetric("poolside_query_failover_held_timeouts_total{database=\"app\"}"), 0);
  EXPECT_EQ(s.IngestMetric("poolside_ingest_failover_held_batches{database=\"app\"}"), 0);
  EXPECT_EQ(s.IngestMetric("poolside_ingest_failover_held_timeouts_total{database=\"app\"}"), 0);
}

// The database checks healthy: the health check's pool connects to the
// current primary, whatever `dsn` names.
void ExpectHealthy(Services& s) {
  absl::StatusOr<v1::CheckDatabasesResponse> check = s.Check();
  ASSERT_TRUE(check.ok()) << check.status();
  ASSERT_EQ(check->databases_size(), 1);
  EXPECT_TRUE(check->databases(0).healthy()) << check->databases(0).error();
}

// Reads reach a replica once the catalog is loaded and the replicas probed.
bool RoutableToAReplica(Services& s, const std::string& leader) {
  return WaitFor(
      [&] {
        absl::StatusOr<v1::ExecuteResponse> r = s.Read();
        return r.ok() && r->member() != leader && !r->member().empty();
      },
      kWait);
}

// Where both tests start from: a Patroni cluster with the schema, the services
// routing reads to a replica, and the load running past its first writes,
// reads and ingested rows.
struct UnderLoad {
  std::unique_ptr<PatroniCluster> cluster;
  int leader = -1;
  Services services;
  std::unique_ptr<Load> load;
};

void StartUnderLoad(PatroniOptions options, UnderLoad* out) {
  absl::StatusOr<std::unique_ptr<PatroniCluster>> started = PatroniCluster::Start(options);
  ASSERT_TRUE(started.ok()) << started.status();
  out->cluster = *std::move(started);
  PatroniCluster& c = *out->cluster;
  absl::StatusOr<int> leader = c.WaitForLeader(kWait);
  ASSERT_TRUE(leader.ok()) << leader.status();
  out->leader = *leader;
  ASSERT_TRUE(CreateSchema(c, *leader).ok());
  ASSERT_TRUE(out->services.Start(c, *leader).ok());
  ASSERT_TRUE(RoutableToAReplica(out->services, c.name(*leader)));
  out->load = std::make_unique<Load>(out->services);
  Load& load = *out->load;
  load.Start();
  ASSERT_TRUE(WaitFor(
      [&] { return load.writes_sent() > 50 && load.reads() > 50 && load.ingest_acks() > 20; },
      kWait));
}

// Whether writes and ingestion go on after the primary changed (50 more
// writes sent, 20 more ingest acknowledgements); the load is stopped then.
bool LoadMovesOnThenStops(Load& load) {
  const int64_t writes_at = load.writes_sent();
  const int ingested_at = load.ingest_acks();
  const bool moved = WaitFor(
      [&] { return load.writes_sent() > writes_at + 50 && load.ingest_acks() > ingested_at + 20; },
      kWait);
  load.Stop();
  return moved;
}

TEST(ReplicaSwitchoverTest, SwitchoverUnderLoadLosesNothing) {
  UnderLoad run;
  ASSERT_NO_FATAL_FAILURE(StartUnderLoad({}, &run));
  PatroniCluster& c = *run.cluster;
  Services& services = run.services;
  Load& load = *run.load;
  const int candidate = (run.leader + 1) % c.member_count();
  ASSERT_TRUE(c.Switchover(run.leader, candidate).ok());
  ASSERT_TRUE(LoadMovesOnThenStops(load)) << "writes stalled after the switchover";
  EXPECT_TRUE(load.AcknowledgedOn(c.name(candidate)));

  for (const absl::Status& s : load.failed_reads()) ADD_FAILURE() << "read failed: " << s;
  std::vector<int64_t> acked;
  int failed = 0;
  for (const Load::Write& w : load.writes()) {
    if (w.status.ok()) {
      acked.push_back(w.id);
    } else {
      ++failed;
      EXPECT_EQ(w.status.code(), absl::StatusCode::kUnavailable) << w.status;
    }
  }
  // Only a write in flight on the old leader when it went down may fail
  // (one per writer); the ones sent meanwhile are held for the new leader.
  EXPECT_LE(failed, 2);
  std::cerr << "writes acknowledged: " << acked.size() << ", failed: " << failed
            << ", reads: " << load.reads() << "\n";
  ASSERT_TRUE(c.WaitForLeaderWithReplicas(candidate, 1, kWait).ok());
  EXPECT_EQ(CountOf(c, candidate, "log", acked), absl::StrCat(acked.size()))
      << "acknowledged writes are missing";
  ExpectIngestedOnce(c, candidate, load);

  // `dsn` names the old leader, a replica now: sessions of the service's
  // own follow the primary. An index is made there (CREATE INDEX cannot run
  // on a replica), and the health check passes.
  v1::CreateIndexRequest create;
  create.set_database("app");
  create.mutable_index()->set_table("kv");
  create.mutable_index()->add_columns("v");
  v1::CreateIndexResponse created;
  grpc::Status made =
      services.query().CreateIndex(Context(absl::Seconds(30)).get(), create, &created);
  ASSERT_TRUE(made.ok()) << made.error_message();
  EXPECT_EQ(testing::QueryDsn(c.Dsn(candidate),
                              absl::StrCat("SELECT count(*) FROM pg_indexes WHERE indexname = '",
                                           created.index_name(), "'"))
                .value_or(""),
            "1");
  ExpectHealthy(services);
  ExpectNothingHeld(services);
}

TEST(ReplicaSwitchoverTest, FailoverBySigkillUnderLoad) {
  const absl::Time began = absl::Now();
  UnderLoad run;
  ASSERT_NO_FATAL_FAILURE(StartUnderLoad({.ttl = 5, .synchronous_mode = true}, &run));
  PatroniCluster& c = *run.cluster;
  Services& services = run.services;
  Load& load = *run.load;
  const absl::Time killed = absl::Now();
  ASSERT_TRUE(c.KillMember(run.leader).ok());
  // Every process of the old leader is gone (KillMember waits for that).
  const absl::Time dead = absl::Now();
  absl::StatusOr<int> next = c.WaitForLeader(kWait);
  ASSERT_TRUE(next.ok()) << next.status();
  ASSERT_NE(*next, run.leader);
  const absl::Duration promoted = absl::Now() - killed;
  ASSERT_TRUE(LoadMovesOnThenStops(load)) << "writes stalled after the failover";
  EXPECT_TRUE(load.AcknowledgedOn(c.name(*next))) << "the new primary is not written to";

  // Reads run on replicas, which stay up: none fails, during the failover
  // (held while no replica is within the lag bound and no primary is
  // known) or after.
  for (const absl::Status& s : load.failed_reads()) ADD_FAILURE() << "read failed: " << s;
  std::vector<int64_t> acked, unknown, not_committed;
  for (const Load::Write& w : load.writes()) {
    if (w.status.ok()) {
      acked.push_back(w.id);
      continue;
    }
    // In flight on the dying primary: UNAVAILABLE, saying what became of
    // it. Sent before its last process was gone (its backends die one by
    // one, so a writer's next write can still reach one after its previous
    // write's connection failed); a write sent later found no connection to
    // it and was held for the new primary.
    EXPECT_EQ(w.status.code(), absl::StatusCode::kUnavailable) << w.status;
    EXPECT_LT(w.sent, dead) << "write " << w.id
                            << " was sent after the old leader was dead: " << w.status;
    if (absl::StrContains(w.status.message(), "outcome unknown")) {
      unknown.push_back(w.id);
    } else if (absl::StrContains(w.status.message(), "not committed") ||
               absl::StrContains(w.status.message(), "not executed")) {
      not_committed.push_back(w.id);
    } else {
      ADD_FAILURE() << "write " << w.id << " failed without saying its outcome: " << w.status;
    }
  }
  std::cerr << "failover: promoted " << absl::FormatDuration(promoted)
            << " after the kill; writes acknowledged: " << acked.size()
            << ", outcome unknown: " << unknown.size()
            << ", not committed: " << not_committed.size() << ", reads: " << load.reads() << "\n";
  EXPECT_EQ(CountOf(c, *next, "log", acked), absl::StrCat(acked.size()))
      << "acknowledged writes are missing";
  EXPECT_EQ(CountOf(c, *next, "log", not_committed), "0")
      << "a write answered as not committed is there";
  ExpectIngestedOnce(c, *next, load);

  // What is left: nothing held, the pools on the new primary (a fresh write
  // there, the health check although `dsn` names the dead member), the dead
  // member unhealthy.
  EXPECT_GT(
      services.QueryMetric("poolside_query_failover_held_total{database=\"app\"}").value_or(0), 0)
      << "no call was held while there was no primary";
  ExpectNothingHeld(services);
  v1::ExecuteRequest fresh;
  fresh.set_sql("INSERT INTO log (id) VALUES (-1)");
  absl::StatusOr<v1::ExecuteResponse> wrote = services.Execute(fresh);
  ASSERT_TRUE(wrote.ok()) << wrote.status();
  EXPECT_EQ(wrote->member(), c.name(*next));
  ExpectHealthy(services);
  absl::StatusOr<v1::GetPoolStatsResponse> stats = services.Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  for (const v1::MemberStats& m : stats->members()) {
    if (m.member() == c.name(run.leader)) {
      EXPECT_FALSE(m.healthy()) << m.ShortDebugString();
    }
    if (m.member() == c.name(*next)) {
      EXPECT_EQ(m.role(), "primary") << m.ShortDebugString();
    }
  }
  std::cerr << "failover test wall time before teardown: "
            << absl::FormatDuration(absl::Now() - began) << "\n";
}

}  // namespace
}  // namespace poolside::testing
