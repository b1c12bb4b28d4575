#include "common/auth/grpc_auth.h"

#include <string>

#include "common/server/status.h"

namespace poolside::auth {

absl::StatusOr<CallAuth> AuthenticateAndAdmit(Authorizer& authorizer,
                                              const grpc::ServerContextBase& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  std::string value;
  if (it != metadata.end()) value.assign(it->second.data(), it->second.size());
  absl::StatusOr<const Principal*> who =
      authorizer.Authenticate(it != metadata.end() ? &value : nullptr);
  if (!who.ok()) return who.status();
  absl::Duration retry_after;
  absl::StatusOr<Authorizer::Permit> permit = authorizer.Admit(**who, &retry_after);
  if (!permit.ok()) return server::WithRetryDelay(permit.status(), retry_after);
  CallAuth out;
  out.principal = *who;
  out.permit = *std::move(permit);
  return out;
}

}  // namespace poolside::auth
