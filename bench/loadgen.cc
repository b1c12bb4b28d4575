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
#include "absl/strings/str_cat.h"
#include "bench/closed_loop.h"
#include "proto/poolside/v1/query.grpc.pb.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50051", "query service address (host:port or unix:/path)");
ABSL_FLAG(std::string, sql, "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
          "statement to execute");
ABSL_FLAG(int64_t, keys, 1000000, "$1 is a random int64 in [1, keys]; 0 sends no parameter");
ABSL_FLAG(std::string, db, "", "database name (empty: the service's default)");
ABSL_FLAG(int32_t, cache_ttl_ms, 0,
          "send a cache policy with this ttl (0: no policy, every call runs on "
          "the database); the JSON then counts calls not served as HIT");
ABSL_FLAG(bool, primary, false,
          "set ExecuteRequest.primary: a service with replicas runs every call on the primary");

namespace poolside::bench {
namespace {

struct ExecuteCall {
  static constexpr auto kStart = &v1::QueryService::Stub::AsyncExecute;
  int64_t keys = 0;

  void Prepare(v1::ExecuteRequest* request, std::mt19937_64& rng) const {
    if (keys <= 0) return;
    std::uniform_int_distribution<int64_t> dist(1, keys);
    request->mutable_params(0)->set_int64_value(dist(rng));
  }
  bool cached = false;
  // With a cache policy, a call not answered from the cache.
  bool Marked(const v1::ExecuteResponse& response) const {
    return cached && response.cache() != v1::HIT;
  }
};

int Main(int argc, char** argv) {
  absl::StatusOr<LoadOptions> options = ParseLoadOptions(
      argc, argv, "closed-loop load generator for poolside.v1.QueryService/Execute");
  const std::string addr = absl::GetFlag(FLAGS_addr);
  ExecuteCall call;
  call.keys = absl::GetFlag(FLAGS_keys);
  if (options.ok() && call.keys < 0) options = absl::InvalidArgumentError("need --keys >= 0");
  if (!options.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }

  v1::ExecuteRequest request;
  request.set_database(absl::GetFlag(FLAGS_db));
  request.set_sql(absl::GetFlag(FLAGS_sql));
  request.set_primary(absl::GetFlag(FLAGS_primary));
  if (call.keys > 0) request.add_params()->set_int64_value(1);
  if (absl::GetFlag(FLAGS_cache_ttl_ms) > 0) {
    call.cached = true;
    request.mutable_cache()->set_ttl_ms(absl::GetFlag(FLAGS_cache_ttl_ms));
  }

  const auto stubs = ConnectStubs<ExecuteCall>(addr, request, *options);
  if (!stubs.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(stubs.status().message()).c_str());
    return 2;
  }

  const LoadResult result = RunClosedLoop(call, *stubs, request, *options);
  JsonLine json("loadgen");
  json.AddString("addr", addr);
  AddLoadFields(*options, result, &json);
  if (call.cached) json.Add("not_hits", absl::StrCat(result.marked));
  return Emit("loadgen", result, json.Done(), *options);
}

}  // namespace
}  // namespace poolside::bench

int main(int argc, char** argv) { return poolside::bench::Main(argc, argv); }
