// Many threads hammer a small pool; checks the invariants that must hold under
// any interleaving. Also run under ThreadSanitizer (tag "tsan").

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/pool/pool.h"
#include "gtest/gtest.h"

namespace poolside::pool {
namespace {

constexpr int kThreads = 16;
constexpr int kIterations = 2000;
constexpr size_t kMaxSize = 4;

struct Shared {
  std::atomic<int> alive{0};
  std::atomic<int> max_alive{0};
  std::atomic<int> next_id{0};
  std::atomic<int> double_leases{0};
  std::atomic<int> handed_out_broken{0};
};

struct Obj {
  explicit Obj(Shared* shared) : shared(shared), id(++shared->next_id) {
    const int now_alive = ++shared->alive;
    int seen = shared->max_alive.load();
    while (now_alive > seen && !shared->max_alive.compare_exchange_weak(seen, now_alive)) {
    }
  }
  ~Obj() { --shared->alive; }

  Shared* const shared;
  const int id;
  std::atomic<bool> in_use{false};
  std::atomic<bool> broken{false};
  std::atomic<uint32_t> pings{0};
};

TEST(PoolStressTest, ConcurrentAcquireReleaseKeepsInvariants) {
  Shared shared;
  PoolOptions options;
  options.name = "stress";
  options.min_idle = 2;
  options.max_size = kMaxSize;
  options.validate_after_idle = absl::ZeroDuration();  // pre-ping every hand-out
  Pool<Obj> pool(
      options,
      [&shared](const auto&) -> absl::StatusOr<std::unique_ptr<Obj>> {
        return std::make_unique<Obj>(&shared);
      },
      // Roughly 1 in 97 pre-pings fails.
      [](Obj& o) { return o.pings.fetch_add(1) % 97 != 96; });

  std::atomic<uint64_t> ok{0};
  std::atomic<uint64_t> deadline_exceeded{0};
  std::atomic<uint64_t> unexpected{0};
  std::atomic<uint64_t> marked_broken{0};
  std::atomic<bool> stop_maintainer{false};

  std::thread maintainer([&] {
    while (!stop_maintainer) {
      pool.Maintain();
      const PoolStats s = pool.Stats();
      if (s.size > kMaxSize || s.idle + s.in_use > s.size) ++unexpected;
      std::this_thread::yield();
    }
  });

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIterations; ++i) {
        const bool tiny_deadline = (i + t) % 8 == 0;
        const absl::Time deadline =
            absl::Now() + (tiny_deadline ? absl::Microseconds(50) : absl::Seconds(30));
        absl::StatusOr<Pool<Obj>::Lease> lease = pool.Acquire(deadline, "stress");
        if (!lease.ok()) {
          if (lease.status().code() == absl::StatusCode::kDeadlineExceeded && tiny_deadline) {
            ++deadline_exceeded;
          } else {
            ++unexpected;
          }
          continue;
        }
        ++ok;
        Obj& obj = **lease;
        if (obj.in_use.exchange(true)) ++shared.double_leases;
        if (obj.broken) ++shared.handed_out_broken;
        if (i % 3 == 0) std::this_thread::yield();
        const bool mark = (i + t) % 29 == 0;
        if (mark) {
          obj.broken = true;
          ++marked_broken;
        }
        obj.in_use = false;
        if (mark) lease->MarkBroken();
        lease->Release();
      }
    });
  }
  for (auto& th : threads) th.join();
  stop_maintainer = true;
  maintainer.join();

  const PoolStats s = pool.Stats();
  EXPECT_EQ(shared.double_leases, 0);
  EXPECT_EQ(shared.handed_out_broken, 0);
  EXPECT_EQ(unexpected, 0u);
  EXPECT_LE(shared.max_alive, static_cast<int>(kMaxSize));
  EXPECT_EQ(ok + deadline_exceeded, static_cast<uint64_t>(kThreads) * kIterations);
  EXPECT_EQ(s.acquired, ok);
  EXPECT_EQ(s.timeouts, deadline_exceeded);
  EXPECT_EQ(s.in_use, 0u);
  EXPECT_EQ(s.waiters, 0u);
  EXPECT_EQ(s.idle, s.size);
  EXPECT_LE(s.size, kMaxSize);
  EXPECT_EQ(s.created - s.closed, s.size);
  EXPECT_EQ(static_cast<size_t>(shared.alive), s.size);
  EXPECT_GE(s.broken, marked_broken);  // plus failed pre-pings
  EXPECT_EQ(s.create_failures, 0u);
  EXPECT_EQ(s.acquire_wait.count, ok);
  GTEST_LOG_(INFO) << "acquired=" << s.acquired << " timeouts=" << s.timeouts
                   << " created=" << s.created << " broken=" << s.broken
                   << " p99 wait=" << s.acquire_wait.Percentile(0.99) << "s";
}

}  // namespace
}  // namespace poolside::pool
