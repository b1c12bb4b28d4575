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

}  // namespace
}  // namespace poolside::query
