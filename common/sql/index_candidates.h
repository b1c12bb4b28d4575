#ifndef POOLSIDE_COMMON_SQL_INDEX_CANDIDATES_H_
#define POOLSIDE_COMMON_SQL_INDEX_CANDIDATES_H_

// Which columns of which tables a statement filters, joins and sorts on, read
// from PostgreSQL's parse tree (statement_analyzer.h's ParseTree), and the
// B-tree column lists worth trying as indexes for them. The raw material of
// index advice: every candidate is then costed by the database's planner with
// a hypothetical index (common/db/hypothetical_index.h); nothing here decides
// that an index helps.
//
//   absl::StatusOr<std::vector<TableColumns>> uses =
//       IndexableColumns("SELECT * FROM t WHERE owner = $1 ORDER BY at");
//   // {table "t", equality {"owner"}, order {"at"}}
//   for (const auto& cols : CandidateIndexes((*uses)[0])) ...  // {owner},
//   {owner, at}, ...
//
// What counts (in SELECT, also in set operations, subqueries, CTE bodies and
// LATERAL; UPDATE, DELETE, INSERT ... SELECT and MERGE):
//  - equality: col = <value>, <value> = col, col IN (...), col = ANY(...),
//    col IN (subquery), col IS NULL;
//  - range: col <, <=, >, >= <value>, col BETWEEN <value> AND <value>;
//  - join: a.col = b.col between two tables (WHERE or JOIN ... ON), JOIN ...
//    USING (col);
//  - order: the leading plain columns of ORDER BY.
// A <value> is a constant, a parameter, or casts, arrays and function calls
// of those. Predicates under NOT, expressions on the column side (lower(c),
// c::text), LIKE and other operators are left out: a plain B-tree on the
// column would not serve them. OR branches count like AND's (a BitmapOr can
// combine indexes).
//
// Names are as the parser resolved them (unquoted names lower-cased, quoted
// ones kept). A column written without a table while several tables are in
// scope is listed under each of them (the catalog knows which has it: the
// caller checks). Pure functions, thread-safe.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace poolside::sql {

struct TableColumns {
  std::string schema;  // empty when the statement does not qualify the table
  std::string table;
  // Each unique, in order of first appearance.
  std::vector<std::string> equality;
  std::vector<std::string> range;
  std::vector<std::string> join;
  std::vector<std::string> order;
};

// The tables a single statement uses columns of, in order of first
// appearance, each once (a table named with and without its schema counts
// twice). INVALID_ARGUMENT when the text does not parse or is not exactly one
// statement. An empty list for statements without such uses.
absl::StatusOr<std::vector<TableColumns>> IndexableColumns(absl::string_view sql);

// Column lists to try as B-tree indexes on `t`, most specific first, each
// unique and at most kMaxIndexColumns long, at most `max` of them: every
// equality, join and range column alone; the equality and join columns
// together, then followed by the first range column or by the ORDER BY
// columns; the ORDER BY columns alone.
inline constexpr size_t kMaxIndexColumns = 4;
std::vector<std::vector<std::string>> CandidateIndexes(const TableColumns& t, size_t max = 12);

}  // namespace poolside::sql

#endif  // POOLSIDE_COMMON_SQL_INDEX_CANDIDATES_H_
