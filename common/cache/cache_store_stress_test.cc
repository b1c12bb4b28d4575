// Many threads reading, filling (with the generation their read returned),
// deleting, invalidating, reaping and moving the clock at once; run under
// ThreadSanitizer by `make test` (tag "tsan"). Checks:
//  - the byte bound, continuously from a checker thread;
//  - afterwards, that no entry survived that a later invalidation covered:
//    every value records the generation its fill read, so any resident entry
//    must have been read at or after the last invalidation of its tag and of
//    the prefix it falls under.

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/cache/cache_store.h"
#include "common/clock/clock.h"
#include "gtest/gtest.h"

namespace poolside::cache {
namespace {

constexpr int kKeys = 400;
constexpr int kTags = 16;

std::string KeyOf(int i) { return absl::StrCat(i % 5 == 0 ? "hot/" : "cold/", i); }
std::string TagOf(int i) { return absl::StrCat("t", i % kTags); }

void AtomicMax(std::atomic<uint64_t>& a, uint64_t v) {
  uint64_t cur = a.load();
  while (cur < v && !a.compare_exchange_weak(cur, v)) {
  }
}

void RunStress(bool admission) {
  SimulatedClock clock;
  CacheStoreOptions options;
  options.capacity_bytes = 48 << 10;  // small: constant eviction
  options.shards = 8;
  options.admission = admission;
  options.max_tracked_tags = 12;  // pruning and the floor are exercised too
  options.clock = &clock;
  CacheStore store(options);

  std::array<std::atomic<uint64_t>, kTags> tag_generation{};
  std::atomic<uint64_t> hot_prefix_generation{0};
  std::atomic<bool> done{false};
  std::atomic<uint64_t> stored{0}, refused{0}, bound_checks{0};

  const int kWorkers = 6;
  const int kOpsPerWorker = 15000;
  std::vector<std::thread> threads;
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back([&, w] {
      std::mt19937 rng(1000 + w);
      for (int op = 0; op < kOpsPerWorker; ++op) {
        const int i = std::uniform_int_distribution<int>(0, kKeys - 1)(rng);
        const std::string key = KeyOf(i);
        const uint32_t dice = rng() % 1000;
        if (dice < 20) {
          AtomicMax(tag_generation[i % kTags], store.Invalidate({TagOf(i)}, {}, false).generation);
          continue;
        }
        if (dice < 23) {
          AtomicMax(hot_prefix_generation, store.Invalidate({}, {"hot/"}, false).generation);
          continue;
        }
        if (dice < 33) {
          EXPECT_LE(store.Stats().bytes, options.capacity_bytes);
          bound_checks.fetch_add(1);
          continue;
        }
        CacheStore::GetResult r = store.Get(key);
        if (r.outcome == CacheStore::Outcome::kHit) continue;
        if (rng() % 20 == 0) {
          store.Delete(key);
          continue;
        }
        const std::string value = absl::StrCat(r.generation, ":", std::string(rng() % 300, 'v'));
        CacheStore::SetResult s =
            store.Set(key, value, absl::Seconds(5), absl::Seconds(1), {TagOf(i)}, r.generation);
        (s == CacheStore::SetResult::kStored ? stored : refused).fetch_add(1);
      }
    });
  }
  std::thread invalidator([&] {
    std::mt19937 rng(7);
    while (!done.load()) {
      const int t = rng() % kTags;
      if (rng() % 10 == 0) {
        AtomicMax(hot_prefix_generation, store.Invalidate({}, {"hot/"}, false).generation);
      } else {
        AtomicMax(tag_generation[t], store.Invalidate({TagOf(t)}, {}, false).generation);
      }
      std::this_thread::yield();
    }
  });
  std::thread janitor([&] {
    while (!done.load()) {
      clock.Advance(absl::Milliseconds(50));
      store.Reap();
      CacheStoreStats s = store.Stats();
      EXPECT_LE(s.bytes, options.capacity_bytes);
      bound_checks.fetch_add(1);
      std::this_thread::yield();
    }
  });
  for (auto& t : threads) t.join();
  done = true;
  invalidator.join();
  janitor.join();

  int resident = 0;
  for (int i = 0; i < kKeys; ++i) {
    const std::string key = KeyOf(i);
    CacheStore::GetResult r = store.Get(key);
    if (r.outcome == CacheStore::Outcome::kMiss) continue;
    ++resident;
    uint64_t read_generation = 0;
    ASSERT_TRUE(absl::SimpleAtoi(r.value->substr(0, r.value->find(':')), &read_generation));
    EXPECT_GE(read_generation, tag_generation[i % kTags].load())
        << key << " was filled from a read older than an invalidation of " << TagOf(i);
    if (absl::StartsWith(key, "hot/")) {
      EXPECT_GE(read_generation, hot_prefix_generation.load())
          << key << " was filled from a read older than an invalidation of hot/";
    }
  }
  CacheStoreStats s = store.Stats();
  EXPECT_LE(s.bytes, options.capacity_bytes);
  std::printf(
      "admission %d: stored %lu, refused %lu, resident %d, invalidations %lu, "
      "evictions %lu, bound checks %lu, floor %lu\n",
      admission, static_cast<unsigned long>(stored.load()),
      static_cast<unsigned long>(refused.load()), resident,
      static_cast<unsigned long>(s.invalidations), static_cast<unsigned long>(s.evictions),
      static_cast<unsigned long>(bound_checks.load()),
      static_cast<unsigned long>(s.floor_generation));
  EXPECT_GT(stored.load(), 0u);
  EXPECT_GT(s.invalidations, 0u);
}

TEST(CacheStoreStressTest, LruOnly) { RunStress(false); }
TEST(CacheStoreStressTest, WithAdmission) { RunStress(true); }

}  // namespace
}  // namespace poolside::cache
