#include "services/ingest/ingest_engine.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/db/copy.h"
#include "gtest/gtest.h"
#include "services/ingest/ingest_config.h"
#include "tests/fixtures/postgres_cluster.h"

namespace poolside::ingest {
namespace {

// Collects one request's outcome.
struct Outcome {
  absl::Notification admitted, done;
  absl::StatusOr<v1::WriteResponse> result;
  std::function<void()> Admitted() {
    return [this] { admitted.Notify(); };
  }
  IngestEngine::Done Done() {
    return [this](absl::StatusOr<v1::WriteResponse> r) {
      result = std::move(r);
      done.Notify();
    };
  }
};

v1::WriteRequest Request(int64_t first_id, int rows, std::string key = "") {
  v1::WriteRequest r;
  r.set_table("items");
  r.add_columns("id");
  r.add_columns("name");
  r.set_idempotency_key(std::move(key));
  for (int i = 0; i < rows; ++i) {
    v1::Row* row = r.add_rows();
    row->add_values()->set_int64_value(first_id + i);
    row->add_values()->set_text_value(absl::StrCat("item ", first_id + i));
  }
  return r;
}

class IngestEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pg_ = &testing::SharedPostgres();
    ASSERT_TRUE(pg_->CreateDatabase("engine").ok());
    ASSERT_TRUE(pg_->Exec("engine",
                          "DROP TABLE IF EXISTS items; DROP TABLE IF EXISTS hidden; "
                          "DROP TABLE IF EXISTS poolside_ingest_keys; "
                          "CREATE TABLE items (id int8 PRIMARY KEY, name text NOT NULL); "
                          "CREATE TABLE hidden (id int8)")
                    .ok());
  }

  std::unique_ptr<IngestEngine> StartEngine(uint64_t buffer_bytes = 0) {
    v1::IngestServiceConfig c;
    auto* db = c.add_databases();
    db->set_name("engine");
    db->set_dsn(pg_->Dsn("engine"));
    auto* t = c.add_tables();
    t->set_database("engine");
    t->add_tables("items");
    t->add_tables("missing");
    c.mutable_batch()->set_linger_ms(5);
    if (buffer_bytes > 0) {
      c.mutable_batch()->set_buffer_bytes(buffer_bytes);
      c.mutable_batch()->set_max_bytes(buffer_bytes / 4);
    }
    c.mutable_server()->mutable_tls()->set_plaintext(true);
    auto f = FinalizeIngestConfig(c);
    EXPECT_TRUE(f.ok()) << f.status();
    auto e = std::make_unique<IngestEngine>(*f);
    e->Start();
    return e;
  }

  // A session holding ACCESS EXCLUSIVE on items until Unlock().
  void Lock() {
    db::ConnectionOptions o;
    o.dsn = pg_->Dsn("engine");
    auto c = db::Connection::Open(o);
    ASSERT_TRUE(c.ok());
    locker_ = *std::move(c);
    lock_session_ = std::make_unique<db::CopySession>(*locker_, absl::InfiniteFuture());
    ASSERT_TRUE(lock_session_->Exec("BEGIN").ok());
    ASSERT_TRUE(lock_session_->Exec("LOCK TABLE items IN ACCESS EXCLUSIVE MODE").ok());
  }
  void Unlock() { ASSERT_TRUE(lock_session_->Exec("ROLLBACK").ok()); }

  std::string Count() { return *pg_->QueryValue("engine", "SELECT count(*) FROM items"); }

  testing::PostgresCluster* pg_;
  std::unique_ptr<db::Connection> locker_;
  std::unique_ptr<db::CopySession> lock_session_;
};

TEST_F(IngestEngineTest, WritesAndRefuses) {
  auto engine = StartEngine();
  Outcome a;
  ASSERT_TRUE(engine->Submit(Request(1, 100), IngestEngine::Admission::kRefuseWhenFull,
                             a.Admitted(), a.Done())
                  .ok());
  a.done.WaitForNotification();
  ASSERT_TRUE(a.result.ok()) << a.result.status();
  EXPECT_EQ(a.result->rows_written(), 100u);
  EXPECT_EQ(Count(), "100");

  Outcome unused;
  v1::WriteRequest hidden = Request(1, 1);
  hidden.set_table("hidden");
  EXPECT_EQ(engine->Submit(hidden, IngestEngine::Admission::kRefuseWhenFull, unused.Admitted(),
                           unused.Done())
                .code(),
            absl::StatusCode::kPermissionDenied);
  v1::WriteRequest bad_column = Request(1, 1);
  bad_column.set_columns(1, "nope");
  EXPECT_EQ(engine->Submit(bad_column, IngestEngine::Admission::kRefuseWhenFull,
                           unused.Admitted(), unused.Done())
                .code(),
            absl::StatusCode::kInvalidArgument);
  v1::WriteRequest other_db = Request(1, 1);
  other_db.set_database("nope");
  EXPECT_EQ(engine->Submit(other_db, IngestEngine::Admission::kRefuseWhenFull, unused.Admitted(),
                           unused.Done())
                .code(),
            absl::StatusCode::kNotFound);
  // Configured but absent: accepted, then answered NOT_FOUND once the catalog says so.
  v1::WriteRequest missing = Request(1, 1);
  missing.set_table("missing");
  Outcome m;
  ASSERT_TRUE(
      engine->Submit(missing, IngestEngine::Admission::kRefuseWhenFull, m.Admitted(), m.Done())
          .ok());
  m.done.WaitForNotification();
  EXPECT_EQ(m.result.status().code(), absl::StatusCode::kNotFound) << m.result.status();

  v1::GetIngestStatsResponse stats;
  engine->GetStats(&stats);
  EXPECT_EQ(stats.rows_written(), 100u);
  EXPECT_GE(stats.batches_written(), 1u);
  EXPECT_EQ(stats.buffered_bytes(), 0u);
}

TEST_F(IngestEngineTest, RetryWhileInFlightIsWrittenOnce) {
  auto engine = StartEngine();
  // Let the catalog read finish before the table is locked.
  Outcome warm;
  ASSERT_TRUE(engine->Submit(Request(1000, 1), IngestEngine::Admission::kRefuseWhenFull,
                             warm.Admitted(), warm.Done())
                  .ok());
  warm.done.WaitForNotification();
  Lock();
  Outcome first, retry;
  ASSERT_TRUE(engine->Submit(Request(1, 10, "key-1"), IngestEngine::Admission::kRefuseWhenFull,
                             first.Admitted(), first.Done())
                  .ok());
  ASSERT_TRUE(engine->Submit(Request(1, 10, "key-1"), IngestEngine::Admission::kRefuseWhenFull,
                             retry.Admitted(), retry.Done())
                  .ok());
  EXPECT_FALSE(first.done.HasBeenNotified());
  Unlock();
  first.done.WaitForNotification();
  retry.done.WaitForNotification();
  ASSERT_TRUE(first.result.ok()) << first.result.status();
  ASSERT_TRUE(retry.result.ok()) << retry.result.status();
  EXPECT_FALSE(first.result->duplicate());
  EXPECT_TRUE(retry.result->duplicate());
  EXPECT_EQ(retry.result->rows_written(), 10u);
  EXPECT_EQ(Count(), "11");

  // A new engine (a restarted server) finds the key in the table.
  engine.reset();
  engine = StartEngine();
  Outcome later;
  ASSERT_TRUE(engine->Submit(Request(1, 10, "key-1"), IngestEngine::Admission::kRefuseWhenFull,
                             later.Admitted(), later.Done())
                  .ok());
  later.done.WaitForNotification();
  ASSERT_TRUE(later.result.ok());
  EXPECT_TRUE(later.result->duplicate());
  EXPECT_EQ(Count(), "11");
}

TEST_F(IngestEngineTest, FullBufferRefusesUnaryAndHoldsStreams) {
  auto engine = StartEngine(/*buffer_bytes=*/64 << 10);
  Outcome warm;
  ASSERT_TRUE(engine->Submit(Request(1000000, 1), IngestEngine::Admission::kRefuseWhenFull,
                             warm.Admitted(), warm.Done())
                  .ok());
  warm.done.WaitForNotification();
  Lock();
  std::vector<std::unique_ptr<Outcome>> accepted;
  absl::Status refused;
  for (int i = 0; i < 100 && refused.ok(); ++i) {
    auto o = std::make_unique<Outcome>();
    refused = engine->Submit(Request(i * 100, 100), IngestEngine::Admission::kRefuseWhenFull,
                             o->Admitted(), o->Done());
    if (refused.ok()) accepted.push_back(std::move(o));
  }
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_GT(RetryAfterOf(refused), absl::ZeroDuration());
  // A stream's request waits for room instead: not admitted yet.
  Outcome waiting;
  ASSERT_TRUE(engine->Submit(Request(50000, 100), IngestEngine::Admission::kWaitForRoom,
                             waiting.Admitted(), waiting.Done())
                  .ok());
  EXPECT_FALSE(waiting.admitted.HasBeenNotified());
  v1::GetIngestStatsResponse stats;
  engine->GetStats(&stats);
  EXPECT_LE(stats.buffered_bytes_max(), 64u << 10);
  Unlock();
  waiting.admitted.WaitForNotification();
  waiting.done.WaitForNotification();
  EXPECT_TRUE(waiting.result.ok()) << waiting.result.status();
  for (auto& o : accepted) {
    o->done.WaitForNotification();
    EXPECT_TRUE(o->result.ok()) << o->result.status();
  }
  EXPECT_EQ(Count(), absl::StrCat(1 + 100 * (accepted.size() + 1)));
}

TEST_F(IngestEngineTest, DrainFlushesAndThenRefuses) {
  auto engine = StartEngine();
  Outcome a;
  ASSERT_TRUE(engine->Submit(Request(1, 5), IngestEngine::Admission::kWaitForRoom, a.Admitted(),
                             a.Done())
                  .ok());
  EXPECT_TRUE(engine->Drain(absl::Seconds(30)));
  ASSERT_TRUE(a.done.HasBeenNotified());
  EXPECT_TRUE(a.result.ok());
  Outcome b;
  EXPECT_EQ(engine->Submit(Request(10, 5), IngestEngine::Admission::kWaitForRoom, b.Admitted(),
                           b.Done())
                .code(),
            absl::StatusCode::kUnavailable);
  engine->Stop();
  EXPECT_EQ(Count(), "5");
}

}  // namespace
}  // namespace poolside::ingest
