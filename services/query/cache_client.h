#ifndef POOLSIDE_SERVICES_QUERY_CACHE_CLIENT_H_
#define POOLSIDE_SERVICES_QUERY_CACHE_CLIENT_H_

// What the query core needs from its cache sidecar, without gRPC: the adapter
// (sidecar_client.h) implements it over the CacheService, unit tests with a
// fake. Every call is asynchronous and bounded by the implementation's own
// timeout; `done` runs exactly once, on any thread, and must not block.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace poolside::query {

struct CacheLookup {
  enum Outcome { kHit, kStale, kMiss };
  Outcome outcome = kMiss;
  std::string value;
  // The sidecar's generation at the read; a fill after a miss carries it.
  uint64_t generation = 0;
};

struct CacheFill {
  std::string key;
  std::string value;
  absl::Duration ttl;
  absl::Duration stale;
  std::vector<std::string> tags;
  uint64_t read_generation = 0;
};

class CacheClient {
 public:
  virtual ~CacheClient() = default;
  virtual void Get(const std::string& key, std::function<void(absl::StatusOr<CacheLookup>)> done) = 0;
  // OK(true) stored; OK(false) refused by the sidecar (raced an invalidation,
  // too large, not admitted).
  virtual void Set(CacheFill fill, std::function<void(absl::StatusOr<bool>)> done) = 0;
  // `tags` empty and `flush_all`: everything. `source` names the reason.
  virtual void Invalidate(std::vector<std::string> tags, bool flush_all, std::string source,
                          absl::Duration timeout, std::function<void(absl::Status)> done) = 0;
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_CACHE_CLIENT_H_
