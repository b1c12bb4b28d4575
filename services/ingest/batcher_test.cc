#include "services/ingest/batcher.h"

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace poolside::ingest {
namespace {

std::shared_ptr<PendingWrite> Write(std::string group, int rows, size_t bytes_per_row = 10,
                                    std::string role = "") {
  auto w = std::make_shared<PendingWrite>();
  w->group = std::move(group);
  w->role = std::move(role);
  w->database = "db";
  w->copy_target = "t (a)";
  for (int i = 0; i < rows; ++i) {
    w->data.append(bytes_per_row - 1, 'x');
    w->data.push_back('\n');
    w->line_ends.push_back(static_cast<uint32_t>(w->data.size()));
    w->row_index.push_back(i);
  }
  return w;
}

TEST(BatcherTest, SealsOnRowsAndKeepsRequestsWhole) {
  Batcher b({.max_rows = 10, .max_bytes = 1 << 20, .linger = absl::Seconds(1)});
  std::vector<Batch> sealed;
  const absl::Time t0 = absl::UnixEpoch();
  b.Add(Write("g", 6), t0, &sealed);
  EXPECT_TRUE(sealed.empty());
  b.Add(Write("g", 6), t0, &sealed);  // 12 rows: the whole request goes in
  ASSERT_EQ(sealed.size(), 1u);
  EXPECT_EQ(sealed[0].lines, 12u);
  EXPECT_EQ(sealed[0].writes.size(), 2u);
  EXPECT_EQ(sealed[0].reason, FlushReason::kRows);
  EXPECT_EQ(b.open_batches(), 0u);
}

TEST(BatcherTest, SealsOnBytes) {
  Batcher b({.max_rows = 1000, .max_bytes = 100, .linger = absl::Seconds(1)});
  std::vector<Batch> sealed;
  b.Add(Write("g", 5, 30), absl::UnixEpoch(), &sealed);
  ASSERT_EQ(sealed.size(), 1u);
  EXPECT_EQ(sealed[0].reason, FlushReason::kBytes);
}

TEST(BatcherTest, GroupsSeparatelyAndLingers) {
  Batcher b({.max_rows = 100, .max_bytes = 1 << 20, .linger = absl::Milliseconds(10)});
  std::vector<Batch> sealed;
  const absl::Time t0 = absl::UnixEpoch();
  b.Add(Write("a", 1), t0, &sealed);
  b.Add(Write("b", 1), t0 + absl::Milliseconds(5), &sealed);
  b.Add(Write("a", 1), t0 + absl::Milliseconds(6), &sealed);
  EXPECT_EQ(b.open_batches(), 2u);
  EXPECT_EQ(b.SealExpired(t0 + absl::Milliseconds(9), &sealed), t0 + absl::Milliseconds(10));
  EXPECT_TRUE(sealed.empty());
  EXPECT_EQ(b.SealExpired(t0 + absl::Milliseconds(10), &sealed), t0 + absl::Milliseconds(15));
  ASSERT_EQ(sealed.size(), 1u);
  EXPECT_EQ(sealed[0].writes.size(), 2u);
  EXPECT_EQ(sealed[0].reason, FlushReason::kLinger);
  b.SealAll(&sealed);
  ASSERT_EQ(sealed.size(), 2u);
  EXPECT_EQ(sealed[1].reason, FlushReason::kDrain);
  EXPECT_EQ(b.SealExpired(t0, &sealed), absl::InfiniteFuture());
}

TEST(BatcherTest, NeverMixesDatabaseRoles) {
  Batcher b({.max_rows = 4, .max_bytes = 1 << 20, .linger = absl::Milliseconds(10)});
  std::vector<Batch> sealed;
  const absl::Time t0 = absl::UnixEpoch();
  // One table and column list, three roles (the DSN user's is "").
  for (const char* role : {"app_a", "app_b", "", "app_a", "app_b", ""}) {
    b.Add(Write("g", 1, 10, role), t0, &sealed);
  }
  EXPECT_TRUE(sealed.empty());
  EXPECT_EQ(b.open_batches(), 3u);
  b.Add(Write("g", 3, 10, "app_b"), t0, &sealed);  // app_b's batch is full
  ASSERT_EQ(sealed.size(), 1u);
  EXPECT_EQ(sealed[0].role, "app_b");
  EXPECT_EQ(sealed[0].lines, 5u);
  b.SealAll(&sealed);
  ASSERT_EQ(sealed.size(), 3u);
  for (const Batch& batch : sealed) {
    for (const auto& w : batch.writes) EXPECT_EQ(w->role, batch.role);
  }
  EXPECT_EQ(sealed[1].writes.size() + sealed[2].writes.size(), 4u);
}

TEST(BatcherTest, JoinsSealedBatchesOfOneGroupWithinTheBounds) {
  Batcher b({.max_rows = 10, .max_bytes = 1 << 20, .linger = absl::Milliseconds(1)});
  std::vector<Batch> sealed;
  const absl::Time t0 = absl::UnixEpoch();
  for (int i = 0; i < 4; ++i) {
    b.Add(Write("g", 3), t0, &sealed);
    b.SealExpired(t0 + absl::Milliseconds(1), &sealed);
  }
  b.Add(Write("g", 1, 10, "other role"), t0, &sealed);
  b.Add(Write("h", 1), t0, &sealed);
  b.SealExpired(t0 + absl::Milliseconds(1), &sealed);
  ASSERT_EQ(sealed.size(), 6u);
  Batch into = std::move(sealed[0]);
  EXPECT_TRUE(b.Join(&into, sealed[1]));
  EXPECT_TRUE(b.Join(&into, sealed[2]));
  EXPECT_EQ(into.lines, 9u);
  EXPECT_EQ(into.bytes, 90u);
  EXPECT_EQ(into.writes.size(), 3u);
  EXPECT_EQ(into.joined, 2u);
  EXPECT_EQ(into.reason, FlushReason::kLinger);
  EXPECT_TRUE(sealed[1].writes.empty());
  // 12 rows would pass max_rows: not joined, left as it was.
  EXPECT_FALSE(b.Join(&into, sealed[3]));
  EXPECT_EQ(sealed[3].lines, 3u);
  EXPECT_EQ(sealed[3].writes.size(), 1u);
  EXPECT_EQ(into.lines, 9u);
  // Another role or another group never shares a transaction.
  Batch small = std::move(sealed[3]);
  EXPECT_FALSE(b.Join(&small, sealed[4]));
  EXPECT_FALSE(b.Join(&small, sealed[5]));
  EXPECT_EQ(small.writes.size(), 1u);
  EXPECT_EQ(sealed[4].writes.size(), 1u);
  EXPECT_EQ(sealed[5].writes.size(), 1u);
}

TEST(BatcherTest, JoinKeepsMaxBytes) {
  Batcher b({.max_rows = 1000, .max_bytes = 100, .linger = absl::Milliseconds(1)});
  std::vector<Batch> sealed;
  b.Add(Write("g", 6), absl::UnixEpoch(), &sealed);
  b.SealExpired(absl::UnixEpoch() + absl::Milliseconds(1), &sealed);
  b.Add(Write("g", 5), absl::UnixEpoch(), &sealed);
  b.SealExpired(absl::UnixEpoch() + absl::Milliseconds(1), &sealed);
  ASSERT_EQ(sealed.size(), 2u);
  EXPECT_FALSE(b.Join(&sealed[0], sealed[1]));  // 110 bytes
  EXPECT_EQ(sealed[0].writes.size(), 1u);
  EXPECT_EQ(sealed[1].writes.size(), 1u);
}

}  // namespace
}  // namespace poolside::ingest
