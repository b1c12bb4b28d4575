#include "cli/table.h"

#include "gtest/gtest.h"

namespace poolside::cli {
namespace {

TEST(TextTableTest, AlignsLikePsql) {
  TextTable t({"aid", "abalance", "note"});
  t.AddRow({"1", "0", "NULL"}, {true, true, false});
  t.AddRow({"12345", "-7", "hello"}, {true, true, false});
  EXPECT_EQ(t.Render(),
            "  aid  | abalance | note\n"
            "-------+----------+-------\n"
            "     1 |        0 | NULL\n"
            " 12345 |       -7 | hello\n");
}

TEST(TextTableTest, EmptyResultStillHasHeader) {
  TextTable t({"a"});
  EXPECT_EQ(t.Render(), " a\n---\n");
}

TEST(TextTableTest, CountsCodePointsNotBytes) {
  EXPECT_EQ(DisplayWidth("héllo"), 5u);
  TextTable t({"name", "n"});
  t.AddRow({"héllo", "1"}, {false, true});
  t.AddRow({"ab", "22"}, {false, true});
  EXPECT_EQ(t.Render(),
            " name  | n\n"
            "-------+----\n"
            " héllo |  1\n"
            " ab    | 22\n");
}

TEST(TextTableTest, MissingCellsAreEmptyAndExtraOnesDropped) {
  TextTable t({"a", "b"});
  t.AddRow({"x"});
  t.AddRow({"1", "2", "3"});
  EXPECT_EQ(t.Render(),
            " a | b\n"
            "---+---\n"
            " x | \n"
            " 1 | 2\n");
}

TEST(TextTableTest, StreamingKeepsFirstWidths) {
  TextTable t({"id", "v"});
  t.AddRow({"1", "a"});
  EXPECT_EQ(t.RenderHeader(), " id | v\n----+---\n");
  EXPECT_EQ(t.RenderRows(), " 1  | a\n");
  EXPECT_EQ(t.buffered_rows(), 0u);
  t.AddRow({"12345", "b"});
  EXPECT_EQ(t.RenderRows(), " 12345 | b\n");
}

}  // namespace
}  // namespace poolside::cli
