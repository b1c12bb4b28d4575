#ifndef POOLSIDE_COMMON_TELEMETRY_STATUS_PAGE_H_
#define POOLSIDE_COMMON_TELEMETRY_STATUS_PAGE_H_

// The compact HTML status page each service serves at "/" on its metrics port:
// a header (service, uptime, memory, CPU, file descriptors) and one table per
// section the service registered (pools, cache hit ratio, ingest rate, slowest
// statements, gRPC calls). Static HTML, no scripts; every text is escaped.
//
// Pure functions; thread-safe.

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace poolside::telemetry {

struct StatusTable {
  // Also the section's element id, lowercased with '-' for spaces ("Pools" ->
  // id="pools").
  std::string title;
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;
  // Shown instead of the table when there are no rows.
  std::string empty_text = "none yet";
  // The first column holds code (SQL): monospaced, left-aligned, wrapped.
  bool code_first_column = false;
};

struct StatusHeader {
  std::string service;
  // Label and value pairs shown under the title, e.g. {"uptime", "3m12s"}.
  std::vector<std::pair<std::string, std::string>> facts;
};

std::string RenderStatusPage(const StatusHeader& header, const std::vector<StatusTable>& tables);

// HTML-escapes &, <, >, " and '.
std::string HtmlEscape(absl::string_view text);

// Human-readable quantities for the page: "1.5 MiB", "12.3 ms", "4.2k".
std::string FormatBytes(double bytes);
std::string FormatSeconds(double seconds);
std::string FormatCount(double count);
// "87.5%" of part/whole; "-" when whole is 0.
std::string FormatRatio(double part, double whole);

}  // namespace poolside::telemetry

#endif  // POOLSIDE_COMMON_TELEMETRY_STATUS_PAGE_H_
