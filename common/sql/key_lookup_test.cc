#include "common/sql/key_lookup.h"

#include <string>

#include "gtest/gtest.h"

namespace poolside::sql {
namespace {

using Kind = KeyOperand::Kind;

TEST(KeyLookupTest, EqualitiesOnOneTableAreFound) {
  std::optional<KeyLookup> k = FindKeyLookup("SELECT name FROM items WHERE id = $1");
  ASSERT_TRUE(k.has_value());
  EXPECT_EQ(k->schema, "");
  EXPECT_EQ(k->table, "items");
  ASSERT_EQ(k->equalities.size(), 1u);
  EXPECT_EQ(k->equalities[0].first, "id");
  EXPECT_EQ(k->equalities[0].second.kind, Kind::kParam);
  EXPECT_EQ(k->equalities[0].second.param, 1);
  EXPECT_TRUE(k->equalities[0].second.cast.empty());

  // Either side, qualified names, aliases, other terms, aggregates, ORDER BY,
  // LIMIT, casts, literals of every kind; the first term per column wins.
  k = FindKeyLookup(
      "SELECT count(*), max(i.v) FROM App.\"Items\" AS i WHERE $2::int8 = i.a AND i.\"B\" = 'x' "
      "AND v > 3 AND c = -7 AND d = 12345678901 AND e = CAST($3 AS pg_catalog.text) AND a = $9 "
      "GROUP BY i.a ORDER BY 1 LIMIT 1");
  ASSERT_TRUE(k.has_value());
  EXPECT_EQ(k->schema, "app");
  EXPECT_EQ(k->table, "Items");
  ASSERT_EQ(k->equalities.size(), 5u);
  EXPECT_EQ(k->equalities[0].first, "a");
  EXPECT_EQ(k->equalities[0].second.param, 2);
  EXPECT_EQ(k->equalities[0].second.cast, std::vector<std::string>{"int8"});
  EXPECT_FALSE(k->equalities[0].second.cast_modified);
  EXPECT_EQ(k->equalities[1].first, "B");
  EXPECT_EQ(k->equalities[1].second.kind, Kind::kString);
  EXPECT_EQ(k->equalities[1].second.text, "x");
  EXPECT_EQ(k->equalities[2].first, "c");
  EXPECT_EQ(k->equalities[2].second.kind, Kind::kInteger);
  EXPECT_EQ(k->equalities[2].second.text, "-7");
  EXPECT_EQ(k->equalities[3].first, "d");
  EXPECT_EQ(k->equalities[3].second.kind, Kind::kNumber);
  EXPECT_EQ(k->equalities[3].second.text, "12345678901");
  EXPECT_EQ(k->equalities[4].first, "e");
  EXPECT_EQ(k->equalities[4].second.cast, (std::vector<std::string>{"pg_catalog", "text"}));

  k = FindKeyLookup("SELECT * FROM public.t WHERE public.t.id = 5 AND t.k = $1::varchar(3)");
  ASSERT_TRUE(k.has_value());
  ASSERT_EQ(k->equalities.size(), 2u);
  EXPECT_EQ(k->equalities[0].second.text, "5");
  EXPECT_TRUE(k->equalities[1].second.cast_modified) << "varchar(3) truncates";
  EXPECT_TRUE(FindKeyLookup("SELECT 1 FROM t WHERE id OPERATOR(pg_catalog.=) $1").has_value());
}

TEST(KeyLookupTest, AnythingThatMayReadOtherRowsOrRelationsIsNotALookup) {
  for (const char* sql :
       {"SELECT * FROM t",                                             // no WHERE
        "SELECT * FROM t WHERE id > $1",                               // not equality
        "SELECT * FROM t WHERE id = $1 OR id = $2",                    // OR
        "SELECT * FROM t WHERE NOT id = $1",                           // NOT
        "SELECT * FROM t WHERE id IN ($1, $2)",                        // IN
        "SELECT * FROM t WHERE id = ANY($1)",                          // ANY
        "SELECT * FROM t WHERE id = $1 + 1",                           // expression
        "SELECT * FROM t WHERE id = other",                            // column = column
        "SELECT * FROM t WHERE lower(name) = $1",                      // function of a column
        "SELECT * FROM t WHERE id = NULL",                             // NULL
        "SELECT * FROM t WHERE id = true",                             // boolean literal
        "SELECT * FROM t WHERE u.id = $1",                             // another relation's column
        "SELECT * FROM t x WHERE t.id = $1",                           // the aliased name
        "SELECT * FROM t AS x(a) WHERE a = $1",                        // column aliases
        "SELECT * FROM t WHERE id = $1 AND EXISTS (SELECT 1 FROM u)",  // subquery
        "SELECT (SELECT max(v) FROM t) FROM t WHERE id = $1",          // in the target list
        "SELECT * FROM t, u WHERE t.id = $1",                          // two relations
        "SELECT * FROM t JOIN u USING (id) WHERE id = $1",             // join
        "SELECT * FROM (SELECT * FROM t) s WHERE id = $1",             // subselect
        "SELECT * FROM generate_series(1, 3) g WHERE g = 1",           // function
        "SELECT * FROM t TABLESAMPLE SYSTEM (10) WHERE id = $1",       // sampling
        "WITH c AS (SELECT 1) SELECT * FROM t WHERE id = $1",          // WITH
        "SELECT * FROM t WHERE id = $1 UNION SELECT * FROM t WHERE id = $2",
        "SELECT * FROM t WHERE id = $1 FOR UPDATE",       // locking
        "SELECT * INTO n FROM t WHERE id = $1",           // INTO
        "SELECT * FROM t WHERE name = $1 COLLATE \"C\"",  // collation
        "SELECT * FROM t WHERE id = $1; SELECT 1",        // two statements
        "UPDATE t SET v = 1 WHERE id = $1",               // a write
        "VALUES (1)",
        "SELECT 1",
        "SELECT * FROM db.s.t WHERE id = 1",
        "not sql at all",
        ""}) {
    EXPECT_FALSE(FindKeyLookup(sql).has_value()) << sql;
  }
  EXPECT_FALSE(FindKeyLookup(std::string("SELECT * FROM t WHERE id = $1\0", 31)).has_value());
}

}  // namespace
}  // namespace poolside::sql
