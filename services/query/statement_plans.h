#ifndef POOLSIDE_SERVICES_QUERY_STATEMENT_PLANS_H_
#define POOLSIDE_SERVICES_QUERY_STATEMENT_PLANS_H_

// What the read cache knows of a statement from its plan: the tables it
// reads (learned once per database and statement with EXPLAIN (FORMAT JSON,
// VERBOSE): views show up as their base tables), whether it writes or locks
// rows, and whether it looks up one row of one table by the table's whole
// primary key (common/sql/key_lookup.h, checked against the catalog, once per
// statement). The statement's text itself is analyzed in common/sql.
//
// The plan is of the first call's parameter values, which PostgreSQL folds
// into constants: a table the planner proves unread for them (`AND $2 = 1`
// with 0, partitions or inheritance children pruned) is missing from it, yet
// later calls read it. So the tables the text names, their inheritance
// descendants and what the views among them depend on are read from the
// catalog and added. And a statement that calls a function or operator
// written in SQL or a procedural language, itself or through a view it
// names, is not a plain read: such a function may read tables no plan shows.
//
//   StatementPlans plans(&in_flight, [](const Database& db) { return true; });
//   plans.Learn(db, sql, params, deadline, [](StatementPlans::Learned t) { ... });
//   std::vector<std::string> tags = ReadTags(db.name(), **t, request, &keyed);
//
// Learned plans are remembered (bounded: the memo is cleared when full) until
// Forget() names a table they read.
//
// Thread-safe.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/sql/key_lookup.h"
#include "google/protobuf/repeated_ptr_field.h"
#include "proto/poolside/v1/query.pb.h"
#include "services/query/database.h"
#include "services/query/in_flight.h"
#include "services/query/row_keys.h"

namespace poolside::query {

// A lookup of one row by its table's whole primary key: the operand of each
// key column, in the table's column order.
struct KeyPlan {
  std::string table;  // "schema.table"
  std::vector<std::pair<KeyFamily, sql::KeyOperand>> columns;
};

// What a statement's plan says about it.
struct StatementTables {
  bool explained = false;   // false: EXPLAIN refused it (DDL, CALL, ...)
  bool modifies = false;    // a ModifyTable node (INSERT/UPDATE/DELETE/MERGE, data-modifying CTE)
  bool locks_rows = false;  // FOR UPDATE/SHARE
  // Calls (or a view it names calls) a function or operator that is neither
  // built in nor written in C: its own reads are not in the plan.
  bool calls_routines = false;
  std::vector<std::string> tables;  // "schema.table", sorted, unique
  // Set when the statement is a lookup by primary key (learned after the plan).
  std::optional<KeyPlan> key;

  // A plain read of known tables: what the cache may hold.
  bool PlainRead() const { return explained && !modifies && !locks_rows && !calls_routines; }
};

// Parses EXPLAIN (FORMAT JSON, VERBOSE) output.
absl::StatusOr<StatementTables> ParsePlanTables(const std::string& explain_json);

// The tags of a cached result of `request` on `database`, whose plan is `t`:
// the database, each table, then the row's key when `t` is a key lookup whose
// operands `request`'s parameters all give (then *keyed), or else each
// table's table-level tag; then the caller's tags (row_keys.h has the forms).
std::vector<std::string> ReadTags(absl::string_view database, const StatementTables& t,
                                  const v1::ExecuteRequest& request, bool* keyed);

class StatementPlans {
 public:
  // Shared: the memo hands out what it holds without copying.
  using Plan = std::shared_ptr<const StatementTables>;
  // A plan, or why it could not be learned now (a failure that may pass:
  // the statement is explained again next time).
  using Learned = absl::StatusOr<Plan>;

  // `in_flight` counts the statements this runs (their callbacks reference
  // this): it outlives this, and this outlives every count. `learn_keys(db)`
  // says whether plain reads of one table of `db` are checked for a key lookup
  // (rows are invalidated by key only in "wal" mode); called from database
  // worker threads.
  StatementPlans(InFlight* in_flight, std::function<bool(const Database&)> learn_keys);
  StatementPlans(const StatementPlans&) = delete;
  StatementPlans& operator=(const StatementPlans&) = delete;

  // The remembered plan of `sql` on `db`, or null.
  Plan Remembered(const Database& db, const std::string& sql) const;

  // Runs `then` with the plan of `sql` on `db`: at once, on this thread, when
  // remembered; else once EXPLAIN (and for a key lookup the catalog query)
  // ran on `db`, on its worker thread. A statement EXPLAIN refuses for good
  // (DDL, CALL, ...) has explained = false and is remembered like any plan.
  void Learn(Database* db, const std::string& sql,
             const google::protobuf::RepeatedPtrField<v1::Value>& params, absl::Time deadline,
             std::function<void(Learned)> then);

  // Forgets the plan of every statement of `database` that reads `table`
  // ("schema.table"): its definition changed.
  void Forget(absl::string_view database, absl::string_view table);
  // Forgets every plan of `database` (DDL ran there).
  void ForgetDatabase(absl::string_view database);

  // Statements remembered now.
  size_t size() const;

 private:
  // Adds to `t`, a plain read as its plan says, the tables the catalog says
  // `sql` may read and whether it calls routines (see the file comment);
  // runs `then` with `t` completed, or with the failure.
  void LearnNamed(Database* db, const std::string& sql, absl::Time deadline, StatementTables t,
                  std::function<void(absl::StatusOr<StatementTables>)> then);
  // Learns whether `t`, a plain read of one table, is a primary-key lookup;
  // runs `then` with `t` completed.
  void LearnKey(Database* db, const std::string& sql, absl::Time deadline, StatementTables t,
                std::function<void(StatementTables)> then);
  // Remembers `plan` unless something was forgotten since `forgotten` (the
  // plan was learned from a definition that may be gone).
  void Remember(const std::string& memo_key, Plan plan, uint64_t forgotten);
  // Forgets the plans of `database` for which `forget` says so.
  void ForgetIf(absl::string_view database, absl::FunctionRef<bool(const StatementTables&)> forget);

  InFlight* const in_flight_;
  const std::function<bool(const Database&)> learn_keys_;

  mutable absl::Mutex mu_;
  // (database, sql) -> plan.
  absl::flat_hash_map<std::string, Plan> plans_ ABSL_GUARDED_BY(mu_);
  // +1 for each Forget or ForgetDatabase.
  uint64_t forgotten_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_STATEMENT_PLANS_H_
