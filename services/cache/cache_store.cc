#include "services/cache/cache_store.h"

#include <algorithm>
#include <functional>

#include "absl/strings/match.h"

namespace poolside::cache {
namespace {

uint64_t Mix(uint64_t x) {
  // splitmix64's finalizer: spreads std::hash's bits over the whole word.
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t NextPowerOfTwo(uint64_t v) {
  uint64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

// Reap() releases a shard's lock after this many removals so readers are not
// held up by a large batch of expirations.
constexpr int kReapBatch = 1024;

}  // namespace

// --- FrequencySketch -------------------------------------------------------

CacheStore::FrequencySketch::FrequencySketch(size_t width)
    : counters_(4 * width, 0), mask_(width - 1), sample_(10 * width) {}

size_t CacheStore::FrequencySketch::Index(uint64_t hash, int row) const {
  const uint64_t h = Mix(hash + static_cast<uint64_t>(row) * 0x9e3779b97f4a7c15ULL);
  return static_cast<size_t>(row) * (mask_ + 1) + (h & mask_);
}

void CacheStore::FrequencySketch::Increment(uint64_t hash) {
  // Conservative update: only the counters at the current minimum grow, which
  // keeps collisions from inflating the estimates of rare keys.
  size_t index[4];
  int low = 15;
  for (int row = 0; row < 4; ++row) {
    index[row] = Index(hash, row);
    low = std::min<int>(low, counters_[index[row]]);
  }
  if (low < 15) {
    for (int row = 0; row < 4; ++row) {
      if (counters_[index[row]] == low) ++counters_[index[row]];
    }
  }
  if (++additions_ >= sample_) {
    // Ageing: popularity from long ago counts half as much.
    for (uint8_t& c : counters_) c >>= 1;
    additions_ /= 2;
  }
}

int CacheStore::FrequencySketch::Estimate(uint64_t hash) const {
  int estimate = 15;
  for (int row = 0; row < 4; ++row) estimate = std::min<int>(estimate, counters_[Index(hash, row)]);
  return estimate;
}

// --- CacheStore ------------------------------------------------------------

uint64_t CacheStore::Hash(absl::string_view key) {
  // std::hash is deterministic across runs (unlike absl::Hash), which keeps
  // shard placement, and so eviction order, reproducible in tests.
  return Mix(std::hash<std::string_view>()(std::string_view(key.data(), key.size())));
}

uint64_t CacheStore::Charge(absl::string_view key, size_t value_bytes,
                            const std::vector<std::string>& tags) {
  uint64_t charge = key.size() + value_bytes + kEntryOverhead;
  for (const std::string& t : tags) charge += t.size() + kTagOverhead;
  return charge;
}

CacheStore::CacheStore(CacheStoreOptions options)
    : options_(std::move(options)),
      clock_(options_.clock),
      generation_(std::max<int64_t>(1, absl::ToUnixMicros(options_.clock->Now()))),
      first_generation_(generation_.load()),
      floor_generation_(first_generation_) {
  const uint64_t n = NextPowerOfTwo(std::max<uint32_t>(1, options_.shards));
  int bits = 0;
  while ((uint64_t{1} << bits) < n) ++bits;
  shard_shift_ = 64 - bits;
  shard_capacity_ = options_.capacity_bytes / n;
  // One column per 128 bytes of budget: several per entry even for small
  // entries, so collisions rarely decide admission. Costs 4 bytes per column
  // (about 3% of the budget, not counted in it), at most 1 MiB per shard.
  const uint64_t width =
      std::clamp<uint64_t>(NextPowerOfTwo(shard_capacity_ / 128), 1024, uint64_t{1} << 18);
  for (uint64_t i = 0; i < n; ++i) shards_.push_back(std::make_unique<Shard>(width));
}

CacheStore::~CacheStore() {
  {
    std::lock_guard<std::mutex> lock(reaper_mu_);
    stopping_ = true;
  }
  reaper_cv_.notify_all();
  if (reaper_.joinable()) reaper_.join();
}

size_t CacheStore::ShardOf(absl::string_view key) const {
  return shard_shift_ >= 64 ? 0 : static_cast<size_t>(Hash(key) >> shard_shift_);
}

void CacheStore::RemoveLocked(Shard& shard, Lru::iterator it, Removal why) {
  const Entry& e = *it;
  for (const std::string& tag : e.tags) {
    auto t = shard.tag_index.find(tag);
    if (t == shard.tag_index.end()) continue;
    t->second.erase(&e);
    if (t->second.empty()) shard.tag_index.erase(t);
  }
  shard.expiry.erase({e.gone_at, &e});
  shard.index.erase(absl::string_view(e.key));
  shard.bytes.store(shard.bytes.load(std::memory_order_relaxed) - e.charge,
                    std::memory_order_relaxed);
  shard.entries.store(shard.entries.load(std::memory_order_relaxed) - 1,
                      std::memory_order_relaxed);
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

CacheStore::GetResult CacheStore::Get(absl::string_view key) {
  const uint64_t h = Hash(key);
  Shard& shard = *shards_[shard_shift_ >= 64 ? 0 : h >> shard_shift_];
  GetResult result;
  std::lock_guard<std::mutex> lock(shard.mu);
  result.generation = generation_.load(std::memory_order_acquire);
  if (options_.admission) shard.sketch.Increment(h);
  auto found = shard.index.find(key);
  if (found == shard.index.end()) {
    misses_.fetch_add(1, std::memory_order_relaxed);
    return result;
  }
  const absl::Time now = clock_->Now();
  Lru::iterator it = found->second;
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

bool CacheStore::GenerationAllows(absl::string_view key, const std::vector<std::string>& tags,
                                  uint64_t read_generation) const {
  const uint64_t current = generation_.load(std::memory_order_acquire);
  // Not issued by this store (e.g. read before a restart): cannot be checked.
  if (read_generation > current || read_generation < first_generation_) return false;
  // No invalidation since the read. One that takes a newer generation now
  // removes shard entries only after our shard lock is released, so it will
  // find this entry.
  if (read_generation == current) return true;
  std::shared_lock<std::shared_mutex> lock(gen_mu_);
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

CacheStore::SetResult CacheStore::Set(absl::string_view key, std::string value,
                                      absl::Duration ttl, absl::Duration stale,
                                      std::vector<std::string> tags, uint64_t read_generation) {
  std::sort(tags.begin(), tags.end());
  tags.erase(std::unique(tags.begin(), tags.end()), tags.end());
  const uint64_t charge = Charge(key, value.size(), tags);
  const uint64_t h = Hash(key);
  Shard& shard = *shards_[shard_shift_ >= 64 ? 0 : h >> shard_shift_];
  if (key.size() + value.size() > options_.max_entry_bytes || charge > shard_capacity_) {
    sets_rejected_.fetch_add(1, std::memory_order_relaxed);
    return SetResult::kTooLarge;
  }
  auto shared_value = std::make_shared<const std::string>(std::move(value));

  std::unique_lock<std::mutex> lock(shard.mu);
  if (options_.admission) shard.sketch.Increment(h);
  if (read_generation != 0 && !GenerationAllows(key, tags, read_generation)) {
    sets_rejected_.fetch_add(1, std::memory_order_relaxed);
    return SetResult::kInvalidated;
  }
  const absl::Time now = clock_->Now();
  auto found = shard.index.find(key);
  const bool resident = found != shard.index.end();
  const Entry* existing = resident ? &*found->second : nullptr;
  uint64_t used = shard.bytes.load(std::memory_order_relaxed) - (resident ? existing->charge : 0);

  // Victims from the LRU end until the new entry fits.
  std::vector<Lru::iterator> victims;
  if (used + charge > shard_capacity_) {
    const int candidate = options_.admission && !resident ? shard.sketch.Estimate(h) : 16;
    for (auto r = shard.lru.rbegin(); r != shard.lru.rend() && used + charge > shard_capacity_;
         ++r) {
      if (&*r == existing) continue;
      const bool expired = now >= r->gone_at;
      if (!expired && candidate <= shard.sketch.Estimate(Hash(r->key))) {
        sets_rejected_.fetch_add(1, std::memory_order_relaxed);
        return SetResult::kNotAdmitted;
      }
      victims.push_back(std::prev(r.base()));
      used -= r->charge;
    }
  }
  if (before_insert_hook_) before_insert_hook_();
  if (resident) RemoveLocked(shard, found->second, Removal::kDelete);
  for (Lru::iterator v : victims) {
    RemoveLocked(shard, v, now >= v->gone_at ? Removal::kExpire : Removal::kEvict);
  }

  shard.lru.push_front(Entry{std::string(key), std::move(shared_value), std::move(tags),
                             now + ttl, now + ttl + stale, charge});
  Entry& e = shard.lru.front();
  shard.index.emplace(absl::string_view(e.key), shard.lru.begin());
  shard.expiry.emplace(e.gone_at, &e);
  for (const std::string& tag : e.tags) shard.tag_index[tag].insert(&e);
  shard.bytes.store(shard.bytes.load(std::memory_order_relaxed) + charge,
                    std::memory_order_relaxed);
  shard.entries.store(shard.entries.load(std::memory_order_relaxed) + 1,
                      std::memory_order_relaxed);
  sets_.fetch_add(1, std::memory_order_relaxed);
  return SetResult::kStored;
}

bool CacheStore::Delete(absl::string_view key) {
  Shard& shard = *shards_[ShardOf(key)];
  std::lock_guard<std::mutex> lock(shard.mu);
  auto found = shard.index.find(key);
  if (found == shard.index.end()) return false;
  RemoveLocked(shard, found->second, Removal::kDelete);
  return true;
}

void CacheStore::PruneLocked() {
  auto prune = [this](absl::flat_hash_map<std::string, uint64_t>& records, size_t limit,
                      bool prefixes) {
    if (records.size() <= std::max<size_t>(limit, 1)) return;
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
      records.erase(it++);
    }
    floor_generation_ = std::max(floor_generation_, forget_upto);
  };
  prune(tag_generations_, options_.max_tracked_tags, false);
  prune(prefix_generations_, options_.max_tracked_prefixes, true);
}

CacheStore::InvalidateResult CacheStore::Invalidate(const std::vector<std::string>& tags,
                                                    const std::vector<std::string>& prefixes,
                                                    bool flush_all) {
  InvalidateResult result;
  std::vector<std::string> live_prefixes;
  for (const std::string& p : prefixes) {
    if (!p.empty()) live_prefixes.push_back(p);
  }
  {
    // Recorded before any entry is removed: a Set that checks after this sees
    // the new generation; one that checked before holds its shard lock until
    // its entry is in, so the removal pass below finds it.
    std::unique_lock<std::shared_mutex> lock(gen_mu_);
    result.generation = generation_.fetch_add(1, std::memory_order_acq_rel) + 1;
    if (flush_all) flush_generation_ = result.generation;
    for (const std::string& tag : tags) tag_generations_[tag] = result.generation;
    for (const std::string& p : live_prefixes) {
      auto [it, inserted] = prefix_generations_.insert_or_assign(p, result.generation);
      if (inserted) ++prefix_lengths_[p.size()];
    }
    PruneLocked();
  }
  invalidations_.fetch_add(1, std::memory_order_relaxed);
  invalidated_tags_.fetch_add(tags.size(), std::memory_order_relaxed);
  invalidated_prefixes_.fetch_add(live_prefixes.size(), std::memory_order_relaxed);
  if (flush_all) flushes_.fetch_add(1, std::memory_order_relaxed);

  for (auto& shard_ptr : shards_) {
    Shard& shard = *shard_ptr;
    std::lock_guard<std::mutex> lock(shard.mu);
    if (flush_all) {
      const uint64_t n = shard.entries.load(std::memory_order_relaxed);
      result.removed += n;
      invalidated_entries_.fetch_add(n, std::memory_order_relaxed);
      shard.index.clear();
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
    if (!live_prefixes.empty()) {
      for (auto it = shard.lru.begin(); it != shard.lru.end();) {
        auto next = std::next(it);
        for (const std::string& p : live_prefixes) {
          if (absl::StartsWith(it->key, p)) {
            RemoveLocked(shard, it, Removal::kInvalidate);
            ++result.removed;
            break;
          }
        }
        it = next;
      }
    }
  }
  return result;
}

uint64_t CacheStore::Reap() {
  uint64_t removed = 0;
  for (auto& shard_ptr : shards_) {
    Shard& shard = *shard_ptr;
    bool more = true;
    while (more) {
      std::lock_guard<std::mutex> lock(shard.mu);
      const absl::Time now = clock_->Now();
      int batch = 0;
      while (!shard.expiry.empty() && shard.expiry.begin()->first <= now && batch < kReapBatch) {
        const Entry* e = shard.expiry.begin()->second;
        RemoveLocked(shard, shard.index.find(absl::string_view(e->key))->second, Removal::kExpire);
        ++batch;
      }
      removed += batch;
      more = batch == kReapBatch;
    }
  }
  return removed;
}

void CacheStore::StartReaper() {
  std::lock_guard<std::mutex> lock(reaper_mu_);
  if (reaper_.joinable() || stopping_) return;
  reaper_ = std::thread([this] { ReaperLoop(); });
}

void CacheStore::ReaperLoop() {
  std::unique_lock<std::mutex> lock(reaper_mu_);
  while (!stopping_) {
    reaper_cv_.wait_for(lock, absl::ToChronoMilliseconds(options_.reap_interval),
                        [this] { return stopping_; });
    if (stopping_) break;
    lock.unlock();
    Reap();
    lock.lock();
  }
}

CacheStoreStats CacheStore::Stats() const {
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
  s.invalidated_entries = invalidated_entries_.load(std::memory_order_relaxed);
  s.generation = generation();
  s.shards = static_cast<uint32_t>(shards_.size());
  std::shared_lock<std::shared_mutex> lock(gen_mu_);
  s.tracked_tags = tag_generations_.size();
  s.tracked_prefixes = prefix_generations_.size();
  s.floor_generation = floor_generation_;
  return s;
}

}  // namespace poolside::cache
