#include "common/db/statement_labels.h"

#include <string>

#include "gtest/gtest.h"

namespace poolside::db {
namespace {

TEST(StatementLabelsTest, ReadOfOneTable) {
  sql::StatementAnalyzer analyzer;
  auto labels = StatementLabelsFor(
      *analyzer.Analyze("SELECT balance FROM accounts WHERE id = $1 AND owner = 'alice'"));
  EXPECT_EQ(labels->summary, "SELECT accounts");
  EXPECT_EQ(labels->operation, "SELECT");
  EXPECT_EQ(labels->collection, "accounts");
  // The text without its literal values.
  EXPECT_EQ(labels->query_text.find("alice"), std::string::npos);
  EXPECT_NE(labels->query_text.find("$1"), std::string::npos);
  EXPECT_NE(labels->query_text.find("accounts"), std::string::npos);
}

TEST(StatementLabelsTest, SeveralTablesAndSchemas) {
  sql::StatementAnalyzer analyzer;
  auto labels = StatementLabelsFor(*analyzer.Analyze(
      "INSERT INTO app.audit SELECT * FROM orders o JOIN items i ON i.order_id = o.id"));
  EXPECT_EQ(labels->operation, "INSERT");
  EXPECT_EQ(labels->summary, "INSERT app.audit items orders");
  EXPECT_EQ(labels->collection, "");  // more than one table
}

TEST(StatementLabelsTest, NamedQueryNamesTheSpan) {
  sql::StatementAnalyzer analyzer;
  auto labels = StatementLabelsFor(*analyzer.Analyze("UPDATE accounts SET n = n + 1 WHERE id = 7"),
                                   "bump_counter");
  EXPECT_EQ(labels->summary, "bump_counter");
  EXPECT_EQ(labels->operation, "UPDATE");
  EXPECT_EQ(labels->collection, "accounts");
  EXPECT_EQ(labels->query_text.find('7'), std::string::npos);
}

TEST(StatementLabelsTest, NoTableAndBoundedSummary) {
  sql::StatementAnalyzer analyzer;
  auto labels = StatementLabelsFor(*analyzer.Analyze("SELECT 1"));
  EXPECT_EQ(labels->summary, "SELECT");
  EXPECT_EQ(labels->collection, "");

  std::string many = "SELECT 1 FROM ";
  for (int i = 0; i < 60; ++i) {
    if (i > 0) many += ", ";
    many += "table_number_" + std::to_string(i);
  }
  labels = StatementLabelsFor(*analyzer.Analyze(many));
  EXPECT_LE(labels->summary.size(), kMaxSummaryBytes);
  // Cut between names, never inside one.
  EXPECT_EQ(labels->summary.back() != ' ', true);
  const std::string last = labels->summary.substr(labels->summary.rfind(' ') + 1);
  EXPECT_EQ(last.rfind("table_number_", 0), 0u);
  EXPECT_GT(last.size(), std::string("table_number_").size());

  labels = StatementLabelsFor(*analyzer.Analyze("SELECT 1"), std::string(1000, 'q'));
  EXPECT_EQ(labels->summary.size(), kMaxSummaryBytes);
}

}  // namespace
}  // namespace poolside::db
