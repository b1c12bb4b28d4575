#include "services/query/statement_plans.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/sql/statement_analyzer.h"
#include "common/telemetry/trace.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "services/query/owned_statement.h"

namespace poolside::query {
namespace {

// Distinct statements whose plans are remembered; the memo is cleared when full.
constexpr size_t kMaxRememberedStatements = 10000;

void WalkPlan(const google::protobuf::Value& v, StatementTables* out) {
  if (v.has_list_value()) {
    for (const auto& e : v.list_value().values()) WalkPlan(e, out);
    return;
  }
  if (!v.has_struct_value()) return;
  const auto& fields = v.struct_value().fields();
  if (auto it = fields.find("Node Type"); it != fields.end()) {
    if (it->second.string_value() == "ModifyTable") out->modifies = true;
    if (it->second.string_value() == "LockRows") out->locks_rows = true;
  }
  auto rel = fields.find("Relation Name");
  if (rel != fields.end()) {
    auto schema = fields.find("Schema");
    out->tables.push_back(
        absl::StrCat(schema != fields.end() ? schema->second.string_value() : "public", ".",
                     rel->second.string_value()));
  }
  for (const auto& [name, child] : fields) WalkPlan(child, out);
}

// Whether an EXPLAIN failure says something permanent about the statement.
bool PermanentlyUnexplainable(const absl::Status& s) {
  return s.code() == absl::StatusCode::kInvalidArgument ||
         s.code() == absl::StatusCode::kFailedPrecondition ||
         s.code() == absl::StatusCode::kNotFound || s.code() == absl::StatusCode::kUnimplemented;
}

std::string MemoKey(absl::string_view database, absl::string_view sql) {
  return absl::StrCat(database, "\x1f", sql);
}

}  // namespace

absl::StatusOr<StatementTables> ParsePlanTables(const std::string& explain_json) {
  google::protobuf::ListValue plan;
  const auto parsed = google::protobuf::util::JsonStringToMessage(explain_json, &plan);
  if (!parsed.ok()) {
    return absl::InternalError(
        absl::StrCat("EXPLAIN output is not JSON: ", std::string(parsed.message()).substr(0, 200)));
  }
  StatementTables out;
  out.explained = true;
  for (const auto& v : plan.values()) WalkPlan(v, &out);
  std::sort(out.tables.begin(), out.tables.end());
  out.tables.erase(std::unique(out.tables.begin(), out.tables.end()), out.tables.end());
  return out;
}

std::vector<std::string> ReadTags(absl::string_view database, const StatementTables& t,
                                  const v1::ExecuteRequest& request, bool* keyed) {
  const v1::CachePolicy& policy = request.cache();
  std::vector<std::string> tags;
  tags.reserve(2 * t.tables.size() + policy.tags_size() + 2);
  tags.push_back(DatabaseTag(database));
  for (const std::string& table : t.tables) tags.push_back(TableTag(database, table));
  *keyed = false;
  if (t.key.has_value()) {
    std::vector<std::string> values;
    for (const auto& [family, operand] : t.key->columns) {
      std::optional<std::string> v = CanonicalKeyOperand(family, operand, request.params());
      if (!v.has_value()) break;
      values.push_back(*std::move(v));
    }
    if (values.size() == t.key->columns.size()) {
      tags.push_back(RowTag(database, t.key->table, RowKeyHash(values)));
      *keyed = true;
    }
  }
  if (!*keyed) {
    for (const std::string& table : t.tables) tags.push_back(TableScanTag(database, table));
  }
  for (const std::string& tag : policy.tags()) tags.push_back(tag);
  return tags;
}

StatementPlans::StatementPlans(InFlight* in_flight, std::function<bool(const Database&)> learn_keys)
    : in_flight_(in_flight), learn_keys_(std::move(learn_keys)) {}

StatementPlans::Plan StatementPlans::Remembered(const Database& db, const std::string& sql) const {
  const std::string memo_key = MemoKey(db.name(), sql);
  absl::MutexLock lock(&mu_);
  auto it = plans_.find(memo_key);
  return it != plans_.end() ? it->second : nullptr;
}

size_t StatementPlans::size() const {
  absl::MutexLock lock(&mu_);
  return plans_.size();
}

void StatementPlans::Remember(const std::string& memo_key, Plan plan, uint64_t forgotten) {
  absl::MutexLock lock(&mu_);
  if (forgotten != forgotten_) return;
  if (plans_.size() >= kMaxRememberedStatements) plans_.clear();
  plans_[memo_key] = std::move(plan);
}

void StatementPlans::Learn(Database* db, const std::string& sql,
                           const google::protobuf::RepeatedPtrField<v1::Value>& params,
                           absl::Time deadline, std::function<void(Learned)> then) {
  std::string memo_key = MemoKey(db->name(), sql);
  Plan known;
  uint64_t forgotten = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = plans_.find(memo_key);
    if (it != plans_.end()) known = it->second;
    forgotten = forgotten_;
  }
  if (known != nullptr) {
    then(std::move(known));
    return;
  }
  auto work = std::make_shared<OwnedStatement>();
  work->sql = absl::StrCat("EXPLAIN (FORMAT JSON, VERBOSE) ", sql);
  work->params = params;
  work->holder = "cache: EXPLAIN";
  work->trace = telemetry::CurrentSpanContext();
  work->Prepare(deadline, 10, 16 << 20);
  OwnedStatement* raw = work.get();
  work->done = [this, db, raw, sql, deadline, forgotten, memo_key = std::move(memo_key),
                then = std::move(then), token = in_flight_->Begin()](absl::Status s) mutable {
    absl::StatusOr<StatementTables> tables;
    if (s.ok()) {
      if (raw->result.rows_size() == 1 && raw->result.rows(0).values_size() == 1) {
        const v1::Value& v = raw->result.rows(0).values(0);
        tables = ParsePlanTables(v.has_json_value() ? v.json_value() : v.text_value());
      } else {
        tables = absl::InternalError("EXPLAIN returned no plan");
      }
    } else if (PermanentlyUnexplainable(s)) {
      tables = StatementTables{};  // explained = false
    } else {
      tables = s;
    }
    // Counted until `then` returned, here or after the key's query.
    auto remember = [this, forgotten, memo_key = std::move(memo_key), then = std::move(then),
                     token = std::move(token)](absl::StatusOr<StatementTables> t) mutable {
      const InFlight::Token held = std::move(token);
      if (!t.ok()) {
        then(t.status());
        return;
      }
      auto plan = std::make_shared<const StatementTables>(*std::move(t));
      Remember(memo_key, plan, forgotten);
      then(std::move(plan));
    };
    if (!tables.ok() || !tables->PlainRead()) {
      remember(std::move(tables));
      return;
    }
    LearnNamed(db, sql, deadline, *std::move(tables),
               [this, db, sql, deadline,
                remember = std::move(remember)](absl::StatusOr<StatementTables> t) mutable {
                 if (t.ok() && t->PlainRead() && t->tables.size() == 1 && learn_keys_(*db)) {
                   LearnKey(db, sql, deadline, *std::move(t),
                            [remember = std::move(remember)](StatementTables k) mutable {
                              remember(std::move(k));
                            });
                   return;
                 }
                 remember(std::move(t));
               });
  };
  SubmitOrFail(*db, std::move(work));
}

void StatementPlans::LearnNamed(Database* db, const std::string& sql, absl::Time deadline,
                                StatementTables t,
                                std::function<void(absl::StatusOr<StatementTables>)> then) {
  const std::shared_ptr<const sql::Analysis> analysis = sql::AnalyzeOnce(sql);
  // [schema, name] of each relation as written ("" for no schema; a
  // three-part name's database dropped), and the routines' names without
  // their schema (any routine of that name counts: the search_path decides
  // which one runs).
  google::protobuf::ListValue relations, functions, operators;
  for (const std::string& name : analysis->tables) {
    const std::vector<std::string> parts = absl::StrSplit(name, '.');
    google::protobuf::ListValue* pair = relations.add_values()->mutable_list_value();
    pair->add_values()->set_string_value(parts.size() >= 2 ? parts[parts.size() - 2] : "");
    pair->add_values()->set_string_value(parts.back());
  }
  for (const std::string& f : analysis->functions) {
    functions.add_values()->set_string_value(f.substr(f.rfind('.') + 1));
  }
  for (const std::string& o : analysis->operators) {
    operators.add_values()->set_string_value(o.substr(o.rfind('.') + 1));
  }
  auto work = std::make_shared<OwnedStatement>();
  // The relations named, what views among them depend on (their rules'
  // dependencies, through views of views) and what their row-level security
  // policies read, and every inheritance descendant (partitions too): each
  // with its kind. Then a last row: whether a routine
  // called by name, through an operator, or by one of those views is neither
  // built in (an OID below FirstNormalObjectId) nor written in C.
  work->sql =
      "WITH RECURSIVE named AS ("
      " SELECT c.oid FROM pg_catalog.json_array_elements($1::json) AS e(v)"
      " JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(CASE WHEN e.v->>0 = '' "
      " THEN pg_catalog.quote_ident(e.v->>1) ELSE pg_catalog.quote_ident(e.v->>0) || '.' || "
      " pg_catalog.quote_ident(e.v->>1) END)),"
      " tree(oid) AS (SELECT oid FROM named"
      " UNION SELECT x.oid FROM tree, LATERAL ("
      " SELECT i.inhrelid AS oid FROM pg_catalog.pg_inherits i WHERE i.inhparent = tree.oid"
      " UNION ALL SELECT d.refobjid FROM pg_catalog.pg_rewrite r"
      " JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass"
      " AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass"
      " WHERE r.ev_class = tree.oid AND d.refobjid <> r.ev_class"
      " UNION ALL SELECT d.refobjid FROM pg_catalog.pg_policy pol"
      " JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass"
      " AND d.objid = pol.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass"
      " WHERE pol.polrelid = tree.oid AND d.refobjid <> pol.polrelid) x),"
      " routines(oid) AS ("
      " SELECT p.oid FROM pg_catalog.json_array_elements_text($2::json) AS f(name)"
      " JOIN pg_catalog.pg_proc p ON p.proname = f.name"
      " UNION SELECT o.oprcode::pg_catalog.oid FROM pg_catalog.json_array_elements_text($3::json)"
      " AS x(name) JOIN pg_catalog.pg_operator o ON o.oprname = x.name"
      " UNION SELECT d.refobjid FROM pg_catalog.pg_rewrite r JOIN tree ON r.ev_class = tree.oid"
      " JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass"
      " AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass"
      " UNION SELECT d.refobjid FROM pg_catalog.pg_policy pol JOIN tree ON pol.polrelid = tree.oid"
      " JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass"
      " AND d.objid = pol.oid AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass)"
      " SELECT n.nspname || '.' || c.relname, c.relkind::text, false"
      " FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.oid"
      " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
      " UNION ALL SELECT NULL, NULL, EXISTS (SELECT 1 FROM routines"
      " JOIN pg_catalog.pg_proc p ON p.oid = routines.oid"
      " JOIN pg_catalog.pg_language l ON l.oid = p.prolang"
      " WHERE p.oid >= 16384 AND l.lanname NOT IN ('internal', 'c'))";
  std::string json;
  (void)google::protobuf::util::MessageToJsonString(relations, &json);
  work->params.Add()->set_text_value(json);
  json.clear();
  (void)google::protobuf::util::MessageToJsonString(functions, &json);
  work->params.Add()->set_text_value(json);
  json.clear();
  (void)google::protobuf::util::MessageToJsonString(operators, &json);
  work->params.Add()->set_text_value(json);
  work->holder = "cache: relations";
  work->trace = telemetry::CurrentSpanContext();
  work->Prepare(deadline, 10000, 4 << 20);
  OwnedStatement* raw = work.get();
  work->done = [raw, t = std::move(t), then = std::move(then),
                token = in_flight_->Begin()](absl::Status s) mutable {
    const InFlight::Token held = std::move(token);
    if (!s.ok()) {
      then(s);
      return;
    }
    for (const v1::Row& row : raw->result.rows()) {
      if (row.values_size() != 3) continue;
      if (row.values(2).bool_value()) t.calls_routines = true;
      const std::string& kind = row.values(1).text_value();
      // Tables and partitioned tables (views read what they depend on,
      // which is in the list too; other kinds hold no rows of their own).
      if (row.values(0).has_text_value() && (kind == "r" || kind == "p")) {
        t.tables.push_back(row.values(0).text_value());
      }
    }
    std::sort(t.tables.begin(), t.tables.end());
    t.tables.erase(std::unique(t.tables.begin(), t.tables.end()), t.tables.end());
    then(std::move(t));
  };
  SubmitOrFail(*db, std::move(work));
}

void StatementPlans::LearnKey(Database* db, const std::string& sql, absl::Time deadline,
                              StatementTables t, std::function<void(StatementTables)> then) {
  std::optional<sql::KeyLookup> lookup = sql::FindKeyLookup(sql);
  if (!lookup.has_value()) {
    then(std::move(t));
    return;
  }
  auto work = std::make_shared<OwnedStatement>();
  // The table as the statement names it (on this pool's search_path), its
  // kind and its primary key's columns with their types and whether their
  // collation compares bytes.
  work->sql =
      "SELECT n.nspname || '.' || c.relname, c.relkind::text, a.attname::text, "
      "a.atttypid::int8, coalesce(co.collisdeterministic, true) "
      "FROM pg_catalog.pg_class c "
      "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
      "LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary "
      "LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
      "AND a.attnum = ANY (i.indkey) "
      "LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation "
      "WHERE c.oid = pg_catalog.to_regclass(CASE WHEN $1 = '' THEN pg_catalog.quote_ident($2) "
      "ELSE pg_catalog.quote_ident($1) || '.' || pg_catalog.quote_ident($2) END) "
      "ORDER BY a.attnum";
  work->params.Add()->set_text_value(lookup->schema);
  work->params.Add()->set_text_value(lookup->table);
  work->holder = "cache: primary key";
  work->trace = telemetry::CurrentSpanContext();
  work->Prepare(deadline, 1000, 1 << 20);
  OwnedStatement* raw = work.get();
  work->done = [raw, lookup = *std::move(lookup), t = std::move(t), then = std::move(then),
                token = in_flight_->Begin()](absl::Status s) mutable {
    const InFlight::Token held = std::move(token);
    const v1::ResultSet& rs = raw->result;
    KeyPlan plan;
    bool usable = s.ok() && rs.rows_size() > 0;
    for (int i = 0; usable && i < rs.rows_size(); ++i) {
      const v1::Row& row = rs.rows(i);
      usable = row.values_size() == 5 && row.values(0).text_value() == t.tables[0] &&
               row.values(1).text_value() == "r" && row.values(2).has_text_value();
      if (!usable) break;
      const KeyFamily family = KeyFamilyOf(static_cast<uint32_t>(row.values(3).int64_value()));
      const bool deterministic = row.values(4).bool_value();
      const sql::KeyOperand* operand = nullptr;
      for (const auto& [column, o] : lookup.equalities) {
        if (column == row.values(2).text_value()) operand = &o;
      }
      usable = operand != nullptr && family != KeyFamily::kNone &&
               (family != KeyFamily::kText || deterministic);
      if (usable) plan.columns.emplace_back(family, *operand);
    }
    if (usable) {
      plan.table = t.tables[0];
      t.key = std::move(plan);
    }
    then(std::move(t));
  };
  SubmitOrFail(*db, std::move(work));
}

void StatementPlans::ForgetDatabase(absl::string_view database) {
  ForgetIf(database, [](const StatementTables&) { return true; });
}

void StatementPlans::Forget(absl::string_view database, absl::string_view table) {
  ForgetIf(database, [table](const StatementTables& plan) {
    return std::find(plan.tables.begin(), plan.tables.end(), table) != plan.tables.end();
  });
}

void StatementPlans::ForgetIf(absl::string_view database,
                              absl::FunctionRef<bool(const StatementTables&)> forget) {
  const std::string prefix = absl::StrCat(database, "\x1f");
  absl::MutexLock lock(&mu_);
  ++forgotten_;
  for (auto it = plans_.begin(); it != plans_.end();) {
    if (absl::StartsWith(it->first, prefix) && forget(*it->second)) {
      plans_.erase(it++);
    } else {
      ++it;
    }
  }
}

}  // namespace poolside::query
