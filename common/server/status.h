#ifndef POOLSIDE_COMMON_SERVER_STATUS_H_
#define POOLSIDE_COMMON_SERVER_STATUS_H_

// The one conversion from absl::Status to grpc::Status used by every service
// adapter. Codes map one to one; messages are bounded. A retry delay attached
// with WithRetryDelay() travels as a google.rpc.RetryInfo in the standard
// `grpc-status-details-bin` details (google.rpc.Status).

#include <optional>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "grpcpp/support/status.h"

namespace poolside::server {

inline constexpr size_t kMaxStatusMessage = 2048;

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// `status` with a hint that the call may be retried after `delay` (e.g. with
// RESOURCE_EXHAUSTED from a rate limit). Kept as an absl::Status payload.
absl::Status WithRetryDelay(absl::Status status, absl::Duration delay);
std::optional<absl::Duration> RetryDelayOf(const absl::Status& status);
// The RetryInfo delay in a received status's details, if any (clients, tests).
std::optional<absl::Duration> RetryDelayOf(const grpc::Status& status);

}  // namespace poolside::server

#endif  // POOLSIDE_COMMON_SERVER_STATUS_H_
