#include "common/telemetry/trace.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "proto/opentelemetry/proto/trace/v1/trace.pb.h"

namespace poolside::telemetry {
namespace {

namespace otlp = opentelemetry::proto::trace::v1;
using opentelemetry::proto::common::v1::KeyValue;

std::atomic<Tracer*> global_tracer{nullptr};

absl::BitGen& Random() {
  thread_local absl::BitGen gen;
  return gen;
}

uint64_t UnixNanos(absl::Time t) { return static_cast<uint64_t>(absl::ToUnixNanos(t)); }

std::string Bytes(const uint8_t* data, size_t n) {
  return std::string(reinterpret_cast<const char*>(data), n);
}

KeyValue* NewAttribute(otlp::Span* span, absl::string_view key) {
  KeyValue* kv = span->add_attributes();
  kv->set_key(std::string(key));
  return kv;
}

otlp::Span::SpanKind KindOf(SpanKind kind) {
  switch (kind) {
    case SpanKind::kInternal:
      return otlp::Span::SPAN_KIND_INTERNAL;
    case SpanKind::kServer:
      return otlp::Span::SPAN_KIND_SERVER;
    case SpanKind::kClient:
      return otlp::Span::SPAN_KIND_CLIENT;
    case SpanKind::kProducer:
      return otlp::Span::SPAN_KIND_PRODUCER;
    case SpanKind::kConsumer:
      return otlp::Span::SPAN_KIND_CONSUMER;
  }
  return otlp::Span::SPAN_KIND_INTERNAL;
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : std::string(v);
}

}  // namespace

TraceId NewTraceId() {
  TraceId id;
  do {
    const uint64_t hi = absl::Uniform<uint64_t>(Random());
    const uint64_t lo = absl::Uniform<uint64_t>(Random());
    for (int i = 0; i < 8; ++i) {
      id[i] = static_cast<uint8_t>(hi >> (56 - 8 * i));
      id[8 + i] = static_cast<uint8_t>(lo >> (56 - 8 * i));
    }
  } while (id == TraceId{});
  return id;
}

SpanId NewSpanId() {
  SpanId id;
  do {
    const uint64_t v = absl::Uniform<uint64_t>(Random());
    for (int i = 0; i < 8; ++i) id[i] = static_cast<uint8_t>(v >> (56 - 8 * i));
  } while (id == SpanId{});
  return id;
}

// ---- Span ----

Span::~Span() { End(); }

Span::Span(Span&& other) noexcept
    : context_(std::move(other.context_)), data_(std::move(other.data_)), tracer_(other.tracer_) {
  other.tracer_ = nullptr;
}

Span& Span::operator=(Span&& other) noexcept {
  if (this != &other) {
    End();
    context_ = std::move(other.context_);
    data_ = std::move(other.data_);
    tracer_ = other.tracer_;
    other.tracer_ = nullptr;
  }
  return *this;
}

void Span::SetAttribute(absl::string_view key, absl::string_view value) {
  if (data_ == nullptr) return;
  NewAttribute(data_.get(), key)->mutable_value()->set_string_value(std::string(value));
}

void Span::SetAttribute(absl::string_view key, bool value) {
  if (data_ == nullptr) return;
  NewAttribute(data_.get(), key)->mutable_value()->set_bool_value(value);
}

void Span::SetAttribute(absl::string_view key, double value) {
  if (data_ == nullptr) return;
  NewAttribute(data_.get(), key)->mutable_value()->set_double_value(value);
}

void Span::SetIntAttribute(absl::string_view key, int64_t value) {
  if (data_ == nullptr) return;
  NewAttribute(data_.get(), key)->mutable_value()->set_int_value(value);
}

void Span::AddEvent(absl::string_view name, absl::Time at) {
  if (data_ == nullptr) return;
  otlp::Span::Event* e = data_->add_events();
  e->set_name(std::string(name));
  e->set_time_unix_nano(UnixNanos(at));
}

void Span::AddLink(const SpanContext& linked) {
  if (data_ == nullptr || !linked.valid()) return;
  otlp::Span::Link* l = data_->add_links();
  l->set_trace_id(Bytes(linked.trace_id.data(), linked.trace_id.size()));
  l->set_span_id(Bytes(linked.span_id.data(), linked.span_id.size()));
  l->set_trace_state(linked.trace_state);
  l->set_flags(linked.flags | 0x100 | (linked.remote ? 0x200 : 0));
}

void Span::SetStatus(const absl::Status& status) {
  if (data_ == nullptr || status.ok()) return;
  data_->mutable_status()->set_code(otlp::Status::STATUS_CODE_ERROR);
  data_->mutable_status()->set_message(
      absl::StrCat(absl::StatusCodeToString(status.code()), ": ", status.message().substr(0, 512)));
}

void Span::End(absl::Time end) {
  if (data_ == nullptr || tracer_ == nullptr) {
    data_.reset();
    return;
  }
  data_->set_end_time_unix_nano(UnixNanos(end));
  tracer_->exporter_->Export(std::move(data_));
  tracer_ = nullptr;
}

// ---- Sampler ----

ParentBasedRatioSampler::ParentBasedRatioSampler(double ratio)
    : ratio_(ratio < 0   ? 0
             : ratio > 1 ? 1
                         : ratio),
      threshold_(ratio_ >= 1 ? UINT64_MAX
                             : static_cast<uint64_t>(ratio_ * 18446744073709551616.0)) {}

bool ParentBasedRatioSampler::ShouldSample(const SpanContext& parent,
                                           const TraceId& trace_id) const {
  if (parent.valid()) return parent.sampled();
  if (ratio_ >= 1) return true;
  if (ratio_ <= 0) return false;
  // The trace id's last 8 bytes are random (W3C level 2), so each ratio picks
  // that share of traces, the same way in every process.
  uint64_t v = 0;
  for (int i = 8; i < 16; ++i) v = v << 8 | trace_id[i];
  return v < threshold_;
}

// ---- Resource ----

std::vector<std::pair<std::string, std::string>> ProcessResource(absl::string_view service_name) {
  std::vector<std::pair<std::string, std::string>> out;
  out.emplace_back("service.name", std::string(service_name));
  const std::string version = Env("POOLSIDE_VERSION");
  out.emplace_back("service.version", version.empty() ? kPoolsideVersion : version);
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) == 0 && host[0] != '\0') {
    out.emplace_back("host.name", host);
  }
  out.emplace_back("process.pid", absl::StrCat(getpid()));
  const std::pair<const char*, const char*> k8s[] = {
      {"POD_NAME", "k8s.pod.name"},
      {"POD_NAMESPACE", "k8s.namespace.name"},
      {"NODE_NAME", "k8s.node.name"},
      {"POD_UID", "k8s.pod.uid"},
  };
  for (const auto& [env, key] : k8s) {
    const std::string v = Env(env);
    if (!v.empty()) out.emplace_back(key, v);
  }
  for (absl::string_view pair :
       absl::StrSplit(Env("OTEL_RESOURCE_ATTRIBUTES"), ',', absl::SkipEmpty())) {
    const size_t eq = pair.find('=');
    if (eq == absl::string_view::npos || eq == 0) continue;
    const std::string key(absl::StripAsciiWhitespace(pair.substr(0, eq)));
    const std::string value(absl::StripAsciiWhitespace(pair.substr(eq + 1)));
    bool replaced = false;
    for (auto& [k, v] : out) {
      if (k == key) {
        v = value;
        replaced = true;
      }
    }
    if (!replaced) out.emplace_back(key, value);
  }
  return out;
}

// ---- Tracer ----

Tracer::Tracer(double sampling_ratio, std::unique_ptr<SpanExporter> exporter)
    : sampler_(sampling_ratio), exporter_(std::move(exporter)) {}

Tracer::~Tracer() {
  Tracer* self = this;
  global_tracer.compare_exchange_strong(self, nullptr);
}

Span Tracer::StartSpan(absl::string_view name, SpanKind kind, const SpanContext& parent,
                       absl::Time start) {
  Span span;
  const bool has_parent = parent.valid();
  span.context_.trace_id = has_parent ? parent.trace_id : NewTraceId();
  span.context_.span_id = NewSpanId();
  span.context_.trace_state = has_parent ? parent.trace_state : std::string();
  const bool sampled = sampler_.ShouldSample(parent, span.context_.trace_id);
  span.context_.flags = has_parent ? (parent.flags & ~uint8_t{1}) : 0;
  if (sampled) span.context_.flags |= 1;
  if (!sampled) return span;
  auto data = std::make_unique<otlp::Span>();
  data->set_trace_id(Bytes(span.context_.trace_id.data(), 16));
  data->set_span_id(Bytes(span.context_.span_id.data(), 8));
  if (has_parent) data->set_parent_span_id(Bytes(parent.span_id.data(), 8));
  data->set_trace_state(span.context_.trace_state);
  // W3C flags, plus whether the parent is remote (OTLP 1.1 bits 8 and 9).
  data->set_flags(span.context_.flags | 0x100 | (has_parent && parent.remote ? 0x200 : 0));
  data->set_name(std::string(name));
  data->set_kind(KindOf(kind));
  data->set_start_time_unix_nano(UnixNanos(start));
  span.data_ = std::move(data);
  span.tracer_ = this;
  return span;
}

// ---- Process-wide ----

Tracer* GlobalTracer() { return global_tracer.load(std::memory_order_acquire); }

void SetGlobalTracer(Tracer* tracer) { global_tracer.store(tracer, std::memory_order_release); }

Span StartSpan(absl::string_view name, SpanKind kind, const SpanContext& parent, absl::Time start) {
  Tracer* tracer = GlobalTracer();
  if (tracer == nullptr) {
    // Tracing off: pass the caller's context through unchanged.
    Span span;
    span.context_ = parent;
    return span;
  }
  return tracer->StartSpan(name, kind, parent, start);
}

ExporterStats GetTracingStats() {
  Tracer* tracer = GlobalTracer();
  return tracer == nullptr ? ExporterStats() : tracer->stats();
}

absl::Status ValidateTracingConfig(const v1::TracingConfig& config) {
  if (config.has_sampling_ratio() &&
      !(config.sampling_ratio() >= 0 && config.sampling_ratio() <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("server.telemetry.tracing.samplingRatio is ",
                                                   config.sampling_ratio(),
                                                   "; it must be between 0 and 1"));
  }
  const std::string& e = config.endpoint();
  if (!e.empty()) {
    const size_t colon = e.rfind(':');
    int port = 0;
    if (colon == std::string::npos || colon == 0 ||
        !absl::SimpleAtoi(absl::string_view(e).substr(colon + 1), &port) || port <= 0 ||
        port > 65535 || absl::StartsWith(e, "http")) {
      return absl::InvalidArgumentError(
          absl::StrCat("server.telemetry.tracing.endpoint \"", e.substr(0, 100),
                       "\" is not host:port (OTLP/gRPC, e.g. \"jaeger:4317\"; no http:// prefix)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace poolside::telemetry
