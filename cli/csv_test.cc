#include "cli/csv.h"

#include <sstream>

#include "gtest/gtest.h"

namespace poolside::cli {
namespace {

std::vector<std::vector<std::string>> ReadAll(const std::string& text,
                                              std::vector<std::vector<bool>>* quoted = nullptr) {
  std::istringstream in(text);
  CsvReader reader(&in);
  std::vector<std::vector<std::string>> out;
  std::vector<CsvField> fields;
  while (true) {
    auto more = reader.Next(&fields);
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok() || !*more) break;
    std::vector<std::string> values;
    std::vector<bool> q;
    for (auto& f : fields) {
      values.push_back(f.value);
      q.push_back(f.quoted);
    }
    out.push_back(values);
    if (quoted) quoted->push_back(q);
  }
  return out;
}

using Rows = std::vector<std::vector<std::string>>;

TEST(CsvTest, PlainAndQuoted) {
  EXPECT_EQ(ReadAll("a,b,c\n1,2,3\n"), (Rows{{"a", "b", "c"}, {"1", "2", "3"}}));
  EXPECT_EQ(ReadAll("a,b\r\n1,2"), (Rows{{"a", "b"}, {"1", "2"}}));
  EXPECT_EQ(ReadAll("\"x,y\",\"say \"\"hi\"\"\",\"two\nlines\"\n"),
            (Rows{{"x,y", "say \"hi\"", "two\nlines"}}));
  EXPECT_EQ(ReadAll("\"a\r\nb\",c\r\n"), (Rows{{"a\r\nb", "c"}}));
}

TEST(CsvTest, EmptyFieldsKeepQuotedness) {
  std::vector<std::vector<bool>> quoted;
  EXPECT_EQ(ReadAll(",\"\",x\n", &quoted), (Rows{{"", "", "x"}}));
  EXPECT_EQ(quoted[0], (std::vector<bool>{false, true, false}));
  EXPECT_EQ(ReadAll("\n"), (Rows{{""}}));
}

TEST(CsvTest, TracksLinesAndBytes) {
  std::istringstream in("a\n\"b\nc\"\nd\n");
  CsvReader reader(&in);
  std::vector<CsvField> f;
  ASSERT_TRUE(*reader.Next(&f));
  EXPECT_EQ(reader.record_line(), 1);
  ASSERT_TRUE(*reader.Next(&f));
  EXPECT_EQ(reader.record_line(), 2);
  ASSERT_TRUE(*reader.Next(&f));
  EXPECT_EQ(reader.record_line(), 4);
  EXPECT_EQ(reader.bytes_read(), 10u);
  EXPECT_FALSE(*reader.Next(&f));
}

TEST(CsvTest, Malformed) {
  for (const char* bad : {"\"open\n", "a\"b\n", "\"x\"y\n"}) {
    std::istringstream in(bad);
    CsvReader reader(&in);
    std::vector<CsvField> f;
    auto r = reader.Next(&f);
    EXPECT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace poolside::cli
