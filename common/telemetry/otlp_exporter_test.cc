#include "common/telemetry/otlp_exporter.h"

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/fixtures/otlp_receiver.h"

namespace poolside::telemetry {
namespace {

using ::poolside::testing::OtlpReceiver;
using ::poolside::testing::ReceivedSpan;

std::unique_ptr<opentelemetry::proto::trace::v1::Span> NewSpan(int i) {
  auto span = std::make_unique<opentelemetry::proto::trace::v1::Span>();
  span->set_name(absl::StrCat("span ", i));
  span->set_trace_id(std::string(16, '\x01'));
  span->set_span_id(std::string(7, '\x01') + static_cast<char>(i + 1));
  return span;
}

TEST(OtlpExporterTest, ExportsInBatchesWithTheResource) {
  auto receiver = OtlpReceiver::Start();
  ASSERT_TRUE(receiver.ok()) << receiver.status();
  OtlpExporterOptions o;
  o.endpoint = (*receiver)->address();
  o.max_batch_size = 4;
  o.batch_interval = absl::Hours(1);  // only full batches and Flush send
  o.resource = {{"service.name", "unit"}};
  OtlpExporter exporter(o);
  for (int i = 0; i < 10; ++i) exporter.Export(NewSpan(i));
  ASSERT_TRUE(exporter.Flush(absl::Seconds(20)));
  EXPECT_EQ((*receiver)->Spans().size(), 10u);
  for (const ReceivedSpan& s : (*receiver)->Spans()) EXPECT_EQ(s.service, "unit");
  const ExporterStats stats = exporter.stats();
  EXPECT_EQ(stats.spans_exported_total, 10u);
  EXPECT_EQ(stats.spans_dropped_total(), 0u);
  EXPECT_GE(stats.export_requests_total, 3u);  // 4 + 4 + 2
}

TEST(OtlpExporterTest, AFullQueueDropsAndCountsInsteadOfWaiting) {
  auto receiver = OtlpReceiver::Start();
  ASSERT_TRUE(receiver.ok()) << receiver.status();
  (*receiver)->Hold();  // a collector that does not answer
  OtlpExporterOptions o;
  o.endpoint = (*receiver)->address();
  o.max_batch_size = 1;
  o.max_queue_size = 5;
  o.export_timeout = absl::Seconds(60);
  OtlpExporter exporter(o);
  exporter.Export(NewSpan(0));
  // The exporter's thread is now stuck on the first batch...
  ASSERT_TRUE((*receiver)->WaitForHeld(1, absl::Seconds(20)));
  // ... so the queue fills: 5 fit, 7 are dropped, and Export never blocks.
  for (int i = 1; i <= 12; ++i) exporter.Export(NewSpan(i));
  ExporterStats stats = exporter.stats();
  EXPECT_EQ(stats.queue_size, 5u);
  EXPECT_EQ(stats.spans_dropped_queue_full_total, 7u);
  EXPECT_EQ(stats.spans_queued_total, 6u);
  (*receiver)->Release();
  ASSERT_TRUE(exporter.Flush(absl::Seconds(20)));
  stats = exporter.stats();
  EXPECT_EQ(stats.spans_exported_total, 6u);
  EXPECT_EQ(stats.spans_dropped_total(), 7u);
}

TEST(OtlpExporterTest, AnUnreachableCollectorDropsAndCounts) {
  // A port nothing listens on: take one from a receiver, then stop it.
  std::string address;
  {
    auto receiver = OtlpReceiver::Start();
    ASSERT_TRUE(receiver.ok()) << receiver.status();
    address = (*receiver)->address();
  }
  OtlpExporterOptions o;
  o.endpoint = address;
  o.max_batch_size = 2;
  o.export_timeout = absl::Seconds(2);
  OtlpExporter exporter(o);
  for (int i = 0; i < 4; ++i) exporter.Export(NewSpan(i));
  ASSERT_TRUE(exporter.Flush(absl::Seconds(30)));
  const ExporterStats stats = exporter.stats();
  EXPECT_EQ(stats.spans_exported_total, 0u);
  EXPECT_EQ(stats.spans_dropped_export_failed_total, 4u);
  EXPECT_GE(stats.export_failures_total, 1u);
}

}  // namespace
}  // namespace poolside::telemetry
