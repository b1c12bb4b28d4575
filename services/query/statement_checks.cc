#include "services/query/statement_checks.h"

#include <utility>

#include "absl/strings/match.h"
#include "services/query/named_queries.h"
#include "services/query/statement_words.h"

namespace poolside::query {

// Reads that may share one implicit transaction with the statements pipelined
// next to them (db::Statement::may_share_sync): a plain SELECT, VALUES or TABLE.
// Left out: WITH (it may hold a data-modifying CTE) and anything with the word
// FOR (row locks, FOR UPDATE/SHARE, would be held until the shared transaction
// ends). Wrongly leaving a read out only costs its own Sync; sharing is safe for
// any statement anyway, since a shared transaction with a failure is rolled back
// and each statement re-run.
bool MayShareSync(absl::string_view sql) {
  const absl::string_view first = FirstKeyword(sql);
  if (!absl::EqualsIgnoreCase(first, "select") && !absl::EqualsIgnoreCase(first, "values") &&
      !absl::EqualsIgnoreCase(first, "table")) {
    return false;
  }
  return !ContainsWord(sql, "for");
}

// The read-only check's answer first (it names what a read-only caller may
// not do), then the session check's.
absl::Status StatementChecks::Combined(const Facts& f, bool read_only) {
  if (read_only && !f.read_only->ok()) return *f.read_only;
  return f.session;
}

StatementChecks::Facts StatementChecks::Lex(absl::string_view sql, bool read_only) {
  Facts f;
  f.session = CheckSessionStatement(sql);
  if (read_only) f.read_only = CheckReadOnlyStatement(sql);
  f.may_share_sync = MayShareSync(sql);
  return f;
}

StatementChecks::Verdict StatementChecks::VerdictOf(const Facts& f, bool read_only) {
  return Verdict{Combined(f, read_only), f.may_share_sync};
}

StatementChecks::Verdict StatementChecks::Check(absl::string_view sql, bool read_only) {
  if (sql.size() > kMaxTextBytes) return VerdictOf(Lex(sql, read_only), read_only);
  {
    absl::MutexLock lock(&mu_);
    auto it = facts_.find(sql);
    if (it != facts_.end() && (!read_only || it->second.read_only.has_value())) {
      return VerdictOf(it->second, read_only);
    }
  }
  // Lexed outside the lock; two callers of a new text may both lex it.
  Facts f = Lex(sql, read_only);
  const Verdict v = VerdictOf(f, read_only);
  absl::MutexLock lock(&mu_);
  auto it = facts_.find(sql);
  if (it != facts_.end()) {
    if (read_only && !it->second.read_only.has_value()) it->second.read_only = f.read_only;
    return v;
  }
  if (facts_.size() >= kMaxTexts) facts_.clear();
  facts_.emplace(std::string(sql), std::move(f));
  return v;
}

size_t StatementChecks::size() const {
  absl::MutexLock lock(&mu_);
  return facts_.size();
}

}  // namespace poolside::query
