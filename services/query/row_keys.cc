#include "services/query/row_keys.h"

#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/hash/fnv1a.h"

namespace poolside::query {
namespace {

// PostgreSQL's scanner_isspace(), which its integer input functions skip.
bool IsPgSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

std::optional<std::string> CanonicalInteger(absl::string_view s) {
  size_t i = 0;
  while (i < s.size() && IsPgSpace(s[i])) ++i;
  bool negative = false;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) negative = s[i++] == '-';
  const size_t digits_start = i;
  // Accumulate as a negative number: its range holds int64's minimum.
  int64_t value = 0;
  constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
  while (i < s.size() && absl::ascii_isdigit(static_cast<unsigned char>(s[i]))) {
    const int digit = s[i] - '0';
    if (value < (kMin + digit) / 10) return std::nullopt;  // overflow: PostgreSQL refuses it
    value = value * 10 - digit;
    ++i;
  }
  if (i == digits_start) return std::nullopt;
  while (i < s.size() && IsPgSpace(s[i])) ++i;
  if (i != s.size()) return std::nullopt;
  if (!negative) {
    if (value == kMin) return std::nullopt;
    value = -value;
  }
  return absl::StrCat(value);
}

std::optional<std::string> CanonicalUuid(absl::string_view s) {
  if (!s.empty() && s.front() == '{') {
    if (s.size() < 2 || s.back() != '}') return std::nullopt;
    s = s.substr(1, s.size() - 2);
  }
  std::string hex;
  for (char c : s) {
    if (c == '-') continue;
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c)) || hex.size() == 32) {
      return std::nullopt;
    }
    hex.push_back(absl::ascii_tolower(static_cast<unsigned char>(c)));
  }
  if (hex.size() != 32) return std::nullopt;
  return absl::StrCat(hex.substr(0, 8), "-", hex.substr(8, 4), "-", hex.substr(12, 4), "-",
                      hex.substr(16, 4), "-", hex.substr(20));
}

// Whether a cast to `names` keeps a value of `family` what it is (or fails).
bool CastFits(KeyFamily family, const std::vector<std::string>& names) {
  if (names.empty()) return true;
  if (names.size() > 2 || (names.size() == 2 && names[0] != "pg_catalog")) return false;
  const std::string& t = names.back();
  switch (family) {
    case KeyFamily::kInteger:
      return t == "int2" || t == "int4" || t == "int8";
    case KeyFamily::kText:
      return t == "text" || t == "varchar";
    case KeyFamily::kUuid:
      return t == "uuid";
    case KeyFamily::kNone:
      return false;
  }
  return false;
}

}  // namespace

KeyFamily KeyFamilyOf(uint32_t type_oid) {
  switch (type_oid) {
    case 20:  // int8
    case 21:  // int2
    case 23:  // int4
      return KeyFamily::kInteger;
    case 25:    // text
    case 1043:  // varchar
      return KeyFamily::kText;
    case 2950:  // uuid
      return KeyFamily::kUuid;
    default:
      return KeyFamily::kNone;
  }
}

std::optional<std::string> CanonicalKeyText(KeyFamily family, absl::string_view input) {
  switch (family) {
    case KeyFamily::kInteger:
      return CanonicalInteger(input);
    case KeyFamily::kText:
      if (input.find('\0') != absl::string_view::npos) return std::nullopt;
      return std::string(input);
    case KeyFamily::kUuid:
      return CanonicalUuid(input);
    case KeyFamily::kNone:
      return std::nullopt;
  }
  return std::nullopt;
}

std::optional<std::string> CanonicalKeyValue(KeyFamily family, const v1::Value& value) {
  switch (value.kind_case()) {
    case v1::Value::kInt64Value:
      if (family != KeyFamily::kInteger) return std::nullopt;
      return absl::StrCat(value.int64_value());
    case v1::Value::kTextValue:
      return CanonicalKeyText(family, value.text_value());
    default:
      return std::nullopt;
  }
}

std::optional<std::string> CanonicalKeyOperand(
    KeyFamily family, const sql::KeyOperand& operand,
    const google::protobuf::RepeatedPtrField<v1::Value>& params) {
  if (operand.cast_modified || !CastFits(family, operand.cast)) return std::nullopt;
  switch (operand.kind) {
    case sql::KeyOperand::Kind::kParam:
      if (operand.param < 1 || operand.param > params.size()) return std::nullopt;
      return CanonicalKeyValue(family, params[operand.param - 1]);
    case sql::KeyOperand::Kind::kInteger:
    case sql::KeyOperand::Kind::kNumber:
      // A numeric literal compares numerically: only an integer one names
      // one integer key ("42.0" = 42 holds too, but is not recognized here).
      if (family != KeyFamily::kInteger) return std::nullopt;
      return CanonicalInteger(operand.text);
    case sql::KeyOperand::Kind::kString:
      return CanonicalKeyText(family, operand.text);
  }
  return std::nullopt;
}

uint64_t RowKeyHash(const std::vector<std::string>& canonical_values) {
  std::string encoded;
  for (const std::string& v : canonical_values) absl::StrAppend(&encoded, v.size(), ":", v);
  return hash::Fnv1a(encoded);
}

std::string DatabaseTag(absl::string_view db) { return absl::StrCat("db:", db); }

std::string TableTag(absl::string_view db, absl::string_view table) {
  return absl::StrCat("t:", db, ":", table);
}

std::string TableScanTag(absl::string_view db, absl::string_view table) {
  return absl::StrCat("tl:", db, ":", table);
}

std::string RowTag(absl::string_view db, absl::string_view table, uint64_t key_hash) {
  return absl::StrFormat("k:%s:%s:%016x", db, table, key_hash);
}

}  // namespace poolside::query
