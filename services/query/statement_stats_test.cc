#include "services/query/statement_stats.h"

#include "gtest/gtest.h"

namespace poolside::query {
namespace {

// Records `sql` as the engine does: by its analysis.
void Record(StatementStatsRegistry& reg, absl::string_view db, absl::string_view sql,
            absl::Duration latency, uint64_t rows, bool ok) {
  reg.Record(db, *sql::AnalyzeOnce(sql), latency, rows, ok);
}

TEST(StatementStatsTest, NoLiteralOfAnyKindIsShown) {
  StatementStatsRegistry reg;
  Record(reg, "db",
         "SELECT * FROM t WHERE a = 'secret1' AND b = E'secret2\\n' AND c = $$secret3$$ "
         "AND d = $tag$secret4$tag$ AND e = 424242 AND f = 1.5e3 AND g = X'ABCD' AND h = $1",
         absl::Milliseconds(1), 0, true);
  auto all = reg.Snapshot("db", 0);
  ASSERT_EQ(all.size(), 1u);
  const std::string& shown = all[0].statement();
  for (const char* literal : {"secret", "424242", "1.5e3", "ABCD"}) {
    EXPECT_EQ(shown.find(literal), std::string::npos) << literal << " in " << shown;
  }
  EXPECT_NE(shown.find("$1"), std::string::npos) << shown;
  EXPECT_EQ(all[0].fingerprint().size(), 16u);
}

TEST(StatementStatsTest, GroupsByNormalizedStatement) {
  StatementStatsRegistry reg;
  Record(reg, "db", "SELECT 1", absl::Milliseconds(2), 1, true);
  Record(reg, "db", "select   2 -- a comment", absl::Milliseconds(4), 1, true);
  Record(reg, "db", "SELECT 2", absl::Milliseconds(6), 0, false);
  Record(reg, "other", "SELECT 1", absl::Milliseconds(1), 1, true);
  auto all = reg.Snapshot("db", 0);
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].statement(), "SELECT $1");
  EXPECT_EQ(all[0].calls(), 3u);
  EXPECT_EQ(all[0].errors(), 1u);
  EXPECT_EQ(all[0].rows(), 2u);
  EXPECT_NEAR(all[0].total_ms(), 12.0, 1e-6);
  EXPECT_NEAR(all[0].mean_ms(), 4.0, 1e-6);
  EXPECT_GT(all[0].p99_ms(), 0.0);
  EXPECT_EQ(reg.Snapshot("", 0).size(), 2u);
}

TEST(StatementStatsTest, BoundedEntriesOverflowIntoOther) {
  StatementStatsRegistry reg(2);
  for (const char* sql :
       {"SELECT a FROM x", "SELECT b FROM x", "SELECT c FROM x", "SELECT d FROM x"}) {
    Record(reg, "db", sql, absl::Milliseconds(1), 0, true);
  }
  auto all = reg.Snapshot("", 0);
  ASSERT_EQ(all.size(), 3u);
  uint64_t other_calls = 0;
  for (const auto& s : all)
    if (s.statement() == "<other>") other_calls = s.calls();
  EXPECT_EQ(other_calls, 2u);
}

TEST(StatementStatsTest, SortedByTotalTimeAndLimited) {
  StatementStatsRegistry reg;
  Record(reg, "db", "SELECT a FROM x", absl::Milliseconds(1), 0, true);
  Record(reg, "db", "SELECT b FROM x", absl::Milliseconds(9), 0, true);
  auto top = reg.Snapshot("", 1);
  ASSERT_EQ(top.size(), 1u);
  EXPECT_EQ(top[0].statement(), "SELECT b FROM x");
}

TEST(StatementStatsTest, LatencyByDatabaseMergesStatements) {
  StatementStatsRegistry reg;
  reg.SetSlowThreshold(absl::Seconds(1));
  Record(reg, "db", "SELECT 1", absl::Milliseconds(2), 1, true);
  Record(reg, "db", "SELECT 2", absl::Milliseconds(4), 1, true);
  Record(reg, "db", "SELECT 3", absl::Seconds(2), 1, false);  // also logged as slow
  Record(reg, "other", "SELECT 1", absl::Milliseconds(1), 1, true);
  const auto by_db = reg.LatencyByDatabase();
  ASSERT_EQ(by_db.size(), 2u);
  EXPECT_EQ(by_db[0].first, "db");
  EXPECT_EQ(by_db[0].second.count, 3u);
  EXPECT_NEAR(by_db[0].second.sum, 2.006, 1e-9);
  EXPECT_EQ(by_db[0].second.cumulative_counts.back(), 3u);
  EXPECT_EQ(by_db[1].first, "other");
  EXPECT_EQ(by_db[1].second.count, 1u);
}

}  // namespace
}  // namespace poolside::query
