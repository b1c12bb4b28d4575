#include "common/telemetry/metrics_service.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fixtures/http_get.h"

namespace poolside::telemetry {
namespace {

using ::testing::HasSubstr;

TEST(ServiceMetricsTest, OffWithoutListenStillCollects) {
  auto m = ServiceMetrics::Start("query", v1::TelemetryConfig());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->http(), nullptr);
  const std::string text = (*m)->registry().ScrapeText();
  // Tracing is off in this process: the exporter series are there, all zero.
  EXPECT_THAT(text, HasSubstr("poolside_trace_spans_exported_total 0\n"));
  EXPECT_THAT(text, HasSubstr("poolside_trace_spans_dropped_total{reason=\"queue_full\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("poolside_trace_spans_dropped_total{reason=\"export_failed\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("poolside_trace_queue_spans 0\n"));
}

TEST(ServiceMetricsTest, ServesWhenListenIsSet) {
  v1::TelemetryConfig config;
  config.mutable_metrics()->set_listen("127.0.0.1:0");
  auto m = ServiceMetrics::Start("ingest", config);
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_NE((*m)->http(), nullptr);
  auto page = testing::HttpGet("127.0.0.1", (*m)->http()->port(), "/");
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_NE(page->body.find("<title>poolside ingest</title>"), std::string::npos);
  EXPECT_NE((*m)->NewServerInterceptorFactory(), nullptr);
}

TEST(ServiceMetricsTest, BadListenFailsTheStart) {
  v1::TelemetryConfig config;
  config.mutable_metrics()->set_listen("nowhere");
  auto m = ServiceMetrics::Start("cache", config);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace poolside::telemetry
