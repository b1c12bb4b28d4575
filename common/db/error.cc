#include "common/db/error.h"

#include <pqxx/except>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace poolside::db {
namespace {

std::string Bounded(absl::string_view text) {
  text = absl::StripAsciiWhitespace(text);
  if (text.size() <= kMaxErrorMessage) return std::string(text);
  return absl::StrCat(text.substr(0, kMaxErrorMessage), "...");
}

}  // namespace

absl::StatusCode CodeForSqlState(absl::string_view s) {
  if (s.size() != 5) return absl::StatusCode::kInternal;
  const absl::string_view cls = s.substr(0, 2);
  if (s == "23505") return absl::StatusCode::kAlreadyExists;
  if (s == "40001" || s == "40P01") return absl::StatusCode::kAborted;
  if (s == "57014") return absl::StatusCode::kDeadlineExceeded;
  if (s == "57P01" || s == "57P02" || s == "57P03" || s == "53300")
    return absl::StatusCode::kUnavailable;
  if (s == "25006") return absl::StatusCode::kFailedPrecondition;
  if (s == "42501") return absl::StatusCode::kPermissionDenied;
  if (cls == "08") return absl::StatusCode::kUnavailable;
  if (cls == "23") return absl::StatusCode::kFailedPrecondition;
  if (cls == "40") return absl::StatusCode::kAborted;
  if (cls == "42" || cls == "22" || cls == "0A" || cls == "26" || cls == "34" || cls == "2B" ||
      cls == "3D" || cls == "3F" || cls == "P0")
    return absl::StatusCode::kInvalidArgument;
  if (cls == "53" || cls == "54") return absl::StatusCode::kResourceExhausted;
  if (cls == "25") return absl::StatusCode::kFailedPrecondition;
  return absl::StatusCode::kInternal;
}

absl::Status StatusFromSqlState(absl::string_view sqlstate, absl::string_view message,
                                absl::string_view detail) {
  std::string text = Bounded(message);
  if (!detail.empty()) absl::StrAppend(&text, ": ", Bounded(detail));
  if (!sqlstate.empty()) absl::StrAppend(&text, " (SQLSTATE ", sqlstate, ")");
  absl::Status status(CodeForSqlState(sqlstate), text);
  if (!sqlstate.empty()) status.SetPayload(kSqlStatePayload, absl::Cord(sqlstate));
  return status;
}

absl::Status StatusFromException(const std::exception& e) {
  if (const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e)) {
    return StatusFromSqlState(sql->sqlstate(), sql->what());
  }
  if (dynamic_cast<const pqxx::broken_connection*>(&e) != nullptr) {
    return absl::UnavailableError(absl::StrCat("database connection failed: ", Bounded(e.what())));
  }
  if (dynamic_cast<const pqxx::in_doubt_error*>(&e) != nullptr) {
    return absl::UnknownError(absl::StrCat("commit outcome unknown: ", Bounded(e.what())));
  }
  if (dynamic_cast<const pqxx::conversion_error*>(&e) != nullptr ||
      dynamic_cast<const pqxx::argument_error*>(&e) != nullptr ||
      dynamic_cast<const pqxx::range_error*>(&e) != nullptr) {
    return absl::InvalidArgumentError(Bounded(e.what()));
  }
  if (dynamic_cast<const std::bad_alloc*>(&e) != nullptr) {
    return absl::ResourceExhaustedError("out of memory");
  }
  return absl::InternalError(Bounded(e.what()));
}

std::string SqlStateOf(const absl::Status& status) {
  auto payload = status.GetPayload(kSqlStatePayload);
  return payload.has_value() ? std::string(*payload) : std::string();
}

bool IsConnectionFailure(const absl::Status& status) {
  if (status.code() != absl::StatusCode::kUnavailable) return false;
  const std::string sqlstate = SqlStateOf(status);
  return sqlstate.empty() || absl::StartsWith(sqlstate, "08");
}

}  // namespace poolside::db
