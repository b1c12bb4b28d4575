#ifndef POOLSIDE_COMMON_DB_ERROR_H_
#define POOLSIDE_COMMON_DB_ERROR_H_

// Database errors as absl::Status. Every libpq/libpqxx error in the suite is
// translated here, once, so the rest of poolside sees only status codes whose
// meaning follows Abseil's retry guidance:
//   class 08, 57P01-57P03, 53300 (cannot reach / lost the server) UNAVAILABLE: retry the call
//   40001, 40P01 (serialization failure, deadlock)      ABORTED: retry the transaction
//   57014 (statement cancelled / statement_timeout)     DEADLINE_EXCEEDED
//   23505 (unique violation)                            ALREADY_EXISTS
//   other class 23 (integrity constraint violations)    FAILED_PRECONDITION
//   25006 (write in a read-only transaction)            FAILED_PRECONDITION
//   42501 (insufficient privilege)                      PERMISSION_DENIED
//   other class 42, class 22, 0A, 26, 34 (bad SQL, data)  INVALID_ARGUMENT
//   class 53, 54 (resources, limits)                    RESOURCE_EXHAUSTED
//   anything else                                       INTERNAL
// The message ends with "(SQLSTATE xxxxx)" and the code is also attached as the
// payload kSqlStatePayload, readable with SqlStateOf().

#include <exception>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace poolside::db {

inline constexpr absl::string_view kSqlStatePayload = "poolside.dev/sqlstate";

// Messages longer than this are truncated (bounded error messages).
inline constexpr size_t kMaxErrorMessage = 1024;

absl::StatusCode CodeForSqlState(absl::string_view sqlstate);

// `message` is PostgreSQL's primary message; `detail` may be empty.
absl::Status StatusFromSqlState(absl::string_view sqlstate, absl::string_view message,
                                absl::string_view detail = "");

// Translates an exception thrown by libpqxx (or the standard library) into a status.
absl::Status StatusFromException(const std::exception& e);

// The SQLSTATE attached to `status`, or "" if none.
std::string SqlStateOf(const absl::Status& status);

// Whether `status` says the server could not be reached or the connection to
// it was lost: UNAVAILABLE without a SQLSTATE (libpq's own) or of class 08.
// Not the server's own verdicts that are also UNAVAILABLE (53300 too many
// connections, 57P01-57P03 a session the server ended, also
// pg_terminate_backend's on a healthy server), which say nothing of whether
// it can be reached. Only meaningful for a status from a connection's call.
bool IsConnectionFailure(const absl::Status& status);

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_ERROR_H_
