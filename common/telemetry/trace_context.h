#ifndef POOLSIDE_COMMON_TELEMETRY_TRACE_CONTEXT_H_
#define POOLSIDE_COMMON_TELEMETRY_TRACE_CONTEXT_H_

// W3C Trace Context (https://www.w3.org/TR/trace-context/): the identity of a
// span as it travels between processes in the `traceparent` and `tracestate`
// headers (gRPC metadata), and the span a thread is working for right now.
//
//   std::optional<SpanContext> parent = ParseTraceparent(
//       "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "");
//   FormatTraceparent(*parent);  // the same text back
//
//   {
//     ScopedSpanContext scope(work.trace);   // on the thread doing the work
//     LogInfo("...");                        // carries trace_id and span_id
//   }
//
// The current context is per thread and only for code that runs synchronously
// inside the scope (logs, a client call started there, common/db). Work handed
// to another thread carries its SpanContext explicitly (a field of the work) and
// opens a new scope there.
//
// Thread-safe: SpanContext is a value; the current context is thread-local.

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace poolside::telemetry {

using TraceId = std::array<uint8_t, 16>;
using SpanId = std::array<uint8_t, 8>;

struct SpanContext {
  TraceId trace_id{};
  SpanId span_id{};
  uint8_t flags = 0;        // W3C trace-flags; bit 0: sampled
  std::string trace_state;  // W3C tracestate, passed through unchanged
  bool remote = false;      // received from another process

  // Both ids non-zero.
  bool valid() const;
  bool sampled() const { return (flags & 0x01) != 0; }
  std::string TraceIdHex() const;  // 32 lowercase hex digits
  std::string SpanIdHex() const;   // 16 lowercase hex digits
};

// Parses a `traceparent` header: "00-<32 hex trace id>-<16 hex span id>-<2 hex
// flags>" (lowercase; a higher version is accepted when its first four fields
// have this shape, as the specification asks). nullopt for anything else, all-zero
// ids, or version "ff": the callee then starts a new trace. `tracestate` is kept
// when it is at most 512 bytes of printable ASCII with at most 32 members, else
// dropped. The result is marked remote.
std::optional<SpanContext> ParseTraceparent(absl::string_view traceparent,
                                            absl::string_view tracestate = "");

// "00-<trace id>-<span id>-<flags>"; empty for an invalid context.
std::string FormatTraceparent(const SpanContext& context);

// The context the calling thread works for (invalid if none).
const SpanContext& CurrentSpanContext();

// Makes `context` the calling thread's current context until destroyed, then
// restores the previous one. Scopes nest; create and destroy on one thread.
class ScopedSpanContext {
 public:
  explicit ScopedSpanContext(SpanContext context);
  ~ScopedSpanContext();
  ScopedSpanContext(const ScopedSpanContext&) = delete;
  ScopedSpanContext& operator=(const ScopedSpanContext&) = delete;

 private:
  const SpanContext context_;
  const SpanContext* previous_;
};

// Names of the gRPC metadata keys.
inline constexpr char kTraceparentHeader[] = "traceparent";
inline constexpr char kTracestateHeader[] = "tracestate";

}  // namespace poolside::telemetry

#endif  // POOLSIDE_COMMON_TELEMETRY_TRACE_CONTEXT_H_
