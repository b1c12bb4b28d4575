#ifndef POOLSIDE_COMMON_DB_CATALOG_H_
#define POOLSIDE_COMMON_DB_CATALOG_H_

// What poolside asks a database's catalog about before trusting a connection
// or a statement:
//  - SessionRole: who a pooled connection is logged in as and whether that
//    role is privileged (superuser, BYPASSRLS, or a member of a role that
//    reaches the server's files, programs or other backends). Services refuse such pools
//    unless the configuration says allowPrivilegedRole.
//  - BuiltinCatalog: which function, operator and relation names are proven
//    free of side effects when a statement is run (built-in, non-volatile
//    functions and operators; relations that are tables, not views), so a
//    statement using only those may share an implicit transaction with other
//    callers' statements.
//
// Both read the catalog through a Connection the caller holds. Thread-safe
// where noted.

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/db/connection.h"

namespace poolside::db {

struct SessionRole {
  std::string user;  // current_user
  bool superuser = false;
  // BYPASSRLS: row-level security does not apply to it (neither the
  // application's policies nor the ones that keep one login's ingest
  // idempotency keys from another's).
  bool bypass_rls = false;
  // The privileged predefined roles it is a member of (pg_execute_server_program,
  // pg_read_server_files, pg_write_server_files, pg_signal_backend).
  std::vector<std::string> privileged_memberships;
  // default_transaction_read_only is on for its sessions.
  bool read_only_by_default = false;

  bool privileged() const { return superuser || bypass_rls || !privileged_memberships.empty(); }
  // "superuser", "BYPASSRLS" and/or "member of pg_read_server_files, pg_signal_backend".
  std::string WhyPrivileged() const;
};

absl::StatusOr<SessionRole> ReadSessionRole(Connection& conn, absl::Time deadline);

// OK for an unprivileged role. Otherwise FAILED_PRECONDITION naming the
// database, the role and why, and what to do, unless `allow_privileged`.
absl::Status CheckSessionRole(const SessionRole& role, absl::string_view database,
                              bool allow_privileged);

// Opens a connection and checks its role: the connection only when the role
// is unprivileged or `allow_privileged` (CheckSessionRole's error
// otherwise). What a pool's factory uses, so no privileged connection is
// ever handed out by accident.
// `abandon` gives up the connect and the role check (Connection::Open).
absl::StatusOr<std::unique_ptr<Connection>> OpenChecked(
    const ConnectionOptions& options, absl::string_view database, bool allow_privileged,
    absl::Span<const std::atomic<bool>* const> abandon = {});

// At a service's start, for one pool: FAILED_PRECONDITION when its role is
// privileged and not allowed (the service must not start); OK otherwise,
// also when the database cannot be reached now (logged: the pool checks
// every connection it makes). Logs a warning when a privileged role is
// allowed. `which` names the pool in logs ("its DSN user", "role app_read").
absl::Status VerifyDatabaseRole(const ConnectionOptions& options, absl::string_view database,
                                absl::string_view which, bool allow_privileged);

// A snapshot of the names a statement may use and still share a Sync.
// Immutable once loaded; thread-safe to read.
class BuiltinCatalog {
 public:
  static absl::StatusOr<BuiltinCatalog> Load(Connection& conn, absl::Time deadline);

  // Every function, operator and relation is safe: functions and operators
  // as written ("lower", "pg_catalog.lower"; unqualified names must not exist
  // outside pg_catalog at all, since a schema earlier in a search_path could
  // hold a volatile overload), relations by name ("accounts",
  // "app.accounts": no view or foreign table carries that name in any
  // schema).
  bool AllSafe(absl::Span<const std::string> functions, absl::Span<const std::string> operators,
               absl::Span<const std::string> relations) const;

  size_t size() const { return functions_.size() + operators_.size() + unsafe_relations_.size(); }

 private:
  absl::flat_hash_set<std::string> functions_;         // safe, unqualified
  absl::flat_hash_set<std::string> operators_;         // safe, unqualified
  absl::flat_hash_set<std::string> unsafe_relations_;  // views, foreign tables
};

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_CATALOG_H_
