#ifndef POOLSIDE_COMMON_CONFIG_DATABASE_CONFIG_H_
#define POOLSIDE_COMMON_CONFIG_DATABASE_CONFIG_H_

// The `databases` part of a service configuration, shared by every service
// that connects to PostgreSQL: name rules, DSN secrets, the pool options the
// settings stand for, and a DSN described for logs.

#include <cstdint>
#include <functional>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "common/pool/pool.h"
#include "google/protobuf/repeated_ptr_field.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::config {

// Validates `databases[i]`: a name of 1-63 letters, digits, '_', '-', '.' not
// already in `names` (added to it), and exactly one of dsn/dsnFile/dsnEnv,
// which is resolved into `dsn` and must parse as a libpq connection string;
// and its `roles`: unique valid names, at most one of passwordFile/passwordEnv
// (readable now).
// Messages start with `where` and never contain the DSN.
absl::Status FinalizeDatabase(const std::string& where, v1::DatabaseConfig* db,
                              absl::flat_hash_set<std::string>* names);

// A service's whole `databases` list and its `defaultDatabase`: at least one
// database; each validated by FinalizeDatabase (its `where` is
// "databases[i] (name)"), then given the service's own defaults and checks by
// `each`; the default database is the only one when unset and there is
// exactly one, and must be a configured database when set. `names` receives
// the configured names. The first error is returned.
absl::Status FinalizeDatabases(
    google::protobuf::RepeatedPtrField<v1::DatabaseConfig>* databases,
    std::string* default_database,
    const std::function<absl::Status(const std::string& where, v1::DatabaseConfig* db)>& each,
    absl::flat_hash_set<std::string>* names);

// Fills in the pool timings every service uses where they are unset (0):
// acquire and connect timeouts 5 s, validation after 1 s idle, lifetime
// 30 min, idle timeout 10 min, startup retries for 30 s, and the service's
// `leak_threshold_ms`.
void DefaultPoolTimings(v1::PoolConfig* pool, uint32_t leak_threshold_ms);

// Validates `db->topology` (called by FinalizeDatabase) and fills in its
// defaults: replica entries parse and leave the database, user and password to
// the DSN; Patroni endpoints are http://host:port and exclude `replicas`;
// noReplica is "primary" or "fail"; bounds are within sane ranges.
absl::Status FinalizeTopology(const std::string& where, v1::DatabaseConfig* db);

// The configuration of the pool that runs as database role `role` of `db`
// (both finalized; `role` is one of db.roles()): db with the DSN logging in
// as role.user (default role.name) with its password, if it has one (read
// from its file or environment variable now), and role.pool's fields over
// db.pool (min_idle 0 unless role.pool sets it). Its `roles` are cleared.
absl::StatusOr<v1::DatabaseConfig> RoleDatabaseConfig(const v1::DatabaseConfig& db,
                                                      const v1::DatabaseRole& role);

// The pool settings of `db` (already defaulted) as pool::PoolOptions.
pool::PoolOptions PoolOptionsFor(const v1::DatabaseConfig& db);

// host:port/dbname of a DSN, for logs and messages (never the password).
std::string DescribeDsn(const std::string& dsn);

}  // namespace poolside::config

#endif  // POOLSIDE_COMMON_CONFIG_DATABASE_CONFIG_H_
