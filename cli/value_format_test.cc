#include "cli/value_format.h"

#include <cmath>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace poolside::cli {
namespace {

using poolside::v1::Value;

Value Parse(const char* arg) {
  absl::StatusOr<Value> v = ParseParam(arg);
  EXPECT_TRUE(v.ok()) << arg << ": " << v.status();
  return v.ok() ? *v : Value();
}

TEST(ParseParamTest, ImplicitTypes) {
  EXPECT_EQ(Parse("null").kind_case(), Value::kNullValue);
  EXPECT_EQ(Parse("true").bool_value(), true);
  EXPECT_EQ(Parse("false").kind_case(), Value::kBoolValue);
  EXPECT_EQ(Parse("42").int64_value(), 42);
  EXPECT_EQ(Parse("-7").int64_value(), -7);
  EXPECT_EQ(Parse("+7").int64_value(), 7);
  EXPECT_EQ(Parse("9223372036854775807").int64_value(), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(Parse("-9223372036854775808").int64_value(), std::numeric_limits<int64_t>::min());
  // Text, as given: neither null, a bool nor a number (only lowercase null is NULL).
  for (const char* arg : {"hello", "", "NULL", "http://x", "12abc", "1.2.3", "-", ".", "e5"}) {
    EXPECT_EQ(Parse(arg).text_value(), arg);
  }
}

TEST(ParseParamTest, DecimalsStayExact) {
  // The last is too large for int64: exact numeric rather than a rounded double.
  for (const char* arg :
       {"1.50", "-0.1", ".5", "5.", "1e3", "2.5E-7", "123456789012345678901234567890"}) {
    EXPECT_EQ(Parse(arg).numeric_value(), arg);
  }
}

TEST(ParseParamTest, ExplicitPrefixes) {
  EXPECT_EQ(Parse("int:5").int64_value(), 5);
  for (std::string text : {"5", "", "int:5", "null"}) {
    EXPECT_EQ(Parse(("text:" + text).c_str()).text_value(), text);
  }
  for (std::string numeric : {"1.5", "7", "NaN"}) {
    EXPECT_EQ(Parse(("num:" + numeric).c_str()).numeric_value(), numeric);
  }
  EXPECT_EQ(Parse("double:1.5").double_value(), 1.5);
  EXPECT_EQ(Parse("bool:true").bool_value(), true);
  EXPECT_EQ(Parse("bool:f").bool_value(), false);
  EXPECT_EQ(Parse("null:").kind_case(), Value::kNullValue);
  EXPECT_EQ(Parse("json:{\"a\":[1,2]}").json_value(), "{\"a\":[1,2]}");
  EXPECT_EQ(Parse("bytes:00ff10").bytes_value(), std::string("\x00\xff\x10", 3));
  EXPECT_EQ(Parse("bytes:\\xABcd").bytes_value(), "\xab\xcd");
  EXPECT_EQ(Parse("bytes:0x01").bytes_value(), "\x01");
  EXPECT_EQ(Parse("bytes:").bytes_value(), "");
}

TEST(ParseParamTest, Timestamps) {
  Value v = Parse("ts:2024-01-01T00:00:00Z");
  ASSERT_EQ(v.kind_case(), Value::kTimestampValue);
  EXPECT_EQ(v.timestamp_value().seconds(), 1704067200);
  EXPECT_EQ(v.timestamp_value().nanos(), 0);

  v = Parse("ts:2024-01-01T02:00:00.25+02:00");
  EXPECT_EQ(v.timestamp_value().seconds(), 1704067200);
  EXPECT_EQ(v.timestamp_value().nanos(), 250000000);

  v = Parse("ts:1969-12-31T23:59:59.5Z");  // before the epoch: nanos stay >= 0
  EXPECT_EQ(v.timestamp_value().seconds(), -1);
  EXPECT_EQ(v.timestamp_value().nanos(), 500000000);
}

TEST(ParseParamTest, BadExplicitValuesAreInvalidArgument) {
  for (const char* arg :
       {"int:x", "int:1.5", "int:99999999999999999999", "num:abc", "double:x", "bool:maybe",
        "bytes:abc", "bytes:zz", "ts:yesterday", "ts:2024-01-01", "json:", "null:x"}) {
    absl::StatusOr<Value> v = ParseParam(arg);
    EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument) << arg;
  }
}

TEST(FormatValueTest, EveryKind) {
  Value v;
  EXPECT_EQ(FormatValue(v), "NULL");
  v.set_null_value(poolside::v1::NULL_VALUE);
  EXPECT_EQ(FormatValue(v), "NULL");
  v.set_bool_value(true);
  EXPECT_EQ(FormatValue(v), "true");
  v.set_int64_value(-12);
  EXPECT_EQ(FormatValue(v), "-12");
  v.set_double_value(0.1);
  EXPECT_EQ(FormatValue(v), "0.1");
  v.set_text_value("héllo");
  EXPECT_EQ(FormatValue(v), "héllo");
  v.set_bytes_value(std::string("\x00\xde\xad", 3));
  EXPECT_EQ(FormatValue(v), "\\x00dead");
  v.set_numeric_value("1.500");
  EXPECT_EQ(FormatValue(v), "1.500");
  v.set_json_value("{\"a\": 1}");
  EXPECT_EQ(FormatValue(v), "{\"a\": 1}");
  v.mutable_timestamp_value()->set_seconds(1704067200);
  EXPECT_EQ(FormatValue(v), "2024-01-01T00:00:00Z");
  v.mutable_timestamp_value()->set_nanos(123456000);
  EXPECT_EQ(FormatValue(v), "2024-01-01T00:00:00.123456Z");
}

TEST(FormatValueTest, RoundTripsThroughParse) {
  for (const char* arg : {"ts:2024-02-29T12:34:56.789Z", "bytes:\\x0001ff"}) {
    Value v = Parse(arg);
    EXPECT_EQ(Parse(("text:" + FormatValue(v)).c_str()).text_value(),
              std::string(arg).substr(std::string(arg).find(':') + 1));
  }
}

TEST(FormatDoubleTest, ShortestExact) {
  EXPECT_EQ(FormatDouble(1.0), "1");
  EXPECT_EQ(FormatDouble(-2.5), "-2.5");
  EXPECT_EQ(FormatDouble(1e20), "1e+20");
  EXPECT_EQ(FormatDouble(0.30000000000000004), "0.30000000000000004");
  EXPECT_EQ(FormatDouble(std::nan("")), "NaN");
  EXPECT_EQ(FormatDouble(std::numeric_limits<double>::infinity()), "Infinity");
  EXPECT_EQ(FormatDouble(-std::numeric_limits<double>::infinity()), "-Infinity");
}

TEST(IsNumericTest, NumbersOnly) {
  Value v;
  EXPECT_FALSE(IsNumeric(v));
  v.set_int64_value(1);
  EXPECT_TRUE(IsNumeric(v));
  v.set_numeric_value("1");
  EXPECT_TRUE(IsNumeric(v));
  v.set_double_value(1);
  EXPECT_TRUE(IsNumeric(v));
  v.set_text_value("1");
  EXPECT_FALSE(IsNumeric(v));
}

TEST(EscapeForCellTest, ControlCharacters) {
  EXPECT_EQ(EscapeForCell("a\nb\tc\rd"), "a\\nb\\tc\\rd");
  EXPECT_EQ(EscapeForCell(std::string("x\x01y\x7f", 4)), "x\\x01y\\x7f");
  EXPECT_EQ(EscapeForCell("naïve"), "naïve");
}

}  // namespace
}  // namespace poolside::cli
