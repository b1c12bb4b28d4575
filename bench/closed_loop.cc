#include "bench/closed_loop.h"

#include <sys/resource.h>

#include <cstdio>
#include <fstream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/server/channel.h"
#include "common/server/mutex_mode.h"
#include "common/telemetry/log.h"

ABSL_FLAG(int32_t, callers, 32, "concurrent outstanding calls");
ABSL_FLAG(double, duration, 10, "measured seconds");
ABSL_FLAG(double, warmup, 2, "seconds of load before measuring");
ABSL_FLAG(int32_t, channels, 0, "gRPC channels (TCP connections); 0: one per 8 callers");
ABSL_FLAG(int32_t, threads, 1,
          "client threads, each with its own completion queue (one drives ~58k "
          "calls/s; a second one costs more CPU per call than it adds on a small "
          "machine)");
ABSL_FLAG(int32_t, call_timeout_ms, 5000, "deadline of each call");
ABSL_FLAG(std::string, json_out, "", "also write the JSON result to this file");
ABSL_FLAG(std::string, label, "", "free-form label copied into the JSON");

namespace poolside::bench {
namespace {

uint32_t Percentile(const std::vector<uint32_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t i = static_cast<size_t>(q * (sorted.size() - 1) + 0.5);
  return sorted[std::min(i, sorted.size() - 1)];
}

}  // namespace

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double CpuSeconds() {
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

std::shared_ptr<grpc::Channel> NewChannel(const std::string& addr, int index) {
  grpc::ChannelArguments args;
  // Distinct arguments and a private subchannel pool give every channel its own
  // TCP connection (and HTTP/2 stream limits) instead of one shared one.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt("poolside.bench.channel_index", index);
  server::ChannelOptions options;
  options.target = addr;
  options.tls = server::PlaintextTls();  // the benchmark runs on loopback
  options.args = args;
  // The load generator shares the cores with what it measures: no retry filter
  // (it would not retry anything here, and costs ~14% of a call's client CPU).
  options.retries = false;
  return *server::CreateChannel(std::move(options));
}

JsonLine::JsonLine(absl::string_view tool) {
  json_ = "{\"tool\":";
  telemetry::AppendJsonString(tool, &json_);
}

void JsonLine::Add(absl::string_view key, const std::string& raw) {
  absl::StrAppend(&json_, ",\"", key, "\":", raw);
}

void JsonLine::AddString(absl::string_view key, absl::string_view value) {
  absl::StrAppend(&json_, ",\"", key, "\":");
  telemetry::AppendJsonString(value, &json_);
}

void AddLoadFields(const LoadOptions& options, const LoadResult& r, JsonLine* json) {
  const std::vector<uint32_t>& l = r.latencies_us;
  double sum = 0;
  for (uint32_t v : l) sum += v;
  if (!options.label.empty()) json->AddString("label", options.label);
  json->Add("callers", absl::StrCat(options.callers));
  json->Add("channels", absl::StrCat(options.channels));
  json->Add("threads", absl::StrCat(options.threads));
  json->Add("duration_s", absl::StrFormat("%.3f", options.duration));
  json->Add("warmup_s", absl::StrFormat("%.3f", options.warmup));
  json->Add("ops", absl::StrCat(l.size()));
  json->Add("ops_per_sec", absl::StrFormat("%.1f", l.size() / options.duration));
  json->Add("mean_us", absl::StrFormat("%.1f", l.empty() ? 0 : sum / l.size()));
  json->Add("p50_us", absl::StrCat(Percentile(l, 0.50)));
  json->Add("p90_us", absl::StrCat(Percentile(l, 0.90)));
  json->Add("p99_us", absl::StrCat(Percentile(l, 0.99)));
  json->Add("p999_us", absl::StrCat(Percentile(l, 0.999)));
  json->Add("max_us", absl::StrCat(l.empty() ? 0 : l.back()));
  json->Add("errors", absl::StrCat(r.errors));
  json->Add("warmup_errors", absl::StrCat(r.warmup_errors));
  std::string codes = "{";
  for (const auto& [code, n] : r.error_codes) {
    absl::StrAppend(&codes, codes.size() > 1 ? "," : "", "\"", code, "\":", n);
  }
  json->Add("error_codes", codes + "}");
  json->Add("client_cpu_cores",
            absl::StrFormat("%.2f", r.wall_seconds > 0 ? r.cpu_seconds / r.wall_seconds : 0));
}

int Emit(absl::string_view tool, const LoadResult& result, const std::string& json,
         const LoadOptions& options) {
  const std::string& json_out = options.json_out;
  for (const auto& [code, msg] : result.first_error) {
    std::fprintf(stderr, "%s: calls failed with code %d, e.g.: %s\n", std::string(tool).c_str(),
                 code, msg.c_str());
  }
  std::printf("%s\n", json.c_str());
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

namespace internal {

void Merge(LoadResult& from, LoadResult* into) {
  into->latencies_us.insert(into->latencies_us.end(), from.latencies_us.begin(),
                            from.latencies_us.end());
  into->errors += from.errors;
  into->warmup_errors += from.warmup_errors;
  into->marked += from.marked;
  for (const auto& [code, n] : from.error_codes) into->error_codes[code] += n;
  for (const auto& [code, msg] : from.first_error) into->first_error.emplace(code, msg);
}

void Finish(LoadResult* result) {
  std::sort(result->latencies_us.begin(), result->latencies_us.end());
}

}  // namespace internal
absl::StatusOr<LoadOptions> ParseLoadOptions(int argc, char** argv, absl::string_view usage) {
  absl::SetProgramUsageMessage(
      absl::StrCat(usage,
                   " (the loop's own flags --callers, --duration, --warmup, --channels, --threads, "
                   "--call_timeout_ms, --label, --json_out: see --helpfull, bench/closed_loop.h)"));
  absl::ParseCommandLine(argc, argv);
  // The client's gRPC locks are absl::Mutex too: without this, deadlock
  // detection costs the load generator ~10% more CPU per call, which the
  // server under test loses on a shared machine.
  server::ApplyMutexDeadlockDetectionFlag();
  LoadOptions options;
  options.callers = absl::GetFlag(FLAGS_callers);
  options.duration = absl::GetFlag(FLAGS_duration);
  options.warmup = absl::GetFlag(FLAGS_warmup);
  options.channels = absl::GetFlag(FLAGS_channels);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.call_timeout_ms = absl::GetFlag(FLAGS_call_timeout_ms);
  options.json_out = absl::GetFlag(FLAGS_json_out);
  options.label = absl::GetFlag(FLAGS_label);
  if (options.callers < 1 || options.duration <= 0 || options.warmup < 0) {
    return absl::InvalidArgumentError("need --callers >= 1, --duration > 0, --warmup >= 0");
  }
  if (options.channels <= 0) options.channels = (options.callers + 7) / 8;
  options.channels = std::min(options.channels, options.callers);
  options.threads = std::max(1, std::min(options.threads, options.callers));
  return options;
}

}  // namespace poolside::bench
