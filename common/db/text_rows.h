// TextRows: a ResultSink that keeps a small result's rows as text, for the
// catalog and planner queries poolside runs itself (never a caller's result:
// it has no bound of its own).
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

class TextRows : public ResultSink {
 public:
  absl::Status Begin(const google::protobuf::RepeatedPtrField<v1::Column>&) override {
    return absl::OkStatus();
  }
  v1::Row* NewRow() override {
    row_.Clear();
    return &row_;
  }
  // Text, JSON and numeric values as PostgreSQL printed them, booleans as
  // "t"/"f", integers in decimal; NULL and other kinds as "".
  absl::Status RowDone(size_t) override {
    std::vector<std::string> cells;
    cells.reserve(row_.values_size());
    for (const v1::Value& v : row_.values()) {
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
  void Finish(int64_t, absl::string_view) override {}

  std::vector<std::vector<std::string>> rows;

 private:
  v1::Row row_;
};

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_TEXT_ROWS_H_
