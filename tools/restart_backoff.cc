#include "tools/restart_backoff.h"

#include <algorithm>

namespace poolside::devstack {

RestartBackoff::RestartBackoff(RestartBackoffOptions options)
    : options_(options), next_(options.initial) {}

absl::Duration RestartBackoff::NextDelay(absl::Time started, absl::Time exited) {
  if (exited - started >= options_.healthy_after) {
    next_ = options_.initial;
    consecutive_exits_ = 0;
  }
  const absl::Duration delay = std::min(next_, options_.max);
  next_ = std::min(next_ * 2, options_.max);
  ++consecutive_exits_;
  return delay;
}

}  // namespace poolside::devstack
