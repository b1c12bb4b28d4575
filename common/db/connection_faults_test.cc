// What a Connection does when a statement leaves the session other than idle
// and clean (transaction control, COPY) or the server ends the session around
// a statement: every statement answers with its true outcome (never OK for a
// write that is then rolled back), the connection is discarded, and nothing
// waits past its deadline. Statements that the analyzer upstream refuses are
// built by hand here: this is the defence behind it.

#include <signal.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/db/connection.h"
#include "common/pool/pool.h"
#include "gtest/gtest.h"
#include "tests/fixtures/postgres_cluster.h"

namespace poolside::db {
namespace {

class RowsSink : public ResultSink {
 public:
  absl::Status Begin(const google::protobuf::RepeatedPtrField<v1::Column>&) override {
    return absl::OkStatus();
  }
  v1::Row* NewRow() override { return rows.Add(); }
  absl::Status RowDone(size_t) override { return absl::OkStatus(); }
  void Finish(int64_t, absl::string_view tag) override { command_tag = std::string(tag); }
  bool Rewind() override {
    rows.Clear();
    command_tag.clear();
    return true;
  }
  google::protobuf::RepeatedPtrField<v1::Row> rows;
  std::string command_tag;
};

google::protobuf::RepeatedPtrField<v1::Value> Int(int64_t x) {
  google::protobuf::RepeatedPtrField<v1::Value> out;
  out.Add()->set_int64_value(x);
  return out;
}

// Statements built from SQL texts, run in one call.
struct Batch {
  explicit Batch(std::vector<std::string> texts, absl::Time deadline)
      : sql(std::move(texts)), statements(sql.size()) {
    for (size_t i = 0; i < sql.size(); ++i) {
      statements[i].sql = sql[i];
      statements[i].deadline = deadline;
      ptrs.push_back(&statements[i]);
    }
  }
  std::vector<std::string> sql;
  std::vector<Statement> statements;
  std::vector<Statement*> ptrs;
};

bool Mentions(const absl::Status& s, absl::string_view text) {
  return absl::StrContains(s.message(), text);
}

class ConnectionFaultsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pg_ = &testing::SharedPostgres();
    ASSERT_TRUE(
        pg_->Exec("postgres", "CREATE TABLE IF NOT EXISTS faults_t (id int8 PRIMARY KEY)").ok());
    ASSERT_TRUE(pg_->Exec("postgres", "TRUNCATE faults_t").ok());
    conn_ = Open();
    ASSERT_NE(conn_, nullptr);
  }

  std::unique_ptr<Connection> Open() {
    ConnectionOptions o;
    o.dsn = pg_->Dsn();
    o.application_name = "poolside-faults-test";
    auto c = Connection::Open(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  absl::Time Soon() { return absl::Now() + absl::Seconds(10); }

  // The ids in faults_t, in order: "{1,3}", or "" when empty.
  std::string Ids() {
    auto v = pg_->QueryValue("postgres", "SELECT array_agg(id ORDER BY id) FROM faults_t");
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : "?";
  }

  int64_t BackendPid(Connection& c) {
    RowsSink sink;
    Statement s{"SELECT pg_backend_pid()", nullptr, &sink, Soon()};
    EXPECT_TRUE(c.RunIndependent({&s}).ok());
    EXPECT_TRUE(s.status.ok()) << s.status;
    return sink.rows.empty() ? 0 : sink.rows[0].values(0).int64_value();
  }

  // Terminates the backend and waits until the server has let it go (its
  // goodbye is then on its way to, or in, the client's socket).
  void TerminateAndWait(int64_t pid) {
    ASSERT_TRUE(pg_->Exec("postgres", absl::StrCat("SELECT pg_terminate_backend(", pid, ")")).ok());
    const absl::Time give_up = absl::Now() + absl::Seconds(10);
    std::string left = "1";
    while (left != "0" && absl::Now() < give_up) {
      auto v = pg_->QueryValue(
          "postgres", absl::StrCat("SELECT count(*) FROM pg_stat_activity WHERE pid = ", pid));
      ASSERT_TRUE(v.ok()) << v.status();
      left = *v;
      if (left != "0") absl::SleepFor(absl::Milliseconds(5));
    }
    ASSERT_EQ(left, "0") << "backend " << pid << " did not go away";
  }

  testing::PostgresCluster* pg_;
  std::unique_ptr<Connection> conn_;
};

// --- A statement that leaves a transaction open ---

TEST_F(ConnectionFaultsTest, BeginPipelinedWithWritesCommitsNothingThatRanInsideIt) {
  Batch b({"INSERT INTO faults_t VALUES (1)", "BEGIN", "INSERT INTO faults_t VALUES (2)",
           "INSERT INTO faults_t VALUES (3)"},
          Soon());
  (void)conn_->RunIndependent(b.ptrs);
  auto& st = b.statements;
  EXPECT_TRUE(st[0].status.ok()) << st[0].status;  // committed at its own Sync
  EXPECT_EQ(st[0].reach, Reach::kAnswered);
  EXPECT_EQ(st[1].status.code(), absl::StatusCode::kInvalidArgument) << st[1].status;
  EXPECT_TRUE(Mentions(st[1].status, "BEGIN")) << st[1].status;
  for (int i : {2, 3}) {
    EXPECT_EQ(st[i].status.code(), absl::StatusCode::kAborted) << i << ": " << st[i].status;
    EXPECT_TRUE(Mentions(st[i].status, "not committed")) << st[i].status;
    EXPECT_EQ(st[i].reach, Reach::kMayHaveRun);
  }
  EXPECT_TRUE(conn_->broken());
  EXPECT_FALSE(conn_->LooksAlive());
  conn_.reset();  // closing it rolls back what BEGIN left open
  EXPECT_EQ(Ids(), "{1}");
}

TEST_F(ConnectionFaultsTest, BeginAsTheLastStatementKeepsWhatWasCommittedBeforeIt) {
  Batch b({"INSERT INTO faults_t VALUES (1)", "INSERT INTO faults_t VALUES (2)", "BEGIN"}, Soon());
  (void)conn_->RunIndependent(b.ptrs);
  EXPECT_TRUE(b.statements[0].status.ok()) << b.statements[0].status;
  EXPECT_TRUE(b.statements[1].status.ok()) << b.statements[1].status;
  EXPECT_EQ(b.statements[2].status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(conn_->broken());
  conn_.reset();
  EXPECT_EQ(Ids(), "{1,2}");
}

TEST_F(ConnectionFaultsTest, StartTransactionIsTreatedAsBegin) {
  Batch b({"START TRANSACTION ISOLATION LEVEL SERIALIZABLE", "INSERT INTO faults_t VALUES (1)"},
          Soon());
  (void)conn_->RunIndependent(b.ptrs);
  EXPECT_EQ(b.statements[0].status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(b.statements[1].status.code(), absl::StatusCode::kAborted) << b.statements[1].status;
  EXPECT_TRUE(conn_->broken());
  conn_.reset();
  EXPECT_EQ(Ids(), "");
}

// Neighbours sharing the BEGIN's implicit transaction were turned into the
// open block with it.
TEST_F(ConnectionFaultsTest, StatementsSharingTheSyncOfABeginAreRolledBackWithIt) {
  Batch b({"INSERT INTO faults_t VALUES (1)", "BEGIN", "INSERT INTO faults_t VALUES (2)"}, Soon());
  b.statements[0].may_share_sync = b.statements[1].may_share_sync = true;
  (void)conn_->RunIndependent(b.ptrs);
  EXPECT_EQ(b.statements[0].status.code(), absl::StatusCode::kAborted) << b.statements[0].status;
  EXPECT_EQ(b.statements[2].status.code(), absl::StatusCode::kAborted) << b.statements[2].status;
  EXPECT_TRUE(conn_->broken());
  conn_.reset();
  EXPECT_EQ(Ids(), "");
}

TEST_F(ConnectionFaultsTest, StatementsAfterAFailureInsideTheOpenTransactionWereNotExecuted) {
  Batch b({"INSERT INTO faults_t VALUES (1)", "BEGIN", "INSERT INTO faults_t VALUES (2)",
           "SELECT 1 / 0", "INSERT INTO faults_t VALUES (3)"},
          Soon());
  (void)conn_->RunIndependent(b.ptrs);
  auto& st = b.statements;
  EXPECT_TRUE(st[0].status.ok()) << st[0].status;
  EXPECT_EQ(st[2].status.code(), absl::StatusCode::kAborted) << st[2].status;
  EXPECT_TRUE(Mentions(st[2].status, "not committed")) << st[2].status;
  EXPECT_EQ(st[3].status.code(), absl::StatusCode::kInvalidArgument) << st[3].status;  // 22012
  EXPECT_EQ(st[4].status.code(), absl::StatusCode::kAborted) << st[4].status;
  EXPECT_TRUE(Mentions(st[4].status, "not executed")) << st[4].status;
  EXPECT_EQ(st[4].reach, Reach::kNotRun);
  EXPECT_TRUE(conn_->broken());
  conn_.reset();
  EXPECT_EQ(Ids(), "{1}");
}

// A COMMIT pipelined after the BEGIN commits what ran between them: their
// outcome is not "rolled back", and the connection layer cannot tell it from a
// ROLLBACK TO SAVEPOINT by its tag, so it says "unknown" rather than guess.
TEST_F(ConnectionFaultsTest, TransactionControlThatMayHaveCommittedMakesTheOutcomeUnknown) {
  Batch b({"INSERT INTO faults_t VALUES (1)", "BEGIN", "INSERT INTO faults_t VALUES (2)", "COMMIT",
           "INSERT INTO faults_t VALUES (3)"},
          Soon());
  (void)conn_->RunIndependent(b.ptrs);
  auto& st = b.statements;
  EXPECT_TRUE(st[0].status.ok()) << st[0].status;
  EXPECT_EQ(st[3].status.code(), absl::StatusCode::kInvalidArgument) << st[3].status;
  for (int i : {2, 4}) {
    EXPECT_EQ(st[i].status.code(), absl::StatusCode::kUnavailable) << i << ": " << st[i].status;
    EXPECT_TRUE(Mentions(st[i].status, "outcome unknown")) << st[i].status;
  }
  EXPECT_TRUE(conn_->broken());
  conn_.reset();
  EXPECT_EQ(Ids(), "{1,2,3}");  // indeed committed: "not committed" would have been a lie
}

// No function or procedure can leave a transaction open: PL/pgSQL refuses to
// EXECUTE transaction commands, SQL functions refuse BEGIN, and a procedure's
// COMMIT starts a transaction that ends with the CALL. The session stays clean
// and the connection is kept.
TEST_F(ConnectionFaultsTest, NoFunctionOrProcedureLeavesATransactionOpen) {
  ASSERT_TRUE(pg_->Exec("postgres",
                        "CREATE OR REPLACE PROCEDURE faults_commit(v int8) LANGUAGE plpgsql AS "
                        "$$ BEGIN INSERT INTO faults_t VALUES (v); COMMIT; "
                        "INSERT INTO faults_t VALUES (v + 1); END $$")
                  .ok());
  Batch b({"DO $$ BEGIN EXECUTE 'BEGIN'; END $$", "CALL faults_commit(10)",
           "INSERT INTO faults_t VALUES (1)"},
          Soon());
  ASSERT_TRUE(conn_->RunIndependent(b.ptrs).ok());
  EXPECT_FALSE(b.statements[0].status.ok());
  EXPECT_TRUE(b.statements[1].status.ok()) << b.statements[1].status;
  EXPECT_TRUE(b.statements[2].status.ok()) << b.statements[2].status;
  EXPECT_FALSE(conn_->broken());
  EXPECT_TRUE(conn_->LooksAlive());
  EXPECT_EQ(Ids(), "{1,10,11}");
}

TEST_F(ConnectionFaultsTest, TransactionControlInsideATransactionIsNeverCommittedPast) {
  {
    Batch b({"INSERT INTO faults_t VALUES (1)", "SAVEPOINT s", "INSERT INTO faults_t VALUES (2)"},
            Soon());
    absl::Status s = conn_->RunTransaction("BEGIN", b.ptrs, Soon(), nullptr);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_TRUE(Mentions(s, "statement 2 (SAVEPOINT)")) << s;
    EXPECT_TRUE(conn_->broken());
    conn_ = Open();
    EXPECT_EQ(Ids(), "");
  }
  {
    // COMMIT ends the transaction early: what ran before it is committed, and
    // what follows runs outside it, here outside READ ONLY too. Never OK.
    Batch b({"SELECT 1", "COMMIT", "INSERT INTO faults_t VALUES (3)"}, Soon());
    absl::Status s = conn_->RunTransaction("BEGIN READ ONLY", b.ptrs, Soon(), nullptr);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    EXPECT_TRUE(Mentions(s, "outcome unknown")) << s;
    EXPECT_TRUE(Mentions(s, "statement 2 (COMMIT)")) << s;
    EXPECT_EQ(conn_->last_call_reach(), Reach::kMayHaveRun);
    EXPECT_TRUE(conn_->broken());
    conn_ = Open();
    EXPECT_EQ(Ids(), "{3}");  // what the caller is told is possible did happen
  }
}

TEST_F(ConnectionFaultsTest, AStreamedStatementMustNotTouchTheTransaction) {
  Statement begin{"BEGIN", nullptr, nullptr, Soon()};
  (void)conn_->RunStreaming(begin);
  EXPECT_EQ(begin.status.code(), absl::StatusCode::kInvalidArgument) << begin.status;
  EXPECT_TRUE(conn_->broken());

  conn_ = Open();
  RowsSink sink;
  Statement commit{"COMMIT", nullptr, &sink, Soon()};
  (void)conn_->RunStreaming(commit, "BEGIN READ ONLY");
  EXPECT_EQ(commit.status.code(), absl::StatusCode::kInvalidArgument) << commit.status;
  EXPECT_TRUE(conn_->broken());
}

// A BEGIN of poolside's own that fails is an ordinary failure: nothing ran,
// nothing ended early, and the session is clean.
TEST_F(ConnectionFaultsTest, AFailedBeginIsAnOrdinaryFailure) {
  Batch b({"INSERT INTO faults_t VALUES (1)"}, Soon());
  absl::Status s = conn_->RunTransaction("BEGIN ISOLATION LEVEL NONSENSE", b.ptrs, Soon(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Mentions(s, "42601")) << s;
  EXPECT_FALSE(conn_->broken());
  EXPECT_TRUE(conn_->Ping(Soon()));
  EXPECT_EQ(Ids(), "");
}

// A clean transaction leaves the connection idle and usable.
TEST_F(ConnectionFaultsTest, ACleanTransactionKeepsTheConnection) {
  Batch b({"INSERT INTO faults_t VALUES (1)", "INSERT INTO faults_t VALUES (2)"}, Soon());
  ASSERT_TRUE(conn_->RunTransaction("BEGIN", b.ptrs, Soon(), nullptr).ok());
  EXPECT_FALSE(conn_->broken());
  EXPECT_TRUE(conn_->Ping(Soon()));
  EXPECT_EQ(Ids(), "{1,2}");
}

// The pool never hands a connection discarded this way out again.
TEST_F(ConnectionFaultsTest, ThePoolNeverHandsADiscardedConnectionOutAgain) {
  pool::PoolOptions o;
  o.name = "faults";
  o.min_idle = 0;
  o.max_size = 1;
  pool::Pool<Connection> pool(o,
                              [this](const auto&) -> absl::StatusOr<std::unique_ptr<Connection>> {
                                auto c = Open();
                                if (c == nullptr) return absl::UnavailableError("cannot connect");
                                return c;
                              });
  int64_t first_pid = 0;
  {
    auto lease = pool.Acquire(Soon());
    ASSERT_TRUE(lease.ok()) << lease.status();
    first_pid = BackendPid(**lease);
    Batch b({"BEGIN"}, Soon());
    (void)(*lease)->RunIndependent(b.ptrs);
    ASSERT_TRUE((*lease)->broken());
    lease->MarkBroken();
  }
  auto lease = pool.Acquire(Soon());
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_FALSE((*lease)->broken());
  EXPECT_NE(BackendPid(**lease), first_pid);
  EXPECT_EQ(pool.Stats().broken, 1u);
  EXPECT_EQ(pool.Stats().created, 2u);
}

// --- COPY ---

TEST_F(ConnectionFaultsTest, CopyThroughRunIndependentFailsAndDiscardsTheConnection) {
  for (const char* copy : {"COPY (SELECT 1) TO STDOUT", "COPY faults_t FROM STDIN"}) {
    Batch b({copy}, Soon());
    (void)conn_->RunIndependent(b.ptrs);
    EXPECT_EQ(b.statements[0].status.code(), absl::StatusCode::kInvalidArgument) << copy;
    EXPECT_TRUE(Mentions(b.statements[0].status, "COPY is not supported here"))
        << b.statements[0].status;
    EXPECT_TRUE(conn_->broken()) << copy;
    conn_ = Open();
  }
}

// The rows of a COPY TO STDOUT are read past, so other callers' statements
// pipelined behind it keep their outcomes.
TEST_F(ConnectionFaultsTest, StatementsPipelinedAroundACopyOutKeepTheirOutcomes) {
  Batch b({"INSERT INTO faults_t VALUES (1)",
           "COPY (SELECT g FROM generate_series(1, 100000) g) TO STDOUT",
           "INSERT INTO faults_t VALUES (2)"},
          Soon());
  (void)conn_->RunIndependent(b.ptrs);
  EXPECT_TRUE(b.statements[0].status.ok()) << b.statements[0].status;
  EXPECT_EQ(b.statements[1].status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(b.statements[2].status.ok()) << b.statements[2].status;
  EXPECT_TRUE(conn_->broken());
  EXPECT_EQ(Ids(), "{1,2}");
}

// A COPY FROM STDIN leaves the protocol out of step: what follows it cannot be
// vouched for, and is not reported as done.
TEST_F(ConnectionFaultsTest, StatementsPipelinedAfterACopyInAreNotReportedDone) {
  Batch b({"INSERT INTO faults_t VALUES (1)", "COPY faults_t FROM STDIN",
           "INSERT INTO faults_t VALUES (2)"},
          Soon());
  (void)conn_->RunIndependent(b.ptrs);
  EXPECT_TRUE(b.statements[0].status.ok()) << b.statements[0].status;
  EXPECT_EQ(b.statements[1].status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(b.statements[2].status.ok());
  EXPECT_NE(b.statements[2].reach, Reach::kAnswered);
  EXPECT_TRUE(conn_->broken());
  conn_.reset();
  EXPECT_EQ(Ids(), "{1}");
}

TEST_F(ConnectionFaultsTest, CopyInsideATransactionFailsItAndDiscardsTheConnection) {
  for (const char* copy : {"COPY (SELECT 1) TO STDOUT", "COPY faults_t FROM STDIN"}) {
    Batch b({"INSERT INTO faults_t VALUES (1)", copy}, Soon());
    absl::Status s = conn_->RunTransaction("BEGIN", b.ptrs, Soon(), nullptr);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_TRUE(Mentions(s, "COPY is not supported here")) << s;
    EXPECT_TRUE(conn_->broken());
    conn_ = Open();
    EXPECT_EQ(Ids(), "") << copy;
  }
}

TEST_F(ConnectionFaultsTest, CopyThroughRunStreamingFailsAndDiscardsTheConnection) {
  // (COPY FROM in a read-only transaction is refused by the server first.)
  const std::vector<std::pair<bool, const char*>> cases = {
      {false, "COPY (SELECT g FROM generate_series(1, 1000000) g) TO STDOUT"},
      {false, "COPY faults_t FROM STDIN"},
      {true, "COPY (SELECT g FROM generate_series(1, 1000000) g) TO STDOUT"}};
  for (const auto& [read_only, copy] : cases) {
    {
      RowsSink sink;
      Statement s{copy, nullptr, &sink, Soon()};
      absl::Status link = conn_->RunStreaming(s, read_only ? "BEGIN READ ONLY" : "");
      const absl::Status& st = link.ok() ? s.status : link;
      EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << copy << ": " << st;
      EXPECT_TRUE(Mentions(st, "COPY is not supported here")) << st;
      EXPECT_TRUE(conn_->broken());
      conn_ = Open();
    }
  }
}

// --- The server ending the session ---

TEST_F(ConnectionFaultsTest, ATerminatedIdleConnectionIsNoticedWithoutARoundTrip) {
  TerminateAndWait(BackendPid(*conn_));
  // One look, no waiting: the server's goodbye is already in the socket.
  EXPECT_FALSE(conn_->LooksAlive());
  EXPECT_TRUE(conn_->broken());
  EXPECT_FALSE(conn_->Ping(Soon()));
}

// Sent to a backend that had already ended the session: provably never run,
// whether the pipeline starts with its Parse or (a prepared statement) with
// the marker in front of its Execute.
TEST_F(ConnectionFaultsTest, StatementsSentToAnEndedSessionProvablyNeverRan) {
  for (bool prepared : {false, true}) {
    if (prepared) {
      auto one = Int(1);
      Statement warm{"INSERT INTO faults_t VALUES ($1)", &one, nullptr, Soon()};
      ASSERT_TRUE(conn_->RunIndependent({&warm}).ok());
      ASSERT_TRUE(warm.status.ok()) << warm.status;
    }
    TerminateAndWait(BackendPid(*conn_));
    auto two = Int(2);
    Statement write{"INSERT INTO faults_t VALUES ($1)", &two, nullptr, Soon()};
    (void)conn_->RunIndependent({&write});
    EXPECT_EQ(write.status.code(), absl::StatusCode::kUnavailable) << write.status;
    EXPECT_EQ(write.reach, Reach::kNotRun) << "prepared=" << prepared << ": " << write.status;
    EXPECT_EQ(conn_->last_call_reach(), Reach::kNotRun);
    EXPECT_TRUE(conn_->broken());
    conn_ = Open();
    EXPECT_EQ(Ids(), prepared ? "{1}" : "");
    ASSERT_TRUE(pg_->Exec("postgres", "TRUNCATE faults_t").ok());
  }
}

// A read is not given the marker (reads may run again anyway): the server's
// goodbye lands on its own Execute, so it may have run.
TEST_F(ConnectionFaultsTest, APreparedReadSentToAnEndedSessionMayHaveRun) {
  RowsSink sink;
  Statement read{"SELECT 1", nullptr, &sink, Soon()};
  read.may_share_sync = true;
  ASSERT_TRUE(conn_->RunIndependent({&read}).ok());
  TerminateAndWait(BackendPid(*conn_));
  (void)conn_->RunIndependent({&read});
  EXPECT_EQ(read.status.code(), absl::StatusCode::kUnavailable) << read.status;
  EXPECT_EQ(read.reach, Reach::kMayHaveRun);
}

// The server ends the session in the middle of a pipeline: what was committed
// before stays so, the statement it ended in was not committed, and what came
// after never ran.
TEST_F(ConnectionFaultsTest, ASessionEndedMidPipelineGivesEachStatementItsTrueOutcome) {
  Batch b({"INSERT INTO faults_t VALUES (1)", "SELECT pg_terminate_backend(pg_backend_pid())",
           "INSERT INTO faults_t VALUES (2)"},
          Soon());
  (void)conn_->RunIndependent(b.ptrs);
  auto& st = b.statements;
  EXPECT_TRUE(st[0].status.ok()) << st[0].status;
  EXPECT_EQ(st[0].reach, Reach::kAnswered);
  EXPECT_EQ(st[1].status.code(), absl::StatusCode::kUnavailable) << st[1].status;
  EXPECT_TRUE(Mentions(st[1].status, "57P01")) << st[1].status;
  EXPECT_TRUE(Mentions(st[1].status, "not committed")) << st[1].status;
  EXPECT_EQ(st[1].reach, Reach::kMayHaveRun);
  EXPECT_EQ(st[2].status.code(), absl::StatusCode::kUnavailable) << st[2].status;
  EXPECT_EQ(st[2].reach, Reach::kNotRun) << st[2].status;
  EXPECT_TRUE(conn_->broken());
  EXPECT_EQ(Ids(), "{1}");
}

TEST_F(ConnectionFaultsTest, ATransactionWhoseSessionEndsIsNotCommitted) {
  Batch b({"INSERT INTO faults_t VALUES (1)", "SELECT pg_terminate_backend(pg_backend_pid())"},
          Soon());
  absl::Status s = conn_->RunTransaction("BEGIN", b.ptrs, Soon(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_TRUE(Mentions(s, "not committed")) << s;
  EXPECT_EQ(conn_->last_call_reach(), Reach::kMayHaveRun);
  EXPECT_EQ(Ids(), "");

  // Sent after the session ended: nothing of it ran.
  conn_ = Open();
  TerminateAndWait(BackendPid(*conn_));
  Batch again({"INSERT INTO faults_t VALUES (1)"}, Soon());
  s = conn_->RunTransaction("BEGIN", again.ptrs, Soon(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_EQ(conn_->last_call_reach(), Reach::kNotRun) << s;
  EXPECT_EQ(Ids(), "");
}

// --- A server that stops answering ---

// SIGSTOP to one backend: the server neither answers nor closes the socket
// (a paused machine), and a cancel request would go unanswered too.
class StoppedBackend {
 public:
  explicit StoppedBackend(int64_t pid) : pid_(static_cast<pid_t>(pid)) {
    stopped_ = pid_ > 0 && kill(pid_, SIGSTOP) == 0;
  }
  ~StoppedBackend() {
    if (stopped_) kill(pid_, SIGCONT);
  }
  bool stopped() const { return stopped_; }

 private:
  const pid_t pid_;
  bool stopped_ = false;
};

// Waiting on a server that stopped answering, a raised abandon signal gives
// the connection up at once, whatever the call: a lost connection
// (UNAVAILABLE, not the deadline's verdict), broken, with no cancel request
// to wait for.
TEST_F(ConnectionFaultsTest, AnAbandonedWaitOnAStoppedServerGivesTheConnectionUp) {
  for (const char* call : {"pipeline", "stream", "read-only stream", "transaction"}) {
    SCOPED_TRACE(call);
    conn_ = Open();
    ASSERT_NE(conn_, nullptr);
    std::atomic<bool> other{false};
    std::atomic<bool> abandon{false};
    const std::atomic<bool>* signals[] = {&other, &abandon};
    conn_->AbandonWhen(signals);
    StoppedBackend stopped(BackendPid(*conn_));
    ASSERT_TRUE(stopped.stopped());
    // Far enough that only the abandon signal can end the wait first.
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    RowsSink sink;
    Statement read{"SELECT 1", nullptr, &sink, deadline};
    read.may_share_sync = true;
    absl::Status link;
    absl::Notification started;
    std::thread runner([&] {
      started.Notify();
      Statement* ptr = &read;
      const std::string kind = call;
      if (kind == "pipeline") {
        link = conn_->RunIndependent({&ptr, 1});
      } else if (kind == "stream") {
        link = conn_->RunStreaming(read);
      } else if (kind == "read-only stream") {
        link = conn_->RunStreaming(read, "BEGIN READ ONLY");
      } else {
        link = conn_->RunTransaction("BEGIN READ ONLY", {&ptr, 1}, deadline, nullptr);
      }
    });
    started.WaitForNotification();
    abandon.store(true);
    runner.join();
    EXPECT_EQ(link.code(), absl::StatusCode::kUnavailable) << link;
    EXPECT_EQ(read.status.code(), absl::StatusCode::kUnavailable) << read.status;
    EXPECT_TRUE(Mentions(read.status, "stopped answering")) << read.status;
    EXPECT_TRUE(sink.rows.empty());
    EXPECT_TRUE(conn_->broken());
  }
}

// A signal that is not raised changes nothing, and AbandonWhen({}) forgets
// the signals.
TEST_F(ConnectionFaultsTest, AnAbandonSignalNotRaisedLeavesTheConnectionAlone) {
  std::atomic<bool> abandon{false};
  const std::atomic<bool>* signals[] = {&abandon};
  conn_->AbandonWhen(signals);
  RowsSink sink;
  Statement slow{"SELECT pg_sleep(0.2)", nullptr, &sink, Soon()};
  ASSERT_TRUE(conn_->RunIndependent({&slow}).ok());
  EXPECT_TRUE(slow.status.ok()) << slow.status;
  abandon.store(true);
  conn_->AbandonWhen({});
  Statement again{"SELECT pg_sleep(0.1)", nullptr, &sink, Soon()};
  ASSERT_TRUE(conn_->RunIndependent({&again}).ok());
  EXPECT_TRUE(again.status.ok()) << again.status;
  EXPECT_FALSE(conn_->broken());
}

}  // namespace
}  // namespace poolside::db
