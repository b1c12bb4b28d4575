#ifndef POOLSIDE_TOOLS_RESTART_BACKOFF_H_
#define POOLSIDE_TOOLS_RESTART_BACKOFF_H_

// When devstack restarts a service that exited: like the kubelet's
// CrashLoopBackOff, the delay doubles with each exit up to a ceiling, and
// starts over once the service has stayed up long enough to count as healthy.
//
//   RestartBackoff backoff;
//   ...the service exits...
//   absl::Duration wait = backoff.NextDelay(started_at, absl::Now());
//
// Pure (times are passed in); not thread-safe.

#include "absl/time/time.h"

namespace poolside::devstack {

struct RestartBackoffOptions {
  absl::Duration initial = absl::Milliseconds(500);
  absl::Duration max = absl::Seconds(30);
  // A run at least this long resets the delay to `initial`.
  absl::Duration healthy_after = absl::Seconds(60);
};

class RestartBackoff {
 public:
  RestartBackoff() : RestartBackoff(RestartBackoffOptions{}) {}
  explicit RestartBackoff(RestartBackoffOptions options);

  // The delay before restarting a service that ran from `started` to
  // `exited`; a start that failed counts as a run of zero length.
  absl::Duration NextDelay(absl::Time started, absl::Time exited);

  // Exits since the last healthy run (the count NextDelay doubled over).
  int consecutive_exits() const { return consecutive_exits_; }

 private:
  const RestartBackoffOptions options_;
  absl::Duration next_;
  int consecutive_exits_ = 0;
};

}  // namespace poolside::devstack

#endif  // POOLSIDE_TOOLS_RESTART_BACKOFF_H_
