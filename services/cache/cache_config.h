#ifndef POOLSIDE_SERVICES_CACHE_CACHE_CONFIG_H_
#define POOLSIDE_SERVICES_CACHE_CACHE_CONFIG_H_

// The cache sidecar's configuration: proto/poolside/v1/config.proto's
// CacheServiceConfig, validated, with every default filled in and the memory
// budget resolved (capacity_bytes 0: memory_fraction of the container's cgroup
// memory limit when there is one, else 256 MiB).

#include <string>

#include "absl/status/statusor.h"
#include "common/config/cgroup.h"
#include "proto/poolside/v1/config.pb.h"
#include "common/cache/cache_store.h"

namespace poolside::cache {

inline constexpr uint64_t kDefaultCapacityBytes = uint64_t{256} << 20;

// Loads `path` (JSON), applies defaults, validates. Errors name the file and
// the setting. `limits` are the container's (ReadContainerLimits()); the
// config's server.cpuLimit / server.memoryLimitBytes override them
// (common/config/sizing.h). `capacity_note`, if given, receives how the budget
// was chosen (for the startup log).
absl::StatusOr<v1::CacheServiceConfig> LoadCacheConfig(const std::string& path,
                                                       const config::ContainerLimits& limits,
                                                       std::string* capacity_note = nullptr);

absl::StatusOr<v1::CacheServiceConfig> FinalizeCacheConfig(v1::CacheServiceConfig config,
                                                           const config::ContainerLimits& limits,
                                                           std::string* capacity_note = nullptr);

// The store's options from a finalized config.
CacheStoreOptions StoreOptionsFromConfig(const v1::CacheServiceConfig& config);

}  // namespace poolside::cache

#endif  // POOLSIDE_SERVICES_CACHE_CACHE_CONFIG_H_
