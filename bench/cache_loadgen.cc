// cache_loadgen: closed-loop load generator for poolside.v1.CacheService/Get,
// the counterpart of `redis-benchmark -t get` in bench/run.sh.
//
// The same closed loop as bench/loadgen.cc (bench/closed_loop.h): `--callers`
// calls always outstanding, spread over `--channels` channels and driven by
// `--threads` threads with one completion queue each. Before the run it stores
// `--keys` entries of `--value_bytes` bytes ("key:<n>"), so every Get is a hit;
// each Get asks for a random one. After `--warmup` seconds, completions are
// counted for `--duration` seconds; the result is one line of JSON (ops/s,
// latency percentiles in microseconds, errors, hits and misses).
//
// `--addr` is host:port or unix:/path (the sidecar's socket).
//
// Exit status: 0 on success (see "errors"), 2 if preloading fails or the
// arguments are bad.

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
#include "proto/poolside/v1/cache.grpc.pb.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50052", "cache sidecar address (host:port or unix:/path)");
ABSL_FLAG(int64_t, keys, 10000, "entries stored before the run; Gets pick one at random");
ABSL_FLAG(int32_t, value_bytes, 100, "size of each value (redis-benchmark -d)");
ABSL_FLAG(std::string, json_out, "", "also write the JSON result to this file");
ABSL_FLAG(std::string, label, "", "free-form label copied into the JSON");

namespace poolside::bench {
namespace {

namespace v1 = ::poolside::v1;

struct GetCall {
  using Stub = v1::CacheService::Stub;
  using Request = v1::CacheGetRequest;
  using Response = v1::CacheGetResponse;
  int64_t keys = 1;

  void Prepare(Request* request, std::mt19937_64& rng) const {
    std::uniform_int_distribution<int64_t> dist(0, keys - 1);
    request->set_key(absl::StrCat("key:", dist(rng)));
  }
  std::unique_ptr<grpc::ClientAsyncResponseReader<Response>> Start(
      Stub* stub, grpc::ClientContext* context, const Request& request,
      grpc::CompletionQueue* cq) const {
    return stub->AsyncGet(context, request, cq);
  }
  // Misses (every key was stored, so a miss is an eviction or an expiry).
  bool Marked(const Response& response) const {
    return response.outcome() != v1::CacheGetResponse::HIT;
  }
};

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "closed-loop load generator for poolside.v1.CacheService/Get (the loop's own flags "
      "--callers, --duration, --warmup, --channels, --threads, --call_timeout_ms: see --helpfull, "
      "bench/closed_loop.h)");
  absl::ParseCommandLine(argc, argv);
  const std::string addr = absl::GetFlag(FLAGS_addr);
  LoadOptions options = LoadOptionsFromFlags();
  GetCall call;
  call.keys = absl::GetFlag(FLAGS_keys);
  const int64_t keys = call.keys;
  const int value_bytes = absl::GetFlag(FLAGS_value_bytes);
  if (options.callers < 1 || options.duration <= 0 || options.warmup < 0 || keys < 1 ||
      value_bytes < 0) {
    std::fprintf(stderr,
                 "error: need --callers >= 1, --duration > 0, "
                 "--warmup >= 0, --keys >= 1, --value_bytes >= 0\n");
    return 2;
  }
  options.Resolve();

  std::vector<std::shared_ptr<grpc::Channel>> chans;
  std::vector<std::unique_ptr<v1::CacheService::Stub>> stubs;
  std::vector<v1::CacheService::Stub*> stub_ptrs;
  for (int i = 0; i < options.channels; ++i) {
    chans.push_back(NewChannel(addr, i));
    stubs.push_back(v1::CacheService::NewStub(chans.back()));
    stub_ptrs.push_back(stubs.back().get());
  }

  // Preload: every key the run asks for is stored (and connects channel 0),
  // each fill carrying the sidecar's current generation (values made now).
  v1::CacheStats stats;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status status = stubs[0]->GetStats(&ctx, v1::CacheGetStatsRequest(), &stats);
    if (!status.ok()) {
      std::fprintf(stderr, "error: GetStats failed: %d: %s\n",
                   static_cast<int>(status.error_code()), status.error_message().c_str());
      return 2;
    }
  }
  const std::string value(value_bytes, 'x');
  for (int64_t k = 0; k < keys; ++k) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::CacheSetRequest set;
    set.set_key(absl::StrCat("key:", k));
    set.set_value(value);
    set.set_ttl_ms(3600000);
    set.set_read_generation(stats.generation());
    v1::CacheSetResponse resp;
    grpc::Status status = stubs[0]->Set(&ctx, set, &resp);
    if (!status.ok() || !resp.stored()) {
      std::fprintf(stderr, "error: preloading key:%lld failed: %d: %s (stored=%d reason=%d)\n",
                   static_cast<long long>(k), static_cast<int>(status.error_code()),
                   status.error_message().c_str(), resp.stored(), static_cast<int>(resp.reason()));
      return 2;
    }
  }

  // Probe: connects every channel and fails fast on a bad statement or address.
  for (auto& stub : stubs) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::CacheGetResponse resp;
    v1::CacheGetRequest probe;
    probe.set_key("key:0");
    grpc::Status status = stub->Get(&ctx, probe, &resp);
    if (!status.ok()) {
      std::fprintf(stderr, "error: probe call failed: %d: %s\n",
                   static_cast<int>(status.error_code()), status.error_message().c_str());
      return 2;
    }
  }

  const LoadResult result = RunClosedLoop(call, stub_ptrs, v1::CacheGetRequest(), options);
  JsonLine json("cache_loadgen");
  if (!absl::GetFlag(FLAGS_label).empty()) json.AddString("label", absl::GetFlag(FLAGS_label));
  json.AddString("addr", addr);
  json.Add("keys", absl::StrCat(keys));
  json.Add("value_bytes", absl::StrCat(value_bytes));
  json.Add("misses", absl::StrCat(result.marked));
  AddLoadFields(options, result, &json);
  return Emit("cache_loadgen", result, json.Done(), absl::GetFlag(FLAGS_json_out));
}

}  // namespace
}  // namespace poolside::bench

int main(int argc, char** argv) { return poolside::bench::Main(argc, argv); }
