#ifndef POOLSIDE_COMMON_TELEMETRY_TRACE_GRPC_H_
#define POOLSIDE_COMMON_TELEMETRY_TRACE_GRPC_H_

// W3C trace context over gRPC metadata, and one span per RPC on each side.
//
// Server: push the factory into ServerOptions::interceptors. For every call
// (except grpc.health and reflection) it reads `traceparent`/`tracestate`,
// starts a SERVER span named "<package.Service>/<Method>" with OpenTelemetry's
// RPC conventions (rpc.system "grpc", rpc.service, rpc.method,
// rpc.grpc.status_code, network.peer.address/port, network.transport, and
// error.type, the status code's name, when it failed), and ends it when the
// status is sent. Without a tracer (tracing off) it adds nothing to a call, so gRPC
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
// context's child). A CLIENT span carries the same rpc.* attributes and the
// server it reached as server.address/server.port.
//
// Thread-safe.

#include <map>
#include <memory>

#include "absl/strings/string_view.h"
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
//
// Calls that no interceptor sees (a queue server's, metrics_interceptor.h's
// ServerCallRecord) use it directly: construct it with the method's full name
// and the call's context when Traced(method), Begin() once the call has
// arrived, and End() just before its status is sent.
class ServerCallTrace {
 public:
  // A tracer is installed (see the header comment) and the method is not
  // grpc.health or reflection.
  static bool Traced(const grpc::experimental::ServerRpcInfo& info);
  static bool Traced(absl::string_view full_method);

  explicit ServerCallTrace(grpc::experimental::ServerRpcInfo* info);
  // `full_method` ("/pkg.Service/Method") and `context` outlive this.
  ServerCallTrace(absl::string_view full_method, const grpc::ServerContextBase* context)
      : method_(full_method), context_(context) {}
  ~ServerCallTrace();  // a call ending without a status is recorded as CANCELLED
  ServerCallTrace(const ServerCallTrace&) = delete;
  ServerCallTrace& operator=(const ServerCallTrace&) = delete;

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods);

  // The call arrived: starts its SERVER span under the caller's traceparent.
  void Begin();
  // Its status is about to be sent: ends the span.
  void End(const grpc::Status& status);

 private:
  void Begin(const std::multimap<grpc::string_ref, grpc::string_ref>* metadata);

  const absl::string_view method_;
  const grpc::ServerContextBase* const context_;
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
