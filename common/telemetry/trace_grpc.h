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

#include <memory>

#include "common/telemetry/trace_context.h"
#include "grpcpp/support/client_interceptor.h"
#include "grpcpp/support/server_interceptor.h"

namespace grpc {
class ServerContextBase;
}

namespace poolside::telemetry {

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
NewServerTracingInterceptorFactory();

std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>
NewClientTracingInterceptorFactory();

// The SERVER span's context of the call `context` belongs to; without the
// interceptor, the caller's own traceparent (or an invalid context). Call it
// from the handler (before the status is sent).
SpanContext ServerCallContext(const grpc::ServerContextBase* context);

}  // namespace poolside::telemetry

#endif  // POOLSIDE_COMMON_TELEMETRY_TRACE_GRPC_H_
