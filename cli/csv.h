#ifndef POOLSIDE_CLI_CSV_H_
#define POOLSIDE_CLI_CSV_H_

// Streaming CSV reader (RFC 4180): comma-separated fields, optionally quoted
// with '"' ("" inside quotes is one quote; quoted fields may hold commas and
// line breaks), records ending in LF or CRLF. The last record needs no line
// break. An unquoted empty field is reported as such (`quoted` false), so a
// caller can treat it as NULL and "" as the empty string.
//
//   CsvReader reader(file);            // any std::istream
//   std::vector<CsvField> record;
//   while (true) {
//     absl::StatusOr<bool> more = reader.Next(&record);
//     if (!more.ok()) ...;             // INVALID_ARGUMENT naming the line
//     if (!*more) break;
//   }
//
// Thread-compatible.

#include <cstdint>
#include <istream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace poolside::cli {

struct CsvField {
  std::string value;
  bool quoted = false;
};

class CsvReader {
 public:
  explicit CsvReader(std::istream* in) : in_(in) {}

  // Reads the next record into `fields`; false at the end of the input.
  absl::StatusOr<bool> Next(std::vector<CsvField>* fields);

  // The line the last record started on (1-based).
  int64_t record_line() const { return record_line_; }
  // Bytes consumed so far.
  uint64_t bytes_read() const { return consumed_; }

 private:
  // The next byte, or -1 at the end of the input.
  int Get();
  int Peek();

  std::istream* in_;
  std::string buffer_;
  size_t pos_ = 0;
  bool eof_ = false;
  uint64_t consumed_ = 0;
  int64_t line_ = 1;
  int64_t record_line_ = 0;
};

}  // namespace poolside::cli

#endif  // POOLSIDE_CLI_CSV_H_
