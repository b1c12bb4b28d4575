#include "common/db/connection.h"

#include <atomic>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/db/error.h"
#include "gtest/gtest.h"
#include "tests/fixtures/postgres_cluster.h"

namespace poolside::db {
namespace {

// Collects a statement's result.
class CollectSink : public ResultSink {
 public:
  absl::Status Begin(const google::protobuf::RepeatedPtrField<v1::Column>& cols) override {
    columns = cols;
    ++begins;
    return absl::OkStatus();
  }
  v1::Row* NewRow() override { return rows.Add(); }
  absl::Status RowDone(size_t) override {
    if (max_rows >= 0 && rows.size() > max_rows) return absl::ResourceExhaustedError("too many");
    return absl::OkStatus();
  }
  void Finish(int64_t affected, absl::string_view tag) override {
    rows_affected = affected;
    command_tag = std::string(tag);
  }
  bool Rewind() override {
    if (!rewindable) return false;
    columns.Clear();
    rows.Clear();
    rows_affected = -1;
    command_tag.clear();
    ++rewinds;
    return true;
  }
  google::protobuf::RepeatedPtrField<v1::Column> columns;
  google::protobuf::RepeatedPtrField<v1::Row> rows;
  int64_t rows_affected = -1;
  std::string command_tag;
  int begins = 0;
  int max_rows = -1;
  bool rewindable = true;
  int rewinds = 0;
};

google::protobuf::RepeatedPtrField<v1::Value> Ints(std::initializer_list<int64_t> xs) {
  google::protobuf::RepeatedPtrField<v1::Value> out;
  for (int64_t x : xs) out.Add()->set_int64_value(x);
  return out;
}

// n statements "SELECT $1 * 10" (i as $1) with their own parameters and sinks.
struct TimesTen {
  TimesTen(int n, absl::Time deadline, bool share = false) : params(n), sinks(n), statements(n) {
    for (int i = 0; i < n; ++i) {
      params[i] = Ints({i});
      statements[i] = Statement{"SELECT $1::int8 * 10 AS v", &params[i], &sinks[i], deadline};
      statements[i].may_share_sync = share;
      ptrs.push_back(&statements[i]);
    }
  }
  std::vector<google::protobuf::RepeatedPtrField<v1::Value>> params;
  std::vector<CollectSink> sinks;
  std::vector<Statement> statements;
  std::vector<Statement*> ptrs;
};

class ConnectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pg_ = &testing::SharedPostgres();
    ConnectionOptions o;
    o.dsn = pg_->Dsn();
    o.statement_cache_size = 3;
    auto c = Connection::Open(o);
    ASSERT_TRUE(c.ok()) << c.status();
    conn_ = *std::move(c);
  }
  absl::Time Soon() { return absl::Now() + absl::Seconds(10); }

  testing::PostgresCluster* pg_;
  std::unique_ptr<Connection> conn_;
};

TEST_F(ConnectionTest, RunsAStatementWithTypedParams) {
  auto params = Ints({41});
  CollectSink sink;
  Statement s{"SELECT $1::int8 + 1 AS answer", &params, &sink, Soon()};
  ASSERT_TRUE(conn_->RunIndependent({&s}).ok());
  ASSERT_TRUE(s.status.ok()) << s.status;
  ASSERT_EQ(sink.columns.size(), 1);
  EXPECT_EQ(sink.columns[0].name(), "answer");
  EXPECT_EQ(sink.columns[0].type_name(), "int8");
  ASSERT_EQ(sink.rows.size(), 1);
  EXPECT_EQ(sink.rows[0].values(0).int64_value(), 42);
  EXPECT_EQ(sink.command_tag, "SELECT 1");
  EXPECT_EQ(sink.rows_affected, 1);
}

TEST_F(ConnectionTest, PipelinedStatementsFailIndependently) {
  constexpr int kN = 12;
  TimesTen batch(kN, Soon());
  auto& statements = batch.statements;
  auto& sinks = batch.sinks;
  statements[3].sql = "SELEC oops";                      // fails to parse
  statements[7].sql = "SELECT 1 / ($1::int8 - 7) AS v";  // division by zero at run time
  ASSERT_TRUE(conn_->RunIndependent(batch.ptrs).ok());
  for (int i = 0; i < kN; ++i) {
    if (i == 3) {
      EXPECT_EQ(statements[i].status.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(statements[i].status.message().find("42601"), absl::string_view::npos);
    } else if (i == 7) {
      EXPECT_EQ(statements[i].status.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(statements[i].status.message().find("22012"), absl::string_view::npos);
    } else {
      ASSERT_TRUE(statements[i].status.ok()) << i << ": " << statements[i].status;
      ASSERT_EQ(sinks[i].rows.size(), 1);
      EXPECT_EQ(sinks[i].rows[0].values(0).int64_value(), i * 10);
    }
  }
  EXPECT_TRUE(conn_->LooksAlive());
}

// Reads marked may_share_sync run in one implicit transaction: the same
// transaction id, where reads that do not share see one each.
TEST_F(ConnectionTest, ReadsMarkedToShareRunInOneTransaction) {
  for (bool share : {true, false}) {
    std::vector<CollectSink> sinks(3);
    std::vector<Statement> statements(3);
    std::vector<Statement*> ptrs;
    for (int i = 0; i < 3; ++i) {
      statements[i] =
          Statement{"SELECT pg_current_xact_id()::text AS x", nullptr, &sinks[i], Soon()};
      statements[i].may_share_sync = share;
      ptrs.push_back(&statements[i]);
    }
    uint64_t reruns = 0;
    ASSERT_TRUE(conn_->RunIndependent(ptrs, &reruns).ok());
    std::set<std::string> xids;
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(statements[i].status.ok()) << statements[i].status;
      ASSERT_EQ(sinks[i].rows.size(), 1);
      xids.insert(sinks[i].rows[0].values(0).text_value());
    }
    EXPECT_EQ(xids.size(), share ? 1u : 3u) << "share=" << share;
    EXPECT_EQ(reruns, 0u);
  }
}

// One failing read in a shared transaction rolls the others back with it; each
// is then run again alone, so only the failing one fails, and a read with a
// side effect (a function that inserts) takes effect exactly once.
TEST_F(ConnectionTest, FailureInASharedTransactionRerunsEachStatementAlone) {
  ASSERT_TRUE(pg_->Exec("postgres", "CREATE TABLE IF NOT EXISTS share_t (id int8)").ok());
  ASSERT_TRUE(pg_->Exec("postgres", "TRUNCATE share_t").ok());
  ASSERT_TRUE(pg_->Exec("postgres",
                        "CREATE OR REPLACE FUNCTION share_insert(v int8) RETURNS int8 "
                        "LANGUAGE sql AS 'INSERT INTO share_t VALUES (v) RETURNING v'")
                  .ok());
  constexpr int kN = 5;
  TimesTen batch(kN, Soon(), /*share=*/true);
  auto& statements = batch.statements;
  auto& sinks = batch.sinks;
  statements[1].sql = "SELECT share_insert($1::int8) AS v";  // writes, then is rolled back
  statements[3].sql = "SELECT 1 / ($1::int8 - 3) AS v";      // division by zero
  uint64_t reruns = 0;
  ASSERT_TRUE(conn_->RunIndependent(batch.ptrs, &reruns).ok());
  EXPECT_EQ(reruns, static_cast<uint64_t>(kN));
  for (int i = 0; i < kN; ++i) {
    if (i == 3) {
      EXPECT_EQ(statements[i].status.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(statements[i].status.message().find("22012"), absl::string_view::npos);
      continue;
    }
    ASSERT_TRUE(statements[i].status.ok()) << i << ": " << statements[i].status;
    ASSERT_EQ(sinks[i].rows.size(), 1) << i;  // rewound, not doubled
    EXPECT_EQ(sinks[i].rows[0].values(0).int64_value(), i == 1 ? 1 : i * 10);
    EXPECT_EQ(sinks[i].rewinds, 1) << i;
  }
  auto count = pg_->QueryValue("postgres", "SELECT count(*) FROM share_t WHERE id = 1");
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count, "1");
}

// A statement whose sink cannot start over is not reported as succeeded when
// its shared transaction was rolled back.
TEST_F(ConnectionTest, SharedStatementThatCannotRewindIsAborted) {
  CollectSink ok_sink, bad_sink;
  ok_sink.rewindable = false;
  Statement a{"SELECT 1 AS v", nullptr, &ok_sink, Soon()};
  Statement b{"SELECT 1 / 0 AS v", nullptr, &bad_sink, Soon()};
  a.may_share_sync = b.may_share_sync = true;
  uint64_t reruns = 0;
  ASSERT_TRUE(conn_->RunIndependent({&a, &b}, &reruns).ok());
  EXPECT_EQ(a.status.code(), absl::StatusCode::kAborted) << a.status;
  EXPECT_EQ(b.status.code(), absl::StatusCode::kInvalidArgument) << b.status;
  EXPECT_EQ(reruns, 1u);
  // The connection is fine afterwards.
  CollectSink sink;
  Statement c{"SELECT 2 AS v", nullptr, &sink, Soon()};
  ASSERT_TRUE(conn_->RunIndependent({&c}).ok());
  EXPECT_TRUE(c.status.ok()) << c.status;
}

TEST_F(ConnectionTest, PreparedStatementCacheIsBoundedOnTheServerToo) {
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < 6; ++i) {
      Statement s{absl::StrCat("SELECT ", i, " AS n"), nullptr, nullptr, Soon()};
      ASSERT_TRUE(conn_->RunIndependent({&s}).ok());
      ASSERT_TRUE(s.status.ok()) << s.status;
    }
  }
  EXPECT_LE(conn_->prepared_statements(), 3u);
  // Run twice: the first run prepares it and only then deallocates the evicted one.
  for (int i = 0; i < 2; ++i) {
    CollectSink sink;
    Statement count{"SELECT count(*) FROM pg_prepared_statements", nullptr, &sink, Soon()};
    ASSERT_TRUE(conn_->RunIndependent({&count}).ok());
    ASSERT_TRUE(count.status.ok()) << count.status;
    if (i == 1) {
      EXPECT_EQ(sink.rows[0].values(0).int64_value(), 3);
    }
  }
}

TEST_F(ConnectionTest, DeadlineCancelsTheBackendQueryAndKeepsTheConnection) {
  Statement s{"SELECT pg_sleep(20)", nullptr, nullptr, absl::Now() + absl::Milliseconds(200)};
  const absl::Time start = absl::Now();
  ASSERT_TRUE(conn_->RunIndependent({&s}).ok());
  EXPECT_EQ(s.status.code(), absl::StatusCode::kDeadlineExceeded) << s.status;
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_TRUE(conn_->Ping(Soon()));
  Statement after{"SELECT 1", nullptr, nullptr, Soon()};
  ASSERT_TRUE(conn_->RunIndependent({&after}).ok());
  EXPECT_TRUE(after.status.ok()) << after.status;
}

TEST_F(ConnectionTest, CallerCancelStopsTheStatement) {
  std::atomic<bool> cancelled{false};
  Statement s{"SELECT pg_sleep(20)", nullptr, nullptr, Soon(), &cancelled};
  std::thread canceller([&] {
    absl::SleepFor(absl::Milliseconds(150));
    cancelled = true;
  });
  ASSERT_TRUE(conn_->RunIndependent({&s}).ok());
  canceller.join();
  EXPECT_EQ(s.status.code(), absl::StatusCode::kCancelled) << s.status.message();
  EXPECT_TRUE(conn_->Ping(Soon()));
}

TEST_F(ConnectionTest, TransactionIsAllOrNothing) {
  ASSERT_TRUE(pg_->Exec("postgres", "CREATE TABLE IF NOT EXISTS tx_t (id int8 primary key)").ok());
  ASSERT_TRUE(pg_->Exec("postgres", "TRUNCATE tx_t").ok());
  auto one = Ints({1}), two = Ints({2});
  Statement a{"INSERT INTO tx_t VALUES ($1)", &one};
  Statement b{"INSERT INTO tx_t VALUES ($1)", &two};
  Statement dup{"INSERT INTO tx_t VALUES ($1)", &one};
  absl::Status failed = conn_->RunTransaction("BEGIN", {&a, &b, &dup}, Soon(), nullptr);
  EXPECT_EQ(failed.code(), absl::StatusCode::kAlreadyExists) << failed;
  EXPECT_NE(failed.message().find("statement 3"), absl::string_view::npos) << failed;
  EXPECT_EQ(*pg_->QueryValue("postgres", "SELECT count(*) FROM tx_t"), "0");
  EXPECT_TRUE(conn_->LooksAlive());  // the failed block was closed

  CollectSink sink;
  Statement c{"INSERT INTO tx_t VALUES ($1)", &one, &sink};
  Statement d{"INSERT INTO tx_t VALUES ($1)", &two};
  ASSERT_TRUE(
      conn_->RunTransaction("BEGIN ISOLATION LEVEL SERIALIZABLE", {&c, &d}, Soon(), nullptr).ok());
  EXPECT_EQ(sink.command_tag, "INSERT 0 1");
  EXPECT_EQ(*pg_->QueryValue("postgres", "SELECT count(*) FROM tx_t"), "2");
}

TEST_F(ConnectionTest, TransactionRollsBackWhenASinkRefusesRowsTheServerSent) {
  ASSERT_TRUE(pg_->Exec("postgres", "CREATE TABLE IF NOT EXISTS sink_t (id int8)").ok());
  ASSERT_TRUE(pg_->Exec("postgres", "TRUNCATE sink_t").ok());
  auto one = Ints({1});
  Statement insert{"INSERT INTO sink_t VALUES ($1)", &one};
  CollectSink limited;
  limited.max_rows = 3;
  Statement select{"SELECT g FROM generate_series(1, 10) g", nullptr, &limited};
  absl::Status s = conn_->RunTransaction("BEGIN", {&insert, &select}, Soon(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("statement 2"), absl::string_view::npos) << s;
  EXPECT_EQ(*pg_->QueryValue("postgres", "SELECT count(*) FROM sink_t"), "0");
  EXPECT_TRUE(conn_->LooksAlive());
  // The connection is clean for the next transaction, which commits.
  Statement again{"INSERT INTO sink_t VALUES ($1)", &one};
  ASSERT_TRUE(conn_->RunTransaction("BEGIN", {&again}, Soon(), nullptr).ok());
  EXPECT_EQ(*pg_->QueryValue("postgres", "SELECT count(*) FROM sink_t"), "1");
}

// A statement over its row limit must not have the server cancel "it" while
// another caller's statement is pipelined behind it: the server may already
// run that one, and a cancel request would fail it instead.
TEST_F(ConnectionTest, RowLimitNeverCancelsTheStatementPipelinedBehindIt) {
  CollectSink limited;
  limited.max_rows = 3;
  Statement over{"SELECT g FROM generate_series(1, 10) g", nullptr, &limited, Soon()};
  CollectSink slow_sink;
  Statement slow{"SELECT pg_sleep(0.3) IS NOT NULL AS slept", nullptr, &slow_sink, Soon()};
  ASSERT_TRUE(conn_->RunIndependent({&over, &slow}).ok());
  EXPECT_EQ(over.status.code(), absl::StatusCode::kResourceExhausted) << over.status;
  ASSERT_TRUE(slow.status.ok()) << slow.status;
  ASSERT_EQ(slow_sink.rows.size(), 1);
  EXPECT_TRUE(conn_->LooksAlive());
}

// A statement past its deadline sends no cancel request while another
// caller's statement is pipelined behind it: the server may have finished it
// and started that one, which the cancel request would stop instead.
TEST_F(ConnectionTest, DeadlineNeverCancelsTheStatementPipelinedBehindIt) {
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(round);
    // `quick` is answered only after `first`, well past its deadline; the
    // server runs `behind` as soon as `quick` is done.
    Statement first{"SELECT pg_sleep(0.4)", nullptr, nullptr, Soon()};
    CollectSink quick_sink;
    Statement quick{"SELECT 1 AS one", nullptr, &quick_sink, absl::Now() + absl::Milliseconds(50)};
    CollectSink behind_sink;
    Statement behind{"SELECT pg_sleep(0.6) IS NOT NULL AS slept", nullptr, &behind_sink, Soon()};
    ASSERT_TRUE(conn_->RunIndependent({&first, &quick, &behind}).ok());
    EXPECT_TRUE(first.status.ok()) << first.status;
    // It ran in full on the server: its result is its true outcome.
    EXPECT_TRUE(quick.status.ok()) << quick.status;
    ASSERT_TRUE(behind.status.ok()) << behind.status;
    ASSERT_EQ(behind_sink.rows.size(), 1);
    EXPECT_TRUE(conn_->LooksAlive());
  }
}

// With others behind it, a statement that runs past its deadline is still
// ended, by the statement_timeout the server runs it under.
TEST_F(ConnectionTest, StatementPastItsDeadlineWithOthersBehindEndsAtTheServersTimeout) {
  Statement endless{"SELECT pg_sleep(30)", nullptr, nullptr, absl::Now() + absl::Milliseconds(200)};
  CollectSink after_sink;
  Statement after{"SELECT 2 AS two", nullptr, &after_sink, Soon()};
  const absl::Time start = absl::Now();
  ASSERT_TRUE(conn_->RunIndependent({&endless, &after}).ok());
  EXPECT_EQ(endless.status.code(), absl::StatusCode::kDeadlineExceeded) << endless.status;
  EXPECT_EQ(SqlStateOf(endless.status), "57014") << endless.status;
  ASSERT_TRUE(after.status.ok()) << after.status;
  ASSERT_EQ(after_sink.rows.size(), 1);
  EXPECT_EQ(after_sink.rows[0].values(0).int64_value(), 2);
  EXPECT_LT(absl::Now() - start, absl::Seconds(20)) << "the statement was not ended";
  EXPECT_TRUE(conn_->Ping(Soon()));
}

// Alone on its connection, a statement over its row limit is still stopped on
// the server once its rest keeps coming (not read to its end).
TEST_F(ConnectionTest, RowLimitStopsAnEndlessStatementAloneOnItsConnection) {
  CollectSink limited;
  limited.max_rows = 100;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  Statement big{"SELECT generate_series(1, 1000000000000) AS g", nullptr, &limited, deadline};
  ASSERT_TRUE(conn_->RunIndependent({&big}).ok());
  EXPECT_EQ(big.status.code(), absl::StatusCode::kResourceExhausted) << big.status;
  // Reading its 10^12 rows to the end would take until far past the deadline.
  EXPECT_LT(absl::Now(), deadline) << "the statement was not cancelled";
  EXPECT_TRUE(conn_->Ping(Soon()));
}

TEST_F(ConnectionTest, ListenReceivesCommittedNotificationsOnly) {
  ASSERT_TRUE(conn_->Listen("poolside test channel", Soon()).ok());
  // Rolled back: never delivered. Committed: delivered, in commit order.
  ASSERT_TRUE(pg_->Exec("postgres",
                        "BEGIN; SELECT pg_notify('poolside test channel', 'rolled back'); "
                        "ROLLBACK")
                  .ok());
  ASSERT_TRUE(pg_->Exec("postgres", "SELECT pg_notify('poolside test channel', 'public.t1')").ok());
  ASSERT_TRUE(pg_->Exec("postgres", "NOTIFY \"poolside test channel\", 'public.t2'").ok());
  std::vector<Notification> got;
  while (got.size() < 2) {
    ASSERT_TRUE(conn_->AwaitNotifications(Soon(), &got).ok());
  }
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].channel, "poolside test channel");
  EXPECT_EQ(got[0].payload, "public.t1");
  EXPECT_EQ(got[1].payload, "public.t2");
  // Statements on the listening connection keep notifications for later.
  ASSERT_TRUE(pg_->Exec("postgres", "NOTIFY \"poolside test channel\", 'during ping'").ok());
  got.clear();
  while (got.empty()) {
    ASSERT_TRUE(conn_->Ping(Soon()));
    ASSERT_TRUE(conn_->AwaitNotifications(absl::Now() + absl::Milliseconds(100), &got).ok());
  }
  EXPECT_EQ(got[0].payload, "during ping");
}

TEST_F(ConnectionTest, AwaitNotificationsReportsALostConnection) {
  ASSERT_TRUE(conn_->Listen("poolside_lost", Soon()).ok());
  ASSERT_TRUE(pg_->Exec("postgres",
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE query LIKE 'LISTEN %poolside_lost%' AND pid <> pg_backend_pid()")
                  .ok());
  std::vector<Notification> got;
  absl::Status s;
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (s.ok() && absl::Now() < give_up) {
    s = conn_->AwaitNotifications(absl::Now() + absl::Milliseconds(200), &got);
  }
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_TRUE(got.empty());
}

TEST_F(ConnectionTest, ReadOnlyTransactionRefusesWrites) {
  ASSERT_TRUE(pg_->Exec("postgres", "CREATE TABLE IF NOT EXISTS ro_t (id int8)").ok());
  Statement w{"INSERT INTO ro_t VALUES (1)"};
  absl::Status s = conn_->RunTransaction("BEGIN READ ONLY", {&w}, Soon(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("25006"), absl::string_view::npos);
}

TEST_F(ConnectionTest, ReadOnlyStreamingRefusesWritesAndEndsItsTransaction) {
  ASSERT_TRUE(pg_->Exec("postgres", "CREATE TABLE IF NOT EXISTS ro_s (id int8)").ok());
  CollectSink sink;
  Statement w{"INSERT INTO ro_s VALUES (1) RETURNING id", nullptr, &sink, Soon()};
  ASSERT_TRUE(conn_->RunStreaming(w, "BEGIN READ ONLY").ok());
  EXPECT_EQ(w.status.code(), absl::StatusCode::kFailedPrecondition) << w.status;
  EXPECT_NE(w.status.message().find("25006"), absl::string_view::npos) << w.status;
  CollectSink read;
  Statement r{"SELECT count(*) FROM ro_s", nullptr, &read, Soon()};
  ASSERT_TRUE(conn_->RunStreaming(r, "BEGIN READ ONLY").ok());
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_TRUE(conn_->Ping(Soon()));  // idle again: the transaction ended
}

TEST_F(ConnectionTest, StreamingDeliversEveryRowAndStopsAtALimit) {
  CollectSink sink;
  Statement s{"SELECT g FROM generate_series(1, 20000) g", nullptr, &sink, Soon()};
  ASSERT_TRUE(conn_->RunStreaming(s).ok());
  ASSERT_TRUE(s.status.ok()) << s.status;
  EXPECT_EQ(sink.rows.size(), 20000);
  EXPECT_EQ(sink.rows_affected, 20000);

  CollectSink limited;
  limited.max_rows = 100;
  Statement big{"SELECT generate_series(1, 100000000) AS g", nullptr, &limited, Soon()};
  ASSERT_TRUE(conn_->RunStreaming(big).ok());
  EXPECT_EQ(big.status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(conn_->Ping(Soon()));
}

TEST_F(ConnectionTest, TerminatedBackendIsNoticedWithoutARoundTrip) {
  CollectSink pid;
  Statement s{"SELECT pg_backend_pid()", nullptr, &pid, Soon()};
  ASSERT_TRUE(conn_->RunIndependent({&s}).ok());
  const int64_t backend = pid.rows[0].values(0).int64_value();
  ASSERT_TRUE(
      pg_->Exec("postgres", absl::StrCat("SELECT pg_terminate_backend(", backend, ")")).ok());
  bool alive = true;
  for (int i = 0; i < 200 && alive; ++i) {  // the server's goodbye arrives asynchronously
    alive = conn_->LooksAlive();
    if (alive) absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_FALSE(alive);
}

TEST(ConnectionOpenTest, ReportsBadDsnAndUnreachableServer) {
  EXPECT_EQ(Connection::Open({.dsn = "host='unterminated"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<int> port = testing::PickFreePort();
  ASSERT_TRUE(port.ok());
  auto c = Connection::Open({.dsn = absl::StrCat("host=127.0.0.1 port=", *port, " user=postgres")});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable) << c.status();
}

}  // namespace
}  // namespace poolside::db
