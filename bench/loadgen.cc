// loadgen: closed-loop load generator for poolside.v1.QueryService/Execute
// (the loop itself: bench/closed_loop.h). Each call sends a random key in
// [1, keys] as $1.
//
// After `--warmup` seconds, completions are counted for `--duration` seconds;
// the result (ops/s, latency percentiles in microseconds, errors) is printed
// as one line of JSON and optionally written to `--json_out`.
//
// Exit status: 0 on success (even with some failed calls; see "errors"), 2 if
// the probe call before the run fails or the arguments are bad.

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "bench/closed_loop.h"
#include "proto/poolside/v1/query.grpc.pb.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50051", "query service address (host:port or unix:/path)");
ABSL_FLAG(std::string, sql, "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
          "statement to execute");
ABSL_FLAG(int64_t, keys, 1000000, "$1 is a random int64 in [1, keys]; 0 sends no parameter");
ABSL_FLAG(std::string, db, "", "database name (empty: the service's default)");
ABSL_FLAG(std::string, json_out, "", "also write the JSON result to this file");
ABSL_FLAG(std::string, label, "", "free-form label copied into the JSON");
ABSL_FLAG(int32_t, cache_ttl_ms, 0,
          "send a cache policy with this ttl (0: no policy, every call runs on "
          "the database); the JSON then counts calls not served as HIT");

namespace poolside::bench {
namespace {

namespace v1 = ::poolside::v1;

struct ExecuteCall {
  using Stub = v1::QueryService::Stub;
  using Request = v1::ExecuteRequest;
  using Response = v1::ExecuteResponse;
  int64_t keys = 0;

  void Prepare(Request* request, std::mt19937_64& rng) const {
    if (keys <= 0) return;
    std::uniform_int_distribution<int64_t> dist(1, keys);
    request->mutable_params(0)->set_int64_value(dist(rng));
  }
  std::unique_ptr<grpc::ClientAsyncResponseReader<Response>> Start(
      Stub* stub, grpc::ClientContext* context, const Request& request,
      grpc::CompletionQueue* cq) const {
    return stub->AsyncExecute(context, request, cq);
  }
  bool cached = false;
  // With a cache policy, a call not answered from the cache.
  bool Marked(const Response& response) const { return cached && response.cache() != v1::HIT; }
};

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "closed-loop load generator for poolside.v1.QueryService/Execute (the loop's own flags "
      "--callers, --duration, --warmup, --channels, --threads, --call_timeout_ms: see --helpfull, "
      "bench/closed_loop.h)");
  absl::ParseCommandLine(argc, argv);
  const std::string addr = absl::GetFlag(FLAGS_addr);
  LoadOptions options = LoadOptionsFromFlags();
  ExecuteCall call;
  call.keys = absl::GetFlag(FLAGS_keys);
  if (options.callers < 1 || options.duration <= 0 || options.warmup < 0 || call.keys < 0) {
    std::fprintf(stderr,
                 "error: need --callers >= 1, --duration > 0, "
                 "--warmup >= 0, --keys >= 0\n");
    return 2;
  }
  options.Resolve();

  v1::ExecuteRequest request;
  request.set_database(absl::GetFlag(FLAGS_db));
  request.set_sql(absl::GetFlag(FLAGS_sql));
  if (call.keys > 0) request.add_params()->set_int64_value(1);
  if (absl::GetFlag(FLAGS_cache_ttl_ms) > 0) {
    call.cached = true;
    request.mutable_cache()->set_ttl_ms(absl::GetFlag(FLAGS_cache_ttl_ms));
  }

  std::vector<std::shared_ptr<grpc::Channel>> chans;
  std::vector<std::unique_ptr<v1::QueryService::Stub>> stubs;
  std::vector<v1::QueryService::Stub*> stub_ptrs;
  for (int i = 0; i < options.channels; ++i) {
    chans.push_back(NewChannel(addr, i));
    stubs.push_back(v1::QueryService::NewStub(chans.back()));
    stub_ptrs.push_back(stubs.back().get());
  }

  // Probe: connects every channel and fails fast on a bad statement or address.
  for (auto& stub : stubs) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ExecuteResponse resp;
    grpc::Status status = stub->Execute(&ctx, request, &resp);
    if (!status.ok()) {
      std::fprintf(stderr, "error: probe call failed: %d: %s\n",
                   static_cast<int>(status.error_code()), status.error_message().c_str());
      return 2;
    }
  }

  const LoadResult result = RunClosedLoop(call, stub_ptrs, request, options);
  JsonLine json("loadgen");
  if (!absl::GetFlag(FLAGS_label).empty()) json.AddString("label", absl::GetFlag(FLAGS_label));
  json.AddString("addr", addr);
  AddLoadFields(options, result, &json);
  if (call.cached) json.Add("not_hits", absl::StrCat(result.marked));
  return Emit("loadgen", result, json.Done(), absl::GetFlag(FLAGS_json_out));
}

}  // namespace
}  // namespace poolside::bench

int main(int argc, char** argv) { return poolside::bench::Main(argc, argv); }
