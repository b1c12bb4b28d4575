#include "cli/csv.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace poolside::cli {

int CsvReader::Peek() {
  if (pos_ == buffer_.size()) {
    if (eof_) return -1;
    buffer_.resize(64 << 10);
    in_->read(buffer_.data(), static_cast<std::streamsize>(buffer_.size()));
    buffer_.resize(static_cast<size_t>(in_->gcount()));
    pos_ = 0;
    if (buffer_.empty()) {
      eof_ = true;
      return -1;
    }
  }
  return static_cast<unsigned char>(buffer_[pos_]);
}

int CsvReader::Get() {
  const int c = Peek();
  if (c >= 0) {
    ++pos_;
    ++consumed_;
    if (c == '\n') ++line_;
  }
  return c;
}

absl::StatusOr<bool> CsvReader::Next(std::vector<CsvField>* fields) {
  fields->clear();
  if (Peek() < 0) return false;
  record_line_ = line_;
  CsvField field;
  bool at_field_start = true;
  while (true) {
    int c = Get();
    if (at_field_start && c == '"') {
      field.quoted = true;
      at_field_start = false;
      while (true) {
        c = Get();
        if (c < 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              "line ", record_line_, ": quoted field not closed before the end of the file"));
        }
        if (c == '"') {
          if (Peek() == '"') {
            Get();
            field.value.push_back('"');
            continue;
          }
          break;
        }
        field.value.push_back(static_cast<char>(c));
      }
      c = Get();
      if (c != ',' && c != '\n' && c != '\r' && c >= 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("line ", line_, ": unexpected character after a closing quote"));
      }
    }
    if (c == ',') {
      fields->push_back(std::move(field));
      field = CsvField();
      at_field_start = true;
      continue;
    }
    if (c < 0 || c == '\n' || c == '\r') {
      if (c == '\r' && Peek() == '\n') Get();
      fields->push_back(std::move(field));
      return true;
    }
    if (c == '"') {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_, ": quote inside an unquoted field"));
    }
    at_field_start = false;
    field.value.push_back(static_cast<char>(c));
  }
}

}  // namespace poolside::cli
