#ifndef POOLSIDE_SERVICES_QUERY_STATEMENT_WORDS_H_
#define POOLSIDE_SERVICES_QUERY_STATEMENT_WORDS_H_

// The leading keywords of a SQL statement, for the few decisions the query
// service makes before PostgreSQL sees it: which statements may be cached or
// share a transaction, which a read-only principal may run, and which would
// change the session of a pooled connection. PostgreSQL has the final word on
// everything else. Stateless and thread-safe.

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace poolside::query {

// The statement's first keyword (its leading letters) after whitespace, opening
// parentheses and comments (block comments nest, as in PostgreSQL); empty if
// there is none. Not upper-cased: compare with absl::EqualsIgnoreCase.
absl::string_view FirstKeyword(absl::string_view sql);

// The keyword after the first one, by the same rules; empty if there is none.
absl::string_view SecondKeyword(absl::string_view sql);

// Statements that change the session of the connection they run on, which in
// a pool is shared with every later caller: SET (other than SET LOCAL, SET
// TRANSACTION and SET CONSTRAINTS, which end with the transaction), RESET,
// DISCARD, DEALLOCATE, PREPARE and LOAD. INVALID_ARGUMENT naming the keyword
// and the transaction-scoped way to do it; OK for anything else.
// (A function call such as set_config(..., false) is not seen here.)
absl::Status CheckSessionStatement(absl::string_view sql);

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_STATEMENT_WORDS_H_
