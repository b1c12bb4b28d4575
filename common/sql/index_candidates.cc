#include "common/sql/index_candidates.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/sql/pg_query.pb.h"
#include "common/sql/statement_analyzer.h"

namespace poolside::sql {
namespace {

using NodeList = google::protobuf::RepeatedPtrField<pg_query::Node>;

enum class Use { kEquality, kRange, kJoin, kOrder };

// Recursion guard: ParseTree bounds the nesting of what it returns, and the
// walk below recurses only through brackets, boolean operators, joins and
// subqueries, each at least one level of that bound.
constexpr int kMaxDepth = 2 * kMaxNestingDepth;

void AddUnique(std::vector<std::string>* list, const std::string& name) {
  if (std::find(list->begin(), list->end(), name) == list->end()) list->push_back(name);
}

// Collects column uses per table over one statement.
class Collector {
 public:
  std::vector<TableColumns> tables;

  void Statement(const pg_query::Node& node, int parent, int depth) {
    if (depth > kMaxDepth) return;
    switch (node.node_case()) {
      case pg_query::Node::kSelectStmt:
        Select(node.select_stmt(), parent, depth + 1);
        return;
      case pg_query::Node::kUpdateStmt:
        Change(node.update_stmt(), node.update_stmt().from_clause(), parent, depth);
        return;
      case pg_query::Node::kDeleteStmt:
        Change(node.delete_stmt(), node.delete_stmt().using_clause(), parent, depth);
        return;
      case pg_query::Node::kInsertStmt: {
        const pg_query::InsertStmt& insert = node.insert_stmt();
        const int scope = NewScope(parent);
        With(insert.with_clause(), insert.has_with_clause(), scope, depth);
        if (insert.has_select_stmt()) Statement(insert.select_stmt(), scope, depth + 1);
        return;
      }
      case pg_query::Node::kMergeStmt: {
        const pg_query::MergeStmt& merge = node.merge_stmt();
        const int scope = NewScope(parent);
        With(merge.with_clause(), merge.has_with_clause(), scope, depth);
        if (merge.has_relation()) AddRangeVar(merge.relation(), scope);
        if (merge.has_source_relation()) FromItem(merge.source_relation(), scope, depth + 1);
        if (merge.has_join_condition()) Predicate(merge.join_condition(), scope, depth + 1);
        return;
      }
      default:
        return;
    }
  }

 private:
  // A FROM item's name: a table (index into `tables`) or something else
  // (a CTE, a subquery, a function: -1), under its alias or name.
  struct Name {
    std::string schema;  // for tables named with their schema
    std::string name;
    int table;
  };
  struct Scope {
    int parent;
    std::vector<Name> names;
    std::vector<std::string> ctes;
  };
  std::vector<Scope> scopes_;

  int NewScope(int parent) {
    scopes_.push_back(Scope{parent, {}, {}});
    return static_cast<int>(scopes_.size()) - 1;
  }

  bool IsCte(int scope, const std::string& name) const {
    for (; scope >= 0; scope = scopes_[scope].parent) {
      const auto& ctes = scopes_[scope].ctes;
      if (std::find(ctes.begin(), ctes.end(), name) != ctes.end()) return true;
    }
    return false;
  }

  int TableIndex(const std::string& schema, const std::string& table) {
    for (size_t i = 0; i < tables.size(); ++i) {
      if (tables[i].schema == schema && tables[i].table == table) return static_cast<int>(i);
    }
    tables.push_back(TableColumns{schema, table, {}, {}, {}, {}});
    return static_cast<int>(tables.size()) - 1;
  }

  // An UPDATE or a DELETE, in a scope of its own: its WITH, its table, the
  // other tables it reads (`from`: UPDATE's FROM, DELETE's USING) and WHERE.
  template <typename Stmt>
  void Change(const Stmt& stmt, const NodeList& from, int parent, int depth) {
    const int scope = NewScope(parent);
    With(stmt.with_clause(), stmt.has_with_clause(), scope, depth);
    if (stmt.has_relation()) AddRangeVar(stmt.relation(), scope);
    for (const pg_query::Node& n : from) FromItem(n, scope, depth + 1);
    if (stmt.has_where_clause()) Predicate(stmt.where_clause(), scope, depth + 1);
  }

  void With(const pg_query::WithClause& with, bool present, int scope, int depth) {
    if (!present) return;
    for (const pg_query::Node& n : with.ctes()) {
      if (n.has_common_table_expr()) scopes_[scope].ctes.push_back(n.common_table_expr().ctename());
    }
    for (const pg_query::Node& n : with.ctes()) {
      if (n.has_common_table_expr() && n.common_table_expr().has_ctequery()) {
        Statement(n.common_table_expr().ctequery(), scope, depth + 1);
      }
    }
  }

  void Select(const pg_query::SelectStmt& select, int parent, int depth) {
    if (depth > kMaxDepth) return;
    if (select.op() != pg_query::SETOP_NONE && select.op() != pg_query::SET_OPERATION_UNDEFINED) {
      const int scope = NewScope(parent);
      With(select.with_clause(), select.has_with_clause(), scope, depth);
      if (select.has_larg()) Select(select.larg(), scope, depth + 1);
      if (select.has_rarg()) Select(select.rarg(), scope, depth + 1);
      return;
    }
    const int scope = NewScope(parent);
    With(select.with_clause(), select.has_with_clause(), scope, depth);
    for (const pg_query::Node& n : select.from_clause()) FromItem(n, scope, depth + 1);
    if (select.has_where_clause()) Predicate(select.where_clause(), scope, depth + 1);
    for (const pg_query::Node& n : select.target_list()) {
      if (n.has_res_target() && n.res_target().has_val() && n.res_target().val().has_sub_link()) {
        SubLink(n.res_target().val().sub_link(), scope, depth + 1);
      }
    }
    Order(select.sort_clause(), scope);
  }

  void AddRangeVar(const pg_query::RangeVar& rv, int scope) {
    const std::string& alias = rv.has_alias() ? rv.alias().aliasname() : rv.relname();
    if (rv.schemaname().empty() && IsCte(scope, rv.relname())) {
      scopes_[scope].names.push_back(Name{"", alias, -1});
      return;
    }
    const int table = TableIndex(rv.schemaname(), rv.relname());
    scopes_[scope].names.push_back(Name{rv.has_alias() ? "" : rv.schemaname(), alias, table});
  }

  // Adds a FROM item's names to `scope`, and records its joins' columns.
  void FromItem(const pg_query::Node& node, int scope, int depth) {
    if (depth > kMaxDepth) return;
    switch (node.node_case()) {
      case pg_query::Node::kRangeVar:
        AddRangeVar(node.range_var(), scope);
        return;
      case pg_query::Node::kJoinExpr: {
        const pg_query::JoinExpr& join = node.join_expr();
        const size_t before = scopes_[scope].names.size();
        if (join.has_larg()) FromItem(join.larg(), scope, depth + 1);
        if (join.has_rarg()) FromItem(join.rarg(), scope, depth + 1);
        const size_t after = scopes_[scope].names.size();
        for (const pg_query::Node& u : join.using_clause()) {
          if (!u.has_string()) continue;
          // The column is in a table of each side; the catalog says which.
          for (size_t i = before; i < after; ++i) {
            const int t = scopes_[scope].names[i].table;
            if (t >= 0) Record(t, u.string().sval(), Use::kJoin);
          }
        }
        if (join.has_quals()) Predicate(join.quals(), scope, depth + 1);
        return;
      }
      case pg_query::Node::kRangeSubselect: {
        const pg_query::RangeSubselect& sub = node.range_subselect();
        if (sub.has_subquery()) Statement(sub.subquery(), scope, depth + 1);
        if (sub.has_alias()) scopes_[scope].names.push_back(Name{"", sub.alias().aliasname(), -1});
        return;
      }
      case pg_query::Node::kRangeFunction: {
        const pg_query::RangeFunction& fn = node.range_function();
        if (fn.has_alias()) scopes_[scope].names.push_back(Name{"", fn.alias().aliasname(), -1});
        return;
      }
      default:
        return;
    }
  }

  void Record(int table, const std::string& column, Use use) {
    TableColumns& t = tables[table];
    switch (use) {
      case Use::kEquality:
        AddUnique(&t.equality, column);
        break;
      case Use::kRange:
        AddUnique(&t.range, column);
        break;
      case Use::kJoin:
        AddUnique(&t.join, column);
        break;
      case Use::kOrder:
        AddUnique(&t.order, column);
        break;
    }
  }

  // The tables a column reference may belong to, and the column's name.
  // Empty when it names no table of ours (a subquery's or CTE's column, an
  // unknown qualifier, a whole-row or star reference).
  std::vector<int> Resolve(const pg_query::ColumnRef& ref, int scope, std::string* column) const {
    std::vector<absl::string_view> parts;
    for (const pg_query::Node& f : ref.fields()) {
      if (!f.has_string()) return {};
      parts.push_back(f.string().sval());
    }
    if (parts.empty() || parts.size() > 3) return {};
    *column = std::string(parts.back());
    if (parts.size() == 1) {
      // The innermost scope that has FROM items.
      for (int s = scope; s >= 0; s = scopes_[s].parent) {
        if (scopes_[s].names.empty()) continue;
        std::vector<int> out;
        for (const Name& n : scopes_[s].names) {
          if (n.table >= 0 && std::find(out.begin(), out.end(), n.table) == out.end()) {
            out.push_back(n.table);
          }
        }
        return out;
      }
      return {};
    }
    const absl::string_view qualifier = parts[parts.size() - 2];
    const absl::string_view schema = parts.size() == 3 ? parts[0] : absl::string_view();
    for (int s = scope; s >= 0; s = scopes_[s].parent) {
      for (const Name& n : scopes_[s].names) {
        if (n.name != qualifier) continue;
        if (!schema.empty() && n.schema != schema) continue;
        if (n.table < 0) return {};
        return {n.table};
      }
    }
    return {};
  }

  static bool IsValue(const pg_query::Node& node, int depth) {
    if (depth > 32) return false;
    switch (node.node_case()) {
      case pg_query::Node::kAConst:
      case pg_query::Node::kParamRef:
        return true;
      case pg_query::Node::kTypeCast:
        return node.type_cast().has_arg() && IsValue(node.type_cast().arg(), depth + 1);
      case pg_query::Node::kAArrayExpr:
        for (const pg_query::Node& e : node.a_array_expr().elements()) {
          if (!IsValue(e, depth + 1)) return false;
        }
        return true;
      case pg_query::Node::kList:
        for (const pg_query::Node& e : node.list().items()) {
          if (!IsValue(e, depth + 1)) return false;
        }
        return true;
      case pg_query::Node::kFuncCall: {
        const pg_query::FuncCall& call = node.func_call();
        if (call.agg_star() || call.has_over() || call.agg_order_size() > 0 ||
            call.has_agg_filter()) {
          return false;
        }
        for (const pg_query::Node& a : call.args()) {
          if (!IsValue(a, depth + 1)) return false;
        }
        return true;
      }
      case pg_query::Node::kSqlvalueFunction:  // CURRENT_DATE, LOCALTIMESTAMP, ...
        return true;
      default:
        return false;
    }
  }

  static bool OperatorIs(const NodeList& name, std::initializer_list<absl::string_view> ops,
                         absl::string_view* which) {
    if (name.size() != 1 || !name[0].has_string()) return false;
    for (absl::string_view op : ops) {
      if (name[0].string().sval() == op) {
        if (which != nullptr) *which = op;
        return true;
      }
    }
    return false;
  }

  void Column(const pg_query::Node& node, int scope, Use use) {
    if (!node.has_column_ref()) return;
    std::string column;
    for (int t : Resolve(node.column_ref(), scope, &column)) Record(t, column, use);
  }

  void Comparison(const pg_query::A_Expr& expr, int scope, Use use) {
    if (!expr.has_lexpr() || !expr.has_rexpr()) return;
    const pg_query::Node& l = expr.lexpr();
    const pg_query::Node& r = expr.rexpr();
    if (l.has_column_ref() && r.has_column_ref()) {
      if (use != Use::kEquality) return;
      std::string lc, rc;
      const std::vector<int> lt = Resolve(l.column_ref(), scope, &lc);
      const std::vector<int> rt = Resolve(r.column_ref(), scope, &rc);
      if (lt.size() != 1 || rt.size() != 1 || lt[0] == rt[0]) return;
      Record(lt[0], lc, Use::kJoin);
      Record(rt[0], rc, Use::kJoin);
      return;
    }
    if (l.has_column_ref() && IsValue(r, 0)) Column(l, scope, use);
    if (r.has_column_ref() && IsValue(l, 0)) Column(r, scope, use);
  }

  void Predicate(const pg_query::Node& node, int scope, int depth) {
    if (depth > kMaxDepth) return;
    switch (node.node_case()) {
      case pg_query::Node::kBoolExpr: {
        const pg_query::BoolExpr& b = node.bool_expr();
        if (b.boolop() == pg_query::NOT_EXPR) return;
        for (const pg_query::Node& a : b.args()) Predicate(a, scope, depth + 1);
        return;
      }
      case pg_query::Node::kAExpr: {
        const pg_query::A_Expr& expr = node.a_expr();
        absl::string_view op;
        switch (expr.kind()) {
          case pg_query::AEXPR_OP:
            if (OperatorIs(expr.name(), {"="}, &op)) {
              Comparison(expr, scope, Use::kEquality);
            } else if (OperatorIs(expr.name(), {"<", "<=", ">", ">="}, &op)) {
              Comparison(expr, scope, Use::kRange);
            }
            return;
          case pg_query::AEXPR_OP_ANY:
          case pg_query::AEXPR_IN:
            if (OperatorIs(expr.name(), {"="}, nullptr) && expr.has_lexpr() && expr.has_rexpr() &&
                IsValue(expr.rexpr(), 0)) {
              Column(expr.lexpr(), scope, Use::kEquality);
            }
            return;
          case pg_query::AEXPR_BETWEEN:
          case pg_query::AEXPR_BETWEEN_SYM:
            if (expr.has_lexpr() && expr.has_rexpr() && IsValue(expr.rexpr(), 0)) {
              Column(expr.lexpr(), scope, Use::kRange);
            }
            return;
          default:
            return;
        }
      }
      case pg_query::Node::kNullTest:
        if (node.null_test().nulltesttype() == pg_query::IS_NULL && node.null_test().has_arg()) {
          Column(node.null_test().arg(), scope, Use::kEquality);
        }
        return;
      case pg_query::Node::kSubLink:
        SubLink(node.sub_link(), scope, depth + 1);
        return;
      default:
        return;
    }
  }

  void SubLink(const pg_query::SubLink& link, int scope, int depth) {
    if (depth > kMaxDepth) return;
    if (link.sub_link_type() == pg_query::ANY_SUBLINK && link.has_testexpr() &&
        (link.oper_name_size() == 0 || OperatorIs(link.oper_name(), {"="}, nullptr))) {
      Column(link.testexpr(), scope, Use::kEquality);
    }
    if (link.has_subselect()) Statement(link.subselect(), scope, depth + 1);
  }

  // The leading plain columns of ORDER BY, as long as they belong to one table.
  void Order(const NodeList& sort, int scope) {
    int table = -1;
    for (const pg_query::Node& n : sort) {
      if (!n.has_sort_by() || !n.sort_by().has_node() || !n.sort_by().node().has_column_ref() ||
          n.sort_by().sortby_dir() == pg_query::SORTBY_USING) {
        return;
      }
      std::string column;
      const std::vector<int> t = Resolve(n.sort_by().node().column_ref(), scope, &column);
      if (t.size() != 1 || (table >= 0 && t[0] != table)) return;
      table = t[0];
      Record(table, column, Use::kOrder);
    }
  }
};

void AddCandidate(std::vector<std::vector<std::string>>* out, std::vector<std::string> columns,
                  size_t max) {
  if (columns.empty() || out->size() >= max) return;
  if (columns.size() > kMaxIndexColumns) columns.resize(kMaxIndexColumns);
  if (std::find(out->begin(), out->end(), columns) == out->end()) {
    out->push_back(std::move(columns));
  }
}

}  // namespace

absl::StatusOr<std::vector<TableColumns>> IndexableColumns(absl::string_view sql) {
  pg_query::ParseResult tree;
  if (absl::Status s = ParseTree(sql, &tree); !s.ok()) return s;
  if (tree.stmts_size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected one statement, found ", tree.stmts_size()));
  }
  Collector collector;
  collector.Statement(tree.stmts(0).stmt(), -1, 0);
  std::vector<TableColumns> out;
  for (TableColumns& t : collector.tables) {
    if (!t.equality.empty() || !t.range.empty() || !t.join.empty() || !t.order.empty()) {
      out.push_back(std::move(t));
    }
  }
  return out;
}

std::vector<std::vector<std::string>> CandidateIndexes(const TableColumns& t, size_t max) {
  std::vector<std::vector<std::string>> out;
  std::vector<std::string> keys = t.equality;  // equality first: any order serves them
  for (const std::string& c : t.join) AddUnique(&keys, c);
  if (keys.size() > 1) AddCandidate(&out, keys, max);
  if (!keys.empty()) {
    for (const std::string& r : t.range) {
      if (std::find(keys.begin(), keys.end(), r) != keys.end()) continue;
      std::vector<std::string> with_range(
          keys.begin(), keys.begin() + std::min(keys.size(), kMaxIndexColumns - 1));
      with_range.push_back(r);
      AddCandidate(&out, std::move(with_range), max);
      break;
    }
    if (!t.order.empty()) {
      std::vector<std::string> with_order(
          keys.begin(), keys.begin() + std::min(keys.size(), kMaxIndexColumns - 1));
      bool added = false;
      for (const std::string& o : t.order) {
        if (std::find(with_order.begin(), with_order.end(), o) != with_order.end()) continue;
        with_order.push_back(o);
        added = true;
      }
      if (added) AddCandidate(&out, std::move(with_order), max);
    }
  }
  for (const auto* list : {&t.equality, &t.join, &t.range}) {
    for (const std::string& c : *list) AddCandidate(&out, {c}, max);
  }
  AddCandidate(&out, t.order, max);
  return out;
}

}  // namespace poolside::sql
