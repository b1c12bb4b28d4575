#include "services/ingest/request_reader.h"

#include <limits>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/db/copy.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"

namespace poolside::ingest {
namespace {

using google::protobuf::internal::WireFormatLite;

constexpr absl::string_view kMalformedPayload = "poolside.dev/malformed";

// WriteRequest's and ChannelRequest's field numbers.
constexpr uint32_t kRowsField = 4;
constexpr uint32_t kSequenceField = 1;
constexpr uint32_t kWriteField = 2;

struct Field {
  uint32_t number = 0;
  WireFormatLite::WireType wire_type = WireFormatLite::WIRETYPE_VARINT;
  // The whole field (tag included) ...
  size_t start = 0, end = 0;
  // ... and, for a length-delimited one, its payload; for a varint, its value.
  absl::string_view payload;
  uint64_t varint = 0;
};

// Calls `visit` with each top-level field of `message`, checking the framing
// as protobuf's parser does.
absl::Status Walk(absl::string_view message, absl::string_view what,
                  absl::FunctionRef<absl::Status(const Field&)> visit) {
  if (message.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return Malformed(absl::StrCat(what, " is too large to parse"));
  }
  const auto* data = reinterpret_cast<const uint8_t*>(message.data());
  google::protobuf::io::CodedInputStream in(data, static_cast<int>(message.size()));
  while (true) {
    Field f;
    f.start = static_cast<size_t>(in.CurrentPosition());
    const uint32_t tag = in.ReadTag();
    if (tag == 0) {
      if (f.start == message.size()) return absl::OkStatus();
      return Malformed(absl::StrCat(what, ": invalid field tag at byte ", f.start));
    }
    f.number = WireFormatLite::GetTagFieldNumber(tag);
    f.wire_type = WireFormatLite::GetTagWireType(tag);
    bool ok = f.number != 0;
    if (ok && f.wire_type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      uint32_t length = 0;
      ok = in.ReadVarint32(&length);
      const size_t at = static_cast<size_t>(in.CurrentPosition());
      ok = ok && length <= message.size() - at && in.Skip(static_cast<int>(length));
      if (ok) f.payload = message.substr(at, length);
    } else if (ok && f.wire_type == WireFormatLite::WIRETYPE_VARINT) {
      ok = in.ReadVarint64(&f.varint);
    } else if (ok) {
      ok = WireFormatLite::SkipField(&in, tag);
    }
    if (!ok) {
      return Malformed(absl::StrCat(what, ": field ", f.number, " at byte ", f.start,
                                    " is truncated or has an invalid encoding"));
    }
    f.end = static_cast<size_t>(in.CurrentPosition());
    if (absl::Status s = visit(f); !s.ok()) return s;
  }
}

}  // namespace

absl::Status Malformed(absl::string_view what) {
  absl::Status s = absl::InvalidArgumentError(absl::StrCat("malformed request: ", what));
  s.SetPayload(kMalformedPayload, absl::Cord("1"));
  return s;
}

bool IsMalformed(const absl::Status& status) {
  return status.GetPayload(kMalformedPayload).has_value();
}

absl::StatusOr<RequestHeader> ReadRequestHeader(absl::string_view serialized) {
  // Every field but the rows, parsed by protobuf (a few bytes).
  std::string rest;
  RequestHeader header;
  absl::Status walked = Walk(serialized, "WriteRequest", [&](const Field& f) {
    if (f.number == kRowsField && f.wire_type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      ++header.rows;
      return absl::OkStatus();
    }
    // String fields: say which one is not UTF-8 (protobuf would only fail).
    if (f.wire_type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED && f.number <= 5 &&
        !db::IsValidUtf8(f.payload)) {
      static constexpr const char* kNames[] = {"",        "database", "table",
                                               "columns", "",         "idempotency_key"};
      return Malformed(absl::StrCat("WriteRequest.", kNames[f.number],
                                    " is not valid UTF-8 (protobuf strings must be)"));
    }
    rest.append(serialized.data() + f.start, f.end - f.start);
    return absl::OkStatus();
  });
  if (!walked.ok()) return walked;
  v1::WriteRequest parsed;
  if (!parsed.ParseFromString(rest)) return Malformed("WriteRequest does not parse");
  header.database = std::move(*parsed.mutable_database());
  header.table = std::move(*parsed.mutable_table());
  header.key = std::move(*parsed.mutable_idempotency_key());
  header.columns.reserve(parsed.columns_size());
  for (std::string& c : *parsed.mutable_columns()) header.columns.push_back(std::move(c));
  return header;
}

absl::Status ForEachRow(absl::string_view serialized,
                        absl::FunctionRef<absl::Status(const v1::Row& row, uint32_t index)> visit) {
  v1::Row row;
  uint32_t index = 0;
  return Walk(serialized, "WriteRequest", [&](const Field& f) {
    if (f.number != kRowsField || f.wire_type != WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      return absl::OkStatus();
    }
    if (!row.ParseFromArray(f.payload.data(), static_cast<int>(f.payload.size()))) {
      return Malformed(absl::StrCat(
          "row ", index,
          " does not parse (a string value that is not valid UTF-8 — send text of unknown "
          "encoding as bytes_value — or a broken encoding)"));
    }
    return visit(row, index++);
  });
}

absl::StatusOr<ChannelParts> ReadChannelRequest(std::string request) {
  ChannelParts parts;
  std::vector<absl::string_view> writes;
  absl::Status walked = Walk(request, "ChannelRequest", [&](const Field& f) {
    if (f.number == kSequenceField && f.wire_type == WireFormatLite::WIRETYPE_VARINT) {
      parts.sequence = f.varint;
    } else if (f.number == kWriteField &&
               f.wire_type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      writes.push_back(f.payload);
    }
    return absl::OkStatus();
  });
  if (!walked.ok()) return walked;
  if (writes.size() == 1) {
    parts.write.offset = static_cast<size_t>(writes[0].data() - request.data());
    parts.write.size = writes[0].size();
    parts.write.buffer = std::move(request);
  } else {
    // A message field given more than once is the merge of its pieces: for
    // protobuf, that is their concatenation.
    for (absl::string_view w : writes) parts.write.buffer.append(w.data(), w.size());
    parts.write.size = parts.write.buffer.size();
  }
  return parts;
}

absl::StatusOr<uint64_t> ReadChannelSequence(google::protobuf::io::ZeroCopyInputStream* in) {
  google::protobuf::io::CodedInputStream coded(in);
  uint64_t sequence = 0;
  while (true) {
    const uint32_t tag = coded.ReadTag();
    if (tag == 0) {
      if (coded.ConsumedEntireMessage()) return sequence;
      return Malformed("ChannelRequest: invalid field tag");
    }
    const uint32_t number = WireFormatLite::GetTagFieldNumber(tag);
    bool ok = number != 0;
    if (ok && WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_VARINT) {
      uint64_t v = 0;
      ok = coded.ReadVarint64(&v);
      if (number == kSequenceField) sequence = v;
    } else if (ok &&
               WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      uint32_t length = 0;
      ok = coded.ReadVarint32(&length) && coded.Skip(static_cast<int>(length));
    } else if (ok) {
      ok = WireFormatLite::SkipField(&coded, tag);
    }
    if (!ok) return Malformed("ChannelRequest: a field is truncated or has an invalid encoding");
  }
}

std::string FormatBytes(uint64_t bytes) {
  if (bytes >= (uint64_t{1} << 20)) {
    return absl::StrFormat("%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  }
  if (bytes >= 1024) return absl::StrFormat("%.1f KiB", static_cast<double>(bytes) / 1024);
  return absl::StrCat(bytes, " bytes");
}

}  // namespace poolside::ingest
