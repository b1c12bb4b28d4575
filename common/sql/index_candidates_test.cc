#include "common/sql/index_candidates.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace poolside::sql {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

std::vector<TableColumns> Uses(const std::string& sql) {
  absl::StatusOr<std::vector<TableColumns>> uses = IndexableColumns(sql);
  EXPECT_TRUE(uses.ok()) << sql << ": " << uses.status();
  return uses.ok() ? *uses : std::vector<TableColumns>{};
}

// What `sql` uses of its one table (an empty TableColumns, and a test
// failure, if it uses another number of tables).
TableColumns OnlyTable(const std::string& sql) {
  std::vector<TableColumns> uses = Uses(sql);
  EXPECT_EQ(uses.size(), 1u) << sql;
  return uses.size() == 1 ? uses[0] : TableColumns{};
}

const TableColumns* Find(const std::vector<TableColumns>& uses, const std::string& table) {
  for (const TableColumns& t : uses) {
    if (t.table == table) return &t;
  }
  return nullptr;
}

TEST(IndexableColumnsTest, WhereEqualityRangeAndOrder) {
  const TableColumns accounts = OnlyTable(
      "SELECT * FROM accounts WHERE owner = $1 AND balance > $2 AND created_at "
      "BETWEEN $3 AND $4 ORDER BY created_at DESC, id");
  EXPECT_EQ(accounts.schema, "");
  EXPECT_EQ(accounts.table, "accounts");
  EXPECT_THAT(accounts.equality, ElementsAre("owner"));
  EXPECT_THAT(accounts.range, ElementsAre("balance", "created_at"));
  EXPECT_THAT(accounts.join, IsEmpty());
  EXPECT_THAT(accounts.order, ElementsAre("created_at", "id"));
}

TEST(IndexableColumnsTest, ValueOnEitherSideInAnyIsNullAndCasts) {
  EXPECT_THAT(OnlyTable("SELECT 1 FROM t WHERE $1::bigint = a AND b IN ($2, $3) AND "
                        "c = ANY($4::int[]) "
                        "AND d IS NULL AND e = now() AND f = lower($5)")
                  .equality,
              ElementsAre("a", "b", "c", "d", "e", "f"));
}

TEST(IndexableColumnsTest, WhatAPlainBtreeCannotServeIsLeftOut) {
  auto uses = Uses(
      "SELECT * FROM t WHERE lower(a) = $1 AND b::text = $2 AND c LIKE $3 "
      "AND NOT (d = $4) "
      "AND e <> $5 AND f = g + 1 AND h IS NOT NULL ORDER BY lower(i)");
  EXPECT_THAT(uses, IsEmpty());
}

TEST(IndexableColumnsTest, JoinsByAliasOnAndUsing) {
  auto uses = Uses(
      "SELECT * FROM app.accounts a JOIN events e ON e.account_id = a.id "
      "JOIN kinds USING (kind) WHERE e.at >= $1 AND a.owner = $2");
  const TableColumns* accounts = Find(uses, "accounts");
  const TableColumns* events = Find(uses, "events");
  const TableColumns* kinds = Find(uses, "kinds");
  ASSERT_NE(accounts, nullptr);
  ASSERT_NE(events, nullptr);
  ASSERT_NE(kinds, nullptr);
  EXPECT_EQ(accounts->schema, "app");
  // USING (kind) names a column of some table on each side: all of them are
  // listed, and the catalog says which has it.
  EXPECT_THAT(accounts->join, ElementsAre("id", "kind"));
  EXPECT_THAT(accounts->equality, ElementsAre("owner"));
  EXPECT_THAT(events->join, ElementsAre("account_id", "kind"));
  EXPECT_THAT(events->range, ElementsAre("at"));
  EXPECT_THAT(kinds->join, ElementsAre("kind"));
  // Comma joins in WHERE too.
  uses = Uses("SELECT * FROM a, b WHERE a.x = b.y");
  ASSERT_EQ(uses.size(), 2u);
  EXPECT_THAT(uses[0].join, ElementsAre("x"));
  EXPECT_THAT(uses[1].join, ElementsAre("y"));
}

TEST(IndexableColumnsTest, UnqualifiedColumnWithSeveralTablesGoesToEach) {
  auto uses = Uses("SELECT * FROM a JOIN b ON a.id = b.a_id WHERE flag = $1");
  ASSERT_EQ(uses.size(), 2u);
  EXPECT_THAT(uses[0].equality, ElementsAre("flag"));
  EXPECT_THAT(uses[1].equality, ElementsAre("flag"));
}

TEST(IndexableColumnsTest, SubqueriesCtesSetOperationsAndDml) {
  auto uses = Uses(
      "WITH recent AS (SELECT * FROM events WHERE at > $1) "
      "SELECT * FROM recent r WHERE r.kind = $2 AND r.account_id IN "
      "(SELECT id FROM accounts WHERE owner = $3) AND EXISTS (SELECT 1 "
      "FROM flags f "
      "WHERE f.account_id = r.account_id AND f.name = $4) "
      "UNION ALL SELECT * FROM archive WHERE kind = $5");
  // The CTE is not a table; its body, the subqueries and both arms are read.
  EXPECT_EQ(Find(uses, "recent"), nullptr);
  ASSERT_NE(Find(uses, "events"), nullptr);
  EXPECT_THAT(Find(uses, "events")->range, ElementsAre("at"));
  ASSERT_NE(Find(uses, "accounts"), nullptr);
  EXPECT_THAT(Find(uses, "accounts")->equality, ElementsAre("owner"));
  ASSERT_NE(Find(uses, "flags"), nullptr);
  EXPECT_THAT(Find(uses, "flags")->equality, ElementsAre("name"));
  ASSERT_NE(Find(uses, "archive"), nullptr);
  EXPECT_THAT(Find(uses, "archive")->equality, ElementsAre("kind"));

  uses = Uses("UPDATE accounts SET balance = $1 WHERE owner = $2");
  ASSERT_EQ(uses.size(), 1u);
  EXPECT_THAT(uses[0].equality, ElementsAre("owner"));
  uses = Uses(
      "DELETE FROM events e USING accounts a WHERE e.account_id = a.id "
      "AND a.owner = $1");
  ASSERT_NE(Find(uses, "events"), nullptr);
  EXPECT_THAT(Find(uses, "events")->join, ElementsAre("account_id"));
  uses = Uses("INSERT INTO archive SELECT * FROM events WHERE at < $1");
  ASSERT_EQ(uses.size(), 1u);
  EXPECT_EQ(uses[0].table, "events");
  EXPECT_THAT(uses[0].range, ElementsAre("at"));
}

TEST(IndexableColumnsTest, QuotedNamesKeepTheirSpelling) {
  const TableColumns odd = OnlyTable(
      "SELECT * FROM \"Odd \"\"Schema\"\"\".\"we\"\"ird T\" x WHERE x.\"Col; DROP\" = $1");
  EXPECT_EQ(odd.schema, "Odd \"Schema\"");
  EXPECT_EQ(odd.table, "we\"ird T");
  EXPECT_THAT(odd.equality, ElementsAre("Col; DROP"));
}

TEST(IndexableColumnsTest, RefusesWhatIsNotOneStatement) {
  EXPECT_EQ(IndexableColumns("SELECT FROM WHERE").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(IndexableColumns("SELECT 1; SELECT 2").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(IndexableColumns(std::string("SELECT 1\0", 9)).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Utility statements have no uses.
  EXPECT_THAT(Uses("VACUUM t"), IsEmpty());
}

TEST(IndexableColumnsTest, DeepNestingIsBoundedNotACrash) {
  std::string deep = "SELECT * FROM t WHERE ";
  for (int i = 0; i < 200; ++i) deep += "(";
  deep += "a = $1";
  for (int i = 0; i < 200; ++i) deep += ")";
  auto uses = Uses(deep);
  ASSERT_EQ(uses.size(), 1u);
  EXPECT_THAT(uses[0].equality, ElementsAre("a"));
  std::string chain = "SELECT * FROM t0";
  for (int i = 1; i < 120; ++i) chain += absl::StrCat(" JOIN t", i, " USING (k)");
  EXPECT_TRUE(IndexableColumns(chain).ok());
  std::string too_deep = "SELECT * FROM t WHERE a = 1";
  for (int i = 0; i < 2000; ++i) too_deep += " + 1";
  EXPECT_EQ(IndexableColumns(too_deep).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CandidateIndexesTest, CompositesThenSingles) {
  TableColumns t;
  t.table = "t";
  t.equality = {"a", "b"};
  t.range = {"c"};
  t.order = {"d"};
  EXPECT_THAT(
      CandidateIndexes(t),
      ElementsAre(ElementsAre("a", "b"), ElementsAre("a", "b", "c"), ElementsAre("a", "b", "d"),
                  ElementsAre("a"), ElementsAre("b"), ElementsAre("c"), ElementsAre("d")));
  EXPECT_EQ(CandidateIndexes(t, 2).size(), 2u);
}

TEST(CandidateIndexesTest, BoundedWidthAndUnique) {
  TableColumns t;
  t.equality = {"a", "b", "c", "d", "e"};
  t.join = {"a"};
  for (const auto& c : CandidateIndexes(t, 100)) EXPECT_LE(c.size(), kMaxIndexColumns);
  TableColumns order_only;
  order_only.order = {"x", "y"};
  EXPECT_THAT(CandidateIndexes(order_only), ElementsAre(ElementsAre("x", "y")));
  EXPECT_THAT(CandidateIndexes(TableColumns{}), IsEmpty());
}

}  // namespace
}  // namespace poolside::sql
