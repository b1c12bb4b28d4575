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

TEST(StatusTest, MessagesAreBounded) {
  grpc::Status g = ToGrpcStatus(absl::InvalidArgumentError(std::string(100000, 'x')));
  EXPECT_LE(g.error_message().size(), kMaxStatusMessage + 3);
}

}  // namespace
}  // namespace poolside::server
