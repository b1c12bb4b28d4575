#ifndef POOLSIDE_COMMON_TELEMETRY_METRICS_INTERCEPTOR_H_
#define POOLSIDE_COMMON_TELEMETRY_METRICS_INTERCEPTOR_H_

// The gRPC server interceptor every service installs: it counts calls and
// their latency by method and status code,
//   poolside_grpc_server_handled_total{grpc_service, grpc_method, grpc_type, grpc_code}
//   poolside_grpc_server_handling_seconds{grpc_service, grpc_method, grpc_type, grpc_code}
// (latency from the call's start to its status being sent), plus a "gRPC calls"
// section on the status page; and, when a tracer is installed, it gives each
// call its SERVER span (trace_grpc.h's ServerCallTrace; don't install the
// tracing factory as well). One interceptor rather than two, because gRPC runs
// every interceptor at every hook point of every batch. A call that ends
// without sending a status (the client went away first) counts as CANCELLED.
//
//   options.interceptors.push_back(NewServerTelemetryInterceptorFactory(&metrics));
//
// (ServiceMetrics::NewServerInterceptorFactory() does this for a service.)
// At most 200 distinct method names are tracked; calls to further ones (e.g.
// unknown methods probed by a client) are counted under grpc_method="other".
//
// Thread-safe. `registry` must outlive the server the factory is installed in.

#include <memory>

#include "common/telemetry/metrics.h"
#include "grpcpp/support/server_interceptor.h"

namespace poolside::telemetry {

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
NewServerTelemetryInterceptorFactory(MetricsRegistry* registry);

// "UNAVAILABLE" for grpc::StatusCode::UNAVAILABLE ("UNKNOWN" for codes out of range).
const char* GrpcCodeName(int code);

}  // namespace poolside::telemetry

#endif  // POOLSIDE_COMMON_TELEMETRY_METRICS_INTERCEPTOR_H_
