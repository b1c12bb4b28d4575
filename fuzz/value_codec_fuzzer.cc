// libFuzzer target for common/db/value_codec: decoding result cells of every
// type from arbitrary text, and encoding arbitrary parameter Values.
//
// Besides memory errors (ASan/UBSan), it checks the codec's contracts:
// - a decoded cell always has a kind, and text-like types keep their bytes;
// - an encoded parameter is in the exact text form PostgreSQL reads without
//   guessing (e.g. timestamps "YYYY-MM-DD HH:MM:SS.ffffff+00" with a 4-digit
//   year: PostgreSQL reads a 1- or 2-digit year as 20xx/19xx) and decodes back
//   to the value that was sent (timestamps to the microsecond).
//
// Input: byte 0 picks a type OID for the decode half; the rest is the cell
// text, and is also parsed as a serialized poolside.v1.Row whose values are
// encoded.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/string_view.h"
#include "common/db/value_codec.h"
#include "proto/poolside/v1/common.pb.h"

namespace {

using poolside::v1::Value;
namespace oid = poolside::db::oid;

constexpr uint32_t kTypes[] = {oid::kUnknown, oid::kBool,    oid::kBytea,     oid::kName,
                               oid::kInt8,    oid::kInt2,    oid::kInt4,      oid::kText,
                               oid::kOid,     oid::kJson,    oid::kFloat4,    oid::kFloat8,
                               oid::kBpchar,  oid::kVarchar, oid::kTimestamp, oid::kTimestamptz,
                               oid::kNumeric, oid::kJsonb,   1082 /* date */, 2950 /* uuid */};

[[noreturn]] void Fail(const char* what, absl::string_view detail) {
  fprintf(stderr, "value_codec_fuzzer: %s: \"%s\"\n", what, absl::CEscape(detail).c_str());
  abort();
}

// "YYYY-MM-DD HH:MM:SS.ffffff+00".
bool IsIsoTimestamptz(absl::string_view s) {
  static constexpr char kShape[] = "dddd-dd-dd dd:dd:dd.dddddd+00";
  if (s.size() != sizeof(kShape) - 1) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (kShape[i] == 'd' ? !absl::ascii_isdigit(s[i]) : s[i] != kShape[i]) return false;
  }
  return true;
}

void CheckDecode(uint32_t type, absl::string_view text) {
  for (bool is_null : {false, true}) {
    Value out;
    poolside::db::DecodeCell(text.data(), static_cast<int>(text.size()), is_null, type, &out);
    if (out.kind_case() == Value::KIND_NOT_SET) Fail("decoded cell without a kind", text);
    if (is_null != (out.kind_case() == Value::kNullValue)) Fail("NULL mismatch", text);
    if (!is_null && (type == oid::kText || type == oid::kVarchar || type == oid::kUnknown) &&
        out.text_value() != text) {
      Fail("text cell changed", text);
    }
    (void)poolside::db::ValueBytes(out);
  }
}

// An encoded parameter read back as PostgreSQL would return it.
void CheckRoundTrip(const Value& sent, const char* text, int length, uint32_t type) {
  const absl::string_view encoded(text, static_cast<size_t>(length));
  if (sent.kind_case() == Value::kTimestampValue && !IsIsoTimestamptz(encoded)) {
    Fail("timestamp parameter not in PostgreSQL's unambiguous ISO form", encoded);
  }
  Value back;
  poolside::db::DecodeCell(text, length, false, type, &back);
  switch (sent.kind_case()) {
    case Value::kBoolValue:
      if (back.bool_value() != sent.bool_value()) Fail("bool round trip", encoded);
      break;
    case Value::kInt64Value:
      if (!back.has_int64_value() || back.int64_value() != sent.int64_value())
        Fail("int64 round trip", encoded);
      break;
    case Value::kDoubleValue: {
      const double a = sent.double_value(), b = back.double_value();
      if (!back.has_double_value() ||
          (std::isnan(a) ? !std::isnan(b) : std::memcmp(&a, &b, sizeof a) != 0))
        Fail("double round trip", encoded);
      break;
    }
    case Value::kNumericValue:
      if (back.numeric_value() != sent.numeric_value()) Fail("numeric round trip", encoded);
      break;
    case Value::kTimestampValue:
      if (!back.has_timestamp_value() ||
          back.timestamp_value().seconds() != sent.timestamp_value().seconds() ||
          back.timestamp_value().nanos() != sent.timestamp_value().nanos() / 1000 * 1000)
        Fail("timestamp round trip", encoded);
      break;
    default:
      break;
  }
}

void CheckEncode(const poolside::v1::Row& row) {
  poolside::db::EncodedParams params;
  if (!params.Encode(row.values()).ok()) return;
  if (params.size() != row.values_size()) Fail("parameter count changed", "");
  for (int i = 0; i < params.size(); ++i) {
    const Value& v = row.values(i);
    const char* text = params.values()[i];
    const bool is_null = v.kind_case() == Value::KIND_NOT_SET || v.has_null_value();
    if (is_null != (text == nullptr)) Fail("NULL parameter mismatch", "");
    if (text == nullptr) continue;
    if (params.formats()[i] == 1) {  // binary (bytes): exactly the bytes sent
      if (absl::string_view(text, params.lengths()[i]) != v.bytes_value())
        Fail("bytes parameter changed", v.bytes_value());
      continue;
    }
    CheckRoundTrip(v, text, static_cast<int>(strlen(text)), params.types()[i]);
  }
  (void)params.TypeSignature();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint32_t type = kTypes[data[0] % (sizeof(kTypes) / sizeof(kTypes[0]))];
  const absl::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  CheckDecode(type, text);
  (void)poolside::db::IsNumericText(text);
  poolside::v1::Row row;
  if (row.ParseFromArray(text.data(), static_cast<int>(text.size()))) CheckEncode(row);
  return 0;
}
