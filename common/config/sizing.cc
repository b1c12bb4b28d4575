#include "common/config/sizing.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace poolside::config {

ContainerLimits EffectiveLimits(const v1::ServerConfig& server, ContainerLimits detected) {
  std::string overridden;
  if (server.cpu_limit() > 0) {
    detected.cpus = server.cpu_limit();
    overridden = "server.cpuLimit";
  }
  if (server.memory_limit_bytes() > 0) {
    detected.memory_bytes = server.memory_limit_bytes();
    absl::StrAppend(&overridden, overridden.empty() ? "" : " and ", "server.memoryLimitBytes");
  }
  if (!overridden.empty()) {
    detected.source = detected.source == "none"
                          ? overridden
                          : absl::StrCat(overridden, " over ", detected.source);
  }
  return detected;
}

uint32_t ThreadsFromCpu(const ContainerLimits& limits, const ThreadRule& rule) {
  if (!limits.cpus) return rule.without_limit;
  const double cores = std::ceil(*limits.cpus - 1e-9);
  const double n = std::ceil(std::max(cores, 1.0) * rule.per_core);
  return static_cast<uint32_t>(
      std::clamp(n, static_cast<double>(rule.min), static_cast<double>(rule.max)));
}

uint64_t BytesFromMemory(const ContainerLimits& limits, const MemoryRule& rule) {
  if (!limits.memory_bytes) return rule.without_limit;
  const double share = static_cast<double>(*limits.memory_bytes) * rule.fraction;
  if (share >= static_cast<double>(rule.max)) return rule.max;
  return std::max(rule.min, static_cast<uint64_t>(share));
}

std::string DescribeLimits(const ContainerLimits& limits) {
  return absl::StrCat(
      "cpu ", limits.cpus ? absl::StrCat(*limits.cpus) : "unlimited", ", memory ",
      limits.memory_bytes ? absl::StrCat(*limits.memory_bytes >> 20, " MiB") : "unlimited", " (",
      limits.source, ")");
}

}  // namespace poolside::config
