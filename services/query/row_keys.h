#ifndef POOLSIDE_SERVICES_QUERY_ROW_KEYS_H_
#define POOLSIDE_SERVICES_QUERY_ROW_KEYS_H_

// The cache's tags, and how a row's primary key is written into one so that
// a read's parameters and the WAL's decoded values of the same row give the
// same tag (docs/cache.md):
//
//   db:<db>                  every entry of the database
//   t:<db>:<table>           every entry that reads the table
//   tl:<db>:<table>          the table's entries that are not key lookups
//   k:<db>:<table>:<hash>    key lookups of one row (hash of its key values)
//
// A change to one row invalidates its k: tag and the table's tl: tag; TRUNCATE,
// DDL and changes whose key is unknown invalidate t:. <table> is
// "schema.table" as PostgreSQL names it (pg_namespace.nspname, relname).
//
// Keys are matched as text, in the form PostgreSQL's output function prints
// them (what logical decoding sends). Only column types whose every accepted
// input has one such form the code below can compute are keyed: integer
// (int2, int4, int8), text and varchar (byte equality under a deterministic
// collation, which the caller checks), and uuid. Anything else, or any value
// not recognized for sure, is no key: the read is tagged per table, which is
// always correct, only less precise.
//
// Pure functions; thread-safe.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "common/sql/key_lookup.h"
#include "proto/poolside/v1/common.pb.h"

namespace poolside::query {

enum class KeyFamily { kNone, kInteger, kText, kUuid };

// By PostgreSQL type OID (pg_attribute.atttypid, pgoutput's column type).
KeyFamily KeyFamilyOf(uint32_t type_oid);

// The text PostgreSQL prints for the value it reads from `input` as a value
// of `family` (integers: optional surrounding whitespace and sign, decimal
// digits, within 64 bits; uuid: 32 hex digits with optional hyphens and
// braces), or nullopt when not sure.
std::optional<std::string> CanonicalKeyText(KeyFamily family, absl::string_view input);

// The same for a statement parameter: int64_value or text for integers, text
// for text and uuid; nullopt for anything else (NULL, numeric, double, ...).
std::optional<std::string> CanonicalKeyValue(KeyFamily family, const v1::Value& value);

// The same for an operand of `column = operand` (common/sql/key_lookup.h)
// with its parameters; nullopt when its cast is not of the family or is
// modified (varchar(3) truncates), or the value is not sure.
std::optional<std::string> CanonicalKeyOperand(
    KeyFamily family, const sql::KeyOperand& operand,
    const google::protobuf::RepeatedPtrField<v1::Value>& params);

// A stable hash (FNV-1a, common/hash) of a row's canonical key values, in
// primary-key column order.
uint64_t RowKeyHash(const std::vector<std::string>& canonical_values);

std::string DatabaseTag(absl::string_view db);
std::string TableTag(absl::string_view db, absl::string_view table);
std::string TableScanTag(absl::string_view db, absl::string_view table);
std::string RowTag(absl::string_view db, absl::string_view table, uint64_t key_hash);

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_ROW_KEYS_H_
