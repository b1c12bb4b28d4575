#include "services/query/named_queries.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/sql/statement_analyzer.h"

namespace poolside::query {
namespace {

bool ValidName(absl::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
  });
}

absl::StatusOr<v1::Value::KindCase> KindOf(absl::string_view type) {
  if (type == "bool") return v1::Value::kBoolValue;
  if (type == "int64") return v1::Value::kInt64Value;
  if (type == "double") return v1::Value::kDoubleValue;
  if (type == "text") return v1::Value::kTextValue;
  if (type == "bytes") return v1::Value::kBytesValue;
  if (type == "timestamp") return v1::Value::kTimestampValue;
  if (type == "numeric") return v1::Value::kNumericValue;
  if (type == "json") return v1::Value::kJsonValue;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown type \"", type.substr(0, 32),
                   "\" (bool, int64, double, text, bytes, timestamp, numeric, json)"));
}

const char* KindName(v1::Value::KindCase kind) {
  switch (kind) {
    case v1::Value::kNullValue:
      return "null";
    case v1::Value::kBoolValue:
      return "bool";
    case v1::Value::kInt64Value:
      return "int64";
    case v1::Value::kDoubleValue:
      return "double";
    case v1::Value::kTextValue:
      return "text";
    case v1::Value::kBytesValue:
      return "bytes";
    case v1::Value::kTimestampValue:
      return "timestamp";
    case v1::Value::kNumericValue:
      return "numeric";
    case v1::Value::kJsonValue:
      return "json";
    default:
      return "unset";
  }
}

}  // namespace

absl::StatusOr<NamedQueries> NamedQueries::Create(
    const google::protobuf::RepeatedPtrField<v1::NamedQuery>& config) {
  NamedQueries out;
  for (int i = 0; i < config.size(); ++i) {
    const v1::NamedQuery& q = config[i];
    const std::string where = absl::StrCat("namedQueries[", i, "] (", q.name().substr(0, 64), ")");
    if (!ValidName(q.name())) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": name must be 1-64 characters of letters, digits, '_', '.', '-'"));
    }
    if (q.sql().empty()) return absl::InvalidArgumentError(absl::StrCat(where, ": sql is empty"));
    // What could never run (a syntax error, several statements, transaction
    // control, session state) is a configuration error, found now rather
    // than at the first call.
    std::shared_ptr<const sql::Analysis> analysis = sql::AnalyzeOnce(q.sql());
    if (absl::Status s = sql::Permitted(*analysis, sql::Scope::kInTransaction, {.ddl = true});
        !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", s.message()));
    }
    if (q.read_only() && analysis->kind != sql::StatementKind::kRead) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": readOnly, but ", analysis->command, " is not a read"));
    }
    Query query;
    query.sql = q.sql();
    for (int j = 0; j < q.params_size(); ++j) {
      absl::StatusOr<v1::Value::KindCase> kind = KindOf(q.params(j).type());
      if (!kind.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": params[", j, "]: ", kind.status().message()));
      }
      query.params.push_back(
          {q.params(j).name().empty() ? absl::StrCat("$", j + 1) : q.params(j).name(), *kind,
           q.params(j).nullable()});
    }
    if (!out.queries_.emplace(q.name(), std::move(query)).second) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": the name is used twice"));
    }
  }
  return out;
}

absl::StatusOr<const std::string*> NamedQueries::Resolve(
    absl::string_view name, const google::protobuf::RepeatedPtrField<v1::Value>& params) const {
  auto it = queries_.find(name);
  if (it == queries_.end()) {
    return absl::NotFoundError(absl::StrCat("unknown named query \"", name.substr(0, 64), "\""));
  }
  const Query& q = it->second;
  if (params.size() != static_cast<int>(q.params.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "named query \"", name, "\" takes ", q.params.size(), " parameters; got ", params.size()));
  }
  for (size_t i = 0; i < q.params.size(); ++i) {
    const Param& want = q.params[i];
    const v1::Value::KindCase got = params[static_cast<int>(i)].kind_case();
    if (got == want.kind) continue;
    if ((got == v1::Value::kNullValue || got == v1::Value::KIND_NOT_SET) && want.nullable) continue;
    return absl::InvalidArgumentError(absl::StrCat(
        "named query \"", name, "\" parameter ", i + 1, " (", want.name, ") must be ",
        KindName(want.kind), want.nullable ? " or null" : "", "; got ", KindName(got)));
  }
  return &q.sql;
}

}  // namespace poolside::query
