#include "common/db/hypothetical_index.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/db/error.h"
#include "common/db/sql_quote.h"
#include "common/db/text_rows.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace poolside::db {
namespace {

using Params = google::protobuf::RepeatedPtrField<v1::Value>;
using Rows = std::vector<std::vector<std::string>>;

Params TextParams(std::initializer_list<absl::string_view> values) {
  Params params;
  for (absl::string_view v : values) params.Add()->set_text_value(std::string(v));
  return params;
}

// Runs `sqls` in one round trip, each in its own implicit transaction; the
// rows of each, or the first failure.
absl::StatusOr<std::vector<Rows>> Run(Connection& conn, const std::vector<std::string>& sqls,
                                      const std::vector<const Params*>& params, absl::Time deadline,
                                      const std::atomic<bool>* cancelled) {
  std::vector<TextRows> sinks(sqls.size());
  std::vector<Statement> statements(sqls.size());
  std::vector<Statement*> ptrs;
  for (size_t i = 0; i < sqls.size(); ++i) {
    statements[i].sql = sqls[i];
    statements[i].params = i < params.size() ? params[i] : nullptr;
    statements[i].sink = &sinks[i];
    statements[i].deadline = deadline;
    statements[i].cancelled = cancelled;
    ptrs.push_back(&statements[i]);
  }
  if (absl::Status link = conn.RunIndependent(ptrs); !link.ok()) return link;
  std::vector<Rows> out;
  for (size_t i = 0; i < sqls.size(); ++i) {
    if (!statements[i].status.ok()) return statements[i].status;
    out.push_back(std::move(sinks[i].rows));
  }
  return out;
}

absl::StatusOr<Rows> RunOne(Connection& conn, std::string sql, const Params* params,
                            absl::Time deadline, const std::atomic<bool>* cancelled) {
  absl::StatusOr<std::vector<Rows>> rows =
      Run(conn, {std::move(sql)}, {params}, deadline, cancelled);
  if (!rows.ok()) return rows.status();
  return std::move((*rows)[0]);
}

std::string QualifiedName(absl::string_view schema, absl::string_view table) {
  return schema.empty() ? QuoteIdentifier(table)
                        : absl::StrCat(QuoteIdentifier(schema), ".", QuoteIdentifier(table));
}

// The names PREPARE gives the statements being planned (a new one each
// time, so one left prepared by a failed round is in no one's way); the
// connection's own prepared statements are protocol-level ones named
// otherwise.
constexpr char kPreparedPrefix[] = "poolside_advice_";

// Collects the plan's "Total Cost" (of its top node) and every "Index Name".
void ReadPlan(const google::protobuf::Value& node, GenericPlan* plan, int depth) {
  if (depth > 200 || !node.has_struct_value()) return;
  for (const auto& [key, value] : node.struct_value().fields()) {
    if (key == "Index Name" && value.has_string_value()) {
      plan->indexes.push_back(value.string_value());
    } else if (key == "Plans" && value.has_list_value()) {
      for (const auto& child : value.list_value().values()) ReadPlan(child, plan, depth + 1);
    }
  }
}

absl::StatusOr<GenericPlan> ParsePlan(const std::string& json) {
  google::protobuf::ListValue list;
  if (!google::protobuf::util::JsonStringToMessage(json, &list).ok() || list.values_size() != 1 ||
      !list.values(0).has_struct_value()) {
    return absl::InternalError("EXPLAIN (FORMAT JSON) returned something that is not a plan");
  }
  const auto& fields = list.values(0).struct_value().fields();
  auto top = fields.find("Plan");
  if (top == fields.end() || !top->second.has_struct_value()) {
    return absl::InternalError("EXPLAIN (FORMAT JSON) returned no Plan");
  }
  GenericPlan plan;
  const auto& plan_fields = top->second.struct_value().fields();
  auto cost = plan_fields.find("Total Cost");
  if (cost == plan_fields.end() || !cost->second.has_number_value()) {
    return absl::InternalError("EXPLAIN (FORMAT JSON) returned a plan without Total Cost");
  }
  plan.total_cost = cost->second.number_value();
  ReadPlan(top->second, &plan, 0);
  return plan;
}

// PostgreSQL's longest identifier (NAMEDATALEN - 1).
constexpr size_t kMaxNameBytes = 63;

// The longest prefix of `name` of at most `max` bytes that ends on a
// character boundary (names are UTF-8).
absl::string_view TruncateName(absl::string_view name, size_t max) {
  if (name.size() <= max) return name;
  size_t end = max;
  while (end > 0 && (static_cast<unsigned char>(name[end]) & 0xC0) == 0x80) --end;
  return name.substr(0, end);
}

}  // namespace

std::string IndexDefinition(const IndexSpec& index, bool concurrently, absl::string_view name) {
  std::vector<std::string> columns;
  for (const std::string& c : index.columns) columns.push_back(QuoteIdentifier(c));
  return absl::StrCat("CREATE INDEX ", concurrently ? "CONCURRENTLY " : "",
                      name.empty() ? "" : QuoteIdentifier(name), name.empty() ? "" : " ", "ON ",
                      QualifiedName(index.schema, index.table), " (", absl::StrJoin(columns, ", "),
                      ")");
}

bool TableInfo::HasColumn(absl::string_view column) const {
  return std::find(columns.begin(), columns.end(), column) != columns.end();
}

bool TableInfo::Covers(const std::vector<std::string>& wanted) const {
  for (const auto& keys : index_keys) {
    if (keys.size() >= wanted.size() && std::equal(wanted.begin(), wanted.end(), keys.begin())) {
      return true;
    }
  }
  return false;
}

bool GenericPlan::Uses(absl::string_view index) const {
  return std::find(indexes.begin(), indexes.end(), index) != indexes.end();
}

absl::StatusOr<TableInfo> DescribeTable(Connection& conn, absl::string_view schema,
                                        absl::string_view table, absl::Time deadline,
                                        const std::atomic<bool>* cancelled) {
  if (table.empty()) return absl::InvalidArgumentError("no table named");
  const Params name = TextParams({QualifiedName(schema, table)});
  // to_regclass: NULL (no row) for a name that is not visible, never an error.
  absl::StatusOr<std::vector<Rows>> rows =
      Run(conn,
          {"SELECT c.oid::int8, n.nspname::text, c.relname::text FROM pg_catalog.pg_class c "
           "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
           "WHERE c.oid = pg_catalog.to_regclass($1) AND c.relkind IN ('r', 'm')",
           "SELECT a.attnum::int8, a.attname::text FROM pg_catalog.pg_attribute a "
           "WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
           "SELECT i.indexrelid::int8, k.attnum::int8 FROM pg_catalog.pg_index i, "
           "unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) "
           "WHERE i.indrelid = pg_catalog.to_regclass($1) AND i.indisvalid AND i.indpred IS NULL "
           "ORDER BY i.indexrelid, k.ord"},
          {&name, &name, &name}, deadline, cancelled);
  if (!rows.ok()) return rows.status();
  const Rows& found = (*rows)[0];
  if (found.size() != 1 || found[0].size() != 3) {
    return absl::NotFoundError(
        absl::StrCat("no table ", QualifiedName(schema, table).substr(0, 200)));
  }
  TableInfo info;
  if (!absl::SimpleAtoi(found[0][0], &info.oid)) return absl::InternalError("bad oid");
  info.schema = found[0][1];
  info.table = found[0][2];
  absl::flat_hash_map<std::string, std::string> by_number;
  for (const auto& r : (*rows)[1]) {
    if (r.size() != 2) continue;
    by_number[r[0]] = r[1];
    info.columns.push_back(r[1]);
  }
  std::string current;
  for (const auto& r : (*rows)[2]) {
    if (r.size() != 2) continue;
    if (r[0] != current || info.index_keys.empty()) {
      info.index_keys.emplace_back();
      current = r[0];
    }
    auto it = by_number.find(r[1]);
    info.index_keys.back().push_back(it == by_number.end() ? "" : it->second);
  }
  return info;
}

absl::StatusOr<std::unique_ptr<PlanSession>> PlanSession::Start(Connection& conn, Options options) {
  std::unique_ptr<PlanSession> session(new PlanSession(conn, options));
  absl::StatusOr<std::vector<Rows>> rows =
      Run(conn,
          {"SET default_transaction_read_only = on", "SET plan_cache_mode = force_generic_plan",
           "SELECT n.nspname::text FROM pg_catalog.pg_extension e "
           "JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'hypopg'"},
          {}, session->StepDeadline(), options.cancelled);
  if (!rows.ok()) return rows.status();
  if ((*rows)[2].size() != 1 || (*rows)[2][0].size() != 1) {
    return absl::FailedPreconditionError(
        "HypoPG is not installed in this database: index advice costs candidate indexes "
        "with it (a superuser runs CREATE EXTENSION hypopg; Debian package "
        "postgresql-15-hypopg)");
  }
  session->hypopg_schema_ = QuoteIdentifier((*rows)[2][0][0]);
  if (absl::Status s = session->ResetHypothetical(); !s.ok()) return s;
  return session;
}

PlanSession::~PlanSession() {
  if (!conn_.broken() && absl::Now() < options_.deadline) ResetHypothetical().IgnoreError();
}

absl::Time PlanSession::StepDeadline() const {
  return std::min(options_.deadline, absl::Now() + options_.step_timeout);
}

absl::StatusOr<GenericPlan> PlanSession::Explain(absl::string_view statement, bool with_text) {
  if (statement.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError("statement contains a NUL byte");
  }
  const absl::Time deadline = StepDeadline();
  const std::string name = absl::StrCat(kPreparedPrefix, ++prepared_);
  absl::StatusOr<std::vector<Rows>> prepared =
      Run(conn_,
          {absl::StrCat("PREPARE ", name, " AS ", statement),
           absl::StrCat("SELECT pg_catalog.cardinality(parameter_types)::int8 FROM "
                        "pg_catalog.pg_prepared_statements WHERE name = '",
                        name, "'")},
          {}, deadline, options_.cancelled);
  if (!prepared.ok()) return prepared.status();
  int64_t params = -1;
  if ((*prepared)[1].size() != 1 || (*prepared)[1][0].size() != 1 ||
      !absl::SimpleAtoi((*prepared)[1][0][0], &params) || params < 0 || params > 65535) {
    return absl::InternalError("the prepared statement's parameters cannot be read");
  }
  std::vector<std::string> nulls(static_cast<size_t>(params), "NULL");
  const std::string execute =
      params == 0 ? name : absl::StrCat(name, "(", absl::StrJoin(nulls, ", "), ")");
  std::vector<std::string> explains = {absl::StrCat("EXPLAIN (FORMAT JSON) EXECUTE ", execute)};
  if (with_text) explains.push_back(absl::StrCat("EXPLAIN EXECUTE ", execute));
  explains.push_back(absl::StrCat("DEALLOCATE ", name));
  absl::StatusOr<std::vector<Rows>> explained =
      Run(conn_, explains, {}, deadline, options_.cancelled);
  if (!explained.ok()) return explained.status();
  const Rows& json = (*explained)[0];
  if (json.size() != 1 || json[0].size() != 1) {
    return absl::InternalError("EXPLAIN (FORMAT JSON) returned no plan");
  }
  absl::StatusOr<GenericPlan> plan = ParsePlan(json[0][0]);
  if (!plan.ok()) return plan.status();
  if (with_text) {
    std::vector<std::string> lines;
    for (const auto& r : (*explained)[1]) {
      if (!r.empty()) lines.push_back(r[0]);
    }
    plan->text = absl::StrJoin(lines, "\n");
  }
  return plan;
}

absl::StatusOr<std::string> PlanSession::CreateHypothetical(const IndexSpec& index) {
  const Params definition = TextParams({IndexDefinition(index, false)});
  absl::StatusOr<Rows> rows = RunOne(
      conn_,
      absl::StrCat("SELECT indexname::text FROM ", hypopg_schema_, ".hypopg_create_index($1)"),
      &definition, StepDeadline(), options_.cancelled);
  if (!rows.ok()) return rows.status();
  if (rows->size() != 1 || (*rows)[0].size() != 1 || (*rows)[0][0].empty()) {
    return absl::InternalError("hypopg_create_index returned no index");
  }
  return (*rows)[0][0];
}

absl::Status PlanSession::ResetHypothetical() {
  return RunOne(conn_, absl::StrCat("SELECT ", hypopg_schema_, ".hypopg_reset()"), nullptr,
                StepDeadline(), options_.cancelled)
      .status();
}

absl::StatusOr<std::string> CreateIndexConcurrently(Connection& conn, const IndexSpec& index,
                                                    absl::Time deadline,
                                                    const std::atomic<bool>* cancelled) {
  if (index.columns.empty()) return absl::InvalidArgumentError("an index needs a column");
  absl::StatusOr<TableInfo> table =
      DescribeTable(conn, index.schema, index.table, deadline, cancelled);
  if (!table.ok()) return table.status();
  for (const std::string& c : index.columns) {
    if (!table->HasColumn(c)) {
      return absl::NotFoundError(absl::StrCat("table ", QualifiedName(table->schema, table->table),
                                              " has no column ",
                                              QuoteIdentifier(c).substr(0, 200)));
    }
  }
  if (table->Covers(index.columns)) {
    return absl::AlreadyExistsError(absl::StrCat("an index of ",
                                                 QualifiedName(table->schema, table->table),
                                                 " already leads with these columns"));
  }
  // The catalog's names: the index lands on the table just described.
  const IndexSpec resolved{table->schema, table->table, index.columns};
  // A name of its own, as PostgreSQL would pick one (table_columns_idx, then
  // ..._idx1, ...), so that what a failed build leaves is known to be its own.
  const std::string base = absl::StrCat(table->table, "_", absl::StrJoin(index.columns, "_"));
  std::string name;
  for (int n = 0; n < 100 && name.empty(); ++n) {
    const std::string suffix = n == 0 ? "_idx" : absl::StrCat("_idx", n);
    const std::string candidate =
        absl::StrCat(TruncateName(base, kMaxNameBytes - suffix.size()), suffix);
    const Params qualified = TextParams({QualifiedName(table->schema, candidate)});
    absl::StatusOr<Rows> free =
        RunOne(conn, "SELECT pg_catalog.to_regclass($1) IS NULL", &qualified, deadline, cancelled);
    if (!free.ok()) return free.status();
    if (free->size() == 1 && !(*free)[0].empty() && (*free)[0][0] == "t") name = candidate;
  }
  if (name.empty()) {
    return absl::AlreadyExistsError(
        absl::StrCat("no free index name like ", QuoteIdentifier(base).substr(0, 200), "_idx"));
  }
  absl::Status created = RunOne(conn, IndexDefinition(resolved, /*concurrently=*/true, name),
                                nullptr, deadline, cancelled)
                             .status();
  if (created.ok()) return name;
  // Another session took the name meanwhile: what carries it is theirs.
  if (SqlStateOf(created) == "42P07") return created;
  // A build that failed (or was cancelled) after it began leaves an invalid
  // index behind; dropped with a deadline of its own (the call's may be what
  // ended the build).
  const absl::Time cleanup_deadline = absl::Now() + absl::Seconds(10);
  const std::string qualified = QualifiedName(table->schema, name);
  const Params leftover = TextParams({qualified});
  absl::StatusOr<Rows> invalid =
      RunOne(conn,
             "SELECT 1 FROM pg_catalog.pg_index WHERE indexrelid = pg_catalog.to_regclass($1) "
             "AND NOT indisvalid",
             &leftover, cleanup_deadline, nullptr);
  if (invalid.ok() && !invalid->empty()) {
    RunOne(conn, absl::StrCat("DROP INDEX CONCURRENTLY IF EXISTS ", qualified), nullptr,
           cleanup_deadline, nullptr)
        .IgnoreError();
  }
  return created;
}

}  // namespace poolside::db
