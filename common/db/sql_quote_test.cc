#include "common/db/sql_quote.h"

#include <string>

#include "gtest/gtest.h"

namespace poolside::db {
namespace {

TEST(QuoteIdentifierTest, DoublesQuotesAndQuotesEverything) {
  EXPECT_EQ(QuoteIdentifier("abc"), "\"abc\"");
  EXPECT_EQ(QuoteIdentifier("a\"b"), "\"a\"\"b\"");
  EXPECT_EQ(QuoteIdentifier("x\"); DROP TABLE t; --"), "\"x\"\"); DROP TABLE t; --\"");
  EXPECT_EQ(QuoteIdentifier(""), "\"\"");
  EXPECT_EQ(QuoteIdentifier("it's"), "\"it's\"");
}

TEST(QuoteLiteralTest, DoublesSingleQuotesOnly) {
  EXPECT_EQ(QuoteLiteral("abc"), "'abc'");
  EXPECT_EQ(QuoteLiteral("it's"), "'it''s'");
  EXPECT_EQ(QuoteLiteral("x'; DROP TABLE t; --"), "'x''; DROP TABLE t; --'");
  EXPECT_EQ(QuoteLiteral("a\\b\"c"), "'a\\b\"c'");
  EXPECT_EQ(QuoteLiteral(std::string("a\0b", 3)), std::string("'a\0b'", 5));
  EXPECT_EQ(QuoteLiteral(""), "''");
}

}  // namespace
}  // namespace poolside::db
