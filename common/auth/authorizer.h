#ifndef POOLSIDE_COMMON_AUTH_AUTHORIZER_H_
#define POOLSIDE_COMMON_AUTH_AUTHORIZER_H_

// Who may call a service and what they may do: bearer-token principals with
// roles, database and ingest-table grants, and per-principal rate and
// concurrency limits (v1::AuthConfig). Knows no gRPC: the services' adapters
// pass the `authorization` metadata in (common/auth/grpc_auth.h) and turn the
// statuses into gRPC ones.
//
//   absl::StatusOr<const Principal*> who = authorizer.Authenticate(header);  // UNAUTHENTICATED
//   absl::Status may = authorizer.CheckQuery(**who, "app", /*raw_sql=*/true); // PERMISSION_DENIED
//   absl::Duration retry;
//   absl::StatusOr<Authorizer::Permit> permit = authorizer.Admit(**who, &retry);
//   // RESOURCE_EXHAUSTED (retry after `retry`); keep the permit for the call.
//
// Error messages name the caller's own principal and what it asked for, never
// a token, a hash or anything about other principals.
//
// Thread-safe. Principals live as long as the Authorizer.

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"
#include "common/sync/mutex.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::auth {

enum Role : uint32_t {
  kRead = 1 << 0,
  kWrite = 1 << 1,
  kSql = 1 << 2,
  kIngest = 1 << 3,
  kAdmin = 1 << 4,
  // With kSql: DO, CALL, function/trigger/rule definitions, ALTER ... SET
  // (common/sql's Grants::ddl).
  kDdl = 1 << 5,
};

struct Principal {
  std::string name;
  uint32_t roles = 0;
  bool all_databases = false;
  absl::flat_hash_set<std::string> databases;
  // database -> tables; "*" stands for every table.
  absl::flat_hash_map<std::string, absl::flat_hash_set<std::string>> ingest_tables;
  v1::PrincipalLimits limits;
  // The database role (DatabaseConfig.roles) it runs as: per database, else
  // `database_role`; empty: the database DSN's own user.
  std::string database_role;
  absl::flat_hash_map<std::string, std::string> database_roles;

  bool Has(Role role) const { return (roles & role) != 0; }
  const std::string& DatabaseRoleFor(absl::string_view database) const {
    auto it = database_roles.find(database);
    return it != database_roles.end() ? it->second : database_role;
  }
  // Statements of a principal without `write` run in read-only transactions.
  bool read_only() const { return !Has(kWrite); }
  bool MayUseDatabase(absl::string_view database) const {
    return all_databases || databases.contains(database);
  }
};

class Authorizer {
 public:
  // Reads the principals from config (inline, principals_file, principals_env
  // via `getenv`). INVALID_ARGUMENT naming the principal (never its hash) for a
  // bad entry; also when neither principals nor `disabled` are configured.
  static absl::StatusOr<std::unique_ptr<Authorizer>> Create(const v1::AuthConfig& config,
                                                            Clock* clock = Clock::Real());

  // False when the configuration opted out (auth.disabled): then Authenticate
  // accepts any caller as a principal with every role and database.
  bool enabled() const { return enabled_; }
  // Every database role a principal names (databaseRole, databaseRoles) is
  // configured by each database it may use there: INVALID_ARGUMENT naming the
  // principal, database and role otherwise.
  absl::Status CheckDatabaseRoles(
      const google::protobuf::RepeatedPtrField<v1::DatabaseConfig>& databases) const;
  // Every configured principal (none when disabled), in no particular order.
  std::vector<const Principal*> principals() const;
  size_t size() const { return by_hash_.size(); }

  // `authorization`: the metadata value ("Bearer <token>"), null when absent.
  // UNAUTHENTICATED when absent, malformed or unknown.
  absl::StatusOr<const Principal*> Authenticate(const std::string* authorization) const;

  // A statement on `database` (already resolved from the default): needs
  // `read` or `write`, the database, and for raw SQL the `sql` role.
  absl::Status CheckQuery(const Principal& who, absl::string_view database, bool raw_sql) const;
  // Rows into `table` of `database`: needs `ingest` and the table's grant.
  absl::Status CheckIngest(const Principal& who, absl::string_view database,
                           absl::string_view table) const;
  // Statistics, pools, health checks: needs `admin`. `what` names the call.
  absl::Status CheckAdmin(const Principal& who, absl::string_view what) const;

  // A call admitted under a principal's limits; releases its concurrency slot
  // when destroyed. Movable.
  class Permit {
   public:
    Permit() = default;
    Permit(Permit&& other) noexcept : in_flight_(other.in_flight_) { other.in_flight_ = nullptr; }
    Permit& operator=(Permit&& other) noexcept;
    ~Permit();

   private:
    friend class Authorizer;
    explicit Permit(std::atomic<int>* in_flight) : in_flight_(in_flight) {}
    std::atomic<int>* in_flight_ = nullptr;
  };

  // Takes a token from the principal's bucket and a concurrency slot.
  // RESOURCE_EXHAUSTED when either is used up; `*retry_after` then says when a
  // retry can succeed.
  absl::StatusOr<Permit> Admit(const Principal& who, absl::Duration* retry_after);

 private:
  struct Limiter {
    // sync::Mutex: TSan must see this lock (common/sync/mutex.h).
    sync::Mutex mu;
    double tokens ABSL_GUARDED_BY(mu) = 0;
    absl::Time refilled ABSL_GUARDED_BY(mu);
    std::atomic<int> in_flight{0};
  };

  Authorizer(Clock* clock) : clock_(clock) {}
  absl::Status Add(const v1::PrincipalConfig& config, const v1::PrincipalLimits& defaults);

  Clock* const clock_;
  bool enabled_ = true;
  Principal anonymous_;
  // Keyed by the token's SHA-256 (hex).
  absl::flat_hash_map<std::string, std::unique_ptr<Principal>> by_hash_;
  absl::flat_hash_map<const Principal*, std::unique_ptr<Limiter>> limiters_;
};

}  // namespace poolside::auth

#endif  // POOLSIDE_COMMON_AUTH_AUTHORIZER_H_
