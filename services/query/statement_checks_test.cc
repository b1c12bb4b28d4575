#include "services/query/statement_checks.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace poolside::query {
namespace {

TEST(StatementChecksTest, ARepeatedTextGetsTheSameVerdictsAndIsRememberedOnce) {
  StatementChecks checks;
  for (int i = 0; i < 3; ++i) {
    StatementChecks::Verdict v = checks.Check("SELECT abalance FROM t WHERE aid = $1", false);
    EXPECT_TRUE(v.status.ok()) << v.status;
    EXPECT_TRUE(v.may_share_sync);
    v = checks.Check("SELECT * FROM t FOR UPDATE", false);
    EXPECT_TRUE(v.status.ok()) << v.status;
    EXPECT_FALSE(v.may_share_sync);
    v = checks.Check("SET search_path TO x", false);
    EXPECT_EQ(v.status.code(), absl::StatusCode::kInvalidArgument) << v.status;
  }
  EXPECT_EQ(checks.size(), 3u);
}

TEST(StatementChecksTest, ReadOnlyAndWritingCallersGetTheirOwnVerdictInEitherOrder) {
  const std::string insert = "INSERT INTO t VALUES (1)";
  const std::string set = "SET search_path TO x";
  {
    StatementChecks checks;
    EXPECT_TRUE(checks.Check(insert, false).status.ok());
    EXPECT_TRUE(checks.Check(insert, true).status.ok());  // PostgreSQL's read-only transaction refuses it
    // SET is refused for both, but a read-only caller hears it from the
    // read-only check first, as without the memo.
    const absl::Status writing = checks.Check(set, false).status;
    const absl::Status reading = checks.Check(set, true).status;
    EXPECT_EQ(writing.code(), absl::StatusCode::kInvalidArgument) << writing;
    EXPECT_EQ(reading.code(), absl::StatusCode::kPermissionDenied) << reading;
  }
  {
    StatementChecks checks;
    const absl::Status reading = checks.Check(set, true).status;
    const absl::Status writing = checks.Check(set, false).status;
    EXPECT_EQ(reading.code(), absl::StatusCode::kPermissionDenied) << reading;
    EXPECT_EQ(writing.code(), absl::StatusCode::kInvalidArgument) << writing;
  }
}

TEST(StatementChecksTest, StaysBoundedAndLongTextsAreCheckedWithoutBeingKept) {
  StatementChecks checks;
  for (size_t i = 0; i < StatementChecks::kMaxTexts + 10; ++i) {
    EXPECT_TRUE(checks.Check(absl::StrCat("SELECT ", i), false).status.ok());
    EXPECT_LE(checks.size(), StatementChecks::kMaxTexts);
  }
  StatementChecks fresh;
  std::string long_select = "SELECT 1";
  long_select.append(StatementChecks::kMaxTextBytes, ' ');
  EXPECT_TRUE(fresh.Check(long_select, false).status.ok());
  std::string long_set = "SET search_path TO x";
  long_set.append(StatementChecks::kMaxTextBytes, ' ');
  EXPECT_FALSE(fresh.Check(long_set, false).status.ok());
  EXPECT_EQ(fresh.size(), 0u);
}

}  // namespace
}  // namespace poolside::query
