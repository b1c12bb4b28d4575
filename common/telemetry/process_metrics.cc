#include "common/telemetry/process_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/telemetry/metrics_family.h"

namespace poolside::telemetry {
namespace {

bool ReadFile(const char* path, std::string* out) {
  std::ifstream in(path);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

// Seconds since the epoch at which the machine booted ("btime" in /proc/stat).
bool BootTime(double* out) {
  std::string stat;
  if (!ReadFile("/proc/stat", &stat)) return false;
  for (absl::string_view line : absl::StrSplit(stat, '\n')) {
    if (absl::ConsumePrefix(&line, "btime ")) {
      int64_t t = 0;
      if (!absl::SimpleAtoi(line, &t)) return false;
      *out = static_cast<double>(t);
      return true;
    }
  }
  return false;
}

int64_t CountOpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int64_t n = 0;
  while (const dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n - 1;  // the descriptor opendir() itself holds
}

}  // namespace

absl::StatusOr<ProcessSample> ReadProcessSample() {
  std::string stat;
  if (!ReadFile("/proc/self/stat", &stat)) {
    return absl::UnavailableError("cannot read /proc/self/stat (is /proc mounted?)");
  }
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so the
  // fields are counted from after its last ')'. Field 3 (state) is index 0.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return absl::InternalError("unexpected /proc/self/stat format");
  std::vector<absl::string_view> f =
      absl::StrSplit(absl::string_view(stat).substr(close + 1), ' ', absl::SkipEmpty());
  // Fields (1-based as in proc(5)): utime 14, stime 15, num_threads 20,
  // starttime 22, vsize 23, rss 24.
  auto field = [&](int n) -> double {
    const size_t i = static_cast<size_t>(n - 3);
    double v = 0;
    if (i < f.size()) (void)absl::SimpleAtod(f[i], &v);
    return v;
  };
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  ProcessSample s;
  s.cpu_seconds = (field(14) + field(15)) / ticks;
  s.threads = static_cast<int64_t>(field(20));
  s.virtual_bytes = field(23);
  s.resident_bytes = field(24) * page;
  double boot = 0;
  if (BootTime(&boot)) s.start_time_seconds = boot + field(22) / ticks;
  s.open_fds = CountOpenFds();
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
    s.max_fds = nofile.rlim_cur == RLIM_INFINITY ? -1 : static_cast<int64_t>(nofile.rlim_cur);
  }
  return s;
}

void AppendProcessMetrics(std::vector<prometheus::MetricFamily>* out) {
  absl::StatusOr<ProcessSample> s = ReadProcessSample();
  if (!s.ok()) return;
  AppendCounter(out, "poolside_process_cpu_seconds_total", "User and system CPU time spent.",
                s->cpu_seconds);
  AppendGauge(out, "poolside_process_resident_memory_bytes", "Resident memory size.",
              s->resident_bytes);
  AppendGauge(out, "poolside_process_virtual_memory_bytes", "Virtual memory size.",
              s->virtual_bytes);
  AppendGauge(out, "poolside_process_open_fds", "Open file descriptors.",
              static_cast<double>(s->open_fds));
  if (s->max_fds > 0) {
    AppendGauge(out, "poolside_process_max_fds", "Limit on open file descriptors.",
                static_cast<double>(s->max_fds));
  }
  AppendGauge(out, "poolside_process_threads", "Threads of the process.",
              static_cast<double>(s->threads));
  if (s->start_time_seconds > 0) {
    AppendGauge(out, "poolside_process_start_time_seconds", "Start time since the Unix epoch.",
                s->start_time_seconds);
  }
}

}  // namespace poolside::telemetry
