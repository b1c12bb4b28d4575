// libFuzzer target for the CLI's CSV reader (cli/csv), which `poolside ingest`
// runs over user files.
//
// Besides memory errors, it checks: the reader terminates, consumes exactly the
// input when it reaches the end, reports record lines that never go backwards,
// and is faithful: writing the records it read back out as RFC 4180 CSV and
// reading that again gives the same fields (values and quoted flags, so NULL
// versus "" survives).

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/string_view.h"
#include "cli/csv.h"

namespace {

using poolside::cli::CsvField;
using poolside::cli::CsvReader;

[[noreturn]] void Fail(const char* what, absl::string_view input) {
  fprintf(stderr, "csv_fuzzer: %s; input \"%s\"\n", what, absl::CEscape(input).c_str());
  abort();
}

// Reads every record; false if the reader reported an error.
bool ReadAll(absl::string_view input, std::vector<std::vector<CsvField>>* records) {
  std::istringstream in{std::string(input)};
  CsvReader reader(&in);
  int64_t last_line = 0;
  std::vector<CsvField> fields;
  while (true) {
    absl::StatusOr<bool> more = reader.Next(&fields);
    if (!more.ok()) return false;
    if (!*more) break;
    if (reader.record_line() < last_line || reader.record_line() < 1) {
      Fail("record line went backwards", input);
    }
    last_line = reader.record_line();
    records->push_back(fields);
    if (records->size() > input.size() + 1) Fail("more records than bytes", input);
  }
  if (reader.bytes_read() != input.size()) Fail("end reached without consuming the input", input);
  return true;
}

std::string Write(const std::vector<std::vector<CsvField>>& records) {
  std::string out;
  for (const auto& record : records) {
    for (size_t i = 0; i < record.size(); ++i) {
      if (i > 0) out.push_back(',');
      const CsvField& f = record[i];
      if (!f.quoted) {
        out += f.value;
        continue;
      }
      out.push_back('"');
      for (char c : f.value) {
        if (c == '"') out.push_back('"');
        out.push_back(c);
      }
      out.push_back('"');
    }
    out.push_back('\n');
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  std::vector<std::vector<CsvField>> records;
  if (!ReadAll(input, &records)) return 0;
  const std::string written = Write(records);
  std::vector<std::vector<CsvField>> again;
  if (!ReadAll(written, &again)) Fail("its own records written as CSV do not read back", input);
  if (again.size() != records.size()) Fail("record count changed after a round trip", input);
  for (size_t r = 0; r < records.size(); ++r) {
    if (again[r].size() != records[r].size()) Fail("field count changed after a round trip", input);
    for (size_t i = 0; i < records[r].size(); ++i) {
      if (again[r][i].value != records[r][i].value || again[r][i].quoted != records[r][i].quoted) {
        Fail("field changed after a round trip", input);
      }
    }
  }
  return 0;
}
