#ifndef POOLSIDE_SERVICES_INGEST_REQUEST_READER_H_
#define POOLSIDE_SERVICES_INGEST_REQUEST_READER_H_

// Reads serialized ingest requests (WriteRequest, ChannelRequest) without
// parsing them whole: a request's rows are parsed one at a time into one
// reused message, so a request costs its serialized bytes and its encoding,
// not a parsed copy several times its size.
//
//   absl::StatusOr<RequestHeader> h = ReadRequestHeader(bytes);   // no rows
//   absl::Status s = ForEachRow(bytes, [&](const v1::Row& row, uint32_t i) {
//     return Encode(row);
//   });
//
// Anything protobuf itself would refuse to parse (broken framing, invalid
// UTF-8 in a string field, at any depth) is an INVALID_ARGUMENT that
// IsMalformed() recognises; the message says where. Other field semantics are
// protobuf's: fields in any order, a repeated `write` of a ChannelRequest
// merged, unknown fields skipped.
//
// Pure functions; thread-safe.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/io/zero_copy_stream.h"
#include "proto/poolside/v1/ingest.pb.h"

namespace poolside::ingest {

// A serialized WriteRequest: bytes [offset, offset + size) of `buffer`.
struct SerializedWrite {
  std::string buffer;
  size_t offset = 0;
  size_t size = 0;

  absl::string_view bytes() const { return absl::string_view(buffer).substr(offset, size); }
};

// Everything of a WriteRequest but its rows.
struct RequestHeader {
  std::string database;
  std::string table;
  std::vector<std::string> columns;
  std::string key;
  uint32_t rows = 0;  // how many rows follow
};

// INVALID_ARGUMENT marked as malformed (IsMalformed()).
absl::Status Malformed(absl::string_view what);
bool IsMalformed(const absl::Status& status);

absl::StatusOr<RequestHeader> ReadRequestHeader(absl::string_view serialized);

// Parses each row in order and calls `row` with it; returns the first non-OK
// status `row` returns, or a malformed status for a row that does not parse.
absl::Status ForEachRow(absl::string_view serialized,
                        absl::FunctionRef<absl::Status(const v1::Row& row, uint32_t index)> row);

// A ChannelRequest's sequence and its write. `request` is taken over; the
// write is a part of it (or, for a write given in several pieces, their
// merge).
struct ChannelParts {
  uint64_t sequence = 0;
  SerializedWrite write;
};
absl::StatusOr<ChannelParts> ReadChannelRequest(std::string request);

// Only the sequence of a serialized ChannelRequest, read from `in` without
// copying the rest (for one refused unread, e.g. for its size).
absl::StatusOr<uint64_t> ReadChannelSequence(google::protobuf::io::ZeroCopyInputStream* in);

// A serialized request of `bytes` bytes as "12.3 MiB" (or KiB, bytes).
std::string FormatBytes(uint64_t bytes);

}  // namespace poolside::ingest

#endif  // POOLSIDE_SERVICES_INGEST_REQUEST_READER_H_
