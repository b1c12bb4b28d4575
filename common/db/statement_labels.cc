#include "common/db/statement_labels.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace poolside::db {

std::shared_ptr<const StatementLabels> StatementLabelsFor(const sql::Analysis& analysis,
                                                          absl::string_view named_query) {
  auto labels = std::make_shared<StatementLabels>();
  labels->operation = analysis.command;
  labels->query_text = analysis.normalized;
  if (analysis.tables.size() == 1) labels->collection = analysis.tables[0];
  if (!named_query.empty()) {
    labels->summary = std::string(named_query.substr(0, kMaxSummaryBytes));
    return labels;
  }
  labels->summary = analysis.command.substr(0, kMaxSummaryBytes);
  // Whole table names only: a summary cut inside a name would name another.
  for (const std::string& table : analysis.tables) {
    if (labels->summary.size() + 1 + table.size() > kMaxSummaryBytes) break;
    absl::StrAppend(&labels->summary, labels->summary.empty() ? "" : " ", table);
  }
  return labels;
}

}  // namespace poolside::db
