#include "services/query/cached_read.h"

#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/query.pb.h"
#include "services/query/database.h"
#include "services/query/in_flight.h"

namespace poolside::query {
namespace {

// A database nothing is ever submitted to (its pool opens no connection).
std::unique_ptr<Database> IdleDatabase() {
  v1::DatabaseConfig c;
  c.set_name("app");
  c.set_dsn("host=127.0.0.1 port=1 dbname=app");
  c.mutable_pool()->set_max_size(1);
  return std::make_unique<Database>(c);
}

v1::ResultSet Rows(int n) {
  v1::ResultSet rs;
  for (int i = 0; i < n; ++i) rs.add_rows()->add_values()->set_int64_value(i);
  return rs;
}

// One caller's side of a read: what QueryEngine::Execute hands the cache.
struct Caller {
  v1::ExecuteRequest request;
  v1::ExecuteResponse response;
  std::shared_ptr<Work> work = std::make_shared<Work>();
  int done_calls = 0;
  absl::Status status;
  int plain_runs = 0;

  Caller() {
    request.set_sql("SELECT v FROM t WHERE id = $1");
    request.add_params()->set_int64_value(7);
    request.set_min_lsn(99);
    work->deadline = absl::Now() + absl::Seconds(30);
    work->done = [this](absl::Status s) {
      ++done_calls;
      status = std::move(s);
    };
  }

  CachedRead Read(Database* db, uint64_t max_rows = 100, uint64_t max_bytes = 1 << 20) {
    return CachedRead(db, request, work, &response, max_rows, max_bytes, [this] { ++plain_runs; });
  }
};

TEST(CachedReadTest, AnswersOnceWithinTheCallersLimitsSayingWhereFrom) {
  std::unique_ptr<Database> db = IdleDatabase();
  Caller caller;
  CachedRead read = caller.Read(db.get());
  EXPECT_EQ(read.db(), db.get());
  EXPECT_EQ(&read.request(), &caller.request);  // borrowed while on the stack
  EXPECT_EQ(read.min_lsn(), 99u);
  EXPECT_EQ(read.deadline(), caller.work->deadline);

  ASSERT_TRUE(read.Answer(absl::OkStatus(), Rows(3), v1::HIT, v1::SIDECAR, 42, "replica-1"));
  EXPECT_EQ(caller.done_calls, 1);
  EXPECT_TRUE(caller.status.ok());
  EXPECT_EQ(caller.response.result().rows_size(), 3);
  EXPECT_EQ(caller.response.cache(), v1::HIT);
  EXPECT_EQ(caller.response.source(), v1::SIDECAR);
  EXPECT_EQ(caller.response.lsn(), 42u);
  EXPECT_EQ(caller.response.member(), "replica-1");

  // Answered already: a second answer touches nothing.
  EXPECT_FALSE(read.Answer(absl::OkStatus(), Rows(1), v1::MISS, v1::DATABASE, 1));
  EXPECT_EQ(caller.done_calls, 1);
  EXPECT_EQ(caller.response.result().rows_size(), 3);
  EXPECT_EQ(caller.response.cache(), v1::HIT);
  EXPECT_EQ(caller.plain_runs, 0);
}

TEST(CachedReadTest, AResultPastTheCallersLimitsFailsThatCallerOnly) {
  std::unique_ptr<Database> db = IdleDatabase();
  Caller rows;
  CachedRead by_rows = rows.Read(db.get(), /*max_rows=*/2);
  ASSERT_TRUE(by_rows.Answer(absl::OkStatus(), Rows(3), v1::MISS, v1::DATABASE, 5));
  EXPECT_EQ(rows.status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(rows.status.message().find("row limit is 2"), std::string::npos) << rows.status;
  EXPECT_EQ(rows.response.result().rows_size(), 0);
  EXPECT_EQ(rows.response.cache(), v1::MISS);  // still says what happened

  Caller bytes;
  CachedRead by_bytes = bytes.Read(db.get(), 100, /*max_bytes=*/4);
  ASSERT_TRUE(by_bytes.Answer(absl::OkStatus(), Rows(3), v1::HIT, v1::NEAR_CACHE, 5));
  EXPECT_EQ(bytes.status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(bytes.status.message().find("byte limit is 4"), std::string::npos) << bytes.status;
  EXPECT_EQ(bytes.response.result().rows_size(), 0);

  // An error passes through as it is; no result is set.
  Caller failed;
  CachedRead errored = failed.Read(db.get());
  ASSERT_TRUE(errored.Answer(absl::UnavailableError("down"), Rows(1), v1::MISS, v1::DATABASE, 0));
  EXPECT_EQ(failed.status, absl::UnavailableError("down"));
  EXPECT_EQ(failed.response.result().rows_size(), 0);
}

TEST(CachedReadTest, ACallerThatWentAwayIsNotTouched) {
  std::unique_ptr<Database> db = IdleDatabase();
  Caller caller;
  CachedRead read = caller.Read(db.get());
  ASSERT_TRUE(caller.work->Abandon());
  EXPECT_FALSE(read.Answer(absl::OkStatus(), Rows(1), v1::HIT, v1::SIDECAR, 1));
  EXPECT_EQ(caller.done_calls, 0);
  EXPECT_FALSE(caller.response.has_result());
  EXPECT_EQ(caller.response.cache(), v1::CACHE_OUTCOME_UNSPECIFIED);
}

TEST(CachedReadTest, DetachedItKeepsItsOwnRequestAndCountsInFlightUntilDestroyed) {
  std::unique_ptr<Database> db = IdleDatabase();
  InFlight in_flight;
  auto caller = std::make_unique<Caller>();
  CachedRead read = caller->Read(db.get());
  read.key = "q1|app|...";
  read.lsn = 12;
  EXPECT_EQ(in_flight.count(), 0);  // on the stack: not counted
  std::shared_ptr<CachedRead> detached = CachedRead::Detach(std::move(read), in_flight);
  EXPECT_EQ(in_flight.count(), 1);
  EXPECT_EQ(detached->key, "q1|app|...");
  EXPECT_EQ(detached->lsn, 12u);
  EXPECT_NE(&detached->request(), &caller->request);
  // The call's request changes or dies; the read's copy does not.
  caller->request.set_sql("DROP TABLE t");
  caller->request.clear_params();
  EXPECT_EQ(detached->request().sql(), "SELECT v FROM t WHERE id = $1");
  ASSERT_EQ(detached->request().params_size(), 1);
  EXPECT_EQ(detached->request().params(0).int64_value(), 7);
  EXPECT_EQ(detached->min_lsn(), 99u);

  // Detached again (it goes on): still one copy, counted once.
  std::shared_ptr<CachedRead> again = CachedRead::Detach(std::move(*detached), in_flight);
  detached.reset();
  EXPECT_EQ(in_flight.count(), 1);
  EXPECT_EQ(again->request().sql(), "SELECT v FROM t WHERE id = $1");

  again->RunPlain();
  EXPECT_EQ(caller->plain_runs, 1);
  again.reset();
  EXPECT_EQ(in_flight.count(), 0);
}

}  // namespace
}  // namespace poolside::query
