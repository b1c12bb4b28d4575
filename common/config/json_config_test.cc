#include "common/config/json_config.h"

#include <cstdlib>
#include <fstream>

#include "gtest/gtest.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::config {
namespace {

TEST(JsonConfigTest, ParsesCamelAndSnakeCase) {
  v1::QueryServiceConfig c;
  ASSERT_TRUE(ParseJsonConfig(R"({"server": {"listen": "127.0.0.1:0", "drain_timeout_ms": 5},
      "databases": [{"name": "a", "dsn": "dbname=a", "pool": {"maxSize": 3}}]})",
                              &c)
                  .ok());
  EXPECT_EQ(c.server().listen(), "127.0.0.1:0");
  EXPECT_EQ(c.server().drain_timeout_ms(), 5u);
  ASSERT_EQ(c.databases_size(), 1);
  EXPECT_EQ(c.databases(0).pool().max_size(), 3u);
}

TEST(JsonConfigTest, UnknownKeyIsAnError) {
  v1::QueryServiceConfig c;
  absl::Status s = ParseJsonConfig(R"({"server": {"listne": "x"}})", &c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("listne"), absl::string_view::npos) << s;
}

TEST(JsonConfigTest, WrongTypeIsAnError) {
  v1::QueryServiceConfig c;
  EXPECT_EQ(ParseJsonConfig(R"({"server": {"drainTimeoutMs": "soon"}})", &c).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(JsonConfigTest, MissingFileIsNotFound) {
  v1::QueryServiceConfig c;
  EXPECT_EQ(LoadJsonConfig("/nonexistent/poolside.json", &c).code(), absl::StatusCode::kNotFound);
}

TEST(JsonConfigTest, LoadsFileAndNamesItInErrors) {
  const std::string path = std::string(getenv("TEST_TMPDIR")) + "/bad.json";
  std::ofstream(path) << "{ not json";
  v1::QueryServiceConfig c;
  absl::Status s = LoadJsonConfig(path, &c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find(path), absl::string_view::npos);
}

TEST(ResolveSecretTest, ExactlyOneSource) {
  EXPECT_EQ(ResolveSecret("dsn", "", "", "").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveSecret("dsn", "a", "f", "").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*ResolveSecret("dsn", "inline", "", ""), "inline");
}

TEST(ResolveSecretTest, FromFileAndEnvironment) {
  const std::string path = std::string(getenv("TEST_TMPDIR")) + "/secret";
  std::ofstream(path) << "host=db password=s3cret\n";
  EXPECT_EQ(*ResolveSecret("dsn", "", path, ""), "host=db password=s3cret");
  setenv("POOLSIDE_TEST_DSN", "dbname=x", 1);
  EXPECT_EQ(*ResolveSecret("dsn", "", "", "POOLSIDE_TEST_DSN"), "dbname=x");
  absl::StatusOr<std::string> missing = ResolveSecret("dsn", "", "", "POOLSIDE_TEST_UNSET");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace poolside::config
