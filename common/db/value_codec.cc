#include "common/db/value_codec.h"

#include <cmath>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"

namespace poolside::db {
namespace {

// PostgreSQL accepts timestamps from 4713 BC to 294276 AD; protobuf's Timestamp
// from year 1 to 9999. Encoding checks the latter.
constexpr int64_t kMinTimestampSeconds = -62135596800;  // 0001-01-01T00:00:00Z
constexpr int64_t kMaxTimestampSeconds = 253402300799;  // 9999-12-31T23:59:59Z

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool DecodeByteaHex(absl::string_view text, std::string* out) {
  if (text.size() < 2 || text[0] != '\\' || text[1] != 'x') return false;
  text.remove_prefix(2);
  if (text.size() % 2 != 0) return false;
  out->resize(text.size() / 2);
  for (size_t i = 0; i < out->size(); ++i) {
    const int hi = HexDigit(text[2 * i]), lo = HexDigit(text[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    (*out)[i] = static_cast<char>(hi * 16 + lo);
  }
  return true;
}

bool ParseTimestamp(absl::string_view text, bool with_zone, v1::Value* out) {
  // The connection runs with DateStyle=ISO and TimeZone=UTC, so timestamptz
  // reads "2024-01-02 03:04:05.123456+00" and timestamp the same without zone.
  if (with_zone) {
    if (!absl::ConsumeSuffix(&text, "+00")) return false;
  }
  absl::Time t;
  std::string err;
  if (!absl::ParseTime("%Y-%m-%d %H:%M:%E*S", text, absl::UTCTimeZone(), &t, &err)) {
    return false;
  }
  const int64_t seconds = absl::ToUnixSeconds(t);
  if (seconds < kMinTimestampSeconds || seconds > kMaxTimestampSeconds) return false;
  auto* ts = out->mutable_timestamp_value();
  ts->set_seconds(seconds);
  ts->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(t - absl::FromUnixSeconds(seconds))));
  return true;
}

std::string FormatDouble(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  return absl::StrFormat("%.17g", d);
}

}  // namespace

bool IsNumericText(absl::string_view s) {
  if (s == "NaN" || s == "Infinity" || s == "-Infinity") return true;
  size_t i = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  bool digits = false, dot = false;
  for (; i < s.size(); ++i) {
    const char c = s[i];
    if (absl::ascii_isdigit(c)) {
      digits = true;
    } else if (c == '.' && !dot) {
      dot = true;
    } else if ((c == 'e' || c == 'E') && digits) {
      ++i;
      if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
      if (i >= s.size()) return false;
      for (; i < s.size(); ++i)
        if (!absl::ascii_isdigit(s[i])) return false;
      return true;
    } else {
      return false;
    }
  }
  return digits;
}

absl::Status EncodedParams::Encode(const google::protobuf::RepeatedPtrField<v1::Value>& params) {
  const int n = params.size();
  storage_.assign(n, std::string());
  values_.assign(n, nullptr);
  lengths_.assign(n, 0);
  formats_.assign(n, 0);
  types_.assign(n, oid::kUnknown);
  for (int i = 0; i < n; ++i) {
    const v1::Value& v = params[i];
    std::string& s = storage_[i];
    switch (v.kind_case()) {
      case v1::Value::KIND_NOT_SET:
      case v1::Value::kNullValue:
        break;  // NULL of unknown type: PostgreSQL infers it.
      case v1::Value::kBoolValue:
        types_[i] = oid::kBool;
        values_[i] = v.bool_value() ? "t" : "f";
        break;
      case v1::Value::kInt64Value:
        types_[i] = oid::kInt8;
        s = absl::StrCat(v.int64_value());
        values_[i] = s.c_str();
        break;
      case v1::Value::kDoubleValue:
        types_[i] = oid::kFloat8;
        s = FormatDouble(v.double_value());
        values_[i] = s.c_str();
        break;
      case v1::Value::kTextValue:
        if (v.text_value().find('\0') != std::string::npos) {
          return absl::InvalidArgumentError(
              absl::StrCat("parameter $", i + 1,
                           ": text contains a NUL byte, which PostgreSQL "
                           "text cannot hold; send it as bytes_value"));
        }
        // Unknown type: PostgreSQL infers it from context (text, varchar, enum,
        // date, uuid, ...), as it does for a quoted literal.
        values_[i] = v.text_value().c_str();
        break;
      case v1::Value::kBytesValue:
        types_[i] = oid::kBytea;
        formats_[i] = 1;
        values_[i] = v.bytes_value().data();
        lengths_[i] = static_cast<int>(v.bytes_value().size());
        break;
      case v1::Value::kTimestampValue: {
        const auto& ts = v.timestamp_value();
        if (ts.seconds() < kMinTimestampSeconds || ts.seconds() > kMaxTimestampSeconds ||
            ts.nanos() < 0 || ts.nanos() > 999999999) {
          return absl::InvalidArgumentError(
              absl::StrCat("parameter $", i + 1, ": timestamp out of range (years 1 to 9999)"));
        }
        types_[i] = oid::kTimestamptz;
        const absl::Time t = absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
        // Four-digit years: PostgreSQL reads "1-01-01" or "99-01-01" as 2001 or
        // 1999 (two-digit year rules), so years 1-999 need their leading zeros.
        s = absl::FormatTime("%E4Y-%m-%d %H:%M:%E6S+00", t, absl::UTCTimeZone());
        values_[i] = s.c_str();
        break;
      }
      case v1::Value::kNumericValue:
        if (!IsNumericText(v.numeric_value())) {
          return absl::InvalidArgumentError(
              absl::StrCat("parameter $", i + 1,
                           ": numeric_value must be a decimal number "
                           "such as \"-12.50\" or \"1e30\" (or NaN/Infinity)"));
        }
        types_[i] = oid::kNumeric;
        values_[i] = v.numeric_value().c_str();
        break;
      case v1::Value::kJsonValue:
        if (v.json_value().find('\0') != std::string::npos) {
          return absl::InvalidArgumentError(
              absl::StrCat("parameter $", i + 1, ": json contains a NUL byte"));
        }
        // Unknown type so the same value fits json and jsonb columns.
        values_[i] = v.json_value().c_str();
        break;
    }
  }
  return absl::OkStatus();
}

std::string EncodedParams::TypeSignature() const { return absl::StrJoin(types_, ","); }

void DecodeCell(const char* data, int length, bool is_null, uint32_t type_oid, v1::Value* out) {
  if (is_null) {
    out->set_null_value(v1::NULL_VALUE);
    return;
  }
  const absl::string_view text(data, static_cast<size_t>(length));
  switch (type_oid) {
    case oid::kBool:
      out->set_bool_value(text == "t");
      return;
    case oid::kInt2:
    case oid::kInt4:
    case oid::kInt8:
    case oid::kOid: {
      int64_t v;
      if (absl::SimpleAtoi(text, &v)) {
        out->set_int64_value(v);
        return;
      }
      break;
    }
    case oid::kFloat4:
    case oid::kFloat8: {
      if (text == "NaN") {
        out->set_double_value(std::nan(""));
        return;
      }
      if (text == "Infinity") {
        out->set_double_value(HUGE_VAL);
        return;
      }
      if (text == "-Infinity") {
        out->set_double_value(-HUGE_VAL);
        return;
      }
      double v;
      if (absl::SimpleAtod(text, &v)) {
        out->set_double_value(v);
        return;
      }
      break;
    }
    case oid::kNumeric:
      out->set_numeric_value(std::string(text));
      return;
    case oid::kBytea:
      if (DecodeByteaHex(text, out->mutable_bytes_value())) return;
      break;
    case oid::kTimestamptz:
    case oid::kTimestamp:
      if (ParseTimestamp(text, type_oid == oid::kTimestamptz, out)) return;
      break;
    case oid::kJson:
    case oid::kJsonb:
      out->set_json_value(std::string(text));
      return;
    default:
      break;
  }
  out->set_text_value(std::string(text));
}

size_t ValueBytes(const v1::Value& value) {
  switch (value.kind_case()) {
    case v1::Value::kTextValue:
      return value.text_value().size() + 2;
    case v1::Value::kBytesValue:
      return value.bytes_value().size() + 2;
    case v1::Value::kNumericValue:
      return value.numeric_value().size() + 2;
    case v1::Value::kJsonValue:
      return value.json_value().size() + 2;
    case v1::Value::kTimestampValue:
      return 14;
    case v1::Value::kDoubleValue:
      return 10;
    case v1::Value::kInt64Value:
      return 11;
    default:
      return 3;
  }
}

absl::string_view TypeName(uint32_t type_oid) {
  switch (type_oid) {
    case 16:
      return "bool";
    case 17:
      return "bytea";
    case 18:
      return "char";
    case 19:
      return "name";
    case 20:
      return "int8";
    case 21:
      return "int2";
    case 23:
      return "int4";
    case 25:
      return "text";
    case 26:
      return "oid";
    case 114:
      return "json";
    case 142:
      return "xml";
    case 700:
      return "float4";
    case 701:
      return "float8";
    case 790:
      return "money";
    case 869:
      return "inet";
    case 1000:
      return "_bool";
    case 1001:
      return "_bytea";
    case 1005:
      return "_int2";
    case 1007:
      return "_int4";
    case 1009:
      return "_text";
    case 1016:
      return "_int8";
    case 1021:
      return "_float4";
    case 1022:
      return "_float8";
    case 1015:
      return "_varchar";
    case 1042:
      return "bpchar";
    case 1043:
      return "varchar";
    case 1082:
      return "date";
    case 1083:
      return "time";
    case 1114:
      return "timestamp";
    case 1184:
      return "timestamptz";
    case 1186:
      return "interval";
    case 1231:
      return "_numeric";
    case 1266:
      return "timetz";
    case 1700:
      return "numeric";
    case 2950:
      return "uuid";
    case 3802:
      return "jsonb";
    case 3807:
      return "_jsonb";
    default:
      return "";
  }
}

}  // namespace poolside::db
