#ifndef POOLSIDE_COMMON_CONFIG_DATABASE_ROLES_H_
#define POOLSIDE_COMMON_CONFIG_DATABASE_ROLES_H_

// The start-up check every service that connects to PostgreSQL makes of the
// login roles its configuration names: each database's DSN user and each of
// its `roles` entries (one pool each) must be unprivileged unless the
// database says allowPrivilegedRole (db::VerifyDatabaseRole).

#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/protobuf/repeated_ptr_field.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::config {

// Checks every pool's role of `databases` (finalized), up to `concurrency`
// at once, so a service with a hundred databases starts in about one
// connection's time. FAILED_PRECONDITION naming the database, the role and
// why when one is privileged and not allowed, or when a role's password
// cannot be read; OK when a database cannot be reached now (its pool checks
// each connection it makes). `service` names the connections
// (application_name "poolside-<service>/<database>"). No connection waits
// past `deadline` (by at least a second).
absl::Status VerifyDatabaseRoles(
    const google::protobuf::RepeatedPtrField<v1::DatabaseConfig>& databases,
    absl::string_view service, size_t concurrency, absl::Time deadline);

}  // namespace poolside::config

#endif  // POOLSIDE_COMMON_CONFIG_DATABASE_ROLES_H_
