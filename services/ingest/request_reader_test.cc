#include "services/ingest/request_reader.h"

#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace poolside::ingest {
namespace {

v1::WriteRequest Request(int rows) {
  v1::WriteRequest w;
  w.set_database("app");
  w.set_table("events");
  w.add_columns("id");
  w.add_columns("name");
  w.set_idempotency_key("k-1");
  for (int i = 0; i < rows; ++i) {
    v1::Row* r = w.add_rows();
    r->add_values()->set_int64_value(i);
    r->add_values()->set_text_value("h\xc3\xa9llo " + std::to_string(i));
  }
  return w;
}

std::vector<std::string> RowTexts(absl::string_view bytes, absl::Status* status) {
  std::vector<std::string> out;
  *status = ForEachRow(bytes, [&](const v1::Row& row, uint32_t i) {
    EXPECT_EQ(i, out.size());
    out.push_back(row.values(1).text_value());
    return absl::OkStatus();
  });
  return out;
}

TEST(RequestReaderTest, ReadsHeaderAndRowsLikeProtobuf) {
  const std::string bytes = Request(3).SerializeAsString();
  absl::StatusOr<RequestHeader> h = ReadRequestHeader(bytes);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->database, "app");
  EXPECT_EQ(h->table, "events");
  EXPECT_EQ(h->columns, (std::vector<std::string>{"id", "name"}));
  EXPECT_EQ(h->key, "k-1");
  EXPECT_EQ(h->rows, 3u);
  absl::Status s;
  EXPECT_EQ(RowTexts(bytes, &s),
            (std::vector<std::string>{"h\xc3\xa9llo 0", "h\xc3\xa9llo 1", "h\xc3\xa9llo 2"}));
  EXPECT_TRUE(s.ok()) << s;
}

TEST(RequestReaderTest, FieldsInAnyOrderAndUnknownFields) {
  // Rows first, header after, an unknown field between: still the same request.
  v1::WriteRequest rows_only;
  *rows_only.mutable_rows() = Request(2).rows();
  v1::WriteRequest header_only = Request(0);
  std::string bytes = rows_only.SerializeAsString();
  bytes += std::string("\xa0\x06\x07", 3);  // field 100, varint 7
  bytes += header_only.SerializeAsString();
  v1::WriteRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  absl::StatusOr<RequestHeader> h = ReadRequestHeader(bytes);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->table, parsed.table());
  EXPECT_EQ(h->rows, 2u);
  absl::Status s;
  EXPECT_EQ(RowTexts(bytes, &s).size(), 2u);
  EXPECT_TRUE(s.ok());
}

TEST(RequestReaderTest, MalformedIsWhatProtobufRefuses) {
  const std::string good = Request(2).SerializeAsString();
  // Every truncation that protobuf refuses, this refuses too (as malformed).
  for (size_t n = 0; n < good.size(); ++n) {
    const std::string cut = good.substr(0, n);
    v1::WriteRequest parsed;
    const bool protobuf_ok = parsed.ParseFromString(cut);
    absl::StatusOr<RequestHeader> h = ReadRequestHeader(cut);
    absl::Status rows;
    RowTexts(cut, &rows);
    const bool ours_ok = h.ok() && rows.ok();
    EXPECT_EQ(ours_ok, protobuf_ok) << "cut at " << n;
    if (!ours_ok) {
      EXPECT_TRUE(IsMalformed(h.ok() ? rows : h.status()));
    }
  }
  // Invalid UTF-8 in a header string and in a row's text value.
  v1::WriteRequest bad_table = Request(1);
  bad_table.set_table("ev\xff");
  absl::StatusOr<RequestHeader> h = ReadRequestHeader(bad_table.SerializeAsString());
  EXPECT_TRUE(IsMalformed(h.status())) << h.status();
  EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(h.status().message().find("table"), absl::string_view::npos) << h.status();

  v1::WriteRequest bad_text = Request(3);
  bad_text.mutable_rows(1)->mutable_values(1)->set_text_value("bad \xc3\x28");
  const std::string bytes = bad_text.SerializeAsString();
  v1::WriteRequest parsed;
  EXPECT_FALSE(parsed.ParseFromString(bytes));
  EXPECT_TRUE(ReadRequestHeader(bytes).ok());  // the rows are not looked at
  absl::Status rows;
  EXPECT_EQ(RowTexts(bytes, &rows).size(), 1u);
  EXPECT_TRUE(IsMalformed(rows));
  EXPECT_NE(rows.message().find("row 1"), absl::string_view::npos) << rows;
  // Garbage.
  EXPECT_TRUE(IsMalformed(ReadRequestHeader(std::string("\xff\xff\xff\xff\xff", 5)).status()));
  EXPECT_FALSE(IsMalformed(absl::InvalidArgumentError("other")));
}

// Random corruptions of a request: this reader refuses exactly what protobuf
// refuses, and otherwise reads what protobuf reads.
TEST(RequestReaderTest, AgreesWithProtobufOnCorruptedRequests) {
  std::mt19937 rng(20261206);
  const std::string good = Request(4).SerializeAsString();
  int refused = 0;
  for (int round = 0; round < 5000; ++round) {
    std::string bytes = good;
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits; ++e) {
      const size_t at = rng() % bytes.size();
      switch (rng() % 3) {
        case 0:
          bytes[at] = static_cast<char>(rng());
          break;  // overwrite
        case 1:
          bytes.erase(at, 1 + rng() % 4);
          break;  // cut
        default:
          bytes.insert(at, 1, static_cast<char>(rng()));
          break;  // insert
      }
      if (bytes.empty()) bytes = "x";
    }
    v1::WriteRequest parsed;
    const bool protobuf_ok = parsed.ParseFromString(bytes);
    absl::StatusOr<RequestHeader> h = ReadRequestHeader(bytes);
    absl::Status rows;
    std::vector<std::string> texts;
    if (h.ok()) {
      rows = ForEachRow(bytes, [&](const v1::Row& row, uint32_t) {
        texts.push_back(row.SerializeAsString());
        return absl::OkStatus();
      });
    }
    const bool ours_ok = h.ok() && rows.ok();
    ASSERT_EQ(ours_ok, protobuf_ok) << "round " << round << ": " << h.status() << " / " << rows;
    if (!ours_ok) {
      ++refused;
      EXPECT_TRUE(IsMalformed(h.ok() ? rows : h.status()));
      continue;
    }
    EXPECT_EQ(h->table, parsed.table());
    EXPECT_EQ(h->database, parsed.database());
    EXPECT_EQ(h->key, parsed.idempotency_key());
    EXPECT_EQ(h->columns.size(), static_cast<size_t>(parsed.columns_size()));
    ASSERT_EQ(texts.size(), static_cast<size_t>(parsed.rows_size()));
    for (int i = 0; i < parsed.rows_size(); ++i) {
      EXPECT_EQ(texts[i], parsed.rows(i).SerializeAsString());
    }
  }
  EXPECT_GT(refused, 500);  // the corruptions are not all harmless
}

TEST(RequestReaderTest, ChannelRequestSplitsAndMerges) {
  v1::ChannelRequest m;
  m.set_sequence(42);
  *m.mutable_write() = Request(2);
  absl::StatusOr<ChannelParts> parts = ReadChannelRequest(m.SerializeAsString());
  ASSERT_TRUE(parts.ok()) << parts.status();
  EXPECT_EQ(parts->sequence, 42u);
  v1::WriteRequest w;
  ASSERT_TRUE(w.ParseFromString(std::string(parts->write.bytes())));
  EXPECT_EQ(w.SerializeAsString(), Request(2).SerializeAsString());

  // `write` given twice is merged, as protobuf does.
  v1::ChannelRequest first, second;
  first.set_sequence(1);
  first.mutable_write()->set_table("events");
  second.set_sequence(7);
  *second.mutable_write()->mutable_rows() = Request(2).rows();
  const std::string both = first.SerializeAsString() + second.SerializeAsString();
  v1::ChannelRequest merged;
  ASSERT_TRUE(merged.ParseFromString(both));
  parts = ReadChannelRequest(both);
  ASSERT_TRUE(parts.ok());
  EXPECT_EQ(parts->sequence, 7u);
  absl::StatusOr<RequestHeader> h = ReadRequestHeader(parts->write.bytes());
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->table, merged.write().table());
  EXPECT_EQ(h->rows, 2u);

  // Broken framing of the outer message.
  std::string cut = m.SerializeAsString();
  cut.resize(cut.size() - 3);
  EXPECT_TRUE(IsMalformed(ReadChannelRequest(cut).status()));
}

TEST(RequestReaderTest, FormatsSizes) {
  EXPECT_EQ(FormatBytes(39u << 20), "39.0 MiB");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(12), "12 bytes");
}

}  // namespace
}  // namespace poolside::ingest
