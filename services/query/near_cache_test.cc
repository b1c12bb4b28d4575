#include "services/query/near_cache.h"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"
#include "gtest/gtest.h"

namespace poolside::query {
namespace {

std::shared_ptr<const v1::ResultSet> Result(const std::string& text, int rows = 1) {
  auto r = std::make_shared<v1::ResultSet>();
  r->add_columns()->set_name("c");
  for (int i = 0; i < rows; ++i) r->add_rows()->add_values()->set_text_value(text);
  return r;
}

std::string TextOf(const std::shared_ptr<const v1::ResultSet>& r) {
  return r == nullptr ? "<none>" : r->rows(0).values(0).text_value();
}

CacheInvalidationEvent Event(CacheInvalidationEvent::Kind kind) {
  CacheInvalidationEvent e;
  e.kind = kind;
  return e;
}

class NearCacheTest : public ::testing::Test {
 protected:
  NearCache::Options Options(uint64_t capacity = 1 << 20, uint32_t shards = 4) {
    NearCache::Options o;
    o.capacity_bytes = capacity;
    o.shards = shards;
    o.max_ttl = absl::Seconds(10);
    o.clock = &clock_;
    o.reaper = false;
    return o;
  }
  // Fills `key` with a read that began now.
  static bool Put(NearCache& near, const std::string& key, const std::string& text,
                  std::vector<std::string> tags = {"t:a"}, absl::Duration ttl = absl::Seconds(5)) {
    return near.Fill(key, Result(text), ttl, std::move(tags), near.ReadGeneration());
  }
  SimulatedClock clock_;
};

TEST_F(NearCacheTest, ServesOnlyWhileTheSidecarWatchIsUp) {
  NearCache near(Options());
  ASSERT_TRUE(Put(near, "k", "v"));
  EXPECT_EQ(near.Get("k"), nullptr) << "no watch yet: nothing is served";
  near.OnEvent(Event(CacheInvalidationEvent::kSubscribed));
  EXPECT_EQ(near.Get("k"), nullptr) << "subscribing empties the cache";
  ASSERT_TRUE(Put(near, "k", "v"));
  EXPECT_EQ(TextOf(near.Get("k")), "v");
  EXPECT_TRUE(near.serving());

  near.OnEvent(Event(CacheInvalidationEvent::kBroken));
  EXPECT_FALSE(near.serving());
  EXPECT_EQ(near.Get("k"), nullptr) << "events may be missed: nothing is served";
  near.OnEvent(Event(CacheInvalidationEvent::kSubscribed));
  EXPECT_EQ(near.Get("k"), nullptr) << "what was held before the watch came back is gone";
  EXPECT_EQ(near.GetStats().entries, 0u);
  EXPECT_EQ(near.GetStats().subscriptions, 2u);
}

TEST_F(NearCacheTest, HitUntilTheTtlCappedByMaxTtl) {
  NearCache near(Options());
  near.OnEvent(Event(CacheInvalidationEvent::kSubscribed));
  ASSERT_TRUE(Put(near, "short", "s", {"t:a"}, absl::Seconds(5)));
  ASSERT_TRUE(Put(near, "long", "l", {"t:a"}, absl::Hours(1)));
  clock_.Advance(absl::Seconds(4));
  EXPECT_EQ(TextOf(near.Get("short")), "s");
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(near.Get("short"), nullptr) << "fresh only: no stale window";
  EXPECT_EQ(TextOf(near.Get("long")), "l");
  clock_.Advance(absl::Seconds(5));
  EXPECT_EQ(near.Get("long"), nullptr) << "capped at max_ttl (10 s)";
  EXPECT_FALSE(near.Fill("zero", Result("z"), absl::ZeroDuration(), {}, near.ReadGeneration()));
}

TEST_F(NearCacheTest, ByteBudgetIsNeverExceededAndEvictionIsLeastRecentlyUsed) {
  constexpr uint64_t kCapacity = 64 << 10;
  NearCache near(Options(kCapacity, 1));
  near.OnEvent(Event(CacheInvalidationEvent::kSubscribed));
  ASSERT_TRUE(Put(near, "first", "keep me"));
  for (int i = 0; i < 2000; ++i) {
    // "first" is used between fills, so it is never the least recently used.
    EXPECT_EQ(TextOf(near.Get("first")), "keep me") << i;
    near.Fill(absl::StrCat("key", i), Result(std::string(100 + i % 300, 'x'), 1 + i % 5),
              absl::Seconds(5), {"t:a", absl::StrCat("t:", i % 7)}, near.ReadGeneration());
    const NearCache::Stats s = near.GetStats();
    ASSERT_LE(s.bytes, kCapacity) << "after fill " << i;
  }
  const NearCache::Stats s = near.GetStats();
  EXPECT_GT(s.evictions, 0u);
  EXPECT_GT(s.entries, 10u);
  EXPECT_EQ(near.Get("key0"), nullptr) << "the oldest entries were evicted";
  EXPECT_NE(near.Get("key1999"), nullptr) << "the newest stays";
  // A result larger than the whole budget is refused, not stored over budget.
  EXPECT_FALSE(near.Fill("huge", Result(std::string(kCapacity, 'y')), absl::Seconds(5), {},
                         near.ReadGeneration()));
  EXPECT_LE(near.GetStats().bytes, kCapacity);
}

TEST_F(NearCacheTest, InvalidationsByTagPrefixDeleteAndFlush) {
  NearCache near(Options());
  near.OnEvent(Event(CacheInvalidationEvent::kSubscribed));
  ASSERT_TRUE(Put(near, "q1|a", "a", {"db:x", "t:x:public.a"}));
  ASSERT_TRUE(Put(near, "q1|b", "b", {"db:x", "t:x:public.b"}));
  ASSERT_TRUE(Put(near, "q1ro|c", "c", {"db:x", "t:x:public.b"}));
  ASSERT_TRUE(Put(near, "q1|d", "d", {"db:y"}));

  near.Invalidate({"t:x:public.a"});  // this replica's own (NOTIFY, a write)
  EXPECT_EQ(near.Get("q1|a"), nullptr);
  EXPECT_EQ(TextOf(near.Get("q1|b")), "b");

  CacheInvalidationEvent by_tag = Event(CacheInvalidationEvent::kInvalidate);
  by_tag.tags = {"t:x:public.b"};  // from the sidecar's watch
  near.OnEvent(by_tag);
  EXPECT_EQ(near.Get("q1|b"), nullptr);
  EXPECT_EQ(near.Get("q1ro|c"), nullptr);
  EXPECT_EQ(TextOf(near.Get("q1|d")), "d");

  ASSERT_TRUE(Put(near, "q1|b", "b", {"db:x"}));
  CacheInvalidationEvent by_prefix = Event(CacheInvalidationEvent::kInvalidate);
  by_prefix.prefixes = {"q1|b"};
  near.OnEvent(by_prefix);
  EXPECT_EQ(near.Get("q1|b"), nullptr);
  EXPECT_EQ(TextOf(near.Get("q1|d")), "d");

  CacheInvalidationEvent deleted = Event(CacheInvalidationEvent::kDelete);
  deleted.key = "q1|d";
  near.OnEvent(deleted);
  EXPECT_EQ(near.Get("q1|d"), nullptr);

  ASSERT_TRUE(Put(near, "q1|e", "e", {"db:y"}));
  CacheInvalidationEvent flush = Event(CacheInvalidationEvent::kInvalidate);
  flush.flush_all = true;
  near.OnEvent(flush);
  EXPECT_EQ(near.Get("q1|e"), nullptr);
  EXPECT_EQ(near.GetStats().entries, 0u);
  EXPECT_TRUE(near.serving()) << "a flush is an event like any other";
}

TEST_F(NearCacheTest, CountsWhatArrivesOverTheWatchApartFromItsOwnInvalidations) {
  NearCache near(Options());
  near.OnEvent(Event(CacheInvalidationEvent::kSubscribed));
  const uint64_t subscribed_flush = near.GetStats().invalidations;
  near.Invalidate({"t:x:public.a"});  // own (NOTIFY, a write): not a watch event
  NearCache::Stats s = near.GetStats();
  EXPECT_EQ(s.watch_events, 0u);
  EXPECT_EQ(s.watch_generation, 0u);
  EXPECT_EQ(s.invalidations, subscribed_flush + 1);

  // The sidecar's echo of it, then someone else's, delivered out of
  // generation order (concurrent Invalidate calls): the highest one counts.
  CacheInvalidationEvent echo = Event(CacheInvalidationEvent::kInvalidate);
  echo.tags = {"t:x:public.a"};
  echo.generation = 1007;
  CacheInvalidationEvent other = Event(CacheInvalidationEvent::kInvalidate);
  other.tags = {"cli-tag"};
  other.generation = 1005;
  near.OnEvent(echo);
  near.OnEvent(other);
  CacheInvalidationEvent deleted = Event(CacheInvalidationEvent::kDelete);
  deleted.key = "q1|d";  // deletes carry no generation
  near.OnEvent(deleted);
  s = near.GetStats();
  EXPECT_EQ(s.watch_events, 3u);
  EXPECT_EQ(s.watch_generation, 1007u);
  EXPECT_EQ(s.invalidations, subscribed_flush + 3);
  EXPECT_EQ(s.subscriptions, 1u);

  // A new watch (a restarted sidecar starts its own generations): nothing
  // has arrived over it yet.
  near.OnEvent(Event(CacheInvalidationEvent::kBroken));
  EXPECT_EQ(near.GetStats().watch_generation, 1007u);
  near.OnEvent(Event(CacheInvalidationEvent::kSubscribed));
  s = near.GetStats();
  EXPECT_EQ(s.watch_generation, 0u);
  EXPECT_EQ(s.watch_events, 3u) << "a counter: it survives the watch";
  EXPECT_EQ(s.subscriptions, 2u);
  echo.generation = 3;
  near.OnEvent(echo);
  EXPECT_EQ(near.GetStats().watch_generation, 3u);
}

TEST_F(NearCacheTest, AFillThatBeganBeforeAnInvalidationIsRefused) {
  NearCache near(Options());
  near.OnEvent(Event(CacheInvalidationEvent::kSubscribed));
  const uint64_t read = near.ReadGeneration();  // the read begins
  near.Invalidate({"t:x:public.a"});            // a write commits and is notified
  EXPECT_FALSE(near.Fill("a", Result("old"), absl::Seconds(5), {"db:x", "t:x:public.a"}, read));
  EXPECT_EQ(near.Get("a"), nullptr);
  // Per tag: an entry the invalidation does not cover is still stored.
  EXPECT_TRUE(near.Fill("b", Result("b"), absl::Seconds(5), {"db:x", "t:x:public.b"}, read));
  EXPECT_EQ(near.GetStats().fills_refused, 1u);

  // The same for a tag invalidated through the sidecar's watch, a flush, and
  // a re-subscription.
  uint64_t g = near.ReadGeneration();
  CacheInvalidationEvent by_tag = Event(CacheInvalidationEvent::kInvalidate);
  by_tag.tags = {"cli-tag"};
  near.OnEvent(by_tag);
  EXPECT_FALSE(near.Fill("c", Result("c"), absl::Seconds(5), {"db:x", "cli-tag"}, g));
  g = near.ReadGeneration();
  near.Invalidate({}, /*flush_all=*/true);
  EXPECT_FALSE(near.Fill("d", Result("d"), absl::Seconds(5), {"db:x"}, g));
  g = near.ReadGeneration();
  near.OnEvent(Event(CacheInvalidationEvent::kBroken));
  near.OnEvent(Event(CacheInvalidationEvent::kSubscribed));
  EXPECT_FALSE(near.Fill("e", Result("e"), absl::Seconds(5), {"db:x"}, g));
  // A read that began after all that fills.
  EXPECT_TRUE(near.Fill("f", Result("f"), absl::Seconds(5), {"db:x"}, near.ReadGeneration()));
  EXPECT_EQ(TextOf(near.Get("f")), "f");
}

TEST_F(NearCacheTest, ConcurrentReadsFillsAndInvalidations) {
  NearCache near(Options(256 << 10, 8));
  near.OnEvent(Event(CacheInvalidationEvent::kSubscribed));
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; !stop.load() && i < 20000; ++i) {
        const std::string key = absl::StrCat("k", (i * 7 + t) % 500);
        if (auto hit = near.Get(key)) {
          ASSERT_EQ(hit->rows(0).values(0).text_value(), key);
        } else {
          near.Fill(key, Result(key), absl::Seconds(5), {absl::StrCat("t:", i % 3)},
                    near.ReadGeneration());
        }
      }
    });
  }
  threads.emplace_back([&] {
    for (int i = 0; i < 2000; ++i) {
      near.Invalidate({absl::StrCat("t:", i % 3)});
      if (i % 500 == 0) {
        near.OnEvent(Event(CacheInvalidationEvent::kBroken));
        near.OnEvent(Event(CacheInvalidationEvent::kSubscribed));
      }
    }
  });
  for (auto& t : threads) t.join();
  EXPECT_LE(near.GetStats().bytes, uint64_t{256} << 10);
}

}  // namespace
}  // namespace poolside::query
