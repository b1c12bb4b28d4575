// The cache sidecar: `cache_server --config=FILE [--check_config] [--listen=ADDR]
// [--unix_socket=PATH] [--log_level=LEVEL] [--probe=liveness|readiness]`.
//
// The unix socket is created with mode 0660: the query container of the same
// pod reaches it through a shared volume when both containers share a group
// (Kubernetes' pod securityContext.fsGroup gives the volume that group, and the
// socket inherits it). A socket file left by a previous run is removed first;
// one that a live server still answers on is not.
//
// --probe asks a running sidecar (over its unixSocket) for its health and
// exits 0 if it is SERVING, 1 otherwise: Kubernetes' exec probes, since a
// sidecar serving only its unix socket has no port a grpc probe could reach.
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/auth/authorizer.h"
#include "common/cache/cache_store.h"
#include "common/config/cgroup.h"
#include "common/server/channel.h"
#include "common/server/server.h"
#include "common/server/service_flags.h"
#include "common/server/service_telemetry.h"
#include "common/server/tls.h"
#include "common/telemetry/log.h"
#include "common/telemetry/metrics_service.h"
#include "common/telemetry/otlp_exporter.h"
#include "common/telemetry/trace.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"
#include "services/cache/cache_config.h"
#include "services/cache/cache_metrics.h"
#include "services/cache/cache_service.h"

ABSL_FLAG(std::string, unix_socket, "", "Overrides unixSocket (a path).");
ABSL_FLAG(std::string, probe, "",
          "Check a running sidecar over its unixSocket instead of serving: \"liveness\" (the "
          "process serves) or \"readiness\" (it takes calls). Exit 0 if SERVING.");

namespace {

constexpr mode_t kSocketMode = 0660;

// Removes a socket file nobody serves on any more. FAILED_PRECONDITION if a
// server still accepts connections on it, or if the path is not a socket.
absl::Status RemoveStaleSocket(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return absl::OkStatus();
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("unixSocket ", path, " exists and is not a socket; not removing it"));
  }
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket(): ", std::strerror(errno)));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  const bool live = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  if (live) {
    return absl::FailedPreconditionError(
        absl::StrCat("unixSocket ", path, " is in use by a running server"));
  }
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot remove stale socket ", path, ": ", std::strerror(errno)));
  }
  poolside::telemetry::LogInfo("removed stale socket", {{"path", path}});
  return absl::OkStatus();
}

// --probe: the health Check of the sidecar on `socket_path`.
int Probe(const std::string& socket_path, const std::string& which) {
  namespace health = ::grpc::health::v1;
  if (which != "liveness" && which != "readiness") {
    std::fprintf(stderr, "--probe must be liveness or readiness, got \"%s\"\n", which.c_str());
    return 2;
  }
  if (socket_path.empty()) {
    std::fprintf(stderr, "--probe checks the sidecar over its unix socket: set unixSocket\n");
    return 2;
  }
  poolside::server::ChannelOptions options;
  options.target = "unix:" + socket_path;
  options.tls = poolside::server::PlaintextTls();
  options.trace = false;
  options.retries = false;
  auto channel = poolside::server::CreateChannel(std::move(options));
  if (!channel.ok()) {
    std::fprintf(stderr, "%s\n", std::string(channel.status().message()).c_str());
    return 1;
  }
  auto stub = health::Health::NewStub(*channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
  health::HealthCheckRequest request;
  request.set_service(which == "liveness" ? "liveness" : "");
  health::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) {
    std::fprintf(stderr, "unix:%s: %s\n", socket_path.c_str(), status.error_message().c_str());
    return 1;
  }
  const bool serving = response.status() == health::HealthCheckResponse::SERVING;
  std::printf("%s: %s\n", which.c_str(), serving ? "SERVING" : "NOT_SERVING");
  return serving ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  namespace telemetry = poolside::telemetry;
  const std::optional<poolside::server::ServiceFlags> flags = poolside::server::ParseServiceFlags(
      argc, argv, "cache", "poolside cache sidecar: cache_server --config=FILE",
      "docs/design.md, Cache sidecar");
  if (!flags.has_value()) return 2;
  const poolside::config::ContainerLimits limits = poolside::config::ReadContainerLimits();
  std::string capacity_note;
  poolside::cache::CacheConfigOverrides overrides;
  overrides.listen = flags->listen;
  overrides.unix_socket = absl::GetFlag(FLAGS_unix_socket);
  auto config = poolside::cache::LoadCacheConfig(flags->config, limits, &capacity_note, overrides);
  if (!config.ok()) return poolside::server::InvalidConfiguration(config.status());
  if (!absl::GetFlag(FLAGS_probe).empty()) {
    return Probe(config->unix_socket(), absl::GetFlag(FLAGS_probe));
  }
  if (absl::Status s = telemetry::ValidateTelemetryConfig(config->server().telemetry()); !s.ok()) {
    return poolside::server::InvalidConfiguration(s);
  }
  std::unique_ptr<poolside::auth::Authorizer> authorizer;
  if (poolside::cache::PrincipalsConfigured(config->auth())) {
    auto created = poolside::auth::Authorizer::Create(config->auth());
    if (!created.ok()) return poolside::server::InvalidConfiguration(created.status());
    authorizer = *std::move(created);
  }
  const std::string& listen = config->server().listen();
  const bool tcp = !listen.empty() && !poolside::cache::IsUnixAddress(listen);
  std::string serving_on;
  if (!config->unix_socket().empty()) serving_on = "unix:" + config->unix_socket();
  if (!listen.empty()) absl::StrAppend(&serving_on, serving_on.empty() ? "" : " and ", listen);
  if (flags->check_config) {
    std::printf("configuration OK: capacity %s, %u shards, admission %s, serving on %s, %s\n",
                capacity_note.c_str(), config->shards(), config->admission() ? "on" : "off",
                serving_on.c_str(),
                authorizer != nullptr ? absl::StrCat(authorizer->size(), " principals").c_str()
                                      : "no authentication");
    return 0;
  }
  telemetry::LogInfo("capacity", {{"bytes", absl::StrCat(config->capacity_bytes())},
                                  {"why", capacity_note},
                                  {"shards", absl::StrCat(config->shards())},
                                  {"admission", config->admission() ? "on" : "off"}});
  telemetry::LogInfo(
      "auth", {{"principals", authorizer != nullptr ? absl::StrCat(authorizer->size())
                                                    : "none: every caller may do everything"}});
  if (tcp && authorizer != nullptr && config->server().tls().plaintext() &&
      !poolside::cache::IsLoopbackAddress(listen)) {
    telemetry::LogWarning("bearer tokens travel in clear on a plaintext TCP address",
                          {{"listen", listen}, {"fix", "server.tls certFile and keyFile"}});
  }

  poolside::server::BlockTerminationSignals();
  // Before anything that records spans, so it is destroyed after them.
  int exit_code = 0;
  std::optional<poolside::server::ServiceTelemetry> recording =
      poolside::server::StartServiceTelemetry(config->server().telemetry(), "cache", &exit_code);
  if (!recording.has_value()) return exit_code;
  poolside::cache::CacheStore store(poolside::cache::StoreOptionsFromConfig(*config));
  store.StartReaper();
  poolside::cache::CacheMetrics cache_metrics(&store, &recording->metrics->registry());
  poolside::cache::CacheServiceLimits service_limits;
  service_limits.max_key_bytes = config->max_key_bytes();
  service_limits.max_ttl_ms = config->max_ttl_ms();
  service_limits.max_tags = config->max_tags();
  service_limits.max_invalidate_tags = config->max_invalidate_tags();
  service_limits.max_invalidate_prefixes = config->max_invalidate_prefixes();
  service_limits.max_invalidate_bytes = config->max_invalidate_bytes();
  poolside::cache::CacheServiceImpl service(&store, service_limits, authorizer.get());
  poolside::server::ServerOptions options;
  options.port_file = config->server().port_file();
  options.tls = tcp ? config->server().tls() : poolside::server::PlaintextServerTls();
  options.drain_timeout = absl::Milliseconds(config->server().drain_timeout_ms());
  // gRPC parses a request before any handler (and so authentication) sees
  // it: accept no more than the largest entry a Set may carry, or the
  // largest Invalidate, plus room for the rest of the message.
  options.max_receive_message_bytes = static_cast<int>(std::min<uint64_t>(
      std::max<uint64_t>(config->max_entry_bytes(), config->max_invalidate_bytes()) + (1u << 20),
      INT32_MAX));
  options.queue_services = {&service};
  options.before_drain = [&service] { service.EndWatches(); };
  options.call_telemetry = recording->metrics->server_calls();  // a queue server: no interceptor
  const std::string& socket_path = config->unix_socket();
  if (!socket_path.empty()) {
    if (absl::Status s = RemoveStaleSocket(socket_path); !s.ok()) {
      telemetry::LogError("cannot use unix socket", {{"error", std::string(s.message())}});
      return 1;
    }
  }
  // Without server.listen the socket is the server's one address.
  if (listen.empty()) {
    options.listen = "unix:" + socket_path;
  } else {
    options.listen = listen;
    if (!socket_path.empty()) options.extra_listen.push_back("unix:" + socket_path);
  }
  // The socket is created by bind() with 0777 & ~umask: set the umask so it is
  // born with kSocketMode (no window with other permissions).
  const mode_t old_umask = umask(0777 & ~kSocketMode);
  auto server = poolside::server::Server::Start(std::move(options));
  umask(old_umask);
  if (!server.ok()) {
    telemetry::LogError("cannot start", {{"error", std::string(server.status().message())}});
    return 1;
  }
  (*server)->WaitForTermination();
  server->reset();
  if (!socket_path.empty()) unlink(socket_path.c_str());
  return 0;
}
