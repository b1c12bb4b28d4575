#include "services/query/invalidation_state.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "services/query/cache_bypass.h"

namespace poolside::query {
namespace {

constexpr absl::Duration kMaxLag = absl::Seconds(1);

// Listening, subscribed, a stream heard from just now, flushed: ready.
void MakeReady(DatabaseInvalidation& s) {
  s.listens = true;
  s.subscribed.store(true);
  s.stream.store(7);
  s.last_heard_micros.store(absl::ToUnixMicros(absl::Now()));
  s.Flushed(s.suspect_epoch.load());
}

TEST(DatabaseInvalidationTest, ReadsWaitForAFlushThatBeganAfterTheLastSuspicion) {
  DatabaseInvalidation s;                                // no listener: only the flush decides
  EXPECT_EQ(s.NotReady(kMaxLag), CacheBypass::kStream);  // suspect from the start
  s.Flushed(s.suspect_epoch.load());
  EXPECT_FALSE(s.NotReady(kMaxLag).has_value());

  // A lost invalidation: a flush that began before it does not count.
  const uint64_t before = s.suspect_epoch.load();
  s.MarkSuspect();
  EXPECT_EQ(s.NotReady(kMaxLag), CacheBypass::kStream);
  s.Flushed(before);
  EXPECT_EQ(s.NotReady(kMaxLag), CacheBypass::kStream);
  const uint64_t after = s.suspect_epoch.load();
  s.Flushed(after);
  EXPECT_FALSE(s.NotReady(kMaxLag).has_value());
  // A late confirmation of an older flush never moves it back.
  s.Flushed(before);
  EXPECT_EQ(s.flushed_epoch.load(), after);
  EXPECT_FALSE(s.NotReady(kMaxLag).has_value());
}

TEST(DatabaseInvalidationTest, AWalListenerIsReadyOnlyWhileItsStreamIsHeardAndKeepsUp) {
  DatabaseInvalidation s;
  MakeReady(s);
  EXPECT_FALSE(s.NotReady(kMaxLag).has_value());

  s.subscribed.store(false);
  EXPECT_EQ(s.NotReady(kMaxLag), CacheBypass::kStream);
  s.subscribed.store(true);

  s.stream.store(0);  // no stream applied (no holder, a takeover)
  EXPECT_EQ(s.NotReady(kMaxLag), CacheBypass::kStream);
  s.stream.store(7);

  // The holder went silent for longer than the bound.
  s.last_heard_micros.store(absl::ToUnixMicros(absl::Now() - absl::Seconds(10)));
  EXPECT_EQ(s.NotReady(kMaxLag), CacheBypass::kStream);
  EXPECT_FALSE(s.NotReady(absl::Seconds(60)).has_value());
  s.last_heard_micros.store(absl::ToUnixMicros(absl::Now()));

  s.lagging.store(true);
  EXPECT_EQ(s.NotReady(kMaxLag), CacheBypass::kLag);
  s.lagging.store(false);
  EXPECT_FALSE(s.NotReady(kMaxLag).has_value());
}

TEST(DatabaseInvalidationTest, TriggerModeNeedsNoStreamAndOffNeverServes) {
  DatabaseInvalidation s;
  MakeReady(s);
  s.mode.store(InvalidationMode::kTrigger);
  s.stream.store(0);
  s.last_heard_micros.store(0);
  s.lagging.store(true);  // stream state is the WAL's only
  EXPECT_FALSE(s.NotReady(kMaxLag).has_value());
  s.subscribed.store(false);
  EXPECT_EQ(s.NotReady(kMaxLag), CacheBypass::kStream);

  s.mode.store(InvalidationMode::kOff);
  s.subscribed.store(true);
  EXPECT_EQ(s.NotReady(kMaxLag), CacheBypass::kOff);
  s.listens = false;
  EXPECT_EQ(s.NotReady(kMaxLag), CacheBypass::kOff);
}

TEST(DatabaseInvalidationTest, ReplicaFillsAreFencedByTheAppliedPositionWhileNoneIsOpen) {
  DatabaseInvalidation s;
  s.fence_lsn.store(500);
  EXPECT_EQ(s.ReplicaFillFence(), 500u);
  // An invalidation or flush of unknown position: the primary reads.
  s.fence_opened.fetch_add(1);
  EXPECT_EQ(s.ReplicaFillFence(), UINT64_MAX);
  s.fence_closed.store(1);
  EXPECT_EQ(s.ReplicaFillFence(), 500u);
  // Trigger mode knows no positions.
  s.mode.store(InvalidationMode::kTrigger);
  EXPECT_EQ(s.ReplicaFillFence(), UINT64_MAX);
}

TEST(DatabaseInvalidationTest, OnlyReadsOfWatchedTablesAloneAreWatched) {
  DatabaseInvalidation s;
  EXPECT_FALSE(s.Watches({"public.a"}));
  {
    absl::MutexLock lock(&s.watched_mu);
    s.watched = {"public.a", "public.b"};
  }
  EXPECT_TRUE(s.Watches({"public.a"}));
  EXPECT_TRUE(s.Watches({"public.a", "public.b"}));
  EXPECT_FALSE(s.Watches({"public.a", "public.c"}));
  EXPECT_FALSE(s.Watches({"a"}));  // names are schema-qualified
}

TEST(DatabaseInvalidationTest, StatusSaysWhatTheStatusPageShows) {
  DatabaseInvalidation s;
  MakeReady(s);
  s.applied_lsn.store(1234);
  s.streams_seen.store(2);
  s.SetNote("triggers still installed");
  {
    absl::MutexLock lock(&s.watched_mu);
    s.watched = {"public.b", "public.a"};
  }
  InvalidationStatus st = s.Status("app", kMaxLag);
  EXPECT_EQ(st.database, "app");
  EXPECT_EQ(st.mode, "wal");
  EXPECT_TRUE(st.ready);
  EXPECT_TRUE(st.subscribed);
  EXPECT_FALSE(st.holder);  // no relay here
  EXPECT_EQ(st.stream, 7u);
  EXPECT_EQ(st.applied_lsn, 1234u);
  EXPECT_EQ(st.streams_seen, 2u);
  EXPECT_LT(st.since_heard, absl::Seconds(60));
  EXPECT_EQ(st.watched, (std::vector<std::string>{"public.a", "public.b"}));
  EXPECT_EQ(st.note, "triggers still installed");

  s.mode.store(InvalidationMode::kOff);
  st = s.Status("app", kMaxLag);
  EXPECT_EQ(st.mode, "off");
  EXPECT_FALSE(st.ready);
  EXPECT_STREQ(InvalidationModeName(InvalidationMode::kTrigger), "trigger");
  EXPECT_STREQ(CacheBypassName(CacheBypass::kKeySize), "key_size");
  EXPECT_STREQ(CacheBypassName(CacheBypass::kCount), "unknown");
}

}  // namespace
}  // namespace poolside::query
