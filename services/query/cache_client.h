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
  // kHit: how long the entry stays fresh.
  absl::Duration remaining = absl::ZeroDuration();
};

struct CacheFill {
  std::string key;
  std::string value;
  absl::Duration ttl;
  absl::Duration stale;
  std::vector<std::string> tags;
  uint64_t read_generation = 0;
};

// What the sidecar applied (CacheService.WatchInvalidations), or the state of
// the watch itself.
struct CacheInvalidationEvent {
  enum Kind {
    kSubscribed,  // a watch is established: events applied before it were not seen
    kInvalidate,  // tags / prefixes / flush_all
    kDelete,      // key
    kBroken,      // the watch ended: events may be missed until kSubscribed
  };
  Kind kind = kInvalidate;
  std::vector<std::string> tags;
  std::vector<std::string> prefixes;
  bool flush_all = false;
  std::string key;
  // kInvalidate: the sidecar's generation for it.
  uint64_t generation = 0;
};

class CacheClient {
 public:
  virtual ~CacheClient() = default;
  virtual void Get(const std::string& key,
                   std::function<void(absl::StatusOr<CacheLookup>)> done) = 0;
  // OK(true) stored; OK(false) refused by the sidecar (raced an invalidation,
  // too large, not admitted).
  virtual void Set(CacheFill fill, std::function<void(absl::StatusOr<bool>)> done) = 0;
  // `tags` empty and `flush_all`: everything. `source` names the reason.
  virtual void Invalidate(std::vector<std::string> tags, bool flush_all, std::string source,
                          absl::Duration timeout, std::function<void(absl::Status)> done) = 0;

  // Watches the sidecar's invalidations until StopWatching(), watching again
  // whenever a watch ends. `on_event` is called from one thread at a time, in
  // order: kSubscribed when a watch is established, then what the sidecar
  // applies, kBroken when it ends. False: this client cannot watch (and never
  // calls `on_event`).
  virtual bool Watch(std::function<void(const CacheInvalidationEvent&)> on_event) { return false; }
  // Ends the watch; `on_event` is not called once this returned.
  virtual void StopWatching() {}
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_CACHE_CLIENT_H_
