#ifndef POOLSIDE_SERVICES_QUERY_QUERY_CONFIG_H_
#define POOLSIDE_SERVICES_QUERY_QUERY_CONFIG_H_

// The query service's configuration: proto/poolside/v1/config.proto's
// QueryServiceConfig, validated and with every default filled in, and DSN
// secrets resolved from files or the environment.

#include <string>

#include "absl/status/statusor.h"
#include "common/config/database_config.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::query {

// Loads `path` (JSON), applies defaults, validates. Errors name the file and
// the offending setting, never a DSN's contents.
absl::StatusOr<v1::QueryServiceConfig> LoadQueryConfig(const std::string& path);

// Applies defaults and validates an already parsed config; resolves each
// database's dsn_file/dsn_env into dsn.
absl::StatusOr<v1::QueryServiceConfig> FinalizeQueryConfig(v1::QueryServiceConfig config);

// host/port/dbname of a DSN, for logs (never the password).
using config::DescribeDsn;

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_QUERY_CONFIG_H_
