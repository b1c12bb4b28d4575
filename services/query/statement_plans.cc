#include "services/query/statement_plans.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
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

void StatementPlans::Remember(const std::string& memo_key, Plan plan) {
  absl::MutexLock lock(&mu_);
  if (plans_.size() >= kMaxRememberedStatements) plans_.clear();
  plans_[memo_key] = std::move(plan);
}

void StatementPlans::Learn(Database* db, const std::string& sql,
                           const google::protobuf::RepeatedPtrField<v1::Value>& params,
                           absl::Time deadline, std::function<void(Learned)> then) {
  std::string memo_key = MemoKey(db->name(), sql);
  Plan known;
  {
    absl::MutexLock lock(&mu_);
    auto it = plans_.find(memo_key);
    if (it != plans_.end()) known = it->second;
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
  work->done = [this, db, raw, sql, deadline, memo_key = std::move(memo_key),
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
    auto remember = [this, memo_key = std::move(memo_key), then = std::move(then),
                     token = std::move(token)](absl::StatusOr<StatementTables> t) mutable {
      const InFlight::Token held = std::move(token);
      if (!t.ok()) {
        then(t.status());
        return;
      }
      auto plan = std::make_shared<const StatementTables>(*std::move(t));
      Remember(memo_key, plan);
      then(std::move(plan));
    };
    if (tables.ok() && tables->PlainRead() && tables->tables.size() == 1 && learn_keys_(*db)) {
      LearnKey(
          db, sql, deadline, *std::move(tables),
          [remember = std::move(remember)](StatementTables t) mutable { remember(std::move(t)); });
      return;
    }
    remember(std::move(tables));
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

void StatementPlans::Forget(absl::string_view database, absl::string_view table) {
  const std::string prefix = absl::StrCat(database, "\x1f");
  absl::MutexLock lock(&mu_);
  for (auto it = plans_.begin(); it != plans_.end();) {
    const std::vector<std::string>& t = it->second->tables;
    if (absl::StartsWith(it->first, prefix) && std::find(t.begin(), t.end(), table) != t.end()) {
      plans_.erase(it++);
    } else {
      ++it;
    }
  }
}

}  // namespace poolside::query
