#include "services/cache/cache_config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
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
// An Invalidate's work on the queue thread grows with its tags and prefixes
// (common/cache/cache_store.h): these keep one request's share bounded.
constexpr uint32_t kMaxInvalidateTagsLimit = 100000;
constexpr uint32_t kMaxInvalidatePrefixesLimit = 1024;
constexpr uint32_t kMaxInvalidateBytesLimit = 16u << 20;

std::string MiB(uint64_t bytes) { return absl::StrCat(bytes >> 20, " MiB"); }

}  // namespace

absl::StatusOr<v1::CacheServiceConfig> FinalizeCacheConfig(v1::CacheServiceConfig c,
                                                           const config::ContainerLimits& detected,
                                                           std::string* capacity_note) {
  const config::ContainerLimits limits = config::EffectiveLimits(c.server(), detected);
  auto* server = c.mutable_server();
  POOLSIDE_DEFAULT(server, drain_timeout_ms, 10000u);
  if (absl::StartsWith(c.unix_socket(), "unix:")) {
    c.set_unix_socket(std::string(absl::StripPrefix(c.unix_socket(), "unix:")));
  }
  if (c.unix_socket().size() >= sizeof(sockaddr_un::sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unixSocket: path longer than ", sizeof(sockaddr_un::sun_path) - 1,
                     " bytes (a unix socket limit): ", c.unix_socket()));
  }
  if (!c.unix_socket().empty() && c.unix_socket()[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("unixSocket: must be an absolute path, got \"", c.unix_socket(), "\""));
  }
  if (server->listen().empty() && c.unix_socket().empty()) server->set_listen("127.0.0.1:50052");
  const bool tcp = !server->listen().empty() && !IsUnixAddress(server->listen());
  // server.tls applies to TCP only; without TCP it is checked only if given.
  if (tcp || server->has_tls()) {
    if (absl::Status s = config::ValidateServerTlsConfig(server->tls()); !s.ok()) return s;
  }
  if (tcp && !IsLoopbackAddress(server->listen()) && !CallsAuthenticated(c)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "server.listen \"", server->listen(),
        "\" is not a loopback address, and calls on it would not be authenticated: configure "
        "auth principals (auth.principalsFile, principalsEnv or principals: bearer tokens) or "
        "mutual TLS (server.tls certFile, keyFile, clientCaFile and requireClientCert: true); "
        "or listen on 127.0.0.1, or serve only the unix socket (unixSocket, no server.listen)"));
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
  POOLSIDE_DEFAULT(&c, max_invalidate_tags, 1024u);
  POOLSIDE_DEFAULT(&c, max_invalidate_prefixes, 64u);
  POOLSIDE_DEFAULT(&c, max_invalidate_bytes, 256u << 10);
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
    return absl::InvalidArgumentError(
        absl::StrCat("capacity ", c.capacity_bytes(), " bytes gives each of ", c.shards(),
                     " shards only ", shard_bytes, " bytes; need at least ", kMinShardBytes,
                     " per shard: raise capacityBytes or lower shards"));
  }
  if (c.max_entry_bytes() > kMaxEntryBytesLimit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "maxEntryBytes must be at most ", kMaxEntryBytesLimit, ", got ", c.max_entry_bytes()));
  }
  if (c.max_key_bytes() > c.max_entry_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "maxKeyBytes (", c.max_key_bytes(), ") exceeds maxEntryBytes (", c.max_entry_bytes(), ")"));
  }
  if (c.max_tags() > 10000) {
    return absl::InvalidArgumentError(
        absl::StrCat("maxTags must be at most 10000, got ", c.max_tags()));
  }
  if (c.max_invalidate_tags() > kMaxInvalidateTagsLimit) {
    return absl::InvalidArgumentError(absl::StrCat("maxInvalidateTags must be at most ",
                                                   kMaxInvalidateTagsLimit, ", got ",
                                                   c.max_invalidate_tags()));
  }
  if (c.max_invalidate_prefixes() > kMaxInvalidatePrefixesLimit) {
    return absl::InvalidArgumentError(absl::StrCat("maxInvalidatePrefixes must be at most ",
                                                   kMaxInvalidatePrefixesLimit, ", got ",
                                                   c.max_invalidate_prefixes()));
  }
  if (c.max_invalidate_bytes() < c.max_key_bytes() ||
      c.max_invalidate_bytes() > kMaxInvalidateBytesLimit) {
    return absl::InvalidArgumentError(
        absl::StrCat("maxInvalidateBytes must be between maxKeyBytes (", c.max_key_bytes(),
                     ") and ", kMaxInvalidateBytesLimit, ", got ", c.max_invalidate_bytes()));
  }
  return c;
}

absl::StatusOr<v1::CacheServiceConfig> LoadCacheConfig(const std::string& path,
                                                       const config::ContainerLimits& limits,
                                                       std::string* capacity_note,
                                                       const CacheConfigOverrides& overrides) {
  v1::CacheServiceConfig c;
  absl::Status s = config::LoadJsonConfig(path, &c);
  if (!s.ok()) return s;
  if (!overrides.listen.empty()) c.mutable_server()->set_listen(overrides.listen);
  if (!overrides.unix_socket.empty()) c.set_unix_socket(overrides.unix_socket);
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

bool IsUnixAddress(absl::string_view address) {
  return absl::StartsWith(address, "unix:") || absl::StartsWith(address, "unix-abstract:");
}

bool IsLoopbackAddress(absl::string_view address) {
  absl::string_view host = address;
  if (absl::ConsumePrefix(&host, "[")) {  // [IPv6]:port
    const size_t end = host.find(']');
    if (end == absl::string_view::npos) return false;
    host = host.substr(0, end);
  } else {
    const size_t colon = host.rfind(':');
    if (colon == absl::string_view::npos) return false;
    host = host.substr(0, colon);
  }
  if (host == "localhost") return true;
  const std::string h(host);
  in_addr v4;
  if (inet_pton(AF_INET, h.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6;
  if (inet_pton(AF_INET6, h.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
  }
  return false;
}

bool PrincipalsConfigured(const v1::AuthConfig& auth) {
  return !auth.disabled() && (auth.principals_size() > 0 || !auth.principals_file().empty() ||
                              !auth.principals_env().empty());
}

bool CallsAuthenticated(const v1::CacheServiceConfig& config) {
  const v1::TlsConfig& tls = config.server().tls();
  return PrincipalsConfigured(config.auth()) ||
         (!tls.plaintext() && !tls.cert_file().empty() && tls.require_client_cert());
}

#undef POOLSIDE_DEFAULT

}  // namespace poolside::cache
