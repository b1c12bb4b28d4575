#include "services/query/result_sinks.h"

#include "absl/strings/str_cat.h"

namespace poolside::query {

absl::Status ResultBudget::Charge(size_t row_bytes, bool streaming) {
  ++rows;
  bytes += row_bytes;
  if (max_rows > 0 && rows > max_rows) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "result exceeds max_rows (", max_rows, " rows)",
        streaming
            ? "; raise max_rows up to the server's limit or add a LIMIT"
            : "; use ExecuteStream, raise max_rows up to the server's limit, or add a LIMIT"));
  }
  if (max_bytes > 0 && bytes > max_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("result exceeds max_bytes (", max_bytes, " bytes)",
                     streaming ? "" : "; use ExecuteStream or select fewer rows or columns"));
  }
  return absl::OkStatus();
}

absl::Status ResultSetSink::Begin(const google::protobuf::RepeatedPtrField<v1::Column>& columns) {
  *out_->mutable_columns() = columns;
  return absl::OkStatus();
}

absl::Status ResultSetSink::RowDone(size_t bytes) {
  ++rows_charged_;
  bytes_charged_ += bytes;
  absl::Status s = budget_->Charge(bytes, /*streaming=*/false);
  if (!s.ok()) out_->clear_rows();  // the call fails; free the memory now
  return s;
}

void ResultSetSink::Finish(int64_t rows_affected, absl::string_view command_tag) {
  out_->set_rows_affected(rows_affected);
  out_->set_command_tag(std::string(command_tag));
}

bool ResultSetSink::Rewind() {
  out_->Clear();
  budget_->rows -= rows_charged_;
  budget_->bytes -= bytes_charged_;
  rows_charged_ = 0;
  bytes_charged_ = 0;
  return true;
}

absl::Status StreamSink::Begin(const google::protobuf::RepeatedPtrField<v1::Column>& columns) {
  chunk_ = std::make_unique<v1::ExecuteStreamResponse>();
  *chunk_->mutable_columns() = columns;
  if (member_ != nullptr) chunk_->set_member(*member_);
  return absl::OkStatus();
}

absl::Status StreamSink::RowDone(size_t bytes) {
  ++rows_charged_;
  bytes_charged_ += bytes;
  absl::Status s = budget_->Charge(bytes, /*streaming=*/true);
  if (!s.ok()) return s;
  chunk_bytes_used_ += bytes;
  if (static_cast<size_t>(chunk_->rows_size()) >= chunk_rows_ ||
      chunk_bytes_used_ >= chunk_bytes_) {
    return Flush();
  }
  return absl::OkStatus();
}

bool StreamSink::Rewind() {
  if (handed_) return false;
  chunk_.reset();
  chunk_bytes_used_ = 0;
  budget_->rows -= rows_charged_;
  budget_->bytes -= bytes_charged_;
  rows_charged_ = 0;
  bytes_charged_ = 0;
  return true;
}

absl::Status StreamSink::Flush() {
  chunk_bytes_used_ = 0;
  handed_ = true;
  if (!writer_->Write(std::move(chunk_))) {
    delivered_ = false;
    chunk_ = std::make_unique<v1::ExecuteStreamResponse>();
    return absl::CancelledError("the caller went away");
  }
  chunk_ = std::make_unique<v1::ExecuteStreamResponse>();
  return absl::OkStatus();
}

void StreamSink::Finish(int64_t rows_affected, absl::string_view command_tag) {
  if (chunk_ == nullptr) chunk_ = std::make_unique<v1::ExecuteStreamResponse>();
  chunk_->set_rows_affected(rows_affected);
  chunk_->set_command_tag(std::string(command_tag));
  (void)Flush();
}

absl::StatusOr<v1::ResultSet> RunOwnStatement(
    db::Connection& conn, const std::string& sql,
    const google::protobuf::RepeatedPtrField<v1::Value>& params, absl::Time deadline) {
  v1::ResultSet rs;
  ResultBudget budget{100000, 16 << 20};
  ResultSetSink sink(&rs, &budget);
  db::Statement st;
  st.sql = sql;
  st.params = &params;
  st.sink = &sink;
  st.deadline = deadline;
  db::Statement* ptr = &st;
  if (absl::Status link = conn.RunIndependent({&ptr, 1}); !link.ok()) return link;
  if (!st.status.ok()) return st.status;
  return rs;
}

}  // namespace poolside::query
