// Model-based test of CacheStore: random operations applied both to the store
// and to a deliberately simple reference model (per shard: a std::list for LRU
// order and a std::map of entries; a map of generation records), compared after
// every operation. Admission is off, so the two must agree exactly: every Get's
// outcome, value and remaining time, every Set's result, every Invalidate's
// count, and the entry/byte totals and counters. The byte bound is checked
// after every operation.

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <list>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/cache/cache_store.h"
#include "common/clock/clock.h"
#include "gtest/gtest.h"

namespace poolside::cache {
namespace {

using Outcome = CacheStore::Outcome;
using SetResult = CacheStore::SetResult;

class Model {
 public:
  Model(const CacheStore& store, const SimulatedClock& clock, uint64_t max_entry_bytes)
      : store_(store),
        clock_(clock),
        max_entry_bytes_(max_entry_bytes),
        shards_(store.shard_count()),
        generation_(store.generation()),
        first_generation_(generation_) {}

  struct GetResult {
    Outcome outcome = Outcome::kMiss;
    std::string value;
    absl::Duration remaining;
  };

  GetResult Get(const std::string& key) {
    GetResult r;
    Shard& shard = ShardFor(key);
    auto it = shard.entries.find(key);
    if (it == shard.entries.end()) {
      ++misses;
      return r;
    }
    const absl::Time now = clock_.Now();
    if (now >= it->second.gone_at) {
      Remove(shard, key);
      ++expirations;
      ++misses;
      return r;
    }
    if (now >= it->second.fresh_until) {
      r.outcome = Outcome::kStale;
      r.remaining = it->second.gone_at - now;
      ++stale_hits;
    } else {
      r.outcome = Outcome::kHit;
      r.remaining = it->second.fresh_until - now;
      ++hits;
    }
    r.value = it->second.value;
    Touch(shard, key);
    return r;
  }

  SetResult Set(const std::string& key, const std::string& value, absl::Duration ttl,
                absl::Duration stale, std::vector<std::string> tags, uint64_t read_generation) {
    if (read_generation > generation_ || read_generation < first_generation_) {
      return SetResult::kUnknownGeneration;
    }
    std::sort(tags.begin(), tags.end());
    tags.erase(std::unique(tags.begin(), tags.end()), tags.end());
    const uint64_t charge = CacheStore::Charge(key, value.size(), tags);
    if (key.size() + value.size() > max_entry_bytes_ || charge > store_.shard_capacity()) {
      return SetResult::kTooLarge;
    }
    if (!Allows(key, tags, read_generation)) {
      return SetResult::kInvalidated;
    }
    Shard& shard = ShardFor(key);
    if (shard.entries.count(key)) Remove(shard, key);
    const absl::Time now = clock_.Now();
    while (shard.bytes + charge > store_.shard_capacity()) {
      const std::string victim = shard.lru.back();
      if (now >= shard.entries[victim].gone_at) {
        ++expirations;
      } else {
        ++evictions;
      }
      Remove(shard, victim);
    }
    shard.lru.push_front(key);
    shard.entries[key] = Entry{value, tags, now + ttl, now + ttl + stale, charge};
    shard.bytes += charge;
    ++sets;
    return SetResult::kStored;
  }

  bool Delete(const std::string& key) {
    Shard& shard = ShardFor(key);
    if (!shard.entries.count(key)) return false;
    Remove(shard, key);
    return true;
  }

  uint64_t Invalidate(const std::vector<std::string>& tags,
                      const std::vector<std::string>& prefixes, bool flush) {
    const uint64_t g = ++generation_;
    if (flush) flush_generation_ = g;
    for (const auto& t : tags) tag_generations_[t] = g;
    for (const auto& p : prefixes) prefix_generations_[p] = g;
    uint64_t removed = 0;
    for (Shard& shard : shards_) {
      std::vector<std::string> doomed;
      for (const auto& [key, e] : shard.entries) {
        bool covered = flush;
        for (const auto& t : tags) covered |= std::count(e.tags.begin(), e.tags.end(), t) > 0;
        for (const auto& p : prefixes) covered |= absl::StartsWith(key, p);
        if (covered) doomed.push_back(key);
      }
      for (const auto& key : doomed) Remove(shard, key);
      removed += doomed.size();
    }
    return removed;
  }

  uint64_t Reap() {
    uint64_t removed = 0;
    const absl::Time now = clock_.Now();
    for (Shard& shard : shards_) {
      std::vector<std::string> doomed;
      for (const auto& [key, e] : shard.entries) {
        if (now >= e.gone_at) doomed.push_back(key);
      }
      for (const auto& key : doomed) Remove(shard, key);
      removed += doomed.size();
    }
    expirations += removed;
    return removed;
  }

  uint64_t entries() const {
    uint64_t n = 0;
    for (const Shard& s : shards_) n += s.entries.size();
    return n;
  }
  uint64_t bytes() const {
    uint64_t n = 0;
    for (const Shard& s : shards_) n += s.bytes;
    return n;
  }
  uint64_t generation() const { return generation_; }

  uint64_t hits = 0, stale_hits = 0, misses = 0, sets = 0, evictions = 0, expirations = 0;

 private:
  struct Entry {
    std::string value;
    std::vector<std::string> tags;
    absl::Time fresh_until, gone_at;
    uint64_t charge = 0;
  };
  struct Shard {
    std::list<std::string> lru;  // most recent first
    std::map<std::string, Entry> entries;
    uint64_t bytes = 0;
  };

  Shard& ShardFor(const std::string& key) { return shards_[store_.ShardOf(key)]; }

  void Touch(Shard& shard, const std::string& key) {
    shard.lru.remove(key);
    shard.lru.push_front(key);
  }

  void Remove(Shard& shard, const std::string& key) {
    shard.bytes -= shard.entries[key].charge;
    shard.entries.erase(key);
    shard.lru.remove(key);
  }

  bool Allows(const std::string& key, const std::vector<std::string>& tags, uint64_t g) const {
    if (flush_generation_ > g) return false;
    for (const auto& t : tags) {
      auto it = tag_generations_.find(t);
      if (it != tag_generations_.end() && it->second > g) return false;
    }
    for (const auto& [p, pg] : prefix_generations_) {
      if (absl::StartsWith(key, p) && pg > g) return false;
    }
    return true;
  }

  const CacheStore& store_;
  const SimulatedClock& clock_;
  const uint64_t max_entry_bytes_;
  std::vector<Shard> shards_;
  uint64_t generation_;
  const uint64_t first_generation_;
  uint64_t flush_generation_ = 0;
  std::map<std::string, uint64_t> tag_generations_;
  std::map<std::string, uint64_t> prefix_generations_;
};

// Names of the outcomes, in the enum's order.
const char* OutcomeName(Outcome o) {
  static constexpr const char* kNames[] = {"HIT", "STALE", "MISS"};
  return kNames[static_cast<int>(o)];
}

void RunModel(uint32_t seed, uint32_t shards, uint64_t shard_bytes, int steps) {
  std::printf("model test: seed %u, %u shards, %d steps\n", seed, shards, steps);
  SCOPED_TRACE(absl::StrCat("seed ", seed, ", shards ", shards));
  SimulatedClock clock;
  CacheStoreOptions options;
  options.capacity_bytes = shards * shard_bytes;
  options.shards = shards;
  options.max_entry_bytes = 2500;
  options.admission = false;
  // Large enough that the store never prunes: the model keeps every record.
  options.max_tracked_tags = 1 << 20;
  options.max_tracked_prefixes = 1 << 20;
  options.clock = &clock;
  CacheStore store(options);
  Model model(store, clock, options.max_entry_bytes);
  std::mt19937 rng(seed);
  auto uniform = [&rng](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };

  const std::vector<std::string> kTags = {"orders", "users", "items", "stock",
                                          "audit",  "x",     "y",     "z"};
  const std::vector<std::string> kSpaces = {"db1/", "db2/", "db1/users/", "misc:"};
  auto random_key = [&] { return absl::StrCat(kSpaces[uniform(0, 3)], "k", uniform(0, 29)); };
  // The generation each key's last Get returned, as a client would remember it.
  std::map<std::string, uint64_t> read_generations;

  for (int step = 0; step < steps; ++step) {
    const int op = uniform(0, 99);
    std::string what;
    if (op < 35) {
      const std::string key = random_key();
      what = absl::StrCat("Get ", key);
      CacheStore::GetResult got = store.Get(key);
      Model::GetResult want = model.Get(key);
      ASSERT_EQ(OutcomeName(got.outcome), std::string(OutcomeName(want.outcome)))
          << "step " << step << ": " << what;
      if (want.outcome != Outcome::kMiss) {
        ASSERT_EQ(*got.value, want.value) << "step " << step << ": " << what;
        ASSERT_EQ(got.remaining, want.remaining) << "step " << step << ": " << what;
      }
      ASSERT_EQ(got.generation, model.generation()) << "step " << step;
      read_generations[key] = got.generation;
    } else if (op < 70) {
      const std::string key = random_key();
      const int size = uniform(0, 9) < 7 ? uniform(0, 200) : uniform(0, 2600);
      const std::string value(size, static_cast<char>('a' + step % 26));
      const absl::Duration ttl = absl::Milliseconds(uniform(1, 20000));
      const absl::Duration stale =
          uniform(0, 1) ? absl::Milliseconds(uniform(1, 3000)) : absl::ZeroDuration();
      std::vector<std::string> tags;
      for (int i = uniform(0, 2); i > 0; --i) tags.push_back(kTags[uniform(0, 7)]);
      // Mostly the generation of this key's last Get (or the current one);
      // sometimes a recent one, 0, or one from the future.
      uint64_t g = model.generation();
      const int gen_choice = uniform(0, 19);
      if (gen_choice < 12 && read_generations.count(key)) g = read_generations[key];
      if (gen_choice == 17) g = model.generation() - uniform(0, 3);
      if (gen_choice == 18) g = 0;
      if (gen_choice == 19) g = model.generation() + uniform(1, 3);
      what = absl::StrCat("Set ", key, " (", value.size(), " bytes, gen ", g, ")");
      SetResult got = store.Set(key, value, ttl, stale, tags, g);
      SetResult want = model.Set(key, value, ttl, stale, tags, g);
      ASSERT_EQ(static_cast<int>(got), static_cast<int>(want)) << "step " << step << ": " << what;
    } else if (op < 77) {
      const std::string key = random_key();
      what = absl::StrCat("Delete ", key);
      ASSERT_EQ(store.Delete(key), model.Delete(key)) << "step " << step << ": " << what;
    } else if (op < 79) {
      std::vector<std::string> tags = {kTags[uniform(0, 7)]};
      what = absl::StrCat("Invalidate tag ", tags[0]);
      CacheStore::InvalidateResult got = store.Invalidate(tags, {}, false);
      ASSERT_EQ(got.removed, model.Invalidate(tags, {}, false)) << "step " << step << ": " << what;
      ASSERT_EQ(got.generation, model.generation());
    } else if (op < 80) {
      std::vector<std::string> prefixes = {uniform(0, 1) ? kSpaces[uniform(0, 3)] : random_key()};
      what = absl::StrCat("Invalidate prefix ", prefixes[0]);
      CacheStore::InvalidateResult got = store.Invalidate({}, prefixes, false);
      ASSERT_EQ(got.removed, model.Invalidate({}, prefixes, false))
          << "step " << step << ": " << what;
    } else if (op < 81 && uniform(0, 4) == 0) {
      what = "Flush";
      ASSERT_EQ(store.Invalidate({}, {}, true).removed, model.Invalidate({}, {}, true))
          << "step " << step;
    } else if (op < 97) {
      clock.Advance(absl::Milliseconds(uniform(0, 300)));
    } else {
      what = "Reap";
      ASSERT_EQ(store.Reap(), model.Reap()) << "step " << step;
    }

    CacheStoreStats s = store.Stats();
    ASSERT_LE(s.bytes, options.capacity_bytes) << "step " << step << ": " << what;
    ASSERT_EQ(s.bytes, model.bytes()) << "step " << step << ": " << what;
    ASSERT_EQ(s.entries, model.entries()) << "step " << step << ": " << what;
    ASSERT_EQ(s.hits, model.hits) << "step " << step;
    ASSERT_EQ(s.stale_hits, model.stale_hits) << "step " << step;
    ASSERT_EQ(s.misses, model.misses) << "step " << step;
    ASSERT_EQ(s.sets, model.sets) << "step " << step;
    ASSERT_EQ(s.evictions, model.evictions) << "step " << step;
    ASSERT_EQ(s.expirations, model.expirations) << "step " << step;
  }
  CacheStoreStats s = store.Stats();
  std::printf("  end: %" PRIu64 " entries, %" PRIu64 " bytes, %" PRIu64 " hits, %" PRIu64
              " stale, %" PRIu64 " misses, %" PRIu64 " evictions, %" PRIu64 " expirations, %" PRIu64
              " rejected sets\n",
              s.entries, s.bytes, s.hits, s.stale_hits, s.misses, s.evictions, s.expirations,
              s.sets_rejected);
  // The workload exercised what it is meant to.
  EXPECT_GT(s.hits, 0u);
  EXPECT_GT(s.stale_hits, 0u);
  EXPECT_GT(s.evictions, 0u);
  EXPECT_GT(s.expirations, 0u);
  EXPECT_GT(s.invalidated_entries, 0u);
}

TEST(CacheStoreModelTest, OneShard) { RunModel(20240611, 1, 8000, 30000); }
TEST(CacheStoreModelTest, FourShards) { RunModel(7, 4, 6000, 30000); }
TEST(CacheStoreModelTest, SixteenShards) { RunModel(424242, 16, 3000, 20000); }

}  // namespace
}  // namespace poolside::cache
