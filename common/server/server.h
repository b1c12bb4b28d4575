#ifndef POOLSIDE_COMMON_SERVER_SERVER_H_
#define POOLSIDE_COMMON_SERVER_SERVER_H_

// gRPC server bootstrap shared by the three services: listen address (port 0
// picks a free port, optionally written to a file), the standard health service
// and server reflection (v1 and v1alpha, queue_reflection.h), message size limits, and graceful
// shutdown on SIGTERM/SIGINT (stop accepting, let in-flight calls finish for a bounded time, cancel
// the rest).
//
// Services use gRPC's callback API (`services`), or, for services whose
// handlers never block (database work goes to workers that answer from their
// own threads), the async API served by one thread (`queue_services`, see
// common/server/queue_service.h; such a server serves the health service,
// Check and Watch, and reflection itself).
//
//   int main() {
//     poolside::server::BlockTerminationSignals();   // first, before any thread
//     MyService service(...);
//     auto server = poolside::server::Server::Start({.listen = "0.0.0.0:50051",
//                                                    .services = {&service}});
//     (*server)->WaitForTermination();                // returns after draining
//   }
//
// Thread-safe.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/server/callback_reflection.h"
#include "common/server/queue_reflection.h"
#include "common/server/queue_service.h"
#include "common/server/queue_thread.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/support/server_interceptor.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::server {

struct ServerOptions {
  std::string listen = "0.0.0.0:0";
  // More addresses to serve on, e.g. "unix:/run/poolside/cache.sock".
  std::vector<std::string> extra_listen;
  std::string port_file;
  // Transport security of the TCP addresses (`listen` and TCP `extra_listen`);
  // "unix:" addresses are plaintext. Start() fails unless this names a
  // certificate or says plaintext explicitly (see common/server/tls.h).
  v1::TlsConfig tls;
  absl::Duration drain_timeout = absl::Seconds(10);
  // Callback-API services.
  std::vector<grpc::Service*> services;
  // Or queue services, all served by one thread polling one completion queue
  // (not both: Start() refuses the mix). Each must outlive the Server.
  std::vector<QueueService*> queue_services;
  int max_receive_message_bytes = 64 << 20;
  int max_send_message_bytes = 64 << 20;
  // Keep each stream's HTTP/2 receive window at a fixed size (no BDP-driven
  // growth), so a service that stops reading a stream for backpressure holds
  // at most about that much of the client's data per stream in gRPC's buffers.
  int fixed_stream_window_bytes = 0;  // 0: gRPC's adaptive default
  // Caps the memory gRPC itself holds for this server's connections (its
  // transport buffers, messages being received): past it, gRPC cancels
  // streams (RESOURCE_EXHAUSTED "Buffers full") rather than grow.
  int64_t grpc_memory_bytes = 0;  // 0: no cap
  // false: the health service answers NOT_SERVING (readiness) from the start
  // until MarkServingCallback()'s callback runs, e.g. once the pools are warm.
  // The "liveness" service name is SERVING as long as the server runs.
  bool serving_at_start = true;
  // Runs when Shutdown() begins, before the drain: ends calls that would
  // otherwise never finish on their own (e.g. watch streams).
  std::function<void()> before_drain;
  // Queue servers: runs after the drain, while the queue is still polled,
  // before it is shut down: waits for work that answers calls from other
  // threads, and ends the process's own calls on the queue (a client's).
  std::function<void()> before_queue_shutdown;
  // Interceptors run on every call, in this order (tracing, metrics, auth...).
  // A queue server's calls record their metrics and spans without one, and
  // spare every call gRPC's interceptor machinery: give it call_telemetry
  // instead (not both: calls would count twice).
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  // Queue servers: where every call (the health service's too) records its
  // metrics and span; must outlive the Server. Null: not recorded.
  telemetry::ServerCallTelemetry* call_telemetry = nullptr;
};

// Blocks SIGTERM and SIGINT in the calling thread and every thread it starts
// later, so WaitForTermination() can receive them synchronously.
void BlockTerminationSignals();

// Waits for SIGTERM or SIGINT (blocked by BlockTerminationSignals()) and
// returns which arrived: for a main that drains its own work before the
// server's.
int WaitForTerminationSignal();

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Start(ServerOptions options);
  ~Server();

  int port() const { return port_; }
  grpc::Server* grpc_server() { return server_.get(); }
  // A queue server's completion queue (null for a callback server): a
  // client of the same process may start its calls on it, so that one
  // thread polls everything (see before_queue_shutdown).
  grpc::ServerCompletionQueue* queue() { return cq_.get(); }

  // A callback that marks the server SERVING in its health service. Callable
  // from any thread at any time, also after Shutdown() or the server's
  // destruction (then it does nothing), so a background warm-up may hold it.
  std::function<void()> MarkServingCallback();

  // Waits for SIGTERM or SIGINT, then Shutdown(). Returns the signal number.
  int WaitForTermination();
  // Marks the server NOT_SERVING, stops accepting, waits up to drain_timeout for
  // in-flight calls, then cancels what is left (and, for queue services, stops
  // the queue thread once every call has ended). Idempotent.
  void Shutdown();

 private:
  Server() = default;
  ServerOptions options_;
  // Queue servers only: the health and reflection services, the queue and its
  // thread. Declared before server_, so they outlive it.
  std::unique_ptr<QueueHealthService> queue_health_;
  std::unique_ptr<ReflectionIndex> reflection_index_;
  std::unique_ptr<QueueReflectionService<ReflectionV1>> queue_reflection_;
  std::unique_ptr<QueueReflectionService<ReflectionV1Alpha>> queue_reflection_v1alpha_;
  // Callback servers only: reflection (shared with its services).
  std::shared_ptr<CallbackReflection> callback_reflection_;
  std::unique_ptr<grpc::ServerCompletionQueue> cq_;
  std::unique_ptr<QueueThread> queue_thread_;
  std::unique_ptr<grpc::Server> server_;
  grpc::HealthCheckServiceInterface* health_ = nullptr;
  int port_ = 0;
  bool shut_down_ = false;
  // Shared with MarkServingCallback()'s callbacks; `health` is cleared at
  // Shutdown().
  struct Readiness {
    absl::Mutex mu;
    grpc::HealthCheckServiceInterface* health ABSL_GUARDED_BY(mu) = nullptr;
  };
  std::shared_ptr<Readiness> readiness_ = std::make_shared<Readiness>();
};

}  // namespace poolside::server

#endif  // POOLSIDE_COMMON_SERVER_SERVER_H_
