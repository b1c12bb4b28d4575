#include "services/cache/cache_config.h"

#include <sys/un.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/config/json_config.h"
#include "common/config/sizing.h"
#include "common/config/tls_config.h"

namespace poolside::cache {
namespace {

#define POOLSIDE_DEFAULT(msg, field, value) \
  if ((msg)->field() == 0) (msg)->set_##field(value)

constexpr uint32_t kMaxShards = 1024;
// Every shard must hold at least a few maximal keys.
constexpr uint64_t kMinShardBytes = 64 << 10;
// gRPC's receive limit (common/server) is 64 MiB; leave room for the rest of
// the request.
constexpr uint32_t kMaxEntryBytesLimit = 60u << 20;

std::string MiB(uint64_t bytes) {
  return absl::StrCat(bytes >> 20, " MiB");
}

}  // namespace

absl::StatusOr<v1::CacheServiceConfig> FinalizeCacheConfig(v1::CacheServiceConfig c,
                                                           const config::ContainerLimits& detected,
                                                           std::string* capacity_note) {
  const config::ContainerLimits limits = config::EffectiveLimits(c.server(), detected);
  auto* server = c.mutable_server();
  if (server->listen().empty()) server->set_listen("0.0.0.0:50052");
  POOLSIDE_DEFAULT(server, drain_timeout_ms, 10000u);
  if (absl::Status s = config::ValidateServerTlsConfig(server->tls()); !s.ok()) return s;
  if (absl::StartsWith(c.unix_socket(), "unix:")) {
    c.set_unix_socket(std::string(absl::StripPrefix(c.unix_socket(), "unix:")));
  }
  if (c.unix_socket().size() >= sizeof(sockaddr_un::sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("unixSocket: path longer than ",
                                                   sizeof(sockaddr_un::sun_path) - 1,
                                                   " bytes (a unix socket limit): ",
                                                   c.unix_socket()));
  }
  if (!c.unix_socket().empty() && c.unix_socket()[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("unixSocket: must be an absolute path, got \"", c.unix_socket(), "\""));
  }

  if (c.memory_fraction() == 0) c.set_memory_fraction(0.5);
  if (!(c.memory_fraction() > 0 && c.memory_fraction() <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("memoryFraction must be in (0, 1], got ", c.memory_fraction()));
  }
  POOLSIDE_DEFAULT(&c, shards, 16u);
  if (c.shards() > kMaxShards) {
    return absl::InvalidArgumentError(
        absl::StrCat("shards must be at most ", kMaxShards, ", got ", c.shards()));
  }
  uint32_t shards = 1;
  while (shards < c.shards()) shards <<= 1;
  c.set_shards(shards);
  POOLSIDE_DEFAULT(&c, max_entry_bytes, 4u << 20);
  POOLSIDE_DEFAULT(&c, max_key_bytes, 4096u);
  POOLSIDE_DEFAULT(&c, max_ttl_ms, 86400000u);
  POOLSIDE_DEFAULT(&c, max_tags, 64u);
  POOLSIDE_DEFAULT(&c, reap_interval_ms, 1000u);
  if (!c.has_admission()) c.set_admission(true);

  std::string note;
  if (c.capacity_bytes() == 0) {
    config::MemoryRule rule;
    rule.fraction = c.memory_fraction();
    rule.without_limit = kDefaultCapacityBytes;
    c.set_capacity_bytes(config::BytesFromMemory(limits, rule));
    if (limits.memory_bytes) {
      note = absl::StrCat(MiB(c.capacity_bytes()), " = memoryFraction ", c.memory_fraction(),
                          " of the container memory limit ", MiB(*limits.memory_bytes), " (",
                          limits.source, ")");
    } else {
      note = absl::StrCat(MiB(c.capacity_bytes()),
                          " (default: no capacityBytes and no container memory limit)");
    }
  } else {
    note = absl::StrCat(MiB(c.capacity_bytes()), " (capacityBytes)");
    if (limits.memory_bytes && c.capacity_bytes() > *limits.memory_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "capacityBytes (", c.capacity_bytes(), ") exceeds the container memory limit (",
          *limits.memory_bytes, ", ", limits.source, "); lower it or leave it 0 to use ",
          "memoryFraction of the limit"));
    }
  }
  if (capacity_note != nullptr) *capacity_note = note;

  const uint64_t shard_bytes = c.capacity_bytes() / c.shards();
  if (shard_bytes < kMinShardBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "capacity ", c.capacity_bytes(), " bytes gives each of ", c.shards(), " shards only ",
        shard_bytes, " bytes; need at least ", kMinShardBytes,
        " per shard: raise capacityBytes or lower shards"));
  }
  if (c.max_entry_bytes() > kMaxEntryBytesLimit) {
    return absl::InvalidArgumentError(absl::StrCat("maxEntryBytes must be at most ",
                                                   kMaxEntryBytesLimit, ", got ",
                                                   c.max_entry_bytes()));
  }
  if (c.max_key_bytes() > c.max_entry_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("maxKeyBytes (", c.max_key_bytes(),
                                                   ") exceeds maxEntryBytes (",
                                                   c.max_entry_bytes(), ")"));
  }
  if (c.max_tags() > 10000) {
    return absl::InvalidArgumentError(
        absl::StrCat("maxTags must be at most 10000, got ", c.max_tags()));
  }
  return c;
}

absl::StatusOr<v1::CacheServiceConfig> LoadCacheConfig(const std::string& path,
                                                       const config::ContainerLimits& limits,
                                                       std::string* capacity_note) {
  v1::CacheServiceConfig c;
  absl::Status s = config::LoadJsonConfig(path, &c);
  if (!s.ok()) return s;
  absl::StatusOr<v1::CacheServiceConfig> done =
      FinalizeCacheConfig(std::move(c), limits, capacity_note);
  if (!done.ok()) {
    return absl::Status(done.status().code(), absl::StrCat(path, ": ", done.status().message()));
  }
  return done;
}

CacheStoreOptions StoreOptionsFromConfig(const v1::CacheServiceConfig& c) {
  CacheStoreOptions o;
  o.capacity_bytes = c.capacity_bytes();
  o.shards = c.shards();
  o.max_entry_bytes = c.max_entry_bytes();
  o.admission = c.admission();
  o.reap_interval = absl::Milliseconds(c.reap_interval_ms());
  return o;
}

#undef POOLSIDE_DEFAULT

}  // namespace poolside::cache
