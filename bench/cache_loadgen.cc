// cache_loadgen: closed-loop load generator for poolside.v1.CacheService/Get,
// the counterpart of `redis-benchmark -t get` in bench/run.sh.
//
// Same design as bench/loadgen.cc (whose structure this follows): `--callers`
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

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/telemetry/log.h"
#include "proto/poolside/v1/cache.grpc.pb.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50052",
          "cache sidecar address (host:port or unix:/path)");
ABSL_FLAG(int32_t, callers, 32, "concurrent outstanding calls");
ABSL_FLAG(double, duration, 10, "measured seconds");
ABSL_FLAG(double, warmup, 2, "seconds of load before measuring");
ABSL_FLAG(int64_t, keys, 10000, "entries stored before the run; Gets pick one at random");
ABSL_FLAG(int32_t, value_bytes, 100, "size of each value (redis-benchmark -d)");
ABSL_FLAG(std::string, json_out, "", "also write the JSON result to this file");
ABSL_FLAG(int32_t, channels, 0,
          "gRPC channels (TCP connections); 0: one per 8 callers");
ABSL_FLAG(int32_t, threads, 0,
          "client threads, each with its own completion queue; 0: min(cores, "
          "callers)");
ABSL_FLAG(int32_t, call_timeout_ms, 5000, "deadline of each call");
ABSL_FLAG(std::string, label, "", "free-form label copied into the JSON");

namespace poolside::bench {
namespace {

namespace v1 = ::poolside::v1;
using Clock = std::chrono::steady_clock;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             Clock::now().time_since_epoch())
      .count();
}

double CpuSeconds() {
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

struct Window {
  int64_t measure_start_ns;
  int64_t measure_end_ns;
};

// Per-thread results; merged after the threads have joined.
struct ThreadResult {
  std::vector<uint32_t> latencies_us;
  uint64_t errors = 0;
  uint64_t misses = 0;
  std::map<int, uint64_t> error_codes;
  std::map<int, std::string> first_error;
};

// One outstanding call, reused for the next call when it completes.
struct Slot {
  v1::CacheService::Stub* stub = nullptr;
  v1::CacheGetRequest request;
  v1::CacheGetResponse response;
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<grpc::ClientAsyncResponseReader<v1::CacheGetResponse>> rpc;
  grpc::Status status;
  int64_t start_ns = 0;
  std::mt19937_64 rng;
};

class Worker {
 public:
  Worker(std::vector<Slot*> slots, const Window& window, int64_t keys,
         int call_timeout_ms)
      : slots_(std::move(slots)),
        window_(window),
        keys_(keys),
        call_timeout_(std::chrono::milliseconds(call_timeout_ms)) {}

  void Run() {
    result_.latencies_us.reserve(1 << 18);
    for (Slot* slot : slots_) Issue(slot);
    size_t outstanding = slots_.size();
    void* tag;
    bool ok;
    while (outstanding > 0 && cq_.Next(&tag, &ok)) {
      Slot* slot = static_cast<Slot*>(tag);
      int64_t end_ns = NowNs();
      if (end_ns >= window_.measure_start_ns && end_ns <= window_.measure_end_ns) {
        if (slot->status.ok()) {
          if (slot->response.outcome() != v1::CacheGetResponse::HIT) ++result_.misses;
          result_.latencies_us.push_back(static_cast<uint32_t>(
              std::min<int64_t>((end_ns - slot->start_ns) / 1000, UINT32_MAX)));
        } else {
          RecordError(slot->status);
        }
      } else if (!slot->status.ok() && end_ns < window_.measure_start_ns) {
        RecordWarmupError(slot->status);
      }
      if (end_ns < window_.measure_end_ns) {
        Issue(slot);
      } else {
        --outstanding;
      }
    }
    cq_.Shutdown();
    while (cq_.Next(&tag, &ok)) {
    }
  }

  ThreadResult& result() { return result_; }
  uint64_t warmup_errors() const { return warmup_errors_; }

 private:
  void Issue(Slot* slot) {
    std::uniform_int_distribution<int64_t> dist(0, keys_ - 1);
    slot->request.set_key(absl::StrCat("key:", dist(slot->rng)));
    slot->context = std::make_unique<grpc::ClientContext>();
    slot->context->set_deadline(std::chrono::system_clock::now() + call_timeout_);
    slot->response.Clear();
    slot->start_ns = NowNs();
    slot->rpc = slot->stub->AsyncGet(slot->context.get(), slot->request, &cq_);
    slot->rpc->Finish(&slot->response, &slot->status, slot);
  }

  void RecordError(const grpc::Status& status) {
    ++result_.errors;
    int code = static_cast<int>(status.error_code());
    ++result_.error_codes[code];
    result_.first_error.emplace(code, status.error_message());
  }

  void RecordWarmupError(const grpc::Status& status) {
    ++warmup_errors_;
    result_.first_error.emplace(static_cast<int>(status.error_code()),
                                status.error_message());
  }

  std::vector<Slot*> slots_;
  Window window_;
  int64_t keys_;
  std::chrono::milliseconds call_timeout_;
  grpc::CompletionQueue cq_;
  ThreadResult result_;
  uint64_t warmup_errors_ = 0;
};

std::shared_ptr<grpc::Channel> NewChannel(const std::string& addr, int index) {
  grpc::ChannelArguments args;
  // Distinct arguments and a private subchannel pool give every channel its own
  // TCP connection (and HTTP/2 stream limits) instead of one shared one.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt("poolside.bench.channel_index", index);
  return grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args);
}

uint32_t Percentile(const std::vector<uint32_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t i = static_cast<size_t>(q * (sorted.size() - 1) + 0.5);
  return sorted[std::min(i, sorted.size() - 1)];
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "closed-loop load generator for poolside.v1.CacheService/Get");
  absl::ParseCommandLine(argc, argv);
  const std::string addr = absl::GetFlag(FLAGS_addr);
  const int callers = absl::GetFlag(FLAGS_callers);
  const double duration = absl::GetFlag(FLAGS_duration);
  const double warmup = absl::GetFlag(FLAGS_warmup);
  const int64_t keys = absl::GetFlag(FLAGS_keys);
  const int value_bytes = absl::GetFlag(FLAGS_value_bytes);
  if (callers < 1 || duration <= 0 || warmup < 0 || keys < 1 || value_bytes < 0) {
    std::fprintf(stderr, "error: need --callers >= 1, --duration > 0, "
                         "--warmup >= 0, --keys >= 1, --value_bytes >= 0\n");
    return 2;
  }
  int channels = absl::GetFlag(FLAGS_channels);
  if (channels <= 0) channels = (callers + 7) / 8;
  channels = std::min(channels, callers);
  int threads = absl::GetFlag(FLAGS_threads);
  if (threads <= 0) {
    threads = std::max(1u, std::thread::hardware_concurrency());
  }
  threads = std::min(threads, callers);

  v1::CacheGetRequest request;

  std::vector<std::shared_ptr<grpc::Channel>> chans;
  std::vector<std::unique_ptr<v1::CacheService::Stub>> stubs;
  for (int i = 0; i < channels; ++i) {
    chans.push_back(NewChannel(addr, i));
    stubs.push_back(v1::CacheService::NewStub(chans.back()));
  }

  // Preload: every key the run asks for is stored (and connects channel 0).
  const std::string value(value_bytes, 'x');
  for (int64_t k = 0; k < keys; ++k) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::CacheSetRequest set;
    set.set_key(absl::StrCat("key:", k));
    set.set_value(value);
    set.set_ttl_ms(3600000);
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
                   static_cast<int>(status.error_code()),
                   status.error_message().c_str());
      return 2;
    }
  }

  std::vector<Slot> slots(callers);
  std::vector<std::vector<Slot*>> per_thread(threads);
  for (int i = 0; i < callers; ++i) {
    slots[i].stub = stubs[i % channels].get();
    slots[i].request = request;
    slots[i].rng.seed(0x9e3779b97f4a7c15ULL * (i + 1));
    per_thread[i % threads].push_back(&slots[i]);
  }

  const int64_t start_ns = NowNs();
  Window window;
  window.measure_start_ns = start_ns + static_cast<int64_t>(warmup * 1e9);
  window.measure_end_ns = window.measure_start_ns + static_cast<int64_t>(duration * 1e9);

  std::vector<std::unique_ptr<Worker>> workers;
  for (int t = 0; t < threads; ++t) {
    workers.push_back(std::make_unique<Worker>(
        per_thread[t], window, keys, absl::GetFlag(FLAGS_call_timeout_ms)));
  }
  const double cpu_start = CpuSeconds();
  std::vector<std::thread> running;
  for (auto& w : workers) running.emplace_back([&w] { w->Run(); });
  for (auto& t : running) t.join();
  const double wall = (NowNs() - start_ns) / 1e9;
  const double cpu = CpuSeconds() - cpu_start;

  std::vector<uint32_t> latencies;
  uint64_t errors = 0, warmup_errors = 0, misses = 0;
  std::map<int, uint64_t> error_codes;
  std::map<int, std::string> first_error;
  for (auto& w : workers) {
    ThreadResult& r = w->result();
    latencies.insert(latencies.end(), r.latencies_us.begin(), r.latencies_us.end());
    errors += r.errors;
    misses += r.misses;
    warmup_errors += w->warmup_errors();
    for (auto& [code, n] : r.error_codes) error_codes[code] += n;
    for (auto& [code, msg] : r.first_error) first_error.emplace(code, msg);
  }
  std::sort(latencies.begin(), latencies.end());
  double sum = 0;
  for (uint32_t l : latencies) sum += l;

  std::string json = "{\"tool\":\"cache_loadgen\"";
  auto add = [&json](absl::string_view key, const std::string& raw) {
    absl::StrAppend(&json, ",\"", key, "\":", raw);
  };
  auto add_str = [&json](absl::string_view key, absl::string_view s) {
    absl::StrAppend(&json, ",\"", key, "\":");
    telemetry::AppendJsonString(s, &json);
  };
  if (!absl::GetFlag(FLAGS_label).empty()) add_str("label", absl::GetFlag(FLAGS_label));
  add_str("addr", addr);
  add("callers", absl::StrCat(callers));
  add("channels", absl::StrCat(channels));
  add("threads", absl::StrCat(threads));
  add("duration_s", absl::StrFormat("%.3f", duration));
  add("warmup_s", absl::StrFormat("%.3f", warmup));
  add("ops", absl::StrCat(latencies.size()));
  add("ops_per_sec", absl::StrFormat("%.1f", latencies.size() / duration));
  add("mean_us", absl::StrFormat("%.1f", latencies.empty() ? 0 : sum / latencies.size()));
  add("p50_us", absl::StrCat(Percentile(latencies, 0.50)));
  add("p90_us", absl::StrCat(Percentile(latencies, 0.90)));
  add("p99_us", absl::StrCat(Percentile(latencies, 0.99)));
  add("p999_us", absl::StrCat(Percentile(latencies, 0.999)));
  add("max_us", absl::StrCat(latencies.empty() ? 0 : latencies.back()));
  add("keys", absl::StrCat(keys));
  add("value_bytes", absl::StrCat(value_bytes));
  add("misses", absl::StrCat(misses));
  add("errors", absl::StrCat(errors));
  add("warmup_errors", absl::StrCat(warmup_errors));
  std::string codes = "{";
  for (auto& [code, n] : error_codes) {
    absl::StrAppend(&codes, codes.size() > 1 ? "," : "", "\"", code, "\":", n);
  }
  add("error_codes", codes + "}");
  add("client_cpu_cores", absl::StrFormat("%.2f", wall > 0 ? cpu / wall : 0));
  json += "}";

  for (auto& [code, msg] : first_error) {
    std::fprintf(stderr, "cache_loadgen: calls failed with code %d, e.g.: %s\n", code,
                 msg.c_str());
  }
  std::printf("%s\n", json.c_str());
  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!json_out.empty()) {
    std::ofstream out(json_out);
    out << json << "\n";
    if (!out) {
      std::fprintf(stderr, "error: cannot write %s\n", json_out.c_str());
      return 2;
    }
  }
  return 0;
}

}  // namespace
}  // namespace poolside::bench

int main(int argc, char** argv) { return poolside::bench::Main(argc, argv); }
