#ifndef POOLSIDE_COMMON_SERVER_REACTOR_LOCK_H_
#define POOLSIDE_COMMON_SERVER_REACTOR_LOCK_H_

#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/support/status.h"

namespace poolside::server {

// Holds a gRPC callback reactor's own mutex; a Finish decided while it is held
// is made only after the mutex is released.
//
// From the moment Finish is called, gRPC may complete the call on another
// thread and run OnDone, which deletes the reactor and its mutex with it. A
// thread that calls Finish with the reactor's lock held (typically a worker,
// outside any reaction, so gRPC holds no reference of its own) can then unlock
// a destroyed mutex: absl aborts with "Mutex unlocked when destroyed or not
// locked", or the memory is already someone else's. So nothing of the reactor
// is touched after Finish: this lock unlocks first and calls Finish last.
//
//   void MaybeFinish() {
//     server::ReactorLock<StreamCall> lock(this, &mu_);
//     if (finished_ || writing_) return;
//     finished_ = true;
//     lock.FinishAfterUnlock(status_);
//   }
template <typename Reactor>
class ABSL_SCOPED_LOCKABLE ReactorLock {
 public:
  ReactorLock(Reactor* reactor, absl::Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu)
      : reactor_(reactor), mu_(mu) {
    mu_->Lock();
  }

  // Lives on the caller's stack, so its own members outlive the reactor.
  ~ReactorLock() ABSL_UNLOCK_FUNCTION() {
    mu_->Unlock();
    if (finish_.has_value()) reactor_->Finish(*std::move(finish_));
  }

  ReactorLock(const ReactorLock&) = delete;
  ReactorLock& operator=(const ReactorLock&) = delete;

  // Finishes the call with `status` once the lock is released. The caller
  // makes sure a call is finished once (a `finished_` flag under the lock).
  void FinishAfterUnlock(grpc::Status status) { finish_ = std::move(status); }

 private:
  Reactor* const reactor_;
  absl::Mutex* const mu_;
  std::optional<grpc::Status> finish_;
};

}  // namespace poolside::server

#endif  // POOLSIDE_COMMON_SERVER_REACTOR_LOCK_H_
