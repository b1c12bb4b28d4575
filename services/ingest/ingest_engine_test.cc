#include "services/ingest/ingest_engine.h"

#include <atomic>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/auth/authorizer.h"
#include "common/db/copy.h"
#include "common/db/topology.h"
#include "gtest/gtest.h"
#include "services/ingest/ingest_config.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/refusing_port.h"
#include "tests/fixtures/values.h"

namespace poolside::ingest {
namespace {

using ::poolside::testing::RefusingPort;

// Collects one request's outcome.
struct Outcome {
  absl::Notification done;
  absl::StatusOr<v1::WriteResponse> result;
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

// An engine of `config` (finalized as the server would), started; nullptr,
// failing the test, if the configuration is refused.
std::unique_ptr<IngestEngine> StartedEngine(const v1::IngestServiceConfig& config) {
  absl::StatusOr<v1::IngestServiceConfig> finalized = FinalizeIngestConfig(config);
  EXPECT_TRUE(finalized.ok()) << finalized.status();
  if (!finalized.ok()) return nullptr;
  auto engine = std::make_unique<IngestEngine>(*finalized);
  engine->Start();
  return engine;
}

class IngestEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pg_ = &testing::SharedPostgres();
    ASSERT_TRUE(
        pg_->CreateDatabase("engine",
                            "DROP TABLE IF EXISTS items; DROP TABLE IF EXISTS hidden; "
                            "DROP TABLE IF EXISTS poolside_ingest_keys; "
                            "CREATE TABLE items (id int8 PRIMARY KEY, name text NOT NULL); "
                            "CREATE TABLE hidden (id int8); DROP TABLE IF EXISTS events; "
                            "CREATE TABLE events (id int8 PRIMARY KEY, device text NOT NULL, "
                            "at timestamptz NOT NULL, value float8, payload bytea)")
            .ok());
  }

  std::unique_ptr<IngestEngine> StartEngine(uint64_t buffer_bytes = 0,
                                            uint64_t max_request_bytes = 0,
                                            uint32_t copy_connections = 0) {
    v1::IngestServiceConfig c;
    auto* db = c.add_databases();
    db->set_name("engine");
    db->set_dsn(pg_->Dsn("engine"));
    db->set_allow_privileged_role(true);  // the fixture's superuser
    if (connect_timeout_ms_ > 0) db->mutable_pool()->set_connect_timeout_ms(connect_timeout_ms_);
    for (const std::string& role : roles_) db->add_roles()->set_name(role);
    auto* t = c.add_tables();
    t->set_database("engine");
    t->add_tables("items");
    t->add_tables("missing");
    t->add_tables("events");
    for (const std::string& extra : extra_tables_) t->add_tables(extra);
    c.mutable_batch()->set_linger_ms(5);
    c.mutable_batch()->set_copy_connections(copy_connections);
    if (buffer_bytes > 0) {
      c.mutable_batch()->set_buffer_bytes(buffer_bytes);
      c.mutable_batch()->set_max_bytes(buffer_bytes / 4);
    }
    c.mutable_batch()->set_max_request_bytes(max_request_bytes);
    c.mutable_server()->mutable_tls()->set_plaintext(true);
    return StartedEngine(c);
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

  std::string Query(const std::string& sql) {
    absl::StatusOr<std::string> v = pg_->QueryValue("engine", sql);
    EXPECT_TRUE(v.ok()) << v.status() << " in " << sql;
    return v.ok() ? *v : "";
  }

  // Waits until `n` sessions wait for a lock (the COPYs behind Lock()).
  void WaitForLockWaiters(int n) {
    const absl::Time give_up = absl::Now() + absl::Seconds(60);
    while (Query("SELECT count(*) FROM pg_stat_activity WHERE datname = 'engine' AND "
                 "wait_event_type = 'Lock'") != absl::StrCat(n) &&
           absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    ASSERT_EQ(Query("SELECT count(*) FROM pg_stat_activity WHERE datname = 'engine' AND "
                    "wait_event_type = 'Lock'"),
              absl::StrCat(n));
  }

  // Lock(), then two one-row batches (ids 1 and 2) that the two COPY
  // connections take one after the other (so not joined); returns once both
  // wait for the lock: what is sent next queues.
  void BlockBothCopyConnections(IngestEngine& engine, Outcome* blocker1, Outcome* blocker2);

  // What every hostile case must leave behind: no ingest session inside a
  // transaction, nothing buffered, no batch waiting.
  void ExpectNothingLeftBehind(IngestEngine& engine) {
    EXPECT_EQ(Query("SELECT count(*) FROM pg_stat_activity WHERE datname = 'engine' AND "
                    "state LIKE 'idle in transaction%'"),
              "0");
    v1::GetIngestStatsResponse stats;
    engine.GetStats(&stats);
    EXPECT_EQ(stats.buffered_bytes(), 0u);
    EXPECT_EQ(stats.queue_batches(), 0u);
  }

  // Tables configured besides items, missing and events (created by the test).
  std::vector<std::string> extra_tables_;
  // Database roles configured (login roles of the fixture's server).
  std::vector<std::string> roles_;
  // The pools' connect timeout (0: the default).
  uint32_t connect_timeout_ms_ = 0;
  testing::PostgresCluster* pg_;
  std::unique_ptr<db::Connection> locker_;
  std::unique_ptr<db::CopySession> lock_session_;
};

v1::GetIngestStatsResponse StatsOf(IngestEngine& engine) {
  v1::GetIngestStatsResponse stats;
  engine.GetStats(&stats);
  return stats;
}

// Submits `request` as a unary call would and waits for its outcome.
absl::StatusOr<v1::WriteResponse> Write(IngestEngine& engine, const v1::WriteRequest& request,
                                        const std::string& principal = "") {
  auth::Principal who;
  who.name = principal;
  Outcome o;
  absl::Status s =
      engine.Submit(request, principal.empty() ? nullptr : &who, /*ticket=*/0, o.Done());
  if (!s.ok()) return s;
  o.done.WaitForNotification();
  return o.result;
}

TEST_F(IngestEngineTest, WritesAndRefuses) {
  auto engine = StartEngine();
  absl::StatusOr<v1::WriteResponse> a = Write(*engine, Request(1, 100));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->rows_written(), 100u);
  EXPECT_EQ(Count(), "100");

  v1::WriteRequest hidden = Request(1, 1);
  hidden.set_table("hidden");
  EXPECT_EQ(Write(*engine, hidden).status().code(), absl::StatusCode::kPermissionDenied);
  v1::WriteRequest bad_column = Request(1, 1);
  bad_column.set_columns(1, "nope");
  EXPECT_EQ(Write(*engine, bad_column).status().code(), absl::StatusCode::kInvalidArgument);
  v1::WriteRequest other_db = Request(1, 1);
  other_db.set_database("nope");
  EXPECT_EQ(Write(*engine, other_db).status().code(), absl::StatusCode::kNotFound);
  // Configured but absent: accepted, then answered NOT_FOUND once the catalog says so.
  v1::WriteRequest missing = Request(1, 1);
  missing.set_table("missing");
  EXPECT_EQ(Write(*engine, missing).status().code(), absl::StatusCode::kNotFound);

  v1::GetIngestStatsResponse stats = StatsOf(*engine);
  EXPECT_EQ(stats.rows_written(), 100u);
  EXPECT_GE(stats.batches_written(), 1u);
  EXPECT_EQ(stats.buffered_bytes(), 0u);
}

TEST_F(IngestEngineTest, MalformedAndOversizedRequestsAreRefusedSayingWhy) {
  auto engine = StartEngine(/*buffer_bytes=*/1 << 20, /*max_request_bytes=*/64 << 10);
  ASSERT_TRUE(Write(*engine, Request(1, 1)).ok());  // the catalog is read
  // Invalid UTF-8 in a row (protobuf would not even parse the message).
  v1::WriteRequest r = Request(10, 3);
  std::string bytes = r.SerializeAsString();
  const size_t at = bytes.find("item 11");
  ASSERT_NE(at, std::string::npos);
  bytes[at + 1] = '\xff';
  SerializedWrite bad;
  bad.size = bytes.size();
  bad.buffer = bytes;
  Outcome o;
  absl::Status s = engine->Submit(std::move(bad), nullptr, 0, o.Done());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(IsMalformed(s)) << s;
  EXPECT_NE(s.message().find("row 1"), absl::string_view::npos) << s;
  // Larger than batch.maxRequestBytes: the sizes are in the message.
  absl::StatusOr<v1::WriteResponse> big = Write(*engine, Request(100, 5000));
  EXPECT_EQ(big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(big.status().message().find("KiB"), absl::string_view::npos) << big.status();
  EXPECT_NE(big.status().message().find("64.0 KiB"), absl::string_view::npos) << big.status();
  EXPECT_NE(big.status().message().find("split it"), absl::string_view::npos) << big.status();
  EXPECT_EQ(Count(), "1");
  EXPECT_EQ(StatsOf(*engine).buffered_bytes(), 0u);
}

// Broken encodings, each refused at once as malformed and nothing of it
// kept; a key with a NUL refused (not malformed: it parses); a rows field of
// the wrong wire type is, as for protobuf, an unknown field (no row); a
// request of no rows, keyed, commits its key and names its content.
TEST_F(IngestEngineTest, BrokenEncodingsAreRefusedAndLeaveNothing) {
  auto engine = StartEngine();
  ASSERT_TRUE(Write(*engine, Request(1, 1)).ok());  // the catalog is read
  const std::string items = std::string("\x12\x05", 2) + "items";
  auto submit = [&](std::string bytes) {
    SerializedWrite w;
    w.size = bytes.size();
    w.buffer = std::move(bytes);
    Outcome o;
    absl::Status s = engine->Submit(std::move(w), nullptr, 0, o.Done());
    if (s.ok()) {
      o.done.WaitForNotification();
      s = o.result.status();
    }
    return s;
  };
  const std::vector<std::pair<std::string, std::string>> broken = {
      {"truncated field", items + std::string("\x0a\x05"
                                              "ab",
                                              4)},
      {"tag 0", items + std::string("\x00", 1)},
      {"end group at the top", items + "\x0c"},
      {"length past 4 GiB", items + std::string("\x1a\xff\xff\xff\xff\x0f", 6)},
      {"overlong varint", items + "\x28" + std::string(11, '\xff')},
      {"row that does not parse", items + std::string("\x22\x02\x0a\x05", 4)},
      {"row with a truncated value", items + std::string("\x22\x04\x0a\x02\x18", 5)},
      {"invalid UTF-8 in a column name", items + std::string("\x1a\x02\xc3\x28", 4)},
  };
  for (const auto& [what, bytes] : broken) {
    absl::Status s = submit(bytes);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << what << ": " << s;
    EXPECT_TRUE(IsMalformed(s)) << what << ": " << s;
  }
  absl::Status nul_key = submit(items + std::string("\x2a\x03"
                                                    "a\0b",
                                                    5));
  EXPECT_EQ(nul_key.code(), absl::StatusCode::kInvalidArgument) << nul_key;
  EXPECT_FALSE(IsMalformed(nul_key)) << nul_key;
  // Field 4 as a varint: an unknown field, so a request of no rows.
  EXPECT_TRUE(submit(items + std::string("\x20\x01", 2)).ok());
  // No rows, keyed: its key commits and names "no rows".
  absl::StatusOr<v1::WriteResponse> none = Write(*engine, Request(10, 0, "no-rows"));
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(none->rows_written(), 0u);
  absl::StatusOr<v1::WriteResponse> again = Write(*engine, Request(10, 0, "no-rows"));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->duplicate());
  EXPECT_EQ(Write(*engine, Request(10, 1, "no-rows")).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Count(), "1");
  EXPECT_EQ(Query("SELECT rows FROM poolside_ingest_keys WHERE key = 'no-rows'"), "0");
  ExpectNothingLeftBehind(*engine);
}

TEST_F(IngestEngineTest, KeyBelongsToItsPrincipalAndNamesOneRequest) {
  auto engine = StartEngine();
  absl::StatusOr<v1::WriteResponse> first = Write(*engine, Request(1, 10, "k"), "alice");
  ASSERT_TRUE(first.ok()) << first.status();
  // The same content again: the first answer.
  absl::StatusOr<v1::WriteResponse> again = Write(*engine, Request(1, 10, "k"), "alice");
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->duplicate());
  // Other rows, other columns: refused, naming the key; nothing written.
  absl::StatusOr<v1::WriteResponse> other = Write(*engine, Request(100, 10, "k"), "alice");
  EXPECT_EQ(other.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(other.status().message().find("\"k\""), absl::string_view::npos) << other.status();
  v1::WriteRequest fewer_columns = Request(1, 10, "k");
  fewer_columns.mutable_columns()->RemoveLast();
  for (auto& row : *fewer_columns.mutable_rows()) row.mutable_values()->RemoveLast();
  EXPECT_EQ(Write(*engine, fewer_columns, "alice").status().code(),
            absl::StatusCode::kFailedPrecondition);
  // The same key of another principal is another key.
  absl::StatusOr<v1::WriteResponse> bob = Write(*engine, Request(200, 10, "k"), "bob");
  ASSERT_TRUE(bob.ok()) << bob.status();
  EXPECT_FALSE(bob->duplicate());
  EXPECT_EQ(Count(), "20");

  // After a restart the keys come from the table, with the same answers.
  engine.reset();
  engine = StartEngine();
  again = Write(*engine, Request(1, 10, "k"), "alice");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->duplicate());
  EXPECT_EQ(Write(*engine, Request(300, 10, "k"), "alice").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Write(*engine, Request(300, 10, "k"), "bob").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Count(), "20");
}

// Rows of `events` with typed values; `text_time` sends the timestamp as the
// text poolside's own COPY text would hold.
v1::WriteRequest Events(int64_t first_id, int rows, std::string key = "", bool text_time = false) {
  v1::WriteRequest r;
  r.set_table("events");
  r.set_idempotency_key(std::move(key));
  for (int i = 0; i < rows; ++i) {
    const int64_t id = first_id + i;
    v1::Row* row = r.add_rows();
    row->add_values()->set_int64_value(id);
    row->add_values()->set_text_value(absl::StrCat("device\t", id % 7, "\n\\"));
    if (text_time) {
      row->add_values()->set_text_value(
          absl::FormatTime("%Y-%m-%d %H:%M:%E6S+00",
                           absl::FromUnixSeconds(1700000000 + id) + absl::Microseconds(id % 1000),
                           absl::UTCTimeZone()));
    } else {
      auto* ts = row->add_values()->mutable_timestamp_value();
      ts->set_seconds(1700000000 + id);
      ts->set_nanos(static_cast<int32_t>(id % 1000) * 1000 + 999);  // truncated to µs
    }
    if (id % 5 == 0) {
      row->add_values()->set_null_value(v1::NULL_VALUE);
    } else {
      row->add_values()->set_double_value(id / 3.0);
    }
    row->add_values()->set_bytes_value(std::string("\0\xff", 2) + std::to_string(id));
  }
  return r;
}

TEST_F(IngestEngineTest, TypedRowsGoAsBinaryCopyAndLandExactly) {
  auto engine = StartEngine();
  // Typed values: binary. A timestamp sent as text: that request as text.
  // Concurrently, so both formats are in flight at once.
  Outcome binary, text;
  ASSERT_TRUE(engine->Submit(Events(1, 500), nullptr, 0, binary.Done()).ok());
  ASSERT_TRUE(engine->Submit(Events(501, 100, "", true), nullptr, 0, text.Done()).ok());
  binary.done.WaitForNotification();
  text.done.WaitForNotification();
  ASSERT_TRUE(binary.result.ok()) << binary.result.status();
  ASSERT_TRUE(text.result.ok()) << text.result.status();
  EXPECT_EQ(binary.result->rows_written(), 500u);
  EXPECT_EQ(text.result->rows_written(), 100u);
  v1::GetIngestStatsResponse stats = StatsOf(*engine);
  EXPECT_EQ(stats.rows_written(), 600u);
  EXPECT_EQ(stats.rows_written_binary(), 500u);
  EXPECT_EQ(
      *pg_->QueryValue(
          "engine",
          "SELECT count(*) FROM events WHERE device = E'device\\t' || (id % 7) || E'\\n\\\\' "
          "AND at = to_timestamp(1700000000 + id) + (id % 1000) * interval '1 microsecond' "
          "AND value IS NOT DISTINCT FROM CASE WHEN id % 5 = 0 THEN NULL ELSE id / 3.0::float8 "
          "END AND payload = '\\x00ff'::bytea || convert_to(id::text, 'UTF8')"),
      "600");

  // A row PostgreSQL refuses (a duplicate key) in a binary batch: that row is
  // answered with its reason, the others are written.
  v1::WriteRequest dup = Events(1000, 10);
  *dup.mutable_rows(7) = Events(3, 1).rows(0);
  absl::StatusOr<v1::WriteResponse> partial = Write(*engine, dup);
  ASSERT_TRUE(partial.ok()) << partial.status();
  EXPECT_EQ(partial->rows_written(), 9u);
  EXPECT_EQ(testing::RejectedRows(*partial), "7:23505");
  EXPECT_EQ(*pg_->QueryValue("engine", "SELECT count(*) FROM events"), "609");
  stats = StatsOf(*engine);
  EXPECT_EQ(stats.rows_written_binary(), 509u);
}

// A request of a few short typed rows goes as binary COPY too (the docs'
// rule: every column's type and every value's kind has a binary form). It
// went as text: the room reserved for its rows from the first one (16 bytes
// a row more, and a quarter) was taken for its binary size, which then
// passed what the request had been admitted for.
TEST_F(IngestEngineTest, AFewShortTypedRowsGoAsBinaryCopy) {
  auto engine = StartEngine();
  for (int rows : {1, 3, 10, 100}) {
    const uint64_t before = StatsOf(*engine).rows_written_binary();
    absl::StatusOr<v1::WriteResponse> r = Write(*engine, Request(rows * 1000, rows));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(StatsOf(*engine).rows_written_binary() - before, static_cast<uint64_t>(rows))
        << rows << " rows";
  }
  EXPECT_EQ(Count(), "114");
}

// An idempotency key names the rows' content, not how they were carried: the
// same rows sent again with the timestamps as text (so as a text COPY) are the
// same request.
TEST_F(IngestEngineTest, AKeysContentDoesNotDependOnTheCopyFormat) {
  auto engine = StartEngine();
  absl::StatusOr<v1::WriteResponse> first = Write(*engine, Events(1, 20, "kf"));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->duplicate());
  absl::StatusOr<v1::WriteResponse> again = Write(*engine, Events(1, 20, "kf", true));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->duplicate());
  EXPECT_EQ(Write(*engine, Events(2, 20, "kf", true)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(*pg_->QueryValue("engine", "SELECT count(*) FROM events"), "20");
}

TEST_F(IngestEngineTest, APrincipalWhoseDatabaseRoleIsNotConfiguredIsRefused) {
  auto engine = StartEngine();
  auth::Principal who;
  who.name = "carol";
  who.database_role = "no_such_role";
  Outcome o;
  absl::Status s = engine->Submit(Request(1, 1), &who, /*ticket=*/0, o.Done());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("no_such_role"), absl::string_view::npos) << s;
  EXPECT_FALSE(o.done.HasBeenNotified());
  // Per database: another database's role for it leaves this one's default.
  who.database_role.clear();
  who.database_roles["elsewhere"] = "no_such_role";
  ASSERT_TRUE(Write(*engine, Request(1, 1)).ok());
  EXPECT_TRUE(engine->Submit(Request(2, 1), &who, /*ticket=*/0, o.Done()).ok());
  o.done.WaitForNotification();
  EXPECT_TRUE(o.result.ok()) << o.result.status();
  EXPECT_EQ(Count(), "2");
  EXPECT_EQ(StatsOf(*engine).buffered_bytes(), 0u);
}

TEST_F(IngestEngineTest, RetryWhileInFlightIsWrittenOnce) {
  auto engine = StartEngine();
  // Let the catalog read finish before the table is locked.
  ASSERT_TRUE(Write(*engine, Request(1000, 1)).ok());
  Lock();
  Outcome first, retry, other;
  ASSERT_TRUE(engine->Submit(Request(1, 10, "key-1"), nullptr, 0, first.Done()).ok());
  ASSERT_TRUE(engine->Submit(Request(1, 10, "key-1"), nullptr, 0, retry.Done()).ok());
  // Other rows under the key in flight: refused at once.
  ASSERT_TRUE(engine->Submit(Request(50, 10, "key-1"), nullptr, 0, other.Done()).ok());
  other.done.WaitForNotification();
  EXPECT_EQ(other.result.status().code(), absl::StatusCode::kFailedPrecondition);
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
}

TEST_F(IngestEngineTest, BatchesQueuedBehindBusyConnectionsCommitTogether) {
  auto engine = StartEngine(0, 0, /*copy_connections=*/2);
  ASSERT_TRUE(Write(*engine, Request(1000000, 1)).ok());
  Lock();
  // One request per batch (each sealed by its linger before the next is
  // sent): the first ones take every COPY connection and wait for the lock,
  // the rest queue. (Both connections are seen waiting before the rest are
  // sent: a worker slow to wake on a loaded machine would otherwise find two
  // batches queued and join them before the lock goes.)
  std::vector<std::unique_ptr<Outcome>> sent;
  auto linger_flushes = [&] { return StatsOf(*engine).flushes_by_reason().at("linger"); };
  for (int i = 0; i < 40 && StatsOf(*engine).queue_batches() < 4; ++i) {
    const uint64_t before = linger_flushes();
    sent.push_back(std::make_unique<Outcome>());
    ASSERT_TRUE(engine->Submit(Request(i * 10, 10), nullptr, 0, sent.back()->Done()).ok());
    while (linger_flushes() == before) absl::SleepFor(absl::Milliseconds(1));
    if (i < 2) WaitForLockWaiters(i + 1);
  }
  const v1::GetIngestStatsResponse locked = StatsOf(*engine);
  ASSERT_GE(locked.queue_batches(), 4u) << "no batch queued behind the connections";
  EXPECT_EQ(locked.batches_joined(), 0u);
  for (auto& o : sent) EXPECT_FALSE(o->done.HasBeenNotified());
  Unlock();
  for (auto& o : sent) {
    o->done.WaitForNotification();
    ASSERT_TRUE(o->result.ok()) << o->result.status();
    EXPECT_EQ(o->result->rows_written(), 10u);
  }
  // Every row once; the queued batches went in one transaction.
  EXPECT_EQ(Count(), absl::StrCat(1 + 10 * sent.size()));
  EXPECT_EQ(*pg_->QueryValue("engine", "SELECT count(DISTINCT id) FROM items"), Count());
  const v1::GetIngestStatsResponse after = StatsOf(*engine);
  EXPECT_EQ(after.batches_joined(), locked.queue_batches() - 1);
  EXPECT_EQ(after.batches_written(), 1 + sent.size() - after.batches_joined());
  EXPECT_EQ(after.queue_batches(), 0u);
  EXPECT_EQ(after.buffered_bytes(), 0u);
}

uint64_t FlushesOf(IngestEngine& engine) {
  const v1::GetIngestStatsResponse stats = StatsOf(engine);
  uint64_t n = 0;
  for (const auto& [reason, count] : stats.flushes_by_reason()) n += count;
  return n;
}

// Submits `request` and waits until its batch is sealed, so that each request
// sent this way is a batch of its own.
void SubmitSealed(IngestEngine& engine, const v1::WriteRequest& request, Outcome* outcome,
                  const auth::Principal* who = nullptr) {
  const uint64_t before = FlushesOf(engine);
  ASSERT_TRUE(engine.Submit(request, who, /*ticket=*/0, outcome->Done()).ok());
  while (FlushesOf(engine) == before) absl::SleepFor(absl::Milliseconds(1));
}

// As Request(), with names 60 bytes longer: rows whose binary form is well
// within what their request is admitted for, whatever the room reserved.
v1::WriteRequest BinaryRequest(int64_t first_id, int rows, std::string key = "") {
  v1::WriteRequest r = Request(first_id, rows, std::move(key));
  for (int i = 0; i < rows; ++i) {
    r.mutable_rows(i)->mutable_values(1)->mutable_text_value()->append(60, '.');
  }
  return r;
}

void IngestEngineTest::BlockBothCopyConnections(IngestEngine& engine, Outcome* blocker1,
                                                Outcome* blocker2) {
  Lock();
  SubmitSealed(engine, BinaryRequest(1, 1), blocker1);
  WaitForLockWaiters(1);  // taken before the next is sealed: not joined with it
  SubmitSealed(engine, BinaryRequest(2, 1), blocker2);
  WaitForLockWaiters(2);
}

// As Request(), with the ids as numeric text: only a text COPY carries them.
v1::WriteRequest TextRequest(int64_t first_id, int rows) {
  v1::WriteRequest r = Request(first_id, rows);
  for (int i = 0; i < rows; ++i) {
    r.mutable_rows(i)->mutable_values(0)->set_numeric_value(absl::StrCat(first_id + i));
  }
  return r;
}

// The rejected rows of an answer, as "index:sqlstate,...", or its error.
std::string RejectedOf(const absl::StatusOr<v1::WriteResponse>& r) {
  if (!r.ok()) return absl::StrCat("error: ", r.status().ToString());
  return testing::RejectedRows(*r);
}

// Queued batches joined into one transaction keep every request's answer its
// own: a row PostgreSQL refuses (a duplicate of a committed row, of a row of
// an earlier request in the same transaction, a NULL refused before COPY) is
// answered to its request alone, with its index there, and the other rows of
// every request commit once; keys of two principals and a retry in flight
// with them. Batches of another format or table queued alongside are never
// in that transaction (each table and format commits apart, seen by the rows'
// xmin), and no request is split across transactions.
TEST_F(IngestEngineTest, JoinedBatchesAnswerEachRequestWithItsOwnRowsAndNeverMixGroups) {
  // Each row's top-level transaction (xmin would name the savepoints of
  // bad-row isolation).
  ASSERT_TRUE(pg_->Exec("engine",
                        "ALTER TABLE items ADD COLUMN tx int8 DEFAULT txid_current(); "
                        "ALTER TABLE events ADD COLUMN tx int8 DEFAULT txid_current()")
                  .ok());
  auto engine = StartEngine(0, 0, /*copy_connections=*/2);
  ASSERT_TRUE(Write(*engine, Request(1000000, 1)).ok());
  auto events_of = [](v1::WriteRequest r) {
    for (const char* c : {"id", "device", "at", "value", "payload"}) r.add_columns(c);
    return r;
  };
  ASSERT_TRUE(Write(*engine, events_of(Events(1000000, 1))).ok());
  // Both COPY connections wait for the lock; everything after them queues.
  Outcome blocker1, blocker2;
  ASSERT_NO_FATAL_FAILURE(BlockBothCopyConnections(*engine, &blocker1, &blocker2));

  auth::Principal bob;
  bob.name = "bob";
  Outcome b1, b2, t1, b3, b4, k1, k1_retry, k1_other, k2, e1, t2, u1;
  SubmitSealed(*engine, BinaryRequest(100, 10), &b1);
  v1::WriteRequest dup_committed = BinaryRequest(200, 10);
  dup_committed.mutable_rows(4)->mutable_values(0)->set_int64_value(1000000);
  SubmitSealed(*engine, dup_committed, &b2);
  v1::WriteRequest text_dup = TextRequest(300, 10);
  text_dup.mutable_rows(2)->mutable_values(0)->set_numeric_value("1000000");
  SubmitSealed(*engine, text_dup, &t1);
  // A duplicate of b1's row 1 (id 101), in the same transaction after it.
  v1::WriteRequest dup_joined = BinaryRequest(400, 10);
  dup_joined.mutable_rows(6)->mutable_values(0)->set_int64_value(101);
  SubmitSealed(*engine, dup_joined, &b3);
  v1::WriteRequest null_name = BinaryRequest(500, 10);
  null_name.mutable_rows(3)->mutable_values(1)->set_null_value(v1::NULL_VALUE);
  SubmitSealed(*engine, null_name, &b4);
  v1::WriteRequest keyed = BinaryRequest(600, 10, "join-key");
  keyed.mutable_rows(8)->mutable_values(0)->set_int64_value(1000000);
  SubmitSealed(*engine, keyed, &k1);
  // The same request again while it is queued: answered with its outcome.
  ASSERT_TRUE(engine->Submit(keyed, nullptr, 0, k1_retry.Done()).ok());
  // The key with other rows: refused at once.
  ASSERT_TRUE(engine->Submit(Request(650, 10, "join-key"), nullptr, 0, k1_other.Done()).ok());
  k1_other.done.WaitForNotification();
  EXPECT_EQ(k1_other.result.status().code(), absl::StatusCode::kFailedPrecondition);
  // Bob's key of that name is his own; his rows join the same transaction.
  SubmitSealed(*engine, BinaryRequest(700, 10, "join-key"), &k2, &bob);
  v1::WriteRequest events = events_of(Events(800, 10));
  *events.mutable_rows(5) = Events(1000000, 1).rows(0);
  SubmitSealed(*engine, events, &e1);
  SubmitSealed(*engine, TextRequest(900, 5), &t2);
  SubmitSealed(*engine, BinaryRequest(1000, 10), &u1);

  const v1::GetIngestStatsResponse locked = StatsOf(*engine);
  EXPECT_EQ(locked.queue_batches(), 10u);
  EXPECT_EQ(locked.batches_joined(), 0u);
  for (Outcome* o : {&b1, &b2, &t1, &b3, &b4, &k1, &k1_retry, &k2, &e1, &t2, &u1}) {
    EXPECT_FALSE(o->done.HasBeenNotified());
  }
  Unlock();
  for (Outcome* o :
       {&blocker1, &blocker2, &b1, &b2, &t1, &b3, &b4, &k1, &k1_retry, &k2, &e1, &t2, &u1}) {
    o->done.WaitForNotification();
    ASSERT_TRUE(o->result.ok()) << o->result.status();
  }
  // Each request its own rows' outcome.
  EXPECT_EQ(b1.result->rows_written(), 10u);
  EXPECT_EQ(RejectedOf(b1.result), "");
  EXPECT_EQ(b2.result->rows_written(), 9u);
  EXPECT_EQ(RejectedOf(b2.result), "4:23505");
  EXPECT_EQ(t1.result->rows_written(), 9u);
  EXPECT_EQ(RejectedOf(t1.result), "2:23505");
  EXPECT_EQ(b3.result->rows_written(), 9u);
  EXPECT_EQ(RejectedOf(b3.result), "6:23505");
  EXPECT_EQ(b4.result->rows_written(), 9u);
  EXPECT_EQ(RejectedOf(b4.result), "3:23502");
  EXPECT_EQ(k1.result->rows_written(), 9u);
  EXPECT_EQ(RejectedOf(k1.result), "8:23505");
  EXPECT_FALSE(k1.result->duplicate());
  EXPECT_TRUE(k1_retry.result->duplicate());
  EXPECT_EQ(k1_retry.result->rows_written(), 9u);
  EXPECT_EQ(RejectedOf(k1_retry.result), "8:23505");
  EXPECT_EQ(k2.result->rows_written(), 10u);
  EXPECT_FALSE(k2.result->duplicate());
  EXPECT_EQ(e1.result->rows_written(), 9u);
  EXPECT_EQ(RejectedOf(e1.result), "5:23505");
  EXPECT_EQ(t2.result->rows_written(), 5u);
  EXPECT_EQ(u1.result->rows_written(), 10u);

  // Exactly the acknowledged rows, each once.
  EXPECT_EQ(Count(), absl::StrCat(1 + 2 + 10 + 9 + 9 + 9 + 9 + 9 + 10 + 5 + 10));
  EXPECT_EQ(Query("SELECT count(DISTINCT id) FROM items"), Count());
  EXPECT_EQ(Query("SELECT name FROM items WHERE id = 101"),
            absl::StrCat("item 101", std::string(60, '.')));
  EXPECT_EQ(Query("SELECT count(*) FROM items WHERE id BETWEEN 650 AND 659"), "0");
  EXPECT_EQ(Query("SELECT count(*) FROM events"), "10");
  // No request split: each one's rows in one transaction.
  for (int64_t first : {100, 200, 300, 400, 500, 600, 700, 900, 1000}) {
    EXPECT_EQ(Query(absl::StrCat("SELECT count(DISTINCT tx) FROM items WHERE id BETWEEN ", first,
                                 " AND ", first + 9)),
              "1")
        << first;
  }
  // The binary requests in one transaction, the text ones in another.
  EXPECT_EQ(Query("SELECT count(DISTINCT tx) FROM items WHERE id BETWEEN 100 AND 1009 "
                  "AND id NOT BETWEEN 300 AND 309 AND id NOT BETWEEN 900 AND 909"),
            "1");
  EXPECT_EQ(Query("SELECT count(DISTINCT tx) FROM items WHERE id BETWEEN 300 AND 309 "
                  "OR id BETWEEN 900 AND 909"),
            "1");
  EXPECT_EQ(Query("SELECT count(DISTINCT tx) FROM items WHERE id BETWEEN 100 AND 1009"), "2");
  EXPECT_EQ(Query("SELECT count(*) FROM events WHERE tx IN (SELECT tx FROM items)"), "0");
  EXPECT_EQ(Query("SELECT count(DISTINCT tx) FROM events WHERE id BETWEEN 800 AND 809"), "1");
  // Each key stored once, with its request's result.
  EXPECT_EQ(Query("SELECT string_agg(principal || ':' || rows, ',' ORDER BY principal) FROM "
                  "poolside_ingest_keys WHERE key = 'join-key'"),
            ":9,bob:10");
  const v1::GetIngestStatsResponse after = StatsOf(*engine);
  // The requests of binary form (the blockers', items' and events') as
  // binary; the text ones as text.
  EXPECT_EQ(after.rows_written_binary() - locked.rows_written_binary(),
            2u + 10 + 9 + 9 + 9 + 9 + 10 + 10 + 9);
  EXPECT_EQ(after.batches_joined(), 7u);  // 7 binary batches of items as one, 2 text as one
  EXPECT_EQ(after.requests_failed(), 1u);
  ExpectNothingLeftBehind(*engine);
}

// Batches of different database roles queued behind busy connections are
// joined only with their own role's: each role's requests commit in a
// transaction of that role (current_user), never in another's.
TEST_F(IngestEngineTest, JoinedBatchesNeverMixDatabaseRoles) {
  ASSERT_TRUE(pg_->Exec("engine",
                        "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
                        "'ingest_join_a') THEN CREATE ROLE ingest_join_a LOGIN; END IF; IF NOT "
                        "EXISTS (SELECT FROM pg_roles WHERE rolname = 'ingest_join_b') THEN "
                        "CREATE ROLE ingest_join_b LOGIN; END IF; END$$; "
                        "ALTER TABLE items ADD COLUMN tx int8 DEFAULT txid_current(), "
                        "ADD COLUMN who text DEFAULT current_user; "
                        "GRANT SELECT, INSERT ON items TO ingest_join_a, ingest_join_b")
                  .ok());
  roles_ = {"ingest_join_a", "ingest_join_b"};
  auto engine = StartEngine(0, 0, /*copy_connections=*/2);
  ASSERT_TRUE(Write(*engine, Request(1000000, 1)).ok());
  auth::Principal a, b;
  a.name = "a";
  a.database_role = "ingest_join_a";
  b.name = "b";
  b.database_role = "ingest_join_b";
  // Each role's pool connected before the lock.
  Outcome wa, wb;
  ASSERT_TRUE(engine->Submit(BinaryRequest(1000001, 1), &a, 0, wa.Done()).ok());
  ASSERT_TRUE(engine->Submit(BinaryRequest(1000002, 1), &b, 0, wb.Done()).ok());
  wa.done.WaitForNotification();
  wb.done.WaitForNotification();
  ASSERT_TRUE(wa.result.ok()) << wa.result.status();
  ASSERT_TRUE(wb.result.ok()) << wb.result.status();
  Outcome blocker1, blocker2;
  ASSERT_NO_FATAL_FAILURE(BlockBothCopyConnections(*engine, &blocker1, &blocker2));
  Outcome a1, b1, a2, b2, own;
  SubmitSealed(*engine, BinaryRequest(100, 5), &a1, &a);
  SubmitSealed(*engine, BinaryRequest(200, 5), &b1, &b);
  SubmitSealed(*engine, BinaryRequest(300, 5), &a2, &a);
  SubmitSealed(*engine, BinaryRequest(400, 5), &b2, &b);
  SubmitSealed(*engine, BinaryRequest(500, 5), &own);
  EXPECT_EQ(StatsOf(*engine).queue_batches(), 5u);
  Unlock();
  for (Outcome* o : {&blocker1, &blocker2, &a1, &b1, &a2, &b2, &own}) {
    o->done.WaitForNotification();
    ASSERT_TRUE(o->result.ok()) << o->result.status();
    EXPECT_EQ(o->result->rows_written(), o == &blocker1 || o == &blocker2 ? 1u : 5u);
  }
  EXPECT_EQ(StatsOf(*engine).batches_joined(), 2u);
  EXPECT_EQ(Query("SELECT string_agg(DISTINCT who, ',') FROM items WHERE id BETWEEN 100 AND 104 "
                  "OR id BETWEEN 300 AND 304"),
            "ingest_join_a");
  EXPECT_EQ(Query("SELECT string_agg(DISTINCT who, ',') FROM items WHERE id BETWEEN 200 AND 204 "
                  "OR id BETWEEN 400 AND 404"),
            "ingest_join_b");
  EXPECT_EQ(Query("SELECT count(DISTINCT tx) FROM items WHERE id BETWEEN 100 AND 104 OR id "
                  "BETWEEN 300 AND 304"),
            "1");
  EXPECT_EQ(Query("SELECT count(DISTINCT tx) FROM items WHERE id BETWEEN 200 AND 204 OR id "
                  "BETWEEN 400 AND 404"),
            "1");
  EXPECT_EQ(Query("SELECT count(DISTINCT tx) FROM items WHERE id BETWEEN 100 AND 504"), "3");
  EXPECT_EQ(Query("SELECT count(DISTINCT who) FROM items WHERE id BETWEEN 100 AND 504"), "3");
  ExpectNothingLeftBehind(*engine);
}

// A flush waiting for a locked table waits up to flushTimeoutMs. (Each
// connection is checked at connect with a statement bounded by the connect
// timeout, here 1 s; the flush's COPY used to run under the statement_timeout
// that check left, and was cancelled once the lock had been held a second.)
TEST_F(IngestEngineTest, AFlushWaitsForALockedTableUpToTheFlushTimeout) {
  connect_timeout_ms_ = 1000;
  auto engine = StartEngine(0, 0, /*copy_connections=*/1);
  ASSERT_TRUE(Write(*engine, Request(1000000, 1)).ok());
  Lock();
  Outcome o;
  SubmitSealed(*engine, Request(1, 1), &o);
  WaitForLockWaiters(1);
  // Past the connect timeout (not an assertion on time: the flush must simply
  // still be waiting when the lock goes).
  absl::SleepFor(absl::Milliseconds(2500));
  EXPECT_FALSE(o.done.HasBeenNotified());
  Unlock();
  o.done.WaitForNotification();
  ASSERT_TRUE(o.result.ok()) << o.result.status();
  EXPECT_EQ(o.result->rows_written(), 1u);
  EXPECT_EQ(Count(), "2");
  ExpectNothingLeftBehind(*engine);
}

// Hostile values and names, in both COPY formats: column names that need
// quoting, NaN, infinities, -0, the largest and smallest doubles, int8's ends,
// timestamps at the ends of their range, text with tabs, newlines,
// backslashes and COPY's end marker; NUL, invalid UTF-8, timestamps out of
// range and rows of the wrong width are refused, each for its own row; a
// column named twice or by its quoted name is refused whole; 1600 columns go.
// The binary and the text COPY write the same values.
TEST_F(IngestEngineTest, HostileValuesAndNamesLandAsSentOrAreRefusedAlone) {
  const std::string columns =
      "(\"Mixed Case\" int8 PRIMARY KEY, \"with space\" text, \"quote\"\"d\" float8, "
      "\"select\" timestamptz, \"semi;colon\" bytea)";
  ASSERT_TRUE(pg_->Exec("engine", absl::StrCat("DROP TABLE IF EXISTS odd, odd_text, wide; "
                                               "CREATE TABLE odd ",
                                               columns, "; CREATE TABLE odd_text ", columns,
                                               "; DO $$BEGIN EXECUTE (SELECT 'CREATE TABLE wide "
                                               "(' || string_agg('c' || g || ' int2', ',') || ')' "
                                               "FROM generate_series(1, 1600) g); END$$"))
                  .ok());
  extra_tables_ = {"odd", "odd_text", "wide"};
  auto engine = StartEngine();
  // Long enough text that the typed request goes as binary COPY.
  const std::string pad(150, 'p');
  v1::WriteRequest typed;
  typed.set_table("odd");
  for (const char* c : {"Mixed Case", "with space", "quote\"d", "select", "semi;colon"}) {
    typed.add_columns(c);
  }
  auto add = [&](int64_t id, std::string text, double d, int64_t seconds, int32_t nanos,
                 std::string bytes) {
    v1::Row* r = typed.add_rows();
    r->add_values()->set_int64_value(id);
    r->add_values()->set_text_value(text + pad);
    r->add_values()->set_double_value(d);
    auto* ts = r->add_values()->mutable_timestamp_value();
    ts->set_seconds(seconds);
    ts->set_nanos(nanos);
    r->add_values()->set_bytes_value(std::move(bytes));
    return r;
  };
  constexpr int64_t kMinSeconds = -62135596800, kMaxSeconds = 253402300799;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  add(1, "tab\there\nnew\\line\r", nan, kMinSeconds, 0, std::string("\0\x01\xff", 3));
  add(2, "\xc3\xa9 \xf0\x9f\x98\x80", inf, kMaxSeconds, 999999999, "");
  add(3, "\\.", -inf, 0, 0, "\\.\n");
  add(4, "-0", -0.0, -1, 1000, "x");
  add(5, "max", std::numeric_limits<double>::max(), 1, 1, "y");
  add(std::numeric_limits<int64_t>::max(), "denorm", std::numeric_limits<double>::denorm_min(), 2,
      2, "z");
  add(std::numeric_limits<int64_t>::min(), "min", 1.5, 3, 3, "w");
  add(8, std::string("nul\0byte", 8), 1, 4, 4, "");                         // 7: NUL
  add(9, "", 1, 5, 5, "")->mutable_values(1)->set_bytes_value("bad \xff");  // 8: not UTF-8
  add(10, "late", 1, kMaxSeconds + 1, 0, "");                               // 9: past 9999
  add(11, "neg nanos", 1, 6, -1, "");                                       // 10
  typed.add_rows();                                                         // 11: 0 values
  add(12, "wide", 1, 7, 7, "")->add_values()->set_int64_value(1);           // 12: 6 values
  const v1::GetIngestStatsResponse before = StatsOf(*engine);
  absl::StatusOr<v1::WriteResponse> binary = Write(*engine, typed);
  ASSERT_TRUE(binary.ok()) << binary.status();
  EXPECT_EQ(binary->rows_written(), 7u);
  EXPECT_EQ(RejectedOf(binary), "7:22021,8:22021,9:22008,10:22008,11:22P04,12:22P04");
  EXPECT_EQ(StatsOf(*engine).rows_written_binary() - before.rows_written_binary(), 7u);
  // The same rows with the ids as numeric text: a text COPY.
  v1::WriteRequest text = typed;
  text.set_table("odd_text");
  for (v1::Row& r : *text.mutable_rows()) {
    if (r.values_size() > 0) {
      r.mutable_values(0)->set_numeric_value(absl::StrCat(r.values(0).int64_value()));
    }
  }
  absl::StatusOr<v1::WriteResponse> as_text = Write(*engine, text);
  ASSERT_TRUE(as_text.ok()) << as_text.status();
  EXPECT_EQ(as_text->rows_written(), 7u);
  EXPECT_EQ(RejectedOf(as_text), RejectedOf(binary));
  EXPECT_EQ(StatsOf(*engine).rows_written_binary() - before.rows_written_binary(), 7u);
  // Both formats wrote the same values ...
  EXPECT_EQ(Query("SELECT count(*) FROM (SELECT * FROM odd EXCEPT SELECT * FROM odd_text) d"), "0");
  EXPECT_EQ(Query("SELECT count(*) FROM (SELECT * FROM odd_text EXCEPT SELECT * FROM odd) d"), "0");
  // ... which are the ones sent.
  EXPECT_EQ(Query("SELECT string_agg(concat_ws('|', \"Mixed Case\", left(\"with space\", -150), "
                  "\"quote\"\"d\", to_char(\"select\" AT TIME ZONE 'UTC', "
                  "'YYYY-MM-DD HH24:MI:SS.US'), encode(\"semi;colon\", 'hex')), ' ; ' ORDER BY "
                  "\"Mixed Case\") FROM odd"),
            "-9223372036854775808|min|1.5|1970-01-01 00:00:03.000000|77 ; "
            "1|tab\there\nnew\\line\r|NaN|0001-01-01 00:00:00.000000|0001ff ; "
            "2|\xc3\xa9 \xf0\x9f\x98\x80|Infinity|9999-12-31 23:59:59.999999| ; "
            "3|\\.|-Infinity|1970-01-01 00:00:00.000000|5c2e0a ; "
            "4|-0|-0|1969-12-31 23:59:59.000001|78 ; "
            "5|max|1.7976931348623157e+308|1970-01-01 00:00:01.000000|79 ; "
            "9223372036854775807|denorm|5e-324|1970-01-01 00:00:02.000000|7a");

  // A column twice, or named with its quotes: the request is refused whole.
  v1::WriteRequest twice = typed;
  twice.set_columns(1, "Mixed Case");
  EXPECT_EQ(Write(*engine, twice).status().code(), absl::StatusCode::kInvalidArgument);
  v1::WriteRequest quoted = typed;
  quoted.set_columns(0, "\"Mixed Case\"");
  EXPECT_EQ(Write(*engine, quoted).status().code(), absl::StatusCode::kInvalidArgument);
  // No columns named: every column of the table, which none of these rows fits.
  v1::WriteRequest unnamed = typed;
  unnamed.clear_columns();
  unnamed.mutable_rows()->DeleteSubrange(0, 7);
  for (v1::Row& r : *unnamed.mutable_rows()) {
    if (r.values_size() > 0) r.mutable_values()->DeleteSubrange(0, 1);
  }
  absl::StatusOr<v1::WriteResponse> narrow = Write(*engine, unnamed);
  ASSERT_TRUE(narrow.ok()) << narrow.status();
  EXPECT_EQ(narrow->rows_written(), 0u);
  EXPECT_EQ(narrow->rejected_size(), 6);

  // 1600 columns (PostgreSQL's most), one row out of int2's range.
  v1::WriteRequest wide;
  wide.set_table("wide");
  for (int i = 0; i < 3; ++i) {
    v1::Row* r = wide.add_rows();
    for (int c = 0; c < 1600; ++c)
      r->add_values()->set_int64_value(i == 1 && c == 1599 ? 40000 : c);
  }
  absl::StatusOr<v1::WriteResponse> w = Write(*engine, wide);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->rows_written(), 2u);
  EXPECT_EQ(RejectedOf(w), "1:22003");
  EXPECT_EQ(Query("SELECT count(*) FROM wide WHERE c1 = 0 AND c1600 = 1599"), "2");
  EXPECT_EQ(Count(), "0");
  ExpectNothingLeftBehind(*engine);
}

// Rows refused before COPY are answered each with a reason tens of bytes long
// (and kept as a message of their own until then), however few bytes the row
// took: an empty row is 2 bytes on the wire. Those answers count against the
// buffer bound like encoded rows, so a request of many such rows is refused
// as too large instead of costing the server some hundred times its size.
TEST_F(IngestEngineTest, RejectedRowsCountAgainstTheBufferBound) {
  constexpr size_t kBound = 4 << 20;
  auto engine = StartEngine(kBound, /*max_request_bytes=*/1 << 20);
  ASSERT_TRUE(Write(*engine, Request(1000000, 1)).ok());
  // 120000 empty rows: 240 KB, 28 bytes a row as the COPY lines' room.
  v1::WriteRequest empties = Request(1, 0);
  for (int i = 0; i < 120000; ++i) empties.add_rows();
  ASSERT_LT(empties.ByteSizeLong(), size_t{1} << 20);
  absl::StatusOr<v1::WriteResponse> refused = Write(*engine, empties);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_NE(refused.status().message().find("split it"), absl::string_view::npos)
      << refused.status();
  // Fewer: written, the rejections held while buffered.
  v1::WriteRequest some = Request(1, 0);
  for (int i = 0; i < 2000; ++i) some.add_rows();
  *some.add_rows() = Request(1, 1).rows(0);
  absl::StatusOr<v1::WriteResponse> answered = Write(*engine, some);
  ASSERT_TRUE(answered.ok()) << answered.status();
  EXPECT_EQ(answered->rows_written(), 1u);
  EXPECT_EQ(answered->rejected_size(), 2000);
  EXPECT_LE(StatsOf(*engine).buffered_bytes_max(), kBound);
  EXPECT_EQ(Count(), "2");
  ExpectNothingLeftBehind(*engine);
}

TEST_F(IngestEngineTest, FullBufferRefusesUnaryAndQueuesReads) {
  constexpr size_t kBound = 64 << 10;
  auto engine = StartEngine(kBound);
  ASSERT_TRUE(Write(*engine, Request(1000000, 1)).ok());
  Lock();
  std::vector<std::unique_ptr<Outcome>> accepted;
  absl::Status refused;
  for (int i = 0; i < 100 && refused.ok(); ++i) {
    auto o = std::make_unique<Outcome>();
    refused = engine->Submit(Request(i * 100, 100), nullptr, 0, o->Done());
    if (refused.ok()) accepted.push_back(std::move(o));
  }
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_GT(RetryAfterOf(refused), absl::ZeroDuration());
  // A stream's read waits for room instead.
  absl::Notification granted;
  bool now = true;
  const uint64_t ticket = engine->ReserveRead(
      8 << 10, [&](uint64_t t) { granted.Notify(); }, &now);
  EXPECT_FALSE(now);
  // A second one queues behind it, and can be withdrawn.
  bool now2 = true;
  const uint64_t withdrawn = engine->ReserveRead(
      8 << 10, [](uint64_t) { FAIL(); }, &now2);
  EXPECT_FALSE(now2);
  EXPECT_TRUE(engine->ReleaseRead(withdrawn));
  v1::GetIngestStatsResponse stats = StatsOf(*engine);
  EXPECT_LE(stats.buffered_bytes_max(), kBound);
  EXPECT_GE(stats.stream_waits(), 2u);
  EXPECT_FALSE(granted.HasBeenNotified());
  Unlock();
  granted.WaitForNotification();
  // The message read on that reservation.
  Outcome streamed;
  ASSERT_TRUE(engine->Submit(Request(50000, 100), nullptr, ticket, streamed.Done()).ok());
  streamed.done.WaitForNotification();
  EXPECT_TRUE(streamed.result.ok()) << streamed.result.status();
  for (auto& o : accepted) {
    o->done.WaitForNotification();
    EXPECT_TRUE(o->result.ok()) << o->result.status();
  }
  EXPECT_EQ(Count(), absl::StrCat(1 + 100 * (accepted.size() + 1)));
  stats = StatsOf(*engine);
  EXPECT_LE(stats.buffered_bytes_max(), kBound);
  EXPECT_EQ(stats.buffered_bytes(), 0u);
}

TEST_F(IngestEngineTest, IdleReservationIsGivenBackToWaitingReaders) {
  constexpr size_t kBound = 64 << 10;
  auto engine = StartEngine(kBound);
  // An idle stream holds most of the bound...
  bool now = false;
  const uint64_t idle = engine->ReserveRead(
      kBound - 1024, [](uint64_t) {}, &now);
  ASSERT_TRUE(now);
  // ... another waits, and gets its room once the first has idled a while.
  absl::Notification granted;
  const uint64_t waiting = engine->ReserveRead(
      16 << 10, [&](uint64_t) { granted.Notify(); }, &now);
  ASSERT_FALSE(now);
  EXPECT_TRUE(granted.WaitForNotificationWithTimeout(absl::Seconds(30)));
  // The idle stream's message, when it comes, is still taken.
  ASSERT_TRUE(Write(*engine, Request(1, 1)).ok());
  Outcome late;
  ASSERT_TRUE(engine->Submit(Request(10, 5), nullptr, idle, late.Done()).ok());
  late.done.WaitForNotification();
  EXPECT_TRUE(late.result.ok()) << late.result.status();
  EXPECT_FALSE(engine->ReleaseRead(waiting));
  EXPECT_EQ(Count(), "6");
}

TEST_F(IngestEngineTest, DrainFlushesAndThenRefuses) {
  auto engine = StartEngine();
  Outcome a;
  ASSERT_TRUE(engine->Submit(Request(1, 5), nullptr, 0, a.Done()).ok());
  EXPECT_TRUE(engine->Drain(absl::Seconds(30)));
  ASSERT_TRUE(a.done.HasBeenNotified());
  EXPECT_TRUE(a.result.ok());
  Outcome b;
  EXPECT_EQ(engine->Submit(Request(10, 5), nullptr, 0, b.Done()).code(),
            absl::StatusCode::kUnavailable);
  // Streams may still read (their requests are refused).
  bool now = false;
  engine->ReserveRead(
      1 << 20, [](uint64_t) {}, &now);
  EXPECT_TRUE(now);
  engine->Stop();
  EXPECT_EQ(Count(), "5");
}

// Ingest into the table items of `database` (at `dsn`), with a topology whose
// one replica, at `replica_port`, is probed every 50 ms (500 ms timeout), and
// batches lingering `linger_ms`.
v1::IngestServiceConfig ProbedConfig(const std::string& database, const std::string& dsn,
                                     int replica_port, int linger_ms) {
  v1::IngestServiceConfig c;
  auto* db = c.add_databases();
  db->set_name(database);
  db->set_dsn(dsn);
  db->set_allow_privileged_role(true);
  db->mutable_topology()->add_replicas(absl::StrCat("host=127.0.0.1 port=", replica_port));
  db->mutable_topology()->set_probe_interval_ms(50);
  db->mutable_topology()->set_probe_timeout_ms(500);
  auto* t = c.add_tables();
  t->set_database(database);
  t->add_tables("items");
  c.mutable_batch()->set_linger_ms(linger_ms);
  c.mutable_server()->mutable_tls()->set_plaintext(true);
  return c;
}

// A topology of the server and a member that never answers: the server is
// the primary. While it is down, writes are held; once it is back (a new
// primary generation), they are written, once.
TEST(IngestEngineTopologyTest, WritesOnThePrimaryAndHoldsWhileItRestarts) {
  absl::StatusOr<std::unique_ptr<testing::PostgresCluster>> pg = testing::PostgresCluster::Start();
  ASSERT_TRUE(pg.ok()) << pg.status();
  ASSERT_TRUE(
      (*pg)->CreateDatabase("topo", "CREATE TABLE items (id int8, name text NOT NULL)").ok());
  RefusingPort refusing;
  ASSERT_NE(refusing.port(), 0);
  const std::string primary = absl::StrCat((*pg)->host(), ":", (*pg)->port());

  v1::IngestServiceConfig c = ProbedConfig("topo", (*pg)->Dsn("topo"), refusing.port(), 5);
  c.mutable_databases(0)->mutable_topology()->set_failover_buffer_ms(30000);
  std::unique_ptr<IngestEngine> engine = StartedEngine(c);
  ASSERT_NE(engine, nullptr);
  auto stats = [&] {
    std::vector<IngestEngine::TopologyStats> s = engine->GetTopologyStats();
    EXPECT_EQ(s.size(), 1u);
    return s.empty() ? IngestEngine::TopologyStats() : s[0];
  };
  auto primary_known = [&] {
    for (const db::MemberStatus& m : stats().members) {
      if (m.role == db::MemberRole::kPrimary) return true;
    }
    return false;
  };
  absl::StatusOr<v1::WriteResponse> first = Write(*engine, Request(1, 1, "k1"));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(stats().writing_member, primary);
  std::vector<std::string> pools;
  for (const auto& [name, p] : engine->GetPoolStats()) pools.push_back(name);
  EXPECT_EQ(pools, std::vector<std::string>{absl::StrCat("topo@", primary)});

  ASSERT_TRUE((*pg)->Stop().ok());
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (primary_known() && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_FALSE(primary_known());
  Outcome keyed, plain;
  ASSERT_TRUE(engine->Submit(Request(2, 1, "k2"), nullptr, 0, keyed.Done()).ok());
  ASSERT_TRUE(engine->Submit(Request(3, 1), nullptr, 0, plain.Done()).ok());
  while (stats().held.now == 0 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_GE(stats().held.now, 1u);
  EXPECT_FALSE(keyed.done.HasBeenNotified());
  EXPECT_FALSE(plain.done.HasBeenNotified());

  ASSERT_TRUE((*pg)->StartAgain().ok());
  keyed.done.WaitForNotification();
  plain.done.WaitForNotification();
  ASSERT_TRUE(keyed.result.ok()) << keyed.result.status();
  ASSERT_TRUE(plain.result.ok()) << plain.result.status();
  EXPECT_FALSE(keyed.result->duplicate());
  EXPECT_EQ(*(*pg)->QueryValue("topo", "SELECT string_agg(id::text, ',' ORDER BY id) FROM items"),
            "1,2,3");
  const IngestEngine::TopologyStats after = stats();
  EXPECT_GE(after.held.total, 1u);
  EXPECT_EQ(after.held.timeouts, 0u);
  EXPECT_EQ(after.held.now, 0u);
  EXPECT_EQ(after.writing_member, primary);
  engine->Stop();
}

// Once a COMMIT in `database` sleeps in its slow() trigger (slow_flag
// set), clears the flag (so that the retry commits at once) and terminates
// that backend: the connection dies while the COMMIT is under way. Looks every
// 10 ms until `give_up`; sets *terminated when it did.
std::thread TerminateTheSleepingCommit(testing::PostgresCluster& pg, std::string database,
                                       absl::Time give_up, std::atomic<bool>* terminated) {
  return std::thread([&pg, database = std::move(database), give_up, terminated] {
    while (!terminated->load() && absl::Now() < give_up) {
      absl::StatusOr<std::string> n = pg.QueryValue(
          database, absl::StrCat("WITH d AS (DELETE FROM slow_flag WHERE EXISTS (SELECT FROM "
                                 "pg_stat_activity WHERE datname = '",
                                 database,
                                 "' AND query = 'COMMIT' AND wait_event = 'PgSleep') "
                                 "RETURNING 1) SELECT count(*) FROM d"));
      if (n.ok() && *n != "0") {
        EXPECT_TRUE(pg.QueryValue(database,
                                  absl::StrCat("SELECT count(pg_terminate_backend(pid)) FROM "
                                               "pg_stat_activity WHERE datname = '",
                                               database,
                                               "' AND query = 'COMMIT' AND wait_event = 'PgSleep'"))
                        .ok());
        terminated->store(true);
      } else {
        absl::SleepFor(absl::Milliseconds(10));
      }
    }
  });
}

// Creates `database` with the table items, whose deferred trigger slow()
// sleeps 30 s in the COMMIT of a row while slow_flag has one and `guard` (SQL
// ending in " AND ", or empty) holds for the row (NEW).
absl::Status CreateSlowCommitDatabase(testing::PostgresCluster& pg, const std::string& database,
                                      absl::string_view guard) {
  return pg.CreateDatabase(
      database,
      absl::StrCat("DROP TABLE IF EXISTS items, slow_flag, poolside_ingest_keys; "
                   "CREATE TABLE items (id int8, name text NOT NULL); "
                   "CREATE TABLE slow_flag (on_ boolean); "
                   "CREATE OR REPLACE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$BEGIN IF ",
                   guard,
                   "EXISTS (SELECT FROM slow_flag) THEN PERFORM pg_sleep(30); "
                   "END IF; RETURN NULL; END$$; "
                   "CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON items DEFERRABLE "
                   "INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow()"));
}

// After a COMMIT of unknown outcome that did not happen: the keyed request of
// two rows was retried and written once, the unkeyed one answered UNAVAILABLE
// saying the outcome is unknown.
void ExpectKeyedRetriedAndPlainInDoubt(const Outcome& keyed, const Outcome& plain) {
  ASSERT_TRUE(keyed.result.ok()) << keyed.result.status();
  EXPECT_EQ(keyed.result->rows_written(), 2u);
  EXPECT_FALSE(keyed.result->duplicate());
  ASSERT_FALSE(plain.result.ok());
  EXPECT_EQ(plain.result.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(plain.result.status().message().find("outcome of the COMMIT is unknown"),
            std::string::npos)
      << plain.result.status();
}

// The connection dies while a batch's COMMIT is under way (a deferred
// trigger sleeps in it; the backend is terminated): with a topology, the
// keyed request is retried (its key says whether that commit happened: here
// it did not) and the unkeyed one is answered UNAVAILABLE saying the outcome
// is unknown.
TEST(IngestEngineTopologyTest, CommitOfUnknownOutcomeRetriesKeyedRequestsOnly) {
  testing::PostgresCluster& pg = testing::SharedPostgres();
  ASSERT_TRUE(CreateSlowCommitDatabase(pg, "doubt", "").ok());
  RefusingPort refusing;
  ASSERT_NE(refusing.port(), 0);
  // Batches linger long enough for both requests to share one.
  v1::IngestServiceConfig c = ProbedConfig("doubt", pg.Dsn("doubt"), refusing.port(), 200);
  std::unique_ptr<IngestEngine> engine = StartedEngine(c);
  ASSERT_NE(engine, nullptr);
  // Warm: the catalog read and key table before the slow commits.
  ASSERT_TRUE(Write(*engine, Request(100, 1)).ok());
  ASSERT_TRUE(pg.Exec("doubt", "INSERT INTO slow_flag VALUES (true)").ok());

  std::atomic<bool> terminated{false};
  std::thread killer =
      TerminateTheSleepingCommit(pg, "doubt", absl::Now() + absl::Seconds(20), &terminated);
  Outcome keyed, plain;
  ASSERT_TRUE(engine->Submit(Request(1, 2, "doubt-key"), nullptr, 0, keyed.Done()).ok());
  ASSERT_TRUE(engine->Submit(Request(3, 2), nullptr, 0, plain.Done()).ok());
  keyed.done.WaitForNotification();
  plain.done.WaitForNotification();
  killer.join();
  ASSERT_TRUE(terminated.load());
  ASSERT_NO_FATAL_FAILURE(ExpectKeyedRetriedAndPlainInDoubt(keyed, plain));
  // The first attempt did not commit (terminated inside its trigger): the
  // keyed rows once, the unkeyed ones not at all.
  EXPECT_EQ(*pg.QueryValue("doubt", "SELECT string_agg(id::text, ',' ORDER BY id) FROM items"),
            "1,2,100");
  engine->Stop();
}

// The same with the keyed and the unkeyed request in batches of their own,
// queued behind a busy connection and joined into one transaction: the
// COMMIT of that transaction is in doubt, the keyed request is retried and
// written once, the unkeyed one answered UNAVAILABLE (outcome unknown) and,
// that commit not having happened, not written.
TEST(IngestEngineTopologyTest, CommitOfUnknownOutcomeOfJoinedBatchesRetriesKeyedRequestsOnly) {
  testing::PostgresCluster& pg = testing::SharedPostgres();
  ASSERT_TRUE(CreateSlowCommitDatabase(pg, "doubt_join", "NEW.id >= 500 AND ").ok());
  RefusingPort refusing;
  ASSERT_NE(refusing.port(), 0);
  v1::IngestServiceConfig c = ProbedConfig("doubt_join", pg.Dsn("doubt_join"), refusing.port(), 5);
  c.mutable_batch()->set_copy_connections(1);
  std::unique_ptr<IngestEngine> engine = StartedEngine(c);
  ASSERT_NE(engine, nullptr);
  ASSERT_TRUE(Write(*engine, Request(100, 1)).ok());
  auto query = [&](const std::string& sql) {
    absl::StatusOr<std::string> v = pg.QueryValue("doubt_join", sql);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : "";
  };

  // The one COPY connection waits for a lock; the two requests queue.
  db::ConnectionOptions o;
  o.dsn = pg.Dsn("doubt_join");
  absl::StatusOr<std::unique_ptr<db::Connection>> locker = db::Connection::Open(o);
  ASSERT_TRUE(locker.ok()) << locker.status();
  db::CopySession lock(**locker, absl::InfiniteFuture());
  ASSERT_TRUE(lock.Exec("BEGIN").ok());
  ASSERT_TRUE(lock.Exec("LOCK TABLE items IN ACCESS EXCLUSIVE MODE").ok());
  Outcome blocker, keyed, plain;
  SubmitSealed(*engine, Request(1, 1), &blocker);
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while (query("SELECT count(*) FROM pg_stat_activity WHERE datname = 'doubt_join' AND "
               "wait_event_type = 'Lock'") != "1" &&
         absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  SubmitSealed(*engine, Request(500, 2, "doubt-join-key"), &keyed);
  SubmitSealed(*engine, Request(600, 2), &plain);
  ASSERT_EQ(StatsOf(*engine).queue_batches(), 2u);
  ASSERT_TRUE(pg.Exec("doubt_join", "INSERT INTO slow_flag VALUES (true)").ok());

  std::atomic<bool> terminated{false};
  std::thread killer = TerminateTheSleepingCommit(pg, "doubt_join", give_up, &terminated);
  ASSERT_TRUE(lock.Exec("ROLLBACK").ok());
  blocker.done.WaitForNotification();
  keyed.done.WaitForNotification();
  plain.done.WaitForNotification();
  killer.join();
  ASSERT_TRUE(terminated.load());
  EXPECT_EQ(StatsOf(*engine).batches_joined(), 1u);
  ASSERT_TRUE(blocker.result.ok()) << blocker.result.status();
  ASSERT_NO_FATAL_FAILURE(ExpectKeyedRetriedAndPlainInDoubt(keyed, plain));
  EXPECT_EQ(query("SELECT string_agg(id::text, ',' ORDER BY id) FROM items"), "1,100,500,501");
  EXPECT_EQ(query("SELECT string_agg(key || ':' || rows, ',') FROM poolside_ingest_keys"),
            "doubt-join-key:2");
  EXPECT_EQ(query("SELECT count(*) FROM pg_stat_activity WHERE datname = 'doubt_join' AND "
                  "state LIKE 'idle in transaction%'"),
            "0");
  EXPECT_EQ(StatsOf(*engine).buffered_bytes(), 0u);
  engine->Stop();
}

}  // namespace
}  // namespace poolside::ingest
