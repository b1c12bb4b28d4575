#ifndef POOLSIDE_CLI_VALUE_FORMAT_H_
#define POOLSIDE_CLI_VALUE_FORMAT_H_

// Conversions between command-line text and poolside.v1.Value for the `poolside`
// CLI: typing statement parameters given as arguments, and rendering result
// cells for a human-readable table.
//
// Parameter typing (ParseParam):
//   null                      -> NULL
//   true / false              -> bool
//   -12, 42                   -> int64 (an integer too large for int64 -> numeric)
//   1.5, -0.25, 1e3, .5       -> numeric (exact decimal string; PostgreSQL casts
//                                it implicitly where a float is expected)
//   anything else             -> text
// Explicit kinds, as a prefix: null:, bool:true, int:5, double:1.5, num:1.50,
// text:5, bytes:00ff (hex, an optional \x or 0x prefix), json:{"a":1},
// ts:2024-01-01T00:00:00Z (RFC 3339). An unknown prefix is plain text, so
// "http://x" stays text; write "text:int:5" for the literal text "int:5".
//
// Rendering (FormatValue): NULL as NULL, bools as true/false, doubles in the
// shortest form that reads back exactly (NaN, Infinity, -Infinity), bytes as \x
// followed by lowercase hex, timestamps as RFC 3339 in UTC, text/numeric/json as
// they are.
//
// All functions are pure and thread-safe.

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "proto/poolside/v1/common.pb.h"

namespace poolside::cli {

// Types one command-line argument as a statement parameter (rules above).
// INVALID_ARGUMENT for an explicit prefix whose text does not parse.
absl::StatusOr<poolside::v1::Value> ParseParam(absl::string_view arg);

// Renders one result cell.
std::string FormatValue(const poolside::v1::Value& value);

// The shortest decimal text that parses back to exactly `d`.
std::string FormatDouble(double d);

// True if the value is rendered right-aligned in a table (numbers).
bool IsNumeric(const poolside::v1::Value& value);

// Replaces control characters (newline, tab, ...) with C-style escapes so that a
// cell stays on one line of a table.
std::string EscapeForCell(absl::string_view text);

}  // namespace poolside::cli

#endif  // POOLSIDE_CLI_VALUE_FORMAT_H_
