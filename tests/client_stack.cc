// client_stack: runs a test program written in another language (the Python and
// Node client tests) against real poolside services.
//
//   client_stack PROGRAM ARGS...
//
// Starts a throwaway PostgreSQL (tests/fixtures/postgres_cluster) with the demo
// schema of `make run` (tests/fixtures/demo_schema.h), then the cache sidecar,
// the query service (caching reads of `accounts` through the sidecar) and the
// ingest service (writing `events`) through tests/fixtures/poolside_servers,
// waits until cached reads work, and runs PROGRAM with
//
//   POOLSIDE_ADDR         query service, host:port
//   POOLSIDE_CACHE_ADDR   cache sidecar, host:port
//   POOLSIDE_INGEST_ADDR  ingest service, host:port
//   POOLSIDE_DATABASE     "demo"
//   POOLSIDE_CLI          the `poolside` command-line client
//   POOLSIDE_TOKEN        bearer token of principal "app" (roles read, write,
//                         sql, admin; ingest into demo.events)
//   POOLSIDE_READER_TOKEN bearer token of principal "reader" (role read only:
//                         named queries, no raw SQL, no ingest)
//
// in its environment (plus Bazel's, so it can write $XML_OUTPUT_FILE). Exits
// with PROGRAM's exit code, or 1 (saying why) when the stack did not come up.
// Relative paths in PROGRAM ARGS are relative to the runfiles directory (a
// Bazel test's working directory).

#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/auth/token_hash.h"
#include "grpcpp/client_context.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/query.grpc.pb.h"
#include "tests/fixtures/demo_schema.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/service_process.h"
#include "tests/fixtures/subprocess.h"

namespace poolside::testing {
namespace {

// Test-only tokens; the services hold only their SHA-256.
constexpr char kAppToken[] = "client-tests-app-7c4e1f9a2b";
constexpr char kReaderToken[] = "client-tests-reader-3d8b6a0e5f";

// "app" may do everything the examples do; "reader" only reads, through the
// named query "account_owner" (the README's point select).
void AddPrincipals(v1::AuthConfig* auth, bool ingest) {
  v1::PrincipalConfig* app = auth->add_principals();
  app->set_name("app");
  app->set_token_sha256(auth::Sha256Hex(kAppToken));
  for (const char* role : {"read", "write", "sql", "admin", "ingest"}) app->add_roles(role);
  app->add_databases("*");
  if (ingest) {
    v1::IngestTables* tables = app->add_ingest_tables();
    tables->set_database(kDemoDatabase);
    tables->add_tables("events");
  }
  v1::PrincipalConfig* reader = auth->add_principals();
  reader->set_name("reader");
  reader->set_token_sha256(auth::Sha256Hex(kReaderToken));
  reader->add_roles("read");
  reader->add_databases(kDemoDatabase);
}

struct Stack {
  std::unique_ptr<PostgresCluster> pg;
  std::unique_ptr<ServiceProcess> cache;
  std::unique_ptr<ServiceProcess> query;
  std::unique_ptr<ServiceProcess> ingest;
};

v1::DatabaseConfig* AddDemoDatabase(const PostgresCluster& pg,
                                    google::protobuf::RepeatedPtrField<v1::DatabaseConfig>* dbs) {
  v1::DatabaseConfig* db = dbs->Add();
  db->set_name(kDemoDatabase);
  db->set_dsn(pg.Dsn(kDemoDatabase));
  db->mutable_pool()->set_min_idle(1);
  db->mutable_pool()->set_max_size(4);
  return db;
}

absl::StatusOr<std::unique_ptr<ServiceProcess>> StartQuery(const PostgresCluster& pg,
                                                           const std::string& socket) {
  v1::QueryServiceConfig config;
  config.mutable_server()->set_drain_timeout_ms(5000);
  AddDemoDatabase(pg, config.mutable_databases());
  config.set_default_database(kDemoDatabase);
  v1::QueryCacheConfig* cache = config.mutable_cache();
  cache->set_target(absl::StrCat("unix:", socket));
  cache->set_call_timeout_ms(1000);
  // The examples read their own writes through the cache (min_lsn). A token
  // is normally reached within a few milliseconds, but a CI machine running
  // many tests at once can take longer than the 100 ms default, and the
  // examples assert HIT/MISS, not latency.
  cache->mutable_wal()->set_token_wait_ms(2000);
  AddTables(cache, kDemoDatabase, {"accounts"});
  AddPrincipals(config.mutable_auth(), /*ingest=*/false);
  AddNamedQuery(&config, "account_owner", "SELECT owner, balance FROM accounts WHERE id = $1",
                {{"id", "int64"}});
  return StartOnLoopback("services/query/query_server", config);
}

absl::StatusOr<std::unique_ptr<ServiceProcess>> StartIngest(const PostgresCluster& pg) {
  v1::IngestServiceConfig config;
  config.mutable_server()->set_drain_timeout_ms(5000);
  AddDemoDatabase(pg, config.mutable_databases());
  AddTables(&config, kDemoDatabase, {"events"});
  AddPrincipals(config.mutable_auth(), /*ingest=*/true);
  return StartOnLoopback("services/ingest/ingest_server", config);
}

// Cached reads of a database are BYPASS until the replica's LISTEN connection
// has subscribed and flushed; the examples expect MISS/HIT from their first call.
absl::Status WaitForCachedReads(const std::string& query_addr) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = Connect(query_addr);
  if (!channel.ok()) return channel.status();
  auto stub = v1::QueryService::NewStub(*channel);
  v1::ExecuteRequest request;
  request.set_sql("SELECT count(*) FROM accounts");
  request.mutable_cache()->set_ttl_ms(1000);
  std::string last;
  const bool ready = WaitFor(
      [&] {
        grpc::ClientContext ctx;
        ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
        ctx.AddMetadata("authorization", absl::StrCat("Bearer ", kAppToken));
        v1::ExecuteResponse response;
        grpc::Status s = stub->Execute(&ctx, request, &response);
        last = s.ok() ? v1::CacheOutcome_Name(response.cache()) : s.error_message();
        return s.ok() && response.cache() != v1::BYPASS;
      },
      absl::Seconds(30));
  if (!ready) {
    return absl::DeadlineExceededError(
        absl::StrCat("cached reads never left BYPASS within 30 s (last: ", last, ")"));
  }
  return absl::OkStatus();
}

absl::Status StartStack(Stack* stack) {
  absl::StatusOr<std::unique_ptr<PostgresCluster>> pg = PostgresCluster::Start();
  if (!pg.ok()) return pg.status();
  stack->pg = *std::move(pg);
  if (absl::Status s = stack->pg->CreateDatabase(kDemoDatabase); !s.ok()) return s;
  if (absl::Status s = stack->pg->Exec(kDemoDatabase, kDemoSchema); !s.ok()) return s;

  // Unix socket paths are limited to 107 bytes: not under the test outputs.
  const std::string socket = absl::StrCat("/tmp/poolside-clients-", getpid(), ".sock");
  absl::StatusOr<std::unique_ptr<ServiceProcess>> cache = StartSidecar(socket, 64 << 20);
  if (!cache.ok()) return cache.status();
  stack->cache = *std::move(cache);
  absl::StatusOr<std::unique_ptr<ServiceProcess>> query = StartQuery(*stack->pg, socket);
  if (!query.ok()) return query.status();
  stack->query = *std::move(query);
  absl::StatusOr<std::unique_ptr<ServiceProcess>> ingest = StartIngest(*stack->pg);
  if (!ingest.ok()) return ingest.status();
  stack->ingest = *std::move(ingest);

  // Before any gRPC thread exists in this process: setenv is not thread-safe.
  setenv("POOLSIDE_ADDR", stack->query->address().c_str(), 1);
  setenv("POOLSIDE_CACHE_ADDR", stack->cache->address().c_str(), 1);
  setenv("POOLSIDE_INGEST_ADDR", stack->ingest->address().c_str(), 1);
  setenv("POOLSIDE_DATABASE", kDemoDatabase, 1);
  setenv("POOLSIDE_CLI", RunfilePath("cli/poolside").c_str(), 1);
  setenv("POOLSIDE_TOKEN", kAppToken, 1);
  setenv("POOLSIDE_READER_TOKEN", kReaderToken, 1);
  return WaitForCachedReads(stack->query->address());
}

int Main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: client_stack PROGRAM ARGS...\n");
    return 2;
  }
  Stack stack;
  if (absl::Status s = StartStack(&stack); !s.ok()) {
    fprintf(stderr, "client_stack: the poolside stack did not come up: %s\n", s.ToString().c_str());
    return 1;
  }
  printf("client_stack: query %s, cache %s, ingest %s (logs in %s)\n",
         stack.query->address().c_str(), stack.cache->address().c_str(),
         stack.ingest->address().c_str(), TestOutputDir().c_str());
  fflush(stdout);

  RunOptions options;
  options.timeout = absl::Minutes(4);
  absl::StatusOr<CommandResult> result =
      RunCommand(std::vector<std::string>(argv + 1, argv + argc), options);
  if (!result.ok()) {
    fprintf(stderr, "client_stack: cannot run %s: %s\n", argv[1],
            result.status().ToString().c_str());
    return 1;
  }
  fwrite(result->output.data(), 1, result->output.size(), stdout);
  printf("client_stack: %s exited with %d\n", argv[1], result->exit_code);

  int code = result->exit_code == 0 ? 0 : 1;
  // Each service must still be up and drain cleanly: a crash during the
  // client's calls fails the test even if the client did not notice.
  for (ServiceProcess* p : {stack.query.get(), stack.ingest.get(), stack.cache.get()}) {
    absl::StatusOr<int> exit = Terminate(*p);
    if (!exit.ok() || *exit != 0) {
      fprintf(stderr, "client_stack: a service did not exit cleanly (%s); log %s:\n%s\n",
              exit.ok() ? absl::StrCat("exit ", *exit).c_str() : exit.status().ToString().c_str(),
              p->log_path().c_str(), p->LogTail().c_str());
      code = 1;
    }
  }
  return code;
}

}  // namespace
}  // namespace poolside::testing

int main(int argc, char** argv) { return poolside::testing::Main(argc, argv); }
