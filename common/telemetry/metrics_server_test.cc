#include "common/telemetry/metrics_server.h"

#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "tests/fixtures/http_get.h"

namespace poolside::telemetry {
namespace {

using ::poolside::testing::HttpGet;

TEST(MetricsServerTest, ServesMetricsAndStatusPage) {
  MetricsRegistry metrics("cache");
  auto r = metrics.AddCollector([](auto* out) {
    out->push_back(CounterFamily("poolside_test_hits_total", "Hits."));
    AddCounter(&out->back(), {}, 42);
  });
  auto s = metrics.AddStatusSection([] { return StatusTable{"Cache", {"hits"}, {{"42"}}}; });
  const std::string port_file = std::string(getenv("TEST_TMPDIR")) + "/metrics.port";
  absl::StatusOr<std::unique_ptr<MetricsServer>> server =
      MetricsServer::Start("127.0.0.1:0", port_file, &metrics);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  ASSERT_GT(port, 0);
  int written = 0;
  std::ifstream(port_file) >> written;
  EXPECT_EQ(written, port);

  auto m = HttpGet("127.0.0.1", port, "/metrics");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->status, 200);
  EXPECT_EQ(m->content_type, "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_NE(m->body.find("poolside_test_hits_total 42\n"), std::string::npos) << m->body;
  EXPECT_NE(m->body.find("poolside_process_open_fds "), std::string::npos) << m->body;

  auto page = HttpGet("127.0.0.1", port, "/");
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->status, 200);
  EXPECT_EQ(page->content_type, "text/html; charset=utf-8");
  EXPECT_NE(page->body.find("<title>poolside cache</title>"), std::string::npos);
  EXPECT_NE(page->body.find("<td>42</td>"), std::string::npos);

  auto missing = HttpGet("127.0.0.1", port, "/nope");
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_EQ(missing->status, 404);
  auto post = HttpGet("127.0.0.1", port, "/metrics", "POST");
  ASSERT_TRUE(post.ok()) << post.status();
  EXPECT_EQ(post->status, 405);
  auto head = HttpGet("127.0.0.1", port, "/metrics", "HEAD");
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->body, "");
}

TEST(MetricsServerTest, PortInUseIsUnavailable) {
  MetricsRegistry metrics("query");
  auto first = MetricsServer::Start("127.0.0.1:0", "", &metrics);
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string taken = "127.0.0.1:" + std::to_string((*first)->port());
  auto second = MetricsServer::Start(taken, "", &metrics);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
  EXPECT_NE(second.status().message().find(taken), absl::string_view::npos) << second.status();
}

TEST(MetricsServerTest, BadAddressesAreInvalidArgument) {
  MetricsRegistry metrics("query");
  for (const char* bad : {"9451", "127.0.0.1:99999", "127.0.0.1:http", "metrics.example:9451"}) {
    auto s = MetricsServer::Start(bad, "", &metrics);
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << bad << ": " << s.status();
  }
}

TEST(MetricsServerTest, ValidateMetricsConfig) {
  v1::MetricsConfig config;
  EXPECT_TRUE(ValidateMetricsConfig(config).ok());
  config.set_listen("0.0.0.0:9451");
  EXPECT_TRUE(ValidateMetricsConfig(config).ok());
  config.set_listen("[::]:9451");
  EXPECT_TRUE(ValidateMetricsConfig(config).ok());
  config.set_listen("metrics:9451");
  absl::Status s = ValidateMetricsConfig(config);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("server.telemetry.metrics.listen"), absl::string_view::npos) << s;
}

TEST(MetricsServerTest, EmptyListenIsOff) {
  MetricsRegistry metrics("query");
  v1::MetricsConfig config;
  auto s = MetricsServer::Start(config, &metrics);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(*s, nullptr);
  config.set_listen("localhost:0");
  s = MetricsServer::Start(config, &metrics);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_NE(*s, nullptr);
  EXPECT_GT((*s)->port(), 0);
}

}  // namespace
}  // namespace poolside::telemetry
