#include "services/query/read_cache.h"

#include "gtest/gtest.h"

namespace poolside::query {
namespace {

TEST(LooksLikeReadTest, ReadsAndWrites) {
  EXPECT_TRUE(LooksLikeRead("SELECT 1"));
  EXPECT_TRUE(LooksLikeRead("  select * from t"));
  EXPECT_TRUE(LooksLikeRead("-- note\n/* c */ (SELECT 1) UNION (SELECT 2)"));
  EXPECT_TRUE(LooksLikeRead("VALUES (1)"));
  EXPECT_TRUE(LooksLikeRead("TABLE accounts"));
  EXPECT_TRUE(LooksLikeRead("WITH x AS (SELECT 1) SELECT * FROM x"));
  EXPECT_FALSE(LooksLikeRead("INSERT INTO t VALUES (1)"));
  EXPECT_FALSE(LooksLikeRead("update t set a = 1"));
  EXPECT_FALSE(LooksLikeRead("DELETE FROM t"));
  EXPECT_FALSE(LooksLikeRead("TRUNCATE t"));
  EXPECT_FALSE(LooksLikeRead("CREATE TABLE t (a int)"));
  EXPECT_FALSE(LooksLikeRead("SELECTX"));
  EXPECT_FALSE(LooksLikeRead(""));
  EXPECT_FALSE(LooksLikeRead("/* unterminated"));
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
