#ifndef POOLSIDE_COMMON_TELEMETRY_TRACE_GRPC_H_
#define POOLSIDE_COMMON_TELEMETRY_TRACE_GRPC_H_

// W3C trace context over gRPC metadata, and one span per RPC on each side.
//
// Server: push the factory into ServerOptions::interceptors. For every call
// (except grpc.health and reflection) it reads `traceparent`/`tracestate`,
// starts a SERVER span named "<package.Service>/<Method>" with rpc.system,
// rpc.service, rpc.method and rpc.grpc.status_code, and ends it when the status
// is sent. Without a tracer (tracing off) it adds nothing to a call, so gRPC
// runs no interceptor code for it on that account; the caller's context still
// passes through. A handler gets that span's context with ServerCallContext() and
// makes it current for the code it runs synchronously; work handed to other
// threads carries the context explicitly:
//
//   grpc::ServerUnaryReactor* Execute(grpc::CallbackServerContext* context, ...) {
//     telemetry::ScopedSpanContext trace(telemetry::ServerCallContext(context));
//     engine_->Execute(...);   // captures CurrentSpanContext() into its work
//
// Client: add the client factory to a channel (common/server/channel.h does
// for every poolside channel). A call started while a context is current
// (ScopedSpanContext on the calling thread) gets a CLIENT span under it, and
// the callee receives that span as its parent in `traceparent`. A call whose
// ClientContext already carries a `traceparent` keeps it (and its span is that
// context's child).
//
// Thread-safe.

#include <map>
#include <memory>

#include "common/telemetry/trace.h"
#include "common/telemetry/trace_context.h"
#include "grpcpp/support/client_interceptor.h"
#include "grpcpp/support/server_interceptor.h"

namespace grpc {
class ServerContextBase;
}

namespace poolside::telemetry {

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
NewServerTracingInterceptorFactory();

// What the server factory's interceptor does for one call, for an interceptor
// that does more than tracing: the services install one interceptor per call
// (metrics_interceptor.h) that counts the call and holds one of these, since
// gRPC runs every interceptor at every hook point of every batch. Create it in
// CreateServerInterceptor() when Traced(info); pass each Intercept() through
// it before Proceed(). Install either this or the factory above, not both.
class ServerCallTrace {
 public:
  // A tracer is installed (see the header comment) and the method is not
  // grpc.health or reflection.
  static bool Traced(const grpc::experimental::ServerRpcInfo& info);

  explicit ServerCallTrace(grpc::experimental::ServerRpcInfo* info) : info_(info) {}
  ~ServerCallTrace();  // a call ending without a status is recorded as CANCELLED
  ServerCallTrace(const ServerCallTrace&) = delete;
  ServerCallTrace& operator=(const ServerCallTrace&) = delete;

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods);

 private:
  void Begin(std::multimap<grpc::string_ref, grpc::string_ref>* metadata);

  grpc::experimental::ServerRpcInfo* const info_;
  Span span_;
  bool registered_ = false;
};

std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>
NewClientTracingInterceptorFactory();

// The SERVER span's context of the call `context` belongs to; without the
// interceptor, the caller's own traceparent (or an invalid context). Call it
// from the handler (before the status is sent).
SpanContext ServerCallContext(const grpc::ServerContextBase* context);

}  // namespace poolside::telemetry

#endif  // POOLSIDE_COMMON_TELEMETRY_TRACE_GRPC_H_
