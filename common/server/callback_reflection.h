#ifndef POOLSIDE_COMMON_SERVER_CALLBACK_REFLECTION_H_
#define POOLSIDE_COMMON_SERVER_CALLBACK_REFLECTION_H_

// gRPC server reflection (grpc.reflection.v1 and v1alpha) for a callback
// server (ingest's kind), answered by queue_reflection.h's ReflectionIndex,
// the same answers a queue server gives. gRPC 1.51's own reflection plugin
// serves v1alpha only.
//
//   auto reflection = std::make_shared<CallbackReflection>();
//   builder.SetOption(reflection->BuilderOption());   // before BuildAndStart
//   ...
//   reflection->EndStreams();                          // when the drain starts
//
// The services are registered through a builder plugin, which also learns the
// server's service list once it is built (as gRPC's plugin does); a stream
// that asks before that is answered with an empty list. EndStreams() cancels
// every open stream and every later one, so an idle reflection client never
// holds the drain; at most kMaxStreams are open at once, further ones end
// RESOURCE_EXHAUSTED. Thread-safe.

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "common/server/queue_reflection.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/impl/server_builder_option.h"

namespace poolside::server {

class CallbackReflection : public std::enable_shared_from_this<CallbackReflection> {
 public:
  static constexpr size_t kMaxStreams = 64;

  CallbackReflection();
  ~CallbackReflection();

  // Registers both reflection services on the builder it is set on (once).
  std::unique_ptr<grpc::ServerBuilderOption> BuilderOption();
  void EndStreams();

 private:
  template <typename Api>
  class Stream;
  template <typename Api>
  class Service;
  class Plugin;

  void SetServices(std::vector<std::string> services);
  std::shared_ptr<const ReflectionIndex> index() const;
  // False, with the status to end the stream with, when closed or full.
  bool Admit(grpc::CallbackServerContext* context, grpc::Status* refusal);
  void Remove(grpc::CallbackServerContext* context);

  mutable absl::Mutex mu_;
  std::shared_ptr<const ReflectionIndex> index_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<grpc::CallbackServerContext*> open_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace poolside::server

#endif  // POOLSIDE_COMMON_SERVER_CALLBACK_REFLECTION_H_
