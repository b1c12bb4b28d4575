// The Grafana dashboards and Prometheus rules of k8s/observability, checked by
// a real Prometheus (Debian's prometheus) that scrapes the real query_server,
// cache_server and ingest_server under a small workload: every expression of
// every dashboard panel and every rule evaluates without error through
// Prometheus's HTTP API, the rules load and evaluate healthy, and every
// expression returns series except those over series this setup cannot have
// (listed below, each with the reason).

#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/ingest.grpc.pb.h"
#include "proto/poolside/v1/query.grpc.pb.h"
#include "tests/fixtures/files.h"
#include "tests/fixtures/http_get.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/service_process.h"
#include "tests/fixtures/subprocess.h"
#include "tests/observed_services.h"

namespace poolside::testing {
namespace {

using google::protobuf::Struct;
using google::protobuf::Value;

constexpr char kDb[] = "prom";

// Debian's server; $PROMETHEUS overrides it (as $PROMTOOL does for
// k8s/observability:rules_test).
std::string PrometheusBinary() {
  const char* env = getenv("PROMETHEUS");
  return env != nullptr && env[0] != '\0' ? env : "/usr/bin/prometheus";
}

// Series this setup does not export, so expressions over them may return
// nothing: server-side error codes need server errors.
const char* const kMayBeEmpty[] = {
    "grpc_code!=\"OK\"",
    "grpc_code=~\"UNKNOWN|",
};

bool MayBeEmpty(const std::string& expr) {
  for (const char* s : kMayBeEmpty) {
    if (absl::StrContains(expr, s)) return true;
  }
  return false;
}

std::string UrlEncode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      absl::StrAppend(&out, "%", absl::Hex(c, absl::kZeroPad2));
    }
  }
  return out;
}

absl::StatusOr<Struct> ParseJson(const std::string& text) {
  Struct s;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  const auto parsed = google::protobuf::util::JsonStringToMessage(text, &s, options);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("not JSON (", parsed.ToString(), "): ", text.substr(0, 300)));
  }
  return s;
}

const Value* Field(const Struct& s, const std::string& name) {
  auto it = s.fields().find(name);
  return it == s.fields().end() ? nullptr : &it->second;
}

// A Prometheus server on loopback with a storage directory of its own,
// stopped (and its directory removed) when destroyed.
class Prometheus {
 public:
  static absl::StatusOr<std::unique_ptr<Prometheus>> Start(const std::string& config_yaml) {
    const std::string binary = PrometheusBinary();
    if (access(binary.c_str(), X_OK) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat(binary, " is missing: install Debian's prometheus package (make deps)"));
    }
    auto p = std::unique_ptr<Prometheus>(new Prometheus());
    std::string dir = NewStem("prometheus") + ".XXXXXX";
    if (mkdtemp(dir.data()) == nullptr) return absl::InternalError("mkdtemp failed");
    p->dir_ = dir;
    const std::string config = dir + "/prometheus.yml";
    std::ofstream(config) << config_yaml;
    absl::StatusOr<int> port = testing::PickFreePort();
    if (!port.ok()) return port.status();
    p->port_ = *port;
    p->log_ = dir + "/prometheus.log";
    testing::SpawnOptions options;
    options.log_path = p->log_;
    absl::StatusOr<pid_t> pid = testing::SpawnProcess(
        {binary, "--config.file=" + config, "--storage.tsdb.path=" + dir + "/data",
         absl::StrCat("--web.listen-address=127.0.0.1:", p->port_), "--log.level=warn"},
        options);
    if (!pid.ok()) return pid.status();
    p->pid_ = *pid;
    const bool ready = testing::WaitFor(
        [&] {
          absl::StatusOr<testing::HttpResponse> r = HttpGet("127.0.0.1", p->port_, "/-/ready");
          return r.ok() && r->status == 200;
        },
        absl::Seconds(30));
    if (!ready) {
      return absl::DeadlineExceededError(
          absl::StrCat("prometheus not ready within 30 s: ", testing::ReadFileTail(p->log_)));
    }
    return p;
  }

  ~Prometheus() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int status = 0;
      const bool exited = testing::WaitFor([&] { return waitpid(pid_, &status, WNOHANG) == pid_; },
                                           absl::Seconds(10));
      if (!exited) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
      }
    }
    if (!dir_.empty()) {
      testing::RunCommand({"rm", "-rf", dir_}).IgnoreError();
    }
  }

  // GET `path` of the API; its "data" when "status" is "success".
  absl::StatusOr<Value> Api(const std::string& path) const {
    absl::StatusOr<testing::HttpResponse> r = HttpGet("127.0.0.1", port_, path);
    if (!r.ok()) return r.status();
    absl::StatusOr<Struct> body = ParseJson(r->body);
    if (!body.ok()) return body.status();
    const Value* status = Field(*body, "status");
    if (r->status != 200 || status == nullptr || status->string_value() != "success") {
      return absl::InvalidArgumentError(
          absl::StrCat("HTTP ", r->status, ": ", r->body.substr(0, 500)));
    }
    const Value* data = Field(*body, "data");
    return data != nullptr ? *data : Value();
  }

  // The series an instant query returns.
  absl::StatusOr<int> SeriesOf(const std::string& expr) const {
    absl::StatusOr<Value> data = Api("/api/v1/query?query=" + UrlEncode(expr));
    if (!data.ok()) return data.status();
    const Value* result = Field(data->struct_value(), "result");
    if (result == nullptr) return absl::InternalError("no result");
    return result->list_value().values_size();
  }

  const std::string& dir() const { return dir_; }
  const std::string& log() const { return log_; }

 private:
  Prometheus() = default;
  std::string dir_;
  std::string log_;
  int port_ = 0;
  pid_t pid_ = 0;
};

// An expression of a dashboard panel or a rule, and where it comes from.
struct Expression {
  std::string where;
  std::string expr;
};

// Every target expression of every panel of a dashboard, with Grafana's
// variables replaced as Grafana would for "all instances".
std::vector<Expression> DashboardExpressions(const std::string& file) {
  std::vector<Expression> out;
  absl::StatusOr<Struct> d = ParseJson(ReadFile(RunfilePath(file)).value_or(""));
  EXPECT_TRUE(d.ok()) << file << ": " << d.status();
  if (!d.ok()) return out;
  const Value* panels = Field(*d, "panels");
  EXPECT_NE(panels, nullptr) << file;
  if (panels == nullptr) return out;
  for (const Value& panel : panels->list_value().values()) {
    const Value* title = Field(panel.struct_value(), "title");
    const Value* targets = Field(panel.struct_value(), "targets");
    if (targets == nullptr) continue;
    for (const Value& target : targets->list_value().values()) {
      const Value* expr = Field(target.struct_value(), "expr");
      if (expr == nullptr) continue;
      out.push_back({absl::StrCat(file, ": ", title != nullptr ? title->string_value() : "?"),
                     absl::StrReplaceAll(expr->string_value(), {{"$__rate_interval", "1m"},
                                                                {"$__interval", "15s"},
                                                                {"$instance", ".*"}})});
    }
  }
  return out;
}

using PrometheusTest = ObservedServicesTest<kDb>;

TEST_F(PrometheusTest, EveryDashboardAndRuleExpressionEvaluatesAgainstTheRunningServices) {
  // The services, as in production: query with its cache sidecar, and ingest.
  auto [cache, cache_port, query, query_port] =
      StartCachedQuery(kDb, [](v1::QueryServiceConfig* config) {
        config->mutable_databases(0)->mutable_pool()->set_max_overflow(1);
      });
  ASSERT_NE(cache, nullptr);
  ASSERT_NE(query, nullptr);

  auto [ingest, ingest_port] = StartObservedIngest(kDb);
  ASSERT_NE(ingest, nullptr);
  ASSERT_GT(cache_port, 0);
  ASSERT_GT(query_port, 0);
  ASSERT_GT(ingest_port, 0);

  // Prometheus scrapes the three metrics ports every second under the job
  // names of k8s/observability/prometheus.yml, and evaluates the rules.
  const std::string rules = RunfilePath("k8s/observability/rules/poolside.rules.yaml");
  std::string config = absl::StrCat(
      "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
      "rule_files:\n- ", rules, "\nscrape_configs:\n");
  for (const auto& [job, port] :
       std::vector<std::pair<std::string, int>>{{"poolside-query", query_port},
                                                {"poolside-cache", cache_port},
                                                {"poolside-ingest", ingest_port}}) {
    absl::StrAppend(&config, "- job_name: ", job,
                    "\n  static_configs:\n  - targets: ['127.0.0.1:", port, "']\n");
  }
  absl::StatusOr<std::unique_ptr<Prometheus>> prometheus = Prometheus::Start(config);
  ASSERT_TRUE(prometheus.ok()) << prometheus.status();
  const Prometheus& prom = **prometheus;

  // The workload: cached reads (misses, then hits), a write, a failing
  // statement, ingested rows.
  auto query_channel = Connect(query->address());
  ASSERT_TRUE(query_channel.ok()) << query_channel.status();
  auto query_stub = v1::QueryService::NewStub(*query_channel);
  auto execute = [&](const std::string& sql, bool cached) {
    v1::ExecuteResponse response;
    grpc::Status s = CallExecute(*query_stub, ExecuteOn(kDb, sql, cached ? 60000 : 0), &response);
    return std::make_pair(s, response.cache());
  };
  ASSERT_TRUE(WaitForCachedReads(*query_stub, kDb));
  for (int i = 0; i < 5; ++i)
    ASSERT_TRUE(execute("SELECT name FROM items WHERE id = 1", true).first.ok());
  ASSERT_TRUE(execute("UPDATE items SET name = 'uno' WHERE id = 1", false).first.ok());
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(execute(absl::StrCat("SELECT ", i), false).first.ok());
  EXPECT_EQ(execute("SELECT * FROM no_such_table", false).first.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  auto ingest_channel = Connect(ingest->address());
  ASSERT_TRUE(ingest_channel.ok()) << ingest_channel.status();
  auto ingest_stub = v1::IngestService::NewStub(*ingest_channel);
  for (int r = 0; r < 3; ++r) {
    const v1::WriteRequest request = EventsWrite(kDb, r * 100, 20, "prometheus");
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
    v1::WriteResponse response;
    grpc::Status s = ingest_stub->Write(&ctx, request, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }

  // Every expression: the dashboards' and the rules' (as Prometheus loaded
  // them, so the file it reads is the one checked).
  std::vector<Expression> expressions;
  for (const char* name : {"query", "cache", "ingest"}) {
    std::vector<Expression> panel =
        DashboardExpressions(absl::StrCat("k8s/observability/dashboards/", name, ".json"));
    EXPECT_GE(panel.size(), 20u) << name;
    expressions.insert(expressions.end(), panel.begin(), panel.end());
  }
  absl::StatusOr<Value> rule_data = prom.Api("/api/v1/rules");
  ASSERT_TRUE(rule_data.ok()) << rule_data.status();
  const Value* groups = Field(rule_data->struct_value(), "groups");
  ASSERT_NE(groups, nullptr);
  int rule_count = 0, alert_count = 0;
  std::vector<std::string> recorded;
  for (const Value& group : groups->list_value().values()) {
    for (const Value& rule : Field(group.struct_value(), "rules")->list_value().values()) {
      const Struct& r = rule.struct_value();
      const std::string name = Field(r, "name")->string_value();
      const std::string type = Field(r, "type")->string_value();
      ++rule_count;
      if (type == "alerting") {
        ++alert_count;
      } else {
        recorded.push_back(name);
      }
      expressions.push_back({absl::StrCat("rule ", name), Field(r, "query")->string_value()});
    }
  }
  EXPECT_EQ(rule_count, 20);
  EXPECT_EQ(alert_count, 7);

  // Wait until Prometheus has scraped the workload's effects and evaluated
  // the rules over them: every expression expected to return series does.
  std::vector<std::string> empty;
  std::vector<std::string> errors;
  const bool settled = testing::WaitFor(
      [&] {
        empty.clear();
        errors.clear();
        for (const Expression& e : expressions) {
          const bool alert = absl::StartsWith(e.where, "rule Poolside");
          absl::StatusOr<int> n = prom.SeriesOf(e.expr);
          if (!n.ok()) {
            errors.push_back(absl::StrCat(e.where, ": ", e.expr, ": ", n.status().message()));
          } else if (*n == 0 && !alert && !MayBeEmpty(e.expr)) {
            empty.push_back(absl::StrCat(e.where, ": ", e.expr));
          }
        }
        for (const std::string& name : recorded) {
          if (MayBeEmpty(name) || absl::StrContains(name, "invalidation_delay")) continue;
          absl::StatusOr<int> n = prom.SeriesOf(name);
          if (!n.ok() || *n == 0) empty.push_back(absl::StrCat("recorded series ", name));
        }
        return errors.empty() && empty.empty();
      },
      absl::Seconds(40));
  EXPECT_TRUE(settled);
  EXPECT_TRUE(errors.empty()) << absl::StrJoin(errors, "\n");
  EXPECT_TRUE(empty.empty()) << "returned no series:\n" << absl::StrJoin(empty, "\n");

  // The rules loaded and evaluate healthy; nothing fires on a healthy stack.
  rule_data = prom.Api("/api/v1/rules");
  ASSERT_TRUE(rule_data.ok()) << rule_data.status();
  for (const Value& group : Field(rule_data->struct_value(), "groups")->list_value().values()) {
    for (const Value& rule : Field(group.struct_value(), "rules")->list_value().values()) {
      const Struct& r = rule.struct_value();
      const std::string name = Field(r, "name")->string_value();
      EXPECT_EQ(Field(r, "health")->string_value(), "ok")
          << name << ": " << (Field(r, "lastError") ? Field(r, "lastError")->string_value() : "");
      if (const Value* state = Field(r, "state"); state != nullptr) {
        EXPECT_EQ(state->string_value(), "inactive") << name;
      }
    }
  }
  // Prometheus saw all three services up, and the sidecar's series under its job.
  for (const char* job : {"poolside-query", "poolside-cache", "poolside-ingest"}) {
    EXPECT_EQ(prom.SeriesOf(absl::StrCat("up{job=\"", job, "\"} == 1")).value_or(-1), 1) << job;
  }
  EXPECT_EQ(prom.SeriesOf("poolside_cache_entries{job=\"poolside-cache\"}").value_or(-1), 1);
  // A broken expression is an error here, so the checks above have teeth.
  EXPECT_FALSE(prom.SeriesOf("sum by (job (up)").ok());
}

}  // namespace
}  // namespace poolside::testing
