#include "common/telemetry/metrics_service.h"

#include <utility>

#include "common/telemetry/metrics_family.h"
#include "common/telemetry/metrics_interceptor.h"
#include "common/telemetry/trace.h"

namespace poolside::telemetry {

void AppendTracingMetrics(std::vector<prometheus::MetricFamily>* out) {
  const ExporterStats s = GetTracingStats();
  AppendCounter(out, "poolside_trace_spans_queued_total", "Spans accepted into the export queue.",
                s.spans_queued_total);
  AppendCounter(out, "poolside_trace_spans_exported_total",
                "Spans acknowledged by the OTLP collector.", s.spans_exported_total);
  prometheus::MetricFamily dropped =
      CounterFamily("poolside_trace_spans_dropped_total",
                    "Spans dropped: queue full, or the collector down, slow or refusing them.");
  AddCounter(&dropped, {{"reason", "queue_full"}},
             static_cast<double>(s.spans_dropped_queue_full_total));
  AddCounter(&dropped, {{"reason", "export_failed"}},
             static_cast<double>(s.spans_dropped_export_failed_total));
  out->push_back(std::move(dropped));
  AppendCounter(out, "poolside_trace_export_requests_total", "OTLP Export calls made.",
                s.export_requests_total);
  AppendCounter(out, "poolside_trace_export_failures_total", "OTLP Export calls that failed.",
                s.export_failures_total);
  AppendGauge(out, "poolside_trace_queue_spans", "Spans waiting to be exported.",
              static_cast<double>(s.queue_size));
}

absl::StatusOr<std::unique_ptr<ServiceMetrics>> ServiceMetrics::Start(
    const std::string& service, const v1::TelemetryConfig& config) {
  std::unique_ptr<ServiceMetrics> m(new ServiceMetrics(service));
  m->tracing_ = m->registry_.AddCollector(&AppendTracingMetrics);
  absl::StatusOr<std::unique_ptr<MetricsServer>> http =
      MetricsServer::Start(config.metrics(), &m->registry_);
  if (!http.ok()) return http.status();
  m->http_ = std::move(*http);
  return m;
}

ServiceMetrics::~ServiceMetrics() { http_.reset(); }

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
ServiceMetrics::NewServerInterceptorFactory() {
  return server_calls_.NewInterceptorFactory();
}

absl::Status ValidateTelemetryConfig(const v1::TelemetryConfig& config) {
  if (absl::Status s = ValidateTracingConfig(config.tracing()); !s.ok()) return s;
  return ValidateMetricsConfig(config.metrics());
}

}  // namespace poolside::telemetry
