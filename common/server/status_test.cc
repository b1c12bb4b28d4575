#include "common/server/status.h"

#include <string>

#include "gtest/gtest.h"

namespace poolside::server {
namespace {

TEST(StatusTest, CodesMapOneToOne) {
  for (int code = 0; code <= 16; ++code) {
    absl::Status s(static_cast<absl::StatusCode>(code), code == 0 ? "" : "msg");
    grpc::Status g = ToGrpcStatus(s);
    EXPECT_EQ(static_cast<int>(g.error_code()), code);
    EXPECT_EQ(FromGrpcStatus(g), s);
  }
}

TEST(StatusTest, RetryDelayTravelsAsRetryInfoDetails) {
  absl::Status s =
      WithRetryDelay(absl::ResourceExhaustedError("slow down"), absl::Milliseconds(250));
  EXPECT_EQ(RetryDelayOf(s), absl::Milliseconds(250));
  grpc::Status g = ToGrpcStatus(s);
  EXPECT_EQ(g.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(g.error_message(), "slow down");
  EXPECT_EQ(RetryDelayOf(g), absl::Milliseconds(250));
  EXPECT_FALSE(RetryDelayOf(ToGrpcStatus(absl::ResourceExhaustedError("x"))).has_value());
}

TEST(StatusTest, MessagesAreBounded) {
  grpc::Status g = ToGrpcStatus(absl::InvalidArgumentError(std::string(100000, 'x')));
  EXPECT_LE(g.error_message().size(), kMaxStatusMessage + 3);
}

}  // namespace
}  // namespace poolside::server
