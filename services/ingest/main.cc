// The ingest service: `ingest_server --config=FILE [--check_config] [--listen=ADDR]
// [--log_level=LEVEL]`.
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/auth/authorizer.h"
#include "common/config/cgroup.h"
#include "common/config/database_roles.h"
#include "common/server/server.h"
#include "common/server/service_config.h"
#include "common/server/service_flags.h"
#include "common/server/service_telemetry.h"
#include "common/telemetry/log.h"
#include "common/telemetry/metrics_service.h"
#include "common/telemetry/otlp_exporter.h"
#include "common/telemetry/trace.h"
#include "services/ingest/ingest_config.h"
#include "services/ingest/ingest_engine.h"
#include "services/ingest/ingest_metrics.h"
#include "services/ingest/ingest_service.h"

int main(int argc, char** argv) {
  namespace telemetry = poolside::telemetry;
  const std::optional<poolside::server::ServiceFlags> flags = poolside::server::ParseServiceFlags(
      argc, argv, "ingest", "poolside ingest service: ingest_server --config=FILE",
      "docs/ingest.md");
  if (!flags.has_value()) return 2;
  std::string sizing;
  auto config = poolside::ingest::LoadIngestConfig(
      flags->config, poolside::config::ReadContainerLimits(), &sizing);
  if (!config.ok()) return poolside::server::InvalidConfiguration(config.status());
  auto authorizer = poolside::server::PrepareDatabaseService(*flags, config->mutable_server(),
                                                             config->auth(), config->databases());
  if (!authorizer.ok()) return poolside::server::InvalidConfiguration(authorizer.status());
  if (flags->check_config) {
    int tables = 0;
    for (const auto& t : config->tables()) tables += t.tables_size();
    std::printf("configuration OK: %d database(s), %d writable table(s); %s\n",
                config->databases_size(), tables, sizing.c_str());
    return 0;
  }
  telemetry::LogInfo("sizing", {{"ingest", sizing}});

  poolside::server::BlockTerminationSignals();
  // Before anything that records spans, so it is destroyed after them.
  int exit_code = 0;
  std::optional<poolside::server::ServiceTelemetry> recording =
      poolside::server::StartServiceTelemetry(config->server().telemetry(), "ingest", &exit_code);
  if (!recording.has_value()) return exit_code;
  // A privileged database role would let every caller reach the server's
  // files and programs: refuse to start rather than write through it. Every
  // pool's role (each DSN user and roles[] entry), checked concurrently.
  if (absl::Status s = poolside::config::VerifyDatabaseRoles(config->databases(), "ingest",
                                                             /*concurrency=*/32,
                                                             absl::Now() + absl::Seconds(10));
      !s.ok()) {
    telemetry::LogError("refusing to start", {{"error", std::string(s.message())}});
    return 1;
  }
  poolside::ingest::IngestEngine engine(*config);
  telemetry::LogInfo("auth", {{"principals", (*authorizer)->enabled()
                                                 ? absl::StrCat((*authorizer)->size())
                                                 : "disabled (every caller may do everything)"}});
  poolside::ingest::IngestServiceImpl service(
      &engine, (*authorizer)->enabled() ? authorizer->get() : nullptr, config->default_database());
  poolside::ingest::IngestMetrics ingest_metrics(&engine, &recording->metrics->registry());
  poolside::server::ServerOptions options;
  options.listen = config->server().listen();
  options.port_file = config->server().port_file();
  options.tls = config->server().tls();
  const absl::Duration drain = absl::Milliseconds(config->server().drain_timeout_ms());
  // The server's own drain comes after the engine's (below): by then every
  // accepted request is answered, and streams get this long to half-close.
  options.drain_timeout = std::min(drain, absl::Seconds(5));
  options.services = {&service};
  // What gRPC itself holds (transport buffers, messages being received) is
  // capped at half the buffer bound plus 16 MiB; past it gRPC cancels streams
  // (RESOURCE_EXHAUSTED) instead of growing. The cap is needed because gRPC
  // receives a message whole before anything, itself included, can refuse it
  // for its size; streams' read reservations (twice their message) keep
  // well-behaved ones under it. Messages up to the cap reach the service,
  // which refuses those over batch.maxRequestBytes stating both sizes.
  const uint64_t grpc_memory = config->batch().buffer_bytes() / 2 + (uint64_t{16} << 20);
  options.grpc_memory_bytes = static_cast<int64_t>(grpc_memory);
  options.max_receive_message_bytes = static_cast<int>(std::min<uint64_t>(grpc_memory, INT32_MAX));
  options.interceptors.push_back(recording->metrics->NewServerInterceptorFactory());
  // A stream waiting for buffer room must not keep receiving into gRPC's own
  // buffers: the byte bound has to hold for the whole process.
  options.fixed_stream_window_bytes = 256 << 10;
  // Readiness: NOT_SERVING until the pools are warm (see IngestEngine::WhenWarm).
  options.serving_at_start = false;
  engine.Start();
  auto server = poolside::server::Server::Start(std::move(options));
  if (!server.ok()) {
    telemetry::LogError("cannot start", {{"error", std::string(server.status().message())}});
    return 1;
  }
  engine.WhenWarm((*server)->MarkServingCallback());

  // SIGTERM/SIGINT: refuse new requests, flush and acknowledge what is
  // buffered, end the streams, then stop the server.
  const int sig = poolside::server::WaitForTerminationSignal();
  telemetry::LogInfo("draining", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"},
                                  {"drain_timeout", absl::FormatDuration(drain)}});
  const bool drained = engine.Drain(drain);
  if (!drained)
    telemetry::LogWarning("drain timed out; unflushed requests are failed, not acknowledged");
  service.FinishStreams();
  engine.Stop();
  (*server)->Shutdown();
  telemetry::LogInfo("exiting", {{"drained", drained ? "true" : "false"}});
  return 0;
}
