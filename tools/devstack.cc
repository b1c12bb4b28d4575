// devstack: the local development stack behind `make run`.
//
// Starts (or reuses) a PostgreSQL cluster in <run_dir>/pgdata on a fixed port,
// creates the `demo` database with `accounts` and `events` tables (and the
// hypopg extension, for `poolside advise`), starts the
// cache sidecar (TCP and <run_dir>/cache.sock), the query service (caching
// through the sidecar, invalidated by writes to `accounts`) and the ingest
// service (writing `events`), prints how to call them, and runs until
// SIGINT/SIGTERM; then stops the services (drain) and PostgreSQL, leaving no
// process behind.
//
// Meanwhile it supervises the services like a kubelet would: one that exits
// (a crash, kill -9) is started again on the same ports after a delay that
// doubles while it keeps exiting (RestartBackoff), with a line on stderr; the
// others keep running. Each service's pid is in <run_dir>/<name>.pid while
// it runs. A port flag of 0 picks a free port at the first start, kept across
// restarts.
//
//   bazel-bin/tools/devstack --run_dir=$PWD/.run
//   bazel-bin/tools/devstack --run_dir=/tmp/bench --no_query --ready_file=/tmp/bench/ready
//
// The ready file (written once everything is up, removed at exit) is a shell
// fragment for scripts: PG_HOST, PG_PORT, PG_DSN, PG_SOCKET_DIR, QUERY_ADDR,
// CACHE_ADDR, CACHE_SOCKET, INGEST_ADDR, DEVSTACK_PID.

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <system_error>
#include <tuple>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"
#include "proto/poolside/v1/config.pb.h"
#include "tests/fixtures/demo_schema.h"
#include "tests/fixtures/files.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/service_process.h"
#include "tools/restart_backoff.h"

ABSL_FLAG(std::string, run_dir, ".run",
          "Directory for PostgreSQL's data (pgdata/), the service configuration "
          "and logs. Reused across runs.");
ABSL_FLAG(int, pg_port, 55432, "PostgreSQL port on 127.0.0.1.");
ABSL_FLAG(int, query_port, 50051, "Query service gRPC port on 127.0.0.1.");
ABSL_FLAG(std::string, ready_file, "",
          "Written (shell variable assignments) once everything is up; removed "
          "at exit.");
ABSL_FLAG(std::string, extra_sql, "", "A SQL file run in database `demo` after the demo setup.");
ABSL_FLAG(bool, no_query, false, "Run only PostgreSQL, not the services.");
ABSL_FLAG(int, query_pool_size, 8,
          "The query service's pool maxSize for the demo database (make bench gives it "
          "PgBouncer's default_pool_size).");
ABSL_FLAG(int, cache_port, 50052, "Cache sidecar gRPC port on 127.0.0.1.");
ABSL_FLAG(int, ingest_port, 50053, "Ingest service gRPC port on 127.0.0.1.");
ABSL_FLAG(int, query_metrics_port, 9451,
          "Query service /metrics and status page (HTTP) on 127.0.0.1; 0: off.");
ABSL_FLAG(int, cache_metrics_port, 9452, "Cache sidecar /metrics and status page; 0: off.");
ABSL_FLAG(int, ingest_metrics_port, 9453, "Ingest service /metrics and status page; 0: off.");
ABSL_FLAG(std::string, otlp_endpoint, "",
          "OTLP/gRPC collector (host:port, e.g. Jaeger's 127.0.0.1:4317) the three services "
          "send traces to; default $POOLSIDE_OTLP_ENDPOINT; empty: tracing off.");

namespace poolside::devstack {
namespace {

using ::poolside::testing::PostgresCluster;
using ::poolside::testing::PostgresOptions;
using ::poolside::testing::ReadFile;
using ::poolside::testing::RunfilePath;
using ::poolside::testing::ServiceProcess;

using ::poolside::testing::kDemoDatabase;
using ::poolside::testing::kDemoOwnerRole;
using ::poolside::testing::kDemoReadRole;
using ::poolside::testing::kDemoRoles;
using ::poolside::testing::kDemoSchema;
using ::poolside::testing::kDemoWriteRole;

// Writes via a temporary file and rename, so readers never see half a file.
absl::Status WriteFileAtomically(const std::string& path, const std::string& content) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << content;
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out.push_back(c);
    }
  }
  return out + "'";
}

absl::StatusOr<std::string> ToJson(const google::protobuf::Message& config) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(config, &json, options).ok()) {
    return absl::InternalError("cannot render a service configuration");
  }
  return json;
}

// The HTTP endpoint serving /metrics and the status page on 127.0.0.1:port.
void SetTracing(v1::ServerConfig* server) {
  std::string endpoint = absl::GetFlag(FLAGS_otlp_endpoint);
  if (endpoint.empty()) {
    const char* env = std::getenv("POOLSIDE_OTLP_ENDPOINT");
    endpoint = env == nullptr ? "" : env;
  }
  if (endpoint.empty()) return;
  v1::TracingConfig* tracing = server->mutable_telemetry()->mutable_tracing();
  tracing->set_endpoint(endpoint);
  tracing->set_batch_interval_ms(200);  // traces show up in Jaeger quickly
}

void SetMetricsPort(int port, v1::ServerConfig* server) {
  if (port > 0) {
    server->mutable_telemetry()->mutable_metrics()->set_listen(absl::StrCat("127.0.0.1:", port));
  }
}

// What every service of the stack listens with: 127.0.0.1:`port`, the port
// file <run_dir>/<service>.port, metrics on `metrics_port` (if set), traces to
// --tracing_endpoint, plaintext (loopback only).
void SetLoopbackServer(const std::string& run_dir, const char* service, int port, int metrics_port,
                       v1::ServerConfig* server) {
  server->set_listen(absl::StrCat("127.0.0.1:", port));
  server->set_port_file(absl::StrCat(run_dir, "/", service, ".port"));
  SetMetricsPort(metrics_port, server);
  SetTracing(server);
  server->mutable_tls()->set_plaintext(true);
}

v1::CacheServiceConfig CacheConfig(const std::string& run_dir, int port) {
  v1::CacheServiceConfig config;
  SetLoopbackServer(run_dir, "cache", port, absl::GetFlag(FLAGS_cache_metrics_port),
                    config.mutable_server());
  config.set_unix_socket(absl::StrCat(run_dir, "/cache.sock"));
  config.set_capacity_bytes(256u << 20);
  return config;
}

// The demo database as poolside's own unprivileged role (kDemoRoles), never
// the superuser the cluster was made with.
std::string OwnerDsn(const PostgresCluster& pg) {
  return absl::StrCat(pg.Dsn(kDemoDatabase), " user=", kDemoOwnerRole);
}

// Query's and ingest's: no authentication and a short drain (development
// only), and the demo database as its owner role (returned).
template <typename Config>
v1::DatabaseConfig* SetDemoDatabase(const PostgresCluster& pg, Config* config) {
  config->mutable_auth()->set_disabled(true);
  config->mutable_server()->set_drain_timeout_ms(5000);
  v1::DatabaseConfig* db = config->add_databases();
  db->set_name(kDemoDatabase);
  db->set_dsn(OwnerDsn(pg));
  return db;
}

v1::IngestServiceConfig IngestConfig(const PostgresCluster& pg, const std::string& run_dir,
                                     int port) {
  v1::IngestServiceConfig config;
  SetLoopbackServer(run_dir, "ingest", port, absl::GetFlag(FLAGS_ingest_metrics_port),
                    config.mutable_server());
  v1::DatabaseConfig* db = SetDemoDatabase(pg, &config);
  db->mutable_pool()->set_max_size(4);
  v1::IngestTables* tables = config.add_tables();
  tables->set_database(kDemoDatabase);
  tables->add_tables("events");
  return config;
}

v1::QueryServiceConfig QueryConfig(const PostgresCluster& pg, const std::string& run_dir,
                                   int query_port) {
  v1::QueryServiceConfig config;
  SetLoopbackServer(run_dir, "query", query_port, absl::GetFlag(FLAGS_query_metrics_port),
                    config.mutable_server());
  v1::DatabaseConfig* db = SetDemoDatabase(pg, &config);
  // Principals run as these (PrincipalConfig.databaseRole; docs/security.md).
  db->add_roles()->set_name(kDemoReadRole);
  db->add_roles()->set_name(kDemoWriteRole);
  const int pool_size = std::max(1, absl::GetFlag(FLAGS_query_pool_size));
  db->mutable_pool()->set_min_idle(std::min(2, pool_size));
  db->mutable_pool()->set_max_size(pool_size);
  config.set_default_database(kDemoDatabase);
  v1::QueryCacheConfig* cache = config.mutable_cache();
  cache->set_target(absl::StrCat("unix:", run_dir, "/cache.sock"));
  v1::CachedTables* cached = cache->add_tables();
  cached->set_database(kDemoDatabase);
  cached->add_tables("accounts");
  return config;
}

void PrintUsage(const PostgresCluster& pg, const ServiceProcess* query, const ServiceProcess* cache,
                const ServiceProcess* ingest, const std::string& run_dir) {
  std::vector<std::string> lines = {
      "",
      "poolside devstack is up.",
      "",
      absl::StrCat("  PostgreSQL   127.0.0.1:", pg.port(), "  (data: ", pg.data_dir(),
                   ", log: ", pg.log_path(), ")"),
      absl::StrCat("               psql \"", pg.Dsn(kDemoDatabase), "\""),
  };
  if (query != nullptr) {
    lines.insert(
        lines.end(),
        {absl::StrCat("  query        ", query->address(), "  (config: ", run_dir,
                      "/query.json, log: ", query->log_path(), ")"),
         "", "Try:",
         absl::StrCat("  bazel-bin/cli/poolside --addr=", query->address(),
                      " query \"SELECT id, owner, balance, tags FROM accounts "
                      "ORDER BY id LIMIT 5\""),
         absl::StrCat("  bazel-bin/cli/poolside --addr=", query->address(),
                      " query 'SELECT owner FROM accounts WHERE id = $1' 42"),
         absl::StrCat("  bazel-bin/cli/poolside --addr=", query->address(), " check"),
         absl::StrCat("  grpcurl -plaintext -d '{\"database\": \"demo\", \"sql\": "
                      "\"SELECT count(*) FROM accounts\"}' ",
                      query->address(), " poolside.v1.QueryService/Execute"),
         absl::StrCat("  grpcurl -plaintext ", query->address(), " grpc.health.v1.Health/Check")});
  }
  if (query != nullptr && cache != nullptr) {
    lines.insert(
        lines.end(),
        {"",
         absl::StrCat("  cache        ", cache->address(), " and unix:", run_dir,
                      "/cache.sock  (log: ", cache->log_path(), ")"),
         absl::StrCat("  bazel-bin/cli/poolside --addr=", query->address(),
                      " query --cache_ttl_ms 60000 'SELECT owner FROM accounts WHERE id = $1' 7"
                      "   # MISS, then HIT; an UPDATE of accounts invalidates it"),
         absl::StrCat("  bazel-bin/cli/poolside cache stats --cache=", cache->address())});
  }
  if (ingest != nullptr) {
    lines.insert(
        lines.end(),
        {"",
         absl::StrCat("  ingest       ", ingest->address(),
                      "  (writes demo.events; log: ", ingest->log_path(), ")"),
         absl::StrCat("  bazel-bin/cli/poolside --addr=", ingest->address(),
                      " ingest --table events FILE.csv   # header: id,account_id,kind,amount,at")});
  }
  std::vector<std::string> pages;
  for (const auto& [service, process, port] :
       {std::make_tuple("query", query, absl::GetFlag(FLAGS_query_metrics_port)),
        std::make_tuple("cache", cache, absl::GetFlag(FLAGS_cache_metrics_port)),
        std::make_tuple("ingest", ingest, absl::GetFlag(FLAGS_ingest_metrics_port))}) {
    if (process != nullptr && port > 0) {
      pages.push_back(absl::StrCat("  ", service, std::string(13 - strlen(service), ' '),
                                   "http://127.0.0.1:", port,
                                   "/  (status page; Prometheus: /metrics)"));
    }
  }
  if (!pages.empty()) {
    lines.push_back("");
    lines.insert(lines.end(), pages.begin(), pages.end());
  }
  lines.insert(lines.end(), {"", "Ctrl-C (SIGINT) or SIGTERM stops everything.", ""});
  printf("%s\n", absl::StrJoin(lines, "\n").c_str());
  fflush(stdout);
}

int Run() {
  std::error_code ec;
  const std::string run_dir =
      std::filesystem::absolute(absl::GetFlag(FLAGS_run_dir), ec).lexically_normal().string();
  std::filesystem::create_directories(run_dir, ec);
  if (ec) {
    fprintf(stderr, "devstack: cannot create %s: %s\n", run_dir.c_str(), ec.message().c_str());
    return 1;
  }
  const std::string ready_file = absl::GetFlag(FLAGS_ready_file);
  if (!ready_file.empty()) unlink(ready_file.c_str());

  PostgresOptions pg_options;
  pg_options.data_dir = absl::StrCat(run_dir, "/pgdata");
  pg_options.port = absl::GetFlag(FLAGS_pg_port);
  printf("devstack: starting PostgreSQL in %s on %s...\n", pg_options.data_dir.c_str(),
         pg_options.port > 0 ? absl::StrCat("port ", pg_options.port).c_str() : "a free port");
  fflush(stdout);
  absl::StatusOr<std::unique_ptr<PostgresCluster>> pg = PostgresCluster::Start(pg_options);
  if (!pg.ok()) {
    fprintf(stderr, "devstack: cannot start PostgreSQL: %s\n",
            std::string(pg.status().message()).c_str());
    return 1;
  }

  absl::Status setup = (*pg)->CreateDatabase(kDemoDatabase);
  if (setup.ok()) setup = (*pg)->Exec(kDemoDatabase, kDemoSchema);
  if (setup.ok()) setup = (*pg)->Exec(kDemoDatabase, kDemoRoles);
  // HypoPG's hypothetical indexes for `poolside advise` (index advice).
  if (setup.ok()) setup = (*pg)->Exec(kDemoDatabase, "CREATE EXTENSION IF NOT EXISTS hypopg");
  if (setup.ok() && !absl::GetFlag(FLAGS_extra_sql).empty()) {
    absl::StatusOr<std::string> sql = ReadFile(absl::GetFlag(FLAGS_extra_sql));
    setup = sql.ok() ? (*pg)->Exec(kDemoDatabase, *sql) : sql.status();
  }
  if (!setup.ok()) {
    fprintf(stderr, "devstack: database setup failed: %s\n", std::string(setup.message()).c_str());
    return 1;
  }

  // Started in this order, stopped in the reverse one.
  struct Service {
    std::string name;
    std::string binary;
    std::string config_path;
    std::unique_ptr<ServiceProcess> process;  // null while waiting to restart
    absl::Time started;
    absl::Time restart_at;
    RestartBackoff backoff;
    int restarts = 0;
  };
  std::vector<Service> services;
  auto pid_path = [&](const Service& s) { return absl::StrCat(run_dir, "/", s.name, ".pid"); };
  auto launch = [&](Service& s) -> absl::Status {
    s.started = absl::Now();
    absl::StatusOr<std::unique_ptr<ServiceProcess>> started =
        ServiceProcess::Start(s.binary, {absl::StrCat("--config=", s.config_path)},
                              absl::StrCat(run_dir, "/", s.name, ".port"), absl::Seconds(60),
                              absl::StrCat(run_dir, "/", s.name, ".log"));
    if (!started.ok()) return started.status();
    s.process = *std::move(started);
    return WriteFileAtomically(pid_path(s), absl::StrCat(s.process->pid(), "\n"));
  };
  auto start = [&](const std::string& name, const std::string& binary_path,
                   v1::ServerConfig* server, const google::protobuf::Message& config) -> bool {
    Service s{name, RunfilePath(binary_path), absl::StrCat(run_dir, "/", name, ".json")};
    absl::StatusOr<std::string> json = ToJson(config);
    absl::Status written = json.ok() ? WriteFileAtomically(s.config_path, *json) : json.status();
    if (!written.ok()) {
      fprintf(stderr, "devstack: %s\n", std::string(written.message()).c_str());
      return false;
    }
    printf("devstack: starting %s...\n", name.c_str());
    fflush(stdout);
    if (absl::Status started = launch(s); !started.ok()) {
      fprintf(stderr, "devstack: cannot start the %s service: %s\n", name.c_str(),
              std::string(started.message()).c_str());
      return false;
    }
    // A restart binds the port this start got (the flag may have said 0).
    if (absl::EndsWith(server->listen(), ":0")) {
      server->set_listen(s.process->address());
      json = ToJson(config);
      written = json.ok() ? WriteFileAtomically(s.config_path, *json) : json.status();
      if (!written.ok()) {
        fprintf(stderr, "devstack: %s\n", std::string(written.message()).c_str());
        return false;
      }
    }
    services.push_back(std::move(s));
    return true;
  };
  bool started_all = true;
  if (!absl::GetFlag(FLAGS_no_query)) {
    v1::CacheServiceConfig cache_config = CacheConfig(run_dir, absl::GetFlag(FLAGS_cache_port));
    v1::QueryServiceConfig query_config =
        QueryConfig(**pg, run_dir, absl::GetFlag(FLAGS_query_port));
    v1::IngestServiceConfig ingest_config =
        IngestConfig(**pg, run_dir, absl::GetFlag(FLAGS_ingest_port));
    started_all = start("cache", "services/cache/cache_server", cache_config.mutable_server(),
                        cache_config) &&
                  start("query", "services/query/query_server", query_config.mutable_server(),
                        query_config) &&
                  start("ingest", "services/ingest/ingest_server", ingest_config.mutable_server(),
                        ingest_config);
  }
  auto find = [&](const std::string& name) -> ServiceProcess* {
    for (Service& s : services) {
      if (s.name == name) return s.process.get();
    }
    return nullptr;
  };
  ServiceProcess* query = find("query");
  ServiceProcess* cache = find("cache");
  ServiceProcess* ingest = find("ingest");
  int exit_code = started_all ? 0 : 1;

  if (started_all) PrintUsage(**pg, query, cache, ingest, run_dir);
  if (started_all && !ready_file.empty()) {
    std::vector<std::string> vars = {
        "PG_HOST=127.0.0.1",
        absl::StrCat("PG_PORT=", (*pg)->port()),
        absl::StrCat("PG_DSN=", ShellQuote((*pg)->Dsn(kDemoDatabase))),
        absl::StrCat("PG_SOCKET_DIR=", ShellQuote((*pg)->socket_dir())),
        absl::StrCat("QUERY_ADDR=", query != nullptr ? query->address() : ""),
        absl::StrCat("CACHE_ADDR=", cache != nullptr ? cache->address() : ""),
        absl::StrCat("CACHE_SOCKET=", cache != nullptr ? ShellQuote(run_dir + "/cache.sock") : ""),
        absl::StrCat("INGEST_ADDR=", ingest != nullptr ? ingest->address() : ""),
        absl::StrCat("DEVSTACK_PID=", getpid()),
    };
    if (absl::Status s = WriteFileAtomically(ready_file, absl::StrJoin(vars, "\n") + "\n");
        !s.ok()) {
      fprintf(stderr, "devstack: %s\n", std::string(s.message()).c_str());
      return 1;
    }
  }

  // Signals were blocked in main() before any thread existed; wait for one,
  // watching the service meanwhile.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGHUP);
  while (started_all) {
    timespec tick{0, 100 * 1000 * 1000};
    const int sig = sigtimedwait(&stop_signals, nullptr, &tick);
    if (sig > 0) {
      printf("\ndevstack: %s received, stopping...\n", strsignal(sig));
      break;
    }
    const absl::Time now = absl::Now();
    for (Service& s : services) {
      if (s.process != nullptr && !s.process->Running()) {
        const int code = s.process->Wait(absl::ZeroDuration()).value_or(0);
        const absl::Duration delay = s.backoff.NextDelay(s.started, now);
        fprintf(stderr,
                "devstack: the %s service (pid %d) %s after %s; restarting it in %s "
                "(%d exits in a row); its log %s ends:\n%s\n",
                s.name.c_str(), static_cast<int>(s.process->pid()),
                code < 0 ? absl::StrCat("was killed by signal ", -code).c_str()
                         : absl::StrCat("exited with ", code).c_str(),
                absl::FormatDuration(absl::Trunc(now - s.started, absl::Milliseconds(100))).c_str(),
                absl::FormatDuration(delay).c_str(), s.backoff.consecutive_exits(),
                s.process->log_path().c_str(), s.process->LogTail(1024).c_str());
        unlink(pid_path(s).c_str());
        s.process.reset();
        s.restart_at = now + delay;
      } else if (s.process == nullptr && now >= s.restart_at) {
        ++s.restarts;
        if (absl::Status restarted = launch(s); !restarted.ok()) {
          s.process.reset();
          const absl::Duration delay = s.backoff.NextDelay(s.started, absl::Now());
          s.restart_at = absl::Now() + delay;
          fprintf(stderr, "devstack: restarting the %s service failed (%s); next try in %s\n",
                  s.name.c_str(), std::string(restarted.message()).c_str(),
                  absl::FormatDuration(delay).c_str());
        } else {
          fprintf(stderr, "devstack: the %s service is back (pid %d, restart %d)\n", s.name.c_str(),
                  static_cast<int>(s.process->pid()), s.restarts);
        }
      }
    }
    fflush(stderr);
  }

  for (auto it = services.rbegin(); it != services.rend(); ++it) {
    unlink(pid_path(*it).c_str());
    if (it->process == nullptr || !it->process->Running()) continue;
    ServiceProcess& p = *it->process;
    (void)p.Signal(SIGTERM);
    absl::StatusOr<int> code = p.Wait(absl::Seconds(15));
    if (!code.ok()) {
      fprintf(stderr, "devstack: the %s service did not stop in time; killing it\n",
              it->name.c_str());
      exit_code = 1;
    } else if (*code != 0) {
      fprintf(stderr, "devstack: the %s service exited with %d\n", it->name.c_str(), *code);
      exit_code = 1;
    }
  }
  services.clear();  // SIGKILL whatever is still running
  if (absl::Status s = (*pg)->Stop(); !s.ok()) {
    fprintf(stderr, "devstack: stopping PostgreSQL: %s\n", std::string(s.message()).c_str());
    exit_code = 1;
  }
  if (!ready_file.empty()) unlink(ready_file.c_str());
  printf("devstack: stopped.\n");
  return exit_code;
}

}  // namespace
}  // namespace poolside::devstack

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Runs PostgreSQL and the query service locally until interrupted.");
  absl::ParseCommandLine(argc, argv);
  // Blocked before any thread starts, so only sigtimedwait() sees them; the
  // children start with an empty mask (see tests/fixtures/subprocess.h).
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  return poolside::devstack::Run();
}
