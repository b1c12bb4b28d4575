#include "common/pool/pool.h"

#include <atomic>
#include <chrono>
#include <functional>
#include <initializer_list>
#include <map>
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

// Polls `condition` until it holds; false after 10 s.
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

// Waits until `n` Acquire() calls are queued in `pool`; false after 10 s.
bool WaitForWaiters(ConnPool& pool, size_t n) {
  return WaitUntil([&] { return pool.Stats().waiters == n; });
}

// PoolOptions with the given sizes; everything else is PoolOptions' default.
PoolOptions Sized(size_t min_idle, size_t max_size = PoolOptions().max_size,
                  size_t max_overflow = 0) {
  PoolOptions o;
  o.min_idle = min_idle;
  o.max_size = max_size;
  o.max_overflow = max_overflow;
  return o;
}

// Checks the named counters of `stats` (the PoolStats field names) against
// their expected values; the counters not named are not checked.
void ExpectCounts(const PoolStats& stats,
                  std::initializer_list<std::pair<std::string, uint64_t>> expected) {
  const std::map<std::string, uint64_t> actual = {
      {"size", stats.size},
      {"idle", stats.idle},
      {"in_use", stats.in_use},
      {"waiters", stats.waiters},
      {"min_idle", stats.min_idle},
      {"max_size", stats.max_size},
      {"max_overflow", stats.max_overflow},
      {"overflow_in_use", stats.overflow_in_use},
      {"acquired", stats.acquired},
      {"timeouts", stats.timeouts},
      {"created", stats.created},
      {"overflow_created", stats.overflow_created},
      {"closed", stats.closed},
      {"recycled", stats.recycled},
      {"broken", stats.broken},
      {"leaks", stats.leaks},
      {"create_failures", stats.create_failures},
  };
  for (const auto& [name, value] : expected) {
    const auto it = actual.find(name);
    ASSERT_NE(it, actual.end()) << "PoolStats has no counter " << name;
    EXPECT_EQ(it->second, value) << "PoolStats." << name;
  }
}

class PoolTest : public ::testing::Test {
 protected:
  // Factory: fails while fail_remaining_ > 0 (or fail_always_), optionally
  // blocks on block_gate_ first.
  ConnPool::Factory MakeFactory() {
    return [this](const auto&) -> absl::StatusOr<std::unique_ptr<Conn>> {
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

  // Leases an object, lets `use` see it and returns it to the pool; returns
  // its id, or 0 (with a test failure) if no object could be had.
  int UseOnce(ConnPool& pool, const std::function<void(Conn&)>& use = nullptr) {
    auto lease = pool.Acquire(Soon());
    if (!lease.ok()) {
      ADD_FAILURE() << lease.status();
      return 0;
    }
    if (use) use(**lease);
    return (*lease)->id;
  }

  // Runs Maintain() until it blocks in its first creation, and WarmUp()
  // beside it; runs `before_open`, then lets the factory go on. Returns
  // WarmUp()'s status once both are done (UNKNOWN if Maintain() never got to
  // the factory, with a test failure).
  absl::Status WarmUpBesideABlockedTopUp(ConnPool& pool,
                                         const std::function<void()>& before_open = nullptr) {
    block_factory_ = true;
    std::thread maintainer([&] { pool.Maintain(); });
    absl::Status warm_status = absl::UnknownError("not run");
    if (WaitUntil([&] { return factory_calls_ == 1; })) {
      std::thread warmer([&] { warm_status = pool.WarmUp(); });
      if (before_open) before_open();
      block_gate_.Open();
      warmer.join();
    } else {
      ADD_FAILURE() << "Maintain() did not call the factory";
      block_gate_.Open();
    }
    maintainer.join();
    return warm_status;
  }

  // Leases `n` objects, failing the test for each that cannot be had.
  std::vector<ConnPool::Lease> AcquireAll(ConnPool& pool, int n) {
    std::vector<ConnPool::Lease> leases;
    for (int i = 0; i < n; ++i) {
      auto lease = pool.Acquire(Soon());
      EXPECT_TRUE(lease.ok()) << lease.status();
      if (lease.ok()) leases.push_back(std::move(*lease));
    }
    return leases;
  }

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
  auto pool = MakePool(Sized(3, 5));
  EXPECT_EQ(pool->Stats().size, 0u);  // lazy: nothing until WarmUp/Acquire
  ASSERT_TRUE(pool->WarmUp().ok());
  ExpectCounts(pool->Stats(), {{"size", 3}, {"idle", 3}, {"created", 3}});
  EXPECT_EQ(alive_, 3);
  // Already warm: no more objects.
  ASSERT_TRUE(pool->WarmUp().ok());
  EXPECT_EQ(pool->Stats().created, 3u);
}

TEST_F(PoolTest, WarmUpWithZeroMinIdleCreatesNothing) {
  auto pool = MakePool(Sized(0));
  ASSERT_TRUE(pool->WarmUp().ok());
  EXPECT_EQ(pool->Stats().size, 0u);
  EXPECT_EQ(factory_calls_, 0);
}

TEST_F(PoolTest, MinIdleIsClampedToMaxSize) {
  auto pool = MakePool(Sized(8, 2));
  EXPECT_EQ(pool->options().min_idle, 2u);
  ASSERT_TRUE(pool->WarmUp().ok());
  EXPECT_EQ(pool->Stats().idle, 2u);
}

TEST_F(PoolTest, ReusesIdleObjectMostRecentlyUsedFirst) {
  auto pool = MakePool(Sized(0));
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
  auto pool = MakePool(Sized(0, 3));
  std::vector<ConnPool::Lease> leases = AcquireAll(*pool, 3);
  ASSERT_EQ(leases.size(), 3u);
  // Full: a caller whose deadline has passed gets DEADLINE_EXCEEDED at once.
  auto extra = pool->Acquire(clock_.Now());
  EXPECT_EQ(extra.status().code(), absl::StatusCode::kDeadlineExceeded);
  ExpectCounts(pool->Stats(), {{"size", 3}, {"in_use", 3}, {"timeouts", 1}});
  EXPECT_EQ(alive_, 3);
  // WarmUp cannot add beyond max_size either, and reports OK (pool is full).
  EXPECT_TRUE(pool->WarmUp().ok());
  EXPECT_EQ(alive_, 3);
}

TEST_F(PoolTest, WaitersAreServedInArrivalOrder) {
  auto pool = MakePool(Sized(0, 1));
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
    ASSERT_TRUE(WaitForWaiters(*pool, static_cast<size_t>(i + 1)));
  }
  held->Release();
  for (auto& t : threads) t.join();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
  // One object, handed along the queue.
  ExpectCounts(pool->Stats(), {{"created", 1}, {"acquired", 1u + kWaiters}, {"waiters", 0}});
}

TEST_F(PoolTest, ReturnedObjectIsHandedOffSoNewcomerCannotOvertake) {
  auto pool = MakePool(Sized(0, 1));
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
  ASSERT_TRUE(WaitForWaiters(*pool, 1));
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
  PoolOptions o = Sized(0, 1);
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
  ExpectCounts(pool->Stats(), {{"acquired", 2}, {"created", 1}, {"timeouts", 2}});
}

TEST_F(PoolTest, AcquireTimeoutFollowsSimulatedClock) {
  PoolOptions o = Sized(0, 1);
  o.acquire_timeout = absl::Seconds(5);
  auto pool = MakePool(o);
  auto held = pool->Acquire(Soon());
  ASSERT_TRUE(held.ok());

  absl::Status status;
  std::thread waiter([&] { status = pool->Acquire(absl::InfiniteFuture()).status(); });
  ASSERT_TRUE(WaitForWaiters(*pool, 1));
  clock_.Advance(absl::Seconds(4));
  EXPECT_EQ(pool->Stats().timeouts, 0u);
  clock_.Advance(absl::Seconds(1));  // reaches now + acquire_timeout
  waiter.join();
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(pool->Stats().timeouts, 1u);
  EXPECT_EQ(pool->Stats().waiters, 0u);
}

TEST_F(PoolTest, FactoryFailureReturnsItsStatus) {
  auto pool = MakePool(Sized(0, 1));
  fail_remaining_ = 1;
  auto a = pool->Acquire(Soon());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kUnavailable);
  // Size 0: the reserved slot was freed.
  ExpectCounts(pool->Stats(), {{"create_failures", 1}, {"size", 0}, {"created", 0}});
  auto b = pool->Acquire(Soon());
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(pool->Stats().size, 1u);
}

TEST_F(PoolTest, FactoryFailureFreesSlotForNextWaiter) {
  auto pool = MakePool(Sized(0, 1));
  auto held = pool->Acquire(Soon());
  ASSERT_TRUE(held.ok());

  absl::Status first;
  absl::Status second;
  std::thread w1([&] { first = pool->Acquire(clock_.Now() + absl::Seconds(3)).status(); });
  ASSERT_TRUE(WaitForWaiters(*pool, 1));
  std::thread w2([&] { second = pool->Acquire(clock_.Now() + absl::Seconds(3)).status(); });
  ASSERT_TRUE(WaitForWaiters(*pool, 2));

  fail_remaining_ = 1;  // the next creation fails, the one after succeeds
  held->MarkBroken();
  held->Release();  // frees the slot: w1 creates (fails), then w2 creates
  w1.join();
  w2.join();
  EXPECT_EQ(first.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(second.ok()) << second;
  ExpectCounts(pool->Stats(), {{"create_failures", 1}, {"broken", 1}, {"size", 1}, {"idle", 1}});
}

TEST_F(PoolTest, FactoryReturningNullIsInternalError) {
  PoolOptions o = Sized(0);
  ConnPool pool(
      o, [](const auto&) { return absl::StatusOr<std::unique_ptr<Conn>>(nullptr); }, nullptr,
      nullptr, &clock_);
  auto a = pool.Acquire(Soon());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(pool.Stats().create_failures, 1u);
  EXPECT_EQ(pool.Stats().size, 0u);
}

TEST_F(PoolTest, WarmUpRetriesUntilFactoryWorks) {
  auto pool = MakePool(Sized(2));
  fail_remaining_ = 2;  // backs off 50ms, then 100ms of real time
  ASSERT_TRUE(pool->WarmUp(absl::Seconds(10)).ok());
  ExpectCounts(pool->Stats(), {{"create_failures", 2}, {"created", 2}, {"idle", 2}});
}

TEST_F(PoolTest, WarmUpGivesUpWithLastError) {
  auto pool = MakePool(Sized(2));
  fail_always_ = true;
  // No retry budget: one attempt.
  EXPECT_EQ(pool->WarmUp().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(factory_calls_, 1);
  // 300ms budget: attempts after 0, 50 and 150ms; the next would be at 350ms.
  EXPECT_EQ(pool->WarmUp(absl::Milliseconds(300)).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(factory_calls_, 4);
  ExpectCounts(pool->Stats(), {{"create_failures", 4}, {"size", 0}});
}

TEST_F(PoolTest, CloseStopsWarmUpRetriesAndRefusesAcquire) {
  auto pool = MakePool(Sized(1));
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
  PoolOptions o = Sized(0);
  o.validate_after_idle = absl::Seconds(30);
  auto pool = MakePool(o);
  // The server drops it; the pool cannot know yet.
  const int first_id = UseOnce(*pool, [](Conn& c) { c.healthy = false; });
  clock_.Advance(absl::Seconds(10));
  // Recently used: handed out without a ping.
  EXPECT_EQ(UseOnce(*pool), first_id);
  EXPECT_EQ(validations_, 0);
  clock_.Advance(absl::Seconds(31));
  auto l = pool->Acquire(Soon());
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(validations_, 1);
  EXPECT_NE((*l)->id, first_id);  // the broken one was replaced
  EXPECT_TRUE((*l)->healthy);
  ExpectCounts(pool->Stats(), {{"broken", 1}, {"closed", 1}, {"created", 2}, {"size", 1}});
  EXPECT_EQ(destroyed_, 1);
  EXPECT_EQ(alive_, 1);
}

// By default an object idle for a second is pre-pinged: one the other end
// closed while it sat in the pool is replaced before a caller gets it.
TEST_F(PoolTest, DefaultPrePingsObjectsIdleForASecond) {
  auto pool = MakePool(Sized(0));
  const int first_id = UseOnce(*pool);
  clock_.Advance(absl::Milliseconds(999));
  // Dies while idle, unknown to the pool.
  EXPECT_EQ(UseOnce(*pool, [](Conn& c) { c.healthy = false; }), first_id);
  EXPECT_EQ(validations_, 0);
  clock_.Advance(absl::Seconds(1));
  auto l = pool->Acquire(Soon());
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(validations_, 1);
  EXPECT_NE((*l)->id, first_id);
  EXPECT_TRUE((*l)->healthy);
  EXPECT_EQ(pool->Stats().broken, 1u);
}

TEST_F(PoolTest, FailedPrePingTriesAnotherIdleObjectFirst) {
  PoolOptions o = Sized(2);
  o.validate_after_idle = absl::Seconds(30);
  auto pool = MakePool(o);
  ASSERT_TRUE(pool->WarmUp().ok());
  // Mark the one handed out first (most recently idle) unhealthy.
  UseOnce(*pool, [](Conn& c) { c.healthy = false; });
  clock_.Advance(absl::Minutes(1));
  auto l = pool->Acquire(Soon());
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_TRUE((*l)->healthy);
  // Created stays 2: the other idle object was used, none created.
  ExpectCounts(pool->Stats(), {{"broken", 1}, {"created", 2}, {"size", 1}});
  EXPECT_EQ(validations_, 2);
}

TEST_F(PoolTest, MarkBrokenDestroysOnReturn) {
  auto pool = MakePool(Sized(0));
  int id = 0;
  {
    auto l = pool->Acquire(Soon());
    ASSERT_TRUE(l.ok());
    id = (*l)->id;
    l->MarkBroken();
  }
  ExpectCounts(pool->Stats(), {{"broken", 1}, {"closed", 1}, {"size", 0}, {"idle", 0}});
  EXPECT_EQ(destroyed_, 1);
  EXPECT_EQ(alive_, 0);
  auto l = pool->Acquire(Soon());
  ASSERT_TRUE(l.ok());
  EXPECT_NE((*l)->id, id);
}

TEST_F(PoolTest, MaxLifetimeRecyclesOnReturnBeforeHandOutAndWhenIdle) {
  PoolOptions o = Sized(0);
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
  ExpectCounts(pool->Stats(), {{"recycled", 3}, {"closed", 3}, {"size", 0}});
  EXPECT_EQ(alive_, 0);
}

TEST_F(PoolTest, IdleTimeoutKeepsMinIdle) {
  PoolOptions o = Sized(1, 5);
  o.idle_timeout = absl::Minutes(10);
  auto pool = MakePool(o);
  ASSERT_EQ(AcquireAll(*pool, 4).size(), 4u);  // all returned at once
  EXPECT_EQ(pool->Stats().idle, 4u);
  clock_.Advance(absl::Minutes(5));
  pool->Maintain();
  EXPECT_EQ(pool->Stats().idle, 4u);  // not idle long enough
  clock_.Advance(absl::Minutes(6));
  pool->Maintain();
  ExpectCounts(pool->Stats(), {{"idle", 1}, {"size", 1}, {"closed", 3}, {"recycled", 0}});
  EXPECT_EQ(alive_, 1);
}

TEST_F(PoolTest, MaintainTopsIdleUpToMinIdle) {
  auto pool = MakePool(Sized(2, 3));
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
  ExpectCounts(pool->Stats(), {{"create_failures", 1}, {"size", 2}});
}

TEST_F(PoolTest, LeakIsReportedOnceAndCounted) {
  PoolOptions o = Sized(0);
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
  auto pool = MakePool(Sized(0));
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
  ExpectCounts(pool->Stats(), {{"in_use", 0}, {"idle", 1}});

  // Assigning over a live lease returns the old one first.
  auto b = pool->Acquire(Soon());
  auto c = pool->Acquire(Soon());
  ASSERT_TRUE(b.ok() && c.ok());
  EXPECT_EQ(pool->Stats().in_use, 2u);
  *b = std::move(*c);
  EXPECT_EQ(pool->Stats().in_use, 1u);
}

TEST_F(PoolTest, StatsNumbers) {
  auto pool = MakePool(Sized(1, 3));
  ASSERT_TRUE(pool->WarmUp().ok());
  std::vector<ConnPool::Lease> leases = AcquireAll(*pool, 3);
  ASSERT_EQ(leases.size(), 3u);
  EXPECT_EQ(pool->Acquire(clock_.Now()).status().code(), absl::StatusCode::kDeadlineExceeded);
  clock_.Advance(absl::Milliseconds(3));
  leases[1].MarkBroken();
  leases[1].Release();
  leases[0].Release();
  PoolStats s = pool->Stats();
  ExpectCounts(s, {{"size", 2},
                   {"idle", 1},
                   {"in_use", 1},
                   {"waiters", 0},
                   {"min_idle", 1},
                   {"max_size", 3},
                   {"acquired", 3},
                   {"timeouts", 1},
                   {"created", 3},
                   {"closed", 1},
                   {"recycled", 0},
                   {"broken", 1},
                   {"leaks", 0},
                   {"create_failures", 0}});
  EXPECT_EQ(s.acquire_wait.count, 3u);  // successes only
  EXPECT_EQ(s.acquire_wait.max, 0.0);   // the simulated clock did not move
  EXPECT_EQ(s.created - s.closed, s.size);
}

TEST_F(PoolTest, OverflowCreatesAboveMaxSizeOnlyWhenAllAreBusy) {
  auto pool = MakePool(Sized(0, 2, 2));
  std::vector<ConnPool::Lease> leases;
  for (int i = 0; i < 4; ++i) {
    auto l = pool->Acquire(Soon());
    ASSERT_TRUE(l.ok()) << l.status();
    leases.push_back(std::move(*l));
    const uint64_t overflow = i < 2 ? 0 : i - 1;
    ExpectCounts(pool->Stats(), {{"overflow_in_use", overflow}, {"overflow_created", overflow}});
  }
  // max_size + max_overflow reached: the next caller waits, then times out.
  absl::Status status;
  std::thread waiter([&] { status = pool->Acquire(clock_.Now() + absl::Seconds(2)).status(); });
  ASSERT_TRUE(WaitForWaiters(*pool, 1));
  clock_.Advance(absl::Seconds(2));
  waiter.join();
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded);
  ExpectCounts(
      pool->Stats(),
      {{"size", 4}, {"in_use", 4}, {"overflow_in_use", 2}, {"max_overflow", 2}, {"timeouts", 1}});
  EXPECT_EQ(alive_, 4);
}

TEST_F(PoolTest, OverflowObjectsAreDestroyedOnReturnNeverIdle) {
  auto pool = MakePool(Sized(0, 2, 1));
  std::vector<ConnPool::Lease> leases = AcquireAll(*pool, 3);  // the third is overflow
  ASSERT_EQ(leases.size(), 3u);
  EXPECT_EQ(pool->Stats().overflow_in_use, 1u);
  // Whichever comes back first while three exist is destroyed, not kept.
  leases[0].Release();
  ExpectCounts(pool->Stats(),
               {{"size", 2}, {"idle", 0}, {"overflow_in_use", 0}, {"closed", 1}, {"broken", 0}});
  EXPECT_EQ(destroyed_, 1);
  // Back within max_size: returned objects are kept idle again.
  leases.clear();
  ExpectCounts(pool->Stats(), {{"size", 2}, {"idle", 2}, {"closed", 1}, {"overflow_created", 1}});
  EXPECT_EQ(alive_, 2);
  // Idle objects are used before any overflow is created.
  ASSERT_EQ(AcquireAll(*pool, 2).size(), 2u);
  EXPECT_EQ(pool->Stats().created, 3u);
  EXPECT_EQ(pool->Stats().overflow_created, 1u);
}

TEST_F(PoolTest, OverflowObjectReturnedWhileSomeoneWaitsGoesToTheWaiter) {
  auto pool = MakePool(Sized(0, 1, 1));
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
  ASSERT_TRUE(WaitForWaiters(*pool, 1));
  b->Release();  // handed over rather than closed and reconnected
  waiter.join();
  EXPECT_EQ(got, b_id);
  // Size 1: the waiter's lease ended with its thread, and the object was destroyed.
  ExpectCounts(pool->Stats(), {{"created", 2}, {"size", 1}, {"closed", 1}, {"idle", 0}});
}

TEST_F(PoolTest, OverflowSlotFreedByABrokenObjectGoesToAWaiter) {
  auto pool = MakePool(Sized(0, 1, 1));
  auto a = pool->Acquire(Soon());
  auto b = pool->Acquire(Soon());
  ASSERT_TRUE(a.ok() && b.ok());
  absl::Status status;
  std::thread waiter([&] {
    auto l = pool->Acquire(clock_.Now() + absl::Seconds(3));
    status = l.status();
  });
  ASSERT_TRUE(WaitForWaiters(*pool, 1));
  b->MarkBroken();
  b->Release();  // its slot is given to the waiter, who creates a new object
  waiter.join();
  EXPECT_TRUE(status.ok()) << status;
  ExpectCounts(pool->Stats(),
               {{"created", 3}, {"overflow_created", 2}, {"broken", 1}, {"size", 1}});
  EXPECT_EQ(alive_, 1);
}

TEST_F(PoolTest, WarmUpAndMaintainNeverGoAboveMaxSizeOrKeepSurplusIdle) {
  auto pool = MakePool(Sized(2, 2, 3));
  std::vector<ConnPool::Lease> leases = AcquireAll(*pool, 4);
  ASSERT_EQ(leases.size(), 4u);
  EXPECT_TRUE(pool->WarmUp().ok());  // full: creates nothing
  pool->Maintain();
  EXPECT_EQ(pool->Stats().created, 4u);
  leases.clear();
  ExpectCounts(pool->Stats(), {{"size", 2}, {"idle", 2}, {"overflow_in_use", 0}, {"closed", 2}});
  EXPECT_EQ(alive_, 2);
}

TEST_F(PoolTest, WarmUpWaitsForTopUpsInFlightInsteadOfAddingASurplus) {
  auto pool = MakePool(Sized(2, 4));
  // Maintain() reserves both top-ups and blocks in the first creation. A
  // WarmUp() that does not count the creations in flight calls the factory a
  // second time meanwhile; give it the chance before the gate opens (with the
  // waiting WarmUp() the outcome below holds for every interleaving).
  const absl::Status warm_status = WarmUpBesideABlockedTopUp(*pool, [&] {
    WaitUntilOrAfter([&] { return factory_calls_ >= 2; }, absl::Milliseconds(200));
  });
  ASSERT_TRUE(warm_status.ok()) << warm_status;
  EXPECT_EQ(factory_calls_, 2);
  ExpectCounts(pool->Stats(), {{"created", 2}, {"idle", 2}, {"size", 2}});
  EXPECT_EQ(alive_, 2);
}

TEST_F(PoolTest, WarmUpCreatesWhatAFailedTopUpDidNot) {
  auto pool = MakePool(Sized(1, 2));
  fail_remaining_ = 1;  // Maintain()'s creation fails
  const absl::Status warm_status = WarmUpBesideABlockedTopUp(*pool);
  ASSERT_TRUE(warm_status.ok()) << warm_status;
  ExpectCounts(pool->Stats(), {{"create_failures", 1}, {"idle", 1}, {"size", 1}});
  EXPECT_EQ(alive_, 1);
}

TEST_F(PoolTest, OverflowUnderConcurrentCallersKeepsTheBounds) {
  auto pool = MakePool(Sized(1, 3, 2));
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
  ExpectCounts(s, {{"in_use", 0}, {"waiters", 0}});
  EXPECT_LE(s.size, 3u);
  EXPECT_EQ(s.overflow_in_use, 0u);
  EXPECT_EQ(s.size, s.idle);
  EXPECT_EQ(s.created - s.closed, s.size);
  EXPECT_EQ(alive_, static_cast<int>(s.size));
}

TEST_F(PoolTest, DestructorCancelsWaitersAndWaitsForCreation) {
  auto pool = MakePool(Sized(0, 1));
  block_factory_ = true;

  absl::Status creator_status;
  absl::Status waiter_status;
  std::thread creator([&] { creator_status = pool->Acquire(absl::InfiniteFuture()).status(); });
  ASSERT_TRUE(WaitUntil([&] { return factory_calls_ == 1; }));
  std::thread waiter([&] { waiter_status = pool->Acquire(absl::InfiniteFuture()).status(); });
  ASSERT_TRUE(WaitForWaiters(*pool, 1));

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
  auto pool = MakePool(Sized(3));
  ASSERT_TRUE(pool->WarmUp().ok());
  EXPECT_EQ(alive_, 3);
  pool.reset();
  EXPECT_EQ(alive_, 0);
  EXPECT_EQ(destroyed_, 3);
}

TEST_F(PoolTest, StartMaintenanceRunsInBackground) {
  PoolOptions o = Sized(2);
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
