#include "common/config/cgroup.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace poolside::config {
namespace {

// Values at or above this are "unlimited" (v1 writes LONG_MAX rounded to a page).
constexpr uint64_t kUnlimited = uint64_t{1} << 60;

bool IsDirectory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream buffer;
  buffer << in.rdbuf();
  return std::string(absl::StripAsciiWhitespace(buffer.str()));
}

std::optional<uint64_t> ParseBytes(absl::string_view text) {
  uint64_t v = 0;
  if (text == "max" || !absl::SimpleAtoi(text, &v) || v >= kUnlimited) return std::nullopt;
  return v;
}

// quota/period in cores; nullopt for "max" or -1.
std::optional<double> ParseQuota(absl::string_view quota, absl::string_view period) {
  int64_t q = 0, p = 0;
  if (quota == "max" || !absl::SimpleAtoi(quota, &q) || !absl::SimpleAtoi(period, &p)) {
    return std::nullopt;
  }
  if (q <= 0 || p <= 0) return std::nullopt;
  return static_cast<double>(q) / static_cast<double>(p);
}

template <typename T>
void KeepTightest(std::optional<T> v, std::optional<T>* best) {
  if (v && (!*best || *v < **best)) *best = v;
}

// Directories from `base`+`path` up to `base` itself, deepest first; only the
// ones that exist.
std::vector<std::string> Ancestry(const std::string& base, absl::string_view path) {
  std::vector<std::string> dirs;
  std::string rel(absl::StripSuffix(path, "/"));
  while (true) {
    const std::string dir = base + rel;
    if (IsDirectory(dir)) dirs.push_back(dir);
    if (rel.empty()) break;
    const size_t slash = rel.rfind('/');
    rel = slash == std::string::npos ? "" : rel.substr(0, slash);
  }
  return dirs;
}

struct SelfCgroups {
  std::string unified;  // "0::" line
  std::string memory;   // v1 memory controller
  std::string cpu;      // v1 cpu controller
};

SelfCgroups ParseSelfCgroup(const std::string& file) {
  SelfCgroups out;
  std::optional<std::string> text = ReadFile(file);
  if (!text) return out;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    std::vector<absl::string_view> parts = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (parts.size() != 3) continue;
    if (parts[0] == "0" && parts[1].empty()) out.unified = std::string(parts[2]);
    for (absl::string_view controller : absl::StrSplit(parts[1], ',')) {
      if (controller == "memory") out.memory = std::string(parts[2]);
      if (controller == "cpu") out.cpu = std::string(parts[2]);
    }
  }
  return out;
}

ContainerLimits ReadV2(const std::string& root, const SelfCgroups& self) {
  ContainerLimits limits;
  const std::vector<std::string> dirs = Ancestry(root, self.unified);
  for (const std::string& dir : dirs) {
    if (auto mem = ReadFile(dir + "/memory.max"))
      KeepTightest(ParseBytes(*mem), &limits.memory_bytes);
    if (auto cpu = ReadFile(dir + "/cpu.max")) {
      std::vector<absl::string_view> f = absl::StrSplit(*cpu, ' ', absl::SkipEmpty());
      if (f.size() == 2) KeepTightest(ParseQuota(f[0], f[1]), &limits.cpus);
    }
  }
  limits.source = absl::StrCat("cgroup v2 ", dirs.empty() ? root : dirs.front());
  return limits;
}

ContainerLimits ReadV1(const std::string& root, const SelfCgroups& self) {
  ContainerLimits limits;
  for (const std::string& dir : Ancestry(root + "/memory", self.memory)) {
    if (auto mem = ReadFile(dir + "/memory.limit_in_bytes")) {
      KeepTightest(ParseBytes(*mem), &limits.memory_bytes);
    }
  }
  for (const char* controller : {"/cpu", "/cpu,cpuacct", "/cpuacct,cpu"}) {
    for (const std::string& dir : Ancestry(root + controller, self.cpu)) {
      auto quota = ReadFile(dir + "/cpu.cfs_quota_us");
      auto period = ReadFile(dir + "/cpu.cfs_period_us");
      if (quota && period) KeepTightest(ParseQuota(*quota, *period), &limits.cpus);
    }
  }
  limits.source = "cgroup v1";
  return limits;
}

}  // namespace

ContainerLimits ReadContainerLimits(const std::string& root, const std::string& self_cgroup) {
  const SelfCgroups self = ParseSelfCgroup(self_cgroup);
  if (ReadFile(root + "/cgroup.controllers")) return ReadV2(root, self);
  if (IsDirectory(root + "/memory") || IsDirectory(root + "/cpu") ||
      IsDirectory(root + "/cpu,cpuacct")) {
    return ReadV1(root, self);
  }
  return ContainerLimits();
}

int EffectiveCpuCount(const ContainerLimits& limits) {
  int hardware = static_cast<int>(std::thread::hardware_concurrency());
  if (hardware <= 0) hardware = 1;
  if (!limits.cpus) return hardware;
  return std::clamp(static_cast<int>(std::ceil(*limits.cpus - 1e-9)), 1, hardware);
}

}  // namespace poolside::config
