#include "common/db/copy.h"

#include <libpq-fe.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>

#include "absl/base/casts.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/db/error.h"
#include "common/db/sql_quote.h"
#include "common/db/value_codec.h"

namespace poolside::db {
namespace {

constexpr absl::string_view kCopyLinePayload = "poolside.dev/copy-line";
// COPY data is handed to libpq in pieces of this size.
constexpr size_t kCopyChunk = 256 << 10;

constexpr uint32_t kDate = 1082;
constexpr uint32_t kUuid = 2950;

// PostgreSQL accepts wider ranges; these are protobuf Timestamp's (years 1-9999).
constexpr int64_t kMinTimestampSeconds = -62135596800;
constexpr int64_t kMaxTimestampSeconds = 253402300799;

absl::Status RowError(absl::StatusCode code, absl::string_view sqlstate, std::string message) {
  absl::Status s(code, message);
  s.SetPayload(kSqlStatePayload, absl::Cord(sqlstate));
  return s;
}

absl::Status TypeError(const ColumnInfo& c, absl::string_view what) {
  return RowError(absl::StatusCode::kInvalidArgument, "22P02",
                  absl::StrCat("column \"", c.name, "\" (", c.type, ") cannot take ", what));
}

bool IsTextType(uint32_t oid) {
  return oid == oid::kText || oid == oid::kVarchar || oid == oid::kBpchar || oid == oid::kName;
}
bool IsIntType(uint32_t oid) {
  return oid == oid::kInt2 || oid == oid::kInt4 || oid == oid::kInt8 || oid == oid::kOid;
}
bool IsFloatType(uint32_t oid) { return oid == oid::kFloat4 || oid == oid::kFloat8; }
// Built-in types whose accepted kinds are checked here; any other type takes
// whatever kind it is given and PostgreSQL decides.
bool IsKnownType(uint32_t oid) {
  return IsTextType(oid) || IsIntType(oid) || IsFloatType(oid) || oid == oid::kBool ||
         oid == oid::kBytea || oid == oid::kNumeric || oid == oid::kTimestamp ||
         oid == oid::kTimestamptz || oid == kDate || oid == oid::kJson || oid == oid::kJsonb ||
         oid == kUuid;
}

absl::Status CheckIntRange(const ColumnInfo& c, int64_t v) {
  int64_t lo = std::numeric_limits<int64_t>::min(), hi = std::numeric_limits<int64_t>::max();
  if (c.type_oid == oid::kInt2) lo = -32768, hi = 32767;
  if (c.type_oid == oid::kInt4)
    lo = std::numeric_limits<int32_t>::min(), hi = std::numeric_limits<int32_t>::max();
  if (c.type_oid == oid::kOid) lo = 0, hi = std::numeric_limits<uint32_t>::max();
  if (v < lo || v > hi) {
    return RowError(
        absl::StatusCode::kInvalidArgument, "22003",
        absl::StrCat("value ", v, " is out of range for column \"", c.name, "\" (", c.type, ")"));
  }
  return absl::OkStatus();
}

// Text that PostgreSQL's text input cannot hold.
absl::Status CheckText(const ColumnInfo& c, absl::string_view text) {
  if (text.find('\0') != absl::string_view::npos) {
    return RowError(absl::StatusCode::kInvalidArgument, "22021",
                    absl::StrCat("column \"", c.name,
                                 "\": text contains a NUL byte (send bytes for binary data)"));
  }
  if (!IsValidUtf8(text)) {
    return RowError(absl::StatusCode::kInvalidArgument, "22021",
                    absl::StrCat("column \"", c.name, "\": text is not valid UTF-8"));
  }
  return absl::OkStatus();
}

void AppendHex(absl::string_view bytes, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->append("\\\\x");
  const size_t at = out->size();
  out->resize(at + 2 * bytes.size());
  char* p = out->data() + at;
  for (unsigned char b : bytes) {
    *p++ = kHex[b >> 4];
    *p++ = kHex[b & 15];
  }
}

// "YYYY-MM-DD HH:MM:SS.ffffff+00" for a time in years 1-9999, without
// absl::FormatTime's time zone machinery (this runs once per timestamp cell).
// Days to civil date after H. Hinnant's days_from_civil inverse.
void AppendTimestampUtc(int64_t seconds, int32_t nanos, std::string* out) {
  int64_t days = seconds / 86400, sod = seconds % 86400;
  if (sod < 0) sod += 86400, --days;
  const int64_t z = days + 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const int64_t doe = z - era * 146097;
  const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const int64_t mp = (5 * doy + 2) / 153;
  const int64_t day = doy - (153 * mp + 2) / 5 + 1;
  const int64_t month = mp < 10 ? mp + 3 : mp - 9;
  const int64_t year = yoe + era * 400 + (month <= 2 ? 1 : 0);
  char buf[32];
  auto put = [&buf](int at, int64_t v, int width) {
    for (int i = width - 1; i >= 0; --i, v /= 10) buf[at + i] = static_cast<char>('0' + v % 10);
  };
  put(0, year, 4);
  buf[4] = '-';
  put(5, month, 2);
  buf[7] = '-';
  put(8, day, 2);
  buf[10] = ' ';
  put(11, sod / 3600, 2);
  buf[13] = ':';
  put(14, sod / 60 % 60, 2);
  buf[16] = ':';
  put(17, sod % 60, 2);
  buf[19] = '.';
  put(20, nanos / 1000, 6);
  buf[26] = '+';
  buf[27] = '0';
  buf[28] = '0';
  out->append(buf, 29);
}

std::string ErrorField(const PGresult* res, int field) {
  const char* v = PQresultErrorField(res, field);
  return v != nullptr ? v : "";
}

// ", line 17" in a COPY error context ("COPY events, line 17, column id: ...").
int64_t ParseCopyLine(absl::string_view context) {
  if (!absl::StartsWith(context, "COPY ")) return 0;
  const size_t at = context.find(", line ");
  if (at == absl::string_view::npos) return 0;
  absl::string_view rest = context.substr(at + 7);
  size_t n = 0;
  while (n < rest.size() && absl::ascii_isdigit(rest[n])) ++n;
  int64_t line = 0;
  if (!absl::SimpleAtoi(rest.substr(0, n), &line)) return 0;
  return line;
}

}  // namespace

const ColumnInfo* TableInfo::Find(absl::string_view name) const {
  for (const ColumnInfo& c : columns) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

std::string CopyTarget(const TableInfo& table, absl::Span<const ColumnInfo* const> columns) {
  std::string out = absl::StrCat(table.name, " (");
  for (size_t i = 0; i < columns.size(); ++i) {
    if (i > 0) out.append(", ");
    out.append(QuoteIdentifier(columns[i]->name));
  }
  out.push_back(')');
  return out;
}

bool IsValidUtf8(absl::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    // Overlong forms, surrogates and code points past U+10FFFF.
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) {
      return false;
    }
    i += len;
  }
  return true;
}

void AppendCopyText(absl::string_view text, std::string* out) {
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    const char* esc = nullptr;
    switch (c) {
      case '\\':
        esc = "\\\\";
        break;
      case '\t':
        esc = "\\t";
        break;
      case '\n':
        esc = "\\n";
        break;
      case '\r':
        esc = "\\r";
        break;
      default:
        continue;
    }
    out->append(text.data() + start, i - start);
    out->append(esc);
    start = i + 1;
  }
  out->append(text.data() + start, text.size() - start);
}

namespace {

// Whether `value` may go into `c`, with the error PostgreSQL would give (and
// its SQLSTATE) when not: one check for both formats, so a row is refused
// alike whichever format carries it.
absl::Status CheckField(const v1::Value& value, const ColumnInfo& c) {
  const uint32_t t = c.type_oid;
  const bool known = IsKnownType(t);
  switch (value.kind_case()) {
    case v1::Value::KIND_NOT_SET:
    case v1::Value::kNullValue:
      if (c.not_null) {
        return RowError(
            absl::StatusCode::kFailedPrecondition, "23502",
            absl::StrCat("null value in column \"", c.name, "\" violates not-null constraint"));
      }
      return absl::OkStatus();
    case v1::Value::kBoolValue:
      if (known && t != oid::kBool && !IsTextType(t)) return TypeError(c, "a bool");
      return absl::OkStatus();
    case v1::Value::kInt64Value:
      if (known && !IsIntType(t) && !IsFloatType(t) && t != oid::kNumeric && !IsTextType(t)) {
        return TypeError(c, "an integer");
      }
      if (IsIntType(t)) return CheckIntRange(c, value.int64_value());
      return absl::OkStatus();
    case v1::Value::kDoubleValue:
      if (known && !IsFloatType(t) && t != oid::kNumeric && !IsTextType(t)) {
        return TypeError(c, "a double");
      }
      return absl::OkStatus();
    case v1::Value::kTextValue: {
      const std::string& text = value.text_value();
      if (absl::Status s = CheckText(c, text); !s.ok()) return s;
      if (t == oid::kBytea) return TypeError(c, "text (send bytes)");
      if (IsIntType(t)) {
        int64_t v;
        if (!absl::SimpleAtoi(text, &v)) {
          return RowError(
              absl::StatusCode::kInvalidArgument, "22P02",
              absl::StrCat("invalid input syntax for type ", c.type, " in column \"", c.name,
                           "\": \"", absl::CHexEscape(text.substr(0, 64)), "\""));
        }
        return CheckIntRange(c, v);
      }
      return absl::OkStatus();
    }
    case v1::Value::kBytesValue:
      // Bytes for a text column are text whose encoding the sender could not
      // vouch for (protobuf strings must be UTF-8): checked like text.
      if (IsTextType(t) || t == oid::kJson || t == oid::kJsonb) {
        return CheckText(c, value.bytes_value());
      }
      if (known && t != oid::kBytea) return TypeError(c, "bytes");
      return absl::OkStatus();
    case v1::Value::kTimestampValue: {
      if (known && t != oid::kTimestamp && t != oid::kTimestamptz && t != kDate && !IsTextType(t)) {
        return TypeError(c, "a timestamp");
      }
      const auto& ts = value.timestamp_value();
      if (ts.seconds() < kMinTimestampSeconds || ts.seconds() > kMaxTimestampSeconds ||
          ts.nanos() < 0 || ts.nanos() > 999999999) {
        return RowError(
            absl::StatusCode::kInvalidArgument, "22008",
            absl::StrCat("column \"", c.name, "\": timestamp out of range (years 1 to 9999)"));
      }
      return absl::OkStatus();
    }
    case v1::Value::kNumericValue:
      if (known && t != oid::kNumeric && !IsIntType(t) && !IsFloatType(t) && !IsTextType(t)) {
        return TypeError(c, "a numeric");
      }
      if (!IsNumericText(absl::StripAsciiWhitespace(value.numeric_value()))) {
        return RowError(absl::StatusCode::kInvalidArgument, "22P02",
                        absl::StrCat("column \"", c.name, "\": numeric_value \"",
                                     absl::CHexEscape(value.numeric_value().substr(0, 64)),
                                     "\" is not a decimal number"));
      }
      return absl::OkStatus();
    case v1::Value::kJsonValue:
      if (known && t != oid::kJson && t != oid::kJsonb && !IsTextType(t)) {
        return TypeError(c, "json");
      }
      return CheckText(c, value.json_value());
  }
  return TypeError(c, "an unknown value kind");
}

// A double as text PostgreSQL reads back as the same double.
void AppendDoubleText(double d, std::string* out) {
  if (std::isnan(d)) {
    out->append("NaN");
  } else if (std::isinf(d)) {
    out->append(d > 0 ? "Infinity" : "-Infinity");
  } else {
    // Shortest text that reads back as the same double.
    char buf[32];
    const auto r = std::to_chars(buf, buf + sizeof(buf), d);
    out->append(buf, r.ptr);
  }
}

// Appends a checked value as one COPY text field.
void PutText(const v1::Value& value, const ColumnInfo& c, std::string* out) {
  switch (value.kind_case()) {
    case v1::Value::KIND_NOT_SET:
    case v1::Value::kNullValue:
      out->append("\\N");
      return;
    case v1::Value::kBoolValue:
      out->append(value.bool_value() ? "t" : "f");
      return;
    case v1::Value::kInt64Value:
      absl::StrAppend(out, value.int64_value());
      return;
    case v1::Value::kDoubleValue:
      AppendDoubleText(value.double_value(), out);
      return;
    case v1::Value::kTextValue:
      if (IsIntType(c.type_oid)) {
        // The number that was checked, not the text around it.
        int64_t v = 0;
        (void)absl::SimpleAtoi(value.text_value(), &v);
        absl::StrAppend(out, v);
        return;
      }
      AppendCopyText(value.text_value(), out);
      return;
    case v1::Value::kBytesValue:
      if (IsTextType(c.type_oid) || c.type_oid == oid::kJson || c.type_oid == oid::kJsonb) {
        AppendCopyText(value.bytes_value(), out);
      } else {
        AppendHex(value.bytes_value(), out);
      }
      return;
    case v1::Value::kTimestampValue:
      // A timestamp without time zone ignores the "+00"; UTC is the convention.
      AppendTimestampUtc(value.timestamp_value().seconds(), value.timestamp_value().nanos(), out);
      return;
    case v1::Value::kNumericValue: {
      // Surrounding whitespace is dropped: what is written is exactly the
      // text that was checked (a newline must never reach the COPY line).
      const absl::string_view number = absl::StripAsciiWhitespace(value.numeric_value());
      out->append(number.data(), number.size());
      return;
    }
    case v1::Value::kJsonValue:
      AppendCopyText(value.json_value(), out);
      return;
  }
}

// The column types whose binary form poolside writes, each read by
// PostgreSQL's receive function to the same datum its text input makes of
// poolside's text: not name (namerecv refuses what namein truncates), float4
// (a double rounded once to float, where text is rounded from its decimal),
// numeric, date, uuid and types poolside does not know.
bool HasBinaryForm(uint32_t t) {
  return t == oid::kBool || t == oid::kBytea || t == oid::kInt2 || t == oid::kInt4 ||
         t == oid::kInt8 || t == oid::kOid || t == oid::kFloat8 || t == oid::kText ||
         t == oid::kVarchar || t == oid::kBpchar || t == oid::kJson || t == oid::kJsonb ||
         t == oid::kTimestamp || t == oid::kTimestamptz;
}
bool IsBinaryTextLike(uint32_t t) {
  return t == oid::kText || t == oid::kVarchar || t == oid::kBpchar;
}

void PutBigEndian(uint64_t v, int bytes, std::string* out) {
  for (int i = bytes - 1; i >= 0; --i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// Microseconds from PostgreSQL's epoch (2000-01-01 UTC) to the Unix epoch.
constexpr int64_t kPostgresEpochUnixSeconds = 946684800;

// Appends a checked value's binary form (without its length word). False,
// appending nothing, when only PostgreSQL's text input can read it for this
// column (text for a timestamp column, a numeric for an integer column, ...).
bool PutBinary(const v1::Value& value, const ColumnInfo& c, std::string* out) {
  const uint32_t t = c.type_oid;
  auto put_int = [&](int64_t v) {
    const int width = t == oid::kInt2 ? 2 : (t == oid::kInt4 || t == oid::kOid) ? 4 : 8;
    PutBigEndian(static_cast<uint64_t>(v), width, out);
  };
  auto put_text = [&](absl::string_view text) {
    if (t == oid::kJsonb) out->push_back('\1');  // jsonb's binary format version
    out->append(text.data(), text.size());
  };
  const bool text_like = IsBinaryTextLike(t);
  const bool json_like = t == oid::kJson || t == oid::kJsonb;
  switch (value.kind_case()) {
    case v1::Value::KIND_NOT_SET:
    case v1::Value::kNullValue:
      return true;  // the length word says NULL
    case v1::Value::kBoolValue:
      if (t == oid::kBool) {
        out->push_back(value.bool_value() ? '\1' : '\0');
      } else if (text_like) {
        out->append(value.bool_value() ? "t" : "f");
      } else {
        return false;
      }
      return true;
    case v1::Value::kInt64Value:
      if (IsIntType(t)) {
        put_int(value.int64_value());
      } else if (t == oid::kFloat8) {
        PutBigEndian(absl::bit_cast<uint64_t>(static_cast<double>(value.int64_value())), 8, out);
      } else if (text_like) {
        absl::StrAppend(out, value.int64_value());
      } else {
        return false;
      }
      return true;
    case v1::Value::kDoubleValue:
      if (t == oid::kFloat8) {
        PutBigEndian(absl::bit_cast<uint64_t>(value.double_value()), 8, out);
      } else if (text_like) {
        AppendDoubleText(value.double_value(), out);
      } else {
        return false;
      }
      return true;
    case v1::Value::kTextValue:
      if (IsIntType(t)) {
        int64_t v = 0;
        (void)absl::SimpleAtoi(value.text_value(), &v);
        put_int(v);
      } else if (text_like || json_like) {
        put_text(value.text_value());
      } else {
        return false;
      }
      return true;
    case v1::Value::kBytesValue:
      if (text_like || json_like) {
        put_text(value.bytes_value());
      } else if (t == oid::kBytea) {
        out->append(value.bytes_value());
      } else {
        return false;
      }
      return true;
    case v1::Value::kTimestampValue: {
      const auto& ts = value.timestamp_value();
      if (t == oid::kTimestamp || t == oid::kTimestamptz) {
        // The text form's microseconds: nanoseconds truncated.
        const int64_t micros =
            (ts.seconds() - kPostgresEpochUnixSeconds) * 1000000 + ts.nanos() / 1000;
        PutBigEndian(static_cast<uint64_t>(micros), 8, out);
      } else if (text_like) {
        AppendTimestampUtc(ts.seconds(), ts.nanos(), out);
      } else {
        return false;
      }
      return true;
    }
    case v1::Value::kNumericValue:
      if (!text_like) return false;
      out->append(std::string(absl::StripAsciiWhitespace(value.numeric_value())));
      return true;
    case v1::Value::kJsonValue:
      if (!text_like && !json_like) return false;
      put_text(value.json_value());
      return true;
  }
  return false;
}

}  // namespace

absl::Status AppendCopyField(const v1::Value& value, const ColumnInfo& c, std::string* out) {
  if (absl::Status s = CheckField(value, c); !s.ok()) return s;
  PutText(value, c, out);
  return absl::OkStatus();
}

CopyFormat CopyFormatFor(absl::Span<const ColumnInfo* const> columns) {
  for (const ColumnInfo* c : columns) {
    if (!HasBinaryForm(c->type_oid)) return CopyFormat::kText;
  }
  return CopyFormat::kBinary;
}

absl::string_view CopyBinaryHeader() {
  // Signature, flags (no OIDs), header extension length.
  static constexpr char kHeader[] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0";
  return absl::string_view(kHeader, 19);
}

absl::string_view CopyBinaryTrailer() { return absl::string_view("\377\377", 2); }

absl::Status AppendCopyRow(const v1::Row& row, absl::Span<const ColumnInfo* const> columns,
                           std::string* out) {
  bool needs_text = false;
  return AppendCopyRow(row, columns, CopyFormat::kText, out, &needs_text);
}

absl::Status AppendCopyRow(const v1::Row& row, absl::Span<const ColumnInfo* const> columns,
                           CopyFormat format, std::string* out, bool* needs_text) {
  *needs_text = false;
  if (static_cast<size_t>(row.values_size()) != columns.size()) {
    return RowError(
        absl::StatusCode::kInvalidArgument, "22P04",
        absl::StrCat("row has ", row.values_size(), " values for ", columns.size(), " columns"));
  }
  const size_t start = out->size();
  if (format == CopyFormat::kBinary) PutBigEndian(columns.size(), 2, out);
  for (size_t i = 0; i < columns.size(); ++i) {
    const v1::Value& value = row.values(static_cast<int>(i));
    if (absl::Status s = CheckField(value, *columns[i]); !s.ok()) {
      out->resize(start);
      return s;
    }
    if (format == CopyFormat::kText) {
      if (i > 0) out->push_back('\t');
      PutText(value, *columns[i], out);
      continue;
    }
    const size_t length_at = out->size();
    out->append(4, '\0');
    if (!PutBinary(value, *columns[i], out)) {
      out->resize(start);
      *needs_text = true;
      return absl::OkStatus();
    }
    const bool null =
        value.kind_case() == v1::Value::KIND_NOT_SET || value.kind_case() == v1::Value::kNullValue;
    const size_t length = out->size() - length_at - 4;
    if (length > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
      out->resize(start);
      return RowError(absl::StatusCode::kInvalidArgument, "54000",
                      absl::StrCat("column \"", columns[i]->name, "\": value too large"));
    }
    const uint32_t word = null ? 0xffffffffu : static_cast<uint32_t>(length);
    for (int b = 0; b < 4; ++b) {
      (*out)[length_at + b] = static_cast<char>((word >> (8 * (3 - b))) & 0xff);
    }
  }
  if (format == CopyFormat::kText) out->push_back('\n');
  return absl::OkStatus();
}

int64_t CopyLineOf(const absl::Status& status) {
  auto line = status.GetPayload(kCopyLinePayload);
  int64_t n = 0;
  if (!line.has_value() || !absl::SimpleAtoi(std::string(*line), &n)) return 0;
  return n;
}

absl::StatusOr<TableInfo> DescribeTable(Connection& conn, absl::string_view table,
                                        absl::Time deadline) {
  CopySession session(conn, deadline);
  absl::StatusOr<std::vector<CopySession::TextRow>> rows = session.Query(
      "SELECT c.oid::regclass::text, a.attname, format_type(a.atttypid, a.atttypmod), "
      "CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END, "
      "a.attnotnull OR (t.typtype = 'd' AND t.typnotnull) "
      "FROM pg_class c "
      "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
      "AND a.attgenerated = '' "
      "JOIN pg_type t ON t.oid = a.atttypid "
      "WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p') "
      "ORDER BY a.attnum",
      {std::string(table)});
  if (!rows.ok()) return rows.status();
  if (rows->empty()) {
    return absl::NotFoundError(absl::StrCat("table \"", table, "\" does not exist"));
  }
  TableInfo info;
  for (const CopySession::TextRow& r : *rows) {
    if (r.size() != 5 || !r[0] || !r[1] || !r[2] || !r[3] || !r[4]) {
      return absl::InternalError("unexpected catalog row");
    }
    info.name = *r[0];
    ColumnInfo c;
    c.name = *r[1];
    c.type = *r[2];
    if (!absl::SimpleAtoi(*r[3], &c.type_oid)) return absl::InternalError("bad type oid");
    c.not_null = *r[4] == "t";
    info.columns.push_back(std::move(c));
  }
  return info;
}

CopySession::CopySession(Connection& conn, absl::Time deadline)
    : conn_(conn), deadline_(deadline), pg_(conn.libpq_conn()), wait_(conn, deadline) {}

absl::Status CopySession::Begin() {
  if (begun_) return absl::OkStatus();
  begun_ = true;
  // A pooled connection keeps the statement_timeout of the last statement
  // the Connection ran (its check at connect: seconds), which would cut a
  // COPY waiting for a lock short of this session's deadline.
  return conn_.MatchStatementTimeout(deadline_);
}

absl::Status CopySession::Broken(absl::string_view what) {
  broken_ = true;
  std::string msg = pg_ != nullptr ? PQerrorMessage(pg_) : "";
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  if (msg.size() > kMaxErrorMessage) msg.resize(kMaxErrorMessage);
  return absl::UnavailableError(
      absl::StrCat("connection to the database lost while ", what, msg.empty() ? "" : ": ", msg));
}

absl::Status CopySession::CollectResults(std::vector<TextRow>* rows, int64_t* affected) {
  absl::Status first;
  while (true) {
    if (absl::Status s = wait_.AwaitResult(); !s.ok()) return s;
    PGresult* res = PQgetResult(pg_);
    if (res == nullptr) return first;
    switch (PQresultStatus(res)) {
      case PGRES_TUPLES_OK:
        if (rows != nullptr) {
          const int nf = PQnfields(res);
          for (int r = 0; r < PQntuples(res); ++r) {
            TextRow row(nf);
            for (int f = 0; f < nf; ++f) {
              if (!PQgetisnull(res, r, f)) {
                row[f] = std::string(PQgetvalue(res, r, f), PQgetlength(res, r, f));
              }
            }
            rows->push_back(std::move(row));
          }
        }
        break;
      case PGRES_COMMAND_OK:
      case PGRES_EMPTY_QUERY:
        if (affected != nullptr) *affected = std::strtoll(PQcmdTuples(res), nullptr, 10);
        break;
      case PGRES_COPY_IN:
      case PGRES_COPY_OUT:
      case PGRES_COPY_BOTH:
      case PGRES_BAD_RESPONSE:
        // Only CopyIn() starts a COPY. libpq hands out a COPY result again on
        // every call until the COPY ends, and the protocol has no room for one
        // here: give the connection up.
        PQclear(res);
        if (first.ok()) {
          first = absl::InvalidArgumentError(
              "COPY is not supported here (only CopyIn starts one); the connection was discarded");
        }
        broken_ = true;
        return first;
      default: {
        if (first.ok()) {
          const std::string state = ErrorField(res, PG_DIAG_SQLSTATE);
          std::string primary = ErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
          if (primary.empty()) primary = PQresultErrorMessage(res);
          first = StatusFromSqlState(state, primary, ErrorField(res, PG_DIAG_MESSAGE_DETAIL));
          if (state == "57014" && wait_.cancelled_for_deadline()) {
            first = absl::DeadlineExceededError(
                "statement ran past its deadline and was cancelled (SQLSTATE 57014)");
            first.SetPayload(kSqlStatePayload, absl::Cord("57014"));
          }
          if (int64_t line = ParseCopyLine(ErrorField(res, PG_DIAG_CONTEXT)); line > 0) {
            first.SetPayload(kCopyLinePayload, absl::Cord(absl::StrCat(line)));
          }
        }
        break;
      }
    }
    PQclear(res);
    if (PQstatus(pg_) != CONNECTION_OK) return Broken("running a statement");
  }
}

absl::Status CopySession::Exec(absl::string_view sql) {
  if (broken()) return absl::UnavailableError("connection is broken");
  if (absl::Status s = Begin(); !s.ok()) return s;
  const std::string text(sql);
  if (PQsendQueryParams(pg_, text.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0) != 1) {
    return Broken("sending a statement");
  }
  return CollectResults(nullptr, nullptr);
}

absl::StatusOr<std::vector<CopySession::TextRow>> CopySession::Query(
    absl::string_view sql, const std::vector<std::string>& params) {
  if (broken()) return absl::UnavailableError("connection is broken");
  if (absl::Status s = Begin(); !s.ok()) return s;
  const std::string text(sql);
  std::vector<const char*> values;
  for (const std::string& p : params) values.push_back(p.c_str());
  if (PQsendQueryParams(pg_, text.c_str(), static_cast<int>(values.size()), nullptr, values.data(),
                        nullptr, nullptr, 0) != 1) {
    return Broken("sending a statement");
  }
  std::vector<TextRow> rows;
  absl::Status s = CollectResults(&rows, nullptr);
  if (!s.ok()) return s;
  return rows;
}

absl::StatusOr<int64_t> CopySession::CopyIn(absl::string_view target, absl::string_view data) {
  return CopyIn(target, absl::MakeConstSpan(&data, 1));
}

absl::StatusOr<int64_t> CopySession::CopyIn(absl::string_view target,
                                            absl::Span<const absl::string_view> pieces,
                                            absl::string_view before, CopyFormat format) {
  if (broken()) return absl::UnavailableError("connection is broken");
  if (absl::Status s = Begin(); !s.ok()) return s;
  const bool binary = format == CopyFormat::kBinary;
  const std::string sql = absl::StrCat(before, before.empty() ? "" : "; ", "COPY ", target,
                                       " FROM STDIN", binary ? " (FORMAT binary)" : "");
  std::vector<absl::string_view> framed;
  if (binary) {
    framed.reserve(pieces.size() + 2);
    framed.push_back(CopyBinaryHeader());
    framed.insert(framed.end(), pieces.begin(), pieces.end());
    framed.push_back(CopyBinaryTrailer());
    pieces = framed;
  }
  // The text is poolside's own (a table name, no values): recorded whole.
  StatementLabels labels;
  if (telemetry::GlobalTracer() != nullptr) {
    labels.query_text = sql;
    labels.operation = "COPY";
    // "events (\"id\", \"note\")": the table is what comes before the columns.
    labels.collection = std::string(target.substr(0, target.find(" (")));
    labels.summary = absl::StrCat("COPY ", labels.collection).substr(0, 255);
  }
  telemetry::Span span = conn_.StartStatementSpan(sql, &labels);
  if (span.recording()) {
    size_t bytes = 0;
    for (absl::string_view piece : pieces) bytes += piece.size();
    span.SetAttribute("poolside.copy.bytes", bytes);
  }
  absl::StatusOr<int64_t> copied = SendCopy(sql, pieces);
  Connection::EndStatementSpan(span, copied.status());
  if (copied.ok()) span.SetAttribute("poolside.copy.rows", *copied);
  return copied;
}

absl::StatusOr<int64_t> CopySession::SendCopy(const std::string& sql,
                                              absl::Span<const absl::string_view> pieces) {
  if (PQsendQuery(pg_, sql.c_str()) != 1) return Broken("sending COPY");
  // Wait for CopyInResponse (or an error: no such table, permissions, ...),
  // past the results of statements sent before the COPY.
  if (absl::Status s = wait_.AwaitResult(); !s.ok()) return s;
  PGresult* res = PQgetResult(pg_);
  while (res != nullptr && PQresultStatus(res) == PGRES_COMMAND_OK) {
    PQclear(res);
    if (absl::Status s = wait_.AwaitResult(); !s.ok()) return s;
    res = PQgetResult(pg_);
  }
  if (res == nullptr) return absl::InternalError("COPY: no response");
  if (PQresultStatus(res) != PGRES_COPY_IN) {
    const std::string state = ErrorField(res, PG_DIAG_SQLSTATE);
    std::string primary = ErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (primary.empty()) primary = PQresultErrorMessage(res);
    absl::Status st = StatusFromSqlState(state, primary, ErrorField(res, PG_DIAG_MESSAGE_DETAIL));
    PQclear(res);
    absl::Status rest = CollectResults(nullptr, nullptr);
    if (!rest.ok() && broken()) return rest;
    return st;
  }
  PQclear(res);
  // Non-blocking connection: PQputCopyData returns 0 while libpq's buffer is
  // full; wait for the socket and try again.
  for (absl::string_view data : pieces) {
    size_t at = 0;
    while (at < data.size()) {
      const size_t n = std::min(kCopyChunk, data.size() - at);
      const int rc = PQputCopyData(pg_, data.data() + at, static_cast<int>(n));
      if (rc < 0) return Broken("sending COPY data");
      if (rc == 1) {
        at += n;
        continue;
      }
      if (PQflush(pg_) < 0) return Broken("sending COPY data");
      if (absl::Status s = wait_.WaitForServer(true); !s.ok()) return s;
    }
  }
  while (true) {
    const int rc = PQputCopyEnd(pg_, nullptr);
    if (rc < 0) return Broken("ending COPY");
    if (rc == 1) break;
    if (absl::Status s = wait_.WaitForServer(true); !s.ok()) return s;
  }
  int64_t copied = 0;
  absl::Status s = CollectResults(nullptr, &copied);
  if (!s.ok()) return s;
  return copied;
}

}  // namespace poolside::db
