#ifndef POOLSIDE_SERVICES_QUERY_INDEX_ADVICE_H_
#define POOLSIDE_SERVICES_QUERY_INDEX_ADVICE_H_

// Index advice from the observed workload (GetIndexAdvice): for the
// statements that cost a database the most total time, the B-tree indexes
// their filters, joins and sorts could use (common/sql/index_candidates.h),
// each costed by the planner with a hypothetical index on a session of its
// own (common/db/hypothetical_index.h). A candidate is suggested for a
// statement only when the statement's generic plan uses it and costs
// at least kMinCostReduction less than without it; of the candidates that
// pass, each statement goes to its cheapest (fewer columns on a tie), and a
// suggestion lists the statements it won. Candidates an existing index
// already leads with, and columns the table does not have, are never tried.
//
// Statements are considered in order of total time, at most
// max_statements of those called at least min_calls times; one that is not
// a single SELECT, INSERT, UPDATE, DELETE or MERGE that poolside would run,
// or that PostgreSQL cannot prepare or plan under the session's role, is
// reported as skipped with the reason.
//
// Runs on the calling thread; `session` is the caller's (one PlanSession,
// one thread).

#include <atomic>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/db/hypothetical_index.h"
#include "proto/poolside/v1/query.pb.h"

namespace poolside::query {

inline constexpr double kMinCostReduction = 0.05;
inline constexpr size_t kMaxCandidates = 64;
inline constexpr uint32_t kDefaultAdviceStatements = 20;
inline constexpr uint32_t kMaxAdviceStatements = 100;

struct AdviceOptions {
  uint64_t min_calls = 1;
  uint32_t max_statements = kDefaultAdviceStatements;
  absl::Time deadline = absl::InfiniteFuture();
  const std::atomic<bool>* cancelled = nullptr;
};

// `stats`: every tracked statement of one database, most total time first
// (StatementStatsRegistry::Snapshot). Fills `response` (its database is the
// caller's to set). DEADLINE_EXCEEDED / CANCELLED when the deadline passed
// or the call was cancelled before the advice was complete.
absl::Status AdviseIndexes(db::PlanSession& session, const std::vector<v1::StatementStats>& stats,
                           const AdviceOptions& options, v1::GetIndexAdviceResponse* response);

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_INDEX_ADVICE_H_
