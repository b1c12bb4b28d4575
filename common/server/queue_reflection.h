#ifndef POOLSIDE_COMMON_SERVER_QUEUE_REFLECTION_H_
#define POOLSIDE_COMMON_SERVER_QUEUE_REFLECTION_H_

// gRPC server reflection (grpc.reflection.v1alpha.ServerReflection) served on
// a queue server's queue (common/server/queue_service.h), so that grpcurl,
// grpc_cli and Postman list and call query and the sidecar without their
// .proto files, as they do ingest (which has gRPC's own reflection; its plugin
// is a synchronous service, which a queue server must not have).
//
// Answers from the process's generated descriptor pool: the services the
// server registered, the file defining a symbol or named by its file name, and
// extensions. A file comes with those of its dependencies not yet sent on the
// same stream, as the protocol allows. Everything runs on the queue
// thread; each stream has one operation in flight at a time.
//
// EndStreams() (Server calls it when its drain starts) cancels every open
// stream and every one that arrives later, so that an idle reflection client
// never holds the drain; at most kMaxStreams are open at once, further ones
// end RESOURCE_EXHAUSTED.

#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "common/server/queue_service.h"
#include "proto/grpc/reflection/v1alpha/reflection.grpc.pb.h"

namespace poolside::server {

class QueueReflectionService final : public QueueService {
 public:
  static constexpr size_t kMaxStreams = 64;

  // `services`: the full names of the services the server serves (this one
  // is added).
  explicit QueueReflectionService(std::vector<std::string> services);

  grpc::Service* grpc_service() override { return &async_; }
  std::string service_name() const override;
  void Begin(grpc::ServerCompletionQueue* cq, telemetry::ServerCallTelemetry* calls) override;

  // Cancels every open stream, and every one that arrives later (any thread;
  // before the queue shuts down).
  void EndStreams();

  // The answer to one request (any thread): `sent` holds the names of the
  // files already sent on the stream, and gains those this answer sends.
  grpc::reflection::v1alpha::ServerReflectionResponse Answer(
      const grpc::reflection::v1alpha::ServerReflectionRequest& request,
      absl::flat_hash_set<std::string>* sent) const;

 private:
  class Stream;

  grpc::reflection::v1alpha::ServerReflection::AsyncService async_;
  std::vector<std::string> services_;
  // Set by Begin(), before the queue thread polls and before the server can
  // call EndStreams().
  grpc::ServerCompletionQueue* cq_ = nullptr;
  const telemetry::ServerCallTelemetry::Method* method_ = nullptr;
  OpenCalls<Stream> streams_{kMaxStreams};
};

}  // namespace poolside::server

#endif  // POOLSIDE_COMMON_SERVER_QUEUE_REFLECTION_H_
