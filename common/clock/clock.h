#ifndef POOLSIDE_COMMON_CLOCK_CLOCK_H_
#define POOLSIDE_COMMON_CLOCK_CLOCK_H_

// An injectable source of the current time, so time-based behaviour (timeouts,
// lifetimes, idle reaping) can be tested deterministically.
//
// Production code takes a `Clock*` (defaulting to `Clock::Real()`); tests pass
// a `SimulatedClock` and move time with `Advance()` / `SetTime()`.
//
// Thread-safe: `Now()` may be called from any thread; `SimulatedClock` may be
// advanced concurrently with readers.

#include <mutex>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "common/sync/mutex.h"

namespace poolside {

class Clock {
 public:
  virtual ~Clock() = default;

  virtual absl::Time Now() const = 0;

  // The process-wide wall clock (`absl::Now()`). Never deleted.
  static Clock* Real();
};

// A clock that only moves when told to. Time never moves on its own, so code
// that waits on a real condition variable with a deadline derived from this
// clock must use real-time timeouts for the actual wait.
class SimulatedClock : public Clock {
 public:
  explicit SimulatedClock(absl::Time start = absl::UnixEpoch() + absl::Hours(24 * 365 * 50));

  absl::Time Now() const override;

  // Moves time forward by `d` (a negative `d` moves it back).
  void Advance(absl::Duration d);
  void SetTime(absl::Time t);

 private:
  // sync::Mutex: TSan must see this lock (common/sync/mutex.h).
  mutable sync::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace poolside

#endif  // POOLSIDE_COMMON_CLOCK_CLOCK_H_
