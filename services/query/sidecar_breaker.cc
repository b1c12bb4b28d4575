#include "services/query/sidecar_breaker.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/telemetry/log.h"

namespace poolside::query {

SidecarBreaker::SidecarBreaker(Options options, const Clock* clock)
    : options_(std::move(options)), clock_(clock) {}

bool SidecarBreaker::Usable() const {
  absl::MutexLock lock(&mu_);
  return clock_->Now() >= skip_until_;
}

void SidecarBreaker::Record(bool ok) {
  absl::MutexLock lock(&mu_);
  if (ok) {
    consecutive_failures_ = 0;
    return;
  }
  if (++consecutive_failures_ < options_.failure_threshold) return;
  const absl::Time now = clock_->Now();
  if (now >= skip_until_) {
    telemetry::LogWarning(
        "cache sidecar failing; reads go to the database for a while",
        {{"target", options_.target},
         {"retry_after_ms", absl::StrCat(absl::ToInt64Milliseconds(options_.retry_after))}});
  }
  skip_until_ = now + options_.retry_after;
  consecutive_failures_ = 0;
}

}  // namespace poolside::query
