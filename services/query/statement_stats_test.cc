#include "services/query/statement_stats.h"

#include "gtest/gtest.h"

namespace poolside::query {
namespace {

TEST(NormalizeSqlTest, ReplacesLiteralsAndFoldsWhitespace) {
  EXPECT_EQ(NormalizeSql("SELECT *   FROM t\n WHERE a = 'it''s' AND b=42 AND c = 1.5e3"),
            "SELECT * FROM t WHERE a = ? AND b=? AND c = ?");
}

TEST(NormalizeSqlTest, KeepsIdentifiersParamsAndQuotedNames) {
  EXPECT_EQ(NormalizeSql("select t1.col2, \"Weird 7\" from t1 where x = $1"),
            "select t1.col2, \"Weird 7\" from t1 where x = $1");
}

TEST(StatementStatsTest, GroupsByNormalizedStatement) {
  StatementStatsRegistry reg;
  reg.Record("db", "SELECT 1", absl::Milliseconds(2), 1, true);
  reg.Record("db", "SELECT 2", absl::Milliseconds(4), 1, true);
  reg.Record("db", "SELECT 2", absl::Milliseconds(6), 0, false);
  reg.Record("other", "SELECT 1", absl::Milliseconds(1), 1, true);
  auto all = reg.Snapshot("db", 0);
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].statement(), "SELECT ?");
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
  reg.Record("db", "SELECT a FROM x", absl::Milliseconds(1), 0, true);
  reg.Record("db", "SELECT b FROM x", absl::Milliseconds(1), 0, true);
  reg.Record("db", "SELECT c FROM x", absl::Milliseconds(1), 0, true);
  reg.Record("db", "SELECT d FROM x", absl::Milliseconds(1), 0, true);
  auto all = reg.Snapshot("", 0);
  ASSERT_EQ(all.size(), 3u);
  uint64_t other_calls = 0;
  for (const auto& s : all) if (s.statement() == "<other>") other_calls = s.calls();
  EXPECT_EQ(other_calls, 2u);
}

TEST(StatementStatsTest, SortedByTotalTimeAndLimited) {
  StatementStatsRegistry reg;
  reg.Record("db", "SELECT a FROM x", absl::Milliseconds(1), 0, true);
  reg.Record("db", "SELECT b FROM x", absl::Milliseconds(9), 0, true);
  auto top = reg.Snapshot("", 1);
  ASSERT_EQ(top.size(), 1u);
  EXPECT_EQ(top[0].statement(), "SELECT b FROM x");
}

TEST(StatementStatsTest, LatencyByDatabaseMergesStatements) {
  StatementStatsRegistry reg;
  reg.SetSlowThreshold(absl::Seconds(1));
  reg.Record("db", "SELECT 1", absl::Milliseconds(2), 1, true);
  reg.Record("db", "SELECT 2", absl::Milliseconds(4), 1, true);
  reg.Record("db", "SELECT 3", absl::Seconds(2), 1, false);  // also logged as slow
  reg.Record("other", "SELECT 1", absl::Milliseconds(1), 1, true);
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
