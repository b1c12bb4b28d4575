#ifndef POOLSIDE_COMMON_DB_HYPOTHETICAL_INDEX_H_
#define POOLSIDE_COMMON_DB_HYPOTHETICAL_INDEX_H_

// What index advice asks a database: the planner's cost of a statement with
// and without a hypothetical B-tree index (HypoPG, an extension the database
// must have: CREATE EXTENSION hypopg), the tables' columns and existing
// indexes, and, when asked, the real index (CREATE INDEX CONCURRENTLY).
//
//   PlanSession::Options o{.deadline = d};
//   absl::StatusOr<std::unique_ptr<PlanSession>> s = PlanSession::Start(conn, o);
//   absl::StatusOr<GenericPlan> before = (*s)->Explain("SELECT * FROM t WHERE c = $1");
//   absl::StatusOr<std::string> name = (*s)->CreateHypothetical({"public", "t", {"c"}});
//   absl::StatusOr<GenericPlan> after = (*s)->Explain(...);  // after->uses(*name)
//   (*s)->ResetHypothetical();
//
// Statements are normalized texts with $n parameters (statement statistics
// hold no literal). PostgreSQL 15 has no EXPLAIN (GENERIC_PLAN) (16 does), so
// a statement is PREPAREd, which types its parameters from their context as a
// client's Parse would, and planned with plan_cache_mode =
// force_generic_plan by EXPLAIN EXECUTE with a NULL per parameter: the
// generic plan never looks at the values, so its costs are those of the
// statement for any values (the planner's default selectivities for $n).
// It is prepared again for every plan: a cached generic plan would not see
// hypothetical indexes created after it.
//
// The session must be one of its own (not a pooled connection): it holds
// hypothetical indexes and prepared statements, and its settings are
// changed for good (read-only transactions, generic plans). Nothing in it
// writes: every statement runs in a read-only transaction and EXPLAIN
// without ANALYZE runs nothing. Identifiers are quoted here
// (common/db/sql_quote.h); statement texts must be exactly one preparable
// statement (SELECT, INSERT, UPDATE, DELETE, MERGE), checked by the caller
// with PostgreSQL's parser (common/sql) before they get here.
//
// Not thread-safe (one session, one thread).

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/db/connection.h"

namespace poolside::db {

// A B-tree index on plain columns. `schema` empty: the table as the
// session's search_path finds it.
struct IndexSpec {
  std::string schema;
  std::string table;
  std::vector<std::string> columns;
};

// "CREATE INDEX [CONCURRENTLY] ["name"] ON "s"."t" ("a", "b")", every name
// quoted. `name` empty: PostgreSQL picks one.
std::string IndexDefinition(const IndexSpec& index, bool concurrently, absl::string_view name = "");

// A table as the catalog has it.
struct TableInfo {
  int64_t oid = 0;
  std::string schema;
  std::string table;
  std::vector<std::string> columns;
  // The key columns of each valid index without a predicate ("" for an
  // expression key).
  std::vector<std::vector<std::string>> index_keys;

  bool HasColumn(absl::string_view column) const;
  // Some index's leading key columns are exactly `columns`.
  bool Covers(const std::vector<std::string>& columns) const;
};

// NOT_FOUND when no table (or materialized view) of that name is visible.
absl::StatusOr<TableInfo> DescribeTable(Connection& conn, absl::string_view schema,
                                        absl::string_view table, absl::Time deadline,
                                        const std::atomic<bool>* cancelled = nullptr);

struct GenericPlan {
  double total_cost = 0;
  // Every "Index Name" of the plan (hypothetical indexes' too).
  std::vector<std::string> indexes;
  // EXPLAIN's text format, when asked for.
  std::string text;

  bool Uses(absl::string_view index) const;
};

class PlanSession {
 public:
  struct Options {
    // Bounds everything the session does, also its closing.
    absl::Time deadline = absl::InfiniteFuture();
    // Each statement sent runs under statement_timeout of at most this.
    absl::Duration step_timeout = absl::Seconds(5);
    // Raised by another thread: the running statement is cancelled.
    const std::atomic<bool>* cancelled = nullptr;
  };

  // Prepares `conn` (which must outlive the session): read-only
  // transactions, generic plans, no hypothetical index.
  // FAILED_PRECONDITION when HypoPG is not installed in the database.
  static absl::StatusOr<std::unique_ptr<PlanSession>> Start(Connection& conn, Options options);
  // Drops the session's hypothetical indexes (best effort; the caller
  // closes the connection anyway).
  ~PlanSession();
  PlanSession(const PlanSession&) = delete;
  PlanSession& operator=(const PlanSession&) = delete;

  // The generic plan of one statement with the hypothetical indexes that
  // exist now. PostgreSQL's error when it cannot be prepared or planned
  // (e.g. INVALID_ARGUMENT "could not determine data type of parameter $2",
  // PERMISSION_DENIED for a table the session's role may not read).
  absl::StatusOr<GenericPlan> Explain(absl::string_view statement, bool with_text = false);

  // A hypothetical index: its name as plans show it. Costs nothing on the
  // server; seen only by this session's EXPLAINs.
  absl::StatusOr<std::string> CreateHypothetical(const IndexSpec& index);
  absl::Status ResetHypothetical();

  Connection& connection() { return conn_; }
  absl::Time StepDeadline() const;

 private:
  PlanSession(Connection& conn, Options options) : conn_(conn), options_(options) {}

  Connection& conn_;
  const Options options_;
  std::string hypopg_schema_;  // quoted
  uint64_t prepared_ = 0;      // statements prepared so far
};

// CREATE INDEX CONCURRENTLY for `index` (outside any transaction, so the
// table stays writable meanwhile), bounded by `deadline`. The new index's
// name: the first free one of table_columns_idx, ..._idx1, ... (as
// PostgreSQL names indexes, at most 63 bytes). ALREADY_EXISTS when a valid
// index already has these leading columns. When it fails (or the deadline
// cancels it) after PostgreSQL began, the invalid index it leaves under
// that name is dropped (DROP INDEX CONCURRENTLY) before returning the
// failure.
absl::StatusOr<std::string> CreateIndexConcurrently(Connection& conn, const IndexSpec& index,
                                                    absl::Time deadline,
                                                    const std::atomic<bool>* cancelled = nullptr);

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_HYPOTHETICAL_INDEX_H_
