#ifndef POOLSIDE_COMMON_TELEMETRY_LOG_H_
#define POOLSIDE_COMMON_TELEMETRY_LOG_H_

// Structured logging: one JSON object per line on stderr, e.g.
//   {"time":"2026-11-23T09:00:00.123456Z","level":"info","service":"query",
//    "message":"serving","listen":"127.0.0.1:50051"}
// A line logged inside a ScopedSpanContext (trace_context.h) also carries
// "trace_id" and "span_id".
//
// Usage:
//   poolside::telemetry::SetLogService("query");
//   LogInfo("pool warmed", {{"database", name}, {"size", absl::StrCat(n)}});
//
// Thread-safe: lines from concurrent callers never interleave.

#include <initializer_list>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"

namespace poolside::telemetry {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

using LogField = std::pair<absl::string_view, std::string>;

void SetLogService(absl::string_view service);
void SetMinLogLevel(LogLevel level);
// Parses "debug", "info", "warning"/"warn", "error"; false if unknown.
bool ParseLogLevel(absl::string_view text, LogLevel* level);
bool LogEnabled(LogLevel level);

void Log(LogLevel level, absl::string_view message, std::initializer_list<LogField> fields = {});

inline void LogDebug(absl::string_view m, std::initializer_list<LogField> f = {}) {
  Log(LogLevel::kDebug, m, f);
}
inline void LogInfo(absl::string_view m, std::initializer_list<LogField> f = {}) {
  Log(LogLevel::kInfo, m, f);
}
inline void LogWarning(absl::string_view m, std::initializer_list<LogField> f = {}) {
  Log(LogLevel::kWarning, m, f);
}
inline void LogError(absl::string_view m, std::initializer_list<LogField> f = {}) {
  Log(LogLevel::kError, m, f);
}

// Appends `text` to `out` as a JSON string literal (quotes included).
void AppendJsonString(absl::string_view text, std::string* out);

}  // namespace poolside::telemetry

#endif  // POOLSIDE_COMMON_TELEMETRY_LOG_H_
