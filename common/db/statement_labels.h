#ifndef POOLSIDE_COMMON_DB_STATEMENT_LABELS_H_
#define POOLSIDE_COMMON_DB_STATEMENT_LABELS_H_

// The labels of a statement's span (Connection::StartStatementSpan) from
// PostgreSQL's parse of it (common/sql), following OpenTelemetry's database
// conventions:
//
//   std::shared_ptr<const sql::Analysis> a = analyzer.Analyze(sql);
//   statement.labels = StatementLabelsFor(*a, request.named_query());
//
//   db.query.summary  the named query's name if there is one, else the
//                     command and the tables it names ("SELECT accounts",
//                     "INSERT audit orders"), at most kMaxSummaryBytes
//   db.query.text     Analysis::normalized: every literal replaced by $n
//   db.operation.name Analysis::command ("SELECT", "CREATE INDEX")
//   db.collection.name the table, when the statement names exactly one
//
// Pure; thread-safe.

#include <cstddef>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"
#include "common/sql/statement_analyzer.h"

namespace poolside::db {

// How a statement's span describes it, in OpenTelemetry's database semantic
// conventions (stable since v1.33). Built by whoever analyzed the statement
// (StatementLabelsFor); see Connection::StartStatementSpan.
struct StatementLabels {
  // db.query.text: the text with every literal replaced by $n. Never the raw
  // text of a caller's statement (it may hold values).
  std::string query_text;
  // db.query.summary and the span name: low cardinality ("SELECT accounts",
  // or a named query's name).
  std::string summary;
  std::string operation;   // db.operation.name: "SELECT"
  std::string collection;  // db.collection.name: the only table, if just one
};

inline constexpr size_t kMaxSummaryBytes = 255;

std::shared_ptr<const StatementLabels> StatementLabelsFor(const sql::Analysis& analysis,
                                                          absl::string_view named_query = "");

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_STATEMENT_LABELS_H_
