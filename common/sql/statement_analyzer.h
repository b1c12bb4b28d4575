#ifndef POOLSIDE_COMMON_SQL_STATEMENT_ANALYZER_H_
#define POOLSIDE_COMMON_SQL_STATEMENT_ANALYZER_H_

// What a SQL text is and does, as PostgreSQL's own parser (libpg_query, the
// PostgreSQL 15 grammar) sees it: the one place in the tree that reads SQL.
// The services decide from it what a caller may run on a shared, pooled
// connection, whether a statement may share an implicit transaction with
// other callers' statements, what a read touches (cache tags, routing) and
// under which identity a statement is counted in statistics.
//
//   StatementAnalyzer analyzer;
//   std::shared_ptr<const Analysis> a = analyzer.Analyze(sql);
//   if (!a->parse_error.ok()) ...                       // INVALID_ARGUMENT
//   absl::Status may = Permitted(*a, Scope::kAlone, {.ddl = false});
//   if (a->kind == StatementKind::kRead) ...
//
// Analyze() parses each distinct text once: results are memoized in an LRU
// bounded by bytes (texts longer than max_text_bytes are analyzed every
// time and never kept). Thread-safe; an Analysis is immutable and outlives
// its eviction from the memo for as long as a caller holds it.
//
// Nothing here consults a database: whether the functions a statement calls
// are built-in and free of side effects is a catalog question, answered by
// the caller (common/db's catalog snapshot) from `functions`/`operators`.
// Likewise what views, triggers, rules, defaults and functions already in the
// database do when a statement uses them is not seen here.
//
// A text nested deeper than kMaxNestingDepth is refused as INVALID_ARGUMENT
// before it is parsed (an upper bound counted from its tokens: a level per
// operator, keyword or bracket, four per query (SELECT, VALUES) and two per
// set operation): libpg_query handles trees recursively, and a deep enough
// chain ("1+1+...+1") would exhaust the stack, and normalizing nested
// subqueries costs time quadratic in their depth. Within that bound Analyze
// needs at most about 1 MiB of the calling thread's stack.

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace pg_query {
class ParseResult;  // common/sql/pg_query.pb.h
}  // namespace pg_query

namespace poolside::sql {

// The class of a (single) statement.
enum class StatementKind {
  kInvalid,             // did not parse, or not exactly one statement
  kRead,                // SELECT / VALUES / TABLE without INTO, locking clauses
                        // or data-modifying WITH; SHOW; EXPLAIN (no ANALYZE)
                        // of anything; EXPLAIN ANALYZE of a read
  kWrite,               // INSERT, UPDATE, DELETE, MERGE, SELECT ... FOR
                        // UPDATE/SHARE, SELECT INTO, data-modifying WITH,
                        // EXPLAIN ANALYZE of a write, TRUNCATE
  kDdl,                 // CREATE / ALTER / DROP / COMMENT / GRANT / ...
  kUtility,             // VACUUM, ANALYZE, CHECKPOINT, LOCK, COPY, DO, CALL,
                        // NOTIFY, and the rest
  kTransactionControl,  // BEGIN, START, COMMIT, END, ROLLBACK, ABORT,
                        // SAVEPOINT, RELEASE, PREPARE TRANSACTION,
                        // COMMIT/ROLLBACK PREPARED, SET TRANSACTION,
                        // SET SESSION CHARACTERISTICS
  kSession,             // SET (also SET LOCAL), RESET, DISCARD, LISTEN,
                        // UNLISTEN, PREPARE, EXECUTE, DEALLOCATE, DECLARE,
                        // FETCH, MOVE, CLOSE, LOAD
};

// Lower-case name for messages and metrics: "read", "write", "ddl", ...
absl::string_view KindName(StatementKind kind);

// Where a statement would run.
enum class Scope {
  kAlone,          // Execute / ExecuteStream: a transaction of its own, on a
                   // connection other callers use next
  kInTransaction,  // one of ExecuteTransaction's statements, inside the
                   // BEGIN ... COMMIT that poolside sends
};

// What the caller holds beyond reading and writing rows.
struct Grants {
  // DO, CALL, CREATE/ALTER FUNCTION/PROCEDURE/TRIGGER/RULE/EVENT TRIGGER,
  // ALTER ROLE/DATABASE ... SET, ALTER SYSTEM (and the rest Permitted lists).
  bool ddl = false;
};

struct Analysis {
  // OK, or INVALID_ARGUMENT with PostgreSQL's own syntax error message and
  // the 1-based character position ("syntax error at or near \"FORM\" (at
  // character 10)"); also for an empty text or a text of only comments and
  // semicolons ("no statement"), a NUL byte, invalid UTF-8 and a text nested
  // beyond kMaxNestingDepth. (INTERNAL only if libpg_query's own output
  // does not parse: a bug.)
  absl::Status parse_error;
  // Statements in the text (";COMMIT" is one: empty statements are not
  // counted). Every other field describes the text only when this is 1.
  int statement_count = 0;
  StatementKind kind = StatementKind::kInvalid;
  // The statement's command as a user writes it, for messages: "SELECT",
  // "INSERT", "COPY", "DO", "SET", "BEGIN", "CREATE FUNCTION", ...
  std::string command;

  // Relations the statement names anywhere (FROM, JOIN, INTO, subqueries,
  // CTEs' bodies, DML targets, EXPLAIN's statement), as written, with the
  // parser's case folding: "accounts", "app.accounts" (components joined by
  // '.', unquoted). CTE names are not relations and are left out where they
  // are in scope. A superset where the grammar names other things the same
  // way (a composite type's name in CREATE TYPE ... AS). Sorted, unique.
  std::vector<std::string> tables;
  // The relations a write changes (INSERT/UPDATE/DELETE/MERGE targets, also
  // inside WITH; TRUNCATE's; SELECT INTO's and CREATE TABLE AS's new table;
  // COPY FROM's). Sorted, unique.
  std::vector<std::string> written_tables;
  // Every function the statement calls, anywhere (FROM-clause functions,
  // arguments, defaults given in the statement, nested statements), as
  // written: "lower", "pg_catalog.set_config". Sorted, unique.
  std::vector<std::string> functions;
  // Every operator the statement uses ("=", "+", "pg_catalog.||"). Sorted,
  // unique.
  std::vector<std::string> operators;

  // The syntax allows a shared implicit transaction (Sync) with other
  // callers' statements: a plain read (kRead from SELECT/VALUES/TABLE: no
  // SHOW, no EXPLAIN) without locking clauses, INTO or data-modifying CTEs,
  // without column notation on an expression ("(x).f" calls f(x) when x has
  // no field f: a call `functions` cannot list), and without calls whose
  // effect lasts until the transaction ends (set_config,
  // pg_advisory_xact_lock*). Whether it may actually share one also needs
  // every function and operator to be a built-in non-volatile one (the
  // caller's catalog check).
  bool shareable_syntax = false;
  // A write that answers with rows: INSERT/UPDATE/DELETE ... RETURNING, a
  // SELECT over a data-modifying CTE, EXPLAIN ANALYZE of a write. A limit
  // on its answer (rows, bytes) can only refuse it if it runs in a
  // transaction that refusal rolls back.
  bool write_returns_rows = false;

  // pg_query_normalize: every literal (also E'', $$...$$, numbers, B'', X'',
  // TRUE/FALSE/NULL where it replaces them) replaced by $n; the parameters a
  // caller sent stay $n. Literals pg_query_normalize leaves in place (in
  // utility statements, type modifiers, ORDER BY positions) are replaced
  // too. Comments are kept. For statistics and slow-statement logs: never
  // holds a literal value. Truncated to kMaxNormalizedBytes at a character
  // boundary. For a text that does not parse: "".
  std::string normalized;
  // pg_query_fingerprint: the same for texts that differ only in literals,
  // whitespace, comments or parameter numbering. Where pg_query_normalize
  // left a literal (and pg_query_fingerprint may count its value), a stable
  // hash of the normalized tokens instead. 0 for a text that does not parse.
  uint64_t fingerprint = 0;

  // The verdicts of Permitted(), computed once with the analysis:
  // [scope][ddl grant].
  absl::Status verdicts[2][2];
};

constexpr size_t kMaxNormalizedBytes = 4096;
constexpr int kMaxNestingDepth = 500;

// Whether a caller with `grants` may run the analyzed text in `scope` on a
// pooled connection. OK, or INVALID_ARGUMENT naming the construct and, where
// there is one, the transaction-scoped way to do it. Refused:
//  - anything that did not parse (parse_error) or is not exactly one
//    statement ("2 statements in one text; send one per call, or use
//    ExecuteTransaction");
//  - transaction control, in every scope (poolside begins and ends
//    transactions), also SET [LOCAL] TRANSACTION and SET LOCAL
//    transaction_isolation/_read_only/_deferrable (ExecuteTransaction has
//    isolation and read_only);
//  - session state: SET and RESET without LOCAL (SET LOCAL is allowed),
//    SET [LOCAL] ROLE, SET [LOCAL] SESSION AUTHORIZATION, SET [LOCAL] seed,
//    DISCARD, LISTEN, UNLISTEN, NOTIFY,
//    PREPARE, EXECUTE, DEALLOCATE, DECLARE ... WITH HOLD (and, alone, every
//    DECLARE, FETCH, MOVE, CLOSE: a cursor needs ExecuteTransaction), LOAD;
//    UPDATE/INSERT/DELETE/MERGE on pg_settings; SET LOCAL and
//    set_config(..., true) of standard_conforming_strings and client_encoding
//    (also SET LOCAL NAMES): this analysis reads every text as UTF-8 with
//    standard_conforming_strings on, as the service's connections are made to
//    (common/db), and a server reading later statements otherwise would run
//    what it never saw; a search_path given to SET
//    LOCAL or set_config that names pg_temp; temporary objects (CREATE TEMP
//    TABLE/VIEW/SEQUENCE, CREATE TABLE pg_temp.x, SELECT ... INTO TEMP,
//    CREATE TABLE AS TEMP, also under EXPLAIN, and functions, types,
//    domains, ... created in pg_temp) unless ON COMMIT DROP in
//    kInTransaction;
//  - LOCK outside kInTransaction (a lock lasts until its transaction ends);
//  - COPY, in every scope (rows come in through ingest, go out through
//    ExecuteStream);
//  - without grants.ddl: DO, CALL, CREATE [OR REPLACE] FUNCTION/PROCEDURE,
//    ALTER FUNCTION/PROCEDURE/ROUTINE, CREATE TRIGGER, CREATE RULE,
//    CREATE/ALTER EVENT TRIGGER, ALTER ROLE/DATABASE ... SET/RESET, ALTER
//    SYSTEM; also what defines code that other statements run later: CREATE
//    AGGREGATE/OPERATOR/CAST/TRANSFORM/LANGUAGE, CREATE/ALTER EXTENSION,
//    ALTER OPERATOR, and renaming, moving or re-owning functions,
//    procedures, aggregates, operators, triggers, rules, event triggers,
//    extensions and languages;
//  - calls of functions that run SQL text or change session or server state,
//    schema-qualified or not, in every scope and every position (FROM,
//    subqueries, CTEs, DEFAULTs, EXPLAIN's statement, column notation
//    "(x).pg_read_file"; see kRefusedFunctions and kRefusedFunctionPrefixes
//    in the .cc): set_config whose is_local is not the literal TRUE, whose
//    name or value is not a string literal, or that sets role,
//    session_authorization, seed, transaction_*, standard_conforming_strings
//    or client_encoding; setseed; session-level
//    advisory locks (pg_advisory_xact_lock* are allowed), dblink*,
//    query_to_xml* and relatives, ts_rewrite, ts_stat, crosstab*, connectby,
//    lo_*, pg_read_file, pg_read_binary_file, pg_ls_*, pg_stat_file,
//    adminpack's pg_file_*, pg_cancel_backend, pg_terminate_backend,
//    pg_notify, pg_reload_conf, pg_rotate_logfile, pg_switch_wal,
//    pg_logical_emit_message, replication slot and origin functions,
//    pg_promote, backups and restore points, pg_stat_reset*, hypopg*, ...
// Allowed: VACUUM, ANALYZE, CHECKPOINT, CLUSTER, REINDEX and other utility
// statements that leave no session state (PostgreSQL's privileges decide).
// Permitted on an Analysis that Analyze did not produce refuses it.
absl::Status Permitted(const Analysis& analysis, Scope scope, Grants grants);

class StatementAnalyzer {
 public:
  struct Options {
    // Memo budget: texts plus their analyses.
    size_t max_memo_bytes = 16 << 20;
    // Longer texts are analyzed every time and not memoized.
    size_t max_text_bytes = 64 << 10;
  };

  StatementAnalyzer() : StatementAnalyzer(Options{}) {}
  explicit StatementAnalyzer(Options options);
  ~StatementAnalyzer();

  // Never null. A text with a NUL byte is a parse error.
  std::shared_ptr<const Analysis> Analyze(absl::string_view sql);
  // The memoized analysis of `sql`, or null when it is not in the memo (a
  // hash lookup: never parses).
  std::shared_ptr<const Analysis> Lookup(absl::string_view sql);

  // Memo contents, for tests and metrics.
  size_t memo_entries() const;
  size_t memo_bytes() const;

 private:
  struct Entry;
  Options options_;
  mutable absl::Mutex mu_;
  std::list<Entry> lru_ ABSL_GUARDED_BY(mu_);  // most recent first
  absl::flat_hash_map<absl::string_view, std::list<Entry>::iterator> index_ ABSL_GUARDED_BY(mu_);
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

// PostgreSQL's parse tree of `sql`, for the other readers of SQL in
// common/sql (index_candidates.h): OK, or the INVALID_ARGUMENT that
// Analysis::parse_error holds for the same text (NUL byte, invalid UTF-8,
// nesting beyond kMaxNestingDepth, syntax error). Any number of statements.
absl::Status ParseTree(absl::string_view sql, pg_query::ParseResult* tree);

// Analyzes without a memo (for one-off texts: configuration, tools, fuzzing).
std::shared_ptr<const Analysis> AnalyzeOnce(absl::string_view sql);

// Whether a token of PostgreSQL's scanner (pg_query::Token) is a literal
// constant: a string, bit string or number, what normalization replaces by a
// parameter.
bool IsLiteralToken(int token);

}  // namespace poolside::sql

#endif  // POOLSIDE_COMMON_SQL_STATEMENT_ANALYZER_H_
