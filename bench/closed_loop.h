#ifndef POOLSIDE_BENCH_CLOSED_LOOP_H_
#define POOLSIDE_BENCH_CLOSED_LOOP_H_

// The closed loop shared by the unary load generators (loadgen for
// QueryService/Execute, cache_loadgen for CacheService/Get).
//
// `callers` calls are kept outstanding at all times: each completion records
// its latency and immediately issues the next call. Calls are spread over the
// given stubs (one per channel, each its own TCP connection: see NewChannel)
// and driven by `threads` threads, each polling its own completion queue with
// the async API, so the client costs little CPU and does not serialize on one
// connection. After `warmup` seconds, completions are counted for `duration`
// seconds.
//
// A Call type says what one call is:
//   // The stub's method that starts one call: it says the stub, request and
//   // response types.
//   static constexpr auto kStart = &v1::CacheService::Stub::AsyncGet;
//   // Varies the request before each call (e.g. a random key).
//   void Prepare(v1::CacheGetRequest* request, std::mt19937_64& rng) const;
//   // Whether a successful response counts as "marked" (e.g. a cache miss).
//   bool Marked(const v1::CacheGetResponse& response) const;

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace poolside::bench {

int64_t NowNs();
double CpuSeconds();

// A channel with its own TCP connection (a private subchannel pool).
std::shared_ptr<grpc::Channel> NewChannel(const std::string& addr, int index);

// The loop's options, from flags shared by every load generator: --callers,
// --duration, --warmup, --channels, --threads, --call_timeout_ms, and what
// becomes of the result: --label (copied into the JSON), --json_out (a file
// it is also written to).
struct LoadOptions {
  int callers = 32;
  int channels = 0;  // 0: one per 8 callers
  int threads = 1;
  double duration = 10;
  double warmup = 2;
  int call_timeout_ms = 5000;
  std::string label;
  std::string json_out;
};

// Parses the command line (`usage` says what the program is; --help adds the
// loop's flags) and returns the loop's options with the defaults of channels
// and threads filled in, or INVALID_ARGUMENT naming the bad ones. Also applies
// --mutex_deadlock_detection (common/server/mutex_mode.h).
absl::StatusOr<LoadOptions> ParseLoadOptions(int argc, char** argv, absl::string_view usage);

struct LoadResult {
  std::vector<uint32_t> latencies_us;  // sorted
  uint64_t errors = 0;
  uint64_t warmup_errors = 0;
  uint64_t marked = 0;
  std::map<int, uint64_t> error_codes;
  std::map<int, std::string> first_error;
  double wall_seconds = 0;
  double cpu_seconds = 0;
};

// One line of JSON: {"tool":..., then Add()ed fields}.
class JsonLine {
 public:
  explicit JsonLine(absl::string_view tool);
  void Add(absl::string_view key, const std::string& raw);
  void AddString(absl::string_view key, absl::string_view value);
  std::string Done() const { return json_ + "}"; }

 private:
  std::string json_;
};

// The options (with the label) and the measurements every load generator
// reports.
void AddLoadFields(const LoadOptions& options, const LoadResult& result, JsonLine* json);

// Prints the first error per code to stderr, `json` to stdout and, if
// options.json_out is set, to that file. Returns the exit status (0, or 2 if
// the file cannot be written).
int Emit(absl::string_view tool, const LoadResult& result, const std::string& json,
         const LoadOptions& options);

namespace internal {

template <typename Start>
struct StartTraits;
template <typename S, typename Req, typename Resp>
struct StartTraits<std::unique_ptr<grpc::ClientAsyncResponseReader<Resp>> (S::*)(
    grpc::ClientContext*, const Req&, grpc::CompletionQueue*)> {
  using Stub = S;
  using Request = Req;
  using Response = Resp;
};

}  // namespace internal

// A Call's stub, request and response types.
template <typename Call>
using StubOf = typename internal::StartTraits<std::decay_t<decltype(Call::kStart)>>::Stub;
template <typename Call>
using RequestOf = typename internal::StartTraits<std::decay_t<decltype(Call::kStart)>>::Request;
template <typename Call>
using ResponseOf = typename internal::StartTraits<std::decay_t<decltype(Call::kStart)>>::Response;

namespace internal {

template <typename Call>
struct Slot {
  StubOf<Call>* stub = nullptr;
  RequestOf<Call> request;
  ResponseOf<Call> response;
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<grpc::ClientAsyncResponseReader<ResponseOf<Call>>> rpc;
  grpc::Status status;
  int64_t start_ns = 0;
  int64_t end_ns = 0;
  std::mt19937_64 rng;
};

template <typename Call>
class Worker {
 public:
  Worker(const Call& call, std::vector<Slot<Call>*> slots, int64_t measure_start_ns,
         int64_t measure_end_ns, int call_timeout_ms)
      : call_(call),
        slots_(std::move(slots)),
        measure_start_ns_(measure_start_ns),
        measure_end_ns_(measure_end_ns),
        call_timeout_(std::chrono::milliseconds(call_timeout_ms)) {}

  void Run() {
    result_.latencies_us.reserve(1 << 18);
    for (Slot<Call>* slot : slots_) Issue(slot);
    size_t outstanding = slots_.size();
    std::vector<Slot<Call>*> done;
    done.reserve(slots_.size());
    void* tag;
    bool ok;
    while (outstanding > 0 && cq_.Next(&tag, &ok)) {
      // Every completion already queued is timed before any new call is
      // started (as redis-benchmark reads every ready reply before writing):
      // a call's latency is the service's answer time, not that plus the
      // client's own work of starting the calls completed before it.
      Record(static_cast<Slot<Call>*>(tag), &done);
      while (cq_.AsyncNext(&tag, &ok, gpr_time_0(GPR_CLOCK_MONOTONIC)) ==
             grpc::CompletionQueue::GOT_EVENT) {
        Record(static_cast<Slot<Call>*>(tag), &done);
      }
      for (Slot<Call>* slot : done) {
        if (slot->end_ns < measure_end_ns_) {
          Issue(slot);
        } else {
          --outstanding;
        }
      }
      done.clear();
    }
    cq_.Shutdown();
    while (cq_.Next(&tag, &ok)) {
    }
  }

  LoadResult& result() { return result_; }

 private:
  void Record(Slot<Call>* slot, std::vector<Slot<Call>*>* done) {
    const int64_t end_ns = NowNs();
    slot->end_ns = end_ns;
    done->push_back(slot);
    if (end_ns >= measure_start_ns_ && end_ns <= measure_end_ns_) {
      if (slot->status.ok()) {
        if (call_.Marked(slot->response)) ++result_.marked;
        result_.latencies_us.push_back(
            static_cast<uint32_t>(std::min<int64_t>((end_ns - slot->start_ns) / 1000, UINT32_MAX)));
      } else {
        ++result_.errors;
        const int code = static_cast<int>(slot->status.error_code());
        ++result_.error_codes[code];
        result_.first_error.emplace(code, slot->status.error_message());
      }
    } else if (!slot->status.ok() && end_ns < measure_start_ns_) {
      ++result_.warmup_errors;
      result_.first_error.emplace(static_cast<int>(slot->status.error_code()),
                                  slot->status.error_message());
    }
  }

  void Issue(Slot<Call>* slot) {
    call_.Prepare(&slot->request, slot->rng);
    slot->context = std::make_unique<grpc::ClientContext>();
    slot->context->set_deadline(std::chrono::system_clock::now() + call_timeout_);
    slot->response.Clear();
    slot->start_ns = NowNs();
    slot->rpc = (slot->stub->*Call::kStart)(slot->context.get(), slot->request, &cq_);
    slot->rpc->Finish(&slot->response, &slot->status, slot);
  }

  const Call& call_;
  std::vector<Slot<Call>*> slots_;
  const int64_t measure_start_ns_;
  const int64_t measure_end_ns_;
  const std::chrono::milliseconds call_timeout_;
  grpc::CompletionQueue cq_;
  LoadResult result_;
};

void Merge(LoadResult& from, LoadResult* into);
void Finish(LoadResult* result);

}  // namespace internal

// One stub per channel to `addr`, each probed with one call of `probe`, so
// that every channel is connected and a bad address or request fails before
// the run (with the probe's status).
template <typename Call>
absl::StatusOr<std::vector<std::unique_ptr<StubOf<Call>>>> ConnectStubs(
    const std::string& addr, const RequestOf<Call>& probe, const LoadOptions& options) {
  std::vector<std::unique_ptr<StubOf<Call>>> stubs;
  for (int i = 0; i < options.channels; ++i) {
    stubs.push_back(std::make_unique<StubOf<Call>>(NewChannel(addr, i)));
    grpc::CompletionQueue cq;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    ResponseOf<Call> response;
    grpc::Status status;
    const auto rpc = (stubs.back().get()->*Call::kStart)(&context, probe, &cq);
    rpc->Finish(&response, &status, &cq);
    void* tag;
    bool ok;
    cq.Next(&tag, &ok);
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
    if (!status.ok()) {
      return absl::Status(
          static_cast<absl::StatusCode>(status.error_code()),
          absl::StrCat("probe call failed: ", status.error_code(), ": ", status.error_message()));
    }
  }
  return stubs;
}

// Runs the loop (one stub per channel).
template <typename Call>
LoadResult RunClosedLoop(const Call& call, const std::vector<std::unique_ptr<StubOf<Call>>>& stubs,
                         const RequestOf<Call>& request, const LoadOptions& options) {
  std::vector<internal::Slot<Call>> slots(options.callers);
  std::vector<std::vector<internal::Slot<Call>*>> per_thread(options.threads);
  for (int i = 0; i < options.callers; ++i) {
    slots[i].stub = stubs[i % stubs.size()].get();
    slots[i].request = request;
    slots[i].rng.seed(0x9e3779b97f4a7c15ULL * (i + 1));
    per_thread[i % options.threads].push_back(&slots[i]);
  }
  const int64_t start_ns = NowNs();
  const int64_t measure_start_ns = start_ns + static_cast<int64_t>(options.warmup * 1e9);
  const int64_t measure_end_ns = measure_start_ns + static_cast<int64_t>(options.duration * 1e9);
  std::vector<std::unique_ptr<internal::Worker<Call>>> workers;
  for (int t = 0; t < options.threads; ++t) {
    workers.push_back(std::make_unique<internal::Worker<Call>>(
        call, per_thread[t], measure_start_ns, measure_end_ns, options.call_timeout_ms));
  }
  const double cpu_start = CpuSeconds();
  std::vector<std::thread> running;
  for (auto& w : workers) running.emplace_back([&w] { w->Run(); });
  for (auto& t : running) t.join();
  LoadResult result;
  result.wall_seconds = (NowNs() - start_ns) / 1e9;
  result.cpu_seconds = CpuSeconds() - cpu_start;
  for (auto& w : workers) internal::Merge(w->result(), &result);
  internal::Finish(&result);
  return result;
}

}  // namespace poolside::bench

#endif  // POOLSIDE_BENCH_CLOSED_LOOP_H_
