#include "common/sync/bounded_executor.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "common/sync/mutex.h"
#include "gtest/gtest.h"

namespace poolside::sync {
namespace {

constexpr auto kTimeout = std::chrono::seconds(30);

// What the tasks of a test share: how many run now (and at most), which ran
// in which order, and a gate that holds them until the test opens it.
class Tasks {
 public:
  std::function<void()> Blocking(int id) {
    return [this, id] {
      MutexLock lock(&mu_);
      ++running_;
      max_running_ = std::max(max_running_, running_);
      changed_.SignalAll();
      while (!open_) changed_.Wait(&mu_);
      --running_;
      ran_.push_back(id);
      changed_.SignalAll();
    };
  }

  void Open() {
    MutexLock lock(&mu_);
    open_ = true;
    changed_.SignalAll();
  }

  // Waits until `n` tasks are running; false after kTimeout.
  bool AwaitRunning(int n) {
    const auto deadline = std::chrono::steady_clock::now() + kTimeout;
    MutexLock lock(&mu_);
    while (running_ != n) {
      if (!changed_.WaitUntil(&mu_, deadline) && running_ != n) return false;
    }
    return true;
  }

  std::vector<int> ran() {
    MutexLock lock(&mu_);
    return ran_;
  }
  int max_running() {
    MutexLock lock(&mu_);
    return max_running_;
  }

 private:
  Mutex mu_;
  CondVar changed_;
  bool open_ ABSL_GUARDED_BY(mu_) = false;
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  int max_running_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<int> ran_ ABSL_GUARDED_BY(mu_);
};

TEST(BoundedExecutorTest, RunsAtMostMaxThreadsAndQueuesAtMostMaxQueued) {
  Tasks tasks;
  BoundedExecutor executor(/*max_threads=*/2, /*max_queued=*/3);
  ASSERT_TRUE(executor.Submit(tasks.Blocking(0)).ok());
  ASSERT_TRUE(executor.Submit(tasks.Blocking(1)).ok());
  ASSERT_TRUE(tasks.AwaitRunning(2));
  for (int id = 2; id < 5; ++id) ASSERT_TRUE(executor.Submit(tasks.Blocking(id)).ok()) << id;
  EXPECT_EQ(executor.pending(), 5u);

  // Full: refused, and the refused task never runs.
  std::atomic<bool> refused_ran{false};
  const absl::Status full = executor.Submit([&] { refused_ran = true; });
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_EQ(executor.pending(), 5u);

  tasks.Open();
  executor.Shutdown();
  EXPECT_EQ(tasks.max_running(), 2);
  // Each accepted task ran once (their order: ShutdownRunsQueuedWorkThenRefuses).
  std::vector<int> ran = tasks.ran();
  std::sort(ran.begin(), ran.end());
  EXPECT_EQ(ran, (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_FALSE(refused_ran);
  EXPECT_EQ(executor.pending(), 0u);
}

TEST(BoundedExecutorTest, FreedCapacityIsUsableAgain) {
  BoundedExecutor executor(/*max_threads=*/1, /*max_queued=*/0);
  for (int i = 0; i < 20; ++i) {
    Mutex mu;
    CondVar done_cv;
    bool done = false;
    ASSERT_TRUE(executor
                    .Submit([&] {
                      MutexLock lock(&mu);
                      done = true;
                      done_cv.SignalAll();
                    })
                    .ok())
        << i;
    {
      const auto deadline = std::chrono::steady_clock::now() + kTimeout;
      MutexLock lock(&mu);
      while (!done) ASSERT_TRUE(done_cv.WaitUntil(&mu, deadline) || done);
    }
    // The task has finished; its slot frees once its thread takes the next.
    const auto deadline = std::chrono::steady_clock::now() + kTimeout;
    while (executor.pending() != 0) {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline);
      std::this_thread::yield();
    }
  }
}

TEST(BoundedExecutorTest, ShutdownRunsQueuedWorkThenRefuses) {
  Tasks tasks;
  BoundedExecutor executor(/*max_threads=*/1, /*max_queued=*/4);
  ASSERT_TRUE(executor.Submit(tasks.Blocking(0)).ok());
  ASSERT_TRUE(tasks.AwaitRunning(1));
  for (int id = 1; id < 5; ++id) ASSERT_TRUE(executor.Submit(tasks.Blocking(id)).ok());

  std::vector<int> ran_when_shut_down;
  std::thread shutter([&] {
    executor.Shutdown();
    ran_when_shut_down = tasks.ran();
  });
  tasks.Open();
  shutter.join();
  // Shutdown returned only once every accepted task had run, in order.
  EXPECT_EQ(ran_when_shut_down, (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_EQ(executor.Submit([] {}).code(), absl::StatusCode::kFailedPrecondition);
  executor.Shutdown();  // again: nothing left, returns at once
  EXPECT_EQ(executor.pending(), 0u);
}

TEST(BoundedExecutorTest, DestructorRunsQueuedWork) {
  Tasks tasks;
  {
    BoundedExecutor executor(/*max_threads=*/2, /*max_queued=*/8);
    for (int id = 0; id < 10; ++id) ASSERT_TRUE(executor.Submit(tasks.Blocking(id)).ok());
    ASSERT_TRUE(tasks.AwaitRunning(2));
    tasks.Open();
  }
  EXPECT_EQ(tasks.ran().size(), 10u);
  EXPECT_EQ(tasks.max_running(), 2);
}

// Hostile use: several threads submit as fast as they can, tasks submit more
// work themselves, and shutdown races the submitters. Every accepted task
// runs exactly once, no refused one runs, and no more than max_threads run at
// once. (Run under ThreadSanitizer too: tag "tsan".)
TEST(BoundedExecutorTest, ConcurrentSubmittersAndShutdown) {
  constexpr int kSubmitters = 4;
  constexpr int kMaxThreads = 3;
  auto executor = std::make_unique<BoundedExecutor>(kMaxThreads, /*max_queued=*/16);
  std::atomic<int> running{0};
  std::atomic<int> max_running{0};
  std::atomic<int> ran{0};
  std::atomic<int> attempts{0};
  std::atomic<int> accepted{0};
  std::atomic<int> closed{0};
  // Submits one task (which submits more, to depth 2); false once closed.
  std::function<bool(int)> submit = [&](int depth) {
    ++attempts;
    const absl::Status s = executor->Submit([&, depth] {
      const int now = ++running;
      int seen = max_running.load();
      while (now > seen && !max_running.compare_exchange_weak(seen, now)) {
      }
      ++ran;
      if (depth < 2) submit(depth + 1);  // work that submits work
      --running;
    });
    if (s.ok()) {
      ++accepted;
      return true;
    }
    if (s.code() == absl::StatusCode::kResourceExhausted) return true;
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    ++closed;
    return false;
  };
  // Each submitter submits until it finds the executor shut down.
  std::vector<std::thread> submitters;
  for (int t = 0; t < kSubmitters; ++t) {
    submitters.emplace_back([&] {
      while (submit(0)) {
      }
    });
  }
  // Shut down while they are at it.
  std::thread shutter([&] {
    while (attempts.load() < 5000) std::this_thread::yield();
    executor->Shutdown();
  });
  for (std::thread& t : submitters) t.join();
  shutter.join();
  executor.reset();

  EXPECT_EQ(ran.load(), accepted.load());
  EXPECT_GT(accepted.load(), 0);
  EXPECT_GE(closed.load(), kSubmitters);
  EXPECT_LE(max_running.load(), kMaxThreads);
}

}  // namespace
}  // namespace poolside::sync
