#include "common/telemetry/trace_grpc.h"

#include <atomic>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/telemetry/trace.h"
#include "grpcpp/client_context.h"
#include "grpcpp/server_context.h"

namespace poolside::telemetry {
namespace {

using grpc::experimental::InterceptionHookPoints;

// Server spans of the calls in progress, by their ServerContext, so handlers
// find theirs (interceptors and handlers share no other state).
class ServerCallRegistry {
 public:
  static ServerCallRegistry& Get() {
    static auto* registry = new ServerCallRegistry();
    return *registry;
  }
  void Add(const grpc::ServerContextBase* call, const SpanContext& context) {
    absl::MutexLock lock(&mu_);
    calls_[call] = context;
    size_.store(calls_.size(), std::memory_order_relaxed);
  }
  void Remove(const grpc::ServerContextBase* call) {
    absl::MutexLock lock(&mu_);
    calls_.erase(call);
    size_.store(calls_.size(), std::memory_order_relaxed);
  }
  bool Find(const grpc::ServerContextBase* call, SpanContext* out) {
    // Without a tracer nothing is ever added: skip the lock. A call's own Add
    // happened before its handler runs (same thread or through gRPC's
    // synchronisation), so a relaxed load sees it.
    if (size_.load(std::memory_order_relaxed) == 0) return false;
    absl::MutexLock lock(&mu_);
    auto it = calls_.find(call);
    if (it == calls_.end()) return false;
    *out = it->second;
    return true;
  }

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<const grpc::ServerContextBase*, SpanContext> calls_ ABSL_GUARDED_BY(mu_);
  std::atomic<size_t> size_{0};  // calls_.size()
};

// "/pkg.Service/Method" -> ("pkg.Service", "Method").
std::pair<absl::string_view, absl::string_view> SplitMethod(absl::string_view full) {
  if (absl::StartsWith(full, "/")) full.remove_prefix(1);
  const size_t slash = full.find('/');
  if (slash == absl::string_view::npos) return {full, ""};
  return {full.substr(0, slash), full.substr(slash + 1)};
}

void SetRpcAttributes(Span& span, absl::string_view full_method) {
  const auto [service, method] = SplitMethod(full_method);
  span.SetAttribute("rpc.system", "grpc");
  span.SetAttribute("rpc.service", service);
  span.SetAttribute("rpc.method", method);
}

void SetRpcStatus(Span& span, const grpc::Status& status) {
  span.SetAttribute("rpc.grpc.status_code", static_cast<int64_t>(status.error_code()));
  if (!status.ok()) {
    const absl::Status s(static_cast<absl::StatusCode>(status.error_code()),
                         status.error_message());
    span.SetAttribute("error.type", absl::StatusCodeToString(s.code()));
    span.SetStatus(s);
  }
}

// The other end of a call as gRPC names it ("ipv4:10.0.0.7:50051",
// "ipv6:[::1]:50051", "unix:/run/poolside/cache.sock"), as the conventions'
// attributes: `address_key`/`port_key` (server.* on a client span,
// network.peer.* on a server span), network.transport and network.type.
void SetPeerAttributes(Span& span, absl::string_view peer, absl::string_view address_key,
                       absl::string_view port_key) {
  if (!span.recording() || peer.empty()) return;
  const size_t colon = peer.find(':');
  if (colon == absl::string_view::npos) return;
  const absl::string_view scheme = peer.substr(0, colon);
  absl::string_view rest = peer.substr(colon + 1);
  if (scheme == "unix" || scheme == "unix-abstract") {
    span.SetAttribute("network.transport", "unix");
    span.SetAttribute(address_key, rest);
    return;
  }
  if (scheme != "ipv4" && scheme != "ipv6") return;
  const size_t last = rest.rfind(':');
  if (last == absl::string_view::npos) return;
  absl::string_view host = rest.substr(0, last);
  if (absl::ConsumePrefix(&host, "[")) absl::ConsumeSuffix(&host, "]");
  int port = 0;
  span.SetAttribute("network.transport", "tcp");
  span.SetAttribute("network.type", scheme);
  span.SetAttribute(address_key, host);
  if (absl::SimpleAtoi(rest.substr(last + 1), &port)) span.SetAttribute(port_key, port);
}

absl::string_view SpanName(absl::string_view full_method) {
  if (absl::StartsWith(full_method, "/")) full_method.remove_prefix(1);
  return full_method;
}

class ServerInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit ServerInterceptor(grpc::experimental::ServerRpcInfo* info) : trace_(info) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    trace_.Intercept(methods);
    methods->Proceed();
  }

 private:
  ServerCallTrace trace_;
};

class ServerFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return ServerCallTrace::Traced(*info) ? new ServerInterceptor(info) : nullptr;
  }
};

class ClientInterceptor : public grpc::experimental::Interceptor {
 public:
  ClientInterceptor(grpc::experimental::ClientRpcInfo* info, SpanContext parent)
      : info_(info), parent_(std::move(parent)) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      std::multimap<std::string, std::string>* metadata = methods->GetSendInitialMetadata();
      auto tp = metadata->find(kTraceparentHeader);
      if (tp != metadata->end()) {
        // The caller chose the parent explicitly.
        auto ts = metadata->find(kTracestateHeader);
        std::optional<SpanContext> given =
            ParseTraceparent(tp->second, ts == metadata->end() ? "" : ts->second);
        if (given.has_value()) parent_ = *given;
        metadata->erase(kTraceparentHeader);
        metadata->erase(kTracestateHeader);
      }
      const absl::string_view method = info_->method();
      span_ = StartSpan(SpanName(method), SpanKind::kClient, parent_);
      SetRpcAttributes(span_, method);
      const SpanContext& ctx = span_.context();
      if (ctx.valid()) {
        metadata->emplace(kTraceparentHeader, FormatTraceparent(ctx));
        if (!ctx.trace_state.empty()) metadata->emplace(kTracestateHeader, ctx.trace_state);
      }
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_STATUS)) {
      if (const grpc::Status* status = methods->GetRecvStatus(); status != nullptr) {
        SetRpcStatus(span_, *status);
      }
      // The server as the call reached it (known once it was connected).
      if (span_.recording() && info_->client_context() != nullptr) {
        SetPeerAttributes(span_, info_->client_context()->peer(), "server.address", "server.port");
      }
      span_.End();
    }
    methods->Proceed();
  }

 private:
  grpc::experimental::ClientRpcInfo* const info_;
  SpanContext parent_;
  Span span_;
};

class ClientFactory : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo* info) override {
    // Runs on the thread starting the call: its current context is the parent.
    SpanContext parent = CurrentSpanContext();
    // Without a tracer the interceptor would only pass the parent's context
    // on; with no parent either it has nothing to do, and no interceptor at
    // all spares the call gRPC's interceptor machinery (a load generator's
    // every call, a service's calls outside any request).
    if (GlobalTracer() == nullptr && !parent.valid()) return nullptr;
    return new ClientInterceptor(info, std::move(parent));
  }
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
NewServerTracingInterceptorFactory() {
  return std::make_unique<ServerFactory>();
}

std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>
NewClientTracingInterceptorFactory() {
  return std::make_unique<ClientFactory>();
}

bool ServerCallTrace::Traced(const grpc::experimental::ServerRpcInfo& info) {
  return Traced(info.method());
}

bool ServerCallTrace::Traced(absl::string_view method) {
  // Without a tracer a span would record nothing and its context would be
  // the caller's, which ServerCallContext() reads from the metadata anyway:
  // no interceptor at all, so gRPC's interceptor machinery costs nothing.
  if (GlobalTracer() == nullptr) return false;
  // Health probes and reflection are not worth a trace each.
  return !absl::StartsWith(method, "/grpc.health.") &&
         !absl::StartsWith(method, "/grpc.reflection.");
}

ServerCallTrace::ServerCallTrace(grpc::experimental::ServerRpcInfo* info)
    : ServerCallTrace(info->method(), info->server_context()) {}

ServerCallTrace::~ServerCallTrace() {
  if (registered_) ServerCallRegistry::Get().Remove(context_);
  if (span_.recording())
    span_.SetAttribute("rpc.grpc.status_code", int64_t{1});  // ended unanswered
}

void ServerCallTrace::Intercept(grpc::experimental::InterceptorBatchMethods* methods) {
  if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
    Begin(methods->GetRecvInitialMetadata());
  }
  if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
    End(methods->GetSendStatus());
  }
}

void ServerCallTrace::Begin() { Begin(&context_->client_metadata()); }

void ServerCallTrace::End(const grpc::Status& status) {
  SetRpcStatus(span_, status);
  span_.End();
  if (registered_) {
    ServerCallRegistry::Get().Remove(context_);
    registered_ = false;
  }
}

void ServerCallTrace::Begin(const std::multimap<grpc::string_ref, grpc::string_ref>* metadata) {
  std::optional<SpanContext> parent;
  if (metadata != nullptr) {
    auto tp = metadata->find(kTraceparentHeader);
    if (tp != metadata->end()) {
      absl::string_view state;
      auto ts = metadata->find(kTracestateHeader);
      if (ts != metadata->end()) state = absl::string_view(ts->second.data(), ts->second.size());
      parent = ParseTraceparent(absl::string_view(tp->second.data(), tp->second.size()), state);
    }
  }
  span_ = StartSpan(SpanName(method_), SpanKind::kServer, parent.value_or(SpanContext()));
  SetRpcAttributes(span_, method_);
  if (span_.recording()) {
    SetPeerAttributes(span_, context_->peer(), "network.peer.address", "network.peer.port");
  }
  if (span_.context().valid()) {
    ServerCallRegistry::Get().Add(context_, span_.context());
    registered_ = true;
  }
}

SpanContext ServerCallContext(const grpc::ServerContextBase* context) {
  SpanContext out;
  if (ServerCallRegistry::Get().Find(context, &out)) return out;
  const auto& metadata = context->client_metadata();
  auto tp = metadata.find(kTraceparentHeader);
  if (tp == metadata.end()) return SpanContext();
  auto ts = metadata.find(kTracestateHeader);
  std::optional<SpanContext> parsed = ParseTraceparent(
      absl::string_view(tp->second.data(), tp->second.size()),
      ts == metadata.end() ? absl::string_view()
                           : absl::string_view(ts->second.data(), ts->second.size()));
  return parsed.value_or(SpanContext());
}

}  // namespace poolside::telemetry
