#include "cli/connection.h"

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace poolside::cli {
namespace {

class ConnectionOptionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : {"POOLSIDE_TOKEN", "POOLSIDE_TOKEN_FILE", "POOLSIDE_TLS_CA"}) unsetenv(v);
  }
};

TEST_F(ConnectionOptionsTest, TakesItsOptionsAnywhereAndLeavesTheRest) {
  std::vector<std::string> args = {"query",    "--token=s3cret", "SELECT $1",
                                   "--tls_ca", "/ca.pem",        "7"};
  absl::StatusOr<ConnectionOptions> o = TakeConnectionOptions(args);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->token, "s3cret");
  EXPECT_FALSE(o->tls.plaintext());
  EXPECT_EQ(o->tls.ca_file(), "/ca.pem");
  EXPECT_EQ(args, (std::vector<std::string>{"query", "SELECT $1", "7"}));
}

TEST_F(ConnectionOptionsTest, PlaintextWithoutTlsOptionsAndEnvironmentDefaults) {
  setenv("POOLSIDE_TOKEN", "from-env", 1);
  std::vector<std::string> args = {"pools"};
  absl::StatusOr<ConnectionOptions> o = TakeConnectionOptions(args);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->token, "from-env");
  EXPECT_TRUE(o->tls.plaintext());

  args = {"--tls", "pools"};
  o = TakeConnectionOptions(args);
  ASSERT_TRUE(o.ok());
  EXPECT_FALSE(o->tls.plaintext());
  EXPECT_TRUE(o->tls.ca_file().empty());
}

TEST_F(ConnectionOptionsTest, TokenFileAndDoubleDash) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/token";
  std::ofstream(path) << "  file-token\n";
  std::vector<std::string> args = {"--token_file", path, "query", "--", "--token=x"};
  absl::StatusOr<ConnectionOptions> o = TakeConnectionOptions(args);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->token, "file-token");
  EXPECT_EQ(args, (std::vector<std::string>{"query", "--", "--token=x"}));

  args = {"--token_file=/nonexistent/t"};
  EXPECT_EQ(TakeConnectionOptions(args).status().code(), absl::StatusCode::kInvalidArgument);
  args = {"--token"};
  EXPECT_EQ(TakeConnectionOptions(args).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace poolside::cli
