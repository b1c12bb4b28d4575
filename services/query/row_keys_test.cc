#include "services/query/row_keys.h"

#include <string>

#include "common/hash/fnv1a.h"
#include "common/sql/key_lookup.h"
#include "gtest/gtest.h"

namespace poolside::query {
namespace {

TEST(RowKeysTest, IntegersAreWrittenAsPostgresPrintsThem) {
  for (const auto& [in, out] : std::vector<std::pair<std::string, std::string>>{
           {"42", "42"},
           {" +42\t\n", "42"},
           {"-0", "0"},
           {"0042", "42"},
           {"-7", "-7"},
           {"9223372036854775807", "9223372036854775807"},
           {"-9223372036854775808", "-9223372036854775808"}}) {
    EXPECT_EQ(CanonicalKeyText(KeyFamily::kInteger, in), out) << in;
  }
  for (const char* in : {"", " ", "+", "4 2", "42.0", "1e3", "0x2A", "1_000", "٤٢",
                         "9223372036854775808", "-9223372036854775809", "42abc"}) {
    EXPECT_FALSE(CanonicalKeyText(KeyFamily::kInteger, in).has_value()) << in;
  }
}

TEST(RowKeysTest, UuidsAreLowercaseAndHyphenated) {
  const std::string want = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
  for (const char* in :
       {"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", "a0eebc999c0b4ef8bb6d6bb9bd380a11",
        "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11"}) {
    EXPECT_EQ(CanonicalKeyText(KeyFamily::kUuid, in), want) << in;
  }
  for (const char* in :
       {"", "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111", "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        " a0eebc999c0b4ef8bb6d6bb9bd380a11"}) {
    EXPECT_FALSE(CanonicalKeyText(KeyFamily::kUuid, in).has_value()) << in;
  }
}

TEST(RowKeysTest, ParametersAndLiteralsOnlyOfTheirFamily) {
  v1::Value i;
  i.set_int64_value(-12);
  v1::Value t;
  t.set_text_value(" 12 ");
  v1::Value d;
  d.set_double_value(12);
  v1::Value n;
  n.set_numeric_value("12");
  v1::Value null;
  null.set_null_value(v1::NULL_VALUE);
  EXPECT_EQ(CanonicalKeyValue(KeyFamily::kInteger, i), "-12");
  EXPECT_EQ(CanonicalKeyValue(KeyFamily::kInteger, t), "12");
  EXPECT_EQ(CanonicalKeyValue(KeyFamily::kText, t), " 12 ");
  EXPECT_FALSE(CanonicalKeyValue(KeyFamily::kText, i).has_value());
  EXPECT_FALSE(CanonicalKeyValue(KeyFamily::kInteger, d).has_value());
  EXPECT_FALSE(CanonicalKeyValue(KeyFamily::kInteger, n).has_value());
  EXPECT_FALSE(CanonicalKeyValue(KeyFamily::kInteger, null).has_value());
  EXPECT_FALSE(CanonicalKeyValue(KeyFamily::kNone, t).has_value());

  google::protobuf::RepeatedPtrField<v1::Value> params;
  *params.Add() = i;
  auto operand = [](const char* sql) {
    std::optional<sql::KeyLookup> k = sql::FindKeyLookup(sql);
    EXPECT_TRUE(k.has_value()) << sql;
    return k.has_value() ? k->equalities[0].second : sql::KeyOperand{};
  };
  EXPECT_EQ(
      CanonicalKeyOperand(KeyFamily::kInteger, operand("SELECT 1 FROM t WHERE id = $1"), params),
      "-12");
  EXPECT_EQ(CanonicalKeyOperand(KeyFamily::kInteger,
                                operand("SELECT 1 FROM t WHERE id = $1::bigint"), params),
            "-12");
  EXPECT_FALSE(CanonicalKeyOperand(KeyFamily::kInteger,
                                   operand("SELECT 1 FROM t WHERE id = $1::float8"), params)
                   .has_value())
      << "a float cast compares inexactly";
  EXPECT_FALSE(
      CanonicalKeyOperand(KeyFamily::kInteger, operand("SELECT 1 FROM t WHERE id = $2"), params)
          .has_value())
      << "no such parameter";
  EXPECT_EQ(
      CanonicalKeyOperand(KeyFamily::kInteger, operand("SELECT 1 FROM t WHERE id = 7"), params),
      "7");
  EXPECT_EQ(
      CanonicalKeyOperand(KeyFamily::kInteger, operand("SELECT 1 FROM t WHERE id = '007'"), params),
      "7");
  EXPECT_FALSE(
      CanonicalKeyOperand(KeyFamily::kInteger, operand("SELECT 1 FROM t WHERE id = 7.0"), params)
          .has_value());
  EXPECT_EQ(
      CanonicalKeyOperand(KeyFamily::kText, operand("SELECT 1 FROM t WHERE k = 'A b'"), params),
      "A b");
  EXPECT_FALSE(CanonicalKeyOperand(KeyFamily::kText,
                                   operand("SELECT 1 FROM t WHERE k = 'abcdef'::varchar(3)"),
                                   params)
                   .has_value())
      << "varchar(3) truncates";
  EXPECT_FALSE(CanonicalKeyOperand(KeyFamily::kText, operand("SELECT 1 FROM t WHERE k = 7"), params)
                   .has_value());
}

TEST(RowKeysTest, TagsAndHashesAreStable) {
  // FNV-1a (its known values: common/hash/fnv1a_test.cc) of the
  // length-prefixed values.
  EXPECT_EQ(RowKeyHash({"42"}), hash::Fnv1a("2:42"));
  EXPECT_EQ(RowKeyHash({}), 0xcbf29ce484222325ULL);
  // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
  EXPECT_NE(RowKeyHash({"ab", "c"}), RowKeyHash({"a", "bc"}));
  EXPECT_EQ(RowKeyHash({"42"}), RowKeyHash({"42"}));
  EXPECT_EQ(DatabaseTag("app"), "db:app");
  EXPECT_EQ(TableTag("app", "public.t"), "t:app:public.t");
  EXPECT_EQ(TableScanTag("app", "public.t"), "tl:app:public.t");
  EXPECT_EQ(RowTag("app", "public.t", 0xabc), "k:app:public.t:0000000000000abc");
  EXPECT_EQ(KeyFamilyOf(20), KeyFamily::kInteger);
  EXPECT_EQ(KeyFamilyOf(1043), KeyFamily::kText);
  EXPECT_EQ(KeyFamilyOf(2950), KeyFamily::kUuid);
  EXPECT_EQ(KeyFamilyOf(1042), KeyFamily::kNone) << "bpchar pads";
  EXPECT_EQ(KeyFamilyOf(1700), KeyFamily::kNone);
}

}  // namespace
}  // namespace poolside::query
