// COPY's binary format against its text format: every value poolside sends
// in binary lands as the same datum the text format makes of it (checked by
// PostgreSQL itself, table against table), values only text can carry say
// so, and a bad row is refused alike in both.

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/db/copy.h"
#include "common/db/error.h"
#include "common/db/value_codec.h"
#include "gtest/gtest.h"
#include "tests/fixtures/postgres_cluster.h"

namespace poolside::db {
namespace {

ColumnInfo Col(std::string name, uint32_t oid, bool not_null = false) {
  return ColumnInfo{std::move(name), std::string(TypeName(oid)), oid, not_null};
}

v1::Value Kind(int which, int i) {
  v1::Value v;
  switch (which) {
    case 0:
      v.set_null_value(v1::NULL_VALUE);
      break;
    case 1:
      v.set_bool_value(i % 2 == 0);
      break;
    case 2: {
      const int64_t ints[] = {
          0, -1, 32767, -32768, 2147483647, -2147483647 - 1, 123456789, 9007199254740993LL};
      v.set_int64_value(ints[i % 8]);
      break;
    }
    case 3: {
      const double ds[] = {0.1,
                           -0.0,
                           1e308,
                           5e-324,
                           std::numeric_limits<double>::quiet_NaN(),
                           std::numeric_limits<double>::infinity(),
                           -std::numeric_limits<double>::infinity(),
                           -123.456};
      v.set_double_value(ds[i % 8]);
      break;
    }
    case 4: {
      const char* texts[] = {
          "",    "plain",  "tab\there\nnew\\line\r", "h\xc3\xa9 \xf0\x9f\x98\x80",
          "\\N", "  42  ", "{\"a\": [1, 2]}",        "-17"};
      v.set_text_value(texts[i % 8]);
      break;
    }
    case 5:
      v.set_bytes_value(i % 2 == 0 ? std::string("\0\\\n\xff", 4) : std::string("[true]"));
      break;
    case 6: {
      const int64_t secs[] = {-62135596800, -1, 0, 951782400, 1700000000, 253402300799};
      v.mutable_timestamp_value()->set_seconds(secs[i % 6]);
      v.mutable_timestamp_value()->set_nanos(i % 3 == 0 ? 999999999 : 123456789 * (i % 2));
      break;
    }
    case 7:
      v.set_numeric_value(" 12.5 ");
      break;
    case 8:
      v.set_json_value(i % 2 == 0 ? "{\"k\": \"v\", \"n\": 1.50}" : "[1, \"two\", null]");
      break;
  }
  return v;
}
constexpr int kKinds = 9;

class CopyBinaryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pg_ = &testing::SharedPostgres();
    ASSERT_TRUE(pg_->CreateDatabase("copybinary").ok());
    ConnectionOptions o;
    o.dsn = pg_->Dsn("copybinary");
    auto c = Connection::Open(o);
    ASSERT_TRUE(c.ok()) << c.status();
    conn_ = *std::move(c);
  }
  absl::Time Soon() { return absl::Now() + absl::Seconds(20); }

  testing::PostgresCluster* pg_;
  std::unique_ptr<Connection> conn_;
};

// For each column type with a binary form and each kind of value, every
// row copied on its own as text into one table and as binary into another:
// PostgreSQL takes or refuses it alike, and the two tables end up holding the
// same values.
TEST_F(CopyBinaryTest, BinaryRowsLandAsTheTextRowsDo) {
  const std::vector<std::string> types = {"bool", "bytea",  "int2",      "int4",        "int8",
                                          "oid",  "float8", "text",      "varchar(40)", "char(40)",
                                          "json", "jsonb",  "timestamp", "timestamptz"};
  for (const std::string& type : types) {
    SCOPED_TRACE(type);
    ASSERT_TRUE(pg_->Exec("copybinary", absl::StrCat("DROP TABLE IF EXISTS a, b; "
                                                     "CREATE TABLE a (n int, v ",
                                                     type, "); CREATE TABLE b (LIKE a)"))
                    .ok());
    absl::StatusOr<TableInfo> a = DescribeTable(*conn_, "a", Soon());
    ASSERT_TRUE(a.ok()) << a.status();
    const std::vector<const ColumnInfo*> cols = {&a->columns[0], &a->columns[1]};
    ASSERT_EQ(CopyFormatFor(cols), CopyFormat::kBinary);
    CopySession session(*conn_, Soon());
    int n = 0, taken = 0, binary = 0;
    for (int kind = 0; kind < kKinds; ++kind) {
      for (int i = 0; i < 8; ++i, ++n) {
        SCOPED_TRACE(absl::StrCat("kind ", kind, " #", i));
        v1::Row row;
        row.add_values()->set_int64_value(n);
        *row.add_values() = Kind(kind, i);
        std::string text, bin;
        bool needs_text = true;
        const absl::Status checked =
            AppendCopyRow(row, cols, CopyFormat::kText, &text, &needs_text);
        EXPECT_FALSE(needs_text);
        ASSERT_EQ(AppendCopyRow(row, cols, CopyFormat::kBinary, &bin, &needs_text), checked);
        if (!checked.ok()) continue;  // refused before COPY, alike (above)
        const absl::StatusOr<int64_t> as_text = session.CopyIn("a (n, v)", text);
        taken += as_text.ok();
        if (needs_text) {
          EXPECT_TRUE(bin.empty());
          continue;
        }
        const absl::StatusOr<int64_t> as_binary = session.CopyIn(
            "b (n, v)", std::vector<absl::string_view>{bin}, "", CopyFormat::kBinary);
        EXPECT_EQ(as_text.ok(), as_binary.ok()) << as_text.status() << " / " << as_binary.status();
        if (as_text.ok() && as_binary.ok()) ++binary;
      }
    }
    EXPECT_FALSE(session.broken());
    EXPECT_GT(binary, 8) << "too few kinds went as binary";
    // Compared as text: json has no equality operator, and NaN = NaN there.
    EXPECT_EQ(*pg_->QueryValue("copybinary",
                               "SELECT count(*) FROM a JOIN b USING (n) "
                               "WHERE a.v::text IS NOT DISTINCT FROM b.v::text"),
              absl::StrCat(binary));
    EXPECT_EQ(*pg_->QueryValue("copybinary", "SELECT count(*) FROM b"), absl::StrCat(binary));
    EXPECT_EQ(*pg_->QueryValue("copybinary", "SELECT count(*) FROM a"), absl::StrCat(taken));
  }
}

TEST_F(CopyBinaryTest, ValuesOnlyTextCarriesSaySo) {
  struct Case {
    uint32_t oid;
    v1::Value value;
  };
  v1::Value text_time;
  text_time.set_text_value("2024-01-01 00:00:00+00");
  v1::Value text_bool;
  text_bool.set_text_value("yes");
  v1::Value text_float;
  text_float.set_text_value("1e3");
  v1::Value numeric;
  numeric.set_numeric_value("42");
  for (const Case& c :
       {Case{oid::kTimestamptz, text_time}, Case{oid::kBool, text_bool},
        Case{oid::kFloat8, text_float}, Case{oid::kInt8, numeric}, Case{oid::kFloat8, numeric}}) {
    const ColumnInfo col = Col("v", c.oid);
    const std::vector<const ColumnInfo*> cols = {&col};
    v1::Row row;
    *row.add_values() = c.value;
    std::string out = "kept";
    bool needs_text = false;
    ASSERT_TRUE(AppendCopyRow(row, cols, CopyFormat::kBinary, &out, &needs_text).ok());
    EXPECT_TRUE(needs_text) << c.oid;
    EXPECT_EQ(out, "kept");
  }
}

TEST_F(CopyBinaryTest, FormatFollowsTheColumnTypes) {
  for (uint32_t t : {oid::kNumeric, oid::kFloat4, oid::kName, uint32_t{1082} /* date */,
                     uint32_t{2950} /* uuid */, uint32_t{99999} /* an enum */}) {
    const ColumnInfo id = Col("id", oid::kInt8), other = Col("x", t);
    const std::vector<const ColumnInfo*> cols = {&id, &other};
    EXPECT_EQ(CopyFormatFor(cols), CopyFormat::kText) << t;
  }
  const ColumnInfo id = Col("id", oid::kInt8), at = Col("at", oid::kTimestamptz);
  const std::vector<const ColumnInfo*> cols = {&id, &at};
  EXPECT_EQ(CopyFormatFor(cols), CopyFormat::kBinary);
}

TEST_F(CopyBinaryTest, BadRowsAreRefusedAlikeAndLeaveNothing) {
  const ColumnInfo id = Col("id", oid::kInt4, /*not_null=*/true), name = Col("name", oid::kText);
  const std::vector<const ColumnInfo*> cols = {&id, &name};
  std::vector<v1::Row> bad(4);
  bad[0].add_values()->set_null_value(v1::NULL_VALUE);  // NULL into NOT NULL
  bad[0].add_values()->set_text_value("x");
  bad[1].add_values()->set_int64_value(int64_t{1} << 40);  // out of range for int4
  bad[1].add_values()->set_text_value("x");
  bad[2].add_values()->set_int64_value(1);
  bad[2].add_values()->set_text_value("bad \xff utf-8");
  bad[3].add_values()->set_int64_value(1);  // one value for two columns
  for (const v1::Row& row : bad) {
    std::string text = "t", binary = "b";
    bool needs_text = false;
    absl::Status st = AppendCopyRow(row, cols, CopyFormat::kText, &text, &needs_text);
    absl::Status sb = AppendCopyRow(row, cols, CopyFormat::kBinary, &binary, &needs_text);
    EXPECT_FALSE(st.ok());
    EXPECT_EQ(st, sb);
    EXPECT_EQ(SqlStateOf(st), SqlStateOf(sb));
    EXPECT_EQ(text, "t");
    EXPECT_EQ(binary, "b");
  }
}

// PostgreSQL reports a binary COPY's failing row by its number, as text's
// line: the ingest service maps it back to the request's row the same way.
TEST_F(CopyBinaryTest, ReportsTheFailingRow) {
  ASSERT_TRUE(pg_->Exec("copybinary",
                        "DROP TABLE IF EXISTS k; CREATE TABLE k (id int8 PRIMARY KEY, note text)")
                  .ok());
  absl::StatusOr<TableInfo> k = DescribeTable(*conn_, "k", Soon());
  ASSERT_TRUE(k.ok());
  const std::vector<const ColumnInfo*> cols = {&k->columns[0], &k->columns[1]};
  std::vector<std::string> tuples;
  for (int64_t id : {1, 2, 1, 3}) {
    v1::Row row;
    row.add_values()->set_int64_value(id);
    row.add_values()->set_text_value("n");
    bool needs_text = true;
    tuples.emplace_back();
    ASSERT_TRUE(AppendCopyRow(row, cols, CopyFormat::kBinary, &tuples.back(), &needs_text).ok());
    ASSERT_FALSE(needs_text);
  }
  const std::vector<absl::string_view> pieces(tuples.begin(), tuples.end());
  CopySession session(*conn_, Soon());
  ASSERT_TRUE(session.Exec("BEGIN").ok());
  absl::StatusOr<int64_t> n = session.CopyIn(CopyTarget(*k, cols), pieces, "", CopyFormat::kBinary);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(SqlStateOf(n.status()), "23505") << n.status();
  EXPECT_EQ(CopyLineOf(n.status()), 3);
  ASSERT_TRUE(session.Exec("ROLLBACK").ok());
  // Without the duplicate, after a statement sent with it; nothing left of the first try.
  const std::vector<absl::string_view> good = {pieces[0], pieces[1], pieces[3]};
  ASSERT_TRUE(session.Exec("BEGIN").ok());
  n = session.CopyIn(CopyTarget(*k, cols), good, "SAVEPOINT s", CopyFormat::kBinary);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 3);
  ASSERT_TRUE(session.Exec("COMMIT").ok());
  EXPECT_EQ(*pg_->QueryValue("copybinary", "SELECT string_agg(id::text, ',' ORDER BY id) FROM k"),
            "1,2,3");
  EXPECT_FALSE(session.broken());
}

}  // namespace
}  // namespace poolside::db
