#include "common/server/service_config.h"

#include <utility>

#include "common/telemetry/metrics_service.h"

namespace poolside::server {

absl::StatusOr<std::unique_ptr<auth::Authorizer>> PrepareDatabaseService(
    const ServiceFlags& flags, v1::ServerConfig* server, const v1::AuthConfig& auth,
    const google::protobuf::RepeatedPtrField<v1::DatabaseConfig>& databases) {
  if (!flags.listen.empty()) server->set_listen(flags.listen);
  if (absl::Status s = telemetry::ValidateTelemetryConfig(server->telemetry()); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<auth::Authorizer>> authorizer = auth::Authorizer::Create(auth);
  if (!authorizer.ok()) return authorizer.status();
  if (absl::Status s = (*authorizer)->CheckDatabaseRoles(databases); !s.ok()) return s;
  return authorizer;
}

}  // namespace poolside::server
