#ifndef POOLSIDE_COMMON_SQL_KEY_LOOKUP_H_
#define POOLSIDE_COMMON_SQL_KEY_LOOKUP_H_

// Whether a read can only ever return what one row of one table holds, as
// PostgreSQL's parser (libpg_query) sees the text: a SELECT of one table
// whose WHERE is a conjunction with `column = value` among its terms. The
// query service's cache tags such a read with the row's key, so a change to
// another row of the table leaves it cached (services/query/read_cache.h).
//
//   std::optional<KeyLookup> k = FindKeyLookup("SELECT v FROM t WHERE id = $1");
//   // k->table == "t", k->equalities == {{"id", {kParam, param = 1}}}
//
// Only the syntax is judged here. Whether the columns are the table's whole
// primary key, of which types, whether the name is a table and not a view,
// and whether the plan reads nothing else (row-level security, inheritance
// children) are for the caller to check against the catalog and the plan.
//
// Refused (nullopt): anything but a single plain SELECT; set operations,
// WITH, INTO, locking clauses; anything but exactly one relation named
// anywhere in the statement; subqueries (SubLink), joins, functions or
// subqueries in FROM, TABLESAMPLE; column aliases on the table (`t AS x(a)`
// renames columns); a COLLATE clause anywhere.
//
// Call only with texts StatementAnalyzer::Analyze accepted: its nesting
// bound keeps libpg_query's recursion within the stack. Thread-safe (pure).

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace poolside::sql {

// The right-hand side of `column = ...` (or left: `$1 = id`).
struct KeyOperand {
  enum class Kind {
    kParam,    // $n
    kInteger,  // an integer literal, as written (digits, maybe '-')
    kNumber,   // another numeric literal ("42.0", "1e3", or an integer too
               // large for 32 bits), as written
    kString,   // a quoted literal's contents
  };
  Kind kind = Kind::kParam;
  int param = 0;     // kParam: n of $n (1-based)
  std::string text;  // literals
  // `::type` or CAST(... AS type) around it: the type's name components as
  // written ("int8"; "pg_catalog", "int8"); empty when there is none.
  std::vector<std::string> cast;
  // The cast has a type modifier or array bounds (varchar(3), int[]), which
  // may change the value (truncation): the caller should not trust it.
  bool cast_modified = false;
};

struct KeyLookup {
  std::string schema;  // "" when the name is unqualified
  std::string table;   // as the parser folded it
  // Every top-level AND term of WHERE that is `column = operand` (either
  // side), in order, first one per column. The column name as the parser
  // folded it (qualifiers dropped after checking they name the table).
  std::vector<std::pair<std::string, KeyOperand>> equalities;
};

std::optional<KeyLookup> FindKeyLookup(absl::string_view sql);

}  // namespace poolside::sql

#endif  // POOLSIDE_COMMON_SQL_KEY_LOOKUP_H_
