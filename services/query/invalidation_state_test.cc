#include "services/query/invalidation_state.h"

#include <cstdint>
#include <initializer_list>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
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

TEST(XidSnapshotTest, ParsesWhatPgCurrentSnapshotPrints) {
  absl::StatusOr<XidSnapshot> s = XidSnapshot::Parse("100:110:107,102");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->xmin, 100u);
  EXPECT_EQ(s->xmax, 110u);
  EXPECT_EQ(s->xip, (std::vector<uint64_t>{102, 107}));
  s = XidSnapshot::Parse("745:745:");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->xip.empty());
  for (const char* bad :
       {"", "1:2", "1:2:3:4", "a:2:", "1:b:", "-1:2:", "+1:2:", " 1:2:", "1:2: 1", "5:3:", "1:5:5",
        "1:5:0", "1:5:2,,3", "1:5:2,", "1:99999999999999999999999:"}) {
    EXPECT_EQ(XidSnapshot::Parse(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  // Too many running: kept as if none after xmin had finished.
  std::string many = "1000:5000:";
  for (size_t i = 0; i <= XidSnapshot::kMaxRunning; ++i) {
    absl::StrAppend(&many, i == 0 ? "" : ",", 1000 + i);
  }
  s = XidSnapshot::Parse(many);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->Finished(999));
  EXPECT_FALSE(s->Finished(4000));
}

TEST(XidSnapshotTest, FinishedMeansBeforeXminOrBeforeXmaxAndNotRunning) {
  XidSnapshot s = *XidSnapshot::Parse("100:110:102,107");
  EXPECT_TRUE(s.Finished(3));
  EXPECT_TRUE(s.Finished(99));
  EXPECT_TRUE(s.Finished(100));
  EXPECT_FALSE(s.Finished(102));
  EXPECT_TRUE(s.Finished(105));
  EXPECT_FALSE(s.Finished(107));
  EXPECT_TRUE(s.Finished(109));
  EXPECT_FALSE(s.Finished(110));  // begun after
  EXPECT_FALSE(s.Finished(111));
  // 32-bit ids from the stream, 64-bit ones in snapshots: across an epoch.
  const uint64_t epoch = uint64_t{1} << 32;
  s = *XidSnapshot::Parse(absl::StrCat(epoch - 10, ":", epoch + 10, ":", epoch + 2));
  EXPECT_TRUE(s.Finished(0xfffffff0u));   // epoch - 16
  EXPECT_TRUE(s.Finished(0xfffffffau));   // epoch - 6
  EXPECT_TRUE(s.Finished(1));             // epoch + 1
  EXPECT_FALSE(s.Finished(2));            // running
  EXPECT_FALSE(s.Finished(10));           // epoch + 10: not begun
  EXPECT_FALSE(s.Finished(0x7fff0000u));  // far after xmax: never taken for an old one
  // Early in a cluster's life no id is before 0.
  s = *XidSnapshot::Parse("700:800:");
  EXPECT_FALSE(s.Finished(0xfffff000u));
}

constexpr uint64_t kStream = 7;  // the stream applied when recorded

std::vector<uint32_t> Xids(std::initializer_list<uint32_t> x) { return x; }

TEST(OwnWriteCoverTest, CoversATableOnlyForTransactionsItsSnapshotSawFinished) {
  OwnWriteCover cover;
  const absl::Time now = absl::Now();
  EXPECT_FALSE(cover.Covers("public.rows", Xids({50}), kStream, now)) << "nothing recorded";
  cover.Record({"public.rows", "public.other"}, *XidSnapshot::Parse("100:110:105"), kStream, now);
  EXPECT_EQ(cover.size(), 2u);
  EXPECT_TRUE(cover.Covers("public.rows", Xids({104}), kStream, now));
  EXPECT_TRUE(cover.Covers("public.other", Xids({99, 104, 109}), kStream, now));
  EXPECT_FALSE(cover.Covers("public.rows", Xids({104, 105}), kStream, now)) << "105 was running";
  EXPECT_FALSE(cover.Covers("public.rows", Xids({110}), kStream, now)) << "110 came after";
  EXPECT_FALSE(cover.Covers("public.rows", Xids({}), kStream, now)) << "no transaction named";
  EXPECT_FALSE(cover.Covers("public.child", Xids({104}), kStream, now)) << "not invalidated here";
  EXPECT_FALSE(cover.Covers("rows", Xids({104}), kStream, now)) << "names are schema-qualified";
  EXPECT_FALSE(cover.Covers("", Xids({104}), kStream, now));

  // A later write's snapshot sees more; an earlier one recorded late does
  // not take its place.
  cover.Record({"public.rows"}, *XidSnapshot::Parse("108:120:"), kStream, now);
  EXPECT_TRUE(cover.Covers("public.rows", Xids({105, 115}), kStream, now));
  cover.Record({"public.rows"}, *XidSnapshot::Parse("100:104:"), kStream, now);
  EXPECT_TRUE(cover.Covers("public.rows", Xids({105, 115}), kStream, now));

  // A write that invalidated the whole database covers every table.
  cover.Record({std::string(OwnWriteCover::kEveryTable)}, *XidSnapshot::Parse("200:200:"), kStream,
               now);
  EXPECT_TRUE(cover.Covers("public.child", Xids({150}), kStream, now));
  EXPECT_FALSE(cover.Covers("public.child", Xids({200}), kStream, now));
}

// Transaction ids mean nothing across servers: a record counts for the
// stream applied when it was made only.
TEST(OwnWriteCoverTest, ARecordCountsForItsOwnStreamOnly) {
  OwnWriteCover cover;
  const absl::Time now = absl::Now();
  cover.Record({"public.rows"}, *XidSnapshot::Parse("100:110:"), 0, now);
  EXPECT_EQ(cover.size(), 0u) << "no stream applied: nothing to match";
  cover.Record({"public.rows"}, *XidSnapshot::Parse("100:110:"), kStream, now);
  EXPECT_TRUE(cover.Covers("public.rows", Xids({104}), kStream, now));
  EXPECT_FALSE(cover.Covers("public.rows", Xids({104}), kStream + 1, now));
  EXPECT_FALSE(cover.Covers("public.rows", Xids({104}), 0, now));
  // A new stream's record replaces the old one's, whatever its snapshot.
  cover.Record({"public.rows"}, *XidSnapshot::Parse("50:60:"), kStream + 1, now);
  EXPECT_FALSE(cover.Covers("public.rows", Xids({104}), kStream, now));
  EXPECT_TRUE(cover.Covers("public.rows", Xids({55}), kStream + 1, now));
  EXPECT_FALSE(cover.Covers("public.rows", Xids({104}), kStream + 1, now));
}

TEST(OwnWriteCoverTest, RecordsExpireAndTheLeastRecentlyRecordedTablesGoFirst) {
  OwnWriteCover::Options o;
  o.max_tables = 3;
  o.max_age = absl::Seconds(10);
  OwnWriteCover cover(o);
  const absl::Time t0 = absl::Now();
  const XidSnapshot snap = *XidSnapshot::Parse("100:100:");
  cover.Record({"public.a"}, snap, kStream, t0);
  cover.Record({"public.b"}, snap, kStream, t0 + absl::Seconds(1));
  cover.Record({"public.c"}, snap, kStream, t0 + absl::Seconds(2));
  EXPECT_EQ(cover.size(), 3u);
  // Past its age a record covers nothing.
  EXPECT_TRUE(cover.Covers("public.a", Xids({50}), kStream, t0 + absl::Seconds(10)));
  EXPECT_FALSE(cover.Covers("public.a", Xids({50}), kStream, t0 + absl::Seconds(11)));

  // Full: the least recently recorded goes.
  cover.Record({"public.d"}, snap, kStream, t0 + absl::Seconds(3));
  EXPECT_EQ(cover.size(), 3u);
  EXPECT_FALSE(cover.Covers("public.a", Xids({50}), kStream, t0 + absl::Seconds(3)));
  for (const char* t : {"public.b", "public.c", "public.d"}) {
    EXPECT_TRUE(cover.Covers(t, Xids({50}), kStream, t0 + absl::Seconds(3))) << t;
  }
  // Recorded again, b is the most recent; e pushes out c.
  cover.Record({"public.b"}, snap, kStream, t0 + absl::Seconds(4));
  cover.Record({"public.e"}, snap, kStream, t0 + absl::Seconds(5));
  EXPECT_EQ(cover.size(), 3u);
  EXPECT_FALSE(cover.Covers("public.c", Xids({50}), kStream, t0 + absl::Seconds(5)));
  EXPECT_TRUE(cover.Covers("public.b", Xids({50}), kStream, t0 + absl::Seconds(5)));
  // Expired records make room before live ones go.
  cover.Record({"public.f", "public.g"}, snap, kStream, t0 + absl::Seconds(14.5));
  EXPECT_EQ(cover.size(), 3u);
  EXPECT_TRUE(cover.Covers("public.e", Xids({50}), kStream, t0 + absl::Seconds(14.5)));
  EXPECT_TRUE(cover.Covers("public.f", Xids({50}), kStream, t0 + absl::Seconds(14.5)));
  EXPECT_TRUE(cover.Covers("public.g", Xids({50}), kStream, t0 + absl::Seconds(14.5)));
  // An expired record of a table is replaced whatever its snapshot.
  cover.Record({"public.e"}, *XidSnapshot::Parse("300:400:"), kStream, t0 + absl::Seconds(30));
  cover.Record({"public.e"}, *XidSnapshot::Parse("100:100:"), kStream, t0 + absl::Seconds(45));
  EXPECT_TRUE(cover.Covers("public.e", Xids({50}), kStream, t0 + absl::Seconds(45)));
  EXPECT_FALSE(cover.Covers("public.e", Xids({350}), kStream, t0 + absl::Seconds(45)));
}

TEST(OwnWriteCoverTest, ConcurrentWritersAndTheListenerShareIt) {
  OwnWriteCover::Options o;
  o.max_tables = 8;
  OwnWriteCover cover(o);
  const absl::Time now = absl::Now();
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&, w] {
      for (int i = 0; i < 2000; ++i) {
        cover.Record({absl::StrCat("public.t", (w * 7 + i) % 20)},
                     *XidSnapshot::Parse(absl::StrCat(100 + i, ":", 100 + i, ":")), kStream, now);
        (void)cover.Covers(absl::StrCat("public.t", i % 20), Xids({99}), kStream, now);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_LE(cover.size(), 8u);
}

}  // namespace
}  // namespace poolside::query
