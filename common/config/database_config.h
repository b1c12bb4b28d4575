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
// which is resolved into `dsn` and must parse as a libpq connection string.
// Messages start with `where` and never contain the DSN.
absl::Status FinalizeDatabase(const std::string& where, v1::DatabaseConfig* db,
                              absl::flat_hash_set<std::string>* names);

// The pool settings of `db` (already defaulted) as pool::PoolOptions.
pool::PoolOptions PoolOptionsFor(const v1::DatabaseConfig& db);

// host:port/dbname of a DSN, for logs and messages (never the password).
std::string DescribeDsn(const std::string& dsn);

}  // namespace poolside::config

#endif  // POOLSIDE_COMMON_CONFIG_DATABASE_CONFIG_H_
