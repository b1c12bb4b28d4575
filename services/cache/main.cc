// The cache sidecar: `cache_server --config=FILE [--check_config] [--listen=ADDR]
// [--unix_socket=PATH] [--log_level=LEVEL]`.
//
// The unix socket is created with mode 0660: the query container of the same
// pod reaches it through a shared volume when both containers share a group
// (Kubernetes' pod securityContext.fsGroup gives the volume that group, and the
// socket inherits it). A socket file left by a previous run is removed first;
// one that a live server still answers on is not.
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/config/cgroup.h"
#include "common/server/server.h"
#include "common/server/service_flags.h"
#include "common/telemetry/log.h"
#include "common/telemetry/metrics_service.h"
#include "common/telemetry/trace.h"
#include "services/cache/cache_config.h"
#include "services/cache/cache_metrics.h"
#include "services/cache/cache_service.h"
#include "common/cache/cache_store.h"

ABSL_FLAG(std::string, unix_socket, "", "Overrides unixSocket (a path).");

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

}  // namespace

int main(int argc, char** argv) {
  namespace telemetry = poolside::telemetry;
  const std::optional<poolside::server::ServiceFlags> flags = poolside::server::ParseServiceFlags(
      argc, argv, "cache", "poolside cache sidecar: cache_server --config=FILE", "README.md, Cache sidecar");
  if (!flags.has_value()) return 2;
  const poolside::config::ContainerLimits limits = poolside::config::ReadContainerLimits();
  std::string capacity_note;
  auto config = poolside::cache::LoadCacheConfig(flags->config, limits, &capacity_note);
  if (!config.ok()) return poolside::server::InvalidConfiguration(config.status());
  if (!flags->listen.empty()) config->mutable_server()->set_listen(flags->listen);
  if (absl::Status s = telemetry::ValidateTelemetryConfig(config->server().telemetry()); !s.ok()) {
    return poolside::server::InvalidConfiguration(s);
  }
  if (!absl::GetFlag(FLAGS_unix_socket).empty()) {
    config->set_unix_socket(absl::GetFlag(FLAGS_unix_socket));
    auto again = poolside::cache::FinalizeCacheConfig(*config, limits, &capacity_note);
    if (!again.ok()) {
      telemetry::LogError("invalid --unix_socket", {{"error", std::string(again.status().message())}});
      return 2;
    }
    config = std::move(again);
  }
  if (flags->check_config) {
    std::printf("configuration OK: capacity %s, %u shards, admission %s\n", capacity_note.c_str(),
                config->shards(), config->admission() ? "on" : "off");
    return 0;
  }
  telemetry::LogInfo("capacity", {{"bytes", absl::StrCat(config->capacity_bytes())},
                                  {"why", capacity_note},
                                  {"shards", absl::StrCat(config->shards())},
                                  {"admission", config->admission() ? "on" : "off"}});

  poolside::server::BlockTerminationSignals();
  // Before anything that records spans, so it is destroyed after them.
  auto tracer = telemetry::StartTracing(config->server().telemetry().tracing(), "cache");
  if (!tracer.ok()) {
    telemetry::LogError("cannot start tracing", {{"error", std::string(tracer.status().message())}});
    return 2;
  }
  auto metrics = telemetry::ServiceMetrics::Start("cache", config->server().telemetry());
  if (!metrics.ok()) {
    telemetry::LogError("cannot serve metrics", {{"error", std::string(metrics.status().message())}});
    return 1;
  }
  poolside::cache::CacheStore store(poolside::cache::StoreOptionsFromConfig(*config));
  store.StartReaper();
  poolside::cache::CacheMetrics cache_metrics(&store, &(*metrics)->registry());
  poolside::cache::CacheServiceImpl service(
      &store, {config->max_key_bytes(), config->max_ttl_ms(), config->max_tags()});
  poolside::server::ServerOptions options;
  options.listen = config->server().listen();
  options.port_file = config->server().port_file();
  options.tls = config->server().tls();
  options.drain_timeout = absl::Milliseconds(config->server().drain_timeout_ms());
  options.queue_services = {&service};
  options.before_drain = [&service] { service.EndWatches(); };
  options.call_telemetry = (*metrics)->server_calls();  // a queue server: no interceptor
  const std::string& socket_path = config->unix_socket();
  if (!socket_path.empty()) {
    if (absl::Status s = RemoveStaleSocket(socket_path); !s.ok()) {
      telemetry::LogError("cannot use unix socket", {{"error", std::string(s.message())}});
      return 1;
    }
    options.extra_listen.push_back("unix:" + socket_path);
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
