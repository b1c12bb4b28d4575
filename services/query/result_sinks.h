#ifndef POOLSIDE_SERVICES_QUERY_RESULT_SINKS_H_
#define POOLSIDE_SERVICES_QUERY_RESULT_SINKS_H_

// Where statement results go: into a ResultSet (unary calls) or out in chunks
// (streaming), both within a per-call row and byte budget.
//
// Thread-compatible: a sink is driven by the one worker thread running its
// statement.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/db/connection.h"
#include "proto/poolside/v1/query.pb.h"

namespace poolside::query {

// Limits for one call, shared by all of its statements.
struct ResultBudget {
  uint64_t max_rows = 0;
  uint64_t max_bytes = 0;
  uint64_t rows = 0;
  uint64_t bytes = 0;
  // RESOURCE_EXHAUSTED naming the limit, after adding a row of `row_bytes`.
  absl::Status Charge(size_t row_bytes, bool streaming);
};

class ResultSetSink : public db::ResultSink {
 public:
  ResultSetSink(v1::ResultSet* out, ResultBudget* budget) : out_(out), budget_(budget) {}
  absl::Status Begin(const google::protobuf::RepeatedPtrField<v1::Column>& columns) override;
  v1::Row* NewRow() override { return out_->add_rows(); }
  absl::Status RowDone(size_t bytes) override;
  void Finish(int64_t rows_affected, absl::string_view command_tag) override;
  // Empties the result set and gives back what its rows charged to the budget.
  bool Rewind() override;

 private:
  v1::ResultSet* out_;
  ResultBudget* budget_;
  uint64_t rows_charged_ = 0;
  uint64_t bytes_charged_ = 0;
};

// Consumer of streamed chunks; implemented by the transport.
class ChunkWriter {
 public:
  virtual ~ChunkWriter() = default;
  // Hands a chunk to the consumer; blocks while the consumer is too far behind
  // (bounded memory). False if the consumer went away (call cancelled).
  virtual bool Write(std::unique_ptr<v1::ExecuteStreamResponse> chunk) = 0;
};

class StreamSink : public db::ResultSink {
 public:
  // `member` (if not null) is read when the statement begins: the first
  // chunk names it (routing sets it before the statement runs).
  StreamSink(ChunkWriter* writer, ResultBudget* budget, size_t chunk_rows,
             size_t chunk_bytes = 1 << 20, const std::string* member = nullptr)
      : writer_(writer),
        budget_(budget),
        chunk_rows_(chunk_rows),
        chunk_bytes_(chunk_bytes),
        member_(member) {}
  absl::Status Begin(const google::protobuf::RepeatedPtrField<v1::Column>& columns) override;
  v1::Row* NewRow() override { return chunk_->add_rows(); }
  absl::Status RowDone(size_t bytes) override;
  void Finish(int64_t rows_affected, absl::string_view command_tag) override;
  // While no chunk has been handed to the writer: forgets the chunk being
  // filled and gives back what its rows charged to the budget (the
  // statement may run again, e.g. on another member). False once one was.
  bool Rewind() override;
  // False if the last chunk could not be delivered.
  bool delivered() const { return delivered_; }

 private:
  absl::Status Flush();
  ChunkWriter* writer_;
  ResultBudget* budget_;
  const size_t chunk_rows_;
  const size_t chunk_bytes_;
  size_t chunk_bytes_used_ = 0;
  const std::string* member_;
  bool delivered_ = true;
  // A chunk was handed to the writer (the caller may have rows).
  bool handed_ = false;
  uint64_t rows_charged_ = 0;
  uint64_t bytes_charged_ = 0;
  std::unique_ptr<v1::ExecuteStreamResponse> chunk_;
};

// Runs one statement of the service's own (a relay's, a listener's) on
// `conn`, outside any caller's call: its rows, at most 100,000 and 16 MiB.
absl::StatusOr<v1::ResultSet> RunOwnStatement(
    db::Connection& conn, const std::string& sql,
    const google::protobuf::RepeatedPtrField<v1::Value>& params, absl::Time deadline);

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_RESULT_SINKS_H_
