// Security of the query and ingest services against real binaries, PostgreSQL
// and gRPC on loopback: the authorization matrix of every RPC, read-only
// principals inside read-only transactions, SQL injection through parameters,
// TLS and mutual TLS handshakes, per-principal rate limits, and secrets kept
// out of the logs. Certificates are made at test time with the openssl CLI.

#include <fstream>
#include <functional>
#include <future>
#include <initializer_list>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/auth/token_hash.h"
#include "common/server/channel.h"
#include "common/server/status.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/ingest.grpc.pb.h"
#include "proto/poolside/v1/query.grpc.pb.h"
#include "tests/fixtures/files.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/service_process.h"
#include "tests/fixtures/subprocess.h"
#include "tests/fixtures/values.h"

namespace poolside::testing {
namespace {

constexpr char kDb[] = "security";
// The DSN carries a password (trust authentication ignores it) so the test
// can check that it never reaches the logs.
constexpr char kDsnPassword[] = "dsn-Secret-4711";

struct Token {
  const char* name;
  const char* token;
};
constexpr Token kReader{"reader", "tok-reader-5f1c2a"};     // read, named queries only
constexpr Token kAnalyst{"analyst", "tok-analyst-77b0e1"};  // read + sql
constexpr Token kWriter{"writer", "tok-writer-c3d9f4"};     // read, write, sql
constexpr Token kLoader{"loader", "tok-loader-0a8e6b"};     // ingest into events
constexpr Token kAdmin{"admin", "tok-admin-91fe3c"};        // admin
constexpr Token kLimited{"limited", "tok-limited-4b2d7a"};  // read + sql, 1 call/s, burst 2
const Token* const kAllTokens[] = {&kReader, &kAnalyst, &kWriter, &kLoader, &kAdmin, &kLimited};

v1::PrincipalConfig* AddPrincipal(v1::AuthConfig* auth, const Token& t,
                                  std::vector<std::string> roles) {
  v1::PrincipalConfig* p = auth->add_principals();
  p->set_name(t.name);
  p->set_token_sha256(auth::Sha256Hex(t.token));
  for (auto& r : roles) p->add_roles(r);
  p->add_databases(kDb);
  return p;
}

v1::AuthConfig Principals() {
  v1::AuthConfig auth;
  AddPrincipal(&auth, kReader, {"read"});
  AddPrincipal(&auth, kAnalyst, {"read", "sql"});
  AddPrincipal(&auth, kWriter, {"read", "write", "sql"});
  v1::PrincipalConfig* loader = AddPrincipal(&auth, kLoader, {"ingest"});
  v1::IngestTables* grant = loader->add_ingest_tables();
  grant->set_database(kDb);
  grant->add_tables("events");
  AddPrincipal(&auth, kAdmin, {"admin"});
  v1::PrincipalConfig* limited = AddPrincipal(&auth, kLimited, {"read", "sql"});
  limited->mutable_limits()->set_requests_per_second(1);
  limited->mutable_limits()->set_burst(2);
  return auth;
}

std::string Dsn() { return SharedPostgres().Dsn(kDb) + " password=" + kDsnPassword; }

v1::DatabaseConfig Database() {
  v1::DatabaseConfig db;
  db.set_name(kDb);
  db.set_dsn(Dsn());
  db.mutable_pool()->set_max_size(4);
  db.mutable_pool()->set_min_idle(1);
  return db;
}

v1::QueryServiceConfig QueryConfig() {
  v1::QueryServiceConfig c;
  *c.add_databases() = Database();
  *c.mutable_auth() = Principals();
  AddNamedQuery(&c, "note_by_id", "SELECT body FROM notes WHERE id = $1", {{"id", "int64"}});
  AddNamedQuery(&c, "add_note", "INSERT INTO notes (id, body) VALUES ($1, $2)",
                {{"", "int64"}, {"", "text"}});
  return c;
}

absl::StatusOr<std::unique_ptr<ServiceProcess>> StartQuery(v1::QueryServiceConfig c) {
  return StartOnLoopback("services/query/query_server", c, {"--log_level=debug"});
}

absl::StatusOr<std::unique_ptr<ServiceProcess>> StartIngest() {
  v1::IngestServiceConfig c;
  *c.add_databases() = Database();
  AddTables(&c, kDb, {"events", "notes"});
  *c.mutable_auth() = Principals();
  return StartOnLoopback("services/ingest/ingest_server", c, {"--log_level=debug"});
}

void WithToken(grpc::ClientContext* ctx, const Token* t) {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  if (t != nullptr) ctx->AddMetadata("authorization", absl::StrCat("Bearer ", t->token));
}

// An Execute on kDb: `sql`, or with `named` the named query of that name.
v1::ExecuteRequest Statement(const std::string& sql, std::initializer_list<v1::Value> params = {},
                             bool named = false) {
  v1::ExecuteRequest req;
  req.set_database(kDb);
  if (named) {
    req.set_named_query(sql);
  } else {
    req.set_sql(sql);
  }
  for (const v1::Value& v : params) *req.add_params() = v;
  return req;
}

v1::ExecuteRequest NamedQuery(const std::string& name, std::initializer_list<v1::Value> params) {
  return Statement(name, params, /*named=*/true);
}

// `req` called as `t`'s principal; its response in `resp` if given.
grpc::Status ExecuteAs(v1::QueryService::Stub& query, const Token& t, const v1::ExecuteRequest& req,
                       v1::ExecuteResponse* resp = nullptr) {
  grpc::ClientContext ctx;
  WithToken(&ctx, &t);
  v1::ExecuteResponse ignored;
  return query.Execute(&ctx, req, resp != nullptr ? resp : &ignored);
}

// Shared by the tests: one database, one query and one ingest server.
class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(SharedPostgres()
                    .CreateDatabase(kDb,
                                    "CREATE TABLE notes (id bigint PRIMARY KEY, body text);"
                                    "CREATE TABLE events (id bigint PRIMARY KEY, kind text);"
                                    "CREATE TABLE accounts (id bigint PRIMARY KEY);"
                                    "CREATE SEQUENCE poolside_security_seq;"
                                    "INSERT INTO notes VALUES (1, 'first');"
                                    "CREATE EXTENSION hypopg;")
                    .ok());
    auto query = StartQuery(QueryConfig());
    ASSERT_TRUE(query.ok()) << query.status();
    query_ = query->release();
    auto ingest = StartIngest();
    ASSERT_TRUE(ingest.ok()) << ingest.status();
    ingest_ = ingest->release();
  }
  static void TearDownTestSuite() {
    if (query_ != nullptr) testing::Terminate(*query_).IgnoreError();
    if (ingest_ != nullptr) testing::Terminate(*ingest_).IgnoreError();
    delete query_;
    delete ingest_;
  }

  static std::unique_ptr<v1::QueryService::Stub> QueryStub() {
    auto channel = Connect(query_->address());
    EXPECT_TRUE(channel.ok()) << channel.status();
    return v1::QueryService::NewStub(*channel);
  }
  static std::unique_ptr<v1::IngestService::Stub> IngestStub() {
    auto channel = Connect(ingest_->address());
    EXPECT_TRUE(channel.ok()) << channel.status();
    return v1::IngestService::NewStub(*channel);
  }

  static ServiceProcess* query_;
  static ServiceProcess* ingest_;
};
ServiceProcess* SecurityTest::query_ = nullptr;
ServiceProcess* SecurityTest::ingest_ = nullptr;

// One RPC called as a given principal (null: no token; &bad: unknown token).
using Rpc = std::function<grpc::Status(const Token*)>;

// A unary RPC of `stub` (its method `call`) with `request`.
template <typename Stub, typename Request, typename Response>
Rpc Unary(Stub* stub, grpc::Status (Stub::*call)(grpc::ClientContext*, const Request&, Response*),
          Request request) {
  return [stub, call, request = std::move(request)](const Token* t) {
    grpc::ClientContext ctx;
    WithToken(&ctx, t);
    Response response;
    return (stub->*call)(&ctx, request, &response);
  };
}

struct Case {
  std::string rpc;
  Rpc call;
  const Token* wrong_role;
  const Token* right_role;
};

TEST_F(SecurityTest, EveryRpcByTokenAndRole) {
  auto query = QueryStub();
  auto ingest = IngestStub();
  static constexpr Token kBad{"bad", "tok-nobody-has-this"};
  std::vector<Case> cases;
  using QueryServiceStub = v1::QueryService::Stub;
  const v1::ExecuteRequest raw = Statement("SELECT count(*) FROM notes");
  const v1::ExecuteRequest named = NamedQuery("note_by_id", {Int(1)});
  cases.push_back({"Execute (raw SQL)", Unary(query.get(), &QueryServiceStub::Execute, raw),
                   &kReader, &kAnalyst});
  cases.push_back({"Execute (named query)", Unary(query.get(), &QueryServiceStub::Execute, named),
                   &kAdmin, &kReader});
  cases.push_back({"ExecuteStream",
                   [&](const Token* t) {
                     grpc::ClientContext ctx;
                     WithToken(&ctx, t);
                     auto reader = query->ExecuteStream(&ctx, raw);
                     v1::ExecuteStreamResponse chunk;
                     while (reader->Read(&chunk)) {
                     }
                     return reader->Finish();
                   },
                   &kReader, &kAnalyst});
  v1::ExecuteTransactionRequest transaction;
  transaction.set_database(kDb);
  transaction.add_statements()->set_sql("SELECT 1");
  cases.push_back({"ExecuteTransaction",
                   Unary(query.get(), &QueryServiceStub::ExecuteTransaction, transaction), &kLoader,
                   &kAnalyst});
  cases.push_back({"GetPoolStats",
                   Unary(query.get(), &QueryServiceStub::GetPoolStats, v1::GetPoolStatsRequest()),
                   &kWriter, &kAdmin});
  cases.push_back(
      {"GetStatementStats",
       Unary(query.get(), &QueryServiceStub::GetStatementStats, v1::GetStatementStatsRequest()),
       &kAnalyst, &kAdmin});
  cases.push_back(
      {"CheckDatabases",
       Unary(query.get(), &QueryServiceStub::CheckDatabases, v1::CheckDatabasesRequest()), &kReader,
       &kAdmin});
  cases.push_back(
      {"GetIndexAdvice",
       Unary(query.get(), &QueryServiceStub::GetIndexAdvice, v1::GetIndexAdviceRequest()), &kWriter,
       &kAdmin});
  v1::CreateIndexRequest create_index;
  create_index.mutable_index()->set_table("notes");
  create_index.mutable_index()->add_columns("body");
  cases.push_back({"CreateIndex", Unary(query.get(), &QueryServiceStub::CreateIndex, create_index),
                   &kWriter, nullptr});
  int next_id = 1000;
  auto write_request = [&](const std::string& table) {
    v1::WriteRequest w;
    w.set_database(kDb);
    w.set_table(table);
    w.add_columns("id");
    *w.add_rows()->add_values() = Int(next_id++);
    return w;
  };
  cases.push_back({"Ingest Write",
                   [&](const Token* t) {
                     grpc::ClientContext ctx;
                     WithToken(&ctx, t);
                     v1::WriteResponse resp;
                     return ingest->Write(&ctx, write_request("events"), &resp);
                   },
                   &kWriter, &kLoader});
  cases.push_back({"Ingest Write (table not granted)",
                   [&](const Token* t) {
                     grpc::ClientContext ctx;
                     WithToken(&ctx, t);
                     v1::WriteResponse resp;
                     grpc::Status s = ingest->Write(&ctx, write_request("notes"), &resp);
                     // Nobody here may write notes through ingest: the right
                     // role for this case is "denied" too, checked below.
                     return s;
                   },
                   &kLoader, nullptr});
  cases.push_back({"Ingest WriteStream",
                   [&](const Token* t) {
                     grpc::ClientContext ctx;
                     WithToken(&ctx, t);
                     v1::WriteStreamResponse resp;
                     auto writer = ingest->WriteStream(&ctx, &resp);
                     writer->Write(write_request("events"));
                     writer->WritesDone();
                     return writer->Finish();
                   },
                   &kAnalyst, &kLoader});
  cases.push_back({"Ingest Channel",
                   [&](const Token* t) {
                     grpc::ClientContext ctx;
                     WithToken(&ctx, t);
                     auto stream = ingest->Channel(&ctx);
                     v1::ChannelRequest req;
                     req.set_sequence(1);
                     *req.mutable_write() = write_request("events");
                     stream->Write(req);
                     stream->WritesDone();
                     v1::ChannelResponse ack;
                     grpc::Status per_request = grpc::Status::OK;
                     while (stream->Read(&ack)) {
                       if (ack.code() != 0) {
                         per_request =
                             grpc::Status(static_cast<grpc::StatusCode>(ack.code()), ack.message());
                       }
                     }
                     grpc::Status s = stream->Finish();
                     return s.ok() ? per_request : s;
                   },
                   &kAdmin, &kLoader});
  cases.push_back(
      {"Ingest GetStats",
       Unary(ingest.get(), &v1::IngestService::Stub::GetStats, v1::GetIngestStatsRequest()),
       &kLoader, &kAdmin});

  for (const Case& c : cases) {
    SCOPED_TRACE(c.rpc);
    grpc::Status none = c.call(nullptr);
    EXPECT_EQ(none.error_code(), grpc::StatusCode::UNAUTHENTICATED) << none.error_message();
    grpc::Status bad = c.call(&kBad);
    EXPECT_EQ(bad.error_code(), grpc::StatusCode::UNAUTHENTICATED) << bad.error_message();
    EXPECT_EQ(bad.error_message().find(kBad.token), std::string::npos);
    grpc::Status wrong = c.call(c.wrong_role);
    EXPECT_EQ(wrong.error_code(), grpc::StatusCode::PERMISSION_DENIED) << wrong.error_message();
    EXPECT_NE(wrong.error_message().find(absl::StrCat("\"", c.wrong_role->name, "\"")),
              std::string::npos)
        << wrong.error_message();
    if (c.right_role != nullptr) {
      grpc::Status right = c.call(c.right_role);
      EXPECT_TRUE(right.ok()) << right.error_code() << ": " << right.error_message();
    }
  }
}

TEST_F(SecurityTest, ReadOnlyPrincipalsWriteNothingEvenWithRawSql) {
  auto query = QueryStub();
  auto run = [&](const Token& t, const std::string& sql) {
    return ExecuteAs(*query, t, Statement(sql));
  };
  // Writes the parser sees are refused before they run, hidden in WITH too.
  grpc::Status insert = run(kAnalyst, "INSERT INTO accounts VALUES (1)");
  EXPECT_EQ(insert.error_code(), grpc::StatusCode::PERMISSION_DENIED) << insert.error_message();
  EXPECT_NE(insert.error_message().find("read-only principal"), std::string::npos)
      << insert.error_message();
  grpc::Status hidden =
      run(kAnalyst, "WITH x AS (INSERT INTO accounts VALUES (2) RETURNING id) SELECT * FROM x");
  EXPECT_EQ(hidden.error_code(), grpc::StatusCode::PERMISSION_DENIED) << hidden.error_message();
  // A write the parser cannot see meets the read-only transaction: SQLSTATE
  // 25006 read_only_sql_transaction.
  grpc::Status nextval = run(kAnalyst, "SELECT nextval('poolside_security_seq')");
  EXPECT_NE(nextval.error_message().find("25006"), std::string::npos) << nextval.error_message();
  // Ways out of the read-only transaction are refused before they run, for
  // every caller.
  for (const char* escape : {"COMMIT", ";COMMIT", "SET TRANSACTION READ WRITE",
                             "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"}) {
    grpc::Status s = run(kAnalyst, escape);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << escape << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    WithToken(&ctx, &kAnalyst);
    auto reader =
        query->ExecuteStream(&ctx, Statement("INSERT INTO accounts VALUES (3) RETURNING id"));
    v1::ExecuteStreamResponse chunk;
    while (reader->Read(&chunk)) {
    }
    grpc::Status s = reader->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    WithToken(&ctx, &kAnalyst);
    v1::ExecuteTransactionRequest req;
    req.set_database(kDb);
    req.add_statements()->set_sql("SELECT 1");
    req.add_statements()->set_sql("INSERT INTO accounts VALUES (4)");
    v1::ExecuteTransactionResponse resp;
    grpc::Status s = query->ExecuteTransaction(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  }
  // A named query that writes, called by a read-only principal, is refused too.
  grpc::Status named_write =
      ExecuteAs(*query, kReader, NamedQuery("add_note", {Int(50), Text("from a reader")}));
  EXPECT_EQ(named_write.error_code(), grpc::StatusCode::PERMISSION_DENIED)
      << named_write.error_message();
  absl::StatusOr<std::string> count =
      SharedPostgres().QueryValue(kDb, "SELECT count(*) FROM accounts");
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count, "0");
  // The writer's same INSERT goes through.
  EXPECT_TRUE(run(kWriter, "INSERT INTO accounts VALUES (1)").ok());
}

TEST_F(SecurityTest, InjectionThroughParametersIsStoredVerbatim) {
  auto query = QueryStub();
  const std::vector<std::string> payloads = {
      "'); DROP TABLE notes; --",         "1; DELETE FROM notes",
      "Robert'); DROP TABLE students;--", "' OR '1'='1",
      "$1 $$ \\x00 \\' \" ; -- /* */",
  };
  int64_t id = 100;
  for (const std::string& p : payloads) {
    grpc::Status s =
        ExecuteAs(*query, kWriter,
                  Statement("INSERT INTO notes (id, body) VALUES ($1, $2)", {Int(++id), Text(p)}));
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  id = 100;
  for (const std::string& p : payloads) {
    // Read back through the named query: the value is returned as it was sent.
    v1::ExecuteResponse resp;
    grpc::Status s = ExecuteAs(*query, kReader, NamedQuery("note_by_id", {Int(++id)}), &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(resp.result().rows_size(), 1);
    EXPECT_EQ(resp.result().rows(0).values(0).text_value(), p);
  }
  // An injection attempt as a named query's parameter is just a value, and
  // the wrong type is refused before anything runs.
  grpc::Status s = ExecuteAs(*query, kReader, NamedQuery("note_by_id", {Text("1 OR 1=1")}));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  absl::StatusOr<std::string> count =
      SharedPostgres().QueryValue(kDb, "SELECT count(*) FROM notes");
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count, absl::StrCat(1 + payloads.size()));
}

TEST_F(SecurityTest, RateLimitedPrincipalDoesNotSlowOthers) {
  auto query = QueryStub();
  auto select = [&](const Token& t) { return ExecuteAs(*query, t, Statement("SELECT 1")); };
  // Burst 2 at 1 call/s: within this test's few milliseconds a third call is
  // over budget (a refill of a whole token would take a second).
  int exhausted = 0;
  grpc::Status last;
  for (int i = 0; i < 5; ++i) {
    grpc::Status s = select(kLimited);
    if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      ++exhausted;
      last = s;
    }
    // Another principal's calls proceed meanwhile.
    grpc::Status other = select(kAnalyst);
    EXPECT_TRUE(other.ok()) << other.error_message();
  }
  EXPECT_GE(exhausted, 2);
  std::optional<absl::Duration> retry = server::RetryDelayOf(last);
  ASSERT_TRUE(retry.has_value()) << "no google.rpc.RetryInfo in " << last.error_message();
  EXPECT_GT(*retry, absl::ZeroDuration());
  EXPECT_LE(*retry, absl::Seconds(1));
  EXPECT_NE(last.error_message().find("rate limit"), std::string::npos) << last.error_message();
}

TEST(SecurityConcurrencyTest, ANoisyPrincipalHoldsAtMostItsShareOfThePool) {
  PostgresCluster& pg = SharedPostgres();
  pg.CreateDatabase(kDb).IgnoreError();  // shared with SecurityTest
  v1::QueryServiceConfig c = QueryConfig();
  c.mutable_databases(0)->mutable_pool()->set_max_size(3);
  for (v1::PrincipalConfig& p : *c.mutable_auth()->mutable_principals()) {
    if (p.name() == kAnalyst.name) p.mutable_limits()->set_max_concurrent(2);
  }
  auto server = StartQuery(c);
  ASSERT_TRUE(server.ok()) << server.status();
  auto channel = Connect((*server)->address());
  ASSERT_TRUE(channel.ok());
  auto stub = v1::QueryService::NewStub(*channel);
  v1::ExecuteRequest sleep;
  sleep.set_database(kDb);
  sleep.set_sql("SELECT pg_sleep(60)");
  // Two slow calls of the noisy principal: its whole allowance. (A read-only
  // principal's statements each run in a transaction of their own, so each
  // holds a connection: two sleeping backends.)
  struct Slow {
    grpc::ClientContext ctx;
    v1::ExecuteResponse resp;
    std::promise<grpc::Status> done;
  };
  std::vector<std::unique_ptr<Slow>> slow;
  for (int i = 0; i < 2; ++i) {
    auto call = std::make_unique<Slow>();
    WithToken(&call->ctx, &kAnalyst);
    call->ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(90)));
    Slow* raw = call.get();
    stub->async()->Execute(&raw->ctx, &sleep, &raw->resp,
                           [raw](grpc::Status st) { raw->done.set_value(std::move(st)); });
    slow.push_back(std::move(call));
  }
  absl::StatusOr<std::string> sleeping;
  const bool both = testing::WaitFor(
      [&] {
        sleeping = pg.QueryValue(kDb,
                                 "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                                 "AND query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()");
        return sleeping.ok() && *sleeping == "2";
      },
      absl::Seconds(30));
  ASSERT_TRUE(both) << (sleeping.ok() ? *sleeping : sleeping.status().ToString());
  // A third is refused at once, with a retry hint ...
  grpc::ClientContext ctx;
  WithToken(&ctx, &kAnalyst);
  v1::ExecuteResponse resp;
  grpc::Status third = stub->Execute(&ctx, sleep, &resp);
  EXPECT_EQ(third.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << third.error_message();
  EXPECT_TRUE(server::RetryDelayOf(third).has_value());
  // ... and another principal still gets a connection.
  grpc::ClientContext other_ctx;
  WithToken(&other_ctx, &kWriter);
  v1::ExecuteRequest quick;
  quick.set_database(kDb);
  quick.set_sql("SELECT 1");
  grpc::Status other = stub->Execute(&other_ctx, quick, &resp);
  EXPECT_TRUE(other.ok()) << other.error_message();
  for (auto& call : slow) call->ctx.TryCancel();
  for (auto& call : slow) {
    EXPECT_EQ(call->done.get_future().get().error_code(), grpc::StatusCode::CANCELLED);
  }
  EXPECT_EQ(testing::Terminate(**server).value_or(-1), 0);
}

TEST_F(SecurityTest, TokensAndDsnPasswordNeverReachTheLogs) {
  // Failed and successful calls with every token have run in this suite (and
  // once more here); the service logs at the most verbose level it has.
  auto query = QueryStub();
  for (const Token* t : kAllTokens) {
    grpc::ClientContext ctx;
    WithToken(&ctx, t);
    v1::ExecuteRequest req;
    req.set_database(kDb);
    req.set_sql("SELECT nonexistent_column FROM notes");
    v1::ExecuteResponse resp;
    query->Execute(&ctx, req, &resp);
  }
  for (ServiceProcess* p : {query_, ingest_}) {
    const std::string log = ReadFile(p->log_path()).value_or("");
    ASSERT_FALSE(log.empty()) << p->log_path();
    EXPECT_EQ(log.find(kDsnPassword), std::string::npos) << "DSN password in " << p->log_path();
    for (const Token* t : kAllTokens) {
      EXPECT_EQ(log.find(t->token), std::string::npos)
          << t->name << "'s token in " << p->log_path();
      EXPECT_EQ(log.find(auth::Sha256Hex(t->token)), std::string::npos)
          << t->name << "'s token hash in " << p->log_path();
    }
  }
}

TEST(SecurityLimitsTest, OversizedRequestsAndDsnSslSettings) {
  PostgresCluster& pg = SharedPostgres();
  pg.CreateDatabase(kDb).IgnoreError();  // shared with SecurityTest
  v1::QueryServiceConfig c;
  *c.add_databases() = Database();
  // The test cluster serves no SSL: a DSN that requires it must fail to
  // connect, which shows sslmode reaches libpq unchanged.
  v1::DatabaseConfig* ssl =
      AddDatabase(&c, "needs_ssl", SharedPostgres().Dsn(kDb) + " sslmode=require");
  ssl->mutable_pool()->set_min_idle(0);
  c.set_default_database(kDb);
  c.mutable_auth()->set_disabled(true);
  c.mutable_limits()->set_max_request_bytes(64 << 10);
  c.mutable_limits()->set_max_sql_bytes(1024);
  c.mutable_limits()->set_max_params(4);
  auto server = StartQuery(c);
  ASSERT_TRUE(server.ok()) << server.status();
  auto channel = Connect((*server)->address());
  ASSERT_TRUE(channel.ok());
  auto stub = v1::QueryService::NewStub(*channel);
  auto call = [&](const v1::ExecuteRequest& req) {
    grpc::ClientContext ctx;
    WithToken(&ctx, nullptr);
    v1::ExecuteResponse resp;
    return stub->Execute(&ctx, req, &resp);
  };
  v1::ExecuteRequest big;
  big.set_sql("SELECT $1");
  *big.add_params() = Text(std::string(100 << 10, 'x'));
  EXPECT_EQ(call(big).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  v1::ExecuteRequest long_sql;
  long_sql.set_sql("SELECT 1 -- " + std::string(2000, 'x'));
  grpc::Status s = call(long_sql);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_LT(s.error_message().size(), 200u) << "the SQL is not echoed back";
  v1::ExecuteRequest many;
  many.set_sql("SELECT 1");
  for (int i = 0; i < 5; ++i) *many.add_params() = Int(i);
  EXPECT_EQ(call(many).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  v1::ExecuteRequest over_ssl;
  over_ssl.set_database("needs_ssl");
  over_ssl.set_sql("SELECT 1");
  grpc::Status refused = call(over_ssl);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.error_message();
  EXPECT_NE(refused.error_message().find("SSL"), std::string::npos) << refused.error_message();
  EXPECT_EQ(testing::Terminate(**server).value_or(-1), 0);
}

// ---- TLS ----

struct Pki {
  std::string dir;
  std::string ca_cert, ca_key, server_cert, server_key, client_cert, client_key;
  std::string other_ca_cert, other_ca_key;
};

absl::Status Openssl(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"openssl"};
  argv.insert(argv.end(), args.begin(), args.end());
  absl::StatusOr<testing::CommandResult> r = testing::RunCommand(argv);
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) {
    return absl::InternalError(absl::StrCat("openssl ", absl::StrJoin(args, " "),
                                            " failed (is the "
                                            "Debian openssl package installed? make deps): ",
                                            r->output));
  }
  return absl::OkStatus();
}

absl::Status MakeCa(const std::string& cert, const std::string& key, const std::string& cn) {
  return Openssl({"req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                  "-days", "2", "-subj", "/CN=" + cn, "-addext",
                  "basicConstraints=critical,CA:TRUE", "-addext",
                  "keyUsage=critical,keyCertSign,cRLSign"});
}

absl::Status MakeLeaf(const Pki& pki, const std::string& cert, const std::string& key,
                      const std::string& cn, const std::string& ext) {
  const std::string csr = cert + ".csr", extfile = cert + ".ext";
  std::ofstream(extfile) << ext << "\n";
  if (absl::Status s = Openssl({"req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
                                "-subj", "/CN=" + cn});
      !s.ok()) {
    return s;
  }
  return Openssl({"x509", "-req", "-in", csr, "-CA", pki.ca_cert, "-CAkey", pki.ca_key,
                  "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", extfile});
}

absl::StatusOr<Pki> MakePki() {
  Pki p;
  p.dir = testing::TestOutputDir();
  p.ca_cert = p.dir + "/ca.pem";
  p.ca_key = p.dir + "/ca.key";
  p.other_ca_cert = p.dir + "/other-ca.pem";
  p.other_ca_key = p.dir + "/other-ca.key";
  p.server_cert = p.dir + "/server.pem";
  p.server_key = p.dir + "/server.key";
  p.client_cert = p.dir + "/client.pem";
  p.client_key = p.dir + "/client.key";
  for (absl::Status s :
       {MakeCa(p.ca_cert, p.ca_key, "poolside test CA"),
        MakeCa(p.other_ca_cert, p.other_ca_key, "some other CA"),
        MakeLeaf(p, p.server_cert, p.server_key, "localhost",
                 "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
        MakeLeaf(p, p.client_cert, p.client_key, "query replica", "extendedKeyUsage=clientAuth")}) {
    if (!s.ok()) return s;
  }
  return p;
}

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    PostgresCluster& pg = SharedPostgres();
    pg.CreateDatabase(kDb).IgnoreError();  // shared with SecurityTest
    absl::StatusOr<Pki> pki = MakePki();
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = new Pki(*pki);
  }
  static void TearDownTestSuite() { delete pki_; }

  // A query server with TLS; `mutual`: client certificates required.
  std::unique_ptr<ServiceProcess> Start(bool mutual) {
    v1::QueryServiceConfig c = QueryConfig();
    v1::TlsConfig* tls = c.mutable_server()->mutable_tls();
    tls->set_cert_file(pki_->server_cert);
    tls->set_key_file(pki_->server_key);
    if (mutual) {
      tls->set_client_ca_file(pki_->ca_cert);
      tls->set_require_client_cert(true);
    }
    auto p = StartQuery(c);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? *std::move(p) : nullptr;
  }

  // Execute over a fresh channel with `tls`; the handshake's outcome shows in
  // the status.
  grpc::Status Call(const ServiceProcess& server, v1::ClientTlsConfig tls) {
    server::ChannelOptions o;
    o.target = server.address();
    o.tls = std::move(tls);
    o.bearer_token = kAnalyst.token;
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = server::CreateChannel(std::move(o));
    EXPECT_TRUE(channel.ok()) << channel.status();
    auto stub = v1::QueryService::NewStub(*channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::ExecuteRequest req;
    req.set_database(kDb);
    req.set_sql("SELECT 1");
    v1::ExecuteResponse resp;
    return stub->Execute(&ctx, req, &resp);
  }

  // A client's TLS settings that trust the CA `ca_file` and no other.
  static v1::ClientTlsConfig Trusting(const std::string& ca_file) {
    v1::ClientTlsConfig tls;
    tls.set_ca_file(ca_file);
    return tls;
  }

  static Pki* pki_;
};
Pki* TlsTest::pki_ = nullptr;

TEST_F(TlsTest, ClientVerifiesTheServerAgainstItsCa) {
  std::unique_ptr<ServiceProcess> server = Start(/*mutual=*/false);
  ASSERT_NE(server, nullptr);
  grpc::Status ok = Call(*server, Trusting(pki_->ca_cert));
  EXPECT_TRUE(ok.ok()) << ok.error_message();

  grpc::Status refused = Call(*server, Trusting(pki_->other_ca_cert));
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.error_message();

  // A plaintext client gets no answer from a TLS port either.
  grpc::Status plaintext = Call(*server, server::PlaintextTls());
  EXPECT_EQ(plaintext.error_code(), grpc::StatusCode::UNAVAILABLE) << plaintext.error_message();
  EXPECT_EQ(testing::Terminate(*server).value_or(-1), 0);
}

TEST_F(TlsTest, MutualTlsRefusesClientsWithoutACertificate) {
  std::unique_ptr<ServiceProcess> server = Start(/*mutual=*/true);
  ASSERT_NE(server, nullptr);
  const v1::ClientTlsConfig anonymous = Trusting(pki_->ca_cert);
  grpc::Status refused = Call(*server, anonymous);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.error_message();

  v1::ClientTlsConfig with_cert = anonymous;
  with_cert.set_cert_file(pki_->client_cert);
  with_cert.set_key_file(pki_->client_key);
  grpc::Status ok = Call(*server, with_cert);
  EXPECT_TRUE(ok.ok()) << ok.error_message();
  EXPECT_EQ(testing::Terminate(*server).value_or(-1), 0);
}

TEST_F(TlsTest, CliTakesTokenAndCaFromFlagsOrEnvironment) {
  std::unique_ptr<ServiceProcess> server = Start(/*mutual=*/false);
  ASSERT_NE(server, nullptr);
  auto cli = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {testing::RunfilePath("cli/poolside"), "query",
                               "--addr=" + server->address(), "--db=" + std::string(kDb)});
    args.push_back("SELECT 40 + 2 AS answer");
    absl::StatusOr<testing::CommandResult> r = testing::RunCommand(args);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : testing::CommandResult{-1, ""};
  };
  unsetenv("POOLSIDE_TOKEN");
  unsetenv("POOLSIDE_TLS_CA");
  testing::CommandResult ok =
      cli({"--tls_ca=" + pki_->ca_cert, std::string("--token=") + kAnalyst.token});
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(ok.output.find("42"), std::string::npos) << ok.output;

  testing::CommandResult no_token = cli({"--tls_ca=" + pki_->ca_cert});
  EXPECT_NE(no_token.exit_code, 0);
  EXPECT_NE(no_token.output.find("UNAUTHENTICATED"), std::string::npos) << no_token.output;

  testing::CommandResult plaintext = cli({std::string("--token=") + kAnalyst.token});
  EXPECT_NE(plaintext.exit_code, 0) << plaintext.output;

  setenv("POOLSIDE_TOKEN", kAnalyst.token, 1);
  setenv("POOLSIDE_TLS_CA", pki_->ca_cert.c_str(), 1);
  testing::CommandResult from_env = cli({});
  unsetenv("POOLSIDE_TOKEN");
  unsetenv("POOLSIDE_TLS_CA");
  EXPECT_EQ(from_env.exit_code, 0) << from_env.output;
  EXPECT_EQ(testing::Terminate(*server).value_or(-1), 0);
}

TEST(TlsConfigTest, AServerWithoutCertificateOrExplicitPlaintextRefusesToStart) {
  v1::QueryServiceConfig c = QueryConfig();
  const std::string stem = NewStem("query_server");
  c.mutable_server()->set_listen("127.0.0.1:0");
  c.mutable_server()->set_port_file(stem + ".port");
  absl::StatusOr<std::string> path = testing::WriteJsonConfig(c, stem);
  ASSERT_TRUE(path.ok());
  absl::StatusOr<testing::CommandResult> r = testing::RunCommand(
      {testing::RunfilePath("services/query/query_server"), "--config=" + *path, "--check_config"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 2) << r->output;
  EXPECT_NE(r->output.find("server.tls.plaintext: true"), std::string::npos) << r->output;
}

}  // namespace
}  // namespace poolside::testing
