// execute_models: QueryService.Execute answered from an in-process map, like a
// near-cache hit in query_server, on the gRPC callback API or on one
// completion-queue thread. A measurement aid for bench/results: what the
// threading model costs a cached read through query (bench/execute_models.sh,
// bench/results/execute-threading-models-*.md).
//
//   --model=callback  the gRPC callback API (query_server's until 2026-12-05);
//   --model=async     one completion queue polled by one thread.
//
// Each answer is built like a near-cache hit: the cached ResultSet (one int4
// column, one row) copied into the response, outcome HIT. Point bench/loadgen
// at --addr with --cache_ttl_ms set.

#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/server/queue_service.h"
#include "common/server/status.h"
#include "proto/poolside/v1/query.grpc.pb.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50071", "listen address");
ABSL_FLAG(std::string, model, "async", "callback or async");
ABSL_FLAG(int32_t, keys, 1000, "results for $1 in [1, keys]");

namespace poolside::bench {
namespace {

namespace v1 = poolside::v1;

class Results {
 public:
  explicit Results(int keys) {
    for (int k = 1; k <= keys; ++k) {
      v1::ResultSet& r = results_[k];
      v1::Column* c = r.add_columns();
      c->set_name("abalance");
      c->set_type_oid(23);
      c->set_type_name("int4");
      r.add_rows()->add_values()->set_int64_value(k * 7);
      r.set_rows_affected(1);
      r.set_command_tag("SELECT 1");
    }
  }
  absl::Status Execute(const v1::ExecuteRequest& request, v1::ExecuteResponse* response) const {
    if (request.params_size() != 1) return absl::InvalidArgumentError("one parameter");
    absl::MutexLock lock(&mu_);
    auto it = results_.find(request.params(0).int64_value());
    if (it == results_.end()) return absl::NotFoundError("no such key");
    *response->mutable_result() = it->second;
    response->set_cache(v1::HIT);
    return absl::OkStatus();
  }

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<int64_t, v1::ResultSet> results_;
};

class CallbackService final : public v1::QueryService::CallbackService {
 public:
  explicit CallbackService(const Results* results) : results_(results) {}
  grpc::ServerUnaryReactor* Execute(grpc::CallbackServerContext* context,
                                    const v1::ExecuteRequest* request,
                                    v1::ExecuteResponse* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(server::ToGrpcStatus(results_->Execute(*request, response)));
    return reactor;
  }

 private:
  const Results* const results_;
};

using AsyncExecute =
    server::UnaryQueueCall<const Results, v1::QueryService::AsyncService, v1::ExecuteRequest,
                           v1::ExecuteResponse, &v1::QueryService::AsyncService::RequestExecute,
                           &Results::Execute>;

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage("QueryService Execute hits on the gRPC callback or async API");
  absl::ParseCommandLine(argc, argv);
  const std::string model = absl::GetFlag(FLAGS_model);
  if (model != "callback" && model != "async") {
    std::fprintf(stderr, "error: --model must be callback or async\n");
    return 2;
  }
  const Results results(absl::GetFlag(FLAGS_keys));
  CallbackService callback_service(&results);
  v1::QueryService::AsyncService async_service;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::GetFlag(FLAGS_addr), grpc::InsecureServerCredentials());
  std::unique_ptr<grpc::ServerCompletionQueue> cq;
  if (model == "callback") {
    builder.RegisterService(&callback_service);
  } else {
    builder.RegisterService(&async_service);
    cq = builder.AddCompletionQueue();
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    std::fprintf(stderr, "error: cannot listen on %s\n", absl::GetFlag(FLAGS_addr).c_str());
    return 1;
  }
  std::fprintf(stderr, "serving %s (%s)\n", absl::GetFlag(FLAGS_addr).c_str(), model.c_str());
  if (model == "callback") {
    server->Wait();
    return 0;
  }
  for (int i = 0; i < 64; ++i) AsyncExecute::Post(&results, &async_service, cq.get());
  server::PollQueue(cq.get());
  return 0;
}

}  // namespace
}  // namespace poolside::bench

int main(int argc, char** argv) { return poolside::bench::Main(argc, argv); }
