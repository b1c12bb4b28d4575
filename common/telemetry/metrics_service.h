#ifndef POOLSIDE_COMMON_TELEMETRY_METRICS_SERVICE_H_
#define POOLSIDE_COMMON_TELEMETRY_METRICS_SERVICE_H_

// What a service's main.cc needs for metrics, in one object: the process's
// MetricsRegistry (with process and span-exporter series), the gRPC call
// metrics and, with a tracer, server spans (an interceptor factory, the only
// interceptor a service installs, or ServerCallTelemetry for a queue server's
// calls: see metrics_interceptor.h), and the HTTP endpoint serving
// /metrics and the status page when server.telemetry.metrics.listen is set.
//
//   auto metrics = ServiceMetrics::Start("query", config.server().telemetry());
//   if (!metrics.ok()) ...                      // e.g. the port is taken
//   options.call_telemetry = (*metrics)->server_calls();   // a queue server
//   // or options.interceptors.push_back((*metrics)->NewServerInterceptorFactory());
//   QueryMetrics query_metrics(&engine, &(*metrics)->registry(), ...);
//
// Declare it before the gRPC server and before whatever its collectors read
// (it must outlive both). Thread-safe.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/telemetry/metrics.h"
#include "common/telemetry/metrics_interceptor.h"
#include "common/telemetry/metrics_server.h"
#include "grpcpp/support/server_interceptor.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::telemetry {

class ServiceMetrics {
 public:
  // Errors are the endpoint's (MetricsServer::Start).
  static absl::StatusOr<std::unique_ptr<ServiceMetrics>> Start(const std::string& service,
                                                               const v1::TelemetryConfig& config);
  ~ServiceMetrics();

  MetricsRegistry& registry() { return registry_; }
  // Null when the endpoint is off.
  MetricsServer* http() { return http_.get(); }

  // Call metrics and server spans for a server with callback or synchronous
  // services (ingest)...
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
  NewServerInterceptorFactory();
  // ... or, for a queue server (cache, query), the same series recorded by
  // its calls themselves (ServerOptions::call_telemetry). One or the other.
  ServerCallTelemetry* server_calls() { return &server_calls_; }

 private:
  explicit ServiceMetrics(const std::string& service)
      : registry_(service), server_calls_(&registry_) {}

  MetricsRegistry registry_;
  ServerCallTelemetry server_calls_;
  MetricsRegistry::Registration tracing_;
  std::unique_ptr<MetricsServer> http_;  // stopped first
};

// Checks server.telemetry as a start would (tracing and the metrics endpoint),
// for --check_config and before anything starts.
absl::Status ValidateTelemetryConfig(const v1::TelemetryConfig& config);

// poolside_trace_spans_{queued,exported}_total, poolside_trace_spans_dropped_total
// {reason}, poolside_trace_export_requests_total, ..._failures_total and
// poolside_trace_queue_spans from the process's span exporter (zeros when
// tracing is off).
void AppendTracingMetrics(std::vector<prometheus::MetricFamily>* out);

}  // namespace poolside::telemetry

#endif  // POOLSIDE_COMMON_TELEMETRY_METRICS_SERVICE_H_
