#include "services/query/read_cache.h"

#include "gtest/gtest.h"

namespace poolside::query {
namespace {

// Only plain reads go through the cache, and every other statement
// invalidates after it ran.
TEST(ReadCacheTest, OnlyPlainReadsAreCachedAndEverythingElseInvalidates) {
  for (const char* sql :
       {"SELECT 1", "  select * from t", "-- note\n/* c */ (SELECT 1) UNION (SELECT 2)",
        "VALUES (1)", "TABLE accounts", "WITH x AS (SELECT 1) SELECT * FROM x"}) {
    auto a = sql::AnalyzeOnce(sql);
    EXPECT_EQ(a->kind, sql::StatementKind::kRead) << sql;
    EXPECT_FALSE(ReadCache::NeedsInvalidation(*a)) << sql;
  }
  for (const char* sql :
       {"INSERT INTO t VALUES (1)", "update t set a = 1", "DELETE FROM t", "TRUNCATE t",
        "CREATE TABLE t (a int)", "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "SELECT * FROM t FOR UPDATE"}) {
    auto a = sql::AnalyzeOnce(sql);
    EXPECT_NE(a->kind, sql::StatementKind::kRead) << sql;
    EXPECT_TRUE(ReadCache::NeedsInvalidation(*a)) << sql;
  }
}

TEST(ParsePlanTablesTest, FindsTablesAndModifications) {
  const std::string plan = R"([{"Plan": {"Node Type": "Hash Join", "Plans": [
      {"Node Type": "Seq Scan", "Relation Name": "orders", "Schema": "shop", "Alias": "o"},
      {"Node Type": "Hash", "Plans": [
        {"Node Type": "Index Scan", "Relation Name": "accounts", "Schema": "public"}]},
      {"Node Type": "Seq Scan", "Relation Name": "orders", "Schema": "shop", "Alias": "o2"}]}}])";
  absl::StatusOr<StatementTables> t = ParsePlanTables(plan);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->explained);
  EXPECT_FALSE(t->modifies);
  EXPECT_FALSE(t->locks_rows);
  EXPECT_EQ(t->tables, (std::vector<std::string>{"public.accounts", "shop.orders"}));

  t = ParsePlanTables(R"([{"Plan": {"Node Type": "ModifyTable", "Operation": "Insert",
      "Relation Name": "t", "Schema": "public", "Plans": [{"Node Type": "Result"}]}}])");
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->modifies);
  EXPECT_EQ(t->tables, (std::vector<std::string>{"public.t"}));

  t = ParsePlanTables(R"([{"Plan": {"Node Type": "LockRows", "Plans": [
      {"Node Type": "Seq Scan", "Relation Name": "t", "Schema": "public"}]}}])");
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->locks_rows);

  EXPECT_FALSE(ParsePlanTables("not json").ok());
}

}  // namespace
}  // namespace poolside::query
