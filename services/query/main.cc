// The query service: `query_server --config=FILE [--check_config]`.
#include <algorithm>
#include <cstdio>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/auth/authorizer.h"
#include "common/config/cgroup.h"
#include "common/config/sizing.h"
#include "common/server/server.h"
#include "common/server/service_config.h"
#include "common/server/service_flags.h"
#include "common/server/service_telemetry.h"
#include "common/telemetry/log.h"
#include "common/telemetry/metrics_service.h"
#include "common/telemetry/otlp_exporter.h"
#include "common/telemetry/trace.h"
#include "services/query/named_queries.h"
#include "services/query/query_config.h"
#include "services/query/query_engine.h"
#include "services/query/query_metrics.h"
#include "services/query/query_service.h"
#include "services/query/sidecar_client.h"

int main(int argc, char** argv) {
  namespace telemetry = poolside::telemetry;
  const std::optional<poolside::server::ServiceFlags> flags = poolside::server::ParseServiceFlags(
      argc, argv, "query", "poolside query service: query_server --config=FILE",
      "docs/configuration.md");
  if (!flags.has_value()) return 2;
  auto config = poolside::query::LoadQueryConfig(flags->config);
  if (!config.ok()) return poolside::server::InvalidConfiguration(config.status());
  auto authorizer = poolside::server::PrepareDatabaseService(*flags, config->mutable_server(),
                                                             config->auth(), config->databases());
  if (!authorizer.ok()) return poolside::server::InvalidConfiguration(authorizer.status());
  auto named_queries = poolside::query::NamedQueries::Create(config->named_queries());
  if (!named_queries.ok()) return poolside::server::InvalidConfiguration(named_queries.status());
  if (flags->check_config) {
    std::printf("configuration OK: %d database(s)\n", config->databases_size());
    return 0;
  }
  // Query's workers are its pooled connections (pool.maxSize per database);
  // the limits are logged for reference.
  telemetry::LogInfo("sizing",
                     {{"limits", poolside::config::DescribeLimits(poolside::config::EffectiveLimits(
                                     config->server(), poolside::config::ReadContainerLimits()))}});
  for (const auto& db : config->databases()) {
    telemetry::LogInfo("database", {{"name", db.name()},
                                    {"target", poolside::query::DescribeDsn(db.dsn())},
                                    {"pool_max_size", absl::StrCat(db.pool().max_size())}});
  }

  poolside::server::BlockTerminationSignals();
  // Before anything that records spans, so it is destroyed after them.
  int exit_code = 0;
  std::optional<poolside::server::ServiceTelemetry> recording =
      poolside::server::StartServiceTelemetry(config->server().telemetry(), "query", &exit_code);
  if (!recording.has_value()) return exit_code;
  std::unique_ptr<poolside::query::CacheClient> sidecar;
  poolside::query::SidecarClient* sidecar_client = nullptr;  // owned by the engine
  if (config->has_cache()) {
    auto client = poolside::query::SidecarClient::Create(config->cache());
    if (!client.ok()) {
      telemetry::LogError("cannot use the cache sidecar",
                          {{"error", std::string(client.status().message())}});
      return 2;
    }
    sidecar_client = client->get();
    sidecar = *std::move(client);
    telemetry::LogInfo("cache sidecar",
                       {{"target", config->cache().target()},
                        {"cached_table_sets", absl::StrCat(config->cache().tables_size())}});
  }
  poolside::query::QueryEngine engine(*config, std::move(sidecar));
  // A privileged database role would let every caller reach the server's
  // files and programs: refuse to start rather than serve through it.
  if (absl::Status s = engine.VerifyRoles(absl::Now() + absl::Seconds(10)); !s.ok()) {
    telemetry::LogError("refusing to start", {{"error", std::string(s.message())}});
    return 1;
  }
  // cache.invalidation "wal" on a server without logical decoding: fail, or
  // fall back, as cache.walUnavailable says.
  if (engine.read_cache() != nullptr) {
    if (absl::Status s = engine.read_cache()->CheckInvalidation(absl::Now() + absl::Seconds(10));
        !s.ok()) {
      telemetry::LogError("refusing to start", {{"error", std::string(s.message())}});
      return 1;
    }
  }
  telemetry::LogInfo("auth", {{"principals", (*authorizer)->enabled()
                                                 ? absl::StrCat((*authorizer)->size())
                                                 : "disabled (every caller may do everything)"},
                              {"named_queries", absl::StrCat(named_queries->size())}});
  poolside::query::QueryServiceImpl service(
      &engine, (*authorizer)->enabled() ? authorizer->get() : nullptr, &*named_queries);
  poolside::query::QueryMetrics query_metrics(&engine, &recording->metrics->registry(),
                                              config->server().telemetry());
  poolside::server::ServerOptions options;
  options.listen = config->server().listen();
  options.port_file = config->server().port_file();
  options.tls = config->server().tls();
  options.max_receive_message_bytes =
      static_cast<int>(std::min<uint32_t>(config->limits().max_request_bytes(), INT32_MAX));
  options.drain_timeout = absl::Milliseconds(config->server().drain_timeout_ms());
  options.queue_services = {&service};
  // Calls still running on the workers answer on the queue, and so do the
  // sidecar client's calls: both end before the queue does.
  options.before_queue_shutdown = [&service, sidecar_client] {
    service.WaitForCalls();
    if (sidecar_client != nullptr) sidecar_client->Close();
  };
  options.call_telemetry = recording->metrics->server_calls();  // a queue server: no interceptor
  // Readiness: NOT_SERVING until the pools are warm (see QueryEngine::WhenWarm).
  options.serving_at_start = false;
  auto server = poolside::server::Server::Start(std::move(options));
  if (!server.ok()) {
    telemetry::LogError("cannot start", {{"error", std::string(server.status().message())}});
    return 1;
  }
  // From here on the sidecar's calls complete on the server's one thread too
  // (common/server/queue_service.h).
  if (sidecar_client != nullptr) sidecar_client->UseQueue((*server)->queue());
  engine.Start();
  engine.WhenWarm((*server)->MarkServingCallback());
  (*server)->WaitForTermination();
  return 0;
}
