// The query service's core in process, over a real PostgreSQL: what a caller
// may run on the shared pools, under which database role, and within which
// bounds. (tests/ covers the same through the binary and gRPC.)
#include "services/query/query_engine.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "common/config/json_config.h"
#include "gtest/gtest.h"
#include "services/query/query_config.h"
#include "tests/fixtures/postgres_cluster.h"

namespace poolside::query {
namespace {

class QueryEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pg_ = &testing::SharedPostgres();
    ASSERT_TRUE(pg_->CreateDatabase("engine").ok());
    ASSERT_TRUE(
        pg_->Exec("engine",
                  "DROP TABLE IF EXISTS accounts, secrets;"
                  "CREATE TABLE accounts (id int PRIMARY KEY, owner text);"
                  "INSERT INTO accounts SELECT g, 'owner-' || g FROM generate_series(1, 10) g;"
                  "CREATE TABLE secrets (id int);"
                  "DO $$ BEGIN"
                  "  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'eng_owner') THEN"
                  "    CREATE ROLE eng_owner LOGIN; END IF;"
                  "  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'eng_read') THEN"
                  "    CREATE ROLE eng_read LOGIN; END IF;"
                  "  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'eng_write') THEN"
                  "    CREATE ROLE eng_write LOGIN; END IF;"
                  "END $$;"
                  "ALTER ROLE eng_read SET default_transaction_read_only = on;"
                  "ALTER TABLE accounts OWNER TO eng_owner;"
                  "GRANT SELECT ON accounts TO eng_read;"
                  "GRANT SELECT, INSERT, UPDATE, DELETE ON accounts TO eng_write;")
            .ok());
  }

  // An engine over database "engine" logging in as eng_owner, with the roles
  // eng_read and eng_write, each pool of `pool_size` connections.
  static std::unique_ptr<QueryEngine> MakeEngine(const std::string& extra_limits = "",
                                                 int pool_size = 2) {
    v1::QueryServiceConfig c;
    absl::Status parsed =
        config::ParseJsonConfig(absl::StrCat(R"({"server": {"tls": {"plaintext": true}},
                        "limits": {)",
                                             extra_limits, R"(},
                        "databases": [{"name": "engine", "dsn": ")",
                                             pg_->Dsn("engine"), R"( user=eng_owner",
                          "pool": {"maxSize": )",
                                             pool_size, R"(, "minIdle": 0},
                          "roles": [{"name": "eng_read"}, {"name": "eng_write"}]}]})"),
                                &c);
    EXPECT_TRUE(parsed.ok()) << parsed;
    absl::StatusOr<v1::QueryServiceConfig> done = FinalizeQueryConfig(c);
    EXPECT_TRUE(done.ok()) << done.status();
    auto engine = std::make_unique<QueryEngine>(*done);
    engine->Start();
    return engine;
  }

  // How many backends of `roles` (a quoted SQL list: "'eng_read'") are
  // running a statement or inside a transaction: "0" once every call is done.
  static std::string BusyBackendsOf(const std::string& roles) {
    absl::StatusOr<std::string> n = pg_->QueryValue(
        "engine", absl::StrCat("SELECT count(*) FROM pg_stat_activity WHERE usename IN (", roles,
                               ") AND state <> 'idle'"));
    EXPECT_TRUE(n.ok()) << n.status();
    return n.ok() ? *n : "";
  }

  static auth::Principal Principal(const std::string& role, bool write, bool ddl = false) {
    auth::Principal p;
    p.name = role.empty() ? "owner" : role;
    p.roles = auth::kRead | auth::kSql | (write ? auth::kWrite : 0) | (ddl ? auth::kDdl : 0);
    p.all_databases = true;
    p.database_role = role;
    return p;
  }

  static CallAccess AccessOf(const auth::Principal& p) {
    CallAccess a;
    a.read_only = p.read_only();
    a.ddl = p.Has(auth::kDdl);
    a.principal = &p;
    return a;
  }

  // Runs Execute to its end; the status is the call's, `response` its answer.
  static absl::Status Run(QueryEngine& engine, const std::string& sql, const CallAccess& access,
                          v1::ExecuteResponse* response = nullptr,
                          absl::Duration timeout = absl::Seconds(10)) {
    v1::ExecuteRequest request;
    request.set_sql(sql);
    return RunRequest(engine, request, access, response, timeout);
  }

  // Starts a call with `start(deadline, done)` (an engine method bound to its
  // request and response) and waits for its outcome; a refusal before
  // anything runs is returned as it is.
  template <typename Start>
  static absl::Status Await(QueryEngine& engine, absl::Duration timeout, Start start) {
    absl::Notification done;
    absl::Status outcome;
    absl::StatusOr<std::shared_ptr<Work>> work =
        start(engine.EffectiveDeadline(absl::Now() + timeout), [&](absl::Status s) {
          outcome = s;
          done.Notify();
        });
    if (!work.ok()) return work.status();
    EXPECT_TRUE(done.WaitForNotificationWithTimeout(timeout + absl::Seconds(10)));
    return outcome;
  }

  // Submits `request` as a unary call would and waits for its outcome.
  static absl::Status RunRequest(QueryEngine& engine, const v1::ExecuteRequest& request,
                                 const CallAccess& access, v1::ExecuteResponse* response = nullptr,
                                 absl::Duration timeout = absl::Seconds(10)) {
    v1::ExecuteResponse local;
    if (response == nullptr) response = &local;
    return Await(engine, timeout, [&](absl::Time deadline, QueryEngine::Done done) {
      return engine.Execute(request, deadline, "test", response, std::move(done), access);
    });
  }

  // The same for a transaction.
  static absl::Status RunTransaction(QueryEngine& engine, const v1::ExecuteTransactionRequest& tx,
                                     const CallAccess& access,
                                     v1::ExecuteTransactionResponse* response = nullptr,
                                     absl::Duration timeout = absl::Seconds(10)) {
    v1::ExecuteTransactionResponse local;
    if (response == nullptr) response = &local;
    return Await(engine, timeout, [&](absl::Time deadline, QueryEngine::Done done) {
      return engine.ExecuteTransaction(tx, deadline, "test", response, std::move(done), access);
    });
  }
  static absl::Status RunTransaction(QueryEngine& engine, const std::vector<std::string>& sqls,
                                     const CallAccess& access) {
    v1::ExecuteTransactionRequest tx;
    for (const std::string& sql : sqls) tx.add_statements()->set_sql(sql);
    return RunTransaction(engine, tx, access);
  }

  static std::string FirstText(const v1::ExecuteResponse& r) {
    if (r.result().rows_size() == 0 || r.result().rows(0).values_size() == 0) return "";
    return r.result().rows(0).values(0).text_value();
  }

  static testing::PostgresCluster* pg_;
};

testing::PostgresCluster* QueryEngineTest::pg_ = nullptr;

TEST_F(QueryEngineTest, EachPrincipalRunsAsItsDatabaseRole) {
  auto engine = MakeEngine();
  const auth::Principal reader = Principal("eng_read", false);
  const auth::Principal writer = Principal("eng_write", true);
  const auth::Principal owner = Principal("", true);
  for (const auto& [who, role] : std::vector<std::pair<const auth::Principal*, std::string>>{
           {&reader, "eng_read"}, {&writer, "eng_write"}, {&owner, "eng_owner"}}) {
    v1::ExecuteResponse r;
    ASSERT_TRUE(Run(*engine, "SELECT current_user::text", AccessOf(*who), &r).ok());
    EXPECT_EQ(FirstText(r), role);
  }
  // One pool per role, listed with its role.
  v1::GetPoolStatsResponse stats;
  ASSERT_TRUE(engine->GetPoolStats({}, &stats).ok());
  std::vector<std::string> pools;
  for (const auto& p : stats.pools()) pools.push_back(p.database() + "/" + p.role());
  EXPECT_EQ(pools, (std::vector<std::string>{"engine/", "engine/eng_read", "engine/eng_write"}));
}

TEST_F(QueryEngineTest, PostgreSQLGrantsDecideWhatARoleReads) {
  auto engine = MakeEngine();
  const auth::Principal writer = Principal("eng_write", true);
  absl::Status s = Run(*engine, "SELECT * FROM secrets", AccessOf(writer));
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_NE(s.message().find("42501"), std::string::npos) << s;
}

TEST_F(QueryEngineTest, ReadOnlyPrincipalsWritesAreRefusedAndChangeNothing) {
  auto engine = MakeEngine();
  const auth::Principal reader = Principal("eng_read", false);
  absl::Status s = Run(*engine, "UPDATE accounts SET owner = 'x' WHERE id = 1", AccessOf(reader));
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  // A write the parser sees as a read (a volatile function) meets PostgreSQL.
  ASSERT_TRUE(pg_->Exec("engine",
                        "CREATE OR REPLACE FUNCTION sneaky() RETURNS int LANGUAGE sql AS "
                        "'UPDATE accounts SET owner = ''sneaky'' WHERE id = 2 RETURNING 1';"
                        "GRANT EXECUTE ON FUNCTION sneaky() TO eng_read;")
                  .ok());
  s = Run(*engine, "SELECT sneaky()", AccessOf(reader));
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(
      *pg_->QueryValue("engine", "SELECT count(*) FROM accounts WHERE owner IN ('x', 'sneaky')"),
      "0");
}

TEST_F(QueryEngineTest, RefusedStatementsNeverReachTheDatabase) {
  auto engine = MakeEngine();
  const auth::Principal writer = Principal("eng_write", true);
  for (const char* sql :
       {";COMMIT", "BEGIN", "SELECT 1; SELECT 2", "SET search_path = x", "COPY accounts TO STDOUT",
        "DO $$ BEGIN END $$", "SELECT pg_catalog.set_config('search_path', 'x', false)",
        "SELECT \"pg_notify\"('c', 'p')", "LISTEN c", "SELEC 1"}) {
    absl::Status s = Run(*engine, sql, AccessOf(writer));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << sql << ": " << s;
  }
  // Nothing ran: no statement was counted.
  v1::GetStatementStatsResponse stats;
  ASSERT_TRUE(engine->GetStatementStats({}, &stats).ok());
  EXPECT_EQ(stats.statements_size(), 0);
  // The ddl grant opens DO (as far as the role may).
  const auth::Principal ddl = Principal("eng_write", true, /*ddl=*/true);
  EXPECT_TRUE(Run(*engine, "DO $$ BEGIN PERFORM 1; END $$", AccessOf(ddl)).ok());
}

// Long texts new to the service are parsed on the database worker, not the
// queue thread; they are refused or run exactly as short ones.
TEST_F(QueryEngineTest, LongNewTextsAreCheckedOnTheWorkerAlike) {
  auto engine = MakeEngine();
  const auth::Principal writer = Principal("eng_write", true);
  const auth::Principal reader = Principal("eng_read", false);
  const std::string pad = "/* " + std::string(6000, 'x') + " */ ";
  EXPECT_EQ(Run(*engine, pad + ";COMMIT", AccessOf(writer)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      Run(*engine, pad + "SELECT set_config('search_path', 'x', false)", AccessOf(writer)).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Run(*engine, pad + "UPDATE accounts SET owner = 'long' WHERE id = 3", AccessOf(reader))
                .code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(*pg_->QueryValue("engine", "SELECT count(*) FROM accounts WHERE owner = 'long'"), "0");
  v1::ExecuteResponse r;
  ASSERT_TRUE(
      Run(*engine, pad + "SELECT owner FROM accounts WHERE id = 4", AccessOf(writer), &r).ok());
  EXPECT_EQ(FirstText(r), "owner-4");
  ASSERT_TRUE(
      Run(*engine, pad + "UPDATE accounts SET owner = 'long-ok' WHERE id = 5", AccessOf(writer))
          .ok());
  EXPECT_EQ(*pg_->QueryValue("engine", "SELECT owner FROM accounts WHERE id = 5"), "long-ok");

  // A transaction with one long new text is checked whole before anything runs.
  v1::ExecuteTransactionRequest tx;
  tx.add_statements()->set_sql(pad + "UPDATE accounts SET owner = 'tx' WHERE id = 6");
  tx.add_statements()->set_sql("COMMIT");
  v1::ExecuteTransactionResponse tr;
  absl::StatusOr<std::shared_ptr<Work>> refused = engine->ExecuteTransaction(
      tx, engine->EffectiveDeadline(absl::Now() + absl::Seconds(10)), "test", &tr,
      [](absl::Status) {}, AccessOf(writer));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  tx.mutable_statements(1)->set_sql(pad + "SET LOCAL search_path = public");
  tx.add_statements()->set_sql(pad + "LISTEN c");
  absl::Notification done;
  absl::Status outcome;
  absl::StatusOr<std::shared_ptr<Work>> work = engine->ExecuteTransaction(
      tx, engine->EffectiveDeadline(absl::Now() + absl::Seconds(10)), "test", &tr,
      [&](absl::Status s) {
        outcome = s;
        done.Notify();
      },
      AccessOf(writer));
  ASSERT_TRUE(work.ok()) << work.status();  // deferred: refused on the worker
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  EXPECT_EQ(outcome.code(), absl::StatusCode::kInvalidArgument) << outcome;
  EXPECT_NE(outcome.message().find("statement 3"), std::string::npos) << outcome;
  EXPECT_EQ(*pg_->QueryValue("engine", "SELECT owner FROM accounts WHERE id = 6"), "owner-6");
}

// The analyzer reads every text as standard_conforming_strings=on UTF-8, as
// libpg_query does; a connection that reads backslashes in '' strings as
// escapes (or bytes in another encoding) sees another statement in the same
// text: here a session advisory lock hidden in what the analyzer reads as two
// string literals ('x\' and $$...$$). Neither a caller (SET LOCAL, set_config)
// nor a role's or database's default may make the server read it so.
TEST_F(QueryEngineTest, TheServerReadsATextAsTheAnalyzerDoes) {
  constexpr char kHidden[] = "SELECT 'x\\' || $$' , pg_advisory_lock(4242) -- $$";
  const std::string held =
      "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242";
  auto engine = MakeEngine();
  const auth::Principal writer = Principal("eng_write", true);
  auto transaction = [&](const std::vector<std::string>& sqls) {
    return RunTransaction(*engine, sqls, AccessOf(writer));
  };
  for (const char* set : {"SET LOCAL standard_conforming_strings = off",
                          "SELECT set_config('standard_conforming_strings', 'off', true)",
                          "SET LOCAL client_encoding = 'SJIS'", "SET LOCAL NAMES 'SJIS'",
                          "SELECT set_config('Client_Encoding', 'BIG5', true)"}) {
    absl::Status s = transaction({set, kHidden});
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << set << ": " << s;
    EXPECT_NE(s.message().find("statement 1"), std::string::npos) << s;
    EXPECT_EQ(*pg_->QueryValue("engine", held), "0") << set;
  }

  // A role whose sessions default to standard_conforming_strings = off.
  ASSERT_TRUE(
      pg_->Exec("engine", "ALTER ROLE eng_write SET standard_conforming_strings = off").ok());
  auto engine2 = MakeEngine();
  v1::ExecuteResponse r;
  absl::Status s = Run(*engine2, kHidden, AccessOf(writer), &r);
  ASSERT_TRUE(pg_->Exec("engine", "ALTER ROLE eng_write RESET standard_conforming_strings").ok());
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(FirstText(r), "x\\' , pg_advisory_lock(4242) -- ");
  EXPECT_EQ(*pg_->QueryValue("engine", held), "0");
}

// Writes dressed as reads, or sent where a read-only caller might hope to
// escape its read-only transaction: each refused, nothing changed.
TEST_F(QueryEngineTest, ReadOnlyPrincipalsCannotWriteInAnyDisguise) {
  ASSERT_TRUE(pg_->Exec("engine",
                        "CREATE SEQUENCE IF NOT EXISTS eng_seq;"
                        "GRANT USAGE, SELECT, UPDATE ON SEQUENCE eng_seq TO eng_read;")
                  .ok());
  const std::string before = *pg_->QueryValue("engine", "SELECT last_value FROM eng_seq");
  auto engine = MakeEngine();
  const auth::Principal reader = Principal("eng_read", false);
  // Classified as writes by the parser: refused before anything runs.
  for (const char* sql :
       {"SELECT * FROM accounts FOR UPDATE", "SELECT * FROM accounts FOR KEY SHARE SKIP LOCKED",
        "EXPLAIN ANALYZE DELETE FROM accounts",
        "EXPLAIN (ANALYZE true, FORMAT json) UPDATE accounts SET owner = 'w'",
        "WITH d AS (DELETE FROM accounts RETURNING 1) SELECT count(*) FROM d",
        "SELECT * FROM (SELECT 1) s, LATERAL (WITH u AS (UPDATE accounts SET owner = 'w' "
        "RETURNING 1) SELECT * FROM u) x",
        "SELECT * INTO eng_copy FROM accounts", "CREATE TABLE eng_copy AS SELECT 1",
        "MERGE INTO accounts a USING (SELECT 1 AS id) s ON a.id = s.id WHEN MATCHED THEN DELETE",
        "TRUNCATE accounts"}) {
    absl::Status s = Run(*engine, sql, AccessOf(reader));
    EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << sql << ": " << s;
    EXPECT_NE(s.message().find("read-only principal"), std::string::npos) << s;
  }
  // Reads that write: PostgreSQL's read-only transaction refuses them
  // (25006: FAILED_PRECONDITION, common/db/error.h).
  for (const char* sql : {"SELECT nextval('eng_seq')", "SELECT setval('eng_seq', 1000)"}) {
    absl::Status s = Run(*engine, sql, AccessOf(reader));
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << sql << ": " << s;
    EXPECT_NE(s.message().find("25006"), std::string::npos) << s;
  }
  // A transaction the caller asks to be read-write is read-only all the same.
  v1::ExecuteTransactionRequest tx;
  tx.set_read_only(false);
  tx.add_statements()->set_sql("SELECT nextval('eng_seq')");
  const absl::Status outcome = RunTransaction(*engine, tx, AccessOf(reader));
  EXPECT_EQ(outcome.code(), absl::StatusCode::kFailedPrecondition) << outcome;
  EXPECT_NE(outcome.message().find("25006"), std::string::npos) << outcome;

  EXPECT_EQ(*pg_->QueryValue("engine", "SELECT last_value FROM eng_seq"), before);
  EXPECT_EQ(*pg_->QueryValue("engine", "SELECT count(*) FROM accounts WHERE owner = 'w'"), "0");
  EXPECT_EQ(*pg_->QueryValue("engine", "SELECT count(*) FROM pg_class WHERE relname = 'eng_copy'"),
            "0");
  // And no reader's backend is left inside a transaction.
  EXPECT_EQ(BusyBackendsOf("'eng_read'"), "0");
}

// What one call leaves on its connection is what the next caller of the pool
// gets: after refused, failed and cancelled calls, every connection of the
// pool is idle, outside a transaction, with the session it was made with.
TEST_F(QueryEngineTest, EveryCallLeavesItsConnectionCleanForTheNext) {
  auto engine = MakeEngine(R"("maxTimeoutMs": 2000)");
  const auth::Principal writer = Principal("eng_write", true);
  auto transaction = [&](const std::vector<std::string>& sqls) {
    return RunTransaction(*engine, sqls, AccessOf(writer));
  };
  // Transaction-scoped state, then a failure: all rolled back.
  absl::Status s = transaction(
      {"SET LOCAL search_path = nowhere", "SET LOCAL statement_timeout = '1h'",
       "SELECT set_config('app.tenant', 'evil', true)", "SELECT pg_advisory_xact_lock(77)",
       "CREATE TEMP TABLE eng_tmp (x int) ON COMMIT DROP",
       "DECLARE c CURSOR FOR SELECT * FROM pg_catalog.pg_class", "SELECT 1/0"});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;  // 22012
  // The same, committed.
  s = transaction(
      {"SET LOCAL search_path = nowhere", "SELECT set_config('app.tenant', 'evil', true)",
       "SELECT pg_advisory_xact_lock(77)", "CREATE TEMP TABLE eng_tmp (x int) ON COMMIT DROP",
       "DECLARE c CURSOR FOR SELECT 1"});
  EXPECT_TRUE(s.ok()) << s;
  // Session state, refused before it runs.
  for (const char* sql :
       {"DECLARE h CURSOR WITH HOLD FOR SELECT 1", "PREPARE p AS SELECT 1", "LISTEN ch",
        "SELECT pg_advisory_lock(77)", "SELECT pg_try_advisory_lock_shared(77)",
        "CREATE TEMP TABLE eng_tmp2 (x int)", "SET statement_timeout = 0", "RESET ALL",
        "SET SESSION AUTHORIZATION eng_owner", "SELECT set_config('search_path', 'x', false)",
        "BEGIN; SELECT 1", "SELECT 1; BEGIN"}) {
    EXPECT_EQ(transaction({sql}).code(), absl::StatusCode::kInvalidArgument) << sql;
    EXPECT_EQ(Run(*engine, sql, AccessOf(writer)).code(), absl::StatusCode::kInvalidArgument)
        << sql;
  }
  // Cancelled at its deadline, alone and in a transaction.
  s = Run(*engine, "SELECT pg_sleep(60)", AccessOf(writer), nullptr, absl::Seconds(1));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  s = transaction({"SELECT pg_advisory_xact_lock(78)", "SELECT pg_sleep(60)"});
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;

  // Both connections of the pool (maxSize 2), held at once, are clean.
  absl::Notification release;
  std::vector<std::string> seen(2);
  std::vector<std::unique_ptr<absl::Notification>> ran;
  std::vector<absl::Status> outcomes(2);
  std::vector<std::unique_ptr<v1::ExecuteTransactionRequest>> requests;  // outlive the calls
  std::vector<std::unique_ptr<v1::ExecuteTransactionResponse>> responses;
  std::vector<absl::StatusOr<std::shared_ptr<Work>>> works;
  for (int i = 0; i < 2; ++i) {
    ran.push_back(std::make_unique<absl::Notification>());
    responses.push_back(std::make_unique<v1::ExecuteTransactionResponse>());
    requests.push_back(std::make_unique<v1::ExecuteTransactionRequest>());
    v1::ExecuteTransactionRequest& tx = *requests.back();
    // pg_sleep keeps the first connection while the second is taken. A custom
    // setting once set stays defined in the session, empty after its
    // transaction ('' where a fresh session says NULL): its value is gone.
    tx.add_statements()->set_sql(
        "SELECT concat_ws('|', current_setting('search_path'), "
        "current_setting('statement_timeout') <> '1h', coalesce(current_setting('app.tenant', "
        "true), ''), "
        "current_setting('standard_conforming_strings'), "
        "(SELECT count(*) FROM pg_catalog.pg_cursors WHERE name <> ''), "
        "(SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql), "
        "(SELECT count(*) FROM pg_catalog.pg_listening_channels()), "
        "(SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = "
        "pg_backend_pid()), "
        "(SELECT count(*) FROM pg_catalog.pg_class WHERE relpersistence = 't'))");
    tx.add_statements()->set_sql("SELECT pg_sleep(0.5)");
    works.push_back(engine->ExecuteTransaction(
        tx, engine->EffectiveDeadline(absl::Now() + absl::Seconds(10)), "test",
        responses.back().get(),
        [&, i](absl::Status st) {
          outcomes[i] = st;
          ran[i]->Notify();
        },
        AccessOf(writer)));
    ASSERT_TRUE(works.back().ok()) << works.back().status();
  }
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(ran[i]->WaitForNotificationWithTimeout(absl::Seconds(30)));
    ASSERT_TRUE(outcomes[i].ok()) << outcomes[i];
    ASSERT_GE(responses[i]->results_size(), 1);
    ASSERT_GE(responses[i]->results(0).rows_size(), 1);
    EXPECT_EQ(responses[i]->results(0).rows(0).values(0).text_value(),
              "\"$user\", public|t||on|0|0|0|0|0")
        << i;
  }
  // No backend of the role is left inside a transaction or still running.
  EXPECT_EQ(BusyBackendsOf("'eng_write'"), "0");
}

// Every bound answers with its own status and leaves the pool usable: a
// result over max_rows or max_bytes, too many parameters, too long a text,
// too many statements; a parameter of any size within the request bound.
TEST_F(QueryEngineTest, LimitsAnswerPreciselyAndLeaveNothingBehind) {
  auto engine = MakeEngine(
      R"("maxRows": 5, "maxBytes": 2000, "maxParams": 3, "maxSqlBytes": 300, "maxStatements": 2)");
  const auth::Principal writer = Principal("eng_write", true);
  const auth::Principal reader = Principal("eng_read", false);
  absl::Status s = Run(*engine, "SELECT * FROM accounts", AccessOf(reader));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("max_rows (5 rows)"), std::string::npos) << s;
  s = Run(*engine, "SELECT repeat('x', 3000)", AccessOf(writer));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("max_bytes"), std::string::npos) << s;

  v1::ExecuteRequest many;
  many.set_sql("SELECT $1::int + $2::int + $3::int + $4::int");
  for (int i = 0; i < 4; ++i) many.add_params()->set_int64_value(i);
  v1::ExecuteResponse r;
  absl::StatusOr<std::shared_ptr<Work>> work = engine->Execute(
      many, engine->EffectiveDeadline(absl::Now() + absl::Seconds(10)), "test", &r,
      [](absl::Status) {}, AccessOf(writer));
  EXPECT_EQ(work.status().code(), absl::StatusCode::kInvalidArgument) << work.status();
  EXPECT_NE(work.status().message().find("4 parameters; the limit is 3"), std::string::npos)
      << work.status();
  s = Run(*engine, "SELECT 1 /* " + std::string(400, 'x') + " */", AccessOf(writer));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("the limit is 300"), std::string::npos) << s;

  // A parameter of 1 MiB goes as a value, never as text: its bytes are counted
  // in the answer (over max_bytes) and nothing of it is parsed as SQL.
  v1::ExecuteRequest big;
  big.set_sql("SELECT length($1::text)");
  big.add_params()->set_text_value("'); SELECT pg_advisory_lock(1); --" +
                                   std::string(1 << 20, 'y'));
  const absl::Status outcome = RunRequest(*engine, big, AccessOf(writer), &r);
  ASSERT_TRUE(outcome.ok()) << outcome;
  EXPECT_EQ(FirstText(r), "");  // an int: not text
  ASSERT_EQ(r.result().rows_size(), 1);
  EXPECT_EQ(r.result().rows(0).values(0).int64_value(), (1 << 20) + 34);

  // Too many statements in a transaction.
  v1::ExecuteTransactionRequest tx;
  for (int i = 0; i < 3; ++i) tx.add_statements()->set_sql("SELECT 1");
  v1::ExecuteTransactionResponse tr;
  work = engine->ExecuteTransaction(
      tx, engine->EffectiveDeadline(absl::Now() + absl::Seconds(10)), "test", &tr,
      [](absl::Status) {}, AccessOf(writer));
  EXPECT_EQ(work.status().code(), absl::StatusCode::kInvalidArgument) << work.status();

  // Both pools still answer, and no backend is left busy or in a transaction.
  EXPECT_TRUE(Run(*engine, "SELECT 1", AccessOf(writer)).ok());
  EXPECT_TRUE(Run(*engine, "SELECT 1", AccessOf(reader)).ok());
  EXPECT_EQ(BusyBackendsOf("'eng_read', 'eng_write'"), "0");
}

// A write alone (Execute) whose RETURNING rows go over max_rows is answered
// RESOURCE_EXHAUSTED and not kept: such a write (one that answers with rows)
// runs in a transaction of its own, which the sink's refusal rolls back. In
// an implicit transaction the Sync committed it whatever the answer said.
TEST_F(QueryEngineTest, AWriteWhoseAnswerIsOverTheLimitIsNotKept) {
  auto engine = MakeEngine(R"("maxRows": 5)");
  const auth::Principal writer = Principal("eng_write", true);
  absl::Status s = Run(*engine, "UPDATE accounts SET owner = 'over' RETURNING *", AccessOf(writer));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(*pg_->QueryValue("engine", "SELECT count(*) FROM accounts WHERE owner = 'over'"), "0");
  // Through a data-modifying CTE, likewise.
  s = Run(*engine, "WITH u AS (UPDATE accounts SET owner = 'cte' RETURNING id) SELECT * FROM u",
          AccessOf(writer));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(*pg_->QueryValue("engine", "SELECT count(*) FROM accounts WHERE owner = 'cte'"), "0");
  // Within the limit: answered and kept.
  v1::ExecuteResponse r;
  s = Run(*engine, "UPDATE accounts SET owner = 'under' WHERE id <= 3 RETURNING id",
          AccessOf(writer), &r);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(r.result().rows_size(), 3);
  EXPECT_EQ(*pg_->QueryValue("engine", "SELECT count(*) FROM accounts WHERE owner = 'under'"), "3");
  // Streamed (ExecuteStream): the rows already sent are not taken back, but
  // the write is.
  struct Chunks : ChunkWriter {
    bool Write(std::unique_ptr<v1::ExecuteStreamResponse> chunk) override {
      rows += chunk->rows_size();
      return true;
    }
    int rows = 0;
  } chunks;
  v1::ExecuteRequest streamed;
  streamed.set_sql("UPDATE accounts SET owner = 'streamed' RETURNING id");
  streamed.set_chunk_rows(2);
  const absl::Status outcome =
      Await(*engine, absl::Seconds(10), [&](absl::Time deadline, QueryEngine::Done done) {
        return engine->ExecuteStream(streamed, deadline, "test", &chunks, std::move(done),
                                     AccessOf(writer));
      });
  EXPECT_EQ(outcome.code(), absl::StatusCode::kResourceExhausted) << outcome;
  EXPECT_LE(chunks.rows, 5);
  EXPECT_EQ(*pg_->QueryValue("engine", "SELECT count(*) FROM accounts WHERE owner = 'streamed'"),
            "0");
  // Nothing left open on the connections.
  EXPECT_EQ(BusyBackendsOf("'eng_write'"), "0");
  ASSERT_TRUE(pg_->Exec("engine", "UPDATE accounts SET owner = 'owner-' || id").ok());
}

// A sequence's session state outlives the call: after one caller's nextval
// (or a serial column's default) on a pooled connection, lastval() or
// currval('seq') would read it for the next caller of that connection. So
// both are refused, in every scope (a transaction runs on a pooled
// connection too); INSERT ... RETURNING and nextval give the value.
TEST_F(QueryEngineTest, ASequenceValueDoesNotReachTheNextCaller) {
  ASSERT_TRUE(pg_->Exec("engine",
                        "CREATE SEQUENCE IF NOT EXISTS eng_seq;"
                        "GRANT USAGE, SELECT, UPDATE ON SEQUENCE eng_seq TO eng_write;")
                  .ok());
  auto engine = MakeEngine("", /*pool_size=*/1);
  auth::Principal first = Principal("eng_write", true);
  first.name = "first";
  auth::Principal second = Principal("eng_write", true);
  second.name = "second";
  ASSERT_TRUE(Run(*engine, "SELECT nextval('eng_seq')", AccessOf(first)).ok());
  v1::ExecuteResponse r;
  absl::Status s = Run(*engine, "SELECT lastval()::text", AccessOf(second), &r);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument)
      << "the second caller read " << FirstText(r);
  EXPECT_TRUE(absl::StrContains(s.message(), "may be another caller's")) << s;
  s = Run(*engine, "SELECT currval('eng_seq')::text", AccessOf(second), &r);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument)
      << "the second caller read " << FirstText(r);
  s = Run(*engine, "SELECT pg_catalog.currval('eng_seq')::text", AccessOf(second), &r);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument)
      << "the second caller read " << FirstText(r);
  // nextval itself gives the value.
  EXPECT_TRUE(Run(*engine, "SELECT nextval('eng_seq')", AccessOf(second)).ok());
}

// Statements are prepared once per pooled connection; a table's shape
// changed since (a migration, another caller's ALTER TABLE) must not fail
// every later caller of a statement prepared before.
TEST_F(QueryEngineTest, AStatementPreparedBeforeATableChangedShapeStillAnswers) {
  ASSERT_TRUE(pg_->Exec("engine",
                        "DROP TABLE IF EXISTS eng_shape;"
                        "CREATE TABLE eng_shape (a int); INSERT INTO eng_shape VALUES (1);"
                        "GRANT SELECT ON eng_shape TO eng_write;")
                  .ok());
  auto engine = MakeEngine("", /*pool_size=*/1);
  const auth::Principal writer = Principal("eng_write", true);
  v1::ExecuteResponse r;
  ASSERT_TRUE(Run(*engine, "SELECT * FROM eng_shape", AccessOf(writer), &r).ok());
  EXPECT_EQ(r.result().columns_size(), 1);
  ASSERT_TRUE(pg_->Exec("engine", "ALTER TABLE eng_shape ADD COLUMN b text DEFAULT 'x'").ok());
  // The first call meets PostgreSQL's refusal of the stale plan before the
  // statement runs: ABORTED, to retry. Later calls prepare it again (before:
  // every later call on that connection failed the same way).
  absl::Status s = Run(*engine, "SELECT * FROM eng_shape", AccessOf(writer), &r);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_NE(s.message().find("retry"), std::string::npos) << s;
  for (int i = 0; i < 2; ++i) {
    r.Clear();
    s = Run(*engine, "SELECT * FROM eng_shape", AccessOf(writer), &r);
    ASSERT_TRUE(s.ok()) << "call " << i << ": " << s;
    EXPECT_EQ(r.result().columns_size(), 2);
  }
  // The stale one was deallocated: one prepared statement of that text.
  r.Clear();
  ASSERT_TRUE(Run(*engine,
                  "SELECT count(*)::text FROM pg_prepared_statements "
                  "WHERE statement = 'SELECT * FROM eng_shape'",
                  AccessOf(writer), &r)
                  .ok());
  EXPECT_EQ(FirstText(r), "1");
  // The same inside a transaction.
  ASSERT_TRUE(pg_->Exec("engine", "ALTER TABLE eng_shape ADD COLUMN c int").ok());
  for (absl::StatusCode want : {absl::StatusCode::kAborted, absl::StatusCode::kOk}) {
    v1::ExecuteTransactionRequest tx;
    tx.add_statements()->set_sql("SELECT * FROM eng_shape");
    const absl::Status outcome = RunTransaction(*engine, tx, AccessOf(writer));
    EXPECT_EQ(outcome.code(), want) << outcome;
  }
  // No backend is left inside a transaction.
  EXPECT_EQ(BusyBackendsOf("'eng_write'"), "0");
}

// PostgreSQL quotes the offending value in some errors; a caller's answer
// stays bounded (security.md: 2 KiB) however long the value.
TEST_F(QueryEngineTest, ErrorMessagesQuotingHugeValuesAreBounded) {
  auto engine = MakeEngine();
  const auth::Principal writer = Principal("eng_write", true);
  for (const char* sql : {"SELECT repeat('x', 200000)::int",
                          "SELECT ('{\"a\": ' || repeat('1', 200000) || 'x}')::jsonb",
                          "SELECT to_date(repeat('9', 200000), 'YYYY')"}) {
    absl::Status s = Run(*engine, sql, AccessOf(writer));
    EXPECT_FALSE(s.ok()) << sql;
    EXPECT_LE(s.message().size(), 2048u) << sql << ": " << s.message().substr(0, 200);
    EXPECT_NE(s.message().find("SQLSTATE"), std::string::npos) << s.message().substr(0, 300);
  }
}

// Nesting that would exhaust a parser's stack: in the text, refused before
// parsing; in a parameter (never parsed here), PostgreSQL's own stack limit
// answers (54001). The process survives and the pool still answers.
TEST_F(QueryEngineTest, DeeplyNestedTextsAndParametersAreRefusedNotCrashing) {
  auto engine = MakeEngine();
  const auth::Principal writer = Principal("eng_write", true);
  for (const std::string& sql :
       {"SELECT " + std::string(20000, '(') + "1" + std::string(20000, ')'),
        "SELECT 1" +
            [] {
              std::string s;
              for (int i = 0; i < 15000; ++i) s += "+1";
              return s;
            }(),
        "SELECT 1" +
            [] {
              std::string s;
              for (int i = 0; i < 7000; ++i) s += "::int";
              return s;
            }()}) {
    absl::Status s = Run(*engine, sql, AccessOf(writer));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s.message().substr(0, 200);
    EXPECT_NE(s.message().find("nested too deeply"), std::string::npos)
        << s.message().substr(0, 200);
  }
  v1::ExecuteRequest deep;
  deep.set_sql("SELECT jsonb_typeof($1::jsonb)");
  deep.add_params()->set_text_value(std::string(1000000, '[') + std::string(1000000, ']'));
  v1::ExecuteResponse r;
  const absl::Status outcome = RunRequest(*engine, deep, AccessOf(writer), &r, absl::Seconds(20));
  EXPECT_FALSE(outcome.ok());
  EXPECT_NE(outcome.message().find("54001"), std::string::npos) << outcome;
  EXPECT_TRUE(Run(*engine, "SELECT 1", AccessOf(writer)).ok());
}

TEST_F(QueryEngineTest, DeadlinesAreCappedAndStatisticsShowNoLiterals) {
  auto engine = MakeEngine(R"("maxTimeoutMs": 300, "defaultTimeoutMs": 200)");
  const auth::Principal writer = Principal("eng_write", true);
  absl::Status s = Run(*engine, "SELECT pg_sleep(3)", AccessOf(writer), nullptr, absl::Seconds(60));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;

  ASSERT_TRUE(Run(*engine,
                  "SELECT owner FROM accounts WHERE owner = E'marker\\x41' OR owner = "
                  "$q$marker2$q$ OR id = 987654",
                  AccessOf(writer))
                  .ok());
  v1::GetStatementStatsResponse stats;
  ASSERT_TRUE(engine->GetStatementStats({}, &stats).ok());
  for (const auto& st : stats.statements()) {
    EXPECT_EQ(st.statement().find("marker"), std::string::npos) << st.statement();
    EXPECT_EQ(st.statement().find("987654"), std::string::npos) << st.statement();
    EXPECT_EQ(st.fingerprint().size(), 16u);
  }
}

TEST_F(QueryEngineTest, APrivilegedRoleIsRefusedUnlessAllowed) {
  v1::QueryServiceConfig c;
  c.mutable_server()->mutable_tls()->set_plaintext(true);
  v1::DatabaseConfig* db = c.add_databases();
  db->set_name("engine");
  db->set_dsn(pg_->Dsn("engine"));  // the superuser
  db->mutable_pool()->set_min_idle(0);
  absl::StatusOr<v1::QueryServiceConfig> done = FinalizeQueryConfig(c);
  ASSERT_TRUE(done.ok());
  {
    QueryEngine engine(*done);
    absl::Status s = engine.VerifyRoles(absl::Now() + absl::Seconds(10));
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find("superuser"), std::string::npos) << s;
    // And the pool refuses every connection it would make.
    engine.Start();
    s = Run(engine, "SELECT 1", CallAccess{});
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  }
  done->mutable_databases(0)->set_allow_privileged_role(true);
  QueryEngine allowed(*done);
  EXPECT_TRUE(allowed.VerifyRoles(absl::Now() + absl::Seconds(10)).ok());
  allowed.Start();
  EXPECT_TRUE(Run(allowed, "SELECT 1", CallAccess{}).ok());
}

}  // namespace
}  // namespace poolside::query
