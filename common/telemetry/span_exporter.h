#ifndef POOLSIDE_COMMON_TELEMETRY_SPAN_EXPORTER_H_
#define POOLSIDE_COMMON_TELEMETRY_SPAN_EXPORTER_H_

// Where a Tracer (trace.h) sends finished spans. The tracer and the code that
// records spans know only this interface, so they build without gRPC; the
// OTLP/gRPC implementation is OtlpExporter (otlp_exporter.h), which a server's
// main installs with StartTracing.
//
// Implementations are thread-safe, and Export never waits for the network.

#include <cstdint>
#include <memory>

#include "absl/time/time.h"
#include "proto/opentelemetry/proto/trace/v1/trace.pb.h"

namespace poolside::telemetry {

// Counters since the exporter started. `spans_dropped_total()` is what an
// operator alerts on.
struct ExporterStats {
  uint64_t spans_queued_total = 0;    // accepted into the queue
  uint64_t spans_exported_total = 0;  // acknowledged by the collector
  uint64_t spans_dropped_queue_full_total = 0;
  uint64_t spans_dropped_export_failed_total = 0;  // collector down, slow or refusing
  uint64_t export_requests_total = 0;
  uint64_t export_failures_total = 0;
  uint64_t queue_size = 0;  // now
  uint64_t spans_dropped_total() const {
    return spans_dropped_queue_full_total + spans_dropped_export_failed_total;
  }
};

class SpanExporter {
 public:
  virtual ~SpanExporter() = default;

  // Takes a finished span; drops it (and counts the drop) rather than wait.
  virtual void Export(std::unique_ptr<opentelemetry::proto::trace::v1::Span> span) = 0;

  virtual ExporterStats stats() const = 0;

  // Sends what is queued now and waits until every span queued before the
  // call was exported or dropped. False if that took longer than `timeout`.
  virtual bool Flush(absl::Duration timeout) = 0;
};

}  // namespace poolside::telemetry

#endif  // POOLSIDE_COMMON_TELEMETRY_SPAN_EXPORTER_H_
