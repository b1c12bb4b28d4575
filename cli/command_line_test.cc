#include "cli/command_line.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace poolside::cli {
namespace {

using ::testing::ElementsAre;

absl::StatusOr<Invocation> Parse(std::vector<std::string> args) { return ParseCommandLine(args); }

TEST(CommandLineTest, NoArgumentsIsHelp) {
  absl::StatusOr<Invocation> inv = Parse({});
  ASSERT_TRUE(inv.ok());
  EXPECT_EQ(inv->command, Command::kHelp);
  EXPECT_EQ(Parse({"query", "--help"})->command, Command::kHelp);
  EXPECT_EQ(Parse({"-h"})->command, Command::kHelp);
}

TEST(CommandLineTest, QueryWithOptionsAndParams) {
  absl::StatusOr<Invocation> inv =
      Parse({"--addr=h:1", "--timeout", "500ms", "query", "--db", "demo", "--stream",
             "SELECT $1, $2, $3", "-5", "--db", "text:x"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->command, Command::kQuery);
  EXPECT_EQ(inv->addr, "h:1");
  EXPECT_EQ(inv->timeout, absl::Milliseconds(500));
  EXPECT_EQ(inv->database, "demo");
  EXPECT_TRUE(inv->stream);
  EXPECT_EQ(inv->sql, "SELECT $1, $2, $3");
  // After the SQL everything is a parameter, even what looks like an option.
  EXPECT_THAT(inv->params, ElementsAre("-5", "--db", "text:x"));
}

TEST(CommandLineTest, GlobalOptionsAfterCommandAndDoubleDash) {
  absl::StatusOr<Invocation> inv = Parse({"query", "--addr", "x:2", "--db=d", "--", "-SQL-", "1"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->addr, "x:2");
  EXPECT_EQ(inv->database, "d");
  EXPECT_EQ(inv->sql, "-SQL-");
  EXPECT_THAT(inv->params, ElementsAre("1"));
}

TEST(CommandLineTest, DefaultsAreKept) {
  Invocation defaults;
  defaults.addr = "env:3";
  absl::StatusOr<Invocation> inv = ParseCommandLine({"pools"}, defaults);
  ASSERT_TRUE(inv.ok());
  EXPECT_EQ(inv->command, Command::kPools);
  EXPECT_EQ(inv->addr, "env:3");
  EXPECT_EQ(inv->timeout, absl::Seconds(30));
}

TEST(CommandLineTest, CheckTakesDatabaseNames) {
  absl::StatusOr<Invocation> inv = Parse({"check", "a", "b"});
  ASSERT_TRUE(inv.ok());
  EXPECT_EQ(inv->command, Command::kCheck);
  EXPECT_THAT(inv->databases, ElementsAre("a", "b"));
}

TEST(CommandLineTest, StatsOptions) {
  absl::StatusOr<Invocation> inv = Parse({"stats", "--limit=5", "--db", "x"});
  ASSERT_TRUE(inv.ok());
  EXPECT_EQ(inv->command, Command::kStats);
  EXPECT_EQ(inv->limit, 5u);
  EXPECT_EQ(inv->database, "x");
}

TEST(CommandLineTest, AdviseOptions) {
  absl::StatusOr<Invocation> inv =
      Parse({"advise", "--db", "x", "--min-calls", "3", "--max_statements=7"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->command, Command::kAdvise);
  EXPECT_EQ(inv->database, "x");
  EXPECT_EQ(inv->min_calls, 3u);
  EXPECT_EQ(inv->max_statements, 7u);
  EXPECT_EQ(inv->apply, 0u);
  inv = Parse({"advise", "--apply", "2"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->apply, 2u);
}

TEST(CommandLineTest, UsageErrors) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"frobnicate"},
           {"query"},
           {"query", "--db"},
           {"--timeout=soon", "pools"},
           {"--timeout=-1s", "pools"},
           {"pools", "extra"},
           {"pools", "--stream"},
           {"--db=x", "query", "SELECT 1"},  // --db belongs to the command
           {"query", "--max_rows=lots", "SELECT 1"},
           {"--bogus", "check"},
           {"advise", "--apply", "0"},
           {"advise", "--apply", "first"},
           {"advise", "--min-calls", "-1"},
           {"advise", "extra"},
           {"stats", "--apply", "1"}}) {
    absl::StatusOr<Invocation> inv = Parse(args);
    EXPECT_EQ(inv.status().code(), absl::StatusCode::kInvalidArgument) << args[0];
  }
}

}  // namespace
}  // namespace poolside::cli
