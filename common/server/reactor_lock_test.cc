#include "common/server/reactor_lock.h"

#include <vector>

#include "absl/synchronization/mutex.h"
#include "grpcpp/support/status.h"
#include "gtest/gtest.h"

namespace poolside::server {
namespace {

// Stands in for a callback reactor: Finish is where gRPC may delete it.
class FakeReactor {
 public:
  explicit FakeReactor(bool* destroyed = nullptr) : destroyed_(destroyed) {}
  ~FakeReactor() {
    if (destroyed_ != nullptr) *destroyed_ = true;
  }

  void Finish(grpc::Status status) {
    mutex_was_free = false;
    if (mu.TryLock()) {
      mutex_was_free = true;
      mu.Unlock();
    }
    finished.push_back(status);
    if (delete_on_finish) delete this;  // as an inline OnDone does
  }

  // Locks the mutex and finishes when told to, as a reactor's method would.
  void MaybeFinish(bool finish, grpc::Status status) {
    ReactorLock<FakeReactor> lock(this, &mu);
    if (finish) lock.FinishAfterUnlock(std::move(status));
  }

  absl::Mutex mu;
  bool mutex_was_free = false;
  bool delete_on_finish = false;
  std::vector<grpc::Status> finished;

 private:
  bool* const destroyed_;
};

TEST(ReactorLockTest, FinishIsCalledAfterTheMutexIsReleased) {
  FakeReactor reactor;
  reactor.MaybeFinish(true, grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "too many rows"));
  ASSERT_EQ(reactor.finished.size(), 1u);
  EXPECT_TRUE(reactor.mutex_was_free);
  EXPECT_EQ(reactor.finished[0].error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(reactor.finished[0].error_message(), "too many rows");
}

TEST(ReactorLockTest, NoFinishUnlessAsked) {
  FakeReactor reactor;
  reactor.MaybeFinish(false, grpc::Status::OK);
  EXPECT_TRUE(reactor.finished.empty());
  // The lock was released all the same.
  if (reactor.mu.TryLock()) {
    reactor.mu.Unlock();
  } else {
    ADD_FAILURE() << "MaybeFinish left the reactor's lock held";
  }
}

TEST(ReactorLockTest, AReactorDeletedByFinishIsNotTouchedAgain) {
  bool destroyed = false;
  auto* reactor = new FakeReactor(&destroyed);
  reactor->delete_on_finish = true;
  // Under --config=asan a touch of the deleted reactor (its mutex) is a
  // heap-use-after-free report; absl's Mutex aborts on most others.
  reactor->MaybeFinish(true, grpc::Status::OK);
  EXPECT_TRUE(destroyed);
}

}  // namespace
}  // namespace poolside::server
