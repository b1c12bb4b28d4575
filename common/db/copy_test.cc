#include "common/db/copy.h"

#include <signal.h>
#include <sys/types.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/db/error.h"
#include "common/db/value_codec.h"
#include "gtest/gtest.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/values.h"

namespace poolside::db {
namespace {

using ::poolside::testing::Int;
using ::poolside::testing::Null;
using ::poolside::testing::Text;

ColumnInfo Col(std::string name, uint32_t oid, bool not_null = false) {
  return ColumnInfo{std::move(name), std::string(TypeName(oid)), oid, not_null};
}

std::string Field(const v1::Value& v, const ColumnInfo& c) {
  std::string out;
  absl::Status s = AppendCopyField(v, c, &out);
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

TEST(CopyEncodingTest, EscapesText) {
  const ColumnInfo text = Col("t", oid::kText);
  EXPECT_EQ(Field(Text("a\tb\nc\rd\\e"), text), "a\\tb\\nc\\rd\\\\e");
  EXPECT_EQ(Field(Text("plain"), text), "plain");
  EXPECT_EQ(Field(Text("\\N"), text), "\\\\N");  // the text, not NULL
  EXPECT_EQ(Field(Null(), text), "\\N");
}

TEST(CopyEncodingTest, EncodesKinds) {
  EXPECT_EQ(Field(testing::Bytes(std::string("\x00\xff\x10", 3)), Col("b", oid::kBytea)),
            "\\\\x00ff10");
  EXPECT_EQ(Field(Int(-5), Col("i", oid::kInt4)), "-5");
  v1::Value ts;
  ts.mutable_timestamp_value()->set_seconds(1700000000);
  ts.mutable_timestamp_value()->set_nanos(123456000);
  EXPECT_EQ(Field(ts, Col("ts", oid::kTimestamptz)), "2023-11-14 22:13:20.123456+00");
  v1::Value d;
  d.set_double_value(0.1);
  EXPECT_EQ(Field(d, Col("d", oid::kFloat8)), "0.1");
  d.set_double_value(-1.5e300);
  EXPECT_EQ(Field(d, Col("d", oid::kFloat8)), "-1.5e+300");
  // Dates across eras, leap days, the range ends; against absl::FormatTime.
  for (int64_t secs : {int64_t{-62135596800}, int64_t{-1}, int64_t{0}, int64_t{951782400},
                       int64_t{1709164800}, int64_t{4107542399}, int64_t{253402300799}}) {
    v1::Value t;
    t.mutable_timestamp_value()->set_seconds(secs);
    t.mutable_timestamp_value()->set_nanos(999999999);
    EXPECT_EQ(Field(t, Col("ts", oid::kTimestamptz)),
              absl::FormatTime("%4Y-%m-%d %H:%M:%E6S+00",
                               absl::FromUnixSeconds(secs) + absl::Nanoseconds(999999999),
                               absl::UTCTimeZone()));
  }
  v1::Value b;
  b.set_bool_value(true);
  EXPECT_EQ(Field(b, Col("b", oid::kBool)), "t");
  v1::Value n;
  n.set_numeric_value("-12.50");
  EXPECT_EQ(Field(n, Col("n", oid::kNumeric)), "-12.50");
}

TEST(CopyEncodingTest, RefusesBadValues) {
  std::string out;
  absl::Status s = AppendCopyField(Null(), Col("id", oid::kInt8, true), &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(SqlStateOf(s), "23502");
  s = AppendCopyField(Text(std::string("a\0b", 3)), Col("t", oid::kText), &out);
  EXPECT_EQ(SqlStateOf(s), "22021");
  s = AppendCopyField(Text("bad \xc3\x28"), Col("t", oid::kText), &out);
  EXPECT_EQ(SqlStateOf(s), "22021");
  s = AppendCopyField(Text("abc"), Col("i", oid::kInt4), &out);
  EXPECT_EQ(SqlStateOf(s), "22P02");
  s = AppendCopyField(Int(70000), Col("i", oid::kInt2), &out);
  EXPECT_EQ(SqlStateOf(s), "22003");
  s = AppendCopyField(testing::Bytes("bad \xff"), Col("t", oid::kText), &out);
  EXPECT_EQ(SqlStateOf(s), "22021");
  EXPECT_EQ(Field(testing::Bytes("a\tb"), Col("t", oid::kText)), "a\\tb");
  s = AppendCopyField(testing::Bytes("x"), Col("i", oid::kInt4), &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  s = AppendCopyField(Int(1), Col("ts", oid::kTimestamptz), &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  // Types poolside does not know take any kind.
  EXPECT_TRUE(AppendCopyField(Int(1), Col("e", 99999), &out).ok());
}

// Every value kind, for every column type that takes it, with the characters
// that structure COPY text (tab, newline, carriage return, backslash) and NUL
// in it: either refused, or one field with none of them raw.
TEST(CopyEncodingTest, NoValueCanSplitACopyLine) {
  const std::string nasty = std::string("a\tb\nc\rd\\e\0f", 11);
  const std::string utf8_nasty = "a\tb\nc\rd\\e\\.";
  std::vector<v1::Value> values;
  for (const std::string& t : {nasty, utf8_nasty, std::string("\\."), std::string("\\N")}) {
    v1::Value v;
    v.set_text_value(t);
    values.push_back(v);
    v.set_bytes_value(t);
    values.push_back(v);
    v.set_json_value(t);
    values.push_back(v);
    v.set_numeric_value(t);
    values.push_back(v);
  }
  for (const char* n : {" 12.5\n", "\t-7e2 \r\n", "1\n2", "12.5\t3", "NaN\n"}) {
    v1::Value v;
    v.set_numeric_value(n);
    values.push_back(v);
    v.set_text_value(n);
    values.push_back(v);
  }
  v1::Value d;
  d.set_double_value(-0.0);
  values.push_back(d);
  d.set_double_value(std::numeric_limits<double>::quiet_NaN());
  values.push_back(d);
  values.push_back(Int(std::numeric_limits<int64_t>::min()));
  v1::Value b;
  b.set_bool_value(false);
  values.push_back(b);
  v1::Value ts;
  ts.mutable_timestamp_value()->set_seconds(-1);
  values.push_back(ts);
  values.push_back(Null());
  int encoded = 0;
  for (uint32_t type :
       {oid::kText, oid::kVarchar, oid::kBytea, oid::kJson, oid::kJsonb, oid::kNumeric, oid::kInt8,
        oid::kInt2, oid::kFloat8, oid::kBool, oid::kTimestamptz, uint32_t{99999}}) {
    for (const v1::Value& v : values) {
      std::string out;
      if (!AppendCopyField(v, Col("c", type), &out).ok()) continue;
      ++encoded;
      EXPECT_EQ(out.find_first_of(std::string("\t\n\r\0", 4)), std::string::npos)
          << v.ShortDebugString() << " for type " << type << ": " << out;
      // A backslash is always the start of an escape COPY knows.
      for (size_t i = 0; i < out.size(); ++i) {
        if (out[i] != '\\') continue;
        ASSERT_LT(i + 1, out.size()) << out;
        EXPECT_NE(std::string("\\tnrN").find(out[i + 1]), std::string::npos) << out;
        ++i;
      }
    }
  }
  EXPECT_GT(encoded, 40);
  // Numbers are written as validated, not as sent.
  v1::Value n;
  n.set_numeric_value(" 12.5\n");
  EXPECT_EQ(Field(n, Col("n", oid::kNumeric)), "12.5");
  EXPECT_EQ(Field(Text("\t-3 "), Col("i", oid::kInt4)), "-3");
  std::string out;
  n.set_numeric_value("1\n2");
  EXPECT_EQ(SqlStateOf(AppendCopyField(n, Col("n", oid::kNumeric), &out)), "22P02");
}

TEST(CopyEncodingTest, RowLeavesOutputUnchangedOnError) {
  const ColumnInfo a = Col("a", oid::kInt8), b = Col("b", oid::kText, true);
  const std::vector<const ColumnInfo*> cols = {&a, &b};
  std::string out = "x\n";
  v1::Row good, bad, short_row;
  *good.add_values() = Int(1);
  *good.add_values() = Text("one");
  *bad.add_values() = Int(2);
  *bad.add_values() = Null();
  *short_row.add_values() = Int(3);
  ASSERT_TRUE(AppendCopyRow(good, cols, &out).ok());
  EXPECT_FALSE(AppendCopyRow(bad, cols, &out).ok());
  EXPECT_FALSE(AppendCopyRow(short_row, cols, &out).ok());
  EXPECT_EQ(out, "x\n1\tone\n");
}

TEST(CopyEncodingTest, Utf8) {
  EXPECT_TRUE(IsValidUtf8("h\xc3\xa9llo \xf0\x9f\x98\x80"));
  EXPECT_FALSE(IsValidUtf8("\xc0\xaf"));          // overlong
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xf4\x90\x80\x80"));  // > U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xe2\x82"));          // truncated
}

class CopyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pg_ = &testing::SharedPostgres();
    ASSERT_TRUE(pg_->CreateDatabase("copytest",
                                    "DROP TABLE IF EXISTS t; CREATE TABLE t (id int8 PRIMARY KEY, "
                                    "name text NOT NULL, data bytea, at timestamptz, "
                                    "amount numeric(12,2), ok bool, gen int8 GENERATED ALWAYS AS "
                                    "(id * 2) STORED, \"Odd \"\"col\" text)")
                    .ok());
    ConnectionOptions o;
    o.dsn = pg_->Dsn("copytest");
    auto c = Connection::Open(o);
    ASSERT_TRUE(c.ok()) << c.status();
    conn_ = *std::move(c);
  }
  absl::Time Soon() { return absl::Now() + absl::Seconds(20); }

  testing::PostgresCluster* pg_;
  std::unique_ptr<Connection> conn_;
};

TEST_F(CopyTest, DescribesTable) {
  absl::StatusOr<TableInfo> t = DescribeTable(*conn_, "t", Soon());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->name, "t");
  ASSERT_EQ(t->columns.size(), 7u);  // the generated column is left out
  EXPECT_EQ(t->columns[0].name, "id");
  EXPECT_EQ(t->columns[0].type_oid, oid::kInt8);
  EXPECT_TRUE(t->columns[0].not_null);
  EXPECT_FALSE(t->columns[2].not_null);
  EXPECT_EQ(t->columns[4].type, "numeric(12,2)");
  EXPECT_NE(t->Find("Odd \"col"), nullptr);
  EXPECT_EQ(DescribeTable(*conn_, "nope", Soon()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(DescribeTable(*conn_, "nope.t", Soon()).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CopyTest, CopiesTrickyValuesExactly) {
  absl::StatusOr<TableInfo> t = DescribeTable(*conn_, "t", Soon());
  ASSERT_TRUE(t.ok()) << t.status();
  std::vector<const ColumnInfo*> cols;
  for (const ColumnInfo& c : t->columns) cols.push_back(&c);
  std::string data;
  for (int i = 0; i < 1000; ++i) {
    v1::Row row;
    *row.add_values() = Int(i);
    *row.add_values() = Text(absl::StrCat("tab\there\nnew\\line\r", i, " h\xc3\xa9"));
    *row.add_values() = testing::Bytes(std::string("\0\\\n", 3));
    row.add_values()->mutable_timestamp_value()->set_seconds(1700000000 + i);
    row.add_values()->set_numeric_value("12.34");
    row.add_values()->set_bool_value(i % 2 == 0);
    *row.add_values() = i % 3 == 0 ? Null() : Text("\\N");
    ASSERT_TRUE(AppendCopyRow(row, cols, &data).ok());
  }
  CopySession session(*conn_, Soon());
  ASSERT_TRUE(session.Exec("BEGIN").ok());
  absl::StatusOr<int64_t> n = session.CopyIn(CopyTarget(*t, cols), data);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 1000);
  ASSERT_TRUE(session.Exec("COMMIT").ok());
  EXPECT_EQ(*pg_->QueryValue("copytest",
                             "SELECT count(*) FROM t WHERE name = E'tab\\there\\nnew\\\\line\\r' "
                             "|| id || ' h\xc3\xa9' AND data = '\\x005c0a'::bytea AND "
                             "at = to_timestamp(1700000000 + id) AND amount = 12.34 AND "
                             "ok = (id % 2 = 0) AND gen = id * 2"),
            "1000");
  EXPECT_EQ(*pg_->QueryValue("copytest", "SELECT count(*) FROM t WHERE \"Odd \"\"col\" IS NULL"),
            "334");
  EXPECT_TRUE(conn_->LooksAlive());
}

TEST_F(CopyTest, ReportsTheFailingLine) {
  absl::StatusOr<TableInfo> t = DescribeTable(*conn_, "t", Soon());
  ASSERT_TRUE(t.ok());
  const std::vector<const ColumnInfo*> cols = {t->Find("id"), t->Find("name")};
  CopySession session(*conn_, Soon());
  ASSERT_TRUE(session.Exec("BEGIN").ok());
  absl::StatusOr<int64_t> n = session.CopyIn(CopyTarget(*t, cols), "1\ta\n2\tb\n1\tc\n3\td\n");
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), absl::StatusCode::kAlreadyExists) << n.status();
  EXPECT_EQ(SqlStateOf(n.status()), "23505");
  EXPECT_EQ(CopyLineOf(n.status()), 3);
  EXPECT_TRUE(session.Exec("ROLLBACK").ok());
  // The session (and connection) is still usable.
  ASSERT_TRUE(session.Exec("BEGIN").ok());
  n = session.CopyIn(CopyTarget(*t, cols), "7\tx\n8\tnot-an-int-line\textra\n");
  EXPECT_EQ(n.status().code(), absl::StatusCode::kInvalidArgument) << n.status();
  EXPECT_EQ(CopyLineOf(n.status()), 2);
  EXPECT_TRUE(session.Exec("ROLLBACK").ok());
  auto rows = session.Query("SELECT $1::int + 1, NULL", {"41"});
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0][0], "42");
  EXPECT_FALSE((*rows)[0][1].has_value());
  EXPECT_FALSE(session.broken());
}

TEST_F(CopyTest, DeadlineCancelsABlockedCopy) {
  absl::StatusOr<TableInfo> t = DescribeTable(*conn_, "t", Soon());
  ASSERT_TRUE(t.ok());
  // Another session holds a lock the COPY waits for.
  ConnectionOptions o;
  o.dsn = pg_->Dsn("copytest");
  auto locker = Connection::Open(o);
  ASSERT_TRUE(locker.ok());
  CopySession lock_session(**locker, Soon());
  ASSERT_TRUE(lock_session.Exec("BEGIN").ok());
  ASSERT_TRUE(lock_session.Exec("LOCK TABLE t IN ACCESS EXCLUSIVE MODE").ok());

  const std::vector<const ColumnInfo*> cols = {t->Find("id"), t->Find("name")};
  CopySession session(*conn_, absl::Now() + absl::Milliseconds(300));
  absl::StatusOr<int64_t> n = session.CopyIn(CopyTarget(*t, cols), "1\ta\n");
  EXPECT_EQ(n.status().code(), absl::StatusCode::kDeadlineExceeded) << n.status();
  EXPECT_EQ(SqlStateOf(n.status()), "57014");
  // The server stopped the COPY: the connection is clean and kept.
  EXPECT_FALSE(session.broken());
  EXPECT_FALSE(conn_->broken());
  EXPECT_TRUE(conn_->LooksAlive());
  ASSERT_TRUE(lock_session.Exec("ROLLBACK").ok());
  CopySession again(*conn_, Soon());
  EXPECT_TRUE(again.CopyIn(CopyTarget(*t, cols), "1\ta\n").ok());
}

// A COPY past its deadline whose backend does not stop (here it is stopped
// with SIGSTOP, so the cancel request cannot take effect) is given up once
// the connection's cancel grace has passed too, as the Connection's own
// statements are: UNAVAILABLE, and the Connection itself is broken, so a
// pool discards it rather than hand out a connection in the middle of a COPY.
TEST_F(CopyTest, CopyWhoseBackendIgnoresTheCancelBreaksTheConnection) {
  ConnectionOptions o;
  o.dsn = pg_->Dsn("copytest");
  o.cancel_grace = absl::Milliseconds(300);
  absl::StatusOr<std::unique_ptr<Connection>> conn = Connection::Open(o);
  ASSERT_TRUE(conn.ok()) << conn.status();
  absl::StatusOr<TableInfo> t = DescribeTable(**conn, "t", Soon());
  ASSERT_TRUE(t.ok()) << t.status();
  CopySession probe(**conn, Soon());
  absl::StatusOr<std::vector<CopySession::TextRow>> pid_rows =
      probe.Query("SELECT pg_backend_pid()", {});
  ASSERT_TRUE(pid_rows.ok()) << pid_rows.status();
  ASSERT_EQ(pid_rows->size(), 1u);
  const pid_t backend = std::stoi(*(*pid_rows)[0][0]);
  ASSERT_GT(backend, 0);

  ASSERT_EQ(kill(backend, SIGSTOP), 0) << "cannot stop the backend: " << strerror(errno);
  struct Resume {
    pid_t pid;
    ~Resume() { kill(pid, SIGCONT); }
  } resume{backend};

  const std::vector<const ColumnInfo*> cols = {t->Find("id"), t->Find("name")};
  CopySession session(**conn, absl::Now() + absl::Milliseconds(200));
  absl::StatusOr<int64_t> n = session.CopyIn(CopyTarget(*t, cols), "1\ta\n");
  EXPECT_EQ(n.status().code(), absl::StatusCode::kUnavailable) << n.status();
  EXPECT_TRUE(absl::StrContains(n.status().message(), "cancelled statement")) << n.status();
  EXPECT_TRUE(session.broken());
  EXPECT_TRUE((*conn)->broken());
  EXPECT_FALSE((*conn)->LooksAlive());
  // Nothing more is sent on it.
  EXPECT_EQ(session.Exec("SELECT 1").code(), absl::StatusCode::kUnavailable);

  // Once the backend runs again and the connection is closed, the backend
  // ends and nothing was copied.
  kill(backend, SIGCONT);
  conn->reset();
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  absl::StatusOr<std::string> left;
  do {
    left = pg_->QueryValue(
        "copytest", absl::StrCat("SELECT count(*) FROM pg_stat_activity WHERE pid = ", backend));
    ASSERT_TRUE(left.ok()) << left.status();
  } while (*left != "0" && absl::Now() < deadline);
  EXPECT_EQ(*left, "0") << "backend " << backend << " still there";
  EXPECT_EQ(*pg_->QueryValue("copytest", "SELECT count(*) FROM t"), "0");
}

// COPY's binary format against its text format: every value poolside sends
// in binary lands as the same datum the text format makes of it (checked by
// PostgreSQL itself, table against table), values only text can carry say
// so, and a bad row is refused alike in both.

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

// For each column type with a binary form and each kind of value, every
// row copied on its own as text into one table and as binary into another:
// PostgreSQL takes or refuses it alike, and the two tables end up holding the
// same values.
TEST_F(CopyTest, BinaryRowsLandAsTheTextRowsDo) {
  const std::vector<std::string> types = {"bool", "bytea",  "int2",      "int4",        "int8",
                                          "oid",  "float8", "text",      "varchar(40)", "char(40)",
                                          "json", "jsonb",  "timestamp", "timestamptz"};
  for (const std::string& type : types) {
    SCOPED_TRACE(type);
    ASSERT_TRUE(pg_->Exec("copytest", absl::StrCat("DROP TABLE IF EXISTS a, b; "
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
    EXPECT_EQ(*pg_->QueryValue("copytest",
                               "SELECT count(*) FROM a JOIN b USING (n) "
                               "WHERE a.v::text IS NOT DISTINCT FROM b.v::text"),
              absl::StrCat(binary));
    EXPECT_EQ(*pg_->QueryValue("copytest", "SELECT count(*) FROM b"), absl::StrCat(binary));
    EXPECT_EQ(*pg_->QueryValue("copytest", "SELECT count(*) FROM a"), absl::StrCat(taken));
  }
}

TEST_F(CopyTest, BinaryValuesOnlyTextCarriesSaySo) {
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

TEST_F(CopyTest, BinaryFormatFollowsTheColumnTypes) {
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

TEST_F(CopyTest, BinaryBadRowsAreRefusedAlikeAndLeaveNothing) {
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
TEST_F(CopyTest, BinaryReportsTheFailingRow) {
  ASSERT_TRUE(pg_->Exec("copytest",
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
  EXPECT_EQ(*pg_->QueryValue("copytest", "SELECT string_agg(id::text, ',' ORDER BY id) FROM k"),
            "1,2,3");
  EXPECT_FALSE(session.broken());
}

}  // namespace
}  // namespace poolside::db
