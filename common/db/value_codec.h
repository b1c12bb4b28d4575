#ifndef POOLSIDE_COMMON_DB_VALUE_CODEC_H_
#define POOLSIDE_COMMON_DB_VALUE_CODEC_H_

// Conversion between poolside.v1.Value and PostgreSQL's wire representations.
// Parameters are sent in text format (bytes in binary format) with the type OID
// their kind implies (see common.proto); results are read in text format and
// decoded by column type OID. Never builds SQL text: values only travel as
// parameters.
//
// Thread-compatible; the functions are pure.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/repeated_ptr_field.h"
#include "proto/poolside/v1/common.pb.h"

namespace poolside::db {

// PostgreSQL type OIDs used by the codec (pg_type.dat).
namespace oid {
inline constexpr uint32_t kUnknown = 0;
inline constexpr uint32_t kBool = 16;
inline constexpr uint32_t kBytea = 17;
inline constexpr uint32_t kName = 19;
inline constexpr uint32_t kInt8 = 20;
inline constexpr uint32_t kInt2 = 21;
inline constexpr uint32_t kInt4 = 23;
inline constexpr uint32_t kText = 25;
inline constexpr uint32_t kOid = 26;
inline constexpr uint32_t kJson = 114;
inline constexpr uint32_t kFloat4 = 700;
inline constexpr uint32_t kFloat8 = 701;
inline constexpr uint32_t kBpchar = 1042;
inline constexpr uint32_t kVarchar = 1043;
inline constexpr uint32_t kTimestamp = 1114;
inline constexpr uint32_t kTimestamptz = 1184;
inline constexpr uint32_t kNumeric = 1700;
inline constexpr uint32_t kJsonb = 3802;
}  // namespace oid

// Parameters ready for PQsendQueryParams / PQsendPrepare / PQsendQueryPrepared.
// Pointers refer either to this object's storage or to the Values encoded, which
// must outlive it.
class EncodedParams {
 public:
  EncodedParams() = default;
  EncodedParams(const EncodedParams&) = delete;
  EncodedParams& operator=(const EncodedParams&) = delete;

  // INVALID_ARGUMENT (naming the parameter) for values PostgreSQL cannot take:
  // text or numeric containing a NUL byte, a malformed numeric, an out-of-range
  // timestamp.
  absl::Status Encode(const google::protobuf::RepeatedPtrField<v1::Value>& params);

  int size() const { return static_cast<int>(values_.size()); }
  const char* const* values() const { return values_.data(); }
  const int* lengths() const { return lengths_.data(); }
  const int* formats() const { return formats_.data(); }
  const uint32_t* types() const { return types_.data(); }
  // The type OIDs as a string, part of a prepared statement's identity.
  std::string TypeSignature() const;

 private:
  std::vector<std::string> storage_;
  std::vector<const char*> values_;
  std::vector<int> lengths_;
  std::vector<int> formats_;
  std::vector<uint32_t> types_;
};

// Decodes one text-format result cell of type `type_oid` into `out`.
// `is_null` wins over `data`. A value that does not parse for its type (which
// PostgreSQL's own output never produces) falls back to text_value.
void DecodeCell(const char* data, int length, bool is_null, uint32_t type_oid, v1::Value* out);

// Bytes a decoded value adds to a response (for byte limits), approximately its
// serialized size.
size_t ValueBytes(const v1::Value& value);

// Whether `s` is a numeric literal PostgreSQL's numeric input accepts
// (digits with an optional sign, point and exponent; NaN, Infinity, -Infinity).
// Leading and trailing whitespace is not allowed.
bool IsNumericText(absl::string_view s);

// "int4", "text", ... for built-in types; "" for others.
absl::string_view TypeName(uint32_t type_oid);

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_VALUE_CODEC_H_
