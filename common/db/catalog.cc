#include "common/db/catalog.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/db/text_rows.h"
#include "common/telemetry/log.h"

namespace poolside::db {
namespace {

absl::StatusOr<std::vector<std::vector<std::string>>> Query(Connection& conn, absl::string_view sql,
                                                            absl::Time deadline) {
  TextRows rows;
  Statement st;
  st.sql = sql;
  st.sink = &rows;
  st.deadline = deadline;
  Statement* ptr = &st;
  absl::Status link = conn.RunIndependent({&ptr, 1});
  if (!link.ok()) return link;
  if (!st.status.ok()) return st.status;
  return std::move(rows.rows);
}

constexpr absl::string_view kSessionRoleSql =
    "SELECT current_user::text, r.rolsuper, r.rolbypassrls, "
    "pg_has_role(current_user, 'pg_execute_server_program', 'MEMBER'), "
    "pg_has_role(current_user, 'pg_read_server_files', 'MEMBER'), "
    "pg_has_role(current_user, 'pg_write_server_files', 'MEMBER'), "
    "pg_has_role(current_user, 'pg_signal_backend', 'MEMBER'), "
    "current_setting('default_transaction_read_only')::bool "
    "FROM pg_catalog.pg_roles r WHERE r.rolname = current_user";

// Names whose every definition is built in and non-volatile ('f': functions,
// 'o': operators), and relation names some view or foreign table carries ('r').
constexpr absl::string_view kBuiltinSql =
    "SELECT 'f', p.proname::text FROM pg_catalog.pg_proc p GROUP BY p.proname "
    "HAVING bool_and(p.pronamespace = 'pg_catalog'::regnamespace AND p.provolatile <> 'v') "
    "UNION ALL "
    "SELECT 'o', o.oprname::text FROM pg_catalog.pg_operator o "
    "JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode::oid GROUP BY o.oprname "
    "HAVING bool_and(o.oprnamespace = 'pg_catalog'::regnamespace AND p.provolatile <> 'v') "
    "UNION ALL "
    "SELECT DISTINCT 'r', c.relname::text FROM pg_catalog.pg_class c WHERE c.relkind IN ('v', 'f')";

// Splits "schema.name" at its last '.' (operators hold no '.').
std::pair<absl::string_view, absl::string_view> SplitQualified(absl::string_view name) {
  const size_t dot = name.rfind('.');
  if (dot == absl::string_view::npos) return {absl::string_view(), name};
  return {name.substr(0, dot), name.substr(dot + 1)};
}

}  // namespace

std::string SessionRole::WhyPrivileged() const {
  if (superuser) return "superuser";
  std::vector<std::string> why;
  if (bypass_rls) why.push_back("BYPASSRLS (row-level security does not apply to it)");
  if (!privileged_memberships.empty()) {
    why.push_back(absl::StrCat("member of ", absl::StrJoin(privileged_memberships, ", ")));
  }
  return absl::StrJoin(why, " and ");
}

absl::StatusOr<SessionRole> ReadSessionRole(Connection& conn, absl::Time deadline) {
  absl::StatusOr<std::vector<std::vector<std::string>>> rows =
      Query(conn, kSessionRoleSql, deadline);
  if (!rows.ok()) return rows.status();
  if (rows->size() != 1 || (*rows)[0].size() != 8) {
    return absl::InternalError("cannot read the connection's role from pg_roles");
  }
  const std::vector<std::string>& r = (*rows)[0];
  SessionRole role;
  role.user = r[0];
  role.superuser = r[1] == "t";
  role.bypass_rls = r[2] == "t" && !role.superuser;
  static constexpr const char* kPrivileged[] = {"pg_execute_server_program", "pg_read_server_files",
                                                "pg_write_server_files", "pg_signal_backend"};
  for (int i = 0; i < 4; ++i) {
    if (r[3 + i] == "t" && !role.superuser) role.privileged_memberships.push_back(kPrivileged[i]);
  }
  role.read_only_by_default = r[7] == "t";
  return role;
}

absl::Status CheckSessionRole(const SessionRole& role, absl::string_view database,
                              bool allow_privileged) {
  if (!role.privileged() || allow_privileged) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "database ", database, ": role \"", role.user, "\" is ", role.WhyPrivileged(),
      ", so any caller could reach through it what the server keeps from its other roles "
      "(files, programs, other backends, rows behind row-level security); "
      "connect as an unprivileged role (docs/security.md) or set allowPrivilegedRole: true "
      "for this database"));
}

absl::StatusOr<std::unique_ptr<Connection>> OpenChecked(
    const ConnectionOptions& options, absl::string_view database, bool allow_privileged,
    absl::Span<const std::atomic<bool>* const> abandon) {
  absl::StatusOr<std::unique_ptr<Connection>> conn = Connection::Open(options, abandon);
  if (!conn.ok()) return conn.status();
  (*conn)->AbandonWhen(abandon);
  absl::StatusOr<SessionRole> role = ReadSessionRole(**conn, absl::Now() + options.connect_timeout);
  (*conn)->AbandonWhen({});
  if (!role.ok()) return role.status();
  if (absl::Status s = CheckSessionRole(*role, database, allow_privileged); !s.ok()) return s;
  return conn;
}

absl::Status VerifyDatabaseRole(const ConnectionOptions& options, absl::string_view database,
                                absl::string_view which, bool allow_privileged) {
  absl::StatusOr<std::unique_ptr<Connection>> conn = Connection::Open(options);
  absl::StatusOr<SessionRole> role =
      conn.ok() ? ReadSessionRole(**conn, absl::Now() + options.connect_timeout) : conn.status();
  if (!role.ok()) {
    telemetry::LogWarning("cannot check a database role now; its pool checks each connection",
                          {{"database", std::string(database)},
                           {"role", std::string(which)},
                           {"error", std::string(role.status().message())}});
    return absl::OkStatus();
  }
  if (absl::Status s = CheckSessionRole(*role, database, allow_privileged); !s.ok()) return s;
  if (role->privileged()) {
    telemetry::LogWarning(
        "privileged database role allowed (allowPrivilegedRole): every caller can reach what "
        "it can",
        {{"database", std::string(database)},
         {"role", role->user},
         {"why", role->WhyPrivileged()}});
  }
  return absl::OkStatus();
}

absl::StatusOr<BuiltinCatalog> BuiltinCatalog::Load(Connection& conn, absl::Time deadline) {
  absl::StatusOr<std::vector<std::vector<std::string>>> rows = Query(conn, kBuiltinSql, deadline);
  if (!rows.ok()) return rows.status();
  BuiltinCatalog c;
  for (const std::vector<std::string>& r : *rows) {
    if (r.size() != 2) continue;
    if (r[0] == "f") c.functions_.insert(r[1]);
    if (r[0] == "o") c.operators_.insert(r[1]);
    if (r[0] == "r") c.unsafe_relations_.insert(r[1]);
  }
  if (c.functions_.empty()) return absl::InternalError("pg_proc lists no built-in function");
  return c;
}

bool BuiltinCatalog::AllSafe(absl::Span<const std::string> functions,
                             absl::Span<const std::string> operators,
                             absl::Span<const std::string> relations) const {
  auto safe = [](const absl::flat_hash_set<std::string>& set, absl::string_view name) {
    auto [schema, base] = SplitQualified(name);
    if (!schema.empty() && schema != "pg_catalog") return false;
    return set.contains(base);
  };
  for (const std::string& f : functions) {
    if (!safe(functions_, f)) return false;
  }
  for (const std::string& o : operators) {
    if (!safe(operators_, o)) return false;
  }
  for (const std::string& r : relations) {
    if (unsafe_relations_.contains(SplitQualified(r).second)) return false;
  }
  return true;
}

}  // namespace poolside::db
