// TextRows: a ResultSink that keeps a small result's rows as text, for the
// catalog and planner queries poolside runs itself (never a caller's result:
// it has no bound of its own), over RowSink, the base of such sinks.
#ifndef POOLSIDE_COMMON_DB_TEXT_ROWS_H_
#define POOLSIDE_COMMON_DB_TEXT_ROWS_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/db/connection.h"

namespace poolside::db {

// A ResultSink that hands each row to OnRow() as it arrives and keeps nothing
// else of the result: the base of sinks that read a small result themselves.
class RowSink : public ResultSink {
 public:
  absl::Status Begin(const google::protobuf::RepeatedPtrField<v1::Column>&) override {
    return absl::OkStatus();
  }
  v1::Row* NewRow() override {
    row_.Clear();
    return &row_;
  }
  absl::Status RowDone(size_t) override { return OnRow(row_); }
  void Finish(int64_t, absl::string_view) override {}

 protected:
  // A non-OK status ends the statement with it (as RowDone's).
  virtual absl::Status OnRow(const v1::Row& row) = 0;

 private:
  v1::Row row_;
};

class TextRows : public RowSink {
 public:
  std::vector<std::vector<std::string>> rows;

 protected:
  // Text, JSON and numeric values as PostgreSQL printed them, booleans as
  // "t"/"f", integers in decimal; NULL and other kinds as "".
  absl::Status OnRow(const v1::Row& row) override {
    std::vector<std::string> cells;
    cells.reserve(row.values_size());
    for (const v1::Value& v : row.values()) {
      switch (v.kind_case()) {
        case v1::Value::kTextValue:
          cells.push_back(v.text_value());
          break;
        case v1::Value::kJsonValue:
          cells.push_back(v.json_value());
          break;
        case v1::Value::kNumericValue:
          cells.push_back(v.numeric_value());
          break;
        case v1::Value::kBoolValue:
          cells.push_back(v.bool_value() ? "t" : "f");
          break;
        case v1::Value::kInt64Value:
          cells.push_back(absl::StrCat(v.int64_value()));
          break;
        default:
          cells.push_back("");
          break;
      }
    }
    rows.push_back(std::move(cells));
    return absl::OkStatus();
  }
};

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_TEXT_ROWS_H_
