#include "common/sync/mutex.h"

#include <chrono>
#include <functional>
#include <future>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "gtest/gtest.h"

namespace poolside::sync {
namespace {

constexpr auto kPatience = std::chrono::seconds(30);

// Runs `increment` 10000 times on each of 4 threads at once; returns when all
// are done.
void IncrementFromFourThreads(const std::function<void()>& increment) {
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&increment] {
      for (int i = 0; i < 10000; ++i) increment();
    });
  }
  for (std::thread& t : threads) t.join();
}

struct Counter {
  Mutex mu;
  int value ABSL_GUARDED_BY(mu) = 0;
};

TEST(MutexTest, MutexLockExcludesOtherThreads) {
  Counter c;
  IncrementFromFourThreads([&c] {
    MutexLock lock(&c.mu);
    ++c.value;
  });
  MutexLock lock(&c.mu);
  EXPECT_EQ(c.value, 40000);
}

TEST(MutexTest, UnlockReleasesEarlyAndLockRetakes) {
  Counter c;
  MutexLock lock(&c.mu);
  c.value = 1;
  lock.Unlock();
  // Another thread can take the lock now.
  std::async(std::launch::async, [&c] {
    MutexLock other(&c.mu);
    c.value = 2;
  }).get();
  lock.Lock();
  EXPECT_EQ(c.value, 2);
}

TEST(MutexTest, DestructorReleasesOnlyWhatIsHeld) {
  Counter c;
  {
    MutexLock lock(&c.mu);
    lock.Unlock();
  }
  MutexLock again(&c.mu);  // not locked twice, not unlocked twice
  c.value = 3;
  EXPECT_EQ(c.value, 3);
}

TEST(CondVarTest, WaitReturnsAfterSignal) {
  Counter c;
  CondVar changed;
  std::thread setter([&] {
    MutexLock lock(&c.mu);
    c.value = 7;
    changed.SignalAll();
  });
  {
    MutexLock lock(&c.mu);
    const auto give_up = std::chrono::steady_clock::now() + kPatience;
    while (c.value != 7 && std::chrono::steady_clock::now() < give_up) {
      changed.WaitUntil(&c.mu, give_up);
    }
    EXPECT_EQ(c.value, 7);
  }
  setter.join();
}

TEST(CondVarTest, WaitForTimesOutWithoutSignalAndKeepsTheLock) {
  Counter c;
  CondVar never;
  MutexLock lock(&c.mu);
  bool timed_out = false;
  // A wait may also end spuriously; with no signal at all, one times out.
  for (int i = 0; i < 1000 && !timed_out; ++i) {
    timed_out = !never.WaitFor(&c.mu, std::chrono::milliseconds(1));
  }
  EXPECT_TRUE(timed_out);
  c.value = 1;  // still held: TSan and the analysis both see the write locked
  EXPECT_EQ(c.value, 1);
}

TEST(SharedMutexTest, ReadersShareWritersExclude) {
  struct {
    SharedMutex mu;
    int value ABSL_GUARDED_BY(mu) = 0;
  } s;
  {
    ReaderMutexLock reader(&s.mu);
    // A second reader gets in while the first holds the lock.
    auto second = std::async(std::launch::async, [&s] {
      ReaderMutexLock lock(&s.mu);
      return s.value;
    });
    ASSERT_EQ(second.wait_for(kPatience), std::future_status::ready);
    EXPECT_EQ(second.get(), 0);
  }
  IncrementFromFourThreads([&s] {
    WriterMutexLock lock(&s.mu);
    ++s.value;
  });
  ReaderMutexLock lock(&s.mu);
  EXPECT_EQ(s.value, 40000);
}

}  // namespace
}  // namespace poolside::sync
