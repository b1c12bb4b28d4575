#include "common/telemetry/metrics_interceptor.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/sync/mutex.h"
#include "common/telemetry/histogram.h"
#include "common/telemetry/metrics_family.h"
#include "common/telemetry/trace_grpc.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"

namespace poolside::telemetry {
namespace {

using grpc::experimental::InterceptionHookPoints;
using grpc::experimental::ServerRpcInfo;

constexpr size_t kMaxMethods = 200;
constexpr int kCodes = 17;  // grpc::StatusCode OK .. UNAUTHENTICATED

const char* TypeName(ServerRpcInfo::Type type) {
  switch (type) {
    case ServerRpcInfo::Type::UNARY:
      return "unary";
    case ServerRpcInfo::Type::CLIENT_STREAMING:
      return "client_stream";
    case ServerRpcInfo::Type::SERVER_STREAMING:
      return "server_stream";
    case ServerRpcInfo::Type::BIDI_STREAMING:
      return "bidi_stream";
  }
  return "unknown";
}

}  // namespace

// The series of one method, created on its first call and kept, at a stable
// address, as long as the CallMetrics.
struct MethodSeries {
  std::string full_name;  // "/package.Service/Method" (or "other")
  std::string service;
  std::string method;
  std::string type;
  // Per status code, created on first use (under CallMetrics::mu_).
  std::array<std::atomic<prometheus::Counter*>, kCodes> handled{};
  std::array<std::atomic<prometheus::Histogram*>, kCodes> latency{};
};

// Shared by the factory, its interceptors and the status section.
class CallMetrics {
 public:
  explicit CallMetrics(MetricsRegistry* registry)
      : handled_(prometheus::BuildCounter()
                     .Name("poolside_grpc_server_handled_total")
                     .Help("gRPC calls completed by the server, by method and status code.")
                     .Register(registry->registry())),
        latency_(prometheus::BuildHistogram()
                     .Name("poolside_grpc_server_handling_seconds")
                     .Help("Time from the start of a gRPC call to its status being sent.")
                     .Register(registry->registry())) {}

  // The series of a call to `full_method` (its ServerRpcInfo::method()). A
  // registered method's name has one address for the server's lifetime, so
  // most calls find their series in a small lock-free cache keyed by it (the
  // name is compared too: a generic call's name lives in the call).
  MethodSeries* Series(const char* full_method, ServerRpcInfo::Type type) {
    std::atomic<MethodSeries*>& slot =
        recent_[(reinterpret_cast<uintptr_t>(full_method) >> 4) % recent_.size()];
    MethodSeries* m = slot.load(std::memory_order_acquire);
    if (m != nullptr && m->full_name == full_method) return m;
    sync::MutexLock lock(&mu_);
    m = &SeriesFor(full_method, type);
    // "other" stands for many names; caching it would only evict real ones.
    if (m->full_name == full_method) slot.store(m, std::memory_order_release);
    return m;
  }

  void Record(MethodSeries& m, int code, double seconds) {
    if (code < 0 || code >= kCodes) code = static_cast<int>(grpc::StatusCode::UNKNOWN);
    prometheus::Histogram* latency = m.latency[code].load(std::memory_order_acquire);
    if (latency == nullptr) {
      sync::MutexLock lock(&mu_);
      if (m.handled[code].load(std::memory_order_relaxed) == nullptr) {
        const prometheus::Labels labels = {{"grpc_service", m.service},
                                           {"grpc_method", m.method},
                                           {"grpc_type", m.type},
                                           {"grpc_code", GrpcCodeName(code)}};
        m.handled[code].store(&handled_.Add(labels), std::memory_order_relaxed);
        // Published last: a non-null latency means both are set.
        m.latency[code].store(&latency_.Add(labels, RequestLatencyBuckets()),
                              std::memory_order_release);
      }
      latency = m.latency[code].load(std::memory_order_relaxed);
    }
    m.handled[code].load(std::memory_order_relaxed)->Increment();
    latency->Observe(seconds);
  }

  StatusTable Table() const {
    StatusTable t;
    t.title = "gRPC calls";
    t.columns = {"method", "calls", "errors", "mean", "p50", "p99"};
    std::vector<std::pair<std::string, const MethodSeries*>> methods;
    sync::MutexLock lock(&mu_);
    for (const auto& [key, m] : series_) methods.emplace_back(key, m.get());
    std::sort(methods.begin(), methods.end());
    for (const auto& [key, m] : methods) {
      double calls = 0, errors = 0;
      Histogram::Snapshot s;
      for (int c = 0; c < kCodes; ++c) {
        const prometheus::Counter* handled = m->handled[c].load(std::memory_order_relaxed);
        if (handled == nullptr) continue;  // set under mu_, with latency
        calls += handled->Value();
        if (c != 0) errors += handled->Value();
        MergeSnapshot(
            ToSnapshot(m->latency[c].load(std::memory_order_relaxed)->Collect().histogram),
            &s);  // same buckets
      }
      t.rows.push_back({absl::StrCat(m->service, "/", m->method), FormatCount(calls),
                        FormatCount(errors), s.count ? FormatSeconds(s.sum / s.count) : "-",
                        s.count ? FormatSeconds(s.Percentile(0.5)) : "-",
                        s.count ? FormatSeconds(s.Percentile(0.99)) : "-"});
    }
    return t;
  }

 private:
  MethodSeries& SeriesFor(absl::string_view full_method, ServerRpcInfo::Type type)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = series_.find(full_method);
    if (it != series_.end()) return *it->second;
    std::string key(full_method);
    if (series_.size() >= kMaxMethods) {
      key = "other";
      it = series_.find(key);
      if (it != series_.end()) return *it->second;
    }
    auto m = std::make_unique<MethodSeries>();
    m->full_name = key;
    // "/package.Service/Method"
    absl::string_view name = key;
    if (!name.empty() && name[0] == '/') name.remove_prefix(1);
    const size_t slash = name.find('/');
    m->service = slash == absl::string_view::npos ? "" : std::string(name.substr(0, slash));
    m->method = std::string(slash == absl::string_view::npos ? name : name.substr(slash + 1));
    m->type = TypeName(type);
    return *series_.emplace(std::move(key), std::move(m)).first->second;
  }

  // Bounds and cumulative counts of a prometheus-cpp histogram as a Snapshot,
  // for its Percentile(); max is the upper bound of the highest used bucket.
  static Histogram::Snapshot ToSnapshot(const prometheus::ClientMetric::Histogram& h) {
    Histogram::Snapshot s;
    s.count = h.sample_count;
    s.sum = h.sample_sum;
    uint64_t below = 0;
    for (const auto& b : h.bucket) {
      if (std::isinf(b.upper_bound)) {
        if (b.cumulative_count > below && !s.bounds.empty()) s.max = 2 * s.bounds.back();
        continue;
      }
      s.bounds.push_back(b.upper_bound);
      s.cumulative_counts.push_back(b.cumulative_count);
      if (b.cumulative_count > below) s.max = b.upper_bound;
      below = b.cumulative_count;
    }
    s.cumulative_counts.push_back(s.count);
    return s;
  }

  prometheus::Family<prometheus::Counter>& handled_;
  prometheus::Family<prometheus::Histogram>& latency_;
  // sync::Mutex: TSan must see this lock (common/sync/mutex.h).
  mutable sync::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<MethodSeries>> series_ ABSL_GUARDED_BY(mu_);
  std::array<std::atomic<MethodSeries*>, 16> recent_{};
};

namespace {

// Metrics for every call, and its SERVER span when traced: one interceptor,
// since gRPC runs each interceptor at every hook point of every batch.
class ServerInterceptor : public grpc::experimental::Interceptor {
 public:
  ServerInterceptor(std::shared_ptr<CallMetrics> metrics, ServerRpcInfo* info)
      : metrics_(std::move(metrics)),
        series_(metrics_->Series(info->method() != nullptr ? info->method() : "", info->type())),
        start_(absl::Now()) {
    if (ServerCallTrace::Traced(*info)) trace_.emplace(info);
  }

  ~ServerInterceptor() override {
    if (!recorded_) Record(static_cast<int>(grpc::StatusCode::CANCELLED));
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (trace_.has_value()) trace_->Intercept(methods);
    if (!recorded_ &&
        methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      Record(static_cast<int>(methods->GetSendStatus().error_code()));
    }
    methods->Proceed();
  }

 private:
  void Record(int code) {
    recorded_ = true;
    metrics_->Record(*series_, code, absl::ToDoubleSeconds(absl::Now() - start_));
  }

  const std::shared_ptr<CallMetrics> metrics_;
  MethodSeries* const series_;
  const absl::Time start_;
  bool recorded_ = false;
  std::optional<ServerCallTrace> trace_;
};

class ServerInterceptorFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  ServerInterceptorFactory(std::shared_ptr<CallMetrics> metrics,
                           MetricsRegistry::Registration section)
      : metrics_(std::move(metrics)), section_(std::move(section)) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(ServerRpcInfo* info) override {
    return new ServerInterceptor(metrics_, info);
  }

 private:
  const std::shared_ptr<CallMetrics> metrics_;
  MetricsRegistry::Registration section_;
};

}  // namespace

const char* GrpcCodeName(int code) {
  static constexpr const char* kNames[kCodes] = {"OK",
                                                 "CANCELLED",
                                                 "UNKNOWN",
                                                 "INVALID_ARGUMENT",
                                                 "DEADLINE_EXCEEDED",
                                                 "NOT_FOUND",
                                                 "ALREADY_EXISTS",
                                                 "PERMISSION_DENIED",
                                                 "RESOURCE_EXHAUSTED",
                                                 "FAILED_PRECONDITION",
                                                 "ABORTED",
                                                 "OUT_OF_RANGE",
                                                 "UNIMPLEMENTED",
                                                 "INTERNAL",
                                                 "UNAVAILABLE",
                                                 "DATA_LOSS",
                                                 "UNAUTHENTICATED"};
  return code >= 0 && code < kCodes ? kNames[code] : "UNKNOWN";
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
NewServerTelemetryInterceptorFactory(MetricsRegistry* registry) {
  auto metrics = std::make_shared<CallMetrics>(registry);
  MetricsRegistry::Registration section =
      registry->AddStatusSection([m = metrics] { return m->Table(); });
  return std::make_unique<ServerInterceptorFactory>(std::move(metrics), std::move(section));
}

class ServerCallTelemetry::Method {
 public:
  Method(std::string full_name, MethodSeries* series)
      : full_name(std::move(full_name)), series(series) {}
  const std::string full_name;
  MethodSeries* const series;
  CallMetrics* metrics = nullptr;
};

ServerCallTelemetry::ServerCallTelemetry(MetricsRegistry* registry)
    : metrics_(std::make_shared<CallMetrics>(registry)),
      section_(registry->AddStatusSection([m = metrics_] { return m->Table(); })) {}

ServerCallTelemetry::~ServerCallTelemetry() = default;

const ServerCallTelemetry::Method* ServerCallTelemetry::AddMethod(absl::string_view full_method,
                                                                  ServerRpcInfo::Type type) {
  absl::MutexLock lock(&mu_);
  for (const auto& m : methods_) {
    if (m->full_name == full_method) return m.get();
  }
  auto m = std::make_unique<Method>(std::string(full_method),
                                    metrics_->Series(std::string(full_method).c_str(), type));
  m->metrics = metrics_.get();
  methods_.push_back(std::move(m));
  return methods_.back().get();
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
ServerCallTelemetry::NewInterceptorFactory() {
  return std::make_unique<ServerInterceptorFactory>(metrics_, MetricsRegistry::Registration());
}

ServerCallRecord::~ServerCallRecord() {
  if (method_ != nullptr) Record(static_cast<int>(grpc::StatusCode::CANCELLED));
}

void ServerCallRecord::Begin(const ServerCallTelemetry::Method* method,
                             const grpc::ServerContextBase* context) {
  method_ = method;
  if (method == nullptr) return;
  start_ = absl::Now();
  if (ServerCallTrace::Traced(method->full_name)) {
    trace_.emplace(method->full_name, context);
    trace_->Begin();
  }
}

void ServerCallRecord::End(const grpc::Status& status) {
  if (method_ == nullptr) return;
  if (trace_.has_value()) trace_->End(status);
  Record(static_cast<int>(status.error_code()));
}

void ServerCallRecord::Record(int code) {
  method_->metrics->Record(*method_->series, code, absl::ToDoubleSeconds(absl::Now() - start_));
  method_ = nullptr;
}

}  // namespace poolside::telemetry
