#ifndef POOLSIDE_COMMON_DB_COPY_H_
#define POOLSIDE_COMMON_DB_COPY_H_

// Bulk loading with COPY FROM STDIN (text or binary format) on a poolside Connection,
// plus what a loader needs around it: the table's column types from the
// catalog, validation and encoding of typed values as COPY text, and plain
// statements (BEGIN, SAVEPOINT, a key lookup, COMMIT) on the same connection.
//
//   absl::StatusOr<TableInfo> t = DescribeTable(conn, "events", deadline);
//   std::string data;
//   for (const v1::Row& row : rows) {
//     absl::Status s = AppendCopyRow(row, columns, &data);   // bad row: skip it
//   }
//   CopySession session(conn, deadline);
//   session.Exec("BEGIN");
//   absl::StatusOr<int64_t> n = session.CopyIn(CopyTarget(*t, columns), data);
//   session.Exec("COMMIT");
//
// Encoding (COPY text format): backslash, tab, newline and carriage return are
// escaped, NULL is \N, bytea is \\x<hex>, timestamps are ISO in UTC,
// doubles round-trip exactly. Text containing NUL or invalid UTF-8 is refused
// before COPY, as are values whose kind cannot fit the column's type (an
// int64 into a timestamp column, bytes into an int column, NULL into a NOT NULL
// column, integers out of range). Types poolside does not know (enums, arrays,
// extension types) take any kind; PostgreSQL judges them. Bytes for a text,
// json or jsonb column are taken as text (protobuf strings must be valid UTF-8,
// so senders with text of unknown encoding send bytes) and checked like text.
//
// Errors follow common/db/error.h. A COPY that PostgreSQL rejects because of a
// row carries the row's 1-based line in the data (CopyLineOf()).
//
// Thread-compatible: a CopySession is used by the thread holding the
// connection's lease; the free functions are pure.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/db/connection.h"
#include "proto/poolside/v1/common.pb.h"

namespace poolside::db {

struct ColumnInfo {
  std::string name;
  // format_type(): "integer", "character varying(20)", ...
  std::string type;
  // The column's type OID; for a domain, its base type.
  uint32_t type_oid = 0;
  bool not_null = false;
};

struct TableInfo {
  // The table as PostgreSQL prints it (quoted where needed, schema-qualified
  // unless in the search_path): safe to put in SQL.
  std::string name;
  std::vector<ColumnInfo> columns;  // in table order, dropped columns left out

  // Null if the table has no column `name` (exact, case-sensitive).
  const ColumnInfo* Find(absl::string_view name) const;
};

// Reads `table` (as SQL would name it: `events`, `app.events`, `"Odd Name"`)
// from the catalog. NOT_FOUND if there is no such table.
absl::StatusOr<TableInfo> DescribeTable(Connection& conn, absl::string_view table,
                                        absl::Time deadline);

// "<table> (<col>, ...)" for COPY.
std::string CopyTarget(const TableInfo& table, absl::Span<const ColumnInfo* const> columns);

bool IsValidUtf8(absl::string_view text);

// Appends `text` escaped for a COPY text field.
void AppendCopyText(absl::string_view text, std::string* out);

// Validates `value` for `column` and appends it as one COPY text field (no
// separator). INVALID_ARGUMENT (a type or encoding problem) or
// FAILED_PRECONDITION (NULL into NOT NULL), with the SQLSTATE PostgreSQL would
// have used as payload (SqlStateOf); `out` may hold a partial field then.
absl::Status AppendCopyField(const v1::Value& value, const ColumnInfo& column, std::string* out);

// Appends `row` as one COPY line (fields separated by tabs, ending in a
// newline). The row must have one value per column. On error `out` is left as
// it was and the message names the column.
absl::Status AppendCopyRow(const v1::Row& row, absl::Span<const ColumnInfo* const> columns,
                           std::string* out);

// COPY's binary format spares PostgreSQL the parsing of text (dates, numbers:
// about a quarter of its CPU per row for a typical table). poolside writes it
// for columns of bool, bytea, int2/int4/int8, oid, float8, text, varchar,
// bpchar, json, jsonb, timestamp and timestamptz, whose receive functions
// make of the binary form the same datum the text input makes of poolside's
// text; any other column type keeps a table's rows in text.
enum class CopyFormat { kText, kBinary };
CopyFormat CopyFormatFor(absl::Span<const ColumnInfo* const> columns);

// The same row in `format`: binary is one tuple (field count, then each
// field's length and bytes). The values are checked alike in both formats
// (the same errors). In binary, a value that only PostgreSQL's text input can
// read for its column (text for a timestamp column, a numeric_value for an
// integer column, ...) sets *needs_text and appends nothing: encode the rows
// as text instead.
absl::Status AppendCopyRow(const v1::Row& row, absl::Span<const ColumnInfo* const> columns,
                           CopyFormat format, std::string* out, bool* needs_text);

// What frames binary COPY data (CopySession::CopyIn sends them).
absl::string_view CopyBinaryHeader();
absl::string_view CopyBinaryTrailer();

// The 1-based line of the COPY data that PostgreSQL reported the error at, or
// 0 when the status carries none.
int64_t CopyLineOf(const absl::Status& status);

// Statements and COPY run one at a time on a leased connection, each bounded
// by `deadline` (past it, the backend query is cancelled and the statement
// fails with DEADLINE_EXCEEDED; a server that does not stop within the
// connection's cancel_grace breaks the connection: UNAVAILABLE), waiting as
// the Connection's own statements do (Connection::ServerWait). After a non-OK
// status with broken() true the connection is unusable: mark its lease broken.
class CopySession {
 public:
  CopySession(Connection& conn, absl::Time deadline);
  CopySession(const CopySession&) = delete;
  CopySession& operator=(const CopySession&) = delete;

  // A statement without parameters whose result, if any, is discarded.
  absl::Status Exec(absl::string_view sql);

  // A statement with text parameters ($1, ...); the rows as text (nullopt for
  // NULL).
  using TextRow = std::vector<std::optional<std::string>>;
  absl::StatusOr<std::vector<TextRow>> Query(absl::string_view sql,
                                             const std::vector<std::string>& params);

  // COPY <target> FROM STDIN with `data` (text format lines). Returns the rows
  // copied.
  absl::StatusOr<int64_t> CopyIn(absl::string_view target, absl::string_view data);
  // The same with the data in pieces (sent in order, without copying them),
  // after `before`: statements without parameters or results (e.g.
  // "ROLLBACK TO SAVEPOINT s"), sent with the COPY in one round trip. An
  // error in them is the call's error (and no COPY ran).
  // In CopyFormat::kBinary the pieces are tuples (AppendCopyRow), framed here
  // by the header and trailer.
  absl::StatusOr<int64_t> CopyIn(absl::string_view target,
                                 absl::Span<const absl::string_view> pieces,
                                 absl::string_view before = "",
                                 CopyFormat format = CopyFormat::kText);

  // The connection is unusable (and the Connection itself broken() when a
  // wait for the server gave it up).
  bool broken() const { return broken_ || conn_.broken(); }

 private:
  absl::StatusOr<int64_t> SendCopy(const std::string& sql,
                                   absl::Span<const absl::string_view> pieces);
  // Reads results until the end of the current command; the first error wins.
  absl::Status CollectResults(std::vector<TextRow>* rows, int64_t* affected);
  absl::Status Broken(absl::string_view what);
  // Before the session's first statement: the server-side statement_timeout
  // of its deadline (Connection::MatchStatementTimeout).
  absl::Status Begin();

  Connection& conn_;
  const absl::Time deadline_;
  bool begun_ = false;
  ::pg_conn* pg_;
  // Every wait for the server, with the Connection's deadline and cancel
  // rules (one cancel for the session: the statements after it get the rest
  // of the grace).
  Connection::ServerWait wait_;
  bool broken_ = false;
};

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_COPY_H_
