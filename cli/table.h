#ifndef POOLSIDE_CLI_TABLE_H_
#define POOLSIDE_CLI_TABLE_H_

// An aligned plain-text table in psql's style, for the `poolside` CLI:
//
//    aid | abalance | note
//   -----+----------+------
//      1 |        0 | NULL
//
// Usage: construct with the column names, AddRow() cells (already formatted;
// control characters should be escaped by the caller), then Render(). For
// streamed results, RenderHeader() fixes the column widths from the header and
// the rows added so far, and RenderRows() prints and forgets the buffered rows;
// a later cell wider than its column simply widens that line.
//
// Widths count UTF-8 code points, not bytes. Not thread-safe.

#include <string>
#include <vector>

namespace poolside::cli {

class TextTable {
 public:
  explicit TextTable(std::vector<std::string> headers);

  // `right_align[i]` right-aligns cell i (numbers); missing entries are left.
  // Cells beyond the header count are dropped, missing ones are empty.
  void AddRow(std::vector<std::string> cells, std::vector<bool> right_align = {});

  size_t buffered_rows() const { return rows_.size(); }

  // Header, separator and every row, each line ending in '\n'.
  std::string Render();

  std::string RenderHeader();
  std::string RenderRows();

 private:
  struct Row {
    std::vector<std::string> cells;
    std::vector<bool> right_align;
  };

  void ComputeWidths();
  std::string FormatLine(const std::vector<std::string>& cells,
                         const std::vector<bool>& right_align, bool center) const;

  std::vector<std::string> headers_;
  std::vector<size_t> widths_;
  bool widths_fixed_ = false;
  std::vector<Row> rows_;
};

// Number of UTF-8 code points in `s` (its display width for most text).
size_t DisplayWidth(const std::string& s);

}  // namespace poolside::cli

#endif  // POOLSIDE_CLI_TABLE_H_
