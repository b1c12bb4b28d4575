#ifndef POOLSIDE_COMMON_TELEMETRY_OTLP_EXPORTER_H_
#define POOLSIDE_COMMON_TELEMETRY_OTLP_EXPORTER_H_

// Sends finished spans to an OTLP/gRPC collector
// (opentelemetry.proto.collector.trace.v1.TraceService/Export; Jaeger accepts
// it on port 4317) from one background thread, in batches.
//
//   OtlpExporterOptions o;
//   o.endpoint = "127.0.0.1:4317";
//   OtlpExporter exporter(std::move(o));
//   exporter.Export(std::move(span));   // never waits for the collector
//
// The queue is bounded (max_queue_size): a span that finds it full is dropped
// and counted; a batch the collector refuses, or that is not answered within
// export_timeout (collector down or slow), is dropped and counted. A batch is
// sent when max_batch_size spans wait, or batch_interval after the previous
// send. Nothing on the caller's path ever waits for the network: Export() takes
// a mutex for a push onto a deque. The "tracing stats" log line is written by
// the exporter's thread between sends (so at most export_timeout late);
// stats() is always current.
//
// Thread-safe.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/telemetry/span_exporter.h"
#include "common/telemetry/trace.h"
#include "proto/opentelemetry/proto/collector/trace/v1/trace_service.grpc.pb.h"
#include "proto/opentelemetry/proto/trace/v1/trace.pb.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::telemetry {

struct OtlpExporterOptions {
  // "host:port" of the collector (plaintext gRPC).
  std::string endpoint;
  size_t max_batch_size = 512;
  absl::Duration batch_interval = absl::Seconds(1);
  size_t max_queue_size = 4096;
  absl::Duration export_timeout = absl::Seconds(5);
  // A "tracing stats" log line this often (and one at shutdown).
  absl::Duration stats_log_interval = absl::Seconds(60);
  // Resource attributes (service.name, host.name, ...), string-valued.
  std::vector<std::pair<std::string, std::string>> resource;
  std::string scope_name = "poolside";
  std::string scope_version;
};

class OtlpExporter : public SpanExporter {
 public:
  explicit OtlpExporter(OtlpExporterOptions options);
  // Sends what is queued (for at most export_timeout in all), then stops.
  ~OtlpExporter() override;
  OtlpExporter(const OtlpExporter&) = delete;
  OtlpExporter& operator=(const OtlpExporter&) = delete;

  void Export(std::unique_ptr<opentelemetry::proto::trace::v1::Span> span) override;

  ExporterStats stats() const override;

  // Sends what is queued now without waiting for the batch interval, and
  // waits until every span queued before the call was exported or dropped.
  // False if that took longer than `timeout`.
  bool Flush(absl::Duration timeout) override;

 private:
  void Loop();
  // Sends `batch`; returns whether the collector accepted it.
  bool Send(std::vector<std::unique_ptr<opentelemetry::proto::trace::v1::Span>>& batch,
            absl::Duration timeout);
  void LogStats(const char* message);

  const OtlpExporterOptions options_;
  std::unique_ptr<opentelemetry::proto::collector::trace::v1::TraceService::Stub> stub_;

  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<opentelemetry::proto::trace::v1::Span>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int flush_requests_ ABSL_GUARDED_BY(mu_) = 0;
  // Spans accepted into the queue / spans whose fate is decided (exported or
  // dropped after leaving the queue): Flush() waits for the second to catch up.
  uint64_t accepted_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t settled_ ABSL_GUARDED_BY(mu_) = 0;
  ExporterStats stats_ ABSL_GUARDED_BY(mu_);
  absl::Time last_failure_log_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::thread thread_;
};

// Creates the tracer `config` describes, exporting over OTLP/gRPC, and makes
// it the process's tracer (trace.h); null (and OK) when config.endpoint is
// empty. `service` is "query", "cache", "ingest" or "cli". INVALID_ARGUMENT
// as ValidateTracingConfig.
absl::StatusOr<std::unique_ptr<Tracer>> StartTracing(const v1::TracingConfig& config,
                                                     absl::string_view service);

}  // namespace poolside::telemetry

#endif  // POOLSIDE_COMMON_TELEMETRY_OTLP_EXPORTER_H_
