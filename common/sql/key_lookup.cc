#include "common/sql/key_lookup.h"

#include <pg_query.h>

#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/sql/pg_query.pb.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/message.h"

namespace poolside::sql {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

// Deeper parse trees are not looked at (the analyzer refuses deeper texts).
constexpr int kMaxMessageDepth = 4500;

// Nodes that read other rows or relations, rename columns, or change how
// values compare: their presence anywhere makes the statement no key lookup.
const absl::flat_hash_set<std::string>& ForbiddenNodes() {
  static const auto* names = new absl::flat_hash_set<std::string>{
      "SubLink",          "RangeSubselect", "RangeFunction",   "RangeTableFunc",
      "RangeTableSample", "JoinExpr",       "CommonTableExpr", "WithClause",
      "IntoClause",       "LockingClause",  "CollateClause",   "SelectStmt"};
  return *names;
}

// Every message under `root` (iteratively: trees may be deep). False when a
// forbidden node is found or more than one RangeVar; sets *range_vars.
bool CheckTree(const Message& root, int* range_vars) {
  std::vector<const Message*> stack = {&root};
  std::vector<const FieldDescriptor*> fields;
  while (!stack.empty()) {
    const Message* m = stack.back();
    stack.pop_back();
    const std::string& name = m->GetDescriptor()->name();
    if (ForbiddenNodes().contains(name)) return false;
    if (name == "RangeVar" && ++*range_vars > 1) return false;
    const Reflection* reflection = m->GetReflection();
    fields.clear();
    reflection->ListFields(*m, &fields);
    for (const FieldDescriptor* f : fields) {
      if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
      if (f->is_repeated()) {
        for (int i = 0; i < reflection->FieldSize(*m, f); ++i) {
          stack.push_back(&reflection->GetRepeatedMessage(*m, f, i));
        }
      } else {
        stack.push_back(&reflection->GetMessage(*m, f));
      }
    }
  }
  return true;
}

// The operand of an equality, or nullopt for anything else.
std::optional<KeyOperand> OperandOf(const pg_query::Node& node) {
  KeyOperand out;
  const pg_query::Node* value = &node;
  if (node.has_type_cast()) {
    const pg_query::TypeCast& cast = node.type_cast();
    const pg_query::TypeName& type = cast.type_name();
    for (const pg_query::Node& n : type.names()) {
      if (!n.has_string()) return std::nullopt;
      out.cast.push_back(n.string().sval());
    }
    if (out.cast.empty()) return std::nullopt;
    out.cast_modified = type.typmods_size() > 0 || type.array_bounds_size() > 0 || type.setof() ||
                        type.pct_type() || type.typemod() != -1;
    value = &cast.arg();
  }
  if (value->has_param_ref()) {
    if (value->param_ref().number() <= 0) return std::nullopt;
    out.kind = KeyOperand::Kind::kParam;
    out.param = value->param_ref().number();
    return out;
  }
  if (!value->has_a_const()) return std::nullopt;
  const pg_query::A_Const& c = value->a_const();
  if (c.isnull()) return std::nullopt;
  if (c.has_ival()) {
    out.kind = KeyOperand::Kind::kInteger;
    out.text = absl::StrCat(c.ival().ival());
  } else if (c.has_fval()) {
    out.kind = KeyOperand::Kind::kNumber;
    out.text = c.fval().fval();
  } else if (c.has_sval()) {
    out.kind = KeyOperand::Kind::kString;
    out.text = c.sval().sval();
  } else {
    return std::nullopt;  // booleans, bit strings
  }
  return out;
}

// The column a ColumnRef names, if it names a column of the one table
// (unqualified, or qualified by the name the table goes by).
std::optional<std::string> ColumnOf(const pg_query::Node& node, const pg_query::RangeVar& table) {
  if (!node.has_column_ref()) return std::nullopt;
  const auto& fields = node.column_ref().fields();
  std::vector<std::string> names;
  for (const pg_query::Node& f : fields) {
    if (!f.has_string()) return std::nullopt;  // A_Star
    names.push_back(f.string().sval());
  }
  if (names.empty() || names.size() > 3) return std::nullopt;
  if (names.size() >= 2) {
    const std::string& rel = names[names.size() - 2];
    if (table.has_alias()) {
      if (names.size() != 2 || rel != table.alias().aliasname()) return std::nullopt;
    } else {
      if (rel != table.relname()) return std::nullopt;
      if (names.size() == 3 && names[0] != table.schemaname()) return std::nullopt;
    }
  }
  return names.back();
}

bool IsEquals(const pg_query::A_Expr& e) {
  if (e.kind() != pg_query::AEXPR_OP) return false;
  std::vector<std::string> name;
  for (const pg_query::Node& n : e.name()) {
    if (!n.has_string()) return false;
    name.push_back(n.string().sval());
  }
  return (name.size() == 1 && name[0] == "=") ||
         (name.size() == 2 && name[0] == "pg_catalog" && name[1] == "=");
}

// Collects the top-level AND terms of `where`.
void Conjuncts(const pg_query::Node& where, std::vector<const pg_query::Node*>* out) {
  std::vector<const pg_query::Node*> stack = {&where};
  while (!stack.empty()) {
    const pg_query::Node* n = stack.back();
    stack.pop_back();
    if (n->has_bool_expr() && n->bool_expr().boolop() == pg_query::AND_EXPR) {
      const auto& args = n->bool_expr().args();
      for (int i = args.size() - 1; i >= 0; --i) stack.push_back(&args[i]);
      continue;
    }
    out->push_back(n);
  }
}

}  // namespace

std::optional<KeyLookup> FindKeyLookup(absl::string_view sql) {
  if (sql.find('\0') != absl::string_view::npos) return std::nullopt;
  const std::string text(sql);
  pg_query::ParseResult tree;
  {
    PgQueryProtobufParseResult parsed = pg_query_parse_protobuf(text.c_str());
    bool ok = parsed.error == nullptr;
    if (ok) {
      google::protobuf::io::CodedInputStream input(
          reinterpret_cast<const uint8_t*>(parsed.parse_tree.data),
          static_cast<int>(parsed.parse_tree.len));
      input.SetRecursionLimit(kMaxMessageDepth);
      ok = tree.ParseFromCodedStream(&input) && input.ConsumedEntireMessage();
    }
    pg_query_free_protobuf_parse_result(parsed);
    if (!ok) return std::nullopt;
  }
  if (tree.stmts_size() != 1 || !tree.stmts(0).stmt().has_select_stmt()) return std::nullopt;
  const pg_query::SelectStmt& select = tree.stmts(0).stmt().select_stmt();
  if (select.op() != pg_query::SETOP_NONE || select.has_with_clause() || select.has_into_clause() ||
      select.locking_clause_size() > 0 || select.values_lists_size() > 0 ||
      select.from_clause_size() != 1 || !select.from_clause(0).has_range_var() ||
      !select.has_where_clause()) {
    return std::nullopt;
  }
  // Every field but the statement itself (whose type is on the forbidden
  // list, for nested SELECTs).
  int range_vars = 0;
  const Reflection* reflection = select.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  reflection->ListFields(select, &fields);
  for (const FieldDescriptor* f : fields) {
    if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (f->is_repeated()) {
      for (int i = 0; i < reflection->FieldSize(select, f); ++i) {
        if (!CheckTree(reflection->GetRepeatedMessage(select, f, i), &range_vars)) {
          return std::nullopt;
        }
      }
    } else if (!CheckTree(reflection->GetMessage(select, f), &range_vars)) {
      return std::nullopt;
    }
  }
  if (range_vars != 1) return std::nullopt;
  const pg_query::RangeVar& table = select.from_clause(0).range_var();
  if (!table.catalogname().empty() || table.relname().empty()) return std::nullopt;
  if (table.has_alias() && table.alias().colnames_size() > 0) return std::nullopt;

  KeyLookup out;
  out.schema = table.schemaname();
  out.table = table.relname();
  std::vector<const pg_query::Node*> terms;
  Conjuncts(select.where_clause(), &terms);
  for (const pg_query::Node* term : terms) {
    if (!term->has_a_expr() || !IsEquals(term->a_expr())) continue;
    const pg_query::A_Expr& e = term->a_expr();
    std::optional<std::string> column = ColumnOf(e.lexpr(), table);
    std::optional<KeyOperand> operand = OperandOf(e.rexpr());
    if (!column.has_value() || !operand.has_value()) {
      column = ColumnOf(e.rexpr(), table);
      operand = OperandOf(e.lexpr());
    }
    if (!column.has_value() || !operand.has_value()) continue;
    bool seen = false;
    for (const auto& [name, unused] : out.equalities) seen = seen || name == *column;
    if (!seen) out.equalities.emplace_back(*std::move(column), *std::move(operand));
  }
  if (out.equalities.empty()) return std::nullopt;
  return out;
}

}  // namespace poolside::sql
