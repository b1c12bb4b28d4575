// Database when its connections die or are spoiled: a connection killed while
// idle is replaced before use, work whose connection dies under it runs once
// more on a fresh one when that cannot run anything twice, a write whose
// outcome is unknown says so, and a connection a statement left unclean is
// never handed out again.
//
// With a topology, a connection to the primary lost under a write makes the
// primary suspect: the next writes are held until its next probe. A read a
// replica refuses as a write (25006) runs on the primary instead; a read
// whose token no replica reaches ends by its deadline; a read whose replica
// connection is cut (and that takes no new one) answers from another member.
//
// Deaths "in flight" go through a FaultProxy that holds the server's goodbye
// back until the client speaks, or cuts the reply to a request that ran: the
// same races a real network produces, made deterministic. Backends are
// terminated while idle, never while racing a statement.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/db/managed_database.h"
#include "gtest/gtest.h"
#include "services/query/database.h"
#include "services/query/query_config.h"
#include "services/query/replicas.h"
#include "tests/fixtures/fault_proxy.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/wait_for.h"

namespace poolside::query {
namespace {

// Keeps the first value of the first row; can start over.
class FirstValueSink : public db::ResultSink {
 public:
  absl::Status Begin(const google::protobuf::RepeatedPtrField<v1::Column>&) override {
    return absl::OkStatus();
  }
  v1::Row* NewRow() override { return rows_.Add(); }
  absl::Status RowDone(size_t) override { return absl::OkStatus(); }
  void Finish(int64_t, absl::string_view) override {}
  bool Rewind() override {
    rows_.Clear();
    ++rewinds;
    return true;
  }
  int64_t value() const { return rows_.empty() ? -1 : rows_[0].values(0).int64_value(); }
  int rewinds = 0;

 private:
  google::protobuf::RepeatedPtrField<v1::Row> rows_;
};

// One call to a Database and its outcome.
struct Call {
  Call(std::string text, bool batchable, absl::Time deadline) : sql(std::move(text)) {
    work = std::make_shared<Work>();
    work->deadline = deadline;
    work->batchable = batchable;
    work->statement.sql = sql;
    work->statement.sink = &sink;
    work->done = [this](absl::Status s) {
      status = std::move(s);
      finished.Notify();
    };
  }
  // A single statement sharing a pipeline with others (a write unless marked).
  static std::unique_ptr<Call> Statement(std::string sql, absl::Time deadline, bool read = false) {
    auto c = std::make_unique<Call>(std::move(sql), true, deadline);
    c->work->statement.may_share_sync = read;
    return c;
  }
  // A transaction on a connection of its own.
  static std::unique_ptr<Call> Transaction(std::string sql, absl::Time deadline, bool read_only) {
    auto c = std::make_unique<Call>(std::move(sql), false, deadline);
    Call* raw = c.get();
    c->work->exclusive = [raw, read_only](db::Connection& conn) {
      db::Statement* st = &raw->work->statement;
      return conn.RunTransaction(read_only ? "BEGIN READ ONLY" : "BEGIN", {&st, 1},
                                 raw->work->deadline, &raw->work->cancelled);
    };
    c->work->read_only = read_only;
    c->work->rewind = [raw] { return raw->sink.Rewind(); };
    return c;
  }
  bool Wait() { return finished.WaitForNotificationWithTimeout(absl::Seconds(30)); }

  std::string sql;
  FirstValueSink sink;
  std::shared_ptr<Work> work;
  absl::Notification finished;
  absl::Status status;
};

class DatabaseFaultsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pg_ = &testing::SharedPostgres();
    ASSERT_TRUE(
        pg_->Exec("postgres", "CREATE TABLE IF NOT EXISTS dbf_t (id int8 PRIMARY KEY)").ok());
    ASSERT_TRUE(pg_->Exec("postgres", "TRUNCATE dbf_t").ok());
  }

  // A database of its own for each test (its connections' application_name
  // is poolside-query/<name>); `dsn` empty: straight to the server.
  // `topology`: with one (members set by the test, probes recorded by hand).
  v1::DatabaseConfig Config(int max_size, const std::string& dsn = "",
                            uint32_t validate_after_idle_ms = 0, bool topology = false) {
    v1::QueryServiceConfig c;
    auto* db = c.add_databases();
    static int databases = 0;
    db->set_name(absl::StrCat("faults", ++databases));
    db->set_dsn(dsn.empty() ? pg_->Dsn() : dsn);
    db->set_allow_privileged_role(true);  // the fixture's superuser
    db->mutable_pool()->set_max_size(max_size);
    db->mutable_pool()->set_min_idle(max_size);
    db->mutable_pool()->set_validate_after_idle_ms(validate_after_idle_ms);
    if (topology) {
      // Probes a minute apart: only those the test records count.
      db->mutable_topology()->add_replicas("host=127.0.0.1 port=1");
      db->mutable_topology()->set_probe_interval_ms(60000);
      db->mutable_topology()->set_max_lag_ms(120000);
    }
    c.mutable_server()->mutable_tls()->set_plaintext(true);
    auto done = FinalizeQueryConfig(c);
    EXPECT_TRUE(done.ok()) << done.status();
    return done->databases(0);
  }

  std::string AppName(const Database& db) { return absl::StrCat("poolside-query/", db.name()); }

  int Backends(const Database& db) {
    auto v = pg_->QueryValue("postgres", absl::StrCat("SELECT count(*) FROM pg_stat_activity WHERE "
                                                      "application_name = '",
                                                      AppName(db), "'"));
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? std::stoi(*v) : -1;
  }

  // Terminates every backend of `db` (all idle in the pool) and waits until the
  // server has let them all go.
  void TerminateAll(const Database& db) {
    ASSERT_TRUE(pg_->Exec("postgres", absl::StrCat("SELECT pg_terminate_backend(pid) FROM "
                                                   "pg_stat_activity WHERE application_name = '",
                                                   AppName(db), "'"))
                    .ok());
    const absl::Time give_up = absl::Now() + absl::Seconds(10);
    while (Backends(db) != 0 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(5));
    ASSERT_EQ(Backends(db), 0);
  }

  // Runs `call` alone and waits for its answer.
  absl::Status Run(Database& db, Call& call) {
    absl::Status s = db.Submit(call.work);
    if (!s.ok()) return s;
    EXPECT_TRUE(call.Wait()) << call.sql << " never answered";
    return call.status;
  }

  // A fresh connection through a proxy, ready to have its backend terminated.
  std::unique_ptr<Database> ThroughProxy(testing::FaultProxy& proxy) {
    auto db = std::make_unique<Database>(Config(
        1, absl::StrCat("host=127.0.0.1 port=", proxy.port(), " dbname=postgres user=postgres"),
        // No pre-ping: the only defence left is what this file tests.
        600000));
    EXPECT_TRUE(db->WarmUp().ok());
    return db;
  }

  // A new fault proxy in front of the cluster (proxy_) and a Database reaching
  // PostgreSQL through it; null (and a test failure) if it did not start.
  std::unique_ptr<Database> ThroughNewProxy() {
    absl::StatusOr<std::unique_ptr<testing::FaultProxy>> proxy =
        testing::FaultProxy::Start("127.0.0.1", pg_->port());
    EXPECT_TRUE(proxy.ok()) << proxy.status();
    if (!proxy.ok()) return nullptr;
    proxy_ = *std::move(proxy);
    return ThroughProxy(*proxy_);
  }

  absl::Time Soon() { return absl::Now() + absl::Seconds(10); }

  std::string Ids() {
    auto v = pg_->QueryValue("postgres", "SELECT array_agg(id ORDER BY id) FROM dbf_t");
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : "?";
  }

  testing::PostgresCluster* pg_;
  std::unique_ptr<testing::FaultProxy> proxy_;
};

TEST_F(DatabaseFaultsTest, ConnectionsKilledWhileIdleAreReplacedBeforeAnyCallUsesThem) {
  Database db(Config(4));
  ASSERT_TRUE(db.WarmUp().ok());
  ASSERT_EQ(Backends(db), 4);
  TerminateAll(db);

  std::vector<std::unique_ptr<Call>> calls;
  for (int i = 0; i < 24; ++i) {
    switch (i % 3) {
      case 0:
        calls.push_back(Call::Statement(absl::StrCat("SELECT ", i, "::int8"), Soon(), true));
        break;
      case 1:
        calls.push_back(
            Call::Statement(absl::StrCat("INSERT INTO dbf_t VALUES (", i, ")"), Soon()));
        break;
      case 2:
        calls.push_back(Call::Transaction(absl::StrCat("SELECT ", i, "::int8"), Soon(), true));
        break;
    }
    ASSERT_TRUE(db.Submit(calls.back()->work).ok());
  }
  for (auto& c : calls) {
    ASSERT_TRUE(c->Wait());
    EXPECT_TRUE(c->status.ok()) << c->sql << ": " << c->status;
  }
  EXPECT_GE(db.pool().Stats().broken, 4u);
  EXPECT_EQ(db.retries(), 0u) << "dead connections reached calls";
  EXPECT_EQ(Ids(), "{1,4,7,10,13,16,19,22}");
}

TEST_F(DatabaseFaultsTest, AReadWhoseConnectionDiedJustBeforeItRanIsRunAgain) {
  std::unique_ptr<Database> db = ThroughNewProxy();
  ASSERT_NE(db, nullptr);
  auto warm = Call::Statement("SELECT 7::int8", Soon(), /*read=*/true);
  ASSERT_TRUE(Run(*db, *warm).ok());

  proxy_->HoldReplies();
  TerminateAll(*db);
  ASSERT_TRUE(proxy_->WaitForHeldServerCloses(1, absl::Seconds(10)));

  auto read = Call::Statement("SELECT 7::int8", Soon(), /*read=*/true);
  EXPECT_TRUE(Run(*db, *read).ok()) << read->status;
  EXPECT_EQ(read->sink.value(), 7);
  EXPECT_EQ(db->retries(), 1u);
  EXPECT_EQ(db->pool().Stats().broken, 1u);
}

// The write's statement is prepared on the connection, so its pipeline starts
// with its Execute: the marker in front proves the server ran none of it.
TEST_F(DatabaseFaultsTest, AWriteTheServerProvablyNeverRanIsRunAgainOnce) {
  std::unique_ptr<Database> db = ThroughNewProxy();
  ASSERT_NE(db, nullptr);
  google::protobuf::RepeatedPtrField<v1::Value> one, two;
  one.Add()->set_int64_value(1);
  two.Add()->set_int64_value(2);
  auto first = Call::Statement("INSERT INTO dbf_t VALUES ($1)", Soon());
  first->work->statement.params = &one;
  ASSERT_TRUE(Run(*db, *first).ok()) << first->status;

  proxy_->HoldReplies();
  TerminateAll(*db);
  ASSERT_TRUE(proxy_->WaitForHeldServerCloses(1, absl::Seconds(10)));

  auto write = Call::Statement("INSERT INTO dbf_t VALUES ($1)", Soon());
  write->work->statement.params = &two;
  EXPECT_TRUE(Run(*db, *write).ok()) << write->status;
  EXPECT_EQ(db->retries(), 1u);
  EXPECT_EQ(Ids(), "{1,2}");
}

TEST_F(DatabaseFaultsTest, AWriteWhoseOutcomeIsUnknownSaysSoAndIsNotRunAgain) {
  std::unique_ptr<Database> db = ThroughNewProxy();
  ASSERT_NE(db, nullptr);

  proxy_->CutOnNextRequest();
  auto write = Call::Statement("INSERT INTO dbf_t VALUES (3)", Soon());
  absl::Status s = Run(*db, *write);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "outcome unknown")) << s;
  EXPECT_EQ(db->retries(), 0u);
  EXPECT_EQ(db->pool().Stats().broken, 1u);
  // It did run, once: the server went on with it after the client lost it.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (Ids() != "{3}" && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(Ids(), "{3}");
}

TEST_F(DatabaseFaultsTest, AReadWhoseReplyWasLostIsRunAgain) {
  std::unique_ptr<Database> db = ThroughNewProxy();
  ASSERT_NE(db, nullptr);
  proxy_->CutOnNextRequest();
  auto read = Call::Statement("SELECT 11::int8", Soon(), /*read=*/true);
  EXPECT_TRUE(Run(*db, *read).ok()) << read->status;
  EXPECT_EQ(read->sink.value(), 11);
  EXPECT_EQ(db->retries(), 1u);
}

// A named query declared read-only: poolside cannot prove it a read (it may
// call functions of the user's), but on a replica PostgreSQL keeps it from
// writing, so it may run again there; on the primary it may have written.
TEST_F(DatabaseFaultsTest, AStatementNotProvenAReadIsRunAgainOnAReplicaOnly) {
  std::unique_ptr<Database> db = ThroughNewProxy();
  ASSERT_NE(db, nullptr);
  proxy_->CutOnNextRequest();
  auto on_replica = Call::Statement("SELECT 13::int8", Soon());
  on_replica->work->replica_ok = true;
  on_replica->work->plain_read = true;
  on_replica->work->on_replica = true;  // as routing sets it
  EXPECT_TRUE(Run(*db, *on_replica).ok()) << on_replica->status;
  EXPECT_EQ(on_replica->sink.value(), 13);
  EXPECT_EQ(db->retries(), 1u);

  proxy_->CutOnNextRequest();
  auto on_primary = Call::Statement("SELECT 14::int8", Soon());
  on_primary->work->replica_ok = true;  // a replica's read that fell back
  EXPECT_EQ(Run(*db, *on_primary).code(), absl::StatusCode::kUnavailable) << on_primary->status;
  EXPECT_EQ(db->retries(), 1u);
}

TEST_F(DatabaseFaultsTest, ExclusiveWorkIsRunAgainWhenNothingOfItRanOrItOnlyReads) {
  std::unique_ptr<Database> db = ThroughNewProxy();
  ASSERT_NE(db, nullptr);

  // The server ended the session before BEGIN: nothing of the write ran.
  proxy_->HoldReplies();
  TerminateAll(*db);
  ASSERT_TRUE(proxy_->WaitForHeldServerCloses(1, absl::Seconds(10)));
  auto write = Call::Transaction("INSERT INTO dbf_t VALUES (5)", Soon(), /*read_only=*/false);
  EXPECT_TRUE(Run(*db, *write).ok()) << write->status;
  EXPECT_EQ(db->retries(), 1u);
  EXPECT_EQ(Ids(), "{5}");

  // A read-only transaction whose reply was lost: it starts over.
  proxy_->CutOnNextRequest();
  auto read = Call::Transaction("SELECT 12::int8", Soon(), /*read_only=*/true);
  EXPECT_TRUE(Run(*db, *read).ok()) << read->status;
  EXPECT_EQ(read->sink.value(), 12);
  EXPECT_EQ(db->retries(), 2u);

  // A write transaction whose reply was lost: not run again.
  proxy_->CutOnNextRequest();
  auto lost = Call::Transaction("INSERT INTO dbf_t VALUES (6)", Soon(), /*read_only=*/false);
  EXPECT_EQ(Run(*db, *lost).code(), absl::StatusCode::kUnavailable) << lost->status;
  EXPECT_EQ(db->retries(), 2u);
}

TEST_F(DatabaseFaultsTest, AConnectionLostToThePrimaryHoldsTheNextWritesUntilItsNextProbe) {
  absl::StatusOr<std::unique_ptr<testing::FaultProxy>> proxy =
      testing::FaultProxy::Start("127.0.0.1", pg_->port());
  ASSERT_TRUE(proxy.ok()) << proxy.status();
  const std::string dsn =
      absl::StrCat("host=127.0.0.1 port=", (*proxy)->port(), " dbname=postgres user=postgres");
  // One connection, never pre-pinged.
  db::ManagedDatabase managed(Config(1, dsn, 600000, /*topology=*/true), {});
  db::Topology& topology = *managed.topology();
  ASSERT_TRUE(topology.SetMembers({{"p", dsn}, {"r", "host=127.0.0.1 port=1"}}).ok());
  topology.Record("p", db::MemberSample{.in_recovery = false, .lsn = 100});
  auto replicas = std::make_shared<Replicas>(&managed);
  absl::StatusOr<std::shared_ptr<ConnectionPool>> own = managed.Pool("");
  ASSERT_TRUE(own.ok()) << own.status();
  Database db(*own, managed.config());
  db.AttachReplicas(replicas);
  auto insert = [&](const char* sql) {
    auto call = Call::Statement(sql, Soon());
    EXPECT_TRUE(db.Submit(call->work).ok());
    return call;
  };
  auto first = insert("INSERT INTO dbf_t VALUES (21)");
  ASSERT_TRUE(first->Wait());
  ASSERT_TRUE(first->status.ok()) << first->status;

  // The primary's connection is lost under a write: its outcome is unknown.
  (*proxy)->CutOnNextRequest();
  auto lost = insert("INSERT INTO dbf_t VALUES (22)");
  ASSERT_TRUE(lost->Wait());
  EXPECT_EQ(lost->status.code(), absl::StatusCode::kUnavailable) << lost->status;
  EXPECT_TRUE(absl::StrContains(lost->status.message(), "outcome unknown")) << lost->status;
  EXPECT_EQ(topology.primary(), "");
  // The next write is held, not sent on another connection to the server.
  auto next = insert("INSERT INTO dbf_t VALUES (23)");
  const bool held = testing::WaitFor(
      [&] { return replicas->held_now() == 1 || next->finished.HasBeenNotified(); },
      absl::Seconds(10));
  EXPECT_TRUE(held && !next->finished.HasBeenNotified())
      << "not held: " << (next->finished.HasBeenNotified() ? next->status.ToString() : "");
  // The primary's next probe names it again: the write runs there, once.
  topology.Record("p", db::MemberSample{.in_recovery = false, .lsn = 110});
  ASSERT_TRUE(next->Wait());
  EXPECT_TRUE(next->status.ok()) << next->status;
  EXPECT_EQ(next->work->member, "p");
  EXPECT_EQ(Ids(), "{21,22,23}");
  EXPECT_EQ(replicas->held_total(), 1u);
  EXPECT_EQ(replicas->held_timeouts(), 0u);
  replicas->Stop();
}

// A routed database whose primary "p" is the test server and whose one
// replica "r" is reached at `replica_dsn`, both probed by hand (the primary
// at 100, the replica as having replayed `replica_lsn`), and the Database of
// the DSN user routing over them.
struct RoutedDatabase {
  RoutedDatabase(v1::DatabaseConfig config, const std::string& replica_dsn, uint64_t replica_lsn)
      : managed(config, {}) {
    db::Topology& topology = *managed.topology();
    EXPECT_TRUE(topology.SetMembers({{"p", config.dsn()}, {"r", replica_dsn}}).ok());
    // Recorded once Replicas listens: it follows the routable replicas'
    // positions from the records.
    replicas = std::make_shared<Replicas>(&managed);
    topology.Record("p", db::MemberSample{.in_recovery = false, .lsn = 100});
    topology.Record("r", db::MemberSample{.in_recovery = true, .lsn = replica_lsn});
    absl::StatusOr<std::shared_ptr<ConnectionPool>> own = managed.Pool("");
    EXPECT_TRUE(own.ok()) << own.status();
    db = std::make_unique<Database>(*own, managed.config());
    db->AttachReplicas(replicas);
  }
  ~RoutedDatabase() {
    replicas->Stop();
    db.reset();
    managed.Stop();
  }
  // Marks `call` a plain read routing may send to a replica (the analyzer's
  // verdict), with `min_lsn`.
  static void PlainRead(Call& call, uint64_t min_lsn = 0) {
    call.work->replica_ok = true;
    call.work->plain_read = true;
    call.work->wait_for_replica = true;
    call.work->min_lsn = min_lsn;
  }
  // No member has a call outstanding.
  bool Idle() {
    for (const db::MemberStatus& m : managed.topology()->Snapshot()) {
      if (m.outstanding != 0) return false;
    }
    return true;
  }

  db::ManagedDatabase managed;
  std::shared_ptr<Replicas> replicas;
  std::unique_ptr<Database> db;
};

// A statement taken for a read that writes after all (a view over nextval
// created after the catalog snapshot, a function of the user's declared
// read-only): the replica refuses it with 25006 and nothing of it took
// effect, so it runs on the primary instead of failing. A read-only
// caller's transaction refused alike is answered as refused: the primary
// would refuse it too.
TEST_F(DatabaseFaultsTest, AReadAReplicaRefusesAsAWriteRunsOnThePrimary) {
  ASSERT_TRUE(pg_->Exec("postgres", "CREATE SEQUENCE IF NOT EXISTS dbf_s").ok());
  // The "replica": the same server, every transaction read-only (what a
  // standby enforces).
  RoutedDatabase routed(Config(1, "", 0, /*topology=*/true),
                        absl::StrCat(pg_->Dsn(), " options='-c default_transaction_read_only=on'"),
                        100);
  auto nextval = Call::Statement("SELECT nextval('dbf_s')", Soon(), /*read=*/true);
  RoutedDatabase::PlainRead(*nextval);
  absl::Status s = Run(*routed.db, *nextval);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(nextval->work->member, "p");
  EXPECT_GT(nextval->sink.value(), 0);

  // A plain read still reads the replica.
  auto read = Call::Statement("SELECT 5::int8", Soon(), /*read=*/true);
  RoutedDatabase::PlainRead(*read);
  EXPECT_TRUE(Run(*routed.db, *read).ok()) << read->status;
  EXPECT_EQ(read->work->member, "r");

  auto read_only = Call::Transaction("SELECT nextval('dbf_s')", Soon(), /*read_only=*/true);
  read_only->work->replica_ok = true;
  s = Run(*routed.db, *read_only);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_EQ(read_only->work->member, "r");
  EXPECT_TRUE(routed.Idle());
}

// A cache fill after a write of unknown position reads the primary (the
// fence is unknown until the primary's next probe): at once, not after
// waiting tokenWaitMs for a replica to reach a position none ever will.
TEST_F(DatabaseFaultsTest, ACacheFillFencedByAWriteOfUnknownPositionReadsThePrimaryAtOnce) {
  RoutedDatabase routed(Config(1, "", 0, /*topology=*/true), pg_->Dsn(), 100);
  ASSERT_GT(routed.replicas->token_wait(), absl::ZeroDuration());
  routed.replicas->NoteWrite(0);
  ASSERT_EQ(routed.replicas->WriteFence(), UINT64_MAX);
  auto fill = Call::Statement("SELECT 6::int8", Soon(), /*read=*/true);
  RoutedDatabase::PlainRead(*fill);
  fill->work->cache_fill = true;
  EXPECT_TRUE(Run(*routed.db, *fill).ok()) << fill->status;
  EXPECT_EQ(fill->work->member, "p");
  EXPECT_EQ(routed.replicas->token_waits(), 0u);
  // A caller's token beyond the replica is still waited for.
  auto token = Call::Statement("SELECT 7::int8", Soon(), /*read=*/true);
  RoutedDatabase::PlainRead(*token, 101);
  EXPECT_TRUE(Run(*routed.db, *token).ok()) << token->status;
  EXPECT_EQ(token->work->member, "p");
  EXPECT_EQ(routed.replicas->token_waits(), 1u);
  EXPECT_TRUE(routed.Idle());
}

// A read carrying a token no member will reach before its deadline (a far
// future or another cluster's), with a token wait longer than the deadline:
// it ends by its deadline (or answers from the primary), never from the
// replica, and leaves nothing outstanding.
TEST_F(DatabaseFaultsTest, AReadWithATokenNoReplicaReachesEndsByItsDeadline) {
  v1::DatabaseConfig config = Config(1, "", 0, /*topology=*/true);
  config.mutable_topology()->set_token_wait_ms(60000);
  RoutedDatabase routed(config, pg_->Dsn(), 100);
  for (uint64_t token : {uint64_t{1} << 40, uint64_t{1} << 63, UINT64_MAX}) {
    auto read = Call::Statement("SELECT 8::int8", absl::Now() + absl::Milliseconds(200),
                                /*read=*/true);
    RoutedDatabase::PlainRead(*read, token);
    absl::Status s = Run(*routed.db, *read);
    if (s.ok()) {
      EXPECT_EQ(read->work->member, "p") << token;
      EXPECT_EQ(read->sink.value(), 8);
    } else {
      EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << token << ": " << s;
    }
    EXPECT_NE(read->work->member, "r") << token;
  }
  // UINT64_MAX, which no replica ever reaches, is not waited for.
  EXPECT_EQ(routed.replicas->token_waits(), 2u);
  EXPECT_EQ(routed.replicas->token_waits_reached(), 0u);
  EXPECT_TRUE(routed.Idle());
}

// A replica whose connection is cut under a token-carrying read, and that
// takes no new connection: the read answers from the primary with the right
// value (the only other member that has replayed the token), the replica is
// passed over until its next probe, and its pool keeps no connection.
TEST_F(DatabaseFaultsTest, AReadWhoseReplicaIsCutUnderItAnswersFromAnotherMember) {
  std::unique_ptr<Database> direct = ThroughNewProxy();  // makes proxy_
  ASSERT_NE(direct, nullptr);
  direct.reset();
  const std::string replica_dsn =
      absl::StrCat("host=127.0.0.1 port=", proxy_->port(), " dbname=postgres user=postgres");
  RoutedDatabase routed(Config(1, "", 600000, /*topology=*/true), replica_dsn, 150);
  auto warm = Call::Statement("SELECT 1::int8", Soon(), /*read=*/true);
  RoutedDatabase::PlainRead(*warm, 150);
  ASSERT_TRUE(Run(*routed.db, *warm).ok()) << warm->status;
  ASSERT_EQ(warm->work->member, "r");

  // The connection open is cut as the read goes out; new ones reach nothing.
  proxy_->CutOnNextRequest();
  proxy_->ForwardNewConnectionsTo(1);
  auto read = Call::Statement("SELECT 9::int8", Soon(), /*read=*/true);
  RoutedDatabase::PlainRead(*read, 150);
  absl::Status s = Run(*routed.db, *read);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(read->sink.value(), 9);
  EXPECT_EQ(read->work->member, "p");
  EXPECT_EQ(routed.replicas->read_retries(ReadRetryReason::kConnectionLost) +
                routed.replicas->read_retries(ReadRetryReason::kConnectFailed),
            1u);
  for (const db::MemberStatus& m : routed.managed.topology()->Snapshot()) {
    if (m.id == "r") EXPECT_FALSE(m.healthy) << "not marked suspect";
  }
  // Passed over: the next read goes to the primary at once.
  auto next = Call::Statement("SELECT 10::int8", Soon(), /*read=*/true);
  RoutedDatabase::PlainRead(*next);
  EXPECT_TRUE(Run(*routed.db, *next).ok()) << next->status;
  EXPECT_EQ(next->work->member, "p");
  EXPECT_TRUE(routed.Idle());
  for (Database* member : routed.db->Members()) {
    if (member->member() == "r") EXPECT_EQ(member->pool().Stats().in_use, 0u);
  }
}

// A primary that refuses writes as read-only without being demoted (its
// database set default_transaction_read_only, an operator's maintenance
// switch): a write it refuses (25006) is held for a new primary only until
// the primary's next probe, which names the same member again; the write
// then answers 25006 from it, rather than waiting out failoverBufferMs for
// a primary that will not change and failing "not run, retry".
TEST_F(DatabaseFaultsTest, AWriteARefusingPrimaryThatStaysPrimaryRefusesAnswersItsRefusal) {
  v1::DatabaseConfig config = Config(
      1, absl::StrCat(pg_->Dsn(), " options='-c default_transaction_read_only=on'"), 0, true);
  config.mutable_topology()->set_failover_buffer_ms(1000);
  RoutedDatabase routed(config, pg_->Dsn(), 100);
  auto write = Call::Statement("INSERT INTO dbf_t VALUES (31)", Soon());
  write->work->may_write = true;
  ASSERT_TRUE(routed.db->Submit(write->work).ok());
  // Held for a new primary (it might have been demoted) ...
  ASSERT_TRUE(testing::WaitFor(
      [&] { return routed.replicas->held_now() == 1 || write->finished.HasBeenNotified(); },
      absl::Seconds(10)));
  ASSERT_FALSE(write->finished.HasBeenNotified()) << write->status;
  // ... until the primary's next probe finds it still writable.
  routed.managed.topology()->Record("p", db::MemberSample{.in_recovery = false, .lsn = 110});
  ASSERT_TRUE(write->Wait());
  EXPECT_EQ(write->status.code(), absl::StatusCode::kFailedPrecondition) << write->status;
  EXPECT_TRUE(absl::StrContains(write->status.message(), "25006")) << write->status;
  EXPECT_EQ(write->work->member, "p");
  EXPECT_EQ(routed.replicas->held_timeouts(), 0u);
  EXPECT_EQ(Ids(), "");  // nothing written
  EXPECT_TRUE(routed.Idle());
}

// A call held for a primary whose caller then goes away (the service
// abandons its work) leaves the failover buffer at once: it does not keep
// its place against failoverBufferCalls until its window ends, nor count
// as a held call that timed out, and it never runs.
TEST_F(DatabaseFaultsTest, AHeldCallItsCallerAbandonedLeavesTheFailoverBuffer) {
  v1::DatabaseConfig config = Config(1, "", 0, /*topology=*/true);
  config.mutable_topology()->set_failover_buffer_ms(60000);
  config.mutable_topology()->set_failover_buffer_calls(1);
  RoutedDatabase routed(config, pg_->Dsn(), 100);
  // The primary is lost: no member is writable.
  routed.managed.topology()->Record("p", db::MemberSample{.in_recovery = true, .lsn = 100});
  ASSERT_EQ(routed.managed.topology()->primary(), "");
  auto abandoned =
      Call::Statement("INSERT INTO dbf_t VALUES (41)", absl::Now() + absl::Seconds(60));
  abandoned->work->may_write = true;
  ASSERT_TRUE(routed.db->Submit(abandoned->work).ok());
  ASSERT_EQ(routed.replicas->held_now(), 1u);
  ASSERT_TRUE(abandoned->work->Abandon());  // as the service does when the caller goes away
  EXPECT_TRUE(testing::WaitFor([&] { return routed.replicas->held_now() == 0; }, absl::Seconds(10)))
      << "the abandoned call keeps its place in the buffer";
  // Its place is free for another call.
  auto next = Call::Statement("INSERT INTO dbf_t VALUES (42)", Soon());
  next->work->may_write = true;
  absl::Status held = routed.db->Submit(next->work);
  ASSERT_TRUE(held.ok()) << held;
  // The primary is back: the call held runs, the abandoned one never does.
  routed.managed.topology()->Record("p", db::MemberSample{.in_recovery = false, .lsn = 110});
  ASSERT_TRUE(next->Wait());
  EXPECT_TRUE(next->status.ok()) << next->status;
  EXPECT_EQ(Ids(), "{42}");
  EXPECT_FALSE(abandoned->finished.HasBeenNotified()) << "done() after Abandon() won";
  EXPECT_EQ(routed.replicas->held_timeouts(), 0u);
  EXPECT_EQ(routed.replicas->held_total(), 2u);
  EXPECT_TRUE(routed.Idle());
}

// A replica that hangs (it takes connections and never answers: a frozen
// VM), found unhealthy while a read waits for a connection to it: by the
// contract (docs/replicas.md, "A replica that hangs") the read is given up
// on and answers from another member. The connect is given up with it
// (Pool::Acquire's abandon flags, Connection::Open's limits): without that,
// the read waited for the pool's connectTimeoutMs (20 s here), past its
// deadline, and answered UNAVAILABLE from the hung member.
TEST_F(DatabaseFaultsTest, AReadWaitingForAConnectionToAHungReplicaIsGivenUpOn) {
  // A listener that never accepts: connections complete in the kernel and
  // the server's greeting never comes.
  const int silent = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(silent, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(silent, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(silent, 16), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(silent, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  v1::DatabaseConfig config = Config(1, "", 0, /*topology=*/true);
  config.mutable_pool()->set_connect_timeout_ms(20000);
  RoutedDatabase routed(
      config,
      absl::StrCat("host=127.0.0.1 port=", ntohs(addr.sin_port), " dbname=postgres user=postgres"),
      100);
  auto read = Call::Statement("SELECT 4::int8", absl::Now() + absl::Seconds(8), /*read=*/true);
  RoutedDatabase::PlainRead(*read);
  ASSERT_TRUE(routed.db->Submit(read->work).ok());
  ASSERT_EQ(read->work->member, "r");
  // The read's worker is connecting to it (the greeting never comes).
  const int accepted = accept(silent, nullptr, nullptr);
  ASSERT_GE(accepted, 0);
  // Its probes find it unhealthy (as a failed probe would).
  ASSERT_TRUE(routed.replicas->topology().MarkSuspect("r", absl::UnavailableError("hung")));
  ASSERT_TRUE(read->Wait());
  EXPECT_TRUE(read->status.ok()) << read->status;
  EXPECT_EQ(read->work->member, "p");
  EXPECT_EQ(read->sink.value(), 4);
  close(accepted);
  close(silent);
}

// Transaction control in a batch of other callers' statements: the statements
// that ran inside the open transaction are told so, the connection is
// discarded and never handed out again.
TEST_F(DatabaseFaultsTest, ABatchSpoiledByBeginLosesNoAcknowledgedWrite) {
  Database db(Config(1));
  // The one worker is busy until the calls below have queued: they go out as
  // one batch, one pipeline.
  absl::Notification started, gate, blocker_done;
  auto blocker = std::make_shared<Work>();
  blocker->deadline = Soon();
  blocker->exclusive = [&started, &gate](db::Connection&) {
    started.Notify();
    gate.WaitForNotificationWithTimeout(absl::Seconds(30));
    return absl::OkStatus();
  };
  blocker->done = [&blocker_done](absl::Status) { blocker_done.Notify(); };
  ASSERT_TRUE(db.Submit(blocker).ok());
  ASSERT_TRUE(started.WaitForNotificationWithTimeout(absl::Seconds(10)));
  std::vector<std::unique_ptr<Call>> calls;
  calls.push_back(Call::Statement("SELECT pg_backend_pid()::int8", Soon(), /*read=*/true));
  calls.push_back(Call::Statement("INSERT INTO dbf_t VALUES (1)", Soon()));
  calls.push_back(Call::Statement("BEGIN", Soon()));
  calls.push_back(Call::Statement("INSERT INTO dbf_t VALUES (2)", Soon()));
  calls.push_back(Call::Statement("INSERT INTO dbf_t VALUES (3)", Soon()));
  for (auto& c : calls) ASSERT_TRUE(db.Submit(c->work).ok());
  gate.Notify();
  blocker_done.WaitForNotification();
  for (auto& c : calls) ASSERT_TRUE(c->Wait());
  EXPECT_TRUE(calls[0]->status.ok()) << calls[0]->status;
  EXPECT_TRUE(calls[1]->status.ok()) << calls[1]->status;
  EXPECT_EQ(calls[2]->status.code(), absl::StatusCode::kInvalidArgument) << calls[2]->status;
  for (int i : {3, 4}) {
    EXPECT_EQ(calls[i]->status.code(), absl::StatusCode::kAborted) << calls[i]->status;
  }
  EXPECT_EQ(db.pipelines(), 1u);
  EXPECT_EQ(db.pool().Stats().broken, 1u);
  EXPECT_EQ(Ids(), "{1}");

  auto pid = Call::Statement("SELECT pg_backend_pid()::int8", Soon(), /*read=*/true);
  ASSERT_TRUE(Run(db, *pid).ok()) << pid->status;
  EXPECT_NE(pid->sink.value(), calls[0]->sink.value());
}

}  // namespace
}  // namespace poolside::query
