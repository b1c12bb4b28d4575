#include "common/server/mutex_mode.h"

#include "absl/flags/flag.h"
#include "absl/synchronization/mutex.h"

ABSL_FLAG(bool, mutex_deadlock_detection, false,
          "Abseil's lock-order graph on every Mutex (a debugging aid; it costs "
          "about a tenth of the CPU on the request path).");

namespace poolside::server {

void ApplyMutexDeadlockDetectionFlag() {
  absl::SetMutexDeadlockDetectionMode(absl::GetFlag(FLAGS_mutex_deadlock_detection)
                                          ? absl::OnDeadlockCycle::kAbort
                                          : absl::OnDeadlockCycle::kIgnore);
}

}  // namespace poolside::server
