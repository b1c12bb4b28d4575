#ifndef POOLSIDE_SERVICES_QUERY_NEAR_CACHE_H_
#define POOLSIDE_SERVICES_QUERY_NEAR_CACHE_H_

// NearCache: the query replica's in-process cache (L1) in front of its cache
// sidecar (L2). It keeps recently used results parsed, shared and immutable,
// so a hit costs a hash lookup: no sidecar call, no parse.
//
//   const uint64_t g = near.ReadGeneration();       // before the read begins
//   if (auto hit = near.Get(key)) return *hit;
//   v1::ResultSet r = ...;                          // from the sidecar or the database
//   near.Fill(key, std::make_shared<const v1::ResultSet>(r), ttl, tags, g);
//
// - Entries are fresh only: an entry lives min(ttl, max_ttl) and is gone after
//   (stale-while-revalidate is the sidecar's business). LRU within a byte
//   budget charged with each result's in-memory size (SpaceUsedLong) plus its
//   key and tags; sharded (common/cache/cache_store.h).
// - Invalidate() (this replica's NOTIFY, writes and flushes) must be called
//   before the same invalidation is sent to the sidecar.
// - OnEvent() applies the sidecar's WatchInvalidations stream. The cache
//   serves only while that stream is up: kBroken stops serving; kSubscribed
//   empties the cache, then serves again (events before it were missed).
//   The stream also echoes this replica's own invalidations once the sidecar
//   applied them. Stats tells what arrived over it apart (watch_events,
//   watch_generation): how far the watch trails the sidecar.
// - A fill loses against any invalidation covering it (one of its tags, a
//   prefix of its key, a flush) made after `read_generation` was taken.
//
// Thread-safe; every call is a short critical section.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/cache/cache_store.h"
#include "common/clock/clock.h"
#include "proto/poolside/v1/query.pb.h"
#include "services/query/cache_client.h"

namespace poolside::query {

class NearCache {
 public:
  struct Options {
    uint64_t capacity_bytes = uint64_t{64} << 20;
    uint32_t shards = 16;
    absl::Duration max_ttl = absl::Seconds(10);
    // Not owned; outlives the cache.
    Clock* clock = Clock::Real();
    // Removes expired entries in the background (real time).
    bool reaper = true;
  };
  struct Stats {
    uint64_t entries = 0, bytes = 0, capacity_bytes = 0;
    uint64_t hits = 0, misses = 0, fills = 0, fills_refused = 0, evictions = 0;
    // invalidations: applied to the store, own ones and the watch's (and the
    // flush of each subscription) alike.
    uint64_t invalidations = 0, subscriptions = 0;
    // Invalidations and deletes received over the sidecar's watch.
    uint64_t watch_events = 0;
    // The highest sidecar generation among the invalidations received over
    // the current watch (0 until one arrived). The stream is in the order the
    // sidecar applied them: every invalidation it had applied before it gave
    // out that generation has arrived too.
    uint64_t watch_generation = 0;
    bool serving = false;
  };

  explicit NearCache(Options options);

  // The generation a read beginning now passes to Fill().
  uint64_t ReadGeneration() const { return store_.generation(); }

  // A fresh result, or null (also while the sidecar's watch is not up).
  std::shared_ptr<const v1::ResultSet> Get(absl::string_view key);

  // Stores `result` unless an invalidation covering it came after
  // `read_generation`, or it does not fit. True if stored.
  bool Fill(absl::string_view key, std::shared_ptr<const v1::ResultSet> result, absl::Duration ttl,
            std::vector<std::string> tags, uint64_t read_generation);

  // This replica's own invalidations (tags; empty and `flush_all`: all).
  void Invalidate(const std::vector<std::string>& tags, bool flush_all = false);

  // The sidecar's watch stream.
  void OnEvent(const CacheInvalidationEvent& event);

  bool serving() const { return serving_.load(std::memory_order_acquire); }
  Stats GetStats() const;

 private:
  const absl::Duration max_ttl_;
  cache::BasicCacheStore<v1::ResultSet> store_;
  std::atomic<bool> serving_{false};
  std::atomic<uint64_t> hits_{0}, misses_{0}, fills_{0}, fills_refused_{0}, subscriptions_{0};
  std::atomic<uint64_t> watch_events_{0};
  // Written by OnEvent only (one call at a time).
  std::atomic<uint64_t> watch_generation_{0};
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_NEAR_CACHE_H_
