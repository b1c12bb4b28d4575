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
#include "absl/strings/str_cat.h"
#include "bench/closed_loop.h"
#include "proto/poolside/v1/cache.grpc.pb.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50052", "cache sidecar address (host:port or unix:/path)");
ABSL_FLAG(int64_t, keys, 10000, "entries stored before the run; Gets pick one at random");
ABSL_FLAG(int32_t, value_bytes, 100, "size of each value (redis-benchmark -d)");

namespace poolside::bench {
namespace {

struct GetCall {
  static constexpr auto kStart = &v1::CacheService::Stub::AsyncGet;
  int64_t keys = 1;

  void Prepare(v1::CacheGetRequest* request, std::mt19937_64& rng) const {
    std::uniform_int_distribution<int64_t> dist(0, keys - 1);
    request->set_key(absl::StrCat("key:", dist(rng)));
  }
  // Misses (every key was stored, so a miss is an eviction or an expiry).
  bool Marked(const v1::CacheGetResponse& response) const {
    return response.outcome() != v1::CacheGetResponse::HIT;
  }
};

int Main(int argc, char** argv) {
  absl::StatusOr<LoadOptions> options =
      ParseLoadOptions(argc, argv, "closed-loop load generator for poolside.v1.CacheService/Get");
  const std::string addr = absl::GetFlag(FLAGS_addr);
  GetCall call;
  call.keys = absl::GetFlag(FLAGS_keys);
  const int64_t keys = call.keys;
  const int value_bytes = absl::GetFlag(FLAGS_value_bytes);
  if (options.ok() && (keys < 1 || value_bytes < 0)) {
    options = absl::InvalidArgumentError("need --keys >= 1, --value_bytes >= 0");
  }
  if (!options.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }

  v1::CacheGetRequest probe;
  probe.set_key("key:0");
  const auto stubs = ConnectStubs<GetCall>(addr, probe, *options);
  if (!stubs.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(stubs.status().message()).c_str());
    return 2;
  }

  // Preload: every key the run asks for is stored, each fill carrying the
  // sidecar's current generation (values made now).
  v1::CacheService::Stub* preload = stubs->front().get();
  v1::CacheStats stats;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status status = preload->GetStats(&ctx, v1::CacheGetStatsRequest(), &stats);
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
    grpc::Status status = preload->Set(&ctx, set, &resp);
    if (!status.ok() || !resp.stored()) {
      std::fprintf(stderr, "error: preloading key:%lld failed: %d: %s (stored=%d reason=%d)\n",
                   static_cast<long long>(k), static_cast<int>(status.error_code()),
                   status.error_message().c_str(), resp.stored(), static_cast<int>(resp.reason()));
      return 2;
    }
  }

  const LoadResult result = RunClosedLoop(call, *stubs, v1::CacheGetRequest(), *options);
  JsonLine json("cache_loadgen");
  json.AddString("addr", addr);
  json.Add("keys", absl::StrCat(keys));
  json.Add("value_bytes", absl::StrCat(value_bytes));
  json.Add("misses", absl::StrCat(result.marked));
  AddLoadFields(*options, result, &json);
  return Emit("cache_loadgen", result, json.Done(), *options);
}

}  // namespace
}  // namespace poolside::bench

int main(int argc, char** argv) { return poolside::bench::Main(argc, argv); }
