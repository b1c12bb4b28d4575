#ifndef POOLSIDE_SERVICES_CACHE_CACHE_CONFIG_H_
#define POOLSIDE_SERVICES_CACHE_CACHE_CONFIG_H_

// The cache sidecar's configuration: proto/poolside/v1/config.proto's
// CacheServiceConfig, validated, with every default filled in and the memory
// budget resolved (capacity_bytes 0: memory_fraction of the container's cgroup
// memory limit when there is one, else 256 MiB).
//
// Listeners: server.listen empty means no TCP listener when unixSocket is set
// (else "127.0.0.1:50052"). The sidecar trusts no caller by default: a TCP
// address that is not loopback is refused (INVALID_ARGUMENT naming the
// settings to change) unless calls on it are authenticated, by auth
// principals (bearer tokens) or by mutual TLS (server.tls with
// requireClientCert).

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/cache/cache_store.h"
#include "common/config/cgroup.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::cache {

inline constexpr uint64_t kDefaultCapacityBytes = uint64_t{256} << 20;

// Command-line settings that replace the file's before it is validated
// (empty: keep the file's).
struct CacheConfigOverrides {
  std::string listen;       // server.listen
  std::string unix_socket;  // unixSocket
};

// Loads `path` (JSON), applies `overrides` and defaults, validates. Errors name
// the file and the setting. `limits` are the container's
// (ReadContainerLimits()); the config's server.cpuLimit /
// server.memoryLimitBytes override them (common/config/sizing.h).
// `capacity_note`, if given, receives how the budget was chosen (for the
// startup log).
absl::StatusOr<v1::CacheServiceConfig> LoadCacheConfig(const std::string& path,
                                                       const config::ContainerLimits& limits,
                                                       std::string* capacity_note = nullptr,
                                                       const CacheConfigOverrides& overrides = {});

absl::StatusOr<v1::CacheServiceConfig> FinalizeCacheConfig(v1::CacheServiceConfig config,
                                                           const config::ContainerLimits& limits,
                                                           std::string* capacity_note = nullptr);

// The store's options from a finalized config.
CacheStoreOptions StoreOptionsFromConfig(const v1::CacheServiceConfig& config);

// True for a gRPC address that is a unix domain socket ("unix:...",
// "unix-abstract:...").
bool IsUnixAddress(absl::string_view address);

// True for a TCP "host:port" whose host is a loopback address (127.0.0.0/8,
// ::1, localhost). Any other host (0.0.0.0, ::, a name, an interface's
// address, none) is not.
bool IsLoopbackAddress(absl::string_view address);

// True when `auth` names principals (from any source) and is not disabled.
bool PrincipalsConfigured(const v1::AuthConfig& auth);

// True when a finalized config's calls are authenticated: auth principals are
// configured (from any source), or server.tls requires client certificates.
bool CallsAuthenticated(const v1::CacheServiceConfig& config);

}  // namespace poolside::cache

#endif  // POOLSIDE_SERVICES_CACHE_CACHE_CONFIG_H_
