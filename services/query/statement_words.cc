#include "services/query/statement_words.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace poolside::query {
namespace {

absl::string_view SkipSpaceAndComments(absl::string_view sql) {
  while (!sql.empty()) {
    if (absl::ascii_isspace(static_cast<unsigned char>(sql.front())) || sql.front() == '(') {
      sql.remove_prefix(1);
    } else if (absl::StartsWith(sql, "--")) {
      const size_t nl = sql.find('\n');
      sql = nl == absl::string_view::npos ? absl::string_view() : sql.substr(nl + 1);
    } else if (absl::StartsWith(sql, "/*")) {
      int depth = 0;
      size_t i = 0;
      for (; i + 1 < sql.size(); ++i) {
        if (sql[i] == '/' && sql[i + 1] == '*') {
          ++depth;
          ++i;
        } else if (sql[i] == '*' && sql[i + 1] == '/') {
          ++i;
          if (--depth == 0) break;
        }
      }
      // Unterminated: nothing follows.
      sql = depth == 0 && i < sql.size() ? sql.substr(i + 1) : absl::string_view();
    } else {
      break;
    }
  }
  return sql;
}

// The keyword at the start of `sql` (after what SkipSpaceAndComments skips) and
// the rest after it.
absl::string_view TakeKeyword(absl::string_view* sql) {
  *sql = SkipSpaceAndComments(*sql);
  size_t end = 0;
  while (end < sql->size() && absl::ascii_isalpha(static_cast<unsigned char>((*sql)[end]))) ++end;
  const absl::string_view word = sql->substr(0, end);
  sql->remove_prefix(end);
  return word;
}

}  // namespace

absl::string_view FirstKeyword(absl::string_view sql) { return TakeKeyword(&sql); }

absl::string_view SecondKeyword(absl::string_view sql) {
  if (TakeKeyword(&sql).empty()) return {};
  // "SET x" but not "SETX" or "SET_x": the first word must end at a separator.
  if (!sql.empty() && (absl::ascii_isalnum(static_cast<unsigned char>(sql.front())) ||
                       sql.front() == '_')) {
    return {};
  }
  return TakeKeyword(&sql);
}

absl::Status CheckSessionStatement(absl::string_view sql) {
  const absl::string_view first = FirstKeyword(sql);
  if (absl::EqualsIgnoreCase(first, "SET")) {
    const absl::string_view second = SecondKeyword(sql);
    if (absl::EqualsIgnoreCase(second, "LOCAL") || absl::EqualsIgnoreCase(second, "TRANSACTION") ||
        absl::EqualsIgnoreCase(second, "CONSTRAINTS")) {
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError(
        "SET changes the session of a pooled connection, which later callers share; use SET "
        "LOCAL inside ExecuteTransaction (or set_config(name, value, true)) for settings that "
        "end with the transaction");
  }
  for (const char* keyword : {"RESET", "DISCARD", "DEALLOCATE", "PREPARE", "LOAD"}) {
    if (absl::EqualsIgnoreCase(first, keyword)) {
      return absl::InvalidArgumentError(absl::StrCat(
          keyword, " changes the session of a pooled connection, which later callers share; "
                   "poolside prepares statements itself, and settings for one transaction "
                   "belong in SET LOCAL inside ExecuteTransaction"));
    }
  }
  return absl::OkStatus();
}

}  // namespace poolside::query
