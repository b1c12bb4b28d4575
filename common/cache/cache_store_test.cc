#include "common/cache/cache_store.h"

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace poolside::cache {
namespace {

using ::testing::AllOf;
using ::testing::Field;
using Outcome = CacheStore::Outcome;
using SetResult = CacheStore::SetResult;

constexpr absl::Duration kNoStale = absl::ZeroDuration();
// Put()'s read_generation: the store's generation when Put is called (a
// caller that read the current generation before reading its value).
constexpr uint64_t kCurrent = ~uint64_t{0};

// Stats of a store that holds nothing.
auto Empty() {
  return AllOf(Field("entries", &CacheStoreStats::entries, 0u),
               Field("bytes", &CacheStoreStats::bytes, 0u));
}

class CacheStoreTest : public ::testing::Test {
 protected:
  CacheStoreOptions Options(uint64_t capacity = 1 << 20, uint32_t shards = 4,
                            bool admission = false) {
    CacheStoreOptions o;
    o.capacity_bytes = capacity;
    o.shards = shards;
    o.admission = admission;
    o.clock = &clock_;
    return o;
  }

  SetResult Put(CacheStore& store, const std::string& key, const std::string& value,
                std::vector<std::string> tags = {}, uint64_t read_generation = kCurrent,
                absl::Duration ttl = absl::Seconds(10)) {
    if (read_generation == kCurrent) read_generation = store.generation();
    return store.Set(key, value, ttl, kNoStale, std::move(tags), read_generation);
  }

  bool Has(CacheStore& store, const std::string& key) {
    return store.Get(key).outcome != Outcome::kMiss;
  }

  SimulatedClock clock_;
};

TEST_F(CacheStoreTest, HitStaleMissAndExpiry) {
  CacheStore store(Options());
  EXPECT_EQ(store.Get("k").outcome, Outcome::kMiss);
  ASSERT_EQ(store.Set("k", "v", absl::Seconds(10), absl::Seconds(5), {}, store.generation()),
            SetResult::kStored);

  CacheStore::GetResult r = store.Get("k");
  EXPECT_EQ(r.outcome, Outcome::kHit);
  ASSERT_NE(r.value, nullptr);
  EXPECT_EQ(*r.value, "v");
  EXPECT_EQ(r.remaining, absl::Seconds(10));

  clock_.Advance(absl::Milliseconds(9999));
  r = store.Get("k");
  EXPECT_EQ(r.outcome, Outcome::kHit);
  EXPECT_EQ(r.remaining, absl::Milliseconds(1));

  clock_.Advance(absl::Milliseconds(1));
  r = store.Get("k");
  EXPECT_EQ(r.outcome, Outcome::kStale);
  EXPECT_EQ(*r.value, "v");
  EXPECT_EQ(r.remaining, absl::Seconds(5));

  clock_.Advance(absl::Seconds(5));
  r = store.Get("k");
  EXPECT_EQ(r.outcome, Outcome::kMiss);
  EXPECT_EQ(r.value, nullptr);

  EXPECT_THAT(store.Stats(),
              AllOf(Field("hits", &CacheStoreStats::hits, 2u),
                    Field("stale_hits", &CacheStoreStats::stale_hits, 1u),
                    Field("misses", &CacheStoreStats::misses, 2u),
                    Field("expirations", &CacheStoreStats::expirations, 1u), Empty()));
  EXPECT_DOUBLE_EQ(store.Stats().hit_ratio(), 3.0 / 5.0);
}

TEST_F(CacheStoreTest, WithoutStaleWindowGoesStraightToMiss) {
  CacheStore store(Options());
  ASSERT_EQ(Put(store, "k", "v"), SetResult::kStored);
  clock_.Advance(absl::Seconds(10));
  EXPECT_EQ(store.Get("k").outcome, Outcome::kMiss);
}

TEST_F(CacheStoreTest, SetReplacesValueTagsAndTtl) {
  CacheStore store(Options());
  ASSERT_EQ(Put(store, "k", "one", {"a"}), SetResult::kStored);
  ASSERT_EQ(Put(store, "k", "two", {"b"}, kCurrent, absl::Seconds(1)), SetResult::kStored);
  EXPECT_EQ(*store.Get("k").value, "two");
  EXPECT_EQ(store.Stats().entries, 1u);
  EXPECT_EQ(store.Stats().bytes, CacheStore::Charge("k", 3, {"b"}));
  EXPECT_EQ(store.Invalidate({"a"}, {}, false).removed, 0u);
  EXPECT_TRUE(Has(store, "k"));
  EXPECT_EQ(store.Invalidate({"b"}, {}, false).removed, 1u);
  EXPECT_FALSE(Has(store, "k"));
}

TEST_F(CacheStoreTest, DeleteRemovesOneKey) {
  CacheStore store(Options());
  ASSERT_EQ(Put(store, "a", "1"), SetResult::kStored);
  ASSERT_EQ(Put(store, "b", "2"), SetResult::kStored);
  EXPECT_TRUE(store.Delete("a"));
  EXPECT_FALSE(store.Delete("a"));
  EXPECT_FALSE(Has(store, "a"));
  EXPECT_TRUE(Has(store, "b"));
}

TEST_F(CacheStoreTest, LruEvictionOrderWithoutAdmission) {
  const uint64_t one = CacheStore::Charge("a", 100, {});
  CacheStore store(Options(3 * one, 1));
  const std::string v(100, 'x');
  ASSERT_EQ(Put(store, "a", v), SetResult::kStored);
  ASSERT_EQ(Put(store, "b", v), SetResult::kStored);
  ASSERT_EQ(Put(store, "c", v), SetResult::kStored);
  EXPECT_EQ(store.Get("a").outcome, Outcome::kHit);  // b is now least recently used
  ASSERT_EQ(Put(store, "d", v), SetResult::kStored);
  EXPECT_FALSE(Has(store, "b"));
  ASSERT_EQ(Put(store, "e", v), SetResult::kStored);  // c goes next
  EXPECT_FALSE(Has(store, "c"));
  EXPECT_TRUE(Has(store, "a"));
  EXPECT_TRUE(Has(store, "d"));
  EXPECT_TRUE(Has(store, "e"));
  EXPECT_EQ(store.Stats().evictions, 2u);
  EXPECT_EQ(store.Stats().bytes, 3 * one);
}

TEST_F(CacheStoreTest, ByteBoundAndTooLarge) {
  CacheStoreOptions o = Options(4096, 2);
  o.max_entry_bytes = 1500;
  CacheStore store(o);
  EXPECT_EQ(store.capacity_bytes(), 4096u);
  EXPECT_EQ(store.shard_capacity(), 2048u);
  // Over max_entry_bytes.
  EXPECT_EQ(Put(store, "k", std::string(1500, 'x')), SetResult::kTooLarge);
  // Under max_entry_bytes but over a shard's budget once tags are counted.
  EXPECT_EQ(Put(store, "k", std::string(1400, 'x'), {std::string(600, 't')}), SetResult::kTooLarge);
  for (int i = 0; i < 200; ++i) {
    Put(store, absl::StrCat("key", i), std::string(i * 7 % 1400, 'v'), {"t"});
    ASSERT_LE(store.Stats().bytes, 4096u);
  }
  EXPECT_GT(store.Stats().evictions, 0u);
  EXPECT_EQ(store.Stats().sets_rejected, 2u);
}

TEST_F(CacheStoreTest, InvalidateByTagPrefixAndFlush) {
  CacheStore store(Options());
  Put(store, "orders/1", "a", {"orders"});
  Put(store, "orders/2", "b", {"orders", "users"});
  Put(store, "users/1", "c", {"users"});
  Put(store, "misc", "d");

  const uint64_t g0 = store.generation();
  CacheStore::InvalidateResult r = store.Invalidate({"orders"}, {}, false);
  EXPECT_EQ(r.removed, 2u);
  EXPECT_EQ(r.generation, g0 + 1);
  EXPECT_FALSE(Has(store, "orders/1"));
  EXPECT_FALSE(Has(store, "orders/2"));
  EXPECT_TRUE(Has(store, "users/1"));

  r = store.Invalidate({}, {"users/"}, false);
  EXPECT_EQ(r.removed, 1u);
  EXPECT_EQ(r.generation, g0 + 2);
  EXPECT_TRUE(Has(store, "misc"));

  Put(store, "x", "e", {"t"});
  r = store.Invalidate({}, {}, true);
  EXPECT_EQ(r.removed, 2u);
  EXPECT_THAT(store.Stats(),
              AllOf(Empty(), Field("invalidations", &CacheStoreStats::invalidations, 3u),
                    Field("invalidated_tags", &CacheStoreStats::invalidated_tags, 1u),
                    Field("invalidated_prefixes", &CacheStoreStats::invalidated_prefixes, 1u),
                    Field("flushes", &CacheStoreStats::flushes, 1u),
                    Field("invalidated_entries", &CacheStoreStats::invalidated_entries, 5u),
                    Field("generation", &CacheStoreStats::generation, g0 + 3)));
  // The tag index was emptied along with the entries.
  EXPECT_EQ(store.Invalidate({"t", "users"}, {}, false).removed, 0u);
}

TEST_F(CacheStoreTest, FillAfterInvalidationOfItsTagIsRefused) {
  CacheStore store(Options());
  CacheStore::GetResult miss = store.Get("q");  // reader misses, goes to the database
  ASSERT_EQ(miss.outcome, Outcome::kMiss);
  store.Invalidate({"orders"}, {}, false);  // a write commits meanwhile
  EXPECT_EQ(Put(store, "q", "stale rows", {"orders"}, miss.generation), SetResult::kInvalidated);
  EXPECT_FALSE(Has(store, "q"));
  // A fresh read after the invalidation may fill.
  CacheStore::GetResult again = store.Get("q");
  EXPECT_EQ(Put(store, "q", "fresh rows", {"orders"}, again.generation), SetResult::kStored);
  EXPECT_EQ(store.Stats().sets_rejected, 1u);
}

TEST_F(CacheStoreTest, InvalidationAfterFillRemovesIt) {
  CacheStore store(Options());
  CacheStore::GetResult miss = store.Get("q");
  ASSERT_EQ(Put(store, "q", "rows", {"orders"}, miss.generation), SetResult::kStored);
  EXPECT_EQ(store.Invalidate({"orders"}, {}, false).removed, 1u);
  EXPECT_FALSE(Has(store, "q"));
}

TEST_F(CacheStoreTest, UnrelatedInvalidationDoesNotRefuseFill) {
  CacheStore store(Options());
  CacheStore::GetResult miss = store.Get("q");
  store.Invalidate({"users"}, {"other/"}, false);
  EXPECT_EQ(Put(store, "q", "rows", {"orders"}, miss.generation), SetResult::kStored);
  EXPECT_TRUE(Has(store, "q"));
}

TEST_F(CacheStoreTest, PrefixAndFlushInvalidationsRefuseOlderFills) {
  CacheStore store(Options());
  uint64_t g = store.Get("db1/select 1").generation;
  store.Invalidate({}, {"db1/"}, false);
  EXPECT_EQ(Put(store, "db1/select 1", "x", {}, g), SetResult::kInvalidated);
  EXPECT_EQ(Put(store, "db2/select 1", "x", {}, g), SetResult::kStored);
  // Exact key as prefix fences that key.
  g = store.Get("db2/select 1").generation;
  store.Invalidate({}, {"db2/select 1"}, false);
  EXPECT_EQ(Put(store, "db2/select 1", "x", {}, g), SetResult::kInvalidated);

  g = store.Get("z").generation;
  store.Invalidate({}, {}, true);
  EXPECT_EQ(Put(store, "z", "x", {"any"}, g), SetResult::kInvalidated);
  // A value read after the flush may be stored.
  EXPECT_EQ(Put(store, "z", "x", {"any"}), SetResult::kStored);
}

TEST_F(CacheStoreTest, GenerationsNotIssuedByThisStoreAreRefused) {
  auto first = std::make_unique<CacheStore>(Options());
  first->Invalidate({"t"}, {}, false);
  const uint64_t old_generation = first->Get("k").generation;
  EXPECT_GT(old_generation, first->first_generation());
  first.reset();
  clock_.Advance(absl::Milliseconds(1));  // a restart takes time
  CacheStore restarted(Options());
  EXPECT_GT(restarted.first_generation(), old_generation);
  EXPECT_EQ(restarted.generation(), restarted.first_generation());
  // 0, a generation of the earlier incarnation, and one from the future: none
  // was handed out here, so none is compared with anything; nothing is stored.
  for (uint64_t g : {uint64_t{0}, uint64_t{1}, old_generation, restarted.first_generation() - 1,
                     restarted.generation() + 1, ~uint64_t{0} - 1}) {
    EXPECT_EQ(Put(restarted, "k", "forged", {}, g), SetResult::kUnknownGeneration) << g;
    EXPECT_FALSE(restarted.Issued(g)) << g;
  }
  EXPECT_FALSE(Has(restarted, "k"));
  EXPECT_THAT(restarted.Stats(), AllOf(Field("entries", &CacheStoreStats::entries, 0u),
                                       Field("sets", &CacheStoreStats::sets, 0u),
                                       Field("sets_rejected", &CacheStoreStats::sets_rejected, 6u),
                                       Field("sets_unknown_generation",
                                             &CacheStoreStats::sets_unknown_generation, 6u)));
  // A generation handed out later (by an invalidation) becomes valid then.
  const uint64_t next = restarted.generation() + 1;
  restarted.Invalidate({"other"}, {}, false);
  EXPECT_TRUE(restarted.Issued(next));
  EXPECT_EQ(Put(restarted, "k", "v", {}, next), SetResult::kStored);
  EXPECT_EQ(*restarted.Get("k").value, "v");
  EXPECT_EQ(restarted.Stats().sets_unknown_generation, 6u);
}

// A key sorts next to keys it is not a prefix of; bytes compare unsigned.
TEST_F(CacheStoreTest, PrefixInvalidationRemovesExactlyTheKeysItPrefixes) {
  CacheStore store(Options(1 << 20, 4));
  const std::vector<std::string> keys = {
      "a",       "a/",  "a/b", "a/b/c", "a.", "a0",     "a/\xff", std::string("a/\0x", 4),
      "a/\x80z", "b/a", "ab",  "A/b",   "",   "a/b\xff"};
  for (const std::string& k : keys) {
    if (k.empty()) continue;
    ASSERT_EQ(Put(store, k, "v"), SetResult::kStored) << k;
  }
  auto resident = [&] {
    std::vector<std::string> out;
    for (const std::string& k : keys) {
      if (!k.empty() && Has(store, k)) out.push_back(k);
    }
    return out;
  };
  EXPECT_EQ(store.Invalidate({}, {"a/b"}, false).removed, 3u);  // a/b, a/b/c, a/b\xff
  EXPECT_EQ(resident(),
            (std::vector<std::string>{"a", "a/", "a.", "a0", "a/\xff", std::string("a/\0x", 4),
                                      "a/\x80z", "b/a", "ab", "A/b"}));
  // Overlapping prefixes in one request: each key removed once.
  EXPECT_EQ(store.Invalidate({}, {"a/", "a/\x80", "a/"}, false).removed, 4u);
  EXPECT_EQ(resident(), (std::vector<std::string>{"a", "a.", "a0", "b/a", "ab", "A/b"}));
  EXPECT_EQ(store.Invalidate({}, {"zz", "a0/"}, false).removed, 0u);
  EXPECT_EQ(store.Invalidate({}, {"a"}, false).removed, 4u);
  EXPECT_EQ(resident(), (std::vector<std::string>{"b/a", "A/b"}));
  CacheStoreStats s = store.Stats();
  EXPECT_EQ(s.entries, 2u);
  EXPECT_EQ(s.bytes, CacheStore::Charge("b/a", 1, {}) + CacheStore::Charge("A/b", 1, {}));
  // Entries removed by other means leave the ordered index too: a prefix
  // finds nothing of them, and keys stored again are found.
  EXPECT_TRUE(store.Delete("b/a"));
  EXPECT_EQ(store.Invalidate({}, {"b/"}, false).removed, 0u);
  ASSERT_EQ(Put(store, "b/a", "again"), SetResult::kStored);
  EXPECT_EQ(store.Invalidate({}, {"b/"}, false).removed, 1u);
  store.Invalidate({}, {}, true);
  ASSERT_EQ(Put(store, "A/b", "again"), SetResult::kStored);
  EXPECT_EQ(store.Invalidate({}, {"A"}, false).removed, 1u);
  EXPECT_EQ(store.Stats().entries, 0u);
}

// Long tag names and prefixes of many lengths: the records stay within their
// byte and length bounds, and what was forgotten refuses older fills.
TEST_F(CacheStoreTest, GenerationRecordsAreBoundedInBytesAndPrefixLengths) {
  CacheStoreOptions o = Options();
  o.max_tracked_bytes = 64 << 10;
  o.max_tracked_prefix_lengths = 8;
  CacheStore store(o);
  const uint64_t early = store.generation();
  for (int i = 0; i < 200; ++i) {
    store.Invalidate({absl::StrCat(i, "/", std::string(2000, 't'))}, {}, false);
    ASSERT_LE(store.Stats().tracked_bytes, o.max_tracked_bytes) << i;
  }
  CacheStoreStats s = store.Stats();
  EXPECT_LE(s.tracked_tags * (2000 + CacheStore::kRecordOverhead), o.max_tracked_bytes);
  EXPECT_GT(s.tracked_tags, 0u);
  EXPECT_GT(s.floor_generation, early);
  EXPECT_EQ(Put(store, "k", "v", {"never"}, early), SetResult::kInvalidated);

  const uint64_t before_prefixes = store.generation();
  for (int len = 1; len <= 40; ++len) store.Invalidate({}, {std::string(len, 'p')}, false);
  s = store.Stats();
  EXPECT_LE(s.tracked_prefixes, 8u);
  EXPECT_GT(s.tracked_prefixes, 0u);
  EXPECT_GE(s.floor_generation, before_prefixes);
  // The newest prefix is still recorded exactly.
  const uint64_t before_last = store.generation() - 1;
  EXPECT_EQ(Put(store, std::string(45, 'p'), "v", {}, before_last), SetResult::kInvalidated);
  EXPECT_EQ(Put(store, "q", "v", {}, before_last), SetResult::kStored);
}

TEST_F(CacheStoreTest, PrunedGenerationRecordsRaiseTheFloor) {
  CacheStoreOptions o = Options();
  o.max_tracked_tags = 8;
  o.max_tracked_prefixes = 4;
  CacheStore store(o);
  const uint64_t early = store.generation();
  for (int i = 0; i < 20; ++i) store.Invalidate({absl::StrCat("tag", i)}, {}, false);
  for (int i = 0; i < 10; ++i) store.Invalidate({}, {absl::StrCat("p", i, "/")}, false);
  CacheStoreStats s = store.Stats();
  EXPECT_LE(s.tracked_tags, 8u);
  EXPECT_LE(s.tracked_prefixes, 4u);
  EXPECT_GT(s.floor_generation, early);
  // A fill read before forgotten invalidations cannot be checked: refused,
  // even for a tag that was never invalidated.
  EXPECT_EQ(Put(store, "k", "v", {"never"}, early), SetResult::kInvalidated);
  // Recent records are still exact.
  const uint64_t before_last = store.generation() - 1;
  EXPECT_EQ(Put(store, "p9/x", "v", {}, before_last), SetResult::kInvalidated);
  EXPECT_EQ(Put(store, "p8/x", "v", {"tag19"}, before_last), SetResult::kStored);
}

// The check-then-insert of a Set and the record-then-remove of an Invalidate
// interleaved at the worst point: the invalidation takes its generation after
// the Set's check passed but before its insert. The entry must not survive.
TEST_F(CacheStoreTest, InvalidationBetweenCheckAndInsertRemovesTheEntry) {
  CacheStore store(Options());
  const uint64_t g = store.Get("q").generation;
  std::thread invalidator;
  std::atomic<uint64_t> removed{0};
  store.SetBeforeInsertHookForTest([&] {
    invalidator = std::thread([&] { removed = store.Invalidate({"orders"}, {}, false).removed; });
    // Wait (on a condition, not a time) until the invalidation has its
    // generation; it then blocks on this shard until the insert is done.
    while (store.generation() == g) std::this_thread::yield();
  });
  EXPECT_EQ(Put(store, "q", "rows", {"orders"}, g), SetResult::kStored);
  store.SetBeforeInsertHookForTest(nullptr);
  invalidator.join();
  EXPECT_EQ(removed.load(), 1u);
  EXPECT_FALSE(Has(store, "q"));
}

TEST_F(CacheStoreTest, ReapRemovesExpiredEntries) {
  CacheStore store(Options());
  const uint64_t g = store.generation();
  store.Set("short", "v", absl::Seconds(1), absl::ZeroDuration(), {"t"}, g);
  store.Set("stale", "v", absl::Seconds(1), absl::Seconds(5), {}, g);
  store.Set("long", "v", absl::Seconds(100), absl::ZeroDuration(), {}, g);
  EXPECT_EQ(store.Reap(), 0u);
  clock_.Advance(absl::Seconds(2));
  EXPECT_EQ(store.Reap(), 1u);
  EXPECT_EQ(store.Stats().entries, 2u);
  clock_.Advance(absl::Seconds(4));
  EXPECT_EQ(store.Reap(), 1u);
  EXPECT_EQ(store.Stats().entries, 1u);
  EXPECT_EQ(store.Stats().expirations, 2u);
  EXPECT_EQ(store.Invalidate({"t"}, {}, false).removed, 0u);
  store.StartReaper();  // starts and stops cleanly with the store
}

TEST_F(CacheStoreTest, ReapHandlesMoreThanOneBatch) {
  CacheStore store(Options(64 << 20, 1));
  for (int i = 0; i < 3000; ++i) {
    store.Set(absl::StrCat("k", i), "v", absl::Seconds(1), absl::ZeroDuration(), {},
              store.generation());
  }
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(store.Reap(), 3000u);
  EXPECT_EQ(store.Stats().bytes, 0u);
}

// Gets then fills, cache-aside style, as a client would.
void Access(CacheStore& store, const std::string& key) {
  CacheStore::GetResult r = store.Get(key);
  if (r.outcome == Outcome::kMiss) {
    store.Set(key, std::string(100, 'v'), absl::Hours(1), absl::ZeroDuration(), {}, r.generation);
  }
}

int HotKeysResident(CacheStore& store, int hot) {
  int resident = 0;
  for (int i = 0; i < hot; ++i) {
    resident += store.Get(absl::StrCat("hot", i)).outcome == Outcome::kHit;
  }
  return resident;
}

void HotSetThenScan(CacheStore& store, int hot) {
  for (int round = 0; round < 5; ++round) {
    for (int i = 0; i < hot; ++i) Access(store, absl::StrCat("hot", i));
  }
  for (int i = 0; i < 20 * hot; ++i) Access(store, absl::StrCat("scan", i));
}

TEST_F(CacheStoreTest, AdmissionKeepsHotSetUnderScan) {
  const uint64_t one = CacheStore::Charge("hot00", 100, {});
  const int hot = 100;
  CacheStore store(Options(2 * hot * one, 1, /*admission=*/true));
  HotSetThenScan(store, hot);
  EXPECT_EQ(HotKeysResident(store, hot), hot);
  EXPECT_GT(store.Stats().sets_rejected, 0u);
  EXPECT_LE(store.Stats().bytes, store.capacity_bytes());
}

TEST_F(CacheStoreTest, WithoutAdmissionScanFlushesHotSet) {
  const uint64_t one = CacheStore::Charge("hot00", 100, {});
  const int hot = 100;
  CacheStore store(Options(2 * hot * one, 1, /*admission=*/false));
  HotSetThenScan(store, hot);
  EXPECT_EQ(HotKeysResident(store, hot), 0);
}

TEST_F(CacheStoreTest, AdmissionStillFillsFreeSpaceAndEvictsExpired) {
  const uint64_t one = CacheStore::Charge("k0", 10, {});
  CacheStore store(Options(4 * one, 1, /*admission=*/true));
  for (int i = 0; i < 4; ++i) {
    ASSERT_EQ(store.Set(absl::StrCat("k", i), std::string(10, 'v'), absl::Seconds(1),
                        absl::ZeroDuration(), {}, store.generation()),
              SetResult::kStored);
  }
  // Full, and the residents are as popular as the newcomer: not admitted.
  EXPECT_EQ(Put(store, "k9", std::string(10, 'v')), SetResult::kNotAdmitted);
  // Replacing a resident key is always allowed.
  EXPECT_EQ(Put(store, "k1", std::string(10, 'w')), SetResult::kStored);
  clock_.Advance(absl::Seconds(2));
  // Expired residents never block admission.
  EXPECT_EQ(Put(store, "k9", std::string(10, 'v')), SetResult::kStored);
}

}  // namespace
}  // namespace poolside::cache
