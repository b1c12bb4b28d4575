#include "common/telemetry/trace_context.h"

#include <string>

#include "gtest/gtest.h"

namespace poolside::telemetry {
namespace {

constexpr char kExample[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

TEST(TraceparentTest, ParsesAndFormatsTheSpecificationExample) {
  std::optional<SpanContext> c = ParseTraceparent(kExample, "congo=t61rcWkgMzE");
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->TraceIdHex(), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(c->SpanIdHex(), "00f067aa0ba902b7");
  EXPECT_TRUE(c->sampled());
  EXPECT_TRUE(c->remote);
  EXPECT_EQ(c->trace_state, "congo=t61rcWkgMzE");
  EXPECT_EQ(FormatTraceparent(*c), kExample);
}

TEST(TraceparentTest, UnsampledFlag) {
  std::optional<SpanContext> c =
      ParseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
  ASSERT_TRUE(c.has_value());
  EXPECT_FALSE(c->sampled());
  EXPECT_EQ(FormatTraceparent(*c), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
}

TEST(TraceparentTest, RejectsMalformedHeaders) {
  const std::string bad[] = {
      "",
      "00",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",        // no flags
      "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",     // uppercase
      "00-00000000000000000000000000000000-00f067aa0ba902b7-01",     // zero trace id
      "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",     // zero span id
      "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",     // forbidden version
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xx",  // v00 has no more fields
      "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",     // separator
      "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",     // not hex
      "0-4bf92f3577b34da6a3ce929d0e0e47361-00f067aa0ba902b7-01",
  };
  for (const std::string& h : bad) EXPECT_FALSE(ParseTraceparent(h).has_value()) << h;
}

TEST(TraceparentTest, AcceptsAHigherVersionWithMoreFields) {
  std::optional<SpanContext> c =
      ParseTraceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future");
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->SpanIdHex(), "00f067aa0ba902b7");
  // Forwarded as the version this process speaks.
  EXPECT_EQ(FormatTraceparent(*c), kExample);
}

TEST(TraceparentTest, DropsAnUnacceptableTracestateButKeepsTheParent) {
  std::optional<SpanContext> c = ParseTraceparent(kExample, std::string(513, 'a'));
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->trace_state, "");
  c = ParseTraceparent(kExample, "a=1\n");
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->trace_state, "");
}

TEST(TraceparentTest, InvalidContextFormatsEmpty) {
  EXPECT_EQ(FormatTraceparent(SpanContext()), "");
  EXPECT_FALSE(SpanContext().valid());
}

TEST(ScopedSpanContextTest, NestsAndRestores) {
  EXPECT_FALSE(CurrentSpanContext().valid());
  SpanContext outer = *ParseTraceparent(kExample);
  {
    ScopedSpanContext a(outer);
    EXPECT_EQ(CurrentSpanContext().SpanIdHex(), "00f067aa0ba902b7");
    SpanContext inner = outer;
    inner.span_id[7] = 0xff;
    {
      ScopedSpanContext b(inner);
      EXPECT_EQ(CurrentSpanContext().SpanIdHex(), "00f067aa0ba902ff");
    }
    EXPECT_EQ(CurrentSpanContext().SpanIdHex(), "00f067aa0ba902b7");
  }
  EXPECT_FALSE(CurrentSpanContext().valid());
}

}  // namespace
}  // namespace poolside::telemetry
