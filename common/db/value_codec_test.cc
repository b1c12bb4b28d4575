#include "common/db/value_codec.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "gtest/gtest.h"
#include "tests/fixtures/values.h"

namespace poolside::db {
namespace {

using ::poolside::testing::Double;
using ::poolside::testing::Numeric;
using ::poolside::testing::Params;

v1::Value Decode(absl::string_view text, uint32_t type);

TEST(EncodeTest, TypesAndTextForms) {
  v1::Value ts;
  ts.mutable_timestamp_value()->set_seconds(1700000000);
  ts.mutable_timestamp_value()->set_nanos(123456000);
  v1::Value b;
  b.set_bool_value(true);
  v1::Value null;
  auto params = Params({testing::Int(std::numeric_limits<int64_t>::min()), Double(0.1),
                        testing::Text("héllo"), testing::Bytes(std::string("a\0b", 3)), ts,
                        Numeric("-12.50"), b, null});
  EncodedParams e;
  ASSERT_TRUE(e.Encode(params).ok());
  ASSERT_EQ(e.size(), 8);
  EXPECT_EQ(e.types()[0], oid::kInt8);
  EXPECT_STREQ(e.values()[0], "-9223372036854775808");
  EXPECT_EQ(e.types()[1], oid::kFloat8);
  EXPECT_EQ(std::strtod(e.values()[1], nullptr), 0.1);  // round-trips exactly
  EXPECT_EQ(e.types()[2], oid::kUnknown);               // inferred by PostgreSQL
  EXPECT_STREQ(e.values()[2], "héllo");
  EXPECT_EQ(e.types()[3], oid::kBytea);
  EXPECT_EQ(e.formats()[3], 1);
  EXPECT_EQ(e.lengths()[3], 3);
  EXPECT_EQ(std::memcmp(e.values()[3], "a\0b", 3), 0);
  EXPECT_EQ(e.types()[4], oid::kTimestamptz);
  EXPECT_STREQ(e.values()[4], "2023-11-14 22:13:20.123456+00");
  EXPECT_EQ(e.types()[5], oid::kNumeric);
  EXPECT_STREQ(e.values()[6], "t");
  EXPECT_EQ(e.values()[7], nullptr);
  EXPECT_EQ(e.TypeSignature(), "20,701,0,17,1184,1700,16,0");
}

TEST(EncodeTest, SpecialDoubles) {
  EncodedParams e;
  ASSERT_TRUE(e.Encode(Params({Double(std::nan("")), Double(HUGE_VAL), Double(-HUGE_VAL)})).ok());
  EXPECT_STREQ(e.values()[0], "NaN");
  EXPECT_STREQ(e.values()[1], "Infinity");
  EXPECT_STREQ(e.values()[2], "-Infinity");
}

// Found by fuzz/value_codec_fuzzer: "1-01-01 ..." is 2001-01-01 to PostgreSQL.
TEST(EncodeTest, TimestampsBeforeYear1000KeepFourDigitYears) {
  auto at = [](int64_t seconds) {
    v1::Value v;
    v.mutable_timestamp_value()->set_seconds(seconds);
    return v;
  };
  EncodedParams e;
  ASSERT_TRUE(e.Encode(Params({at(-62135596800), at(-59029948800), at(-30610224000)})).ok());
  EXPECT_STREQ(e.values()[0], "0001-01-01 00:00:00.000000+00");
  EXPECT_STREQ(e.values()[1], "0099-06-01 00:00:00.000000+00");
  EXPECT_STREQ(e.values()[2], "1000-01-01 00:00:00.000000+00");
  EXPECT_EQ(Decode(e.values()[0], oid::kTimestamptz).timestamp_value().seconds(), -62135596800);
}

TEST(EncodeTest, RejectsWhatPostgresCannotTake) {
  EncodedParams e;
  absl::Status s = e.Encode(Params({testing::Int(1), testing::Text(std::string("a\0b", 3))}));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("$2"), absl::string_view::npos);
  EXPECT_EQ(e.Encode(Params({Numeric("12,5")})).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(e.Encode(Params({Numeric("1e")})).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(e.Encode(Params({Numeric("1.5E+30"), Numeric("NaN"), Numeric("-.5")})).ok());
  v1::Value far;
  far.mutable_timestamp_value()->set_seconds(400000000000);
  EXPECT_EQ(e.Encode(Params({far})).code(), absl::StatusCode::kInvalidArgument);
}

v1::Value Decode(absl::string_view text, uint32_t type) {
  v1::Value v;
  DecodeCell(text.data(), static_cast<int>(text.size()), false, type, &v);
  return v;
}

TEST(DecodeTest, ByTypeOid) {
  EXPECT_EQ(Decode("t", oid::kBool).bool_value(), true);
  EXPECT_EQ(Decode("-9223372036854775808", oid::kInt8).int64_value(),
            std::numeric_limits<int64_t>::min());
  EXPECT_EQ(Decode("32767", oid::kInt2).int64_value(), 32767);
  EXPECT_TRUE(std::isnan(Decode("NaN", oid::kFloat8).double_value()));
  EXPECT_EQ(Decode("-Infinity", oid::kFloat4).double_value(), -HUGE_VAL);
  EXPECT_EQ(Decode("0.1", oid::kFloat8).double_value(), 0.1);
  EXPECT_EQ(Decode("123456789012345678901234567890.123", oid::kNumeric).numeric_value(),
            "123456789012345678901234567890.123");
  EXPECT_EQ(Decode("\\x00ff10", oid::kBytea).bytes_value(), std::string("\0\xff\x10", 3));
  EXPECT_EQ(Decode("{\"a\": 1}", oid::kJsonb).json_value(), "{\"a\": 1}");
  EXPECT_EQ(Decode("2024-02-29", 1082).text_value(), "2024-02-29");  // date: text
}

TEST(DecodeTest, Timestamps) {
  v1::Value v = Decode("2023-11-14 22:13:20.123456+00", oid::kTimestamptz);
  ASSERT_TRUE(v.has_timestamp_value());
  EXPECT_EQ(v.timestamp_value().seconds(), 1700000000);
  EXPECT_EQ(v.timestamp_value().nanos(), 123456000);
  v = Decode("2023-11-14 22:13:20", oid::kTimestamp);
  EXPECT_EQ(v.timestamp_value().seconds(), 1700000000);
  EXPECT_EQ(v.timestamp_value().nanos(), 0);
  // Outside protobuf's range: PostgreSQL's text is kept rather than lost.
  EXPECT_EQ(Decode("infinity", oid::kTimestamptz).text_value(), "infinity");
}

TEST(DecodeTest, NullWins) {
  v1::Value v;
  DecodeCell("", 0, true, oid::kInt4, &v);
  EXPECT_EQ(v.kind_case(), v1::Value::kNullValue);
}

}  // namespace
}  // namespace poolside::db
