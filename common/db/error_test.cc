#include "common/db/error.h"

#include <pqxx/except>

#include "gtest/gtest.h"

namespace poolside::db {
namespace {

TEST(ErrorTest, SqlStatesMapToRetryMeaning) {
  EXPECT_EQ(CodeForSqlState("42601"), absl::StatusCode::kInvalidArgument);  // syntax
  EXPECT_EQ(CodeForSqlState("42P01"), absl::StatusCode::kInvalidArgument);  // undefined table
  EXPECT_EQ(CodeForSqlState("22P02"), absl::StatusCode::kInvalidArgument);  // bad input
  EXPECT_EQ(CodeForSqlState("23505"), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(CodeForSqlState("23502"), absl::StatusCode::kFailedPrecondition);  // not null
  EXPECT_EQ(CodeForSqlState("40001"), absl::StatusCode::kAborted);
  EXPECT_EQ(CodeForSqlState("40P01"), absl::StatusCode::kAborted);
  EXPECT_EQ(CodeForSqlState("57014"), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(CodeForSqlState("57P01"), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CodeForSqlState("08006"), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CodeForSqlState("25006"), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(CodeForSqlState("42501"), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CodeForSqlState("53200"), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(CodeForSqlState("XX000"), absl::StatusCode::kInternal);
  EXPECT_EQ(CodeForSqlState(""), absl::StatusCode::kInternal);
}

TEST(ErrorTest, MessageCarriesSqlStateAndPayload) {
  absl::Status s = StatusFromSqlState("42601", "syntax error at or near \"SELEC\"", "");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "syntax error at or near \"SELEC\" (SQLSTATE 42601)");
  EXPECT_EQ(SqlStateOf(s), "42601");
  EXPECT_EQ(SqlStateOf(absl::InternalError("x")), "");
}

TEST(ErrorTest, MessagesAreBounded) {
  absl::Status s = StatusFromSqlState("22000", std::string(10000, 'x'), std::string(10000, 'y'));
  EXPECT_LT(s.message().size(), 2 * kMaxErrorMessage + 64);
}

TEST(ErrorTest, TranslatesLibpqxxExceptions) {
  EXPECT_EQ(StatusFromException(pqxx::unique_violation("dup", "INSERT", "23505")).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(StatusFromException(pqxx::syntax_error("bad", "SELEC", "42601")).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(StatusFromException(pqxx::broken_connection("gone")).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(StatusFromException(pqxx::in_doubt_error("?")).code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(StatusFromException(pqxx::conversion_error("nope")).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(StatusFromException(std::runtime_error("boom")).code(), absl::StatusCode::kInternal);
  EXPECT_EQ(SqlStateOf(StatusFromException(pqxx::unique_violation("dup", "q", "23505"))), "23505");
}

TEST(ErrorTest, ConnectionFailuresAreUnreachableServersNotTheServersVerdicts) {
  EXPECT_TRUE(IsConnectionFailure(absl::UnavailableError("connection refused")));
  EXPECT_TRUE(IsConnectionFailure(StatusFromSqlState("08006", "connection failure")));
  EXPECT_TRUE(IsConnectionFailure(StatusFromException(pqxx::broken_connection("gone"))));
  EXPECT_FALSE(IsConnectionFailure(StatusFromSqlState("53300", "too many connections")));
  EXPECT_FALSE(IsConnectionFailure(StatusFromSqlState("57P01", "terminating connection")));
  EXPECT_FALSE(IsConnectionFailure(StatusFromSqlState("57P03", "the database system is starting")));
  EXPECT_FALSE(IsConnectionFailure(absl::DeadlineExceededError("pool acquire timed out")));
  EXPECT_FALSE(IsConnectionFailure(absl::OkStatus()));
}

}  // namespace
}  // namespace poolside::db
