#ifndef POOLSIDE_COMMON_SERVER_MUTEX_MODE_H_
#define POOLSIDE_COMMON_SERVER_MUTEX_MODE_H_

// Debian's Abseil is built without NDEBUG, which leaves absl::Mutex deadlock
// detection on: every lock, unlock and Mutex destruction then updates a global
// lock-order graph. gRPC's own locks are absl::Mutex, so a process pays it on
// every call (about a tenth of a gRPC client's or server's instructions).
// Long-running binaries (services, load generators) turn it off unless
// --mutex_deadlock_detection asks for it; tests keep Abseil's default (on),
// where a lock-order inversion should abort.

namespace poolside::server {

// Call after absl::ParseCommandLine.
void ApplyMutexDeadlockDetectionFlag();

}  // namespace poolside::server

#endif  // POOLSIDE_COMMON_SERVER_MUTEX_MODE_H_
