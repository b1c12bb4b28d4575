#include "common/server/queue_thread.h"

#include <atomic>
#include <memory>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace poolside::server {
namespace {

constexpr absl::Duration kTimeout = absl::Seconds(30);

// Runs `fn` on `cq`'s queue thread and waits for it.
bool RunAndWait(grpc::CompletionQueue* cq, std::function<void()> fn) {
  auto ran = std::make_shared<absl::Notification>();
  RunOnQueue(cq, [fn = std::move(fn), ran] {
    fn();
    ran->Notify();
  });
  return ran->WaitForNotificationWithTimeout(kTimeout);
}

class QueueThreadTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Death tests start a fresh process for the statement (gRPC's threads
    // do not survive a plain fork).
    GTEST_FLAG_SET(death_test_style, "threadsafe");
  }
};

TEST_F(QueueThreadTest, KnowsItsThread) {
  grpc::CompletionQueue cq;
  auto thread = std::make_unique<QueueThread>(&cq);
  EXPECT_EQ(thread->queue(), &cq);
  EXPECT_FALSE(thread->IsCurrent());
  EXPECT_FALSE(QueueThread::On(&cq));
  QueueThread::AssertNotOn(&cq);  // the test's thread: passes

  bool current = false;
  bool on = false;
  ASSERT_TRUE(RunAndWait(&cq, [&] {
    current = thread->IsCurrent();
    on = QueueThread::On(&cq);
    QueueThread::AssertOn(&cq);  // passes
  }));
  EXPECT_TRUE(current);
  EXPECT_TRUE(on);

  cq.Shutdown();
  thread->Join();
  thread->Join();  // idempotent
  EXPECT_FALSE(QueueThread::On(&cq));
}

TEST_F(QueueThreadTest, AnotherQueuesThreadIsNotThisQueuesThread) {
  grpc::CompletionQueue a;
  grpc::CompletionQueue b;
  QueueThread thread_a(&a);
  QueueThread thread_b(&b);
  bool b_on_a = true;
  bool b_on_b = false;
  ASSERT_TRUE(RunAndWait(&b, [&] {
    b_on_a = QueueThread::On(&a);
    b_on_b = QueueThread::On(&b);
  }));
  EXPECT_FALSE(b_on_a);
  EXPECT_TRUE(b_on_b);
  EXPECT_FALSE(QueueThread::On(nullptr));
  a.Shutdown();
  b.Shutdown();
}

TEST_F(QueueThreadTest, PollQueueMakesTheCallerTheQueueThreadUntilItReturns) {
  grpc::CompletionQueue cq;
  std::atomic<bool> on_while_polling{false};
  RunOnQueue(&cq, [&] {
    on_while_polling = QueueThread::On(&cq);
    cq.Shutdown();
  });
  PollQueue(&cq);  // returns once shut down and drained
  EXPECT_TRUE(on_while_polling);
  EXPECT_FALSE(QueueThread::On(&cq));
}

TEST_F(QueueThreadTest, QueueThreadOnlyIsCaughtOnAnotherThread) {
  grpc::CompletionQueue cq;
  QueueThread thread(&cq);
  EXPECT_DEATH(QueueThread::AssertOn(&cq), "queue thread only");
  // Nor is any thread the queue thread of a queue nobody polls.
  grpc::CompletionQueue idle;
  EXPECT_DEATH(QueueThread::AssertOn(&idle), "queue thread only");
  cq.Shutdown();
}

TEST_F(QueueThreadTest, WaitingForTheQueueIsCaughtOnTheQueueThread) {
  EXPECT_DEATH(
      {
        grpc::CompletionQueue cq;
        QueueThread thread(&cq);
        RunAndWait(&cq, [&] { QueueThread::AssertNotOn(&cq); });
      },
      "must not run on the queue thread");
}

}  // namespace
}  // namespace poolside::server
