#include "common/pool/pool.h"

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"
#include "common/sync/mutex.h"
#include "gtest/gtest.h"

namespace poolside::pool {
namespace {

// Test synchronisation uses sync::Mutex, which ThreadSanitizer sees
// (common/sync/mutex.h).
class Gate {
 public:
  void Open() {
    sync::MutexLock lock(&mu_);
    open_ = true;
    cv_.SignalAll();
  }
  void Wait() {
    sync::MutexLock lock(&mu_);
    while (!open_) cv_.Wait(&mu_);
  }

 private:
  sync::Mutex mu_;
  sync::CondVar cv_;
  bool open_ ABSL_GUARDED_BY(mu_) = false;
};

// Polls `condition` until it holds; fails the test after 10 s.
bool WaitUntil(const std::function<bool()>& condition) {
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (!condition()) {
    if (absl::Now() > give_up) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// Polls `condition` until it holds or `bound` has passed, whichever is first.
void WaitUntilOrAfter(const std::function<bool()>& condition, absl::Duration bound) {
  const absl::Time give_up = absl::Now() + bound;
  while (!condition() && absl::Now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

struct Conn {
  Conn(int id, std::atomic<int>* alive) : id(id), alive(alive) { ++*alive; }
  ~Conn() { --*alive; }
  const int id;
  std::atomic<int>* const alive;
  std::atomic<bool> healthy{true};
};

using ConnPool = Pool<Conn>;

class PoolTest : public ::testing::Test {
 protected:
  // Factory: fails while fail_remaining_ > 0 (or fail_always_), optionally
  // blocks on block_gate_ first.
  ConnPool::Factory MakeFactory() {
    return [this]() -> absl::StatusOr<std::unique_ptr<Conn>> {
      ++factory_calls_;
      if (block_factory_) block_gate_.Wait();
      if (fail_always_ || fail_remaining_.fetch_sub(1) > 0) {
        return absl::UnavailableError("database is down");
      }
      return std::make_unique<Conn>(++next_id_, &alive_);
    };
  }

  ConnPool::Validator MakeValidator() {
    return [this](Conn& c) {
      ++validations_;
      return c.healthy.load();
    };
  }

  ConnPool::Destroyer MakeDestroyer() {
    return [this](std::unique_ptr<Conn> c) {
      ++destroyed_;
      c.reset();
    };
  }

  std::unique_ptr<ConnPool> MakePool(PoolOptions options, Clock* clock = nullptr) {
    if (options.name.empty()) options.name = "test";
    return std::make_unique<ConnPool>(std::move(options), MakeFactory(), MakeValidator(),
                                      MakeDestroyer(), clock != nullptr ? clock : &clock_);
  }

  absl::Time Soon() { return clock_.Now() + absl::Seconds(1); }

  SimulatedClock clock_;
  std::atomic<int> next_id_{0};
  std::atomic<int> alive_{0};
  std::atomic<int> factory_calls_{0};
  std::atomic<int> validations_{0};
  std::atomic<int> destroyed_{0};
  std::atomic<int> fail_remaining_{0};
  std::atomic<bool> fail_always_{false};
  std::atomic<bool> block_factory_{false};
  Gate block_gate_;
};

TEST_F(PoolTest, StartsEmptyAndWarmUpCreatesMinIdle) {
  PoolOptions o;
  o.min_idle = 3;
  o.max_size = 5;
  auto pool = MakePool(o);
  EXPECT_EQ(pool->Stats().size, 0u);  // lazy: nothing until WarmUp/Acquire
  ASSERT_TRUE(pool->WarmUp().ok());
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.size, 3u);
  EXPECT_EQ(s.idle, 3u);
  EXPECT_EQ(s.created, 3u);
  EXPECT_EQ(alive_, 3);
  // Already warm: no more objects.
  ASSERT_TRUE(pool->WarmUp().ok());
  EXPECT_EQ(pool->Stats().created, 3u);
}

TEST_F(PoolTest, WarmUpWithZeroMinIdleCreatesNothing) {
  PoolOptions o;
  o.min_idle = 0;
  auto pool = MakePool(o);
  ASSERT_TRUE(pool->WarmUp().ok());
  EXPECT_EQ(pool->Stats().size, 0u);
  EXPECT_EQ(factory_calls_, 0);
}

TEST_F(PoolTest, MinIdleIsClampedToMaxSize) {
  PoolOptions o;
  o.min_idle = 8;
  o.max_size = 2;
  auto pool = MakePool(o);
  EXPECT_EQ(pool->options().min_idle, 2u);
  ASSERT_TRUE(pool->WarmUp().ok());
  EXPECT_EQ(pool->Stats().idle, 2u);
}

TEST_F(PoolTest, ReusesIdleObjectMostRecentlyUsedFirst) {
  PoolOptions o;
  o.min_idle = 0;
  auto pool = MakePool(o);
  auto a = pool->Acquire(Soon());
  auto b = pool->Acquire(Soon());
  ASSERT_TRUE(a.ok() && b.ok());
  const int a_id = (*a)->id;
  const int b_id = (*b)->id;
  EXPECT_NE(a_id, b_id);
  a->Release();
  b->Release();
  auto c = pool->Acquire(Soon());
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->id, b_id);
  EXPECT_EQ(pool->Stats().created, 2u);
}

TEST_F(PoolTest, NeverExceedsMaxSize) {
  PoolOptions o;
  o.min_idle = 0;
  o.max_size = 3;
  auto pool = MakePool(o);
  std::vector<ConnPool::Lease> leases;
  for (int i = 0; i < 3; ++i) {
    auto l = pool->Acquire(Soon());
    ASSERT_TRUE(l.ok()) << l.status();
    leases.push_back(std::move(*l));
  }
  // Full: a caller whose deadline has passed gets DEADLINE_EXCEEDED at once.
  auto extra = pool->Acquire(clock_.Now());
  EXPECT_EQ(extra.status().code(), absl::StatusCode::kDeadlineExceeded);
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.size, 3u);
  EXPECT_EQ(s.in_use, 3u);
  EXPECT_EQ(s.timeouts, 1u);
  EXPECT_EQ(alive_, 3);
  // WarmUp cannot add beyond max_size either, and reports OK (pool is full).
  EXPECT_TRUE(pool->WarmUp().ok());
  EXPECT_EQ(alive_, 3);
}

TEST_F(PoolTest, WaitersAreServedInArrivalOrder) {
  PoolOptions o;
  o.min_idle = 0;
  o.max_size = 1;
  auto pool = MakePool(o);
  auto held = pool->Acquire(Soon());
  ASSERT_TRUE(held.ok());

  sync::Mutex order_mu;
  std::vector<int> order;
  std::vector<std::thread> threads;
  constexpr int kWaiters = 5;
  for (int i = 0; i < kWaiters; ++i) {
    threads.emplace_back([&, i] {
      auto l = pool->Acquire(clock_.Now() + absl::Seconds(3));
      ASSERT_TRUE(l.ok()) << l.status();
      sync::MutexLock lock(&order_mu);
      order.push_back(i);
    });  // the lease is returned here, handing it to the next waiter
    ASSERT_TRUE(WaitUntil([&] { return pool->Stats().waiters == static_cast<size_t>(i + 1); }));
  }
  held->Release();
  for (auto& t : threads) t.join();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.created, 1u);  // one object handed along the queue
  EXPECT_EQ(s.acquired, 1u + kWaiters);
  EXPECT_EQ(s.waiters, 0u);
}

TEST_F(PoolTest, ReturnedObjectIsHandedOffSoNewcomerCannotOvertake) {
  PoolOptions o;
  o.min_idle = 0;
  o.max_size = 1;
  auto pool = MakePool(o);
  auto held = pool->Acquire(Soon());
  ASSERT_TRUE(held.ok());
  const int id = (*held)->id;

  Gate done;
  std::atomic<int> waiter_got{0};
  std::thread waiter([&] {
    auto l = pool->Acquire(clock_.Now() + absl::Seconds(3));
    ASSERT_TRUE(l.ok()) << l.status();
    waiter_got = (*l)->id;
    done.Wait();
  });
  ASSERT_TRUE(WaitUntil([&] { return pool->Stats().waiters == 1; }));
  held->Release();
  // The object now belongs to the queued waiter, even if it has not woken yet.
  auto newcomer = pool->Acquire(clock_.Now());
  EXPECT_EQ(newcomer.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(pool->Stats().idle, 0u);
  done.Open();
  waiter.join();
  EXPECT_EQ(waiter_got, id);
}

TEST_F(PoolTest, AcquireTimeoutWithRealClock) {
  PoolOptions o;
  o.min_idle = 0;
  o.max_size = 1;
  o.acquire_timeout = absl::Milliseconds(50);
  auto pool = MakePool(o, Clock::Real());
  auto held = pool->Acquire(absl::InfiniteFuture());
  ASSERT_TRUE(held.ok());

  // acquire_timeout caps an infinite deadline...
  auto a = pool->Acquire(absl::InfiniteFuture());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kDeadlineExceeded);
  // ...and an explicit deadline shorter than it wins.
  auto b = pool->Acquire(absl::Now() + absl::Milliseconds(20));
  EXPECT_EQ(b.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(pool->Stats().timeouts, 2u);
  EXPECT_EQ(pool->Stats().waiters, 0u);

  // The holder finishes normally and the object is usable again.
  held->Release();
  auto c = pool->Acquire(absl::InfiniteFuture());
  ASSERT_TRUE(c.ok()) << c.status();
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.acquired, 2u);
  EXPECT_EQ(s.created, 1u);
  EXPECT_EQ(s.timeouts, 2u);
}

TEST_F(PoolTest, AcquireTimeoutFollowsSimulatedClock) {
  PoolOptions o;
  o.min_idle = 0;
  o.max_size = 1;
  o.acquire_timeout = absl::Seconds(5);
  auto pool = MakePool(o);
  auto held = pool->Acquire(Soon());
  ASSERT_TRUE(held.ok());

  absl::Status status;
  std::thread waiter([&] { status = pool->Acquire(absl::InfiniteFuture()).status(); });
  ASSERT_TRUE(WaitUntil([&] { return pool->Stats().waiters == 1; }));
  clock_.Advance(absl::Seconds(4));
  EXPECT_EQ(pool->Stats().timeouts, 0u);
  clock_.Advance(absl::Seconds(1));  // reaches now + acquire_timeout
  waiter.join();
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(pool->Stats().timeouts, 1u);
  EXPECT_EQ(pool->Stats().waiters, 0u);
}

TEST_F(PoolTest, FactoryFailureReturnsItsStatus) {
  PoolOptions o;
  o.min_idle = 0;
  o.max_size = 1;
  auto pool = MakePool(o);
  fail_remaining_ = 1;
  auto a = pool->Acquire(Soon());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kUnavailable);
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.create_failures, 1u);
  EXPECT_EQ(s.size, 0u);  // the reserved slot was freed
  EXPECT_EQ(s.created, 0u);
  auto b = pool->Acquire(Soon());
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(pool->Stats().size, 1u);
}

TEST_F(PoolTest, FactoryFailureFreesSlotForNextWaiter) {
  PoolOptions o;
  o.min_idle = 0;
  o.max_size = 1;
  auto pool = MakePool(o);
  auto held = pool->Acquire(Soon());
  ASSERT_TRUE(held.ok());

  absl::Status first;
  absl::Status second;
  std::thread w1([&] { first = pool->Acquire(clock_.Now() + absl::Seconds(3)).status(); });
  ASSERT_TRUE(WaitUntil([&] { return pool->Stats().waiters == 1; }));
  std::thread w2([&] { second = pool->Acquire(clock_.Now() + absl::Seconds(3)).status(); });
  ASSERT_TRUE(WaitUntil([&] { return pool->Stats().waiters == 2; }));

  fail_remaining_ = 1;  // the next creation fails, the one after succeeds
  held->MarkBroken();
  held->Release();  // frees the slot: w1 creates (fails), then w2 creates
  w1.join();
  w2.join();
  EXPECT_EQ(first.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(second.ok()) << second;
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.create_failures, 1u);
  EXPECT_EQ(s.broken, 1u);
  EXPECT_EQ(s.size, 1u);
  EXPECT_EQ(s.idle, 1u);
}

TEST_F(PoolTest, FactoryReturningNullIsInternalError) {
  PoolOptions o;
  o.min_idle = 0;
  ConnPool pool(
      o, [] { return absl::StatusOr<std::unique_ptr<Conn>>(nullptr); }, nullptr, nullptr, &clock_);
  auto a = pool.Acquire(Soon());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(pool.Stats().create_failures, 1u);
  EXPECT_EQ(pool.Stats().size, 0u);
}

TEST_F(PoolTest, WarmUpRetriesUntilFactoryWorks) {
  PoolOptions o;
  o.min_idle = 2;
  auto pool = MakePool(o);
  fail_remaining_ = 2;  // backs off 50ms, then 100ms of real time
  ASSERT_TRUE(pool->WarmUp(absl::Seconds(10)).ok());
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.create_failures, 2u);
  EXPECT_EQ(s.created, 2u);
  EXPECT_EQ(s.idle, 2u);
}

TEST_F(PoolTest, WarmUpGivesUpWithLastError) {
  PoolOptions o;
  o.min_idle = 2;
  auto pool = MakePool(o);
  fail_always_ = true;
  // No retry budget: one attempt.
  EXPECT_EQ(pool->WarmUp().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(factory_calls_, 1);
  // 300ms budget: attempts after 0, 50 and 150ms; the next would be at 350ms.
  EXPECT_EQ(pool->WarmUp(absl::Milliseconds(300)).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(factory_calls_, 4);
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.create_failures, 4u);
  EXPECT_EQ(s.size, 0u);
}

TEST_F(PoolTest, CloseStopsWarmUpRetriesAndRefusesAcquire) {
  PoolOptions o;
  o.min_idle = 1;
  auto pool = MakePool(o);
  fail_always_ = true;
  absl::Status warm_status;
  // An hour of retries: only Close() can end this within the test's timeout.
  std::thread warm([&] { warm_status = pool->WarmUp(absl::Hours(1)); });
  ASSERT_TRUE(WaitUntil([&] { return factory_calls_ >= 2; }));
  pool->Close();
  warm.join();
  EXPECT_EQ(warm_status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(pool->Acquire(Soon()).status().code(), absl::StatusCode::kCancelled);
  pool->Close();  // idempotent
}

TEST_F(PoolTest, PrePingsOnlyObjectsIdleTooLong) {
  PoolOptions o;
  o.min_idle = 0;
  o.validate_after_idle = absl::Seconds(30);
  auto pool = MakePool(o);
  int first_id = 0;
  {
    auto l = pool->Acquire(Soon());
    ASSERT_TRUE(l.ok());
    first_id = (*l)->id;
    (*l)->healthy = false;  // the server dropped it, the pool cannot know yet
  }
  clock_.Advance(absl::Seconds(10));
  {
    auto l = pool->Acquire(Soon());
    ASSERT_TRUE(l.ok());
    EXPECT_EQ((*l)->id, first_id);  // recently used: handed out without a ping
    EXPECT_EQ(validations_, 0);
  }
  clock_.Advance(absl::Seconds(31));
  auto l = pool->Acquire(Soon());
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(validations_, 1);
  EXPECT_NE((*l)->id, first_id);  // the broken one was replaced
  EXPECT_TRUE((*l)->healthy);
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.broken, 1u);
  EXPECT_EQ(s.closed, 1u);
  EXPECT_EQ(s.created, 2u);
  EXPECT_EQ(s.size, 1u);
  EXPECT_EQ(destroyed_, 1);
  EXPECT_EQ(alive_, 1);
}

// By default an object idle for a second is pre-pinged: one the other end
// closed while it sat in the pool is replaced before a caller gets it.
TEST_F(PoolTest, DefaultPrePingsObjectsIdleForASecond) {
  PoolOptions o;
  o.min_idle = 0;
  auto pool = MakePool(o);
  int first_id = 0;
  {
    auto l = pool->Acquire(Soon());
    ASSERT_TRUE(l.ok());
    first_id = (*l)->id;
  }
  clock_.Advance(absl::Milliseconds(999));
  {
    auto l = pool->Acquire(Soon());
    ASSERT_TRUE(l.ok());
    EXPECT_EQ(validations_, 0);
    (*l)->healthy = false;  // dies while idle, unknown to the pool
  }
  clock_.Advance(absl::Seconds(1));
  auto l = pool->Acquire(Soon());
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(validations_, 1);
  EXPECT_NE((*l)->id, first_id);
  EXPECT_TRUE((*l)->healthy);
  EXPECT_EQ(pool->Stats().broken, 1u);
}

TEST_F(PoolTest, FailedPrePingTriesAnotherIdleObjectFirst) {
  PoolOptions o;
  o.min_idle = 2;
  o.validate_after_idle = absl::Seconds(30);
  auto pool = MakePool(o);
  ASSERT_TRUE(pool->WarmUp().ok());
  {
    // Mark the one handed out first (most recently idle) unhealthy.
    auto l = pool->Acquire(Soon());
    ASSERT_TRUE(l.ok());
    (*l)->healthy = false;
  }
  clock_.Advance(absl::Minutes(1));
  auto l = pool->Acquire(Soon());
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_TRUE((*l)->healthy);
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.broken, 1u);
  EXPECT_EQ(s.created, 2u);  // the other idle object was used, none created
  EXPECT_EQ(s.size, 1u);
  EXPECT_EQ(validations_, 2);
}

TEST_F(PoolTest, MarkBrokenDestroysOnReturn) {
  PoolOptions o;
  o.min_idle = 0;
  auto pool = MakePool(o);
  int id = 0;
  {
    auto l = pool->Acquire(Soon());
    ASSERT_TRUE(l.ok());
    id = (*l)->id;
    l->MarkBroken();
  }
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.broken, 1u);
  EXPECT_EQ(s.closed, 1u);
  EXPECT_EQ(s.size, 0u);
  EXPECT_EQ(s.idle, 0u);
  EXPECT_EQ(destroyed_, 1);
  EXPECT_EQ(alive_, 0);
  auto l = pool->Acquire(Soon());
  ASSERT_TRUE(l.ok());
  EXPECT_NE((*l)->id, id);
}

TEST_F(PoolTest, MaxLifetimeRecyclesOnReturnBeforeHandOutAndWhenIdle) {
  PoolOptions o;
  o.min_idle = 0;
  o.max_lifetime = absl::Minutes(30);
  o.idle_timeout = absl::Hours(10);
  o.validate_after_idle = absl::Hours(10);
  auto pool = MakePool(o);

  // On return.
  auto a = pool->Acquire(Soon());
  ASSERT_TRUE(a.ok());
  clock_.Advance(absl::Minutes(31));
  a->Release();
  EXPECT_EQ(pool->Stats().recycled, 1u);
  EXPECT_EQ(pool->Stats().size, 0u);

  // Before hand-out: idle past max_lifetime is replaced by a fresh object.
  int b_id = 0;
  {
    auto b = pool->Acquire(Soon());
    ASSERT_TRUE(b.ok());
    b_id = (*b)->id;
  }
  clock_.Advance(absl::Minutes(30));
  {
    auto c = pool->Acquire(Soon());
    ASSERT_TRUE(c.ok());
    EXPECT_NE((*c)->id, b_id);
  }
  EXPECT_EQ(pool->Stats().recycled, 2u);

  // When idle: Maintain() recycles it even at min_idle (and min_idle 0 keeps it
  // closed).
  clock_.Advance(absl::Minutes(30));
  pool->Maintain();
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.recycled, 3u);
  EXPECT_EQ(s.closed, 3u);
  EXPECT_EQ(s.size, 0u);
  EXPECT_EQ(alive_, 0);
}

TEST_F(PoolTest, IdleTimeoutKeepsMinIdle) {
  PoolOptions o;
  o.min_idle = 1;
  o.max_size = 5;
  o.idle_timeout = absl::Minutes(10);
  auto pool = MakePool(o);
  {
    std::vector<ConnPool::Lease> leases;
    for (int i = 0; i < 4; ++i) leases.push_back(std::move(*pool->Acquire(Soon())));
  }
  EXPECT_EQ(pool->Stats().idle, 4u);
  clock_.Advance(absl::Minutes(5));
  pool->Maintain();
  EXPECT_EQ(pool->Stats().idle, 4u);  // not idle long enough
  clock_.Advance(absl::Minutes(6));
  pool->Maintain();
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.idle, 1u);
  EXPECT_EQ(s.size, 1u);
  EXPECT_EQ(s.closed, 3u);
  EXPECT_EQ(s.recycled, 0u);
  EXPECT_EQ(alive_, 1);
}

TEST_F(PoolTest, MaintainTopsIdleUpToMinIdle) {
  PoolOptions o;
  o.min_idle = 2;
  o.max_size = 3;
  auto pool = MakePool(o);
  pool->Maintain();
  EXPECT_EQ(pool->Stats().idle, 2u);
  // A lease in use does not count towards min_idle.
  auto l = pool->Acquire(Soon());
  ASSERT_TRUE(l.ok());
  pool->Maintain();
  EXPECT_EQ(pool->Stats().idle, 2u);
  EXPECT_EQ(pool->Stats().size, 3u);
  // Best effort: a failing factory is not retried.
  auto l2 = pool->Acquire(Soon());
  ASSERT_TRUE(l2.ok());
  fail_always_ = true;
  const int calls = factory_calls_;
  pool->Maintain();  // wants one more, but max_size 3 is reached: no call
  EXPECT_EQ(factory_calls_, calls);
  l2->MarkBroken();
  l2->Release();
  pool->Maintain();  // one attempt, fails, slot given back
  EXPECT_EQ(factory_calls_, calls + 1);
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.create_failures, 1u);
  EXPECT_EQ(s.size, 2u);
}

TEST_F(PoolTest, LeakIsReportedOnceAndCounted) {
  PoolOptions o;
  o.min_idle = 0;
  o.leak_threshold = absl::Minutes(1);
  auto pool = MakePool(o);
  auto l = pool->Acquire(Soon(), "trace-1 GetOrder");
  ASSERT_TRUE(l.ok());
  l->SetHolder("trace-2 ListOrders");
  clock_.Advance(absl::Seconds(30));
  pool->Maintain();
  EXPECT_EQ(pool->Stats().leaks, 0u);
  clock_.Advance(absl::Seconds(31));
  pool->Maintain();
  EXPECT_EQ(pool->Stats().leaks, 1u);
  clock_.Advance(absl::Minutes(5));
  pool->Maintain();
  EXPECT_EQ(pool->Stats().leaks, 1u);  // once per lease
  l->Release();
  // A new lease of the same object is a new lease.
  auto l2 = pool->Acquire(Soon());
  ASSERT_TRUE(l2.ok());
  clock_.Advance(absl::Minutes(2));
  pool->Maintain();
  EXPECT_EQ(pool->Stats().leaks, 2u);
}

TEST_F(PoolTest, LeaseMoveReleaseAndAccessors) {
  PoolOptions o;
  o.min_idle = 0;
  auto pool = MakePool(o);
  const absl::Time t0 = clock_.Now();
  auto a = pool->Acquire(Soon());
  ASSERT_TRUE(a.ok());
  ConnPool::Lease lease = std::move(*a);
  EXPECT_FALSE(*a);  // moved-from is empty
  ASSERT_TRUE(lease);
  EXPECT_EQ(lease.get()->id, (*lease).id);
  EXPECT_EQ(lease->id, 1);
  EXPECT_EQ(lease.acquired_at(), t0);
  EXPECT_EQ(pool->Stats().in_use, 1u);

  ConnPool::Lease other;
  EXPECT_FALSE(other);
  other = std::move(lease);
  EXPECT_EQ(pool->Stats().in_use, 1u);
  other.Release();
  EXPECT_FALSE(other);
  other.Release();  // no-op
  lease.Release();  // no-op on moved-from
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.in_use, 0u);
  EXPECT_EQ(s.idle, 1u);

  // Assigning over a live lease returns the old one first.
  auto b = pool->Acquire(Soon());
  auto c = pool->Acquire(Soon());
  ASSERT_TRUE(b.ok() && c.ok());
  EXPECT_EQ(pool->Stats().in_use, 2u);
  *b = std::move(*c);
  EXPECT_EQ(pool->Stats().in_use, 1u);
}

TEST_F(PoolTest, StatsNumbers) {
  PoolOptions o;
  o.min_idle = 1;
  o.max_size = 3;
  auto pool = MakePool(o);
  ASSERT_TRUE(pool->WarmUp().ok());
  auto a = pool->Acquire(Soon());
  auto b = pool->Acquire(Soon());
  auto c = pool->Acquire(Soon());
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(pool->Acquire(clock_.Now()).status().code(), absl::StatusCode::kDeadlineExceeded);
  clock_.Advance(absl::Milliseconds(3));
  b->MarkBroken();
  b->Release();
  a->Release();
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.size, 2u);
  EXPECT_EQ(s.idle, 1u);
  EXPECT_EQ(s.in_use, 1u);
  EXPECT_EQ(s.waiters, 0u);
  EXPECT_EQ(s.min_idle, 1u);
  EXPECT_EQ(s.max_size, 3u);
  EXPECT_EQ(s.acquired, 3u);
  EXPECT_EQ(s.timeouts, 1u);
  EXPECT_EQ(s.created, 3u);
  EXPECT_EQ(s.closed, 1u);
  EXPECT_EQ(s.recycled, 0u);
  EXPECT_EQ(s.broken, 1u);
  EXPECT_EQ(s.leaks, 0u);
  EXPECT_EQ(s.create_failures, 0u);
  EXPECT_EQ(s.acquire_wait.count, 3u);  // successes only
  EXPECT_EQ(s.acquire_wait.max, 0.0);   // the simulated clock did not move
  EXPECT_EQ(s.created - s.closed, s.size);
}

TEST_F(PoolTest, OverflowCreatesAboveMaxSizeOnlyWhenAllAreBusy) {
  PoolOptions o;
  o.min_idle = 0;
  o.max_size = 2;
  o.max_overflow = 2;
  auto pool = MakePool(o);
  std::vector<ConnPool::Lease> leases;
  for (int i = 0; i < 4; ++i) {
    auto l = pool->Acquire(Soon());
    ASSERT_TRUE(l.ok()) << l.status();
    leases.push_back(std::move(*l));
    PoolStats s = pool->Stats();
    EXPECT_EQ(s.overflow_in_use, i < 2 ? 0u : static_cast<size_t>(i - 1));
    EXPECT_EQ(s.overflow_created, i < 2 ? 0u : static_cast<uint64_t>(i - 1));
  }
  // max_size + max_overflow reached: the next caller waits, then times out.
  absl::Status status;
  std::thread waiter([&] { status = pool->Acquire(clock_.Now() + absl::Seconds(2)).status(); });
  ASSERT_TRUE(WaitUntil([&] { return pool->Stats().waiters == 1; }));
  clock_.Advance(absl::Seconds(2));
  waiter.join();
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded);
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.size, 4u);
  EXPECT_EQ(s.in_use, 4u);
  EXPECT_EQ(s.overflow_in_use, 2u);
  EXPECT_EQ(s.max_overflow, 2u);
  EXPECT_EQ(s.timeouts, 1u);
  EXPECT_EQ(alive_, 4);
}

TEST_F(PoolTest, OverflowObjectsAreDestroyedOnReturnNeverIdle) {
  PoolOptions o;
  o.min_idle = 0;
  o.max_size = 2;
  o.max_overflow = 1;
  auto pool = MakePool(o);
  auto a = pool->Acquire(Soon());
  auto b = pool->Acquire(Soon());
  auto c = pool->Acquire(Soon());  // overflow
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(pool->Stats().overflow_in_use, 1u);
  // Whichever comes back first while three exist is destroyed, not kept.
  a->Release();
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.size, 2u);
  EXPECT_EQ(s.idle, 0u);
  EXPECT_EQ(s.overflow_in_use, 0u);
  EXPECT_EQ(s.closed, 1u);
  EXPECT_EQ(s.broken, 0u);
  EXPECT_EQ(destroyed_, 1);
  // Back within max_size: returned objects are kept idle again.
  b->Release();
  c->Release();
  s = pool->Stats();
  EXPECT_EQ(s.size, 2u);
  EXPECT_EQ(s.idle, 2u);
  EXPECT_EQ(s.closed, 1u);
  EXPECT_EQ(s.overflow_created, 1u);
  EXPECT_EQ(alive_, 2);
  // Idle objects are used before any overflow is created.
  auto d = pool->Acquire(Soon());
  auto e = pool->Acquire(Soon());
  ASSERT_TRUE(d.ok() && e.ok());
  EXPECT_EQ(pool->Stats().created, 3u);
  EXPECT_EQ(pool->Stats().overflow_created, 1u);
}

TEST_F(PoolTest, OverflowObjectReturnedWhileSomeoneWaitsGoesToTheWaiter) {
  PoolOptions o;
  o.min_idle = 0;
  o.max_size = 1;
  o.max_overflow = 1;
  auto pool = MakePool(o);
  auto a = pool->Acquire(Soon());
  auto b = pool->Acquire(Soon());  // overflow
  ASSERT_TRUE(a.ok() && b.ok());
  const int b_id = (*b)->id;
  int got = 0;
  std::thread waiter([&] {
    auto l = pool->Acquire(clock_.Now() + absl::Seconds(3));
    ASSERT_TRUE(l.ok()) << l.status();
    got = (*l)->id;
  });
  ASSERT_TRUE(WaitUntil([&] { return pool->Stats().waiters == 1; }));
  b->Release();  // handed over rather than closed and reconnected
  waiter.join();
  EXPECT_EQ(got, b_id);
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.created, 2u);
  EXPECT_EQ(s.size, 1u);  // the waiter's lease ended with its thread: destroyed
  EXPECT_EQ(s.closed, 1u);
  EXPECT_EQ(s.idle, 0u);
}

TEST_F(PoolTest, OverflowSlotFreedByABrokenObjectGoesToAWaiter) {
  PoolOptions o;
  o.min_idle = 0;
  o.max_size = 1;
  o.max_overflow = 1;
  auto pool = MakePool(o);
  auto a = pool->Acquire(Soon());
  auto b = pool->Acquire(Soon());
  ASSERT_TRUE(a.ok() && b.ok());
  absl::Status status;
  std::thread waiter([&] {
    auto l = pool->Acquire(clock_.Now() + absl::Seconds(3));
    status = l.status();
  });
  ASSERT_TRUE(WaitUntil([&] { return pool->Stats().waiters == 1; }));
  b->MarkBroken();
  b->Release();  // its slot is given to the waiter, who creates a new object
  waiter.join();
  EXPECT_TRUE(status.ok()) << status;
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.created, 3u);
  EXPECT_EQ(s.overflow_created, 2u);
  EXPECT_EQ(s.broken, 1u);
  EXPECT_EQ(s.size, 1u);
  EXPECT_EQ(alive_, 1);
}

TEST_F(PoolTest, WarmUpAndMaintainNeverGoAboveMaxSizeOrKeepSurplusIdle) {
  PoolOptions o;
  o.min_idle = 2;
  o.max_size = 2;
  o.max_overflow = 3;
  auto pool = MakePool(o);
  std::vector<ConnPool::Lease> leases;
  for (int i = 0; i < 4; ++i) {
    auto l = pool->Acquire(Soon());
    ASSERT_TRUE(l.ok());
    leases.push_back(std::move(*l));
  }
  EXPECT_TRUE(pool->WarmUp().ok());  // full: creates nothing
  pool->Maintain();
  EXPECT_EQ(pool->Stats().created, 4u);
  leases.clear();
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.size, 2u);
  EXPECT_EQ(s.idle, 2u);
  EXPECT_EQ(s.overflow_in_use, 0u);
  EXPECT_EQ(s.closed, 2u);
  EXPECT_EQ(alive_, 2);
}

TEST_F(PoolTest, WarmUpWaitsForTopUpsInFlightInsteadOfAddingASurplus) {
  PoolOptions o;
  o.min_idle = 2;
  o.max_size = 4;
  auto pool = MakePool(o);
  block_factory_ = true;
  // Maintain() reserves both top-ups and blocks in the first creation.
  std::thread maintainer([&] { pool->Maintain(); });
  ASSERT_TRUE(WaitUntil([&] { return factory_calls_ == 1; }));
  absl::Status warm_status = absl::UnknownError("not run");
  std::thread warmer([&] { warm_status = pool->WarmUp(); });
  // A WarmUp() that does not count the creations in flight calls the factory
  // a second time here; give it the chance before opening the gate (with the
  // waiting WarmUp() the outcome below holds for every interleaving).
  WaitUntilOrAfter([&] { return factory_calls_ >= 2; }, absl::Milliseconds(200));
  block_gate_.Open();
  maintainer.join();
  warmer.join();
  ASSERT_TRUE(warm_status.ok()) << warm_status;
  PoolStats s = pool->Stats();
  EXPECT_EQ(factory_calls_, 2);
  EXPECT_EQ(s.created, 2u);
  EXPECT_EQ(s.idle, 2u);
  EXPECT_EQ(s.size, 2u);
  EXPECT_EQ(alive_, 2);
}

TEST_F(PoolTest, WarmUpCreatesWhatAFailedTopUpDidNot) {
  PoolOptions o;
  o.min_idle = 1;
  o.max_size = 2;
  auto pool = MakePool(o);
  block_factory_ = true;
  fail_remaining_ = 1;  // Maintain()'s creation fails
  std::thread maintainer([&] { pool->Maintain(); });
  ASSERT_TRUE(WaitUntil([&] { return factory_calls_ == 1; }));
  absl::Status warm_status = absl::UnknownError("not run");
  std::thread warmer([&] { warm_status = pool->WarmUp(); });
  block_gate_.Open();
  maintainer.join();
  warmer.join();
  ASSERT_TRUE(warm_status.ok()) << warm_status;
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.create_failures, 1u);
  EXPECT_EQ(s.idle, 1u);
  EXPECT_EQ(s.size, 1u);
  EXPECT_EQ(alive_, 1);
}

TEST_F(PoolTest, OverflowUnderConcurrentCallersKeepsTheBounds) {
  PoolOptions o;
  o.min_idle = 1;
  o.max_size = 3;
  o.max_overflow = 2;
  auto pool = MakePool(o);
  std::atomic<int> peak{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        auto l = pool->Acquire(clock_.Now() + absl::Seconds(30));
        if (!l.ok()) {
          ++failures;
          continue;
        }
        int now = alive_.load();
        int seen = peak.load();
        while (now > seen && !peak.compare_exchange_weak(seen, now)) {
        }
        if ((i + t) % 17 == 0) l->MarkBroken();
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures, 0);
  EXPECT_LE(peak, 5);
  PoolStats s = pool->Stats();
  EXPECT_EQ(s.in_use, 0u);
  EXPECT_EQ(s.waiters, 0u);
  EXPECT_LE(s.size, 3u);
  EXPECT_EQ(s.overflow_in_use, 0u);
  EXPECT_EQ(s.size, s.idle);
  EXPECT_EQ(s.created - s.closed, s.size);
  EXPECT_EQ(alive_, static_cast<int>(s.size));
}

TEST_F(PoolTest, DestructorCancelsWaitersAndWaitsForCreation) {
  PoolOptions o;
  o.min_idle = 0;
  o.max_size = 1;
  auto pool = MakePool(o);
  block_factory_ = true;

  absl::Status creator_status;
  absl::Status waiter_status;
  std::thread creator([&] { creator_status = pool->Acquire(absl::InfiniteFuture()).status(); });
  ASSERT_TRUE(WaitUntil([&] { return factory_calls_ == 1; }));
  std::thread waiter([&] { waiter_status = pool->Acquire(absl::InfiniteFuture()).status(); });
  ASSERT_TRUE(WaitUntil([&] { return pool->Stats().waiters == 1; }));

  std::atomic<bool> destroyed{false};
  std::thread destroyer([&] {
    pool.reset();
    destroyed = true;
  });
  waiter.join();  // woken by the destructor
  EXPECT_EQ(waiter_status.code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(destroyed);  // still waiting for the creation in progress
  block_gate_.Open();
  creator.join();
  destroyer.join();
  EXPECT_EQ(creator_status.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(destroyed);
  EXPECT_EQ(alive_, 0);  // the late object was destroyed too
}

TEST_F(PoolTest, DestructorDestroysIdleObjects) {
  PoolOptions o;
  o.min_idle = 3;
  auto pool = MakePool(o);
  ASSERT_TRUE(pool->WarmUp().ok());
  EXPECT_EQ(alive_, 3);
  pool.reset();
  EXPECT_EQ(alive_, 0);
  EXPECT_EQ(destroyed_, 3);
}

TEST_F(PoolTest, StartMaintenanceRunsInBackground) {
  PoolOptions o;
  o.min_idle = 2;
  o.leak_threshold = absl::Minutes(1);
  auto pool = MakePool(o);
  pool->StartMaintenance(absl::Milliseconds(5));
  pool->StartMaintenance(absl::Milliseconds(5));  // second call ignored
  EXPECT_TRUE(WaitUntil([&] { return pool->Stats().idle == 2; }));
  auto l = pool->Acquire(Soon());
  ASSERT_TRUE(l.ok());
  clock_.Advance(absl::Minutes(2));
  EXPECT_TRUE(WaitUntil([&] { return pool->Stats().leaks == 1; }));
  l->Release();
  pool.reset();  // stops the thread
  EXPECT_EQ(alive_, 0);
}

}  // namespace
}  // namespace poolside::pool
