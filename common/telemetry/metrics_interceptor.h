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
// (ServiceMetrics::NewServerInterceptorFactory() does this for a service; a
// queue server's calls record themselves instead, see ServerCallTelemetry.)
// At most 200 distinct method names are tracked; calls to further ones (e.g.
// unknown methods probed by a client) are counted under grpc_method="other".
//
// Thread-safe. `registry` must outlive the server the factory is installed in.

#include <memory>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/telemetry/metrics.h"
#include "common/telemetry/trace_grpc.h"
#include "grpcpp/support/server_interceptor.h"

namespace poolside::telemetry {

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
NewServerTelemetryInterceptorFactory(MetricsRegistry* registry);

class CallMetrics;
struct MethodSeries;

// The same series, status section and spans for calls that no interceptor
// sees: a queue server's (common/server/queue_service.h), whose calls record
// themselves. With any interceptor installed, gRPC runs its machinery at every
// hook point of every batch and sends each arriving async call through the
// completion queue a second time; a profile of cached reads through query put
// ~1.2% of the server's CPU in that code alone. A server installs either the
// interceptor or this, not both (its calls would count twice).
//
//   ServerCallTelemetry calls(&registry);
//   const ServerCallTelemetry::Method* get =
//       calls.AddMethod("/poolside.v1.CacheService/Get", ServerRpcInfo::Type::UNARY);
//   ... for each call:
//   ServerCallRecord record;          // a member of the call
//   record.Begin(get, &context);      // when it arrives
//   record.End(status);               // just before its Finish
//
// Thread-safe; `registry` outlives this, and this every Method it returned.
class ServerCallTelemetry {
 public:
  class Method;

  explicit ServerCallTelemetry(MetricsRegistry* registry);
  ~ServerCallTelemetry();
  ServerCallTelemetry(const ServerCallTelemetry&) = delete;
  ServerCallTelemetry& operator=(const ServerCallTelemetry&) = delete;

  // The handle of "/package.Service/Method" (one per name; the same handle
  // for a name added twice).
  const Method* AddMethod(absl::string_view full_method,
                          grpc::experimental::ServerRpcInfo::Type type);

  // The interceptor, counting into this object's series: for a server with
  // callback or synchronous services.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewInterceptorFactory();

 private:
  std::shared_ptr<CallMetrics> metrics_;
  MetricsRegistry::Registration section_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<Method>> methods_ ABSL_GUARDED_BY(mu_);
};

// One call's metrics and SERVER span, without an interceptor. Begin() when the
// call has arrived (with a null method it records nothing), End() once, just
// before its status is sent, from any thread. A call destroyed after Begin()
// without End() (its caller went away first) counts as CANCELLED.
class ServerCallRecord {
 public:
  ServerCallRecord() = default;
  ~ServerCallRecord();
  ServerCallRecord(const ServerCallRecord&) = delete;
  ServerCallRecord& operator=(const ServerCallRecord&) = delete;

  // `context` outlives this.
  void Begin(const ServerCallTelemetry::Method* method, const grpc::ServerContextBase* context);
  void End(const grpc::Status& status);

 private:
  void Record(int code);

  const ServerCallTelemetry::Method* method_ = nullptr;
  absl::Time start_;
  std::optional<ServerCallTrace> trace_;
};

// "UNAVAILABLE" for grpc::StatusCode::UNAVAILABLE ("UNKNOWN" for codes out of range).
const char* GrpcCodeName(int code);

}  // namespace poolside::telemetry

#endif  // POOLSIDE_COMMON_TELEMETRY_METRICS_INTERCEPTOR_H_
