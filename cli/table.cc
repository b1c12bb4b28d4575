#include "cli/table.h"

#include <algorithm>
#include <utility>

namespace poolside::cli {

size_t DisplayWidth(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) {
    if ((c & 0xC0) != 0x80) ++n;  // Count every byte but continuation bytes.
  }
  return n;
}

TextTable::TextTable(std::vector<std::string> headers) : headers_(std::move(headers)) {}

void TextTable::AddRow(std::vector<std::string> cells, std::vector<bool> right_align) {
  cells.resize(headers_.size());
  right_align.resize(headers_.size(), false);
  rows_.push_back(Row{std::move(cells), std::move(right_align)});
}

void TextTable::ComputeWidths() {
  if (widths_fixed_) return;
  widths_.assign(headers_.size(), 0);
  for (size_t i = 0; i < headers_.size(); ++i) {
    widths_[i] = DisplayWidth(headers_[i]);
  }
  for (const Row& row : rows_) {
    for (size_t i = 0; i < row.cells.size(); ++i) {
      widths_[i] = std::max(widths_[i], DisplayWidth(row.cells[i]));
    }
  }
  widths_fixed_ = true;
}

std::string TextTable::FormatLine(const std::vector<std::string>& cells,
                                  const std::vector<bool>& right_align, bool center) const {
  std::string line;
  for (size_t i = 0; i < widths_.size(); ++i) {
    const std::string& cell = cells[i];
    size_t w = DisplayWidth(cell);
    size_t pad = widths_[i] > w ? widths_[i] - w : 0;
    size_t left = 0;
    if (center) {
      left = pad / 2;
    } else if (right_align[i]) {
      left = pad;
    }
    line += i == 0 ? " " : " | ";
    line.append(left, ' ');
    line += cell;
    // No trailing blanks after the last column.
    if (i + 1 < widths_.size()) line.append(pad - left, ' ');
  }
  line += '\n';
  return line;
}

std::string TextTable::RenderHeader() {
  ComputeWidths();
  std::string out = FormatLine(headers_, std::vector<bool>(headers_.size()),
                               /*center=*/true);
  for (size_t i = 0; i < widths_.size(); ++i) {
    if (i > 0) out += '+';
    out.append(widths_[i] + 2, '-');
  }
  out += '\n';
  return out;
}

std::string TextTable::RenderRows() {
  ComputeWidths();
  std::string out;
  for (const Row& row : rows_) {
    out += FormatLine(row.cells, row.right_align, /*center=*/false);
  }
  rows_.clear();
  return out;
}

std::string TextTable::Render() {
  std::string out = RenderHeader();
  out += RenderRows();
  return out;
}

}  // namespace poolside::cli
