// The query service: `query_server --config=FILE [--check_config]`.
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/server/server.h"
#include "common/telemetry/log.h"
#include "services/query/query_config.h"
#include "services/query/query_engine.h"
#include "services/query/sidecar_client.h"
#include "services/query/query_service.h"

ABSL_FLAG(std::string, config, "", "Path to the JSON configuration (poolside.v1.QueryServiceConfig).");
ABSL_FLAG(bool, check_config, false, "Validate the configuration and exit.");
ABSL_FLAG(std::string, listen, "", "Overrides server.listen.");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error.");

int main(int argc, char** argv) {
  namespace telemetry = poolside::telemetry;
  absl::SetProgramUsageMessage("poolside query service: query_server --config=FILE");
  absl::ParseCommandLine(argc, argv);
  telemetry::SetLogService("query");
  telemetry::LogLevel level;
  if (!telemetry::ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    std::fprintf(stderr, "--log_level must be debug, info, warning or error\n");
    return 2;
  }
  telemetry::SetMinLogLevel(level);
  if (absl::GetFlag(FLAGS_config).empty()) {
    std::fprintf(stderr, "--config=FILE is required (see README.md, Configuration)\n");
    return 2;
  }
  auto config = poolside::query::LoadQueryConfig(absl::GetFlag(FLAGS_config));
  if (!config.ok()) {
    telemetry::LogError("invalid configuration", {{"error", std::string(config.status().message())}});
    return 2;
  }
  if (!absl::GetFlag(FLAGS_listen).empty()) config->mutable_server()->set_listen(absl::GetFlag(FLAGS_listen));
  if (absl::GetFlag(FLAGS_check_config)) {
    std::printf("configuration OK: %d database(s)\n", config->databases_size());
    return 0;
  }
  for (const auto& db : config->databases()) {
    telemetry::LogInfo("database", {{"name", db.name()},
                                    {"target", poolside::query::DescribeDsn(db.dsn())},
                                    {"pool_max_size", absl::StrCat(db.pool().max_size())}});
  }

  poolside::server::BlockTerminationSignals();
  std::unique_ptr<poolside::query::CacheClient> sidecar;
  if (config->has_cache()) {
    sidecar = std::make_unique<poolside::query::SidecarClient>(
        config->cache().target(), absl::Milliseconds(config->cache().call_timeout_ms()));
    telemetry::LogInfo("cache sidecar", {{"target", config->cache().target()},
                                         {"cached_table_sets", absl::StrCat(config->cache().tables_size())}});
  }
  poolside::query::QueryEngine engine(*config, std::move(sidecar));
  poolside::query::QueryServiceImpl service(&engine);
  poolside::server::ServerOptions options;
  options.listen = config->server().listen();
  options.port_file = config->server().port_file();
  options.drain_timeout = absl::Milliseconds(config->server().drain_timeout_ms());
  options.services = {&service};
  auto server = poolside::server::Server::Start(options);
  if (!server.ok()) {
    telemetry::LogError("cannot start", {{"error", std::string(server.status().message())}});
    return 1;
  }
  engine.Start();
  (*server)->WaitForTermination();
  return 0;
}
