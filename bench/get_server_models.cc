// get_server_models: the smallest CacheService Get/Set server, twice, to
// measure what gRPC's threading model costs the sidecar's hot path. Not a
// service: a measurement aid for bench/results (the prototypes behind the
// threading record in docs/design.md, kept so the numbers can be re-run).
//
//   --model=callback  the gRPC callback API, as every poolside service is
//                     written (gRPC 1.51 serves callbacks on at least two
//                     polling threads, plus its executor);
//   --model=async     one completion queue polled by --threads threads (1: a
//                     single thread reads, handles and writes every call);
//   --model=hybrid    Get on one completion-queue thread, the other methods
//                     on the callback API (whose polling threads then share
//                     the work of reading the Gets).
//
// Both answer from the same map under one mutex (no TTL, tags, budget or
// telemetry), so the difference between them is the threading. Point
// bench/cache_loadgen at --addr (e.g. unix:/tmp/get.sock); it preloads with Set.

#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/server/queue_service.h"
#include "common/server/status.h"
#include "proto/poolside/v1/cache.grpc.pb.h"

ABSL_FLAG(std::string, addr, "unix:/tmp/poolside-get-models.sock", "listen address");
ABSL_FLAG(std::string, model, "async", "callback, async or hybrid");
ABSL_FLAG(int32_t, threads, 1, "--model=async/hybrid: threads polling the completion queue");

namespace poolside::bench {
namespace {

namespace v1 = poolside::v1;

class Map {
 public:
  absl::Status Get(const v1::CacheGetRequest& request, v1::CacheGetResponse* response) const {
    absl::MutexLock lock(&mu_);
    auto it = values_.find(request.key());
    if (it == values_.end()) {
      response->set_outcome(v1::CacheGetResponse::MISS);
      return absl::OkStatus();
    }
    response->set_outcome(v1::CacheGetResponse::HIT);
    response->set_value(it->second);
    return absl::OkStatus();
  }
  absl::Status Set(const v1::CacheSetRequest& request, v1::CacheSetResponse* response) {
    absl::MutexLock lock(&mu_);
    values_[request.key()] = request.value();
    response->set_stored(true);
    response->set_reason(v1::CacheSetResponse::STORED);
    return absl::OkStatus();
  }

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::string> values_ ABSL_GUARDED_BY(mu_);
};

grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(server::ToGrpcStatus(status));
  return reactor;
}

// Set (and, through Base, whatever else) on the callback API, on the map.
template <typename Base>
class MapService : public Base {
 public:
  explicit MapService(Map* map) : map_(map) {}
  grpc::ServerUnaryReactor* Set(grpc::CallbackServerContext* context,
                                const v1::CacheSetRequest* request,
                                v1::CacheSetResponse* response) override {
    return Answer(context, map_->Set(*request, response));
  }

 protected:
  Map* const map_;
};

class CallbackGetService final : public MapService<v1::CacheService::CallbackService> {
 public:
  using MapService::MapService;
  grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* context,
                                const v1::CacheGetRequest* request,
                                v1::CacheGetResponse* response) override {
    return Answer(context, map_->Get(*request, response));
  }
};

// Get on the async API, every other method on the callback API, in one service.
using S = v1::CacheService;
using HybridService = MapService<S::WithAsyncMethod_Get<S::WithCallbackMethod_GetMany<
    S::WithCallbackMethod_Set<S::WithCallbackMethod_Delete<S::WithCallbackMethod_Invalidate<
        S::WithCallbackMethod_GetStats<S::WithCallbackMethod_WatchInvalidations<S::Service>>>>>>>>;

// The async models' calls: common/server's queue-service calls, on a queue
// polled by this program's own --threads threads.
template <typename Service>
using AsyncGet = server::UnaryQueueCall<Map, Service, v1::CacheGetRequest, v1::CacheGetResponse,
                                        &Service::RequestGet, &Map::Get>;
using AsyncSet = server::UnaryQueueCall<Map, v1::CacheService::AsyncService, v1::CacheSetRequest,
                                        v1::CacheSetResponse,
                                        &v1::CacheService::AsyncService::RequestSet, &Map::Set>;

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage("CacheService Get/Set on the gRPC callback or async API");
  absl::ParseCommandLine(argc, argv);
  const std::string addr = absl::GetFlag(FLAGS_addr);
  const std::string model = absl::GetFlag(FLAGS_model);
  const int threads = absl::GetFlag(FLAGS_threads);
  if ((model != "callback" && model != "async" && model != "hybrid") || threads < 1) {
    std::fprintf(stderr, "error: --model must be callback, async or hybrid, --threads >= 1\n");
    return 2;
  }
  Map map;
  CallbackGetService callback_service(&map);
  v1::CacheService::AsyncService async_service;
  HybridService hybrid_service(&map);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(addr, grpc::InsecureServerCredentials());
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs;
  if (model == "callback") {
    builder.RegisterService(&callback_service);
  } else if (model == "hybrid") {
    builder.RegisterService(&hybrid_service);
    cqs.push_back(builder.AddCompletionQueue());
  } else {
    builder.RegisterService(&async_service);
    cqs.push_back(builder.AddCompletionQueue());
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    std::fprintf(stderr, "error: cannot listen on %s\n", addr.c_str());
    return 1;
  }
  std::fprintf(stderr, "serving %s (%s, %d thread(s))\n", addr.c_str(), model.c_str(),
               model == "callback" ? 0 : threads);
  if (model == "callback") {
    server->Wait();
    return 0;
  }
  grpc::ServerCompletionQueue* cq = cqs[0].get();
  if (model == "hybrid") {
    for (int i = 0; i < 64; ++i) AsyncGet<HybridService>::Post(&map, &hybrid_service, cq);
  } else {
    for (int i = 0; i < 64; ++i)
      AsyncGet<v1::CacheService::AsyncService>::Post(&map, &async_service, cq);
    for (int i = 0; i < 4; ++i) AsyncSet::Post(&map, &async_service, cq);
  }
  std::vector<std::thread> pollers;
  for (int i = 0; i < threads; ++i) {
    pollers.emplace_back(server::PollQueue, cq);
  }
  for (std::thread& t : pollers) t.join();
  return 0;
}

}  // namespace
}  // namespace poolside::bench

int main(int argc, char** argv) { return poolside::bench::Main(argc, argv); }
