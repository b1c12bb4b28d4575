#include "common/telemetry/status_page.h"

#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace poolside::telemetry {
namespace {

std::string SectionId(absl::string_view title) {
  std::string id;
  for (char c : title) {
    if (absl::ascii_isalnum(c)) {
      id.push_back(absl::ascii_tolower(c));
    } else if (!id.empty() && id.back() != '-') {
      id.push_back('-');
    }
  }
  while (!id.empty() && id.back() == '-') id.pop_back();
  return id.empty() ? "section" : id;
}

constexpr absl::string_view kStyle =
    "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}"
    "h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.4em 0 .4em}"
    ".facts span{margin-right:1.5em}.facts b{font-weight:600}"
    "table{border-collapse:collapse}th,td{padding:.2em .8em;border-bottom:1px solid #ddd;"
    "text-align:right}th:first-child,td:first-child{text-align:left}"
    "td.sql{text-align:left;font-family:monospace;max-width:60em;overflow-wrap:anywhere}"
    ".empty{color:#777}";

}  // namespace

std::string HtmlEscape(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

std::string FormatBytes(double bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (std::fabs(bytes) >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  return unit == 0 ? absl::StrFormat("%.0f B", bytes)
                   : absl::StrFormat("%.1f %s", bytes, kUnits[unit]);
}

std::string FormatSeconds(double seconds) {
  if (!std::isfinite(seconds)) return "-";
  if (seconds < 1e-3) return absl::StrFormat("%.0f µs", seconds * 1e6);
  if (seconds < 1) return absl::StrFormat("%.1f ms", seconds * 1e3);
  if (seconds < 120) return absl::StrFormat("%.2f s", seconds);
  const int64_t s = static_cast<int64_t>(seconds);
  if (s < 7200) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%dh%02dm", s / 3600, (s / 60) % 60);
}

std::string FormatCount(double count) {
  if (std::fabs(count) < 10000) return absl::StrFormat("%.0f", count);
  if (std::fabs(count) < 1e6) return absl::StrFormat("%.1fk", count / 1e3);
  if (std::fabs(count) < 1e9) return absl::StrFormat("%.1fM", count / 1e6);
  return absl::StrFormat("%.1fG", count / 1e9);
}

std::string FormatRatio(double part, double whole) {
  if (whole <= 0) return "-";
  return absl::StrFormat("%.1f%%", 100.0 * part / whole);
}

std::string RenderStatusPage(const StatusHeader& header, const std::vector<StatusTable>& tables) {
  std::string title = HtmlEscape(absl::StrCat("poolside ", header.service));
  std::string html = absl::StrCat(
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<meta name=\"viewport\" content=\"width=device-width\"><title>",
      title, "</title><style>", kStyle, "</style></head>\n<body>\n<h1>", title,
      "</h1>\n<p class=\"facts\" id=\"facts\">");
  for (const auto& [label, value] : header.facts) {
    absl::StrAppend(&html, "<span>", HtmlEscape(label), ": <b>", HtmlEscape(value), "</b></span>");
  }
  absl::StrAppend(&html, "<span><a href=\"metrics\">/metrics</a></span></p>\n");
  for (const StatusTable& table : tables) {
    const std::string id = SectionId(table.title);
    absl::StrAppend(&html, "<section id=\"", id, "\"><h2>", HtmlEscape(table.title), "</h2>");
    if (table.rows.empty()) {
      absl::StrAppend(&html, "<p class=\"empty\">", HtmlEscape(table.empty_text), "</p>");
    } else {
      absl::StrAppend(&html, "<table><thead><tr>");
      for (const std::string& c : table.columns)
        absl::StrAppend(&html, "<th>", HtmlEscape(c), "</th>");
      absl::StrAppend(&html, "</tr></thead><tbody>");
      for (const auto& row : table.rows) {
        absl::StrAppend(&html, "<tr>");
        for (size_t i = 0; i < row.size(); ++i) {
          const bool sql = i == 0 && table.code_first_column;
          absl::StrAppend(&html, sql ? "<td class=\"sql\">" : "<td>", HtmlEscape(row[i]), "</td>");
        }
        absl::StrAppend(&html, "</tr>");
      }
      absl::StrAppend(&html, "</tbody></table>");
    }
    absl::StrAppend(&html, "</section>\n");
  }
  absl::StrAppend(&html, "</body></html>\n");
  return html;
}

}  // namespace poolside::telemetry
