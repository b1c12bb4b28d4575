#include "cli/value_format.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace poolside::cli {
namespace {

using poolside::v1::Value;

bool IsDigits(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!absl::ascii_isdigit(c)) return false;
  }
  return true;
}

absl::string_view StripSign(absl::string_view s) {
  if (!s.empty() && (s[0] == '+' || s[0] == '-')) s.remove_prefix(1);
  return s;
}

bool IsInteger(absl::string_view s) { return IsDigits(StripSign(s)); }

// [+-](digits[.digits*] | .digits)[(e|E)[+-]digits], with at least a '.' or an
// exponent (plain integers are handled separately).
bool IsDecimal(absl::string_view s) {
  s = StripSign(s);
  size_t e = s.find_first_of("eE");
  absl::string_view mantissa = s.substr(0, e);
  if (e != absl::string_view::npos) {
    if (!IsDigits(StripSign(s.substr(e + 1)))) return false;
  }
  size_t dot = mantissa.find('.');
  if (dot == absl::string_view::npos) {
    return e != absl::string_view::npos && IsDigits(mantissa);
  }
  absl::string_view whole = mantissa.substr(0, dot);
  absl::string_view frac = mantissa.substr(dot + 1);
  if (whole.empty() && frac.empty()) return false;
  return (whole.empty() || IsDigits(whole)) && (frac.empty() || IsDigits(frac));
}

bool IsSpecialNumeric(absl::string_view s) {
  return absl::EqualsIgnoreCase(s, "NaN") || absl::EqualsIgnoreCase(StripSign(s), "Infinity") ||
         absl::EqualsIgnoreCase(StripSign(s), "inf");
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

absl::Status Invalid(absl::string_view kind, absl::string_view text, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("parameter \"", kind, ":", text, "\": ", why));
}

absl::StatusOr<Value> ParseExplicit(absl::string_view kind, absl::string_view text) {
  Value v;
  if (kind == "null") {
    if (!text.empty()) return Invalid(kind, text, "null takes no value");
    v.set_null_value(poolside::v1::NULL_VALUE);
  } else if (kind == "bool") {
    bool b;
    if (!absl::SimpleAtob(text, &b)) {
      return Invalid(kind, text, "not a boolean (true/false)");
    }
    v.set_bool_value(b);
  } else if (kind == "int") {
    int64_t i;
    if (!IsInteger(text) || !absl::SimpleAtoi(text, &i)) {
      return Invalid(kind, text, "not a 64-bit integer");
    }
    v.set_int64_value(i);
  } else if (kind == "double") {
    double d;
    if (!absl::SimpleAtod(text, &d)) return Invalid(kind, text, "not a number");
    v.set_double_value(d);
  } else if (kind == "num") {
    if (!IsInteger(text) && !IsDecimal(text) && !IsSpecialNumeric(text)) {
      return Invalid(kind, text, "not a decimal number");
    }
    v.set_numeric_value(std::string(text));
  } else if (kind == "text") {
    v.set_text_value(std::string(text));
  } else if (kind == "bytes") {
    absl::string_view hex = text;
    if (absl::StartsWith(hex, "\\x") || absl::StartsWithIgnoreCase(hex, "0x")) {
      hex.remove_prefix(2);
    }
    if (hex.size() % 2 != 0) {
      return Invalid(kind, text, "odd number of hex digits");
    }
    std::string bytes;
    bytes.reserve(hex.size() / 2);
    for (size_t i = 0; i < hex.size(); i += 2) {
      int hi = HexDigit(hex[i]);
      int lo = HexDigit(hex[i + 1]);
      if (hi < 0 || lo < 0) return Invalid(kind, text, "not hexadecimal");
      bytes.push_back(static_cast<char>(hi * 16 + lo));
    }
    v.set_bytes_value(std::move(bytes));
  } else if (kind == "json") {
    if (text.empty()) return Invalid(kind, text, "empty JSON");
    v.set_json_value(std::string(text));
  } else if (kind == "ts") {
    absl::Time t;
    std::string err;
    if (!absl::ParseTime(absl::RFC3339_full, text, &t, &err)) {
      return Invalid(kind, text, "not an RFC 3339 timestamp (2024-01-01T00:00:00Z)");
    }
    absl::Duration since_epoch = t - absl::UnixEpoch();
    int64_t seconds = absl::IDivDuration(since_epoch, absl::Seconds(1), &since_epoch);
    int64_t nanos = absl::ToInt64Nanoseconds(since_epoch);
    if (nanos < 0) {  // Timestamp wants nanos in [0, 1e9).
      seconds -= 1;
      nanos += 1000000000;
    }
    v.mutable_timestamp_value()->set_seconds(seconds);
    v.mutable_timestamp_value()->set_nanos(static_cast<int32_t>(nanos));
  } else {
    return absl::InternalError("unknown kind");
  }
  return v;
}

bool IsKnownKind(absl::string_view kind) {
  return kind == "null" || kind == "bool" || kind == "int" || kind == "double" || kind == "num" ||
         kind == "text" || kind == "bytes" || kind == "json" || kind == "ts";
}

std::string FormatTimestamp(const google::protobuf::Timestamp& ts) {
  absl::Time t = absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
  std::string s = absl::FormatTime(absl::RFC3339_full, t, absl::UTCTimeZone());
  if (absl::EndsWith(s, "+00:00")) {
    s.resize(s.size() - 6);
    s.push_back('Z');
  }
  return s;
}

}  // namespace

absl::StatusOr<Value> ParseParam(absl::string_view arg) {
  size_t colon = arg.find(':');
  if (colon != absl::string_view::npos) {
    absl::string_view kind = arg.substr(0, colon);
    if (IsKnownKind(kind)) return ParseExplicit(kind, arg.substr(colon + 1));
  }
  Value v;
  int64_t i;
  if (arg == "null") {
    v.set_null_value(poolside::v1::NULL_VALUE);
  } else if (arg == "true" || arg == "false") {
    v.set_bool_value(arg == "true");
  } else if (IsInteger(arg) && absl::SimpleAtoi(arg, &i)) {
    v.set_int64_value(i);
  } else if (IsInteger(arg) || IsDecimal(arg)) {
    v.set_numeric_value(std::string(arg));
  } else {
    v.set_text_value(std::string(arg));
  }
  return v;
}

std::string FormatDouble(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  char buf[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  return buf;
}

std::string FormatValue(const Value& value) {
  switch (value.kind_case()) {
    case Value::KIND_NOT_SET:
    case Value::kNullValue:
      return "NULL";
    case Value::kBoolValue:
      return value.bool_value() ? "true" : "false";
    case Value::kInt64Value:
      return absl::StrCat(value.int64_value());
    case Value::kDoubleValue:
      return FormatDouble(value.double_value());
    case Value::kTextValue:
      return value.text_value();
    case Value::kBytesValue: {
      static constexpr char kHex[] = "0123456789abcdef";
      std::string out = "\\x";
      out.reserve(2 + 2 * value.bytes_value().size());
      for (unsigned char c : value.bytes_value()) {
        out.push_back(kHex[c >> 4]);
        out.push_back(kHex[c & 15]);
      }
      return out;
    }
    case Value::kTimestampValue:
      return FormatTimestamp(value.timestamp_value());
    case Value::kNumericValue:
      return value.numeric_value();
    case Value::kJsonValue:
      return value.json_value();
  }
  return "?";
}

bool IsNumeric(const Value& value) {
  return value.kind_case() == Value::kInt64Value || value.kind_case() == Value::kDoubleValue ||
         value.kind_case() == Value::kNumericValue;
}

std::string EscapeForCell(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (unsigned char c : text) {
    switch (c) {
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          static constexpr char kHex[] = "0123456789abcdef";
          out += "\\x";
          out.push_back(kHex[c >> 4]);
          out.push_back(kHex[c & 15]);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  return out;
}

}  // namespace poolside::cli
