#include "services/query/statement_words.h"

#include "gtest/gtest.h"

namespace poolside::query {
namespace {

TEST(StatementWordsTest, FirstAndSecondKeywordSkipSpaceParenthesesAndComments) {
  EXPECT_EQ(FirstKeyword("SELECT 1"), "SELECT");
  EXPECT_EQ(FirstKeyword("  ((select 1))"), "select");
  EXPECT_EQ(FirstKeyword("-- a\n/* b /* nested */ still b */ VALUES (1)"), "VALUES");
  EXPECT_EQ(FirstKeyword("/* unterminated SELECT"), "");
  EXPECT_EQ(FirstKeyword(""), "");
  EXPECT_EQ(FirstKeyword("SELECTX 1"), "SELECTX");
  EXPECT_EQ(SecondKeyword("SET LOCAL x = 1"), "LOCAL");
  EXPECT_EQ(SecondKeyword("set/* c */local x = 1"), "local");
  EXPECT_EQ(SecondKeyword("SET\n-- c\nsearch_path TO x"), "search");
  EXPECT_EQ(SecondKeyword("SET"), "");
  EXPECT_EQ(SecondKeyword("SET_x LOCAL"), "");
  EXPECT_EQ(SecondKeyword("SET1 LOCAL"), "");
}

TEST(StatementWordsTest, SessionStatementsAreRefusedWithTheTransactionScopedWay) {
  for (const char* sql :
       {"SET search_path TO other", "set statement_timeout = 0", "SET SESSION work_mem = '1GB'",
        "SET ROLE admin", "SET SESSION AUTHORIZATION bob", "/* c */ SET x.y = 1",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", "RESET ALL",
        "reset search_path", "DISCARD ALL", "DEALLOCATE ALL", "PREPARE p AS SELECT 1",
        "LOAD 'auto_explain'"}) {
    const absl::Status s = CheckSessionStatement(sql);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << sql;
    EXPECT_NE(s.message().find("pooled connection"), absl::string_view::npos) << s;
  }
  EXPECT_NE(CheckSessionStatement("SET x = 1").message().find("SET LOCAL"),
            absl::string_view::npos);
  for (const char* sql :
       {"SET LOCAL statement_timeout = '1s'", "set local search_path to x",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "SET CONSTRAINTS ALL DEFERRED",
        "SELECT set_config('x.y', '1', true)", "SELECT 'SET x = 1'", "SETTINGS", "VALUES (1)",
        "INSERT INTO t VALUES (1)", "WITH x AS (SELECT 1) SELECT * FROM x", ""}) {
    EXPECT_TRUE(CheckSessionStatement(sql).ok()) << sql;
  }
}

}  // namespace
}  // namespace poolside::query
