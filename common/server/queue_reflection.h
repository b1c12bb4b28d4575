#ifndef POOLSIDE_COMMON_SERVER_QUEUE_REFLECTION_H_
#define POOLSIDE_COMMON_SERVER_QUEUE_REFLECTION_H_

// gRPC server reflection, so that grpcurl, grpc_cli, Postman and reflection
// libraries list and call the services without their .proto files. Both
// published versions of the protocol are served, grpc.reflection.v1 and
// grpc.reflection.v1alpha: their messages are the same, and clients speak one
// or the other.
//
// ReflectionIndex answers requests from the process's generated descriptor
// pool: the services the server registered, the file defining a symbol or
// named by its file name, and extensions. A file comes with those of its
// dependencies not yet sent on the same stream, as the protocol allows. It is
// the one implementation: QueueReflectionService serves it on a queue
// server's queue (query, the sidecar; common/server/queue_service.h), and
// callback_reflection.h on a callback server (ingest), for both versions.
//
// QueueReflectionService runs everything on the queue thread; each stream has
// one read or write in flight at a time. EndStreams() (Server calls it when
// its drain starts) ends every open stream CANCELLED ("the server is shutting
// down"; after the answer being written, if any), as a status the stream
// sends, which reaches the client however late the queue thread gets to it,
// and every stream that arrives later UNAVAILABLE, so that an idle reflection
// client never holds the drain; at most kMaxStreams are open at once, further
// ones end RESOURCE_EXHAUSTED.

#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "common/server/queue_service.h"
#include "proto/grpc/reflection/v1/reflection.grpc.pb.h"
#include "proto/grpc/reflection/v1alpha/reflection.grpc.pb.h"

namespace poolside::server {

// The two versions of the protocol, as template arguments.
struct ReflectionV1 {
  using Service = grpc::reflection::v1::ServerReflection;
  using Request = grpc::reflection::v1::ServerReflectionRequest;
  using Response = grpc::reflection::v1::ServerReflectionResponse;
};
struct ReflectionV1Alpha {
  using Service = grpc::reflection::v1alpha::ServerReflection;
  using Request = grpc::reflection::v1alpha::ServerReflectionRequest;
  using Response = grpc::reflection::v1alpha::ServerReflectionResponse;
};

// What a reflection request is answered with. Immutable; thread-safe.
class ReflectionIndex {
 public:
  // Bounds what a request may name (a symbol or file name is far shorter).
  static constexpr size_t kMaxNameBytes = 1024;

  // `services`: the full names of the services the server serves; both
  // reflection services are added.
  explicit ReflectionIndex(std::vector<std::string> services);

  // The answer to one request: `sent` holds the names of the files already
  // sent on the stream, and gains those this answer sends.
  template <typename Api>
  typename Api::Response Answer(const typename Api::Request& request,
                                absl::flat_hash_set<std::string>* sent) const;

  const std::vector<std::string>& services() const { return services_; }

 private:
  std::vector<std::string> services_;
};

template <typename Api>
class QueueReflectionService final : public QueueService {
 public:
  static constexpr size_t kMaxStreams = 64;

  // `index` outlives this.
  explicit QueueReflectionService(const ReflectionIndex* index) : index_(index) {}

  grpc::Service* grpc_service() override { return &async_; }
  std::string service_name() const override { return Api::Service::service_full_name(); }
  void Begin(grpc::ServerCompletionQueue* cq, telemetry::ServerCallTelemetry* calls) override;

  // Ends every open stream, and every one that arrives later (any thread;
  // before the queue shuts down).
  void EndStreams();

 private:
  class Stream;

  typename Api::Service::AsyncService async_;
  const ReflectionIndex* const index_;
  // Set by Begin(), before the queue thread polls and before the server can
  // call EndStreams().
  grpc::ServerCompletionQueue* cq_ = nullptr;
  const telemetry::ServerCallTelemetry::Method* method_ = nullptr;
  OpenCalls<Stream> streams_{kMaxStreams};
};

extern template class QueueReflectionService<ReflectionV1>;
extern template class QueueReflectionService<ReflectionV1Alpha>;

}  // namespace poolside::server

#endif  // POOLSIDE_COMMON_SERVER_QUEUE_REFLECTION_H_
