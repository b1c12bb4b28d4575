#include "common/telemetry/trace_context.h"

#include <algorithm>

#include "absl/strings/str_split.h"

namespace poolside::telemetry {
namespace {

thread_local const SpanContext* current_context = nullptr;

constexpr char kHex[] = "0123456789abcdef";

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;  // uppercase is invalid in traceparent
}

// Decodes exactly out.size() * 2 lowercase hex digits.
template <size_t N>
bool DecodeHex(absl::string_view text, std::array<uint8_t, N>* out) {
  if (text.size() != 2 * N) return false;
  for (size_t i = 0; i < N; ++i) {
    const int hi = HexValue(text[2 * i]);
    const int lo = HexValue(text[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    (*out)[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

template <size_t N>
std::string EncodeHex(const std::array<uint8_t, N>& bytes) {
  std::string out(2 * N, '0');
  for (size_t i = 0; i < N; ++i) {
    out[2 * i] = kHex[bytes[i] >> 4];
    out[2 * i + 1] = kHex[bytes[i] & 0x0f];
  }
  return out;
}

template <size_t N>
bool AllZero(const std::array<uint8_t, N>& bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](uint8_t b) { return b == 0; });
}

bool AcceptableTracestate(absl::string_view state) {
  if (state.size() > 512) return false;
  for (char c : state) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  int members = 0;
  for (absl::string_view m : absl::StrSplit(state, ',')) {
    if (!m.empty()) ++members;
  }
  return members <= 32;
}

const SpanContext& Invalid() {
  static const SpanContext* invalid = new SpanContext();
  return *invalid;
}

}  // namespace

bool SpanContext::valid() const { return !AllZero(trace_id) && !AllZero(span_id); }

std::string SpanContext::TraceIdHex() const { return EncodeHex(trace_id); }

std::string SpanContext::SpanIdHex() const { return EncodeHex(span_id); }

std::optional<SpanContext> ParseTraceparent(absl::string_view traceparent,
                                            absl::string_view tracestate) {
  // version "-" trace-id "-" parent-id "-" flags: 2+1+32+1+16+1+2 = 55.
  if (traceparent.size() < 55) return std::nullopt;
  uint8_t version = 0;
  {
    std::array<uint8_t, 1> v;
    if (!DecodeHex(traceparent.substr(0, 2), &v)) return std::nullopt;
    version = v[0];
  }
  if (version == 0xff) return std::nullopt;
  if (version == 0 && traceparent.size() != 55) return std::nullopt;
  // A future version may append fields after a '-'.
  if (traceparent.size() > 55 && traceparent[55] != '-') return std::nullopt;
  if (traceparent[2] != '-' || traceparent[35] != '-' || traceparent[52] != '-') {
    return std::nullopt;
  }
  SpanContext out;
  std::array<uint8_t, 1> flags;
  if (!DecodeHex(traceparent.substr(3, 32), &out.trace_id) ||
      !DecodeHex(traceparent.substr(36, 16), &out.span_id) ||
      !DecodeHex(traceparent.substr(53, 2), &flags)) {
    return std::nullopt;
  }
  if (!out.valid()) return std::nullopt;
  out.flags = flags[0];
  out.remote = true;
  if (AcceptableTracestate(tracestate)) out.trace_state = std::string(tracestate);
  return out;
}

std::string FormatTraceparent(const SpanContext& context) {
  if (!context.valid()) return "";
  std::string out;
  out.reserve(55);
  out.append("00-").append(context.TraceIdHex()).push_back('-');
  out.append(context.SpanIdHex()).push_back('-');
  out.push_back(kHex[context.flags >> 4]);
  out.push_back(kHex[context.flags & 0x0f]);
  return out;
}

const SpanContext& CurrentSpanContext() {
  return current_context != nullptr ? *current_context : Invalid();
}

ScopedSpanContext::ScopedSpanContext(SpanContext context)
    : context_(std::move(context)), previous_(current_context) {
  current_context = &context_;
}

ScopedSpanContext::~ScopedSpanContext() { current_context = previous_; }

}  // namespace poolside::telemetry
