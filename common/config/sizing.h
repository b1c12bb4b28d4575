#ifndef POOLSIDE_COMMON_CONFIG_SIZING_H_
#define POOLSIDE_COMMON_CONFIG_SIZING_H_

// Sizing a service from its container: the cgroup limits (cgroup.h) with the
// configuration's overrides (ServerConfig cpu_limit, memory_limit_bytes), and
// defaults derived from them, so a pod with a 1 GiB / 2 CPU limit gets
// buffers and worker threads that fit it without per-environment settings.
//
//   ContainerLimits limits = EffectiveLimits(config.server(), ReadContainerLimits());
//   ThreadRule rule;  // 2 per core, 2 to 8, 4 without a CPU limit
//   rule.per_core = 2; rule.min = 2; rule.max = 8; rule.without_limit = 4;
//   uint32_t workers = ThreadsFromCpu(limits, rule);
//   LogInfo("sizing", {{"limits", DescribeLimits(limits)}, ...});
//
// Pure functions; thread-safe.

#include <cstdint>
#include <string>

#include "common/config/cgroup.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::config {

// `detected` with each limit the configuration sets replacing the detected one.
ContainerLimits EffectiveLimits(const v1::ServerConfig& server, ContainerLimits detected);

struct ThreadRule {
  double per_core = 1;
  uint32_t min = 1;
  uint32_t max = 64;
  // Used when there is no CPU limit (the host's cores are not the budget of a
  // container that merely has none set).
  uint32_t without_limit = 4;
};
// per_core × the CPU limit (rounded up), clamped to [min, max].
uint32_t ThreadsFromCpu(const ContainerLimits& limits, const ThreadRule& rule);

struct MemoryRule {
  double fraction = 0.25;
  uint64_t min = 0;
  uint64_t max = UINT64_MAX;
  uint64_t without_limit = 0;  // used when there is no memory limit
};
// fraction × the memory limit, clamped to [min, max].
uint64_t BytesFromMemory(const ContainerLimits& limits, const MemoryRule& rule);

// For logs, e.g. "cpu 1.5, memory 512 MiB (cgroup v2 /sys/fs/cgroup)".
std::string DescribeLimits(const ContainerLimits& limits);

}  // namespace poolside::config

#endif  // POOLSIDE_COMMON_CONFIG_SIZING_H_
