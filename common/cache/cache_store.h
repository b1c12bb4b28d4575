#ifndef POOLSIDE_COMMON_CACHE_CACHE_STORE_H_
#define POOLSIDE_COMMON_CACHE_CACHE_STORE_H_

// BasicCacheStore<Value>: an in-memory store of shared immutable values.
// Byte-bounded, sharded, LRU with optional TinyLFU admission, TTL with a stale
// window, tags, and invalidation generations. CacheStore (values are strings)
// is the cache sidecar's store (services/cache); the query service keeps
// parsed results in a BasicCacheStore<v1::ResultSet> as its near cache.
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
// Values: Set(key, std::string, ...) (CacheStore) charges the string's size;
// Set(key, std::shared_ptr<const Value>, value_bytes, ...) stores any value
// and charges the `value_bytes` the caller states (e.g. its memory footprint).
// Get() hands out the shared value: it is never copied under a lock.
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
// microseconds (far from 0, and above every generation an earlier process
// could have handed out unless the clock stepped back by more than that
// process's lifetime minus its invalidations), so the generations of two
// incarnations of a store do not overlap. A Set's read_generation g must be
// one this store handed out: 0, below the store's first generation (e.g. read
// before a restart) or above the current one is refused as
// kUnknownGeneration, before anything else, and feeds nothing (not even the
// admission sketch). No Set stores unconditionally: a caller with nothing to
// compare against reads the current generation() first. A Set with a handed-
// out g is refused as kInvalidated when:
//   - a flush, one of its tags, or a recorded prefix of its key was invalidated
//     with a generation > g;
//   - g is below the floor (below).
// The check and the insert happen under the key's shard lock, and Invalidate()
// records its generation before it removes entries shard by shard, so an
// Invalidate racing a Set either finds the entry and removes it or makes the
// Set fail.
//
// The per-tag and per-prefix generation records are bounded in count
// (max_tracked_tags, max_tracked_prefixes), in bytes (max_tracked_bytes, each
// map) and, for prefixes, in distinct lengths (max_tracked_prefix_lengths: a
// Set checks one prefix of its key per recorded length). When a bound is
// passed the older half of that map is forgotten and the floor is raised to
// the newest forgotten generation; a Set whose read_generation is below the
// floor is refused, since an invalidation it can no longer check might have
// covered it. A fill that read before that many invalidations were made is
// refused, never wrongly stored.
//
// Cost of Invalidate(): each shard is visited once under its lock; a tag costs
// one hash lookup per shard, a prefix one ordered-index lookup per shard
// (O(log entries)), plus the removal of each covered entry; a flush is linear
// in the entries it removes. Nothing scans the entries per tag or prefix, so a
// request's cost is bounded by its tags and prefixes (the sidecar bounds those
// per request) and by what it removes.
//
// Delete() is not an invalidation: it removes one key and advances nothing, so
// a fill that raced it may still be stored. Use Invalidate with the key as a
// prefix to fence fills of a key.
//
// Thread-safety: all methods are thread-safe. Each shard has its own mutex
// (held for hash lookups, list splices and value reference copies only: values
// are shared and immutable, copied out after the lock is released); the
// generation records have one reader/writer lock taken by Sets whose
// read_generation is not the current one, and by Invalidate().

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"
#include "common/sync/mutex.h"

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
  // Bytes of each of the two record maps (names + kRecordOverhead each).
  uint64_t max_tracked_bytes = uint64_t{16} << 20;
  size_t max_tracked_prefix_lengths = 32;
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
  // Generation records currently kept (count and bytes), and the floor.
  uint64_t tracked_tags = 0;
  uint64_t tracked_prefixes = 0;
  uint64_t tracked_bytes = 0;
  uint64_t floor_generation = 0;
  // Sets refused because their read_generation was not one this store
  // handed out (included in sets_rejected).
  uint64_t sets_unknown_generation = 0;

  double hit_ratio() const {
    const uint64_t reads = hits + stale_hits + misses;
    return reads == 0 ? 0.0 : static_cast<double>(hits + stale_hits) / reads;
  }
};

namespace cache_internal {

// A well-mixed hash of `key`, deterministic across runs (unlike absl::Hash),
// which keeps shard placement, and so eviction order, reproducible in tests.
uint64_t Hash(absl::string_view key);
uint64_t NextPowerOfTwo(uint64_t v);
uint64_t Charge(absl::string_view key, size_t value_bytes, const std::vector<std::string>& tags,
                uint64_t entry_overhead, uint64_t tag_overhead);
// Reap() releases a shard's lock after this many removals so readers are not
// held up by a large batch of expirations.
constexpr int kReapBatch = 1024;

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

}  // namespace cache_internal

template <typename Value>
class BasicCacheStore {
 public:
  static constexpr uint64_t kEntryOverhead = 184;
  static constexpr uint64_t kTagOverhead = 48;
  // Charged per generation record on top of its name (map slot, heap block).
  static constexpr uint64_t kRecordOverhead = 48;

  enum class Outcome { kHit, kStale, kMiss };
  struct GetResult {
    Outcome outcome = Outcome::kMiss;
    // Null on a miss.
    std::shared_ptr<const Value> value;
    uint64_t generation = 0;
    // kHit: until stale; kStale: until gone.
    absl::Duration remaining = absl::ZeroDuration();
  };

  // kUnknownGeneration: read_generation is not one this store handed out
  // (0, from before it started, or from the future); nothing was stored.
  enum class SetResult { kStored, kInvalidated, kTooLarge, kNotAdmitted, kUnknownGeneration };

  struct InvalidateResult {
    uint64_t removed = 0;
    uint64_t generation = 0;
  };

  explicit BasicCacheStore(CacheStoreOptions options);
  // Stops the reaper.
  ~BasicCacheStore();

  BasicCacheStore(const BasicCacheStore&) = delete;
  BasicCacheStore& operator=(const BasicCacheStore&) = delete;

  GetResult Get(absl::string_view key);

  // `ttl` > 0; `stale` >= 0; `read_generation`: what Get() (or generation())
  // returned before the value was read. Replaces an existing entry of `key`.
  // Charges value.size() (Value must have one: std::string).
  SetResult Set(absl::string_view key, Value value, absl::Duration ttl, absl::Duration stale,
                std::vector<std::string> tags, uint64_t read_generation);
  // The same for a value already shared, charged `value_bytes`.
  SetResult Set(absl::string_view key, std::shared_ptr<const Value> value, uint64_t value_bytes,
                absl::Duration ttl, absl::Duration stale, std::vector<std::string> tags,
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
  // The first generation this store handed out.
  uint64_t first_generation() const { return first_generation_; }
  // True if `g` is a generation this store handed out (first..current).
  bool Issued(uint64_t g) const { return g >= first_generation_ && g <= generation(); }
  uint64_t capacity_bytes() const { return shard_capacity_ * shards_.size(); }
  uint64_t shard_capacity() const { return shard_capacity_; }
  size_t shard_count() const { return shards_.size(); }
  // The shard `key` lives in.
  size_t ShardOf(absl::string_view key) const;

  static uint64_t Charge(absl::string_view key, size_t value_bytes,
                         const std::vector<std::string>& tags) {
    return cache_internal::Charge(key, value_bytes, tags, kEntryOverhead, kTagOverhead);
  }

  // Test hook: runs inside Set() after the generation check passed and before
  // the entry is inserted, with the key's shard lock held. It must not call
  // into this store on the same thread.
  void SetBeforeInsertHookForTest(std::function<void()> hook) {
    before_insert_hook_ = std::move(hook);
  }

 private:
  struct Entry;
  using Lru = std::list<Entry>;

  struct Entry {
    std::string key;
    std::shared_ptr<const Value> value;
    std::vector<std::string> tags;
    absl::Time fresh_until;
    absl::Time gone_at;
    uint64_t charge = 0;
  };

  struct Shard {
    explicit Shard(size_t sketch_width) : sketch(sketch_width) {}
    // sync::Mutex and SharedMutex here: TSan must see these locks
    // (common/sync/mutex.h).
    sync::Mutex mu;
    Lru lru ABSL_GUARDED_BY(mu);  // most recently used first
    absl::flat_hash_map<absl::string_view, typename Lru::iterator> index ABSL_GUARDED_BY(mu);
    // The same keys in byte order: a prefix's entries are one range.
    absl::btree_set<absl::string_view> ordered ABSL_GUARDED_BY(mu);
    // (gone_at, entry) for the reaper.
    std::set<std::pair<absl::Time, const Entry*>> expiry ABSL_GUARDED_BY(mu);
    absl::flat_hash_map<std::string, absl::flat_hash_set<const Entry*>> tag_index
        ABSL_GUARDED_BY(mu);
    cache_internal::FrequencySketch sketch ABSL_GUARDED_BY(mu);
    // Written under mu, read without it by Stats().
    std::atomic<uint64_t> bytes{0};
    std::atomic<uint64_t> entries{0};
  };

  enum class Removal { kDelete, kEvict, kExpire, kInvalidate };

  void RemoveLocked(Shard& shard, typename Lru::iterator it, Removal why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  // True if a fill read at `read_generation` may be stored. Called with the
  // key's shard lock held.
  bool GenerationAllows(absl::string_view key, const std::vector<std::string>& tags,
                        uint64_t read_generation) const;
  void PruneLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(gen_mu_);
  // Removes every entry of `shard` whose key starts with `prefix`; returns how many.
  uint64_t RemovePrefixLocked(Shard& shard, absl::string_view prefix)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  void ReaperLoop();

  const CacheStoreOptions options_;
  Clock* const clock_;
  uint64_t shard_capacity_ = 0;
  int shard_shift_ = 64;
  std::vector<std::unique_ptr<Shard>> shards_;

  std::atomic<uint64_t> generation_;
  const uint64_t first_generation_;
  mutable sync::SharedMutex gen_mu_;
  uint64_t floor_generation_ ABSL_GUARDED_BY(gen_mu_);
  uint64_t flush_generation_ ABSL_GUARDED_BY(gen_mu_) = 0;
  absl::flat_hash_map<std::string, uint64_t> tag_generations_ ABSL_GUARDED_BY(gen_mu_);
  absl::flat_hash_map<std::string, uint64_t> prefix_generations_ ABSL_GUARDED_BY(gen_mu_);
  // Charged bytes of each map (names + kRecordOverhead).
  uint64_t tag_record_bytes_ ABSL_GUARDED_BY(gen_mu_) = 0;
  uint64_t prefix_record_bytes_ ABSL_GUARDED_BY(gen_mu_) = 0;
  // Distinct lengths of the recorded prefixes -> how many prefixes have it.
  std::map<size_t, size_t> prefix_lengths_ ABSL_GUARDED_BY(gen_mu_);

  std::atomic<uint64_t> hits_{0}, stale_hits_{0}, misses_{0}, sets_{0}, sets_rejected_{0},
      evictions_{0}, expirations_{0}, invalidations_{0}, invalidated_entries_{0},
      invalidated_tags_{0}, invalidated_prefixes_{0}, flushes_{0}, sets_unknown_generation_{0};

  std::function<void()> before_insert_hook_;

  sync::Mutex reaper_mu_;
  sync::CondVar reaper_cv_;
  bool stopping_ ABSL_GUARDED_BY(reaper_mu_) = false;
  std::thread reaper_;
};

using CacheStore = BasicCacheStore<std::string>;
extern template class BasicCacheStore<std::string>;

// Implementation details follow.

template <typename Value>
BasicCacheStore<Value>::BasicCacheStore(CacheStoreOptions options)
    : options_(std::move(options)),
      clock_(options_.clock),
      generation_(std::max<int64_t>(1, absl::ToUnixMicros(options_.clock->Now()))),
      first_generation_(generation_.load()),
      floor_generation_(first_generation_) {
  const uint64_t n = cache_internal::NextPowerOfTwo(std::max<uint32_t>(1, options_.shards));
  int bits = 0;
  while ((uint64_t{1} << bits) < n) ++bits;
  shard_shift_ = 64 - bits;
  shard_capacity_ = options_.capacity_bytes / n;
  // One column per 128 bytes of budget: several per entry even for small
  // entries, so collisions rarely decide admission. Costs 4 bytes per column
  // (about 3% of the budget, not counted in it), at most 1 MiB per shard.
  const uint64_t width = std::clamp<uint64_t>(cache_internal::NextPowerOfTwo(shard_capacity_ / 128),
                                              1024, uint64_t{1} << 18);
  for (uint64_t i = 0; i < n; ++i) shards_.push_back(std::make_unique<Shard>(width));
}

template <typename Value>
BasicCacheStore<Value>::~BasicCacheStore() {
  {
    sync::MutexLock lock(&reaper_mu_);
    stopping_ = true;
  }
  reaper_cv_.SignalAll();
  if (reaper_.joinable()) reaper_.join();
}

template <typename Value>
size_t BasicCacheStore<Value>::ShardOf(absl::string_view key) const {
  return shard_shift_ >= 64 ? 0 : static_cast<size_t>(cache_internal::Hash(key) >> shard_shift_);
}

template <typename Value>
void BasicCacheStore<Value>::RemoveLocked(Shard& shard, typename Lru::iterator it, Removal why) {
  const Entry& e = *it;
  for (const std::string& tag : e.tags) {
    auto t = shard.tag_index.find(tag);
    if (t == shard.tag_index.end()) continue;
    t->second.erase(&e);
    if (t->second.empty()) shard.tag_index.erase(t);
  }
  shard.expiry.erase({e.gone_at, &e});
  shard.ordered.erase(absl::string_view(e.key));
  shard.index.erase(absl::string_view(e.key));
  shard.bytes.store(shard.bytes.load(std::memory_order_relaxed) - e.charge,
                    std::memory_order_relaxed);
  shard.entries.store(shard.entries.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  shard.lru.erase(it);
  switch (why) {
    case Removal::kDelete:
      break;
    case Removal::kEvict:
      evictions_.fetch_add(1, std::memory_order_relaxed);
      break;
    case Removal::kExpire:
      expirations_.fetch_add(1, std::memory_order_relaxed);
      break;
    case Removal::kInvalidate:
      invalidated_entries_.fetch_add(1, std::memory_order_relaxed);
      break;
  }
}

template <typename Value>
typename BasicCacheStore<Value>::GetResult BasicCacheStore<Value>::Get(absl::string_view key) {
  const uint64_t h = cache_internal::Hash(key);
  Shard& shard = *shards_[shard_shift_ >= 64 ? 0 : h >> shard_shift_];
  GetResult result;
  sync::MutexLock lock(&shard.mu);
  result.generation = generation_.load(std::memory_order_acquire);
  if (options_.admission) shard.sketch.Increment(h);
  auto found = shard.index.find(key);
  if (found == shard.index.end()) {
    misses_.fetch_add(1, std::memory_order_relaxed);
    return result;
  }
  const absl::Time now = clock_->Now();
  typename Lru::iterator it = found->second;
  if (now >= it->gone_at) {
    RemoveLocked(shard, it, Removal::kExpire);
    misses_.fetch_add(1, std::memory_order_relaxed);
    return result;
  }
  if (now >= it->fresh_until) {
    result.outcome = Outcome::kStale;
    result.remaining = it->gone_at - now;
    stale_hits_.fetch_add(1, std::memory_order_relaxed);
  } else {
    result.outcome = Outcome::kHit;
    result.remaining = it->fresh_until - now;
    hits_.fetch_add(1, std::memory_order_relaxed);
  }
  result.value = it->value;
  shard.lru.splice(shard.lru.begin(), shard.lru, it);
  return result;
}

template <typename Value>
bool BasicCacheStore<Value>::GenerationAllows(absl::string_view key,
                                              const std::vector<std::string>& tags,
                                              uint64_t read_generation) const {
  const uint64_t current = generation_.load(std::memory_order_acquire);
  // No invalidation since the read. One that takes a newer generation now
  // removes shard entries only after our shard lock is released, so it will
  // find this entry.
  if (read_generation == current) return true;
  sync::ReaderMutexLock lock(&gen_mu_);
  if (floor_generation_ > read_generation || flush_generation_ > read_generation) return false;
  for (const std::string& tag : tags) {
    auto it = tag_generations_.find(tag);
    if (it != tag_generations_.end() && it->second > read_generation) return false;
  }
  for (const auto& [length, count] : prefix_lengths_) {
    if (length > key.size()) break;
    auto it = prefix_generations_.find(key.substr(0, length));
    if (it != prefix_generations_.end() && it->second > read_generation) return false;
  }
  return true;
}

template <typename Value>
typename BasicCacheStore<Value>::SetResult BasicCacheStore<Value>::Set(
    absl::string_view key, Value value, absl::Duration ttl, absl::Duration stale,
    std::vector<std::string> tags, uint64_t read_generation) {
  const uint64_t value_bytes = value.size();
  return Set(key, std::make_shared<const Value>(std::move(value)), value_bytes, ttl, stale,
             std::move(tags), read_generation);
}

template <typename Value>
typename BasicCacheStore<Value>::SetResult BasicCacheStore<Value>::Set(
    absl::string_view key, std::shared_ptr<const Value> shared_value, uint64_t value_bytes,
    absl::Duration ttl, absl::Duration stale, std::vector<std::string> tags,
    uint64_t read_generation) {
  // Generations only grow: one handed out now stays handed out.
  if (!Issued(read_generation)) {
    sets_rejected_.fetch_add(1, std::memory_order_relaxed);
    sets_unknown_generation_.fetch_add(1, std::memory_order_relaxed);
    return SetResult::kUnknownGeneration;
  }
  std::sort(tags.begin(), tags.end());
  tags.erase(std::unique(tags.begin(), tags.end()), tags.end());
  const uint64_t charge = Charge(key, value_bytes, tags);
  const uint64_t h = cache_internal::Hash(key);
  Shard& shard = *shards_[shard_shift_ >= 64 ? 0 : h >> shard_shift_];
  if (key.size() + value_bytes > options_.max_entry_bytes || charge > shard_capacity_) {
    sets_rejected_.fetch_add(1, std::memory_order_relaxed);
    return SetResult::kTooLarge;
  }

  sync::MutexLock lock(&shard.mu);
  if (options_.admission) shard.sketch.Increment(h);
  if (!GenerationAllows(key, tags, read_generation)) {
    sets_rejected_.fetch_add(1, std::memory_order_relaxed);
    return SetResult::kInvalidated;
  }
  const absl::Time now = clock_->Now();
  auto found = shard.index.find(key);
  const bool resident = found != shard.index.end();
  const Entry* existing = resident ? &*found->second : nullptr;
  uint64_t used = shard.bytes.load(std::memory_order_relaxed) - (resident ? existing->charge : 0);

  // Victims from the LRU end until the new entry fits.
  std::vector<typename Lru::iterator> victims;
  if (used + charge > shard_capacity_) {
    const int candidate = options_.admission && !resident ? shard.sketch.Estimate(h) : 16;
    for (auto r = shard.lru.rbegin(); r != shard.lru.rend() && used + charge > shard_capacity_;
         ++r) {
      if (&*r == existing) continue;
      const bool expired = now >= r->gone_at;
      if (!expired && candidate <= shard.sketch.Estimate(cache_internal::Hash(r->key))) {
        sets_rejected_.fetch_add(1, std::memory_order_relaxed);
        return SetResult::kNotAdmitted;
      }
      victims.push_back(std::prev(r.base()));
      used -= r->charge;
    }
  }
  if (before_insert_hook_) before_insert_hook_();
  if (resident) RemoveLocked(shard, found->second, Removal::kDelete);
  for (typename Lru::iterator v : victims) {
    RemoveLocked(shard, v, now >= v->gone_at ? Removal::kExpire : Removal::kEvict);
  }

  shard.lru.push_front(Entry{std::string(key), std::move(shared_value), std::move(tags), now + ttl,
                             now + ttl + stale, charge});
  Entry& e = shard.lru.front();
  shard.index.emplace(absl::string_view(e.key), shard.lru.begin());
  shard.ordered.insert(absl::string_view(e.key));
  shard.expiry.emplace(e.gone_at, &e);
  for (const std::string& tag : e.tags) shard.tag_index[tag].insert(&e);
  shard.bytes.store(shard.bytes.load(std::memory_order_relaxed) + charge,
                    std::memory_order_relaxed);
  shard.entries.store(shard.entries.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  sets_.fetch_add(1, std::memory_order_relaxed);
  return SetResult::kStored;
}

template <typename Value>
bool BasicCacheStore<Value>::Delete(absl::string_view key) {
  Shard& shard = *shards_[ShardOf(key)];
  sync::MutexLock lock(&shard.mu);
  auto found = shard.index.find(key);
  if (found == shard.index.end()) return false;
  RemoveLocked(shard, found->second, Removal::kDelete);
  return true;
}

template <typename Value>
void BasicCacheStore<Value>::PruneLocked() {
  // Forgets the older half of `records` (by generation) and raises the floor
  // to the newest generation forgotten.
  auto forget_older_half =
      [this](absl::flat_hash_map<std::string, uint64_t>& records, uint64_t& bytes, bool prefixes)
          ABSL_EXCLUSIVE_LOCKS_REQUIRED(gen_mu_) {
            std::vector<uint64_t> generations;
            generations.reserve(records.size());
            for (const auto& [name, g] : records) generations.push_back(g);
            auto middle = generations.begin() + generations.size() / 2;
            std::nth_element(generations.begin(), middle, generations.end());
            const uint64_t forget_upto = *middle;
            for (auto it = records.begin(); it != records.end();) {
              if (it->second > forget_upto) {
                ++it;
                continue;
              }
              if (prefixes) {
                auto len = prefix_lengths_.find(it->first.size());
                if (--len->second == 0) prefix_lengths_.erase(len);
              }
              bytes -= it->first.size() + kRecordOverhead;
              records.erase(it++);
            }
            floor_generation_ = std::max(floor_generation_, forget_upto);
          };
  const uint64_t max_bytes = std::max<uint64_t>(options_.max_tracked_bytes, 1);
  while (!tag_generations_.empty() &&
         (tag_generations_.size() > std::max<size_t>(options_.max_tracked_tags, 1) ||
          tag_record_bytes_ > max_bytes)) {
    forget_older_half(tag_generations_, tag_record_bytes_, false);
  }
  while (!prefix_generations_.empty() &&
         (prefix_generations_.size() > std::max<size_t>(options_.max_tracked_prefixes, 1) ||
          prefix_record_bytes_ > max_bytes ||
          prefix_lengths_.size() > std::max<size_t>(options_.max_tracked_prefix_lengths, 1))) {
    forget_older_half(prefix_generations_, prefix_record_bytes_, true);
  }
}

template <typename Value>
uint64_t BasicCacheStore<Value>::RemovePrefixLocked(Shard& shard, absl::string_view prefix) {
  uint64_t removed = 0;
  while (true) {
    auto it = shard.ordered.lower_bound(prefix);
    if (it == shard.ordered.end() || !absl::StartsWith(*it, prefix)) return removed;
    RemoveLocked(shard, shard.index.find(*it)->second, Removal::kInvalidate);
    ++removed;
  }
}

template <typename Value>
typename BasicCacheStore<Value>::InvalidateResult BasicCacheStore<Value>::Invalidate(
    const std::vector<std::string>& tags, const std::vector<std::string>& prefixes,
    bool flush_all) {
  InvalidateResult result;
  std::vector<absl::string_view> live_prefixes;
  for (const std::string& p : prefixes) {
    if (!p.empty()) live_prefixes.push_back(p);
  }
  {
    // Recorded before any entry is removed: a Set that checks after this sees
    // the new generation; one that checked before holds its shard lock until
    // its entry is in, so the removal pass below finds it.
    sync::WriterMutexLock lock(&gen_mu_);
    result.generation = generation_.fetch_add(1, std::memory_order_acq_rel) + 1;
    if (flush_all) flush_generation_ = result.generation;
    for (const std::string& tag : tags) {
      auto [it, inserted] = tag_generations_.insert_or_assign(tag, result.generation);
      if (inserted) tag_record_bytes_ += tag.size() + kRecordOverhead;
    }
    for (absl::string_view p : live_prefixes) {
      auto [it, inserted] = prefix_generations_.insert_or_assign(std::string(p), result.generation);
      if (inserted) {
        ++prefix_lengths_[p.size()];
        prefix_record_bytes_ += p.size() + kRecordOverhead;
      }
    }
    PruneLocked();
  }
  invalidations_.fetch_add(1, std::memory_order_relaxed);
  invalidated_tags_.fetch_add(tags.size(), std::memory_order_relaxed);
  invalidated_prefixes_.fetch_add(live_prefixes.size(), std::memory_order_relaxed);
  if (flush_all) flushes_.fetch_add(1, std::memory_order_relaxed);

  for (auto& shard_ptr : shards_) {
    Shard& shard = *shard_ptr;
    sync::MutexLock lock(&shard.mu);
    if (flush_all) {
      const uint64_t n = shard.entries.load(std::memory_order_relaxed);
      result.removed += n;
      invalidated_entries_.fetch_add(n, std::memory_order_relaxed);
      shard.index.clear();
      shard.ordered.clear();
      shard.expiry.clear();
      shard.tag_index.clear();
      shard.lru.clear();
      shard.bytes.store(0, std::memory_order_relaxed);
      shard.entries.store(0, std::memory_order_relaxed);
      continue;
    }
    for (const std::string& tag : tags) {
      auto t = shard.tag_index.find(tag);
      if (t == shard.tag_index.end()) continue;
      std::vector<const Entry*> covered(t->second.begin(), t->second.end());
      for (const Entry* e : covered) {
        RemoveLocked(shard, shard.index.find(absl::string_view(e->key))->second,
                     Removal::kInvalidate);
        ++result.removed;
      }
    }
    for (absl::string_view p : live_prefixes) result.removed += RemovePrefixLocked(shard, p);
  }
  return result;
}

template <typename Value>
uint64_t BasicCacheStore<Value>::Reap() {
  uint64_t removed = 0;
  for (auto& shard_ptr : shards_) {
    Shard& shard = *shard_ptr;
    bool more = true;
    while (more) {
      sync::MutexLock lock(&shard.mu);
      const absl::Time now = clock_->Now();
      int batch = 0;
      while (!shard.expiry.empty() && shard.expiry.begin()->first <= now &&
             batch < cache_internal::kReapBatch) {
        const Entry* e = shard.expiry.begin()->second;
        RemoveLocked(shard, shard.index.find(absl::string_view(e->key))->second, Removal::kExpire);
        ++batch;
      }
      removed += batch;
      more = batch == cache_internal::kReapBatch;
    }
  }
  return removed;
}

template <typename Value>
void BasicCacheStore<Value>::StartReaper() {
  sync::MutexLock lock(&reaper_mu_);
  if (reaper_.joinable() || stopping_) return;
  reaper_ = std::thread([this] { ReaperLoop(); });
}

template <typename Value>
void BasicCacheStore<Value>::ReaperLoop() {
  sync::MutexLock lock(&reaper_mu_);
  while (!stopping_) {
    const auto wake_at =
        std::chrono::steady_clock::now() + absl::ToChronoMilliseconds(options_.reap_interval);
    while (!stopping_ && reaper_cv_.WaitUntil(&reaper_mu_, wake_at)) continue;
    if (stopping_) break;
    lock.Unlock();
    Reap();
    lock.Lock();
  }
}

template <typename Value>
CacheStoreStats BasicCacheStore<Value>::Stats() const {
  CacheStoreStats s;
  for (const auto& shard : shards_) {
    s.entries += shard->entries.load(std::memory_order_relaxed);
    s.bytes += shard->bytes.load(std::memory_order_relaxed);
  }
  s.capacity_bytes = capacity_bytes();
  s.hits = hits_.load(std::memory_order_relaxed);
  s.stale_hits = stale_hits_.load(std::memory_order_relaxed);
  s.misses = misses_.load(std::memory_order_relaxed);
  s.sets = sets_.load(std::memory_order_relaxed);
  s.sets_rejected = sets_rejected_.load(std::memory_order_relaxed);
  s.evictions = evictions_.load(std::memory_order_relaxed);
  s.expirations = expirations_.load(std::memory_order_relaxed);
  s.invalidations = invalidations_.load(std::memory_order_relaxed);
  s.invalidated_tags = invalidated_tags_.load(std::memory_order_relaxed);
  s.invalidated_prefixes = invalidated_prefixes_.load(std::memory_order_relaxed);
  s.flushes = flushes_.load(std::memory_order_relaxed);
  s.sets_unknown_generation = sets_unknown_generation_.load(std::memory_order_relaxed);
  s.invalidated_entries = invalidated_entries_.load(std::memory_order_relaxed);
  s.generation = generation();
  s.shards = static_cast<uint32_t>(shards_.size());
  sync::ReaderMutexLock lock(&gen_mu_);
  s.tracked_tags = tag_generations_.size();
  s.tracked_prefixes = prefix_generations_.size();
  s.tracked_bytes = tag_record_bytes_ + prefix_record_bytes_;
  s.floor_generation = floor_generation_;
  return s;
}

}  // namespace poolside::cache

#endif  // POOLSIDE_COMMON_CACHE_CACHE_STORE_H_
