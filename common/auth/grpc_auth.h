#ifndef POOLSIDE_COMMON_AUTH_GRPC_AUTH_H_
#define POOLSIDE_COMMON_AUTH_GRPC_AUTH_H_

// The gRPC side of Authorizer: reads the `authorization` metadata of a call
// and admits it under the principal's limits, with statuses ready for the
// wire (RESOURCE_EXHAUSTED carries a google.rpc.RetryInfo).
//
//   absl::StatusOr<CallAuth> auth = AuthenticateAndAdmit(authorizer, context);
//   if (!auth.ok()) { reactor->Finish(server::ToGrpcStatus(auth.status())); ... }
//   ... authorizer.CheckQuery(*auth->principal, db, raw) ...
//   // keep auth->permit until the call ends
//
// Thread-safe.

#include "absl/status/statusor.h"
#include "common/auth/authorizer.h"
#include "grpcpp/server_context.h"

namespace poolside::auth {

struct CallAuth {
  const Principal* principal = nullptr;
  Authorizer::Permit permit;
};

// UNAUTHENTICATED, or RESOURCE_EXHAUSTED with a retry delay
// (common/server/status.h WithRetryDelay).
absl::StatusOr<CallAuth> AuthenticateAndAdmit(Authorizer& authorizer,
                                              const grpc::ServerContextBase& context);

}  // namespace poolside::auth

#endif  // POOLSIDE_COMMON_AUTH_GRPC_AUTH_H_
