#include "common/server/service_telemetry.h"

#include <string>
#include <utility>

#include "common/telemetry/log.h"

namespace poolside::server {

std::optional<ServiceTelemetry> StartServiceTelemetry(const v1::TelemetryConfig& config,
                                                      const char* service, int* exit_code) {
  ServiceTelemetry out;
  auto tracer = telemetry::StartTracing(config.tracing(), service);
  if (!tracer.ok()) {
    telemetry::LogError("cannot start tracing",
                        {{"error", std::string(tracer.status().message())}});
    *exit_code = 2;
    return std::nullopt;
  }
  out.tracer = *std::move(tracer);
  auto metrics = telemetry::ServiceMetrics::Start(service, config);
  if (!metrics.ok()) {
    telemetry::LogError("cannot serve metrics",
                        {{"error", std::string(metrics.status().message())}});
    *exit_code = 1;
    return std::nullopt;
  }
  out.metrics = *std::move(metrics);
  return out;
}

}  // namespace poolside::server
