#ifndef POOLSIDE_COMMON_CONFIG_CGROUP_H_
#define POOLSIDE_COMMON_CONFIG_CGROUP_H_

// The resource limits of the container this process runs in, read from its
// cgroup, so services size themselves (cache budget, worker threads) from the
// limits Kubernetes set instead of the host's memory and cores.
//
//   ContainerLimits limits = ReadContainerLimits();
//   if (limits.memory_bytes) budget = *limits.memory_bytes / 2;
//   int threads = EffectiveCpuCount(limits);
//
// cgroup v2 (a unified hierarchy mounted at `root`, recognised by its
// cgroup.controllers file): the process's own cgroup comes from the "0::/path"
// line of /proc/self/cgroup; `memory.max` and `cpu.max` are read there and in
// every ancestor up to `root`, and the tightest limit wins. Inside a cgroup
// namespace the path is "/" and `root` itself is the container's cgroup.
//
// cgroup v1: `memory/<path>/memory.limit_in_bytes` and
// `cpu/<path>/cpu.cfs_quota_us` + `cpu.cfs_period_us` (also under "cpu,cpuacct"),
// with <path> from the "N:memory:/path" and "N:cpu,...:/path" lines, likewise
// walking up to the controller's root. A path that does not exist under `root`
// (the host's view of a namespaced process) is skipped.
//
// "max", -1, and values of 2^60 bytes or more (v1's "unlimited" is LONG_MAX
// rounded down to a page) mean no limit. Unreadable files mean no limit: this
// never fails.
//
// Pure functions of the files they read; thread-safe.

#include <cstdint>
#include <optional>
#include <string>

namespace poolside::config {

struct ContainerLimits {
  std::optional<uint64_t> memory_bytes;
  // CPU quota in cores (quota / period), e.g. 0.5 or 2.
  std::optional<double> cpus;
  // Where the limits came from, for logs: "cgroup v2 <dir>", "cgroup v1", or
  // "none".
  std::string source = "none";
};

ContainerLimits ReadContainerLimits(const std::string& root = "/sys/fs/cgroup",
                                    const std::string& self_cgroup = "/proc/self/cgroup");

// Cores this process may use: the CPU quota rounded up, capped by the host's
// hardware concurrency; at least 1.
int EffectiveCpuCount(const ContainerLimits& limits);

}  // namespace poolside::config

#endif  // POOLSIDE_COMMON_CONFIG_CGROUP_H_
