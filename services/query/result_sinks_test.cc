#include "services/query/result_sinks.h"

#include <vector>

#include "gtest/gtest.h"

namespace poolside::query {
namespace {

google::protobuf::RepeatedPtrField<v1::Column> OneColumn() {
  google::protobuf::RepeatedPtrField<v1::Column> cols;
  cols.Add()->set_name("n");
  return cols;
}

void AddRow(db::ResultSink& sink, int64_t v, absl::Status* status, size_t bytes = 10) {
  sink.NewRow()->add_values()->set_int64_value(v);
  *status = sink.RowDone(bytes);
}

// Begins a result of OneColumn() in `sink` (which must accept it) and adds
// rows of 10 bytes with the values 0, 1, ... up to `n` of them; returns the
// status of the first row refused, else OK.
absl::Status BeginWithRows(db::ResultSink& sink, int n) {
  const absl::Status begun = sink.Begin(OneColumn());
  EXPECT_TRUE(begun.ok()) << begun;
  if (!begun.ok()) return begun;
  absl::Status s;
  for (int i = 0; i < n && s.ok(); ++i) AddRow(sink, i, &s);
  return s;
}

TEST(ResultSetSinkTest, CollectsRowsAndTag) {
  v1::ResultSet out;
  ResultBudget budget{.max_rows = 10, .max_bytes = 1000};
  ResultSetSink sink(&out, &budget);
  ASSERT_TRUE(BeginWithRows(sink, 3).ok());
  sink.Finish(3, "SELECT 3");
  EXPECT_EQ(out.columns(0).name(), "n");
  EXPECT_EQ(out.rows_size(), 3);
  EXPECT_EQ(out.rows(2).values(0).int64_value(), 2);
  EXPECT_EQ(out.command_tag(), "SELECT 3");
}

TEST(ResultSetSinkTest, RowLimitNamesTheLimitAndFreesTheRows) {
  v1::ResultSet out;
  ResultBudget budget{.max_rows = 2, .max_bytes = 1000};
  ResultSetSink sink(&out, &budget);
  ASSERT_TRUE(BeginWithRows(sink, 2).ok());
  absl::Status s;
  AddRow(sink, 3, &s);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("max_rows (2 rows)"), absl::string_view::npos) << s;
  EXPECT_EQ(out.rows_size(), 0);
}

TEST(ResultSetSinkTest, ByteLimitAppliesAcrossStatementsOfACall) {
  ResultBudget budget{.max_rows = 100, .max_bytes = 25};
  v1::ResultSet a, b;
  ResultSetSink first(&a, &budget), second(&b, &budget);
  ASSERT_TRUE(BeginWithRows(first, 2).ok());
  const absl::Status s = BeginWithRows(second, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("max_bytes"), absl::string_view::npos);
}

class FakeWriter : public ChunkWriter {
 public:
  bool Write(std::unique_ptr<v1::ExecuteStreamResponse> chunk) override {
    if (refuse) return false;
    chunks.push_back(std::move(chunk));
    return true;
  }
  std::vector<std::unique_ptr<v1::ExecuteStreamResponse>> chunks;
  bool refuse = false;
};

TEST(StreamSinkTest, ChunksCarryColumnsFirstAndTagLast) {
  FakeWriter writer;
  ResultBudget budget{.max_rows = 100, .max_bytes = 100000};
  StreamSink sink(&writer, &budget, /*chunk_rows=*/4);
  ASSERT_TRUE(BeginWithRows(sink, 10).ok());
  sink.Finish(10, "SELECT 10");
  ASSERT_EQ(writer.chunks.size(), 3u);
  EXPECT_EQ(writer.chunks[0]->columns_size(), 1);
  EXPECT_EQ(writer.chunks[1]->columns_size(), 0);
  EXPECT_EQ(writer.chunks[0]->rows_size(), 4);
  EXPECT_EQ(writer.chunks[2]->rows_size(), 2);
  EXPECT_EQ(writer.chunks[2]->command_tag(), "SELECT 10");
  EXPECT_EQ(writer.chunks[2]->rows_affected(), 10);
}

TEST(ResultSetSinkTest, RewindEmptiesTheResultAndGivesBackItsBudget) {
  v1::ResultSet out;
  ResultBudget budget{.max_rows = 3, .max_bytes = 100000};
  ResultSetSink sink(&out, &budget);
  const absl::Status s = BeginWithRows(sink, 3);
  ASSERT_TRUE(s.ok()) << s;
  sink.Finish(3, "SELECT 3");
  ASSERT_TRUE(sink.Rewind());
  EXPECT_EQ(out.rows_size(), 0);
  EXPECT_EQ(out.columns_size(), 0);
  EXPECT_EQ(out.command_tag(), "");
  EXPECT_EQ(budget.rows, 0u);
  EXPECT_EQ(budget.bytes, 0u);
  // The second run may use the whole budget again.
  const absl::Status again = BeginWithRows(sink, 3);
  EXPECT_TRUE(again.ok()) << again;
  EXPECT_EQ(out.rows_size(), 3);
}

TEST(StreamSinkTest, RewindsUntilAChunkIsSentNeverAfter) {
  FakeWriter writer;
  ResultBudget budget{.max_rows = 5, .max_bytes = 100000};
  StreamSink sink(&writer, &budget, /*chunk_rows=*/3);
  // Nothing run yet, then rows still in the chunk being filled: the
  // statement may start over, with its budget given back.
  EXPECT_TRUE(sink.Rewind());
  ASSERT_TRUE(sink.Begin(OneColumn()).ok());
  absl::Status s;
  AddRow(sink, 1, &s);
  AddRow(sink, 2, &s);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(sink.Rewind());
  EXPECT_EQ(budget.rows, 0u);
  EXPECT_EQ(budget.bytes, 0u);
  EXPECT_TRUE(writer.chunks.empty());
  // The second run: its first chunk carries the columns and only its rows.
  ASSERT_TRUE(sink.Begin(OneColumn()).ok());
  for (int v = 10; v < 15; ++v) AddRow(sink, v, &s);
  ASSERT_TRUE(s.ok()) << s << ": the first run's rows were still charged";
  ASSERT_EQ(writer.chunks.size(), 1u);
  EXPECT_EQ(writer.chunks[0]->columns_size(), 1);
  ASSERT_EQ(writer.chunks[0]->rows_size(), 3);
  EXPECT_EQ(writer.chunks[0]->rows(0).values(0).int64_value(), 10);
  // Rows have left: no more rewinding, and nothing of what was sent changes.
  EXPECT_FALSE(sink.Rewind());
  EXPECT_EQ(budget.rows, 5u);
  sink.Finish(5, "SELECT 5");
  ASSERT_EQ(writer.chunks.size(), 2u);
  EXPECT_EQ(writer.chunks[1]->rows_size(), 2);
  EXPECT_EQ(writer.chunks[1]->command_tag(), "SELECT 5");
}

TEST(StreamSinkTest, GoneConsumerStopsTheStatement) {
  FakeWriter writer;
  writer.refuse = true;
  ResultBudget budget{.max_rows = 100, .max_bytes = 100000};
  StreamSink sink(&writer, &budget, /*chunk_rows=*/1);
  ASSERT_TRUE(sink.Begin(OneColumn()).ok());
  absl::Status s;
  AddRow(sink, 1, &s);
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(sink.delivered());
}

TEST(StreamSinkTest, RowLimitAppliesToStreamsToo) {
  FakeWriter writer;
  ResultBudget budget{.max_rows = 3, .max_bytes = 100000};
  StreamSink sink(&writer, &budget, /*chunk_rows=*/100);
  EXPECT_EQ(BeginWithRows(sink, 4).code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace poolside::query
