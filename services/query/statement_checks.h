#ifndef POOLSIDE_SERVICES_QUERY_STATEMENT_CHECKS_H_
#define POOLSIDE_SERVICES_QUERY_STATEMENT_CHECKS_H_

// What the query engine learns from a statement's text alone: whether it may
// run on a pooled connection at all (CheckSessionStatement), whether a
// read-only principal may run it (CheckReadOnlyStatement), and whether it may
// share an implicit transaction with its pipelined neighbours (MayShareSync).
// The first two lex the whole text; a workload repeats a few statements (every
// cached read is one), so the answers are remembered per distinct text and a
// repeated statement is lexed once.
//
// Bounded: texts longer than kMaxTextBytes are checked every time, and the
// memo forgets everything once it holds kMaxTexts texts. Thread-safe.

#include <cstddef>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace poolside::query {

// A plain SELECT, VALUES or TABLE without the word FOR (see the .cc).
bool MayShareSync(absl::string_view sql);

class StatementChecks {
 public:
  static constexpr size_t kMaxTexts = 4096;
  static constexpr size_t kMaxTextBytes = 4096;

  struct Verdict {
    absl::Status status;  // (read_only) CheckReadOnlyStatement's, then CheckSessionStatement's
    bool may_share_sync = false;
  };

  // The checks of `sql` for a caller that may write (read_only false) or not.
  Verdict Check(absl::string_view sql, bool read_only);

  // Texts remembered now (for tests).
  size_t size() const;

 private:
  struct Facts {
    absl::Status session;
    std::optional<absl::Status> read_only;  // computed when first asked
    bool may_share_sync = false;
  };
  static absl::Status Combined(const Facts& f, bool read_only);
  static Facts Lex(absl::string_view sql, bool read_only);
  static Verdict VerdictOf(const Facts& f, bool read_only);

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Facts> facts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_STATEMENT_CHECKS_H_
