#ifndef POOLSIDE_COMMON_TELEMETRY_TRACE_H_
#define POOLSIDE_COMMON_TELEMETRY_TRACE_H_

// Spans: what one piece of work did, exported over OTLP (otlp_exporter.h) so a
// request shows up in Jaeger as one trace across query, cache and ingest.
//
// A service starts tracing once, from its configuration, and keeps the Tracer
// alive longer than anything that records spans (declare it first in main):
//
//   absl::StatusOr<std::unique_ptr<Tracer>> tracer =
//       StartTracing(config.server().telemetry().tracing(), "query");
//   // null when server.telemetry.tracing.endpoint is empty: tracing off
//
// (StartTracing is in otlp_exporter.h: this library knows no gRPC, only the
// SpanExporter interface, so code that records spans builds without it.)
//
// Code records spans through the process's tracer:
//
//   Span span = StartSpan("pool.acquire", SpanKind::kInternal, work.trace);
//   span.SetAttribute("db.namespace", name);
//   ...
//   span.SetStatus(status);
//   span.End();          // or let it go out of scope
//
// Without a tracer (tracing off) StartSpan returns a span that records nothing
// and whose context() is its parent's, so trace context still passes through
// this process unchanged. With a tracer, the parent-based ratio sampler decides;
// an unsampled span records nothing but has an id of its own (flag 0), which
// downstream services follow.
//
// Semantic conventions (OpenTelemetry): RPC spans carry rpc.system ("grpc"),
// rpc.service, rpc.method, rpc.grpc.status_code (trace_grpc.h); database
// spans the stable database conventions: db.system.name ("postgresql"),
// db.namespace, db.query.summary (the span name), db.query.text (literals
// replaced by $n; parameter values are never recorded), db.operation.name,
// db.collection.name, db.response.status_code (SQLSTATE), error.type,
// server.address/port (common/db/connection.h).
//
// Statistics for /metrics (read them as often as you like; they are counters
// since the process started, all zero when tracing is off):
//
//   ExporterStats s = GetTracingStats();
//   s.spans_exported_total               -> poolside_trace_spans_exported_total
//   s.spans_dropped_total()              -> poolside_trace_spans_dropped_total
//   s.spans_dropped_queue_full_total     (reason="queue_full")
//   s.spans_dropped_export_failed_total  (reason="export_failed")
//   s.queue_size                         -> a gauge
//
// Thread-safe. A Span is used by one thread at a time (it may move between
// threads); the Tracer is shared.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/telemetry/span_exporter.h"
#include "common/telemetry/trace_context.h"
#include "proto/poolside/v1/config.pb.h"

namespace opentelemetry::proto::trace::v1 {
class Span;
}

namespace poolside::telemetry {

// Reported as service.version unless $POOLSIDE_VERSION says otherwise.
inline constexpr char kPoolsideVersion[] = "0.1.0";

enum class SpanKind { kInternal, kServer, kClient, kProducer, kConsumer };

class Tracer;

class Span {
 public:
  Span() = default;  // records nothing, invalid context
  ~Span();           // ends the span if still open
  Span(Span&& other) noexcept;
  Span& operator=(Span&& other) noexcept;

  // Valid whenever there is a trace (even if this span does not record).
  const SpanContext& context() const { return context_; }
  bool recording() const { return data_ != nullptr; }

  void SetAttribute(absl::string_view key, absl::string_view value);
  void SetAttribute(absl::string_view key, const char* value) {
    SetAttribute(key, absl::string_view(value));
  }
  void SetAttribute(absl::string_view key, const std::string& value) {
    SetAttribute(key, absl::string_view(value));
  }
  void SetAttribute(absl::string_view key, bool value);
  void SetAttribute(absl::string_view key, double value);
  template <typename T,
            std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
  void SetAttribute(absl::string_view key, T value) {
    SetIntAttribute(key, static_cast<int64_t>(value));
  }
  void AddEvent(absl::string_view name, absl::Time at = absl::Now());
  // A causal relation to a span of another trace or branch (e.g. a batch
  // flush to each request it carried).
  void AddLink(const SpanContext& linked);
  // OK leaves the status unset; anything else marks the span as an error with
  // the code's name and the message.
  void SetStatus(const absl::Status& status);
  void End(absl::Time end = absl::Now());

 private:
  friend class Tracer;
  friend Span StartSpan(absl::string_view, SpanKind, const SpanContext&, absl::Time);
  void SetIntAttribute(absl::string_view key, int64_t value);

  SpanContext context_;
  std::unique_ptr<opentelemetry::proto::trace::v1::Span> data_;
  Tracer* tracer_ = nullptr;
};

// Parent-based, trace-id-ratio sampling: a span with a valid parent is sampled
// iff its parent is; a new trace is sampled with probability `ratio`, decided
// by its trace id (so every process decides the same for one trace id).
class ParentBasedRatioSampler {
 public:
  explicit ParentBasedRatioSampler(double ratio);
  bool ShouldSample(const SpanContext& parent, const TraceId& trace_id) const;

 private:
  double ratio_;
  uint64_t threshold_;
};

// The resource attributes of this process: service.name, service.version,
// host.name, process.pid and, when the Kubernetes downward API sets them,
// k8s.pod.name ($POD_NAME), k8s.namespace.name ($POD_NAMESPACE),
// k8s.node.name ($NODE_NAME), k8s.pod.uid ($POD_UID); plus any
// "key=value,key=value" pairs in $OTEL_RESOURCE_ATTRIBUTES.
std::vector<std::pair<std::string, std::string>> ProcessResource(absl::string_view service_name);

class Tracer {
 public:
  // `exporter` is not null.
  Tracer(double sampling_ratio, std::unique_ptr<SpanExporter> exporter);
  ~Tracer();  // uninstalls itself if it is the process's tracer; flushes
  Tracer(const Tracer&) = delete;
  Tracer& operator=(const Tracer&) = delete;

  // A child of `parent` (or the root of a new trace if `parent` is invalid).
  Span StartSpan(absl::string_view name, SpanKind kind, const SpanContext& parent,
                 absl::Time start = absl::Now());

  ExporterStats stats() const { return exporter_->stats(); }
  bool Flush(absl::Duration timeout) { return exporter_->Flush(timeout); }

 private:
  friend class Span;
  const ParentBasedRatioSampler sampler_;
  const std::unique_ptr<SpanExporter> exporter_;
};

// Checks a TracingConfig (ratio within 0..1, endpoint shaped host:port);
// INVALID_ARGUMENT naming the field otherwise.
absl::Status ValidateTracingConfig(const v1::TracingConfig& config);

// The process's tracer, null when tracing is off.
Tracer* GlobalTracer();
void SetGlobalTracer(Tracer* tracer);

// StartSpan through the process's tracer (see the header comment when off).
Span StartSpan(absl::string_view name, SpanKind kind,
               const SpanContext& parent = CurrentSpanContext(), absl::Time start = absl::Now());

// The process's exporter statistics; zeros when tracing is off.
ExporterStats GetTracingStats();

// A new random trace id / span id (never all zero).
TraceId NewTraceId();
SpanId NewSpanId();

}  // namespace poolside::telemetry

#endif  // POOLSIDE_COMMON_TELEMETRY_TRACE_H_
