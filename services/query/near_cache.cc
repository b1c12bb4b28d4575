#include "services/query/near_cache.h"

#include <algorithm>
#include <utility>

namespace poolside::query {
namespace {

cache::CacheStoreOptions StoreOptions(const NearCache::Options& options) {
  cache::CacheStoreOptions o;
  o.capacity_bytes = options.capacity_bytes;
  o.shards = std::clamp<uint32_t>(options.shards, 1, 256);
  o.max_entry_bytes = options.capacity_bytes;  // bounded by a shard's share
  // Plain LRU: an entry is admitted whenever it fits (results were asked for
  // with a ttl; the sidecar decides what is worth keeping long).
  o.admission = false;
  o.clock = options.clock;
  return o;
}

}  // namespace

NearCache::NearCache(Options options) : max_ttl_(options.max_ttl), store_(StoreOptions(options)) {
  if (options.reaper) store_.StartReaper();
}

std::shared_ptr<const v1::ResultSet> NearCache::Get(absl::string_view key) {
  if (!serving()) return nullptr;
  cache::BasicCacheStore<v1::ResultSet>::GetResult r = store_.Get(key);
  if (r.outcome != cache::BasicCacheStore<v1::ResultSet>::Outcome::kHit) {
    misses_.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  hits_.fetch_add(1, std::memory_order_relaxed);
  return std::move(r.value);
}

bool NearCache::Fill(absl::string_view key, std::shared_ptr<const v1::ResultSet> result,
                     absl::Duration ttl, std::vector<std::string> tags, uint64_t read_generation) {
  ttl = std::min(ttl, max_ttl_);
  if (ttl <= absl::ZeroDuration() || result == nullptr || read_generation == 0) return false;
  const uint64_t bytes = result->SpaceUsedLong();
  const auto stored = store_.Set(key, std::move(result), bytes, ttl, absl::ZeroDuration(),
                                 std::move(tags), read_generation);
  const bool ok = stored == cache::BasicCacheStore<v1::ResultSet>::SetResult::kStored;
  (ok ? fills_ : fills_refused_).fetch_add(1, std::memory_order_relaxed);
  return ok;
}

void NearCache::Invalidate(const std::vector<std::string>& tags, bool flush_all) {
  if (tags.empty() && !flush_all) return;
  store_.Invalidate(tags, {}, flush_all);
}

void NearCache::OnEvent(const CacheInvalidationEvent& event) {
  switch (event.kind) {
    case CacheInvalidationEvent::kSubscribed:
      // Whatever the sidecar applied before the watch was seen by nobody here.
      store_.Invalidate({}, {}, true);
      // Generations of the previous watch say nothing about this one (a
      // restarted sidecar starts afresh).
      watch_generation_.store(0, std::memory_order_relaxed);
      subscriptions_.fetch_add(1, std::memory_order_relaxed);
      serving_.store(true, std::memory_order_release);
      return;
    case CacheInvalidationEvent::kBroken:
      serving_.store(false, std::memory_order_release);
      return;
    case CacheInvalidationEvent::kInvalidate:
      watch_events_.fetch_add(1, std::memory_order_relaxed);
      if (!event.tags.empty() || !event.prefixes.empty() || event.flush_all) {
        store_.Invalidate(event.tags, event.prefixes, event.flush_all);
      }
      // After the store applied it: a reader that sees the generation sees
      // its effect. Concurrent Invalidate calls may reach the stream out of
      // generation order, hence the max.
      if (event.generation > watch_generation_.load(std::memory_order_relaxed)) {
        watch_generation_.store(event.generation, std::memory_order_release);
      }
      return;
    case CacheInvalidationEvent::kDelete:
      watch_events_.fetch_add(1, std::memory_order_relaxed);
      if (!event.key.empty()) store_.Delete(event.key);
      return;
  }
}

NearCache::Stats NearCache::GetStats() const {
  const cache::CacheStoreStats s = store_.Stats();
  Stats out;
  out.entries = s.entries;
  out.bytes = s.bytes;
  out.capacity_bytes = s.capacity_bytes;
  out.evictions = s.evictions;
  out.invalidations = s.invalidations;
  out.hits = hits_.load(std::memory_order_relaxed);
  out.misses = misses_.load(std::memory_order_relaxed);
  out.fills = fills_.load(std::memory_order_relaxed);
  out.fills_refused = fills_refused_.load(std::memory_order_relaxed);
  out.subscriptions = subscriptions_.load(std::memory_order_relaxed);
  out.watch_events = watch_events_.load(std::memory_order_relaxed);
  out.watch_generation = watch_generation_.load(std::memory_order_acquire);
  out.serving = serving();
  return out;
}

}  // namespace poolside::query
