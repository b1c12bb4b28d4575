#ifndef POOLSIDE_COMMON_TELEMETRY_METRICS_SERVER_H_
#define POOLSIDE_COMMON_TELEMETRY_METRICS_SERVER_H_

// The HTTP endpoint of a service's MetricsRegistry (on Debian's civetweb):
//   GET /metrics   Prometheus text exposition format 0.0.4
//   GET /          the HTML status page
// Anything else is 404; methods other than GET and HEAD are 405.
//
//   auto http = MetricsServer::Start(config.server().telemetry().metrics(), &metrics);
//   if (!http.ok()) ...;          // bad address, port taken
//   // *http is null when metrics.listen is empty (endpoint off).
//
// Thread-safe. `registry` must outlive the server; the destructor waits for
// requests in progress.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/telemetry/metrics.h"
#include "proto/poolside/v1/config.pb.h"

struct mg_context;
struct mg_connection;

namespace poolside::telemetry {

// Checks metrics.listen (empty, or host:port as Start() accepts it);
// INVALID_ARGUMENT naming the problem otherwise. For --check_config.
absl::Status ValidateMetricsConfig(const v1::MetricsConfig& config);

class MetricsServer {
 public:
  // `listen` is "host:port" with a numeric host (IPv4, "[IPv6]", or
  // "localhost"); port 0 picks a free port. The bound port is written to
  // `port_file` when that is not empty. INVALID_ARGUMENT for a malformed
  // address, UNAVAILABLE when it cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& listen,
                                                              const std::string& port_file,
                                                              MetricsRegistry* registry);
  // As above from configuration; null (and OK) when config.listen is empty.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const v1::MetricsConfig& config,
                                                              MetricsRegistry* registry);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  int port() const { return port_; }

 private:
  MetricsServer() = default;
  static int Handle(::mg_connection* conn, void* self);

  MetricsRegistry* registry_ = nullptr;
  std::string wake_host_;
  ::mg_context* context_ = nullptr;
  int port_ = 0;
};

}  // namespace poolside::telemetry

#endif  // POOLSIDE_COMMON_TELEMETRY_METRICS_SERVER_H_
