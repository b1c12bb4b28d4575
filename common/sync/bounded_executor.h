#ifndef POOLSIDE_COMMON_SYNC_BOUNDED_EXECUTOR_H_
#define POOLSIDE_COMMON_SYNC_BOUNDED_EXECUTOR_H_

// Runs tasks on a bounded set of threads of its own, for work that blocks
// (a database check, an index build) and must not hold the thread that
// accepted it. The tree starts no detached threads: background work goes
// through one of these, whose owner shuts it down before what the tasks use
// goes away.
//
// At most `max_threads` tasks run at once and at most `max_queued` more wait
// their turn (in submission order); past that Submit() refuses the task with
// RESOURCE_EXHAUSTED, so a burst of callers costs a refusal, not a thread or
// unbounded memory each. Threads start when work needs them (up to
// max_threads) and stay until Shutdown().
//
//   BoundedExecutor checks(/*max_threads=*/4, /*max_queued=*/0);
//   absl::Status s = checks.Submit([&db, done] { done(db.Check()); });
//   if (!s.ok()) return s;   // RESOURCE_EXHAUSTED: busy, retry later
//   ...
//   checks.Shutdown();       // before `db` goes away: runs what was accepted
//
// Thread-safe. Submit() may be called from any thread, also from a task.
// Shutdown() (and the destructor) waits for every accepted task, so it must
// not be called from a task.

#include <cstddef>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "common/sync/mutex.h"

namespace poolside::sync {

class BoundedExecutor {
 public:
  // max_threads >= 1.
  BoundedExecutor(int max_threads, size_t max_queued);
  // Shutdown().
  ~BoundedExecutor();
  BoundedExecutor(const BoundedExecutor&) = delete;
  BoundedExecutor& operator=(const BoundedExecutor&) = delete;

  // Runs `task` on one of the executor's threads: at once if one is free (or
  // can still be started), after the tasks queued before it otherwise.
  // RESOURCE_EXHAUSTED when max_threads tasks run and max_queued wait (or no
  // thread could be started); FAILED_PRECONDITION once Shutdown() has begun.
  // A refused task is destroyed without running.
  absl::Status Submit(std::function<void()> task);

  // Refuses further tasks, lets every accepted task run (queued ones too) and
  // joins the threads. Idempotent; a concurrent caller returns once the
  // first one has finished.
  void Shutdown();

  // Tasks accepted and not finished yet (running or queued).
  size_t pending() const;

 private:
  void Loop();

  const int max_threads_;
  const size_t max_queued_;
  mutable Mutex mu_;
  CondVar work_;      // a task was queued, or shutting down
  CondVar finished_;  // a thread ended
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  size_t pending_ ABSL_GUARDED_BY(mu_) = 0;  // queued + running
  int idle_ ABSL_GUARDED_BY(mu_) = 0;        // threads waiting for work
  int live_ ABSL_GUARDED_BY(mu_) = 0;        // threads started and not ended
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
};

}  // namespace poolside::sync

#endif  // POOLSIDE_COMMON_SYNC_BOUNDED_EXECUTOR_H_
