#include "common/telemetry/otlp_exporter.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/telemetry/log.h"
#include "grpcpp/grpcpp.h"

namespace poolside::telemetry {
namespace {

namespace otlp_collector = opentelemetry::proto::collector::trace::v1;
namespace otlp_trace = opentelemetry::proto::trace::v1;

void AddStringAttribute(
    google::protobuf::RepeatedPtrField<opentelemetry::proto::common::v1::KeyValue>* to,
    const std::string& key, const std::string& value) {
  auto* kv = to->Add();
  kv->set_key(key);
  kv->mutable_value()->set_string_value(value);
}

}  // namespace

OtlpExporter::OtlpExporter(OtlpExporterOptions options) : options_(std::move(options)) {
  grpc::ChannelArguments args;
  // Come back quickly once a collector that was down is up again.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 5000);
  stub_ = otlp_collector::TraceService::NewStub(
      grpc::CreateCustomChannel(options_.endpoint, grpc::InsecureChannelCredentials(), args));
  thread_ = std::thread([this] { Loop(); });
}

OtlpExporter::~OtlpExporter() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
  LogStats("tracing stats at exit");
}

void OtlpExporter::Export(std::unique_ptr<otlp_trace::Span> span) {
  absl::MutexLock lock(&mu_);
  if (stopping_ || queue_.size() >= options_.max_queue_size) {
    ++stats_.spans_dropped_queue_full_total;
    return;
  }
  queue_.push_back(std::move(span));
  ++accepted_;
  ++stats_.spans_queued_total;
}

ExporterStats OtlpExporter::stats() const {
  absl::MutexLock lock(&mu_);
  ExporterStats s = stats_;
  s.queue_size = queue_.size();
  return s;
}

bool OtlpExporter::Flush(absl::Duration timeout) {
  struct Target {
    OtlpExporter* exporter;
    uint64_t settled;
  };
  absl::MutexLock lock(&mu_);
  Target target{this, accepted_};
  ++flush_requests_;
  const bool done = mu_.AwaitWithTimeout(absl::Condition(
                                             +[](Target* t) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                               return t->exporter->settled_ >= t->settled;
                                             },
                                             &target),
                                         timeout);
  --flush_requests_;
  return done;
}

void OtlpExporter::Loop() {
  absl::Time next_stats = absl::Now() + options_.stats_log_interval;
  absl::Time shutdown_deadline = absl::InfiniteFuture();
  std::vector<std::unique_ptr<otlp_trace::Span>> batch;
  for (;;) {
    batch.clear();
    bool stopping;
    {
      absl::MutexLock lock(&mu_);
      // Woken by a full batch, a flush, shutdown, or the batch interval.
      mu_.AwaitWithTimeout(absl::Condition(
                               +[](OtlpExporter* e) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                 return e->stopping_ ||
                                        (e->flush_requests_ > 0 && !e->queue_.empty()) ||
                                        e->queue_.size() >= e->options_.max_batch_size;
                               },
                               this),
                           std::max(absl::ZeroDuration(),
                                    std::min(options_.batch_interval, next_stats - absl::Now())));
      stopping = stopping_;
      if (stopping && shutdown_deadline == absl::InfiniteFuture()) {
        shutdown_deadline = absl::Now() + options_.export_timeout;
      }
      const size_t n = std::min(queue_.size(), options_.max_batch_size);
      for (size_t i = 0; i < n; ++i) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    if (!batch.empty()) {
      bool ok = false;
      const absl::Duration timeout =
          stopping ? std::max(absl::ZeroDuration(), shutdown_deadline - absl::Now())
                   : options_.export_timeout;
      if (timeout > absl::ZeroDuration()) ok = Send(batch, timeout);
      absl::MutexLock lock(&mu_);
      ++stats_.export_requests_total;
      if (ok) {
        stats_.spans_exported_total += batch.size();
      } else {
        ++stats_.export_failures_total;
        stats_.spans_dropped_export_failed_total += batch.size();
      }
      settled_ += batch.size();
    }
    if (absl::Now() >= next_stats) {
      LogStats("tracing stats");
      next_stats = absl::Now() + options_.stats_log_interval;
    }
    if (stopping && batch.empty()) return;
  }
}

bool OtlpExporter::Send(std::vector<std::unique_ptr<otlp_trace::Span>>& batch,
                        absl::Duration timeout) {
  otlp_collector::ExportTraceServiceRequest request;
  auto* rs = request.add_resource_spans();
  for (const auto& [key, value] : options_.resource) {
    AddStringAttribute(rs->mutable_resource()->mutable_attributes(), key, value);
  }
  auto* ss = rs->add_scope_spans();
  ss->mutable_scope()->set_name(options_.scope_name);
  ss->mutable_scope()->set_version(options_.scope_version);
  ss->mutable_spans()->Reserve(static_cast<int>(batch.size()));
  for (auto& span : batch) ss->mutable_spans()->AddAllocated(span.release());

  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::microseconds(absl::ToInt64Microseconds(timeout)));
  otlp_collector::ExportTraceServiceResponse response;
  const grpc::Status status = stub_->Export(&context, request, &response);
  if (status.ok()) return true;
  bool log = false;
  {
    absl::MutexLock lock(&mu_);
    // One warning a minute at most while the collector stays away.
    if (absl::Now() - last_failure_log_ > absl::Minutes(1)) {
      last_failure_log_ = absl::Now();
      log = true;
    }
  }
  if (log) {
    LogWarning("cannot export spans; dropping them (the service is not affected)",
               {{"endpoint", options_.endpoint},
                {"code", absl::StrCat(static_cast<int>(status.error_code()))},
                {"error", status.error_message().substr(0, 200)},
                {"spans", absl::StrCat(batch.size())}});
  }
  return false;
}

void OtlpExporter::LogStats(const char* message) {
  const ExporterStats s = stats();
  LogInfo(message,
          {{"endpoint", options_.endpoint},
           {"spans_exported", absl::StrCat(s.spans_exported_total)},
           {"spans_dropped", absl::StrCat(s.spans_dropped_total())},
           {"spans_dropped_queue_full", absl::StrCat(s.spans_dropped_queue_full_total)},
           {"spans_dropped_export_failed", absl::StrCat(s.spans_dropped_export_failed_total)},
           {"queued", absl::StrCat(s.queue_size)}});
}

absl::StatusOr<std::unique_ptr<Tracer>> StartTracing(const v1::TracingConfig& config,
                                                     absl::string_view service) {
  if (absl::Status s = ValidateTracingConfig(config); !s.ok()) return s;
  if (config.endpoint().empty()) return std::unique_ptr<Tracer>();
  OtlpExporterOptions o;
  o.endpoint = config.endpoint();
  if (config.max_batch_size() > 0) o.max_batch_size = config.max_batch_size();
  if (config.batch_interval_ms() > 0)
    o.batch_interval = absl::Milliseconds(config.batch_interval_ms());
  if (config.max_queue_size() > 0) o.max_queue_size = config.max_queue_size();
  if (config.export_timeout_ms() > 0)
    o.export_timeout = absl::Milliseconds(config.export_timeout_ms());
  if (config.stats_log_interval_ms() > 0) {
    o.stats_log_interval = absl::Milliseconds(config.stats_log_interval_ms());
  }
  o.resource = ProcessResource(config.service_name().empty() ? absl::StrCat("poolside-", service)
                                                             : config.service_name());
  o.scope_version = kPoolsideVersion;
  const double ratio = config.has_sampling_ratio() ? config.sampling_ratio() : 1.0;
  auto tracer = std::make_unique<Tracer>(ratio, std::make_unique<OtlpExporter>(std::move(o)));
  SetGlobalTracer(tracer.get());
  return tracer;
}

}  // namespace poolside::telemetry
