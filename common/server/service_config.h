#ifndef POOLSIDE_COMMON_SERVER_SERVICE_CONFIG_H_
#define POOLSIDE_COMMON_SERVER_SERVICE_CONFIG_H_

// The checks a service's main() makes of its loaded configuration before
// starting anything, shared by the services that run statements for their
// callers (query, ingest). Errors are INVALID_ARGUMENT naming what is wrong,
// for server::InvalidConfiguration.

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/auth/authorizer.h"
#include "common/server/service_flags.h"
#include "google/protobuf/repeated_ptr_field.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::server {

// Applies the command line over `server` (--listen replaces server.listen
// when given), validates server.telemetry, and returns the authorizer built
// from `auth` with every database role a principal names configured by the
// databases it may use (Authorizer::CheckDatabaseRoles).
absl::StatusOr<std::unique_ptr<auth::Authorizer>> PrepareDatabaseService(
    const ServiceFlags& flags, v1::ServerConfig* server, const v1::AuthConfig& auth,
    const google::protobuf::RepeatedPtrField<v1::DatabaseConfig>& databases);

}  // namespace poolside::server

#endif  // POOLSIDE_COMMON_SERVER_SERVICE_CONFIG_H_
