#ifndef POOLSIDE_COMMON_DB_SQL_QUOTE_H_
#define POOLSIDE_COMMON_DB_SQL_QUOTE_H_

// Quoting for names and strings that poolside writes into SQL text itself,
// where a statement cannot take them as parameters (DDL, COPY targets,
// replication commands).

#include <string>

#include "absl/strings/string_view.h"

namespace poolside::db {

// `name` as a quoted identifier ("we""ird"): read back exactly as given.
std::string QuoteIdentifier(absl::string_view name);

// `text` as a string literal ('it''s'), with embedded quotes doubled (the
// server runs with standard_conforming_strings, the default since 9.1, so a
// backslash is an ordinary character).
std::string QuoteLiteral(absl::string_view text);

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_SQL_QUOTE_H_
