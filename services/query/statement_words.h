#ifndef POOLSIDE_SERVICES_QUERY_STATEMENT_WORDS_H_
#define POOLSIDE_SERVICES_QUERY_STATEMENT_WORDS_H_

// The words of a SQL statement, for the few decisions the query service makes
// before PostgreSQL sees it: which statements may be cached or share a
// transaction, which a read-only principal may run, and which would change the
// session of a pooled connection. Words are found as PostgreSQL's lexer finds
// them: never inside string constants (including E'...' and $tag$ quoting),
// quoted identifiers or comments (block comments nest). PostgreSQL has the
// final word on everything else. Stateless and thread-safe.

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace poolside::query {

// The statement's first word (a keyword or an unquoted identifier: letters,
// digits, _ and $) after whitespace, comments and opening parentheses; empty if
// it does not start with one. Not upper-cased: compare with absl::EqualsIgnoreCase.
absl::string_view FirstKeyword(absl::string_view sql);

// Whether `word` (compared ignoring case) is one of the statement's words,
// outside strings, quoted names and comments.
bool ContainsWord(absl::string_view sql, absl::string_view word);

// Statements that would leave something on the connection they run on, which
// in a pool is shared with every later caller. INVALID_ARGUMENT naming what was
// found and the transaction-scoped way to do it; OK for anything else:
//   - SET (other than SET LOCAL, SET TRANSACTION and SET CONSTRAINTS, which end
//     with the transaction; SET local.x is a custom setting, for the session),
//     UPDATE pg_settings (the same as SET), RESET, DISCARD, DEALLOCATE,
//     PREPARE, LOAD, LISTEN, UNLISTEN;
//   - a call of set_config(name, value, is_local) whose is_local is not the
//     literal true;
//   - pg_temp in a search path (SET LOCAL search_path, set_config): what the
//     transaction creates next would be temporary;
//   - a call of a session-level advisory lock function (pg_advisory_lock,
//     pg_try_advisory_lock and their _shared forms; the _xact_ ones are fine);
//   - temporary objects wherever the statement creates one: CREATE
//     [GLOBAL|LOCAL] TEMP|TEMPORARY ..., SELECT ... INTO [GLOBAL|LOCAL] TEMP,
//     a pg_temp or pg_temp_<n> schema in CREATE or INTO, also under EXPLAIN
//     ANALYZE; unless ON COMMIT DROP;
//   - DECLARE ... WITH HOLD;
//   - built-ins that run SQL text given as a string (query_to_xml and its
//     variants, ts_stat), and U&"..." names, which are not decoded here.
// Plain strings are read both with and without backslash escapes when they
// hold one (standard_conforming_strings may be off). Out of reach: what
// functions, procedures, DO blocks, operators, casts or views do when
// PostgreSQL runs them.
absl::Status CheckSessionStatement(absl::string_view sql);

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_STATEMENT_WORDS_H_
