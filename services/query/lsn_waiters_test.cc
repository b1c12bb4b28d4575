#include "services/query/lsn_waiters.h"

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace poolside::query {
namespace {

struct Result {
  absl::Notification done;
  std::atomic<int> calls{0};
  bool reached = false;
  std::thread::id thread;
};

std::function<void(bool)> Record(Result* r) {
  return [r](bool reached) {
    r->reached = reached;
    r->thread = std::this_thread::get_id();
    if (r->calls.fetch_add(1) == 0) r->done.Notify();
  };
}

TEST(LsnWaitersTest, ReachedPositionsRunOnTheAdvancingThreadOthersTimeOut) {
  LsnWaiters waiters;
  std::atomic<uint64_t> a{10}, b{10};
  Result already, at_20, at_30, on_b, late;
  waiters.Wait(&a, 10, absl::Now() + absl::Seconds(60), Record(&already));
  EXPECT_TRUE(already.done.HasBeenNotified()) << "already reached: at once";
  EXPECT_TRUE(already.reached);
  waiters.Wait(&a, 20, absl::Now() + absl::Seconds(60), Record(&at_20));
  waiters.Wait(&a, 30, absl::Now() + absl::Seconds(60), Record(&at_30));
  waiters.Wait(&b, 15, absl::Now() + absl::Seconds(60), Record(&on_b));
  waiters.Wait(&a, 1000, absl::Now() + absl::Milliseconds(50), Record(&late));
  EXPECT_EQ(waiters.waiting(), 4u);
  a.store(25);
  waiters.Advance(&a);
  ASSERT_TRUE(at_20.done.HasBeenNotified());
  EXPECT_TRUE(at_20.reached);
  EXPECT_EQ(at_20.thread, std::this_thread::get_id());
  EXPECT_FALSE(at_30.done.HasBeenNotified());
  EXPECT_FALSE(on_b.done.HasBeenNotified()) << "another position";
  ASSERT_TRUE(late.done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_FALSE(late.reached);
  EXPECT_NE(late.thread, std::this_thread::get_id());
  EXPECT_EQ(waiters.waiting(), 2u);
  b.store(15);
  waiters.Advance(&b);
  EXPECT_TRUE(on_b.reached);
  EXPECT_EQ(waiters.waiting(), 1u);
  // at_30 is still waiting when the waiters go: it hears false, once.
  {
    LsnWaiters other;
    std::atomic<uint64_t> c{0};
    Result pending;
    other.Wait(&c, 1, absl::Now() + absl::Hours(1), Record(&pending));
    EXPECT_FALSE(pending.done.HasBeenNotified());
  }
  for (Result* r : {&already, &at_20, &on_b, &late}) EXPECT_EQ(r->calls.load(), 1);
}

TEST(LsnWaitersTest, ConcurrentAdvancesAndWaitsMissNothing) {
  LsnWaiters waiters;
  std::atomic<uint64_t> applied{0};
  constexpr int kWaits = 2000;
  std::vector<std::unique_ptr<Result>> results;
  for (int i = 0; i < kWaits; ++i) results.push_back(std::make_unique<Result>());
  std::thread advancer([&] {
    for (uint64_t lsn = 1; lsn <= kWaits; ++lsn) {
      applied.store(lsn);
      waiters.Advance(&applied);
    }
  });
  for (int i = 0; i < kWaits; ++i) {
    waiters.Wait(&applied, i + 1, absl::Now() + absl::Seconds(60), Record(results[i].get()));
  }
  advancer.join();
  for (int i = 0; i < kWaits; ++i) {
    ASSERT_TRUE(results[i]->done.WaitForNotificationWithTimeout(absl::Seconds(30))) << i;
    EXPECT_TRUE(results[i]->reached) << i;
    EXPECT_EQ(results[i]->calls.load(), 1) << i;
  }
  EXPECT_EQ(waiters.waiting(), 0u);
}

}  // namespace
}  // namespace poolside::query
