#ifndef POOLSIDE_COMMON_SERVER_SERVICE_TELEMETRY_H_
#define POOLSIDE_COMMON_SERVER_SERVICE_TELEMETRY_H_

// What a service binary records with: its tracer and its metrics endpoint,
// started together from `server.telemetry` by main().
//
//   int exit_code = 0;
//   auto recording = StartServiceTelemetry(config.server().telemetry(), "query", &exit_code);
//   if (!recording.has_value()) return exit_code;
//   QueryMetrics query_metrics(&engine, &recording->metrics->registry(), ...);

#include <memory>
#include <optional>

#include "common/telemetry/metrics_service.h"
#include "common/telemetry/otlp_exporter.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::server {

// Members in this order: the tracer is destroyed after the metrics, and main
// declares this before anything that records spans so it outlives them too.
struct ServiceTelemetry {
  std::unique_ptr<telemetry::Tracer> tracer;
  std::unique_ptr<telemetry::ServiceMetrics> metrics;
};

// Starts tracing, then the metrics endpoint, for `service` ("query").
// On failure logs "cannot start tracing" or "cannot serve metrics" with the
// reason, sets `*exit_code` to what main then returns (2: tracing, whose
// configuration is at fault; 1: the endpoint, e.g. its port is taken) and
// returns nullopt.
std::optional<ServiceTelemetry> StartServiceTelemetry(const v1::TelemetryConfig& config,
                                                      const char* service, int* exit_code);

}  // namespace poolside::server

#endif  // POOLSIDE_COMMON_SERVER_SERVICE_TELEMETRY_H_
