#ifndef POOLSIDE_SERVICES_QUERY_LSN_WAITERS_H_
#define POOLSIDE_SERVICES_QUERY_LSN_WAITERS_H_

// Calls waiting until a database's invalidation stream has applied a given
// WAL position (a read's min_lsn), each with a deadline:
//
//   waiters.Wait(&applied, lsn, deadline, [](bool reached) { ... });
//   applied.store(through); waiters.Advance(&applied);   // the applier
//
// `then(true)` runs on the thread calling Advance() once the position is
// reached (or at once, on the calling thread, if it already is); `then(false)`
// on this object's own thread when the deadline passes first, or from the
// destructor. Each `then` runs exactly once, must not block, and may call
// Wait() again. Positions are watched through the atomic the applier stores
// before it calls Advance(), so no advance is missed.
//
// Thread-safe.

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace poolside::query {

class LsnWaiters {
 public:
  LsnWaiters();
  // Runs every waiting `then(false)`, then joins its thread.
  ~LsnWaiters();
  LsnWaiters(const LsnWaiters&) = delete;
  LsnWaiters& operator=(const LsnWaiters&) = delete;

  void Wait(const std::atomic<uint64_t>* applied, uint64_t lsn, absl::Time deadline,
            std::function<void(bool)> then);
  // `applied` was advanced: runs the `then`s it satisfies.
  void Advance(const std::atomic<uint64_t>* applied);

  size_t waiting() const;

 private:
  struct Waiter {
    const std::atomic<uint64_t>* applied;
    uint64_t lsn;
    absl::Time deadline;
    uint64_t id;
    std::function<void(bool)> then;
  };
  void Run();

  mutable absl::Mutex mu_;
  // By (applied, lsn, id) for Advance, and by (deadline, id) for the timer.
  std::map<std::tuple<const void*, uint64_t, uint64_t>, std::shared_ptr<Waiter>> by_lsn_
      ABSL_GUARDED_BY(mu_);
  std::map<std::pair<absl::Time, uint64_t>, std::shared_ptr<Waiter>> by_deadline_
      ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::CondVar wake_;
  std::thread thread_;
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_LSN_WAITERS_H_
