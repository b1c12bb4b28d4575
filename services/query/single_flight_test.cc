#include "services/query/single_flight.h"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/query.pb.h"
#include "services/query/cached_read.h"
#include "services/query/database.h"
#include "services/query/in_flight.h"

namespace poolside::query {
namespace {

using Entry = SingleFlight::Entry;

// A read of one caller (its request, response and work owned here).
struct Reader {
  v1::ExecuteRequest request;
  v1::ExecuteResponse response;
  std::shared_ptr<Work> work = std::make_shared<Work>();

  explicit Reader(uint64_t min_lsn) {
    request.set_sql("SELECT 1");
    request.set_min_lsn(min_lsn);
    work->deadline = absl::Now() + absl::Seconds(30);
    work->done = [](absl::Status) {};
  }
};

class SingleFlightTest : public ::testing::Test {
 protected:
  SingleFlightTest() {
    v1::DatabaseConfig c;
    c.set_name("app");
    c.set_dsn("host=127.0.0.1 port=1 dbname=app");
    c.mutable_pool()->set_max_size(1);
    db_ = std::make_unique<Database>(c);
  }

  ~SingleFlightTest() override {
    readers_.clear();
    EXPECT_EQ(in_flight_.count(), 0) << "a read was kept after its flight landed";
  }

  std::shared_ptr<CachedRead> NewRead(uint64_t min_lsn = 0) {
    readers_.push_back(std::make_unique<Reader>(min_lsn));
    Reader& r = *readers_.back();
    CachedRead read(db_.get(), r.request, r.work, &r.response, 100, 1 << 20, [] {});
    return CachedRead::Detach(std::move(read), in_flight_);
  }

  // Enters `read` for `key`; a new flight began at `lsn` with `own_writes`.
  Entry Enter(const std::string& key, uint64_t own_writes, std::shared_ptr<CachedRead>* read,
              std::shared_ptr<SingleFlight::Flight>* started, uint64_t lsn = 100) {
    return flights_.Enter(
        key, own_writes, read,
        [&] {
          ++starts_;
          auto f = std::make_shared<SingleFlight::Flight>();
          f->key = key;
          f->lsn = lsn;
          f->own_writes = own_writes;
          return f;
        },
        started);
  }

  std::unique_ptr<Database> db_;
  InFlight in_flight_;
  std::vector<std::unique_ptr<Reader>> readers_;
  SingleFlight flights_;
  int starts_ = 0;
};

TEST_F(SingleFlightTest, TheFirstReadOfAKeyStartsLaterOnesJoinTheLanderGetsThemAll) {
  std::shared_ptr<CachedRead> a = NewRead(), b = NewRead(), c = NewRead(), other = NewRead();
  CachedRead* const first = a.get();
  CachedRead* const second = b.get();
  CachedRead* const third = c.get();
  std::shared_ptr<SingleFlight::Flight> started, none;
  ASSERT_EQ(Enter("k", 0, &a, &started), Entry::kStarted);
  ASSERT_NE(started, nullptr);
  EXPECT_EQ(a, nullptr);  // the flight holds it
  EXPECT_EQ(Enter("k", 0, &b, &none), Entry::kJoined);
  EXPECT_EQ(b, nullptr);
  EXPECT_EQ(none, nullptr);
  EXPECT_EQ(Enter("k", 0, &c, &none), Entry::kJoined);
  std::shared_ptr<SingleFlight::Flight> other_flight;
  EXPECT_EQ(Enter("k2", 0, &other, &other_flight), Entry::kStarted);
  EXPECT_EQ(starts_, 2);
  EXPECT_EQ(flights_.size(), 2u);
  EXPECT_EQ(in_flight_.count(), 4);

  std::vector<std::shared_ptr<CachedRead>> landed = flights_.Land(*started);
  ASSERT_EQ(landed.size(), 3u);
  EXPECT_EQ(landed[0].get(), first);
  EXPECT_EQ(landed[1].get(), second);
  EXPECT_EQ(landed[2].get(), third);
  EXPECT_EQ(flights_.size(), 1u);
  landed.clear();
  EXPECT_EQ(in_flight_.count(), 1);  // only the read in "k2"'s flight

  // Landed: the next read of "k" starts a new flight.
  std::shared_ptr<CachedRead> d = NewRead();
  std::shared_ptr<SingleFlight::Flight> restarted;
  EXPECT_EQ(Enter("k", 0, &d, &restarted), Entry::kStarted);
  EXPECT_NE(restarted, started);
  EXPECT_EQ(flights_.Land(*restarted).size(), 1u);
  EXPECT_EQ(flights_.Land(*other_flight).size(), 1u);
  EXPECT_EQ(flights_.size(), 0u);
}

TEST_F(SingleFlightTest, AReadDoesNotJoinAFlightThatMayHaveReadTooEarly) {
  std::shared_ptr<CachedRead> a = NewRead();
  std::shared_ptr<SingleFlight::Flight> started, none;
  ASSERT_EQ(Enter("k", /*own_writes=*/3, &a, &started, /*lsn=*/100), Entry::kStarted);

  // This replica wrote since the flight began.
  std::shared_ptr<CachedRead> after_write = NewRead();
  EXPECT_EQ(Enter("k", 4, &after_write, &none), Entry::kAlone);
  EXPECT_NE(after_write, nullptr);  // still the caller's
  // The read must see a position past the flight's.
  std::shared_ptr<CachedRead> later = NewRead(/*min_lsn=*/101);
  EXPECT_EQ(Enter("k", 3, &later, &none), Entry::kAlone);
  EXPECT_NE(later, nullptr);
  // At the flight's position: it may join.
  std::shared_ptr<CachedRead> at = NewRead(/*min_lsn=*/100);
  EXPECT_EQ(Enter("k", 3, &at, &none), Entry::kJoined);
  EXPECT_EQ(starts_, 1);
  EXPECT_EQ(flights_.Land(*started).size(), 2u);
}

TEST_F(SingleFlightTest, ARefreshStartsAFlightWithoutReadersOnlyWhenNoneRuns) {
  std::shared_ptr<CachedRead> refresh;  // nobody waits for a refresh
  std::shared_ptr<SingleFlight::Flight> started, none;
  ASSERT_EQ(Enter("k", 0, &refresh, &started), Entry::kStarted);
  EXPECT_EQ(Enter("k", 0, &refresh, &none), Entry::kRunning);
  EXPECT_EQ(none, nullptr);
  // A caller's read joins the refresh.
  std::shared_ptr<CachedRead> a = NewRead();
  EXPECT_EQ(Enter("k", 0, &a, &none), Entry::kJoined);
  EXPECT_EQ(starts_, 1);
  EXPECT_EQ(flights_.Land(*started).size(), 1u);
}

TEST_F(SingleFlightTest, LandingTwiceNeitherReturnsReadsAgainNorEndsTheNextFlight) {
  std::shared_ptr<CachedRead> a = NewRead();
  std::shared_ptr<SingleFlight::Flight> first, second, none;
  ASSERT_EQ(Enter("k", 0, &a, &first), Entry::kStarted);
  EXPECT_EQ(flights_.Land(*first).size(), 1u);
  std::shared_ptr<CachedRead> b = NewRead();
  ASSERT_EQ(Enter("k", 0, &b, &second), Entry::kStarted);
  EXPECT_TRUE(flights_.Land(*first).empty());
  EXPECT_EQ(flights_.size(), 1u);  // the second flight still runs
  std::shared_ptr<CachedRead> c = NewRead();
  EXPECT_EQ(Enter("k", 0, &c, &none), Entry::kJoined);
  EXPECT_EQ(flights_.Land(*second).size(), 2u);
}

TEST_F(SingleFlightTest, ConcurrentReadsOfOneKeyStartOneFlight) {
  constexpr int kThreads = 8;
  std::vector<std::shared_ptr<CachedRead>> reads;
  for (int i = 0; i < kThreads; ++i) reads.push_back(NewRead());
  std::vector<std::shared_ptr<SingleFlight::Flight>> started(kThreads);
  std::atomic<int> joined{0}, began{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      switch (flights_.Enter(
          "k", 0, &reads[i],
          [] {
            auto f = std::make_shared<SingleFlight::Flight>();
            f->key = "k";
            return f;
          },
          &started[i])) {
        case Entry::kStarted:
          began.fetch_add(1);
          break;
        case Entry::kJoined:
          joined.fetch_add(1);
          break;
        default:
          break;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(began.load(), 1);
  EXPECT_EQ(joined.load(), kThreads - 1);
  for (const auto& f : started) {
    if (f != nullptr) {
      EXPECT_EQ(flights_.Land(*f).size(), static_cast<size_t>(kThreads));
    }
  }
  EXPECT_EQ(flights_.size(), 0u);
}

}  // namespace
}  // namespace poolside::query
