// What a leader change costs the callers of the query service: a Patroni
// cluster (tests/fixtures/patroni_cluster: etcd and three members on
// loopback), a query_server whose topology is the members' REST API, and
// open-loop callers sending point reads (routed to replicas) and single-row
// INSERTs (on the primary) at fixed rates while the leader changes:
//
//   switchover  `patronictl switchover --leader L --candidate C --force`
//   failover    the leader's Patroni and PostgreSQL SIGKILLed (synchronous
//               replication, leader TTL 5 s, as tests/replica_switchover_test)
//
// One JSON line per round on stdout (and in --json_out): calls sent and failed
// by status code, acknowledged writes missing on the new leader, the write
// outage, the calls the service held for a primary and their held time
// (poolside_query_failover_held_{total,seconds_total}), and the held time's
// p50/p99/max from the service's histogram
// (poolside_query_failover_held_duration_seconds over the round), or, when
// the service exports none, estimated from the client's latencies
// (bench/README.md, Switchover). Not a test: nothing here is asserted,
// everything is reported.
//
//   bazel build --jobs=2 //bench:switchover_bench
//   bazel-bin/bench/switchover_bench --mode=both --rounds=1 --json_out=/tmp/s.jsonl
//
// Runs as root (the fixture runs PostgreSQL and Patroni as `postgres`).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
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
#include "common/telemetry/histogram.h"
#include "grpcpp/client_context.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/query.grpc.pb.h"
#include "tests/fixtures/http_get.h"
#include "tests/fixtures/patroni_cluster.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/subprocess.h"

ABSL_FLAG(std::string, mode, "both", "switchover, failover or both");
ABSL_FLAG(int, rounds, 1, "rounds of each mode, each on a fresh cluster");
ABSL_FLAG(double, read_rate, 200, "point reads sent per second (open loop)");
ABSL_FLAG(double, write_rate, 100, "single-row INSERTs sent per second (open loop)");
ABSL_FLAG(double, before_s, 3, "seconds of load before the leader changes");
ABSL_FLAG(double, after_s, 3, "seconds of load after the new leader acknowledges a write");
ABSL_FLAG(std::string, json_out, "", "also append the JSON lines to this file");

namespace poolside {
namespace {

using ::poolside::testing::PatroniCluster;
using ::poolside::testing::ServiceProcess;

constexpr absl::Duration kCallDeadline = absl::Seconds(60);
constexpr absl::Duration kWait = absl::Seconds(60);  // for the cluster and the service
constexpr char kDb[] = "app";
constexpr char kHeldDuration[] = "poolside_query_failover_held_duration_seconds";

struct Outcome {
  bool write = false;
  int64_t id = 0;
  absl::Duration sent;     // since the round's load started
  absl::Duration latency;  // to the answer
  grpc::StatusCode code = grpc::StatusCode::OK;
  std::string message;
  std::string member;
};

// Sends reads and writes at fixed rates through the callback API, whatever
// the answers take, and keeps every outcome. Start() once; Stop() ends the
// sending and waits for every answer (each call has a deadline).
class OpenLoopLoad {
 public:
  OpenLoopLoad(v1::QueryService::Stub* stub, double read_rate, double write_rate)
      : stub_(stub), read_rate_(read_rate), write_rate_(write_rate) {}
  ~OpenLoopLoad() { Stop(); }

  void Start() {
    start_ = absl::Now();
    senders_.emplace_back([this] { Send(/*write=*/false, read_rate_); });
    senders_.emplace_back([this] { Send(/*write=*/true, write_rate_); });
  }

  void Stop() {
    stop_.store(true);
    for (std::thread& t : senders_) t.join();
    senders_.clear();
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(
                             +[](int* n) { return *n == 0; }, &in_flight_),
                         kCallDeadline + absl::Seconds(10));
  }

  absl::Time start() const { return start_; }

  // Whether a write sent at or after `since` was acknowledged by `member`.
  bool AcknowledgedSince(absl::Duration since, const std::string& member) {
    absl::MutexLock lock(&mu_);
    for (const Outcome& o : outcomes_) {
      if (o.write && o.code == grpc::StatusCode::OK && o.sent >= since && o.member == member) {
        return true;
      }
    }
    return false;
  }

  // After Stop().
  std::vector<Outcome> outcomes() {
    absl::MutexLock lock(&mu_);
    return outcomes_;
  }

 private:
  struct Call {
    grpc::ClientContext ctx;
    v1::ExecuteRequest request;
    v1::ExecuteResponse response;
    Outcome outcome;
    absl::Time sent;
  };

  void Send(bool write, double rate) {
    if (rate <= 0) return;
    const absl::Duration every = absl::Seconds(1 / rate);
    absl::Time next = absl::Now();
    while (!stop_.load()) {
      const absl::Time now = absl::Now();
      if (now < next) {
        absl::SleepFor(next - now);  // pacing: the load is open-loop by design
        continue;
      }
      next += every;
      auto call = std::make_unique<Call>();
      call->outcome.write = write;
      if (write) {
        call->outcome.id = next_id_.fetch_add(1);
        call->request.set_sql("INSERT INTO log (id) VALUES ($1)");
        call->request.add_params()->set_int64_value(call->outcome.id);
      } else {
        call->request.set_sql("SELECT v FROM kv WHERE id = $1");
        call->request.add_params()->set_int64_value(1);
      }
      call->ctx.set_deadline(std::chrono::system_clock::now() +
                             std::chrono::milliseconds(absl::ToInt64Milliseconds(kCallDeadline)));
      call->sent = absl::Now();
      call->outcome.sent = call->sent - start_;
      {
        absl::MutexLock lock(&mu_);
        ++in_flight_;
      }
      Call* raw = call.release();
      stub_->async()->Execute(&raw->ctx, &raw->request, &raw->response,
                              [this, raw](grpc::Status s) { Finish(raw, s); });
    }
  }

  void Finish(Call* raw, const grpc::Status& s) {
    std::unique_ptr<Call> call(raw);
    call->outcome.latency = absl::Now() - call->sent;
    call->outcome.code = s.error_code();
    call->outcome.message = s.error_message();
    if (s.ok()) {
      call->outcome.member = call->response.member();
      // A read's answer is row 1 of kv (42); anything else counts as a failure.
      if (!call->outcome.write && (call->response.result().rows_size() != 1 ||
                                   call->response.result().rows(0).values(0).int64_value() != 42)) {
        call->outcome.code = grpc::StatusCode::DATA_LOSS;
        call->outcome.message = "wrong answer";
      }
    }
    absl::MutexLock lock(&mu_);
    outcomes_.push_back(std::move(call->outcome));
    --in_flight_;
  }

  v1::QueryService::Stub* stub_;
  const double read_rate_, write_rate_;
  absl::Time start_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> next_id_{1};
  std::vector<std::thread> senders_;
  absl::Mutex mu_;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<Outcome> outcomes_ ABSL_GUARDED_BY(mu_);
};

// A query_server whose database `app` is `c`'s database postgres: `dsn` names the leader, the
// topology every member's REST API (default probe settings), failover
// buffer 30 s as in tests/replica_switchover_test.
struct Service {
  std::unique_ptr<ServiceProcess> process;
  int metrics_port = 0;
  std::unique_ptr<v1::QueryService::Stub> stub;

  absl::Status Start(PatroniCluster& c, int leader) {
    v1::QueryServiceConfig config;
    v1::DatabaseConfig* db = config.add_databases();
    db->set_name(kDb);
    db->set_dsn(c.Dsn(leader));
    db->mutable_pool()->set_max_size(4);
    v1::TopologyConfig* t = db->mutable_topology();
    for (int i = 0; i < c.member_count(); ++i) t->add_patroni_endpoints(c.api_url(i));
    t->set_failover_buffer_ms(30000);
    config.set_default_database(kDb);
    const std::string stem = testing::NewStem("query_server");
    v1::ServerConfig* server = config.mutable_server();
    server->set_listen("127.0.0.1:0");
    server->mutable_tls()->set_plaintext(true);
    server->set_port_file(stem + ".port");
    v1::MetricsConfig* metrics = server->mutable_telemetry()->mutable_metrics();
    metrics->set_listen("127.0.0.1:0");
    metrics->set_port_file(stem + ".metrics_port");
    absl::StatusOr<std::unique_ptr<ServiceProcess>> p =
        testing::StartConfigured("services/query/query_server", config, stem + ".port", stem);
    if (!p.ok()) return p.status();
    process = *std::move(p);
    metrics_port = testing::ReadPortFile(stem + ".metrics_port");
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = testing::Connect(process->address());
    if (!channel.ok()) return channel.status();
    stub = v1::QueryService::NewStub(*channel);
    return absl::OkStatus();
  }

  double Metric(absl::string_view name) const {
    return testing::MetricValue(metrics_port, absl::StrCat(name, "{database=\"", kDb, "\"}"))
        .value_or(0);
  }

  // kHeldDuration of kDb as exported now (bounds, cumulative counts, count,
  // sum; no max: Prometheus histograms carry none). Nullopt when the scrape
  // fails or the service exports no such histogram.
  std::optional<telemetry::Histogram::Snapshot> HeldDurations() const {
    absl::StatusOr<testing::HttpResponse> got =
        testing::HttpGet("127.0.0.1", metrics_port, "/metrics");
    if (!got.ok() || got->status != 200) return std::nullopt;
    const std::string bucket = absl::StrCat(kHeldDuration, "_bucket{database=\"", kDb, "\",le=\"");
    const std::string count = absl::StrCat(kHeldDuration, "_count{database=\"", kDb, "\"} ");
    const std::string sum = absl::StrCat(kHeldDuration, "_sum{database=\"", kDb, "\"} ");
    telemetry::Histogram::Snapshot h;
    bool inf = false, counted = false;
    for (absl::string_view line : absl::StrSplit(got->body, '\n')) {
      double v;
      if (absl::ConsumePrefix(&line, bucket)) {
        const size_t end = line.find("\"} ");
        if (end == absl::string_view::npos || !absl::SimpleAtod(line.substr(end + 3), &v)) {
          return std::nullopt;
        }
        const absl::string_view le = line.substr(0, end);
        double bound;
        if (le == "+Inf") {
          inf = true;
        } else if (!absl::SimpleAtod(le, &bound)) {
          return std::nullopt;
        } else {
          h.bounds.push_back(bound);
        }
        h.cumulative_counts.push_back(static_cast<uint64_t>(v));
      } else if (absl::ConsumePrefix(&line, count) && absl::SimpleAtod(line, &v)) {
        h.count = static_cast<uint64_t>(v);
        counted = true;
      } else if (absl::ConsumePrefix(&line, sum) && absl::SimpleAtod(line, &v)) {
        h.sum = v;
      }
    }
    // As exported: ascending bounds, the +Inf bucket last and equal to count.
    if (!inf || !counted || h.cumulative_counts.size() != h.bounds.size() + 1 ||
        h.cumulative_counts.back() != h.count ||
        !std::is_sorted(h.bounds.begin(), h.bounds.end())) {
      return std::nullopt;
    }
    return h;
  }
};

// On the leader: log (the INSERTs) and kv (the reads: row 1 is 42).
absl::Status CreateSchema(PatroniCluster& c, int leader) {
  absl::StatusOr<std::string> made =
      testing::QueryDsn(c.Dsn(leader),
                        "CREATE TABLE log (id bigint PRIMARY KEY);"
                        "CREATE TABLE kv (id int PRIMARY KEY, v bigint NOT NULL);"
                        "INSERT INTO kv VALUES (1, 42) RETURNING v");
  return made.status();
}

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

// The holds of the round: `after` less `before` (all of `after` when the
// scrape before failed), with max the upper bound of the highest bucket used
// (the export has no max), which bounds Percentile() as Prometheus'
// histogram_quantile() is bounded. Nullopt when the two disagree (bounds
// changed, counts went down: not one service's histogram).
std::optional<telemetry::Histogram::Snapshot> RoundHolds(
    const std::optional<telemetry::Histogram::Snapshot>& before,
    const telemetry::Histogram::Snapshot& after) {
  telemetry::Histogram::Snapshot d = after;
  if (before.has_value()) {
    if (before->bounds != after.bounds || before->count > after.count) return std::nullopt;
    for (size_t i = 0; i < d.cumulative_counts.size(); ++i) {
      if (before->cumulative_counts[i] > d.cumulative_counts[i]) return std::nullopt;
      d.cumulative_counts[i] -= before->cumulative_counts[i];
    }
    d.count -= before->count;
    d.sum -= before->sum;
  }
  d.max = 0;
  uint64_t below = 0;
  for (size_t i = 0; i < d.bounds.size(); ++i) {
    if (d.cumulative_counts[i] > below) d.max = d.bounds[i];
    below = d.cumulative_counts[i];
  }
  if (d.count > below && !d.bounds.empty()) d.max = d.bounds.back();  // past the last bound
  return d;
}

// {"source": "histogram", n, p50, p99 (interpolated within a bucket, below
// h.max), max (h.max: an upper bound)} in ms.
std::string HistogramQuantiles(const telemetry::Histogram::Snapshot& h) {
  if (h.count == 0) {
    return R"({"source": "histogram", "n": 0, "p50_ms": null, "p99_ms": null, "max_ms": null})";
  }
  return absl::StrCat(R"({"source": "histogram", "n": )", h.count, R"(, "p50_ms": )",
                      1000 * h.Percentile(0.5), R"(, "p99_ms": )", 1000 * h.Percentile(0.99),
                      R"(, "max_ms": )", 1000 * h.max, "}");
}

// {n, p50, p99, max} in ms of `v` (sorted here), or nulls; with `source`
// first when given.
std::string Quantiles(std::vector<absl::Duration> v, absl::string_view source = "") {
  const std::string head = source.empty() ? "{" : absl::StrCat(R"({"source": ")", source, R"(", )");
  if (v.empty()) {
    return absl::StrCat(head, R"("n": 0, "p50_ms": null, "p99_ms": null, "max_ms": null})");
  }
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return Ms(v[static_cast<size_t>(q * (v.size() - 1) + 0.5)]); };
  return absl::StrCat(head, R"("n": )", v.size(), R"(, "p50_ms": )", at(0.5), R"(, "p99_ms": )",
                      at(0.99), R"(, "max_ms": )", Ms(v.back()), "}");
}

// {"sent": n, "ok": n, "failed": {"CODE": n, ...}} of reads or writes.
std::string Counts(const std::vector<Outcome>& all, bool write) {
  int sent = 0, ok = 0;
  std::map<int, int> failed;
  for (const Outcome& o : all) {
    if (o.write != write) continue;
    ++sent;
    if (o.code == grpc::StatusCode::OK) {
      ++ok;
    } else {
      ++failed[o.code];
    }
  }
  std::vector<std::string> parts;
  for (const auto& [code, n] : failed) {
    parts.push_back(absl::StrCat(
        "\"", absl::StatusCodeToString(static_cast<absl::StatusCode>(code)), "\": ", n));
  }
  return absl::StrCat(R"({"sent": )", sent, R"(, "ok": )", ok, R"(, "failed_by_code": {)",
                      absl::StrJoin(parts, ", "), "}}");
}

// Up to 5 distinct messages of failed calls, as a JSON array of strings.
std::string FailureMessages(const std::vector<Outcome>& all) {
  std::vector<std::string> seen;
  for (const Outcome& o : all) {
    if (o.code == grpc::StatusCode::OK || seen.size() == 5) continue;
    std::string m = absl::StrCat(o.write ? "write: " : "read: ", o.message.substr(0, 200));
    if (std::find(seen.begin(), seen.end(), m) == seen.end()) seen.push_back(m);
  }
  std::vector<std::string> quoted;
  for (const std::string& m : seen) {
    std::string q = "\"";
    for (char ch : m) {
      if (ch == '"' || ch == '\\') q.push_back('\\');
      const unsigned char u = static_cast<unsigned char>(ch);
      q.push_back(u < 0x20 || u >= 0x80 ? '?' : ch);  // ASCII JSON, whatever the message
    }
    quoted.push_back(q + "\"");
  }
  return absl::StrCat("[", absl::StrJoin(quoted, ", "), "]");
}

// Acknowledged writes not on member `i`.
absl::StatusOr<std::string> MissingOn(PatroniCluster& c, int i, const std::vector<Outcome>& all) {
  std::vector<int64_t> acked;
  for (const Outcome& o : all) {
    if (o.write && o.code == grpc::StatusCode::OK) acked.push_back(o.id);
  }
  if (acked.empty()) return std::string("0");
  return testing::QueryDsn(
      c.Dsn(i),
      absl::StrCat(
          "SELECT count(*) FROM unnest('{", absl::StrJoin(acked, ","),
          "}'::bigint[]) AS a(id) WHERE NOT EXISTS (SELECT FROM log WHERE log.id = a.id)"));
}

absl::StatusOr<std::string> Round(const std::string& mode, int round) {
  const bool failover = mode == "failover";
  testing::PatroniOptions options;
  if (failover) {
    options.ttl = 5;
    options.synchronous_mode = true;
  }
  absl::StatusOr<std::unique_ptr<PatroniCluster>> started = PatroniCluster::Start(options);
  if (!started.ok()) return started.status();
  PatroniCluster& c = **started;
  absl::StatusOr<int> leader = c.WaitForLeader(kWait);
  if (!leader.ok()) return leader.status();
  if (absl::Status s = CreateSchema(c, *leader); !s.ok()) return s;
  Service service;
  if (absl::Status s = service.Start(c, *leader); !s.ok()) return s;
  // Reads reach a replica once the catalog is loaded and the replicas probed.
  const absl::Time ready_by = absl::Now() + kWait;
  for (;;) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::ExecuteRequest read;
    read.set_sql("SELECT v FROM kv WHERE id = $1");
    read.add_params()->set_int64_value(1);
    v1::ExecuteResponse response;
    if (service.stub->Execute(&ctx, read, &response).ok() && !response.member().empty() &&
        response.member() != c.name(*leader)) {
      break;
    }
    if (absl::Now() > ready_by) return absl::DeadlineExceededError("no read reached a replica");
    absl::SleepFor(absl::Milliseconds(50));
  }

  OpenLoopLoad load(service.stub.get(), absl::GetFlag(FLAGS_read_rate),
                    absl::GetFlag(FLAGS_write_rate));
  load.Start();
  absl::SleepFor(absl::Seconds(absl::GetFlag(FLAGS_before_s)));
  const double held0 = service.Metric("poolside_query_failover_held_total");
  const double held_s0 = service.Metric("poolside_query_failover_held_seconds_total");
  const double timeouts0 = service.Metric("poolside_query_failover_held_timeouts_total");
  const std::optional<telemetry::Histogram::Snapshot> durations0 = service.HeldDurations();
  const int candidate = (*leader + 1) % c.member_count();
  const absl::Time event = absl::Now();
  std::string event_note;
  if (failover) {
    if (absl::Status s = c.KillMember(*leader); !s.ok()) return s;
  } else {
    absl::StatusOr<testing::CommandResult> r =
        testing::RunCommand({"patronictl", "-c", c.config_path(*leader), "switchover", "--leader",
                             c.name(*leader), "--candidate", c.name(candidate), "--force"});
    if (!r.ok()) return r.status();
    if (r->exit_code != 0) {
      return absl::InternalError(absl::StrCat("patronictl switchover: ", r->output));
    }
  }
  const absl::Duration command_took = absl::Now() - event;
  // The new leader: as Patroni and PostgreSQL say, then as the service
  // acknowledges a write there.
  int next = -1;
  for (;;) {
    absl::StatusOr<int> l = c.Leader();
    if (l.ok() && *l != *leader) {
      next = *l;
      break;
    }
    if (absl::Now() > event + kWait) return absl::DeadlineExceededError("no new leader");
    absl::SleepFor(absl::Milliseconds(20));
  }
  const absl::Duration promoted = absl::Now() - event;
  while (!load.AcknowledgedSince(event - load.start(), c.name(next))) {
    if (absl::Now() > event + kWait) {
      return absl::DeadlineExceededError("no write acknowledged by the new leader");
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  absl::SleepFor(absl::Seconds(absl::GetFlag(FLAGS_after_s)));
  load.Stop();
  const std::vector<Outcome> all = load.outcomes();

  // The write outage: from the event to the first write the new leader
  // acknowledged, by its answer.
  absl::Duration outage = absl::InfiniteDuration();
  int unknown = 0, not_committed = 0;
  std::vector<absl::Duration> latencies, write_latencies, read_latencies;
  for (const Outcome& o : all) {
    latencies.push_back(o.latency);
    (o.write ? write_latencies : read_latencies).push_back(o.latency);
    if (o.write && o.code == grpc::StatusCode::OK && o.member == c.name(next)) {
      outage = std::min(outage, o.sent + o.latency - (event - load.start()));
    }
    if (o.write && o.code != grpc::StatusCode::OK) {
      if (absl::StrContains(o.message, "outcome unknown")) ++unknown;
      if (absl::StrContains(o.message, "not committed") ||
          absl::StrContains(o.message, "not executed")) {
        ++not_committed;
      }
    }
  }
  const int held = static_cast<int>(service.Metric("poolside_query_failover_held_total") - held0);
  const double held_s = service.Metric("poolside_query_failover_held_seconds_total") - held_s0;
  const int timeouts =
      static_cast<int>(service.Metric("poolside_query_failover_held_timeouts_total") - timeouts0);
  // Each hold's time as the service measured it; else an estimate: held
  // calls wait at least as long as any call that was not held takes to run
  // (up to the new primary's name), so the slowest `held` calls stand for
  // them.
  std::string held_time;
  const std::optional<telemetry::Histogram::Snapshot> durations = service.HeldDurations();
  std::optional<telemetry::Histogram::Snapshot> round_holds =
      durations.has_value() ? RoundHolds(durations0, *durations) : std::nullopt;
  if (round_holds.has_value()) {
    // A held call's hold is part of its latency: the slowest call bounds the
    // longest hold too, often more tightly than its bucket.
    absl::Duration slowest_call = absl::ZeroDuration();
    for (const Outcome& o : all) slowest_call = std::max(slowest_call, o.latency);
    if (round_holds->count > 0) {
      round_holds->max = std::min(round_holds->max, absl::ToDoubleSeconds(slowest_call));
    }
    held_time = HistogramQuantiles(*round_holds);
  } else {
    std::sort(latencies.begin(), latencies.end(), std::greater<>());
    std::vector<absl::Duration> slowest(
        latencies.begin(), latencies.begin() + std::min<size_t>(held, latencies.size()));
    held_time = Quantiles(slowest, "client_estimate");
  }
  absl::StatusOr<std::string> missing = MissingOn(c, next, all);

  return absl::StrCat(
      R"({"mode": ")", mode, R"(", "round": )", round, R"(, "read_rate": )",
      absl::GetFlag(FLAGS_read_rate), R"(, "write_rate": )", absl::GetFlag(FLAGS_write_rate),
      R"(, "leader_before": ")", c.name(*leader), R"(", "leader_after": ")", c.name(next),
      R"(", "event_command_ms": )", Ms(command_took), R"(, "new_leader_after_ms": )", Ms(promoted),
      R"(, "write_outage_ms": )",
      outage == absl::InfiniteDuration() ? "null" : absl::StrCat(Ms(outage)), R"(, "reads": )",
      Counts(all, false), R"(, "writes": )", Counts(all, true), R"(, "failures": )",
      FailureMessages(all), R"(, "writes_outcome_unknown": )", unknown,
      R"(, "writes_not_committed": )", not_committed, R"(, "acked_writes_missing": )",
      missing.ok() ? *missing : "null", R"(, "held_calls": )", held, R"(, "held_seconds_total": )",
      held_s, R"(, "held_mean_ms": )", held > 0 ? absl::StrCat(1000 * held_s / held) : "null",
      R"(, "held_timeouts": )", timeouts, R"(, "held_time": )", held_time, R"(, "write_latency": )",
      Quantiles(write_latencies), R"(, "read_latency": )", Quantiles(read_latencies), "}");
}

}  // namespace
}  // namespace poolside

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string mode = absl::GetFlag(FLAGS_mode);
  std::vector<std::string> modes;
  if (mode == "both") {
    modes = {"switchover", "failover"};
  } else if (mode == "switchover" || mode == "failover") {
    modes = {mode};
  } else {
    std::cerr << "--mode must be switchover, failover or both\n";
    return 2;
  }
  std::ofstream out;
  if (!absl::GetFlag(FLAGS_json_out).empty()) {
    out.open(absl::GetFlag(FLAGS_json_out), std::ios::app);
  }
  int failed = 0;
  for (const std::string& m : modes) {
    for (int r = 0; r < absl::GetFlag(FLAGS_rounds); ++r) {
      absl::StatusOr<std::string> line = poolside::Round(m, r);
      if (!line.ok()) {
        std::cerr << m << " round " << r << ": " << line.status() << "\n";
        ++failed;
        continue;
      }
      std::cout << *line << std::endl;
      if (out.is_open()) out << *line << "\n" << std::flush;
    }
  }
  return failed ? 1 : 0;
}
