#include "services/query/index_advice.h"

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/sql/index_candidates.h"
#include "common/sql/statement_analyzer.h"

namespace poolside::query {
namespace {

constexpr size_t kMaxReasonBytes = 300;

struct Considered {
  const v1::StatementStats* stats;
  double baseline = 0;
};

struct Candidate {
  db::IndexSpec index;             // the catalog's names
  std::vector<size_t> statements;  // indexes into the considered statements
  // Per statement costed with it: its cost where the plan used the index
  // and cost at least kMinCostReduction less.
  std::map<size_t, double> helps;
};

// A statement PREPARE accepts and poolside itself would run alone.
absl::Status Preparable(const std::string& text) {
  std::shared_ptr<const sql::Analysis> a = sql::AnalyzeOnce(text);
  if (absl::Status s = sql::Permitted(*a, sql::Scope::kAlone, sql::Grants{false}); !s.ok()) {
    return s;
  }
  static constexpr absl::string_view kCommands[] = {"SELECT", "VALUES", "INSERT",
                                                    "UPDATE", "DELETE", "MERGE"};
  if (std::find(std::begin(kCommands), std::end(kCommands), a->command) == std::end(kCommands)) {
    return absl::InvalidArgumentError(absl::StrCat(a->command, " has no plan to improve"));
  }
  return absl::OkStatus();
}

void Skip(const v1::StatementStats& s, const absl::Status& why,
          v1::GetIndexAdviceResponse* response) {
  v1::SkippedStatement* skipped = response->add_skipped();
  skipped->set_statement(s.statement());
  skipped->set_fingerprint(s.fingerprint());
  std::string reason(why.message().substr(0, kMaxReasonBytes));
  skipped->set_reason(reason);
}

absl::Status Stopped(const AdviceOptions& options) {
  if (options.cancelled != nullptr && options.cancelled->load()) {
    return absl::CancelledError("index advice cancelled");
  }
  if (absl::Now() >= options.deadline) {
    return absl::DeadlineExceededError(
        "index advice ran out of time; give the call a longer deadline or consider fewer "
        "statements");
  }
  return absl::OkStatus();
}

// A failure of the session itself (not of one statement) ends the advice.
bool SessionFailed(db::PlanSession& session, const absl::Status& s) {
  return session.connection().broken() || s.code() == absl::StatusCode::kUnavailable ||
         s.code() == absl::StatusCode::kCancelled;
}

}  // namespace

absl::Status AdviseIndexes(db::PlanSession& session, const std::vector<v1::StatementStats>& stats,
                           const AdviceOptions& options, v1::GetIndexAdviceResponse* response) {
  double total_ms = 0;
  for (const v1::StatementStats& s : stats) total_ms += s.total_ms();
  response->set_total_ms(total_ms);
  const uint32_t limit =
      std::min(options.max_statements == 0 ? kDefaultAdviceStatements : options.max_statements,
               kMaxAdviceStatements);
  const uint64_t min_calls = std::max<uint64_t>(1, options.min_calls);

  // The statements, their plans without any new index, and the candidates.
  std::vector<Considered> considered;
  std::vector<Candidate> candidates;
  std::map<std::pair<std::string, std::string>, absl::StatusOr<db::TableInfo>> tables;
  for (const v1::StatementStats& s : stats) {
    if (considered.size() + response->skipped_size() >= limit) break;
    if (s.calls() < min_calls || s.total_ms() <= 0) continue;
    if (absl::Status stop = Stopped(options); !stop.ok()) return stop;
    if (absl::Status ok = Preparable(s.statement()); !ok.ok()) {
      Skip(s, ok, response);
      continue;
    }
    absl::StatusOr<db::GenericPlan> baseline = session.Explain(s.statement());
    if (!baseline.ok()) {
      if (SessionFailed(session, baseline.status())) return baseline.status();
      Skip(s, baseline.status(), response);
      continue;
    }
    absl::StatusOr<std::vector<sql::TableColumns>> uses = sql::IndexableColumns(s.statement());
    if (!uses.ok()) {
      Skip(s, uses.status(), response);
      continue;
    }
    const size_t index = considered.size();
    considered.push_back(Considered{&s, baseline->total_cost});
    for (sql::TableColumns& t : *uses) {
      auto key = std::make_pair(t.schema, t.table);
      auto it = tables.find(key);
      if (it == tables.end()) {
        it = tables
                 .emplace(key, db::DescribeTable(session.connection(), t.schema, t.table,
                                                 session.StepDeadline(), options.cancelled))
                 .first;
        if (!it->second.ok() && SessionFailed(session, it->second.status())) {
          return it->second.status();
        }
      }
      if (!it->second.ok()) continue;  // a view, a CTE of an outer query, not visible
      const db::TableInfo& table = *it->second;
      // Only the columns this table has (unqualified names were listed under
      // every table in scope).
      for (auto* list : {&t.equality, &t.range, &t.join, &t.order}) {
        list->erase(std::remove_if(list->begin(), list->end(),
                                   [&](const std::string& c) { return !table.HasColumn(c); }),
                    list->end());
      }
      for (std::vector<std::string>& columns : sql::CandidateIndexes(t)) {
        if (table.Covers(columns)) continue;
        db::IndexSpec spec{table.schema, table.table, std::move(columns)};
        auto same = std::find_if(candidates.begin(), candidates.end(), [&](const Candidate& c) {
          return c.index.schema == spec.schema && c.index.table == spec.table &&
                 c.index.columns == spec.columns;
        });
        if (same == candidates.end()) {
          if (candidates.size() >= kMaxCandidates) continue;
          candidates.push_back(Candidate{std::move(spec), {}, {}});
          same = candidates.end() - 1;
        }
        if (same->statements.empty() || same->statements.back() != index) {
          same->statements.push_back(index);
        }
      }
    }
  }
  response->set_statements_considered(static_cast<uint32_t>(considered.size()));

  // Each candidate alone, with every statement that might use it.
  for (Candidate& c : candidates) {
    if (absl::Status stop = Stopped(options); !stop.ok()) return stop;
    absl::StatusOr<std::string> name = session.CreateHypothetical(c.index);
    if (!name.ok()) {
      if (SessionFailed(session, name.status())) return name.status();
      continue;  // e.g. a type without a B-tree operator class
    }
    response->set_candidates_costed(response->candidates_costed() + 1);
    for (size_t i : c.statements) {
      absl::StatusOr<db::GenericPlan> plan = session.Explain(considered[i].stats->statement());
      if (!plan.ok()) {
        if (SessionFailed(session, plan.status())) return plan.status();
        continue;
      }
      if (plan->Uses(*name) &&
          plan->total_cost <= considered[i].baseline * (1 - kMinCostReduction)) {
        c.helps[i] = plan->total_cost;
      }
    }
    if (absl::Status reset = session.ResetHypothetical(); !reset.ok()) return reset;
  }

  // Each statement to its cheapest candidate.
  std::map<size_t, std::vector<size_t>> won;  // candidate -> statements
  for (size_t i = 0; i < considered.size(); ++i) {
    const Candidate* best = nullptr;
    size_t best_index = 0;
    for (size_t k = 0; k < candidates.size(); ++k) {
      auto it = candidates[k].helps.find(i);
      if (it == candidates[k].helps.end()) continue;
      if (best == nullptr || std::make_tuple(it->second, candidates[k].index.columns.size()) <
                                 std::make_tuple(best->helps.at(i), best->index.columns.size())) {
        best = &candidates[k];
        best_index = k;
      }
    }
    if (best != nullptr) won[best_index].push_back(i);
  }

  std::vector<v1::IndexSuggestion> suggestions;
  for (const auto& [k, statements] : won) {
    const Candidate& c = candidates[k];
    v1::IndexSuggestion s;
    s.mutable_index()->set_schema(c.index.schema);
    s.mutable_index()->set_table(c.index.table);
    for (const std::string& col : c.index.columns) s.mutable_index()->add_columns(col);
    s.set_create_sql(db::IndexDefinition(c.index, /*concurrently=*/true));
    double share = 0, improvement = 0;
    for (size_t i : statements) {  // already most total time first
      const v1::StatementStats& st = *considered[i].stats;
      v1::AdvisedStatement* a = s.add_statements();
      a->set_statement(st.statement());
      a->set_fingerprint(st.fingerprint());
      a->set_calls(st.calls());
      a->set_total_ms(st.total_ms());
      a->set_share(total_ms > 0 ? st.total_ms() / total_ms : 0);
      a->set_cost_before(considered[i].baseline);
      a->set_cost_after(c.helps.at(i));
      share += a->share();
      if (a->cost_before() > 0)
        improvement += a->share() * (1 - a->cost_after() / a->cost_before());
    }
    s.set_share(share);
    s.set_estimated_improvement(improvement);
    suggestions.push_back(std::move(s));
  }
  std::stable_sort(suggestions.begin(), suggestions.end(),
                   [](const v1::IndexSuggestion& a, const v1::IndexSuggestion& b) {
                     return a.estimated_improvement() > b.estimated_improvement();
                   });

  // The plans of each suggestion's first statement, for the report.
  for (v1::IndexSuggestion& s : suggestions) {
    if (absl::Status stop = Stopped(options); !stop.ok()) return stop;
    const std::string& statement = s.statements(0).statement();
    absl::StatusOr<db::GenericPlan> before = session.Explain(statement, /*with_text=*/true);
    if (before.ok()) s.set_plan_before(before->text);
    const db::IndexSpec spec{s.index().schema(),
                             s.index().table(),
                             {s.index().columns().begin(), s.index().columns().end()}};
    if (session.CreateHypothetical(spec).ok()) {
      absl::StatusOr<db::GenericPlan> after = session.Explain(statement, /*with_text=*/true);
      if (after.ok()) s.set_plan_after(after->text);
    }
    if (absl::Status reset = session.ResetHypothetical(); !reset.ok()) return reset;
  }
  for (v1::IndexSuggestion& s : suggestions) *response->add_suggestions() = std::move(s);
  return absl::OkStatus();
}

}  // namespace poolside::query
