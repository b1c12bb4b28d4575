#include "services/query/database.h"

#include <atomic>
#include <functional>
#include <vector>

#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "services/query/query_config.h"
#include "tests/fixtures/postgres_cluster.h"

namespace poolside::query {
namespace {

v1::DatabaseConfig Config(int max_size) {
  v1::QueryServiceConfig c;
  auto* db = c.add_databases();
  db->set_name("main");
  db->set_dsn(testing::SharedPostgres().Dsn());
  db->set_allow_privileged_role(true);  // the fixture's superuser
  db->mutable_pool()->set_max_size(max_size);
  db->mutable_pool()->set_min_idle(0);
  c.mutable_server()->mutable_tls()->set_plaintext(true);
  auto done = FinalizeQueryConfig(c);
  EXPECT_TRUE(done.ok()) << done.status();
  return done->databases(0);
}

std::shared_ptr<Work> Point(int64_t i, absl::BlockingCounter* finished, std::atomic<int>* ok,
                            absl::Time deadline) {
  auto w = std::make_shared<Work>();
  auto params = std::make_shared<google::protobuf::RepeatedPtrField<v1::Value>>();
  params->Add()->set_int64_value(i);
  w->batchable = true;
  w->deadline = deadline;
  w->statement.sql = "SELECT $1::int8";
  w->statement.params = params.get();
  w->done = [params, finished, ok](absl::Status s) {
    if (s.ok()) ++*ok;
    finished->DecrementCount();
  };
  return w;
}

TEST(DatabaseTest, QueuedStatementsShareRoundTrips) {
  Database db(Config(2));
  // Hold both connections so the calls pile up, then let them go.
  auto a = db.pool().Acquire(absl::Now() + absl::Seconds(5));
  auto b = db.pool().Acquire(absl::Now() + absl::Seconds(5));
  ASSERT_TRUE(a.ok() && b.ok());
  constexpr int kCalls = 100;
  absl::BlockingCounter finished(kCalls);
  std::atomic<int> ok{0};
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_TRUE(db.Submit(Point(i, &finished, &ok, absl::Now() + absl::Seconds(20))).ok());
  }
  a->Release();
  b->Release();
  finished.Wait();
  EXPECT_EQ(ok.load(), kCalls);
  EXPECT_EQ(db.pipelined_statements(), static_cast<uint64_t>(kCalls));
  // At most two single-call batches taken before the connections were free,
  // then batches of up to 64.
  EXPECT_LE(db.pipelines(), 6u);
}

TEST(DatabaseTest, CallsWaitingForABusyPoolFailAtTheirDeadlineWhileHoldersFinish) {
  Database db(Config(1));
  absl::BlockingCounter slow_done(1);
  std::atomic<int> slow_ok{0};
  auto slow = std::make_shared<Work>();
  slow->deadline = absl::Now() + absl::Seconds(20);
  slow->exclusive = [](db::Connection& c) {
    db::Statement s{"SELECT pg_sleep(1)"};
    absl::Status link = c.RunIndependent({&s});
    return link.ok() ? s.status : link;
  };
  slow->done = [&](absl::Status s) {
    if (s.ok()) ++slow_ok;
    slow_done.DecrementCount();
  };
  ASSERT_TRUE(db.Submit(slow).ok());
  // Let the slow call take the only connection.
  while (db.pool().Stats().in_use == 0) absl::SleepFor(absl::Milliseconds(5));

  // Anything else needing a connection fails at its deadline with a clear reason.
  auto direct = db.AcquireLive(absl::Now() + absl::Milliseconds(200), "test");
  EXPECT_EQ(direct.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(direct.status().message().find("maxSize 1"), std::string::npos);
  slow_done.Wait();
  EXPECT_EQ(slow_ok.load(), 1);
  EXPECT_GE(db.pool().Stats().timeouts, 1u);
}

// Polls `condition` for up to 10 s.
bool WaitFor(const std::function<bool()>& condition) {
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (!condition()) {
    if (absl::Now() > give_up) return false;
    absl::SleepFor(absl::Milliseconds(2));
  }
  return true;
}

TEST(DatabaseTest, OverflowConnectionsGetWorkersAndCloseAfterTheBurst) {
  v1::DatabaseConfig c = Config(1);
  c.mutable_pool()->set_max_overflow(2);
  Database db(c);
  // Four calls that each hold their connection until released: three run at
  // once (max_size 1 + max_overflow 2), the fourth waits for one of them.
  absl::Notification release;
  std::atomic<int> running{0}, peak{0}, ok{0};
  absl::BlockingCounter finished(4);
  for (int i = 0; i < 4; ++i) {
    auto w = std::make_shared<Work>();
    w->deadline = absl::Now() + absl::Seconds(20);
    w->exclusive = [&](db::Connection& conn) {
      const int now = ++running;
      int seen = peak.load();
      while (now > seen && !peak.compare_exchange_weak(seen, now)) {
      }
      db::Statement s{"SELECT 1"};
      absl::Status link = conn.RunIndependent({&s});
      release.WaitForNotificationWithTimeout(absl::Seconds(15));
      --running;
      return link.ok() ? s.status : link;
    };
    w->done = [&](absl::Status s) {
      if (s.ok()) ++ok;
      finished.DecrementCount();
    };
    ASSERT_TRUE(db.Submit(w).ok());
  }
  ASSERT_TRUE(WaitFor([&] { return running.load() == 3; }));
  pool::PoolStats s = db.pool().Stats();
  EXPECT_EQ(s.in_use, 3u);
  EXPECT_EQ(s.overflow_in_use, 2u);
  EXPECT_EQ(s.max_overflow, 2u);
  EXPECT_EQ(db.queued(), 1u);  // no fourth connection
  release.Notify();
  finished.Wait();
  EXPECT_EQ(ok.load(), 4);
  EXPECT_EQ(peak.load(), 3);
  // The burst is over: the overflow connections were closed, one is kept.
  s = db.pool().Stats();
  EXPECT_EQ(s.size, 1u);
  EXPECT_EQ(s.idle, 1u);
  EXPECT_EQ(s.overflow_in_use, 0u);
  EXPECT_GE(s.overflow_created, 2u);
  EXPECT_EQ(s.created - s.closed, 1u);
}

TEST(DatabaseTest, WithoutOverflowOneConnectionServesOneCallAtATime) {
  Database db(Config(1));
  absl::Notification release;
  std::atomic<int> running{0}, peak{0};
  absl::BlockingCounter finished(2);
  for (int i = 0; i < 2; ++i) {
    auto w = std::make_shared<Work>();
    w->deadline = absl::Now() + absl::Seconds(20);
    w->exclusive = [&](db::Connection&) {
      const int now = ++running;
      int seen = peak.load();
      while (now > seen && !peak.compare_exchange_weak(seen, now)) {
      }
      release.WaitForNotificationWithTimeout(absl::Seconds(15));
      --running;
      return absl::OkStatus();
    };
    w->done = [&](absl::Status) { finished.DecrementCount(); };
    ASSERT_TRUE(db.Submit(w).ok());
  }
  ASSERT_TRUE(WaitFor([&] { return running.load() == 1; }));
  EXPECT_EQ(db.pool().Stats().overflow_in_use, 0u);
  release.Notify();
  finished.Wait();
  EXPECT_EQ(peak.load(), 1);
  EXPECT_EQ(db.pool().Stats().overflow_created, 0u);
  EXPECT_EQ(db.pool().Stats().size, 1u);
}

TEST(DatabaseTest, AbandonedWorkNeverRuns) {
  Database db(Config(1));
  auto hold = db.pool().Acquire(absl::Now() + absl::Seconds(5));
  ASSERT_TRUE(hold.ok());
  std::atomic<bool> ran{false};
  auto blocker = std::make_shared<Work>();
  blocker->deadline = absl::Now() + absl::Seconds(10);
  blocker->exclusive = [](db::Connection&) { return absl::OkStatus(); };
  absl::Notification blocker_done;
  blocker->done = [&](absl::Status) { blocker_done.Notify(); };
  ASSERT_TRUE(db.Submit(blocker).ok());  // the only worker waits for the held connection
  auto w = std::make_shared<Work>();
  w->deadline = absl::Now() + absl::Seconds(10);
  w->exclusive = [&](db::Connection&) {
    ran = true;
    return absl::OkStatus();
  };
  w->done = [&](absl::Status) { ran = true; };
  ASSERT_TRUE(db.Submit(w).ok());
  EXPECT_TRUE(w->Abandon());  // e.g. the RPC was cancelled while queued
  hold->Release();
  blocker_done.WaitForNotification();
  // The queue drains; the abandoned work is skipped.
  while (db.queued() > 0) absl::SleepFor(absl::Milliseconds(5));
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(ran.load());
}

TEST(DatabaseTest, FullQueueIsResourceExhausted) {
  v1::DatabaseConfig c = Config(1);
  c.mutable_pool()->set_max_queue(2);
  Database db(c);
  auto hold = db.pool().Acquire(absl::Now() + absl::Seconds(5));
  ASSERT_TRUE(hold.ok());
  // The worker takes what is queued and then waits for the held connection, so
  // at most 2 more calls can wait behind it.
  std::atomic<int> ok{0};
  std::atomic<int> finished{0};
  int accepted = 0, refused = 0;
  for (int i = 0; i < 6; ++i) {
    auto w = std::make_shared<Work>();
    w->deadline = absl::Now() + absl::Seconds(10);
    w->exclusive = [](db::Connection&) { return absl::OkStatus(); };
    w->done = [&](absl::Status s) {
      if (s.ok()) ++ok;
      ++finished;
    };
    absl::Status s = db.Submit(w);
    if (s.code() == absl::StatusCode::kResourceExhausted) {
      ++refused;
      EXPECT_NE(s.message().find("max_queue"), std::string::npos);
    } else {
      ASSERT_TRUE(s.ok()) << s;
      ++accepted;
    }
  }
  EXPECT_GE(refused, 3);
  hold->Release();
  for (int i = 0; i < 1000 && finished.load() < accepted; ++i)
    absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(ok.load(), accepted);
}

}  // namespace
}  // namespace poolside::query
