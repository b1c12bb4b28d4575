#ifndef POOLSIDE_SERVICES_CACHE_CACHE_STORE_H_
#define POOLSIDE_SERVICES_CACHE_CACHE_STORE_H_

// CacheStore: the cache sidecar's in-memory store (no gRPC types; the adapter
// is cache_service.h). Byte-bounded, sharded, LRU with optional TinyLFU
// admission, TTL with a stale window, tags, and invalidation generations.
//
//   CacheStoreOptions options;
//   options.capacity_bytes = 256 << 20;
//   CacheStore store(options);
//   store.StartReaper();
//   CacheStore::GetResult r = store.Get("k");
//   if (r.outcome == CacheStore::Outcome::kMiss) {
//     std::string v = ReadFromDatabase();
//     store.Set("k", v, absl::Seconds(30), absl::ZeroDuration(), {"orders"}, r.generation);
//   }
//   store.Invalidate({"orders"}, {}, false);   // a write to orders committed
//
// Memory: every entry is charged Charge(key, value, tags) bytes: key + value +
// tags + kEntryOverhead + kTagOverhead per tag (the bookkeeping: list node,
// index slots, expiry index, tag index). The budget is split evenly across the
// shards and a shard's charged bytes never exceed its share, so Stats().bytes
// never exceeds capacity_bytes. An entry larger than max_entry_bytes (key +
// value) or than a shard's share is refused as kTooLarge.
//
// Eviction: least recently used first within the key's shard (Get hits, STALE
// reads and Sets count as uses). With admission on, a new key that needs
// evictions is admitted only if its estimated access frequency (a count-min
// sketch per shard fed by every Get and Set of a key, halved periodically so
// old popularity fades) is strictly higher than that of every entry it would
// evict; otherwise nothing is evicted and the Set is kNotAdmitted. Expired
// victims never block admission. Replacing a resident key is always admitted.
//
// Expiry: an entry is fresh (kHit) for ttl, then kStale for stale; after that it
// is gone: removed when read (kMiss) and by Reap(), which StartReaper() runs
// every reap_interval on a background thread.
//
// Generations (see proto/poolside/v1/cache.proto): one counter, advanced by
// every Invalidate(); Get() returns its value. It starts at the clock's time in
// microseconds, so the generations of a restarted store are above every
// generation the previous process handed out. A Set with read_generation g != 0
// is refused (kInvalidated) when:
//   - g is above the current generation or below the store's first one (not a
//     generation this store issued: e.g. read before a restart);
//   - a flush, one of its tags, or a recorded prefix of its key was invalidated
//     with a generation > g;
//   - g is below the floor (below).
// The check and the insert happen under the key's shard lock, and Invalidate()
// records its generation before it removes entries shard by shard, so an
// Invalidate racing a Set either finds the entry and removes it or makes the
// Set fail. Set with read_generation 0 stores unconditionally.
//
// The per-tag and per-prefix generation records are bounded (max_tracked_tags,
// max_tracked_prefixes): when a map outgrows its bound the older half is
// forgotten and the floor is raised to the newest forgotten generation; a Set
// whose read_generation is below the floor is refused, since an invalidation it
// can no longer check might have covered it. A fill that read before that many
// invalidations were made is refused, never wrongly stored.
//
// Delete() is not an invalidation: it removes one key and advances nothing, so
// a fill that raced it may still be stored. Use Invalidate with the key as a
// prefix to fence fills of a key.
//
// Thread-safety: all methods are thread-safe. Each shard has its own std::mutex
// (held for hash lookups, list splices and value reference copies only: values
// are shared immutable strings, copied out after the lock is released); the
// generation records have one reader/writer lock taken by Sets whose
// read_generation is not the current one, and by Invalidate().

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"

namespace poolside::cache {

struct CacheStoreOptions {
  uint64_t capacity_bytes = uint64_t{256} << 20;
  // Rounded up to a power of two; at least 1.
  uint32_t shards = 16;
  // Largest key + value stored.
  uint64_t max_entry_bytes = uint64_t{4} << 20;
  bool admission = true;
  absl::Duration reap_interval = absl::Seconds(1);
  // Bounds of the generation records (see the header comment).
  size_t max_tracked_tags = 100000;
  size_t max_tracked_prefixes = 10000;
  // Not owned; outlives the store.
  Clock* clock = Clock::Real();
};

struct CacheStoreStats {
  uint64_t entries = 0;
  uint64_t bytes = 0;
  uint64_t capacity_bytes = 0;
  uint64_t hits = 0;
  uint64_t stale_hits = 0;
  uint64_t misses = 0;
  uint64_t sets = 0;
  uint64_t sets_rejected = 0;
  uint64_t evictions = 0;
  uint64_t expirations = 0;
  uint64_t invalidations = 0;
  // What invalidations named: tags, key prefixes, flushes of everything.
  uint64_t invalidated_tags = 0;
  uint64_t invalidated_prefixes = 0;
  uint64_t flushes = 0;
  uint64_t invalidated_entries = 0;
  uint64_t generation = 0;
  uint32_t shards = 0;
  // Generation records currently kept, and the floor.
  uint64_t tracked_tags = 0;
  uint64_t tracked_prefixes = 0;
  uint64_t floor_generation = 0;

  double hit_ratio() const {
    const uint64_t reads = hits + stale_hits + misses;
    return reads == 0 ? 0.0 : static_cast<double>(hits + stale_hits) / reads;
  }
};

class CacheStore {
 public:
  static constexpr uint64_t kEntryOverhead = 160;
  static constexpr uint64_t kTagOverhead = 48;

  enum class Outcome { kHit, kStale, kMiss };
  struct GetResult {
    Outcome outcome = Outcome::kMiss;
    // Null on a miss.
    std::shared_ptr<const std::string> value;
    uint64_t generation = 0;
    // kHit: until stale; kStale: until gone.
    absl::Duration remaining = absl::ZeroDuration();
  };

  enum class SetResult { kStored, kInvalidated, kTooLarge, kNotAdmitted };

  struct InvalidateResult {
    uint64_t removed = 0;
    uint64_t generation = 0;
  };

  explicit CacheStore(CacheStoreOptions options);
  // Stops the reaper.
  ~CacheStore();

  CacheStore(const CacheStore&) = delete;
  CacheStore& operator=(const CacheStore&) = delete;

  GetResult Get(absl::string_view key);

  // `ttl` > 0; `stale` >= 0. Replaces an existing entry of `key`.
  SetResult Set(absl::string_view key, std::string value, absl::Duration ttl,
                absl::Duration stale, std::vector<std::string> tags,
                uint64_t read_generation);

  // True if `key` was present (expired or not).
  bool Delete(absl::string_view key);

  // Gives the invalidation a new generation, records it for each tag and
  // prefix (or as a flush), then removes every covered entry. Empty prefixes
  // are ignored (use flush_all).
  InvalidateResult Invalidate(const std::vector<std::string>& tags,
                              const std::vector<std::string>& prefixes, bool flush_all);

  // Removes entries past their stale window; returns how many.
  uint64_t Reap();
  // Runs Reap() every reap_interval (real time) until destruction.
  void StartReaper();

  CacheStoreStats Stats() const;

  uint64_t generation() const { return generation_.load(std::memory_order_acquire); }
  uint64_t capacity_bytes() const { return shard_capacity_ * shards_.size(); }
  uint64_t shard_capacity() const { return shard_capacity_; }
  size_t shard_count() const { return shards_.size(); }
  // The shard `key` lives in.
  size_t ShardOf(absl::string_view key) const;

  static uint64_t Charge(absl::string_view key, size_t value_bytes,
                         const std::vector<std::string>& tags);

  // Test hook: runs inside Set() after the generation check passed and before
  // the entry is inserted, with the key's shard lock held. It must not call
  // into this store on the same thread.
  void SetBeforeInsertHookForTest(std::function<void()> hook) { before_insert_hook_ = std::move(hook); }

 private:
  struct Entry;
  using Lru = std::list<Entry>;

  struct Entry {
    std::string key;
    std::shared_ptr<const std::string> value;
    std::vector<std::string> tags;
    absl::Time fresh_until;
    absl::Time gone_at;
    uint64_t charge = 0;
  };

  // Count-min sketch (4 rows, counters saturating at 15, conservative
  // update); all counters halve after `sample` increments.
  class FrequencySketch {
   public:
    explicit FrequencySketch(size_t width);
    void Increment(uint64_t hash);
    int Estimate(uint64_t hash) const;

   private:
    size_t Index(uint64_t hash, int row) const;
    std::vector<uint8_t> counters_;
    size_t mask_;
    size_t additions_ = 0;
    size_t sample_;
  };

  struct Shard {
    explicit Shard(size_t sketch_width) : sketch(sketch_width) {}
    std::mutex mu;
    Lru lru ABSL_GUARDED_BY(mu);  // most recently used first
    absl::flat_hash_map<absl::string_view, Lru::iterator> index ABSL_GUARDED_BY(mu);
    // (gone_at, entry) for the reaper.
    std::set<std::pair<absl::Time, const Entry*>> expiry ABSL_GUARDED_BY(mu);
    absl::flat_hash_map<std::string, absl::flat_hash_set<const Entry*>> tag_index ABSL_GUARDED_BY(mu);
    FrequencySketch sketch ABSL_GUARDED_BY(mu);
    // Written under mu, read without it by Stats().
    std::atomic<uint64_t> bytes{0};
    std::atomic<uint64_t> entries{0};
  };

  enum class Removal { kDelete, kEvict, kExpire, kInvalidate };

  static uint64_t Hash(absl::string_view key);
  void RemoveLocked(Shard& shard, Lru::iterator it, Removal why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  // True if a fill read at `read_generation` may be stored. Called with the
  // key's shard lock held.
  bool GenerationAllows(absl::string_view key, const std::vector<std::string>& tags,
                        uint64_t read_generation) const;
  void PruneLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(gen_mu_);
  void ReaperLoop();

  const CacheStoreOptions options_;
  Clock* const clock_;
  uint64_t shard_capacity_ = 0;
  int shard_shift_ = 64;
  std::vector<std::unique_ptr<Shard>> shards_;

  std::atomic<uint64_t> generation_;
  const uint64_t first_generation_;
  mutable std::shared_mutex gen_mu_;
  uint64_t floor_generation_ ABSL_GUARDED_BY(gen_mu_);
  uint64_t flush_generation_ ABSL_GUARDED_BY(gen_mu_) = 0;
  absl::flat_hash_map<std::string, uint64_t> tag_generations_ ABSL_GUARDED_BY(gen_mu_);
  absl::flat_hash_map<std::string, uint64_t> prefix_generations_ ABSL_GUARDED_BY(gen_mu_);
  // Distinct lengths of the recorded prefixes -> how many prefixes have it.
  std::map<size_t, size_t> prefix_lengths_ ABSL_GUARDED_BY(gen_mu_);

  std::atomic<uint64_t> hits_{0}, stale_hits_{0}, misses_{0}, sets_{0}, sets_rejected_{0},
      evictions_{0}, expirations_{0}, invalidations_{0}, invalidated_entries_{0},
      invalidated_tags_{0}, invalidated_prefixes_{0}, flushes_{0};

  std::function<void()> before_insert_hook_;

  std::mutex reaper_mu_;
  std::condition_variable reaper_cv_;
  bool stopping_ ABSL_GUARDED_BY(reaper_mu_) = false;
  std::thread reaper_;
};

}  // namespace poolside::cache

#endif  // POOLSIDE_SERVICES_CACHE_CACHE_STORE_H_
