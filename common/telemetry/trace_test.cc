#include "common/telemetry/trace.h"

#include <cstdlib>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/telemetry/otlp_exporter.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fixtures/otlp_receiver.h"

namespace poolside::telemetry {
namespace {

using ::poolside::testing::Attribute;
using ::poolside::testing::Hex;
using ::testing::IsSupersetOf;
using ::testing::Pair;

SpanContext Parent(bool sampled) {
  return *ParseTraceparent(
      absl::StrCat("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-", sampled ? "01" : "00"));
}

TEST(SamplerTest, FollowsTheParent) {
  const TraceId id = NewTraceId();
  EXPECT_TRUE(ParentBasedRatioSampler(0).ShouldSample(Parent(true), id));
  EXPECT_FALSE(ParentBasedRatioSampler(1).ShouldSample(Parent(false), id));
}

TEST(SamplerTest, RatioOfNewTraces) {
  const ParentBasedRatioSampler all(1), none(0), quarter(0.25);
  int sampled = 0;
  constexpr int kTraces = 20000;
  for (int i = 0; i < kTraces; ++i) {
    const TraceId id = NewTraceId();
    EXPECT_TRUE(all.ShouldSample(SpanContext(), id));
    EXPECT_FALSE(none.ShouldSample(SpanContext(), id));
    if (quarter.ShouldSample(SpanContext(), id)) ++sampled;
  }
  // 5000 expected; the standard deviation is ~61.
  EXPECT_GT(sampled, 4500);
  EXPECT_LT(sampled, 5500);
}

TEST(SamplerTest, SameDecisionForTheSameTraceId) {
  const ParentBasedRatioSampler a(0.5), b(0.5);
  for (int i = 0; i < 100; ++i) {
    const TraceId id = NewTraceId();
    EXPECT_EQ(a.ShouldSample(SpanContext(), id), b.ShouldSample(SpanContext(), id));
  }
}

TEST(ResourceTest, ServiceHostAndKubernetesDownwardApi) {
  setenv("POD_NAME", "query-7d9f-abcde", 1);
  setenv("POD_NAMESPACE", "data", 1);
  setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test, service.version=9.9", 1);
  const auto attrs = ProcessResource("poolside-query");
  unsetenv("POD_NAME");
  unsetenv("POD_NAMESPACE");
  unsetenv("OTEL_RESOURCE_ATTRIBUTES");
  // By key; the first of a key given twice counts.
  const std::map<std::string, std::string> by_key(attrs.begin(), attrs.end());
  EXPECT_THAT(
      by_key,
      IsSupersetOf({Pair("service.name", "poolside-query"), Pair("service.version", "9.9"),
                    Pair("k8s.pod.name", "query-7d9f-abcde"), Pair("k8s.namespace.name", "data"),
                    Pair("deployment.environment", "test")}));
  EXPECT_EQ(by_key.count("host.name"), 1u);
  EXPECT_EQ(by_key.count("k8s.node.name"), 0u);
}

TEST(TracingConfigTest, Validation) {
  v1::TracingConfig c;
  EXPECT_TRUE(ValidateTracingConfig(c).ok());
  c.set_sampling_ratio(1.5);
  EXPECT_EQ(ValidateTracingConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c.set_sampling_ratio(0.5);
  c.set_endpoint("http://jaeger:4317");
  EXPECT_EQ(ValidateTracingConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c.set_endpoint("jaeger");
  EXPECT_EQ(ValidateTracingConfig(c).code(), absl::StatusCode::kInvalidArgument);
  c.set_endpoint("jaeger:4317");
  EXPECT_TRUE(ValidateTracingConfig(c).ok());
  c.set_endpoint("");
  auto off = StartTracing(c, "query");
  ASSERT_TRUE(off.ok());
  EXPECT_EQ(*off, nullptr);
  EXPECT_EQ(GlobalTracer(), nullptr);
}

TEST(TracingOffTest, SpansPassTheParentThrough) {
  ASSERT_EQ(GlobalTracer(), nullptr);
  Span span = StartSpan("x", SpanKind::kInternal, Parent(true));
  EXPECT_FALSE(span.recording());
  EXPECT_EQ(FormatTraceparent(span.context()), FormatTraceparent(Parent(true)));
  EXPECT_EQ(GetTracingStats().spans_exported_total, 0u);
}

TEST(TracerTest, RecordsSpansWithParentsAttributesLinksAndStatus) {
  auto receiver = testing::OtlpReceiver::Start();
  ASSERT_TRUE(receiver.ok()) << receiver.status();
  v1::TracingConfig config;
  config.set_endpoint((*receiver)->address());
  config.set_batch_interval_ms(10);
  auto tracer = StartTracing(config, "unit");
  ASSERT_TRUE(tracer.ok()) << tracer.status();
  ASSERT_NE(*tracer, nullptr);
  EXPECT_EQ(GlobalTracer(), tracer->get());

  const SpanContext remote = Parent(true);
  SpanContext root_context, child_context;
  {
    Span root = StartSpan("root", SpanKind::kServer, remote);
    root_context = root.context();
    root.SetAttribute("rpc.system", "grpc");
    root.SetAttribute("rows", 42);
    root.SetAttribute("ratio", 0.5);
    root.SetAttribute("hit", true);
    Span child = StartSpan("child", SpanKind::kInternal, root.context());
    child_context = child.context();
    child.AddLink(Parent(false));
    child.AddEvent("something happened");
    child.SetStatus(absl::UnavailableError("database down"));
  }  // both end here
  ASSERT_TRUE((*tracer)->Flush(absl::Seconds(20)));
  const std::vector<testing::ReceivedSpan> spans = (*receiver)->Spans();
  ASSERT_EQ(spans.size(), 2u);
  const auto& child = spans[0].span.name() == "child" ? spans[0].span : spans[1].span;
  const auto& root = spans[0].span.name() == "root" ? spans[0].span : spans[1].span;
  EXPECT_EQ(spans[0].service, "poolside-unit");

  EXPECT_EQ(Hex(root.trace_id()), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(Hex(root.parent_span_id()), "00f067aa0ba902b7");
  EXPECT_EQ(Hex(root.span_id()), root_context.SpanIdHex());
  EXPECT_EQ(root.kind(), opentelemetry::proto::trace::v1::Span::SPAN_KIND_SERVER);
  EXPECT_EQ(root.flags() & 0x300u, 0x300u);  // parent known to be remote
  EXPECT_EQ(Attribute(root, "rpc.system"), "grpc");
  EXPECT_EQ(Attribute(root, "rows"), "42");
  EXPECT_EQ(Attribute(root, "hit"), "true");
  EXPECT_LE(root.start_time_unix_nano(), root.end_time_unix_nano());

  EXPECT_EQ(Hex(child.trace_id()), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(Hex(child.parent_span_id()), root_context.SpanIdHex());
  EXPECT_EQ(Hex(child.span_id()), child_context.SpanIdHex());
  ASSERT_EQ(child.links_size(), 1);
  EXPECT_EQ(Hex(child.links(0).span_id()), "00f067aa0ba902b7");
  ASSERT_EQ(child.events_size(), 1);
  EXPECT_EQ(child.status().code(), opentelemetry::proto::trace::v1::Status::STATUS_CODE_ERROR);
  EXPECT_NE(child.status().message().find("database down"), std::string::npos);

  // An unsampled parent: nothing recorded, but the context continues.
  Span unsampled = StartSpan("quiet", SpanKind::kInternal, Parent(false));
  EXPECT_FALSE(unsampled.recording());
  EXPECT_TRUE(unsampled.context().valid());
  EXPECT_FALSE(unsampled.context().sampled());
  EXPECT_NE(unsampled.context().SpanIdHex(), "00f067aa0ba902b7");
  unsampled.End();
  ASSERT_TRUE((*tracer)->Flush(absl::Seconds(20)));
  EXPECT_EQ((*receiver)->Spans().size(), 2u);
  EXPECT_EQ(GetTracingStats().spans_exported_total, 2u);

  tracer->reset();
  EXPECT_EQ(GlobalTracer(), nullptr);
}

}  // namespace
}  // namespace poolside::telemetry
