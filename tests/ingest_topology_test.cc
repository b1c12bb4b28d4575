// The ingest service on a database with a topology (docs/ingest.md, Replicas
// and failover), through a real ingest_server on a primary with two streaming
// replicas (replica 1 synchronous):
//  - a `dsn` naming a replica: every row lands on the primary, and ingest
//    opens no connection of its own on the replica;
//  - a topology without any primary: writes answer UNAVAILABLE naming the
//    cause once failoverBufferMs has passed, nothing acknowledged or written;
//  - the member ingest writes to turned into a replica under it (its new
//    sessions reach a server in recovery while the probes still see the
//    old one; SQLSTATE 25006 on the COPY): each batch is held, written
//    once on the next primary, and acknowledged only after that commit;
//  - the primary SIGKILLed under continuous writes (keyed and unkeyed) and
//    the synchronous replica promoted: every acknowledged row is on the new
//    primary exactly once, every other one at most once and answered with
//    UNAVAILABLE, held batches are counted, and writes go on there.
// Members are told apart by "host:port", as the topology names them.

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/ingest.grpc.pb.h"
#include "tests/fixtures/fault_proxy.h"
#include "tests/fixtures/http_get.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/refusing_port.h"
#include "tests/fixtures/replicated_cluster.h"
#include "tests/fixtures/values.h"

namespace poolside::testing {
namespace {

constexpr char kDb[] = "it";
// Only reached when something is broken.
constexpr absl::Duration kWait = absl::Seconds(20);

std::string MemberId(PostgresCluster& pg) { return absl::StrCat(pg.host(), ":", pg.port()); }
std::string MemberEntry(PostgresCluster& pg) {
  return absl::StrCat("host=", pg.host(), " port=", pg.port());
}

// A primary and two replicas, replica 1 synchronous; aborts if it cannot
// be had.
std::unique_ptr<ReplicatedCluster> StartCluster() {
  absl::StatusOr<std::unique_ptr<ReplicatedCluster>> c = ReplicatedCluster::Start({.replicas = 2});
  if (!c.ok()) {
    std::cerr << "cannot start the cluster: " << c.status() << "\n";
    std::abort();
  }
  PostgresCluster& primary = (*c)->primary();
  // Commits wait for replica 1 (the one promoted below) to have flushed
  // them: an acknowledged row is on it. Set on the primary only (the
  // replicas were copied before); the fixture's synchronous_commit = off
  // would make the standby asynchronous.
  for (absl::Status s :
       {primary.CreateDatabase(kDb),
        primary.Exec(kDb,
                     "CREATE TABLE events (id bigint NOT NULL, writer int NOT NULL);"
                     "CREATE TABLE orphans (id bigint NOT NULL, writer int NOT NULL)"),
        primary.Exec("postgres", "ALTER SYSTEM SET synchronous_standby_names = 'replica_1'"),
        primary.Exec("postgres", "ALTER SYSTEM SET synchronous_commit = on"),
        primary.Exec("postgres", "SELECT pg_reload_conf()")}) {
    if (!s.ok()) {
      std::cerr << "cannot set the cluster up: " << s << "\n";
      std::abort();
    }
  }
  const bool synchronous = WaitFor(
      [&] {
        absl::StatusOr<std::string> state = primary.QueryValue(
            "postgres",
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'replica_1'");
        return state.ok() && *state == "sync";
      },
      kWait);
  if (!synchronous || !(*c)->WaitForAllReplicas(kWait).ok()) {
    std::cerr << "replica_1 never became a synchronous standby\n";
    std::abort();
  }
  return *std::move(c);
}

// One cluster for every test, in order (the last one kills the primary);
// destroyed at exit, which stops its servers.
ReplicatedCluster& Cluster() {
  static const std::unique_ptr<ReplicatedCluster> cluster = StartCluster();
  return *cluster;
}

struct Ingest {
  std::unique_ptr<ServiceProcess> process;
  int metrics_port = 0;
  std::unique_ptr<v1::IngestService::Stub> stub;

  // A series of /metrics, e.g. `poolside_ingest_failover_held_total{...}`.
  std::optional<double> Metric(absl::string_view series) const {
    return testing::MetricValue(metrics_port, series);
  }
  std::optional<double> Writing(const std::string& member) const {
    return Metric(absl::StrCat("poolside_ingest_writing_member{database=\"", kDb, "\",member=\"",
                               member, "\"}"));
  }
  std::optional<double> Held(absl::string_view which) const {
    return Metric(absl::StrCat("poolside_ingest_failover_", which, "{database=\"", kDb, "\"}"));
  }
  v1::GetIngestStatsResponse Stats() const {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::GetIngestStatsResponse stats;
    grpc::Status s = stub->GetStats(&ctx, {}, &stats);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return stats;
  }
};

// An ingest_server writing tables events and orphans of `dsn`'s database,
// whose topology adds `members`.
// `warm`: false opens no connection before the first write (min_idle 0);
// `min_idle`, `validate_after_idle_ms` > 0: the pool's settings.
Ingest StartIngest(const std::string& dsn, const std::vector<std::string>& members,
                   uint32_t failover_buffer_ms, bool warm = true, uint32_t min_idle = 0,
                   uint32_t validate_after_idle_ms = 0) {
  v1::IngestServiceConfig config;
  v1::DatabaseConfig* db = AddDatabase(&config, kDb, dsn);
  db->mutable_pool()->set_startup_retry_ms(1000);
  if (!warm) db->mutable_pool()->set_min_idle(0);
  if (min_idle > 0) db->mutable_pool()->set_min_idle(min_idle);
  if (validate_after_idle_ms > 0) {
    db->mutable_pool()->set_validate_after_idle_ms(validate_after_idle_ms);
  }
  v1::TopologyConfig* t = db->mutable_topology();
  for (const std::string& m : members) t->add_replicas(m);
  t->set_probe_interval_ms(50);
  t->set_probe_timeout_ms(warm ? 500 : 5000);
  t->set_failover_buffer_ms(failover_buffer_ms);
  AddTables(&config, kDb, {"events", "orphans"});
  config.mutable_batch()->set_linger_ms(5);
  config.mutable_batch()->set_copy_connections(2);
  Ingest ingest;
  std::tie(ingest.process, ingest.metrics_port) =
      testing::StartWithMetrics("services/ingest/ingest_server", config, "ingest_server");
  if (ingest.process == nullptr) return ingest;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      testing::Connect(ingest.process->address());
  EXPECT_TRUE(channel.ok()) << channel.status();
  if (channel.ok()) ingest.stub = v1::IngestService::NewStub(*channel);
  return ingest;
}

// Rows first..first+n-1 of `table` from `writer`, under `key` ("" for none).
absl::StatusOr<v1::WriteResponse> Write(const Ingest& ingest, const std::string& table,
                                        int64_t first, int n, int writer, const std::string& key) {
  v1::WriteRequest w = IdRowsWrite("", table, first, n, "writer", Int(writer));
  w.set_idempotency_key(key);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::WriteResponse response;
  grpc::Status s = ingest.stub->Write(&ctx, w, &response);
  if (!s.ok())
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  return response;
}

// One value of `sql` on `pg`, or the error as text.
std::string Value(PostgresCluster& pg, const std::string& sql, const char* dbname = kDb) {
  absl::StatusOr<std::string> v = pg.QueryValue(dbname, sql);
  return v.ok() ? *v : v.status().ToString();
}

// Backends of ingest's own pools on `pg` (the probes name themselves
// poolside-monitor).
std::string IngestBackends(PostgresCluster& pg) {
  return Value(pg,
               "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
               "'poolside-ingest/%'",
               "postgres");
}

// SIGTERM; whether it exited 0 (drained).
bool Terminated(const Ingest& ingest) {
  absl::StatusOr<int> code = testing::Terminate(*ingest.process);
  return code.ok() && *code == 0;
}

TEST(IngestTopologyTest, DsnNamingAReplicaStillWritesOnThePrimary) {
  ReplicatedCluster& cluster = Cluster();
  PostgresCluster& replica = cluster.replica(0);
  const Ingest ingest = StartIngest(
      replica.Dsn(kDb), {MemberEntry(cluster.primary()), MemberEntry(cluster.replica(1))},
      /*failover_buffer_ms=*/10000);
  ASSERT_NE(ingest.stub, nullptr);
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<v1::WriteResponse> r =
        Write(ingest, "events", 1000 + 10 * i, 10, /*writer=*/0, absl::StrCat("dsn-replica-", i));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->rows_written(), 10u);
    EXPECT_FALSE(r->duplicate());
  }
  EXPECT_EQ(Value(cluster.primary(), "SELECT count(*) FROM events WHERE writer = 0"), "50");
  EXPECT_EQ(ingest.Writing(MemberId(cluster.primary())), 1);
  EXPECT_FALSE(ingest.Writing(MemberId(replica)).has_value());
  // Ingest's pools are open on the primary, none on the replica `dsn` names.
  EXPECT_NE(IngestBackends(cluster.primary()), "0");
  EXPECT_EQ(IngestBackends(replica), "0");
  const v1::GetIngestStatsResponse stats = ingest.Stats();
  EXPECT_EQ(stats.batches_failed(), 0u);
  EXPECT_EQ(stats.requests_failed(), 0u);
  EXPECT_EQ(ingest.Metric(absl::StrCat("poolside_ingest_member_role{database=\"", kDb,
                                       "\",member=\"", MemberId(replica), "\",role=\"replica\"}")),
            1);
  // The rows streamed to the replicas, as writes on the primary do.
  ASSERT_TRUE(cluster.WaitForAllReplicas(kWait).ok());
  EXPECT_EQ(Value(replica, "SELECT count(*) FROM events WHERE writer = 0"), "50");
  EXPECT_TRUE(Terminated(ingest));
}

TEST(IngestTopologyTest, NoPrimaryAnswersUnavailableAfterTheBufferNothingWritten) {
  ReplicatedCluster& cluster = Cluster();
  // Members: a replica, and a port that refuses connections.
  RefusingPort refusing;
  ASSERT_NE(refusing.port(), 0);
  const Ingest ingest = StartIngest(cluster.replica(0).Dsn(kDb),
                                    {absl::StrCat("host=127.0.0.1 port=", refusing.port())},
                                    /*failover_buffer_ms=*/500);
  ASSERT_NE(ingest.stub, nullptr);
  for (const std::string& key : {std::string("orphan"), std::string()}) {
    absl::StatusOr<v1::WriteResponse> r = Write(ingest, "orphans", 1, 3, /*writer=*/9, key);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
    // Actionable: what was waited for, how long, that nothing was written,
    // and what to check.
    EXPECT_TRUE(absl::StrContains(
        r.status().message(), "no primary could be written to within failoverBufferMs (500 ms)"))
        << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(), "no member is known to accept writes"))
        << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(), "Nothing of this request was written"))
        << r.status();
  }
  EXPECT_GE(ingest.Held("held_timeouts_total").value_or(0), 1);
  EXPECT_EQ(ingest.Held("held_batches"), 0);
  // No wait ended with a primary: the histogram holds the timeouts, each
  // some time long, together as long as the total.
  EXPECT_EQ(ingest.Held("held_duration_seconds_count"), ingest.Held("held_timeouts_total"));
  EXPECT_GT(ingest.Held("held_duration_seconds_sum").value_or(0), 0);
  EXPECT_EQ(ingest.Held("held_duration_seconds_sum"), ingest.Held("held_seconds_total"));
  EXPECT_EQ(ingest.Stats().rows_written(), 0u);
  EXPECT_EQ(Value(cluster.primary(), "SELECT count(*) FROM orphans"), "0");
  EXPECT_EQ(IngestBackends(cluster.replica(0)), "0");
  EXPECT_TRUE(Terminated(ingest));
}

// Terminates the probes' sessions on `pg` (they reconnect at their next
// probe); how many there were, or the error.
std::string TerminateProbes(PostgresCluster& pg) {
  return Value(pg,
               "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
               "application_name = 'poolside-monitor'",
               "postgres");
}

TEST(IngestTopologyTest, CopyRefusedAsReadOnlyByADemotedPrimaryIsHeldAndWrittenOnceOnTheNext) {
  ReplicatedCluster& cluster = Cluster();
  PostgresCluster& primary = cluster.primary();
  PostgresCluster& replica = cluster.replica(0);
  // Members a and b are proxies, a to the primary and b to a replica, until
  // they swap servers: a's new sessions then reach a server in recovery
  // while its probe, on the session it holds, still sees the primary, so
  // ingest keeps taking a for the primary and its COPY gets SQLSTATE 25006
  // (what a demoted primary answers) every time, not only when it beats
  // the probes. The cluster itself does not change.
  absl::StatusOr<std::unique_ptr<FaultProxy>> a = FaultProxy::Start("127.0.0.1", primary.port());
  absl::StatusOr<std::unique_ptr<FaultProxy>> b = FaultProxy::Start("127.0.0.1", replica.port());
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  const std::string a_id = absl::StrCat("127.0.0.1:", (*a)->port());
  const std::string b_id = absl::StrCat("127.0.0.1:", (*b)->port());
  const Ingest ingest = StartIngest(
      absl::StrCat("host=127.0.0.1 port=", (*a)->port(), " dbname=", kDb, " user=postgres"),
      {absl::StrCat("host=127.0.0.1 port=", (*b)->port())},
      /*failover_buffer_ms=*/15000, /*warm=*/false);
  ASSERT_NE(ingest.stub, nullptr);
  auto role_of = [&](const std::string& member, const char* role) {
    return ingest.Metric(absl::StrCat("poolside_ingest_member_role{database=\"", kDb,
                                      "\",member=\"", member, "\",role=\"", role, "\"}"));
  };
  ASSERT_TRUE(WaitFor([&] { return role_of(a_id, "primary") == 1; }, kWait));
  (*a)->ForwardNewConnectionsTo(replica.port());
  (*b)->ForwardNewConnectionsTo(primary.port());
  // Ingest's sessions on the primary (its catalog reads) end once idle long
  // enough that its pool pings them before handing them out: every session
  // of ingest's own from here reaches the replica.
  ASSERT_TRUE(WaitFor(
      [&] {
        return Value(primary,
                     "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
                     "'poolside-ingest/%' AND (state <> 'idle' OR state_change > now() - "
                     "interval '2 s')",
                     "postgres") == "0";
      },
      kWait));
  Value(primary,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name "
        "LIKE 'poolside-ingest/%'",
        "postgres");
  ASSERT_TRUE(WaitFor([&] { return IngestBackends(primary) == "0"; }, kWait));

  // A keyed request, then an unkeyed one, each in a batch of its own (the
  // second sent once the first is held): each batch meets 25006 and is held.
  constexpr int kRows = 4;
  const int64_t first[2] = {int64_t{7} << 32, (int64_t{7} << 32) + 100};
  const std::string keys[2] = {"demoted-keyed", ""};
  absl::StatusOr<v1::WriteResponse> results[2] = {absl::UnknownError("not answered"),
                                                  absl::UnknownError("not answered")};
  std::atomic<int> answered[2] = {0, 0};
  std::vector<std::thread> writers;
  for (int i = 0; i < 2; ++i) {
    writers.emplace_back([&, i] {
      results[i] = Write(ingest, "events", first[i], kRows, /*writer=*/7, keys[i]);
      answered[i].store(1);
    });
    const bool held =
        WaitFor([&] { return ingest.Held("held_batches") == i + 1 || answered[i].load(); }, kWait);
    if (!held || answered[i].load()) {
      for (std::thread& t : writers) t.join();
      FAIL() << "request " << i << " was not held: "
             << (answered[i].load() ? results[i].status().ToString() : "not answered");
    }
  }
  // Held, so neither answered nor written.
  EXPECT_EQ(answered[0].load() + answered[1].load(), 0);
  EXPECT_EQ(Value(primary, "SELECT count(*) FROM events WHERE writer = 7"), "0");
  EXPECT_EQ(ingest.Held("held_timeouts_total"), 0);

  // The probes' sessions end; from their next ones the probes see a in
  // recovery and b accepting writes: b is the next primary.
  EXPECT_EQ(TerminateProbes(primary), "1");
  TerminateProbes(replica);
  ASSERT_TRUE(WaitFor([&] { return role_of(b_id, "primary") == 1; }, kWait));
  for (std::thread& t : writers) t.join();
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(results[i].ok()) << "request " << i << ": " << results[i].status();
    EXPECT_EQ(results[i]->rows_written(), static_cast<uint64_t>(kRows)) << "request " << i;
    EXPECT_FALSE(results[i]->duplicate()) << "request " << i;
  }
  // Acknowledged after the commit on the primary (b's server), exactly once.
  EXPECT_EQ(Value(primary, "SELECT count(*) FROM events WHERE writer = 7"),
            absl::StrCat(2 * kRows));
  EXPECT_EQ(Value(primary, "SELECT count(DISTINCT id) FROM events WHERE writer = 7"),
            absl::StrCat(2 * kRows));
  EXPECT_EQ(ingest.Writing(b_id), 1);
  EXPECT_FALSE(ingest.Writing(a_id).has_value());
  EXPECT_EQ(ingest.Held("held_batches"), 0);
  EXPECT_EQ(ingest.Held("held_timeouts_total"), 0);
  EXPECT_GE(ingest.Held("held_total").value_or(0), 2);
  const v1::GetIngestStatsResponse stats = ingest.Stats();
  EXPECT_EQ(stats.batches_failed(), 0u);
  EXPECT_EQ(stats.requests_failed(), 0u);
  // The keyed request again: found stored under its key, not written twice.
  absl::StatusOr<v1::WriteResponse> again =
      Write(ingest, "events", first[0], kRows, /*writer=*/7, keys[0]);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->duplicate());
  EXPECT_EQ(Value(primary, "SELECT count(*) FROM events WHERE writer = 7"),
            absl::StrCat(2 * kRows));
  EXPECT_TRUE(Terminated(ingest));
}

TEST(IngestTopologyTest, CopyConnectionsLostOnAHealthyPrimaryAreReplacedNotWaitedOut) {
  ReplicatedCluster& cluster = Cluster();
  PostgresCluster& primary = cluster.primary();
  // Pooled connections are never pre-pinged here (as connections used in the
  // last validateAfterIdleMs are not under a steady load), and at least two
  // are kept open: a flush's immediate retry on another pooled one meets a
  // dead one too.
  const Ingest ingest =
      StartIngest(primary.Dsn(kDb), {MemberEntry(cluster.replica(0))}, /*failover_buffer_ms=*/20000,
                  /*warm=*/true, /*min_idle=*/3, /*validate_after_idle_ms=*/600000);
  ASSERT_NE(ingest.stub, nullptr);
  // The table's description read first (its catalog read would meet the
  // dead connections otherwise).
  absl::StatusOr<v1::WriteResponse> first =
      Write(ingest, "events", (int64_t{11} << 32) + 1000, 5, /*writer=*/11, "");
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(WaitFor([&] { return std::atoi(IngestBackends(primary).c_str()) >= 2; }, kWait))
      << IngestBackends(primary);
  // Every session of ingest's pools ends (a network blip, an operator's
  // pg_terminate_backend); the probes' sessions and the primary stay. The
  // primary did not go anywhere: waiting for a new one would wait out
  // failoverBufferMs and then fail the request.
  Value(primary,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name "
        "LIKE 'poolside-ingest/%'",
        "postgres");
  ASSERT_TRUE(WaitFor([&] { return IngestBackends(primary) == "0"; }, kWait));
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<v1::WriteResponse> r = Write(ingest, "events", (int64_t{11} << 32) + 100 * i, 5,
                                                /*writer=*/11, i == 0 ? "lost-connections" : "");
    ASSERT_TRUE(r.ok()) << "write " << i << ": " << r.status();
    EXPECT_EQ(r->rows_written(), 5u);
  }
  EXPECT_EQ(Value(primary, "SELECT count(*) FROM events WHERE writer = 11"), "15");
  const v1::GetIngestStatsResponse stats = ingest.Stats();
  EXPECT_EQ(stats.batches_failed(), 0u);
  EXPECT_EQ(stats.requests_failed(), 0u);
  EXPECT_EQ(ingest.Held("held_timeouts_total"), 0);
  EXPECT_EQ(ingest.Writing(MemberId(primary)), 1);
  EXPECT_TRUE(Terminated(ingest));
}

TEST(IngestTopologyTest, PrimaryKilledAndReplicaPromotedUnderContinuousWrites) {
  ReplicatedCluster& cluster = Cluster();
  const absl::Time start = absl::Now();
  const std::string old_primary = MemberId(cluster.primary());
  const std::string next_primary = MemberId(cluster.replica(1));
  const Ingest ingest =
      StartIngest(cluster.primary().Dsn(kDb),
                  {MemberEntry(cluster.replica(0)), MemberEntry(cluster.replica(1))},
                  /*failover_buffer_ms=*/15000);
  ASSERT_NE(ingest.stub, nullptr);

  // Writers send requests of kRows rows with ids of their own; even requests
  // carry an idempotency key, odd ones none.
  constexpr int kWriters = 4, kRows = 5;
  struct Outcome {
    int64_t first;
    absl::StatusCode code;
    std::string message;
    absl::Time sent;
  };
  std::atomic<bool> stop{false};
  std::atomic<int> acknowledged{0};
  std::vector<std::vector<Outcome>> outcomes(kWriters);
  std::vector<std::thread> writers;
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      for (int64_t n = 0; !stop.load(); ++n) {
        const int64_t first = (int64_t{w} << 32) + n * kRows;
        const std::string key = n % 2 == 0 ? absl::StrCat("w", w, "-", n) : "";
        const absl::Time sent = absl::Now();
        absl::StatusOr<v1::WriteResponse> r = Write(ingest, "events", first, kRows, w + 1, key);
        outcomes[w].push_back({first, r.status().code(), std::string(r.status().message()), sent});
        if (r.ok()) acknowledged.fetch_add(1);
      }
    });
  }
  ASSERT_TRUE(WaitFor([&] { return acknowledged.load() >= 40; }, kWait));
  EXPECT_EQ(ingest.Writing(old_primary), 1);
  ASSERT_TRUE(cluster.primary().Kill().ok());
  // Every process of the old primary is gone (Kill waits for that).
  const absl::Time dead = absl::Now();
  ASSERT_TRUE(cluster.Promote(1).ok());
  // Writes go on, on the new primary.
  const bool moved = WaitFor([&] { return ingest.Writing(next_primary) == 1; }, kWait);
  const int after = acknowledged.load();
  const bool resumed = WaitFor([&] { return acknowledged.load() >= after + 40; }, kWait);
  stop.store(true);
  for (std::thread& t : writers) t.join();
  ASSERT_TRUE(moved);
  ASSERT_TRUE(resumed);

  std::vector<int64_t> acked, failed;
  for (const std::vector<Outcome>& o : outcomes) {
    for (const Outcome& x : o) {
      if (x.code == absl::StatusCode::kOk) {
        acked.push_back(x.first);
      } else {
        failed.push_back(x.first);
        // Only a write whose COMMIT was under way on the dying primary
        // fails, saying so: sent before its last process was gone (its
        // backends die one by one, so a flush on another COPY connection can
        // still reach one after the first flush failed); one sent later is
        // held for the new primary.
        EXPECT_EQ(x.code, absl::StatusCode::kUnavailable) << x.message;
        EXPECT_TRUE(absl::StrContains(x.message, "outcome of the COMMIT is unknown")) << x.message;
        EXPECT_LT(x.sent, dead) << "a write sent after the primary was dead failed: " << x.message;
      }
    }
  }
  std::cerr << "requests acknowledged: " << acked.size() << ", failed: " << failed.size()
            << ", held: " << ingest.Held("held_total").value_or(-1) << "\n";
  PostgresCluster& now_primary = cluster.replica(1);
  auto ids_of = [](const std::vector<int64_t>& firsts) {
    std::vector<std::string> ranges;
    for (int64_t f : firsts)
      ranges.push_back(absl::StrCat("(id >= ", f, " AND id < ", f + kRows, ")"));
    return ranges.empty() ? std::string("false") : absl::StrJoin(ranges, " OR ");
  };
  // Every acknowledged row is there exactly once ...
  EXPECT_EQ(Value(now_primary, absl::StrCat("SELECT count(*) FROM events WHERE ", ids_of(acked))),
            absl::StrCat(acked.size() * kRows));
  EXPECT_EQ(Value(now_primary,
                  absl::StrCat("SELECT count(DISTINCT id) FROM events WHERE ", ids_of(acked))),
            absl::StrCat(acked.size() * kRows));
  // ... no row at all is there twice, and each failed request is there
  // whole or not at all.
  EXPECT_EQ(Value(now_primary,
                  "SELECT count(*) FROM (SELECT id FROM events GROUP BY id HAVING count(*) > 1) d"),
            "0");
  for (int64_t f : failed) {
    const std::string n =
        Value(now_primary, absl::StrCat("SELECT count(*) FROM events WHERE ", ids_of({f})));
    EXPECT_TRUE(n == "0" || n == absl::StrCat(kRows)) << "request at " << f << ": " << n;
  }
  // Batches were held for the new primary, none in vain, none still.
  EXPECT_GT(ingest.Held("held_total").value_or(0), 0);
  EXPECT_EQ(ingest.Held("held_timeouts_total"), 0);
  EXPECT_EQ(ingest.Held("held_batches"), 0);
  // Each wait's time is in the histogram (a flush that waited again counts
  // again): together as long as the total, none longer than this test.
  const double elapsed = absl::ToDoubleSeconds(absl::Now() - start);
  const std::optional<double> waits = ingest.Held("held_duration_seconds_count");
  EXPECT_GE(waits.value_or(0), ingest.Held("held_total").value_or(1));
  EXPECT_EQ(ingest.Metric(absl::StrCat("poolside_ingest_failover_held_duration_seconds_bucket{"
                                       "database=\"",
                                       kDb, "\",le=\"+Inf\"}")),
            waits);
  const std::optional<double> sum = ingest.Held("held_duration_seconds_sum");
  EXPECT_EQ(sum, ingest.Held("held_seconds_total"));
  EXPECT_GT(sum.value_or(0), 0);
  EXPECT_LE(sum.value_or(0), waits.value_or(0) * elapsed);
  EXPECT_FALSE(ingest.Writing(old_primary).has_value());
  EXPECT_EQ(ingest.Metric(absl::StrCat("poolside_ingest_member_role{database=\"", kDb,
                                       "\",member=\"", next_primary, "\",role=\"primary\"}")),
            1);
  // And the service takes new rows, written on the new primary.
  absl::StatusOr<v1::WriteResponse> later =
      Write(ingest, "events", int64_t{99} << 32, kRows, 99, "after-failover");
  ASSERT_TRUE(later.ok()) << later.status();
  EXPECT_EQ(Value(now_primary, "SELECT count(*) FROM events WHERE writer = 99"),
            absl::StrCat(kRows));
  EXPECT_TRUE(Terminated(ingest));
}

}  // namespace
}  // namespace poolside::testing
