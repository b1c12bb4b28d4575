#ifndef POOLSIDE_COMMON_CONFIG_DATABASE_CONFIG_H_
#define POOLSIDE_COMMON_CONFIG_DATABASE_CONFIG_H_

// The `databases` part of a service configuration, shared by every service
// that connects to PostgreSQL: name rules, DSN secrets, the pool options the
// settings stand for, and a DSN described for logs.

#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "common/pool/pool.h"
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
