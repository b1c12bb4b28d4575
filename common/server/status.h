#ifndef POOLSIDE_COMMON_SERVER_STATUS_H_
#define POOLSIDE_COMMON_SERVER_STATUS_H_

// The one conversion from absl::Status to grpc::Status used by every service
// adapter. Codes map one to one; messages are bounded.

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace poolside::server {

inline constexpr size_t kMaxStatusMessage = 2048;

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace poolside::server

#endif  // POOLSIDE_COMMON_SERVER_STATUS_H_
