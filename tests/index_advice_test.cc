// Index advice end to end: a real query_server and PostgreSQL (with HypoPG),
// a workload run through the service, GetIndexAdvice and `poolside advise`
// / `poolside advise --apply N` as the admin principal (under its own
// database role), and what the database holds before and after.

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/auth/token_hash.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/query.grpc.pb.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/service_process.h"
#include "tests/fixtures/subprocess.h"

namespace poolside::testing {
namespace {

constexpr char kDb[] = "advice";
constexpr char kAdminToken[] = "tok-advice-admin-6d1f";
constexpr char kAppToken[] = "tok-advice-app-93ab";
constexpr char kReaderToken[] = "tok-advice-reader-1c7e";

// `orders` has no index on customer; a table and column whose names carry
// quotes, a semicolon and a comment marker; both owned by advice_owner, the
// login of the admin principal's database role.
constexpr char kSetup[] = R"sql(
CREATE EXTENSION IF NOT EXISTS hypopg;
DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'advice_owner') THEN
  CREATE ROLE advice_owner LOGIN; END IF; END$$;
CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, status text, amount int);
INSERT INTO orders SELECT g, 'customer-' || (g % 5000), (ARRAY['new', 'done'])[1 + g % 2], g % 997
  FROM generate_series(1, 20000) g;
CREATE TABLE "odd ""q"" t" (id bigint PRIMARY KEY, "we""ird col'); --" text);
INSERT INTO "odd ""q"" t" SELECT g, 'v' || g FROM generate_series(1, 5000) g;
ANALYZE orders;
ANALYZE "odd ""q"" t";
ALTER TABLE orders OWNER TO advice_owner;
ALTER TABLE "odd ""q"" t" OWNER TO advice_owner;
GRANT CREATE ON SCHEMA public TO advice_owner;
)sql";

constexpr char kByCustomer[] = "SELECT id, amount FROM orders WHERE customer = $1";
constexpr char kOdd[] = R"(SELECT id FROM "odd ""q"" t" WHERE "we""ird col'); --" = $1)";

v1::PrincipalConfig* AddPrincipal(v1::QueryServiceConfig* c, const std::string& name,
                                  const std::string& token, std::vector<std::string> roles) {
  v1::PrincipalConfig* p = c->mutable_auth()->add_principals();
  p->set_name(name);
  p->set_token_sha256(auth::Sha256Hex(token));
  for (std::string& r : roles) p->add_roles(std::move(r));
  p->add_databases(kDb);
  return p;
}

// What a test may change, undone before the next one.
constexpr char kReset[] = R"sql(
CREATE EXTENSION IF NOT EXISTS hypopg;
DROP INDEX IF EXISTS orders_customer_idx;
)sql";

class IndexAdviceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    testing::PostgresCluster& pg = SharedPostgres();
    absl::Status setup = pg.CreateDatabase(kDb, kSetup);
    ASSERT_TRUE(setup.ok()) << setup;
  }

  // Every test has a server of its own: statement statistics start empty.
  void SetUp() override {
    testing::PostgresCluster& pg = SharedPostgres();
    absl::Status reset = pg.Exec(kDb, kReset);
    ASSERT_TRUE(reset.ok()) << reset;

    v1::QueryServiceConfig c;
    v1::DatabaseConfig* db = AddDatabase(&c, kDb, pg.Dsn(kDb));
    db->mutable_pool()->set_max_size(4);
    v1::DatabaseRole* role = db->add_roles();
    role->set_name("advisor");
    role->set_user("advice_owner");
    AddPrincipal(&c, "admin", kAdminToken, {"admin"})->set_database_role("advisor");
    AddPrincipal(&c, "app", kAppToken, {"read", "write", "sql"});
    AddPrincipal(&c, "reader", kReaderToken, {"read", "sql"});
    const std::string stem = testing::NewStem("query_server");
    c.mutable_server()->set_listen("127.0.0.1:0");
    c.mutable_server()->mutable_tls()->set_plaintext(true);
    c.mutable_server()->set_port_file(stem + ".port");
    absl::StatusOr<std::unique_ptr<ServiceProcess>> process =
        testing::StartConfigured("services/query/query_server", c, stem + ".port", stem);
    ASSERT_TRUE(process.ok()) << process.status();
    server_ = *std::move(process);
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = testing::Connect(server_->address());
    ASSERT_TRUE(channel.ok()) << channel.status();
    stub_ = v1::QueryService::NewStub(*channel);
  }

  void TearDown() override {
    stub_.reset();
    if (server_ != nullptr) {
      absl::StatusOr<int> code = testing::Terminate(*server_);
      EXPECT_TRUE(code.ok() && *code == 0) << (code.ok() ? absl::StrCat(*code) : "timeout");
    }
  }

  std::unique_ptr<grpc::ClientContext> Context(const char* token) {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->AddMetadata("authorization", absl::StrCat("Bearer ", token));
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
    return ctx;
  }

  void Run(const std::string& sql, const std::string& param, int times) {
    for (int i = 0; i < times; ++i) {
      v1::ExecuteRequest req;
      req.set_database(kDb);
      req.set_sql(sql);
      if (!param.empty()) req.add_params()->set_text_value(absl::StrCat(param, i));
      v1::ExecuteResponse resp;
      grpc::Status s = stub_->Execute(Context(kAppToken).get(), req, &resp);
      ASSERT_TRUE(s.ok()) << sql << ": " << s.error_message();
    }
  }

  grpc::Status Advice(const char* token, v1::GetIndexAdviceResponse* resp) {
    v1::GetIndexAdviceRequest req;
    req.set_database(kDb);
    return stub_->GetIndexAdvice(Context(token).get(), req, resp);
  }

  // CreateIndex of `index` in the test's database, as `token`.
  grpc::Status CreateIndex(const char* token, const v1::IndexDefinition& index) {
    v1::CreateIndexRequest create;
    create.set_database(kDb);
    *create.mutable_index() = index;
    v1::CreateIndexResponse created;
    return stub_->CreateIndex(Context(token).get(), create, &created);
  }

  static const v1::IndexSuggestion* Find(const v1::GetIndexAdviceResponse& advice,
                                         const std::string& table, int* number = nullptr) {
    for (int i = 0; i < advice.suggestions_size(); ++i) {
      if (advice.suggestions(i).index().table() == table) {
        if (number != nullptr) *number = i + 1;
        return &advice.suggestions(i);
      }
    }
    return nullptr;
  }

  std::string Value(const std::string& sql) {
    absl::StatusOr<std::string> v = SharedPostgres().QueryValue(kDb, sql);
    EXPECT_TRUE(v.ok()) << sql << ": " << v.status();
    return v.ok() ? *v : "";
  }

  std::unique_ptr<ServiceProcess> server_;
  std::unique_ptr<v1::QueryService::Stub> stub_;
};

TEST_F(IndexAdviceTest, AdviceNamesTheFilteredColumnAndApplyMakesThePlannerUseIt) {
  Run(kByCustomer, "customer-", 30);
  Run(kOdd, "v", 10);
  Run("SELECT /* '\"; DROP TABLE orders; -- */ count(*) FROM orders WHERE status = 'done'", "", 3);
  Run("SHOW work_mem", "", 2);

  v1::GetIndexAdviceResponse advice;
  grpc::Status s = Advice(kAdminToken, &advice);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(advice.database(), kDb);
  EXPECT_GE(advice.statements_considered(), 3u);
  EXPECT_GT(advice.total_ms(), 0);
  int number = 0;
  const v1::IndexSuggestion* orders = Find(advice, "orders", &number);
  ASSERT_NE(orders, nullptr) << advice.DebugString();
  EXPECT_EQ(orders->index().schema(), "public");
  ASSERT_EQ(orders->index().columns_size(), 1) << orders->DebugString();
  EXPECT_EQ(orders->index().columns(0), "customer");
  EXPECT_EQ(orders->create_sql(),
            "CREATE INDEX CONCURRENTLY ON \"public\".\"orders\" (\"customer\")");
  ASSERT_GE(orders->statements_size(), 1);
  EXPECT_EQ(orders->statements(0).statement(), kByCustomer);
  EXPECT_EQ(orders->statements(0).calls(), 30u);
  EXPECT_LT(orders->statements(0).cost_after(), orders->statements(0).cost_before() / 2);
  EXPECT_GT(orders->share(), 0);
  EXPECT_LE(orders->share(), 1);
  EXPECT_GT(orders->estimated_improvement(), 0);
  EXPECT_LE(orders->estimated_improvement(), orders->share());
  EXPECT_TRUE(absl::StrContains(orders->plan_before(), "Seq Scan")) << orders->plan_before();
  EXPECT_TRUE(absl::StrContains(orders->plan_after(), "Index")) << orders->plan_after();

  // The hostile names come back exactly and are quoted where SQL is made.
  const v1::IndexSuggestion* odd = Find(advice, "odd \"q\" t");
  ASSERT_NE(odd, nullptr) << advice.DebugString();
  ASSERT_EQ(odd->index().columns_size(), 1);
  EXPECT_EQ(odd->index().columns(0), "we\"ird col'); --");
  EXPECT_EQ(
      odd->create_sql(),
      "CREATE INDEX CONCURRENTLY ON \"public\".\"odd \"\"q\"\" t\" (\"we\"\"ird col'); --\")");
  // SHOW is reported, not costed; the primary key is never suggested.
  bool show_skipped = false;
  for (const auto& k : advice.skipped()) show_skipped |= absl::StartsWith(k.statement(), "SHOW");
  EXPECT_TRUE(show_skipped) << advice.DebugString();
  for (const auto& sug : advice.suggestions()) {
    EXPECT_NE(sug.index().columns(0), "id") << sug.DebugString();
  }
  // Nothing was created, no hypothetical index survives in a pooled session.
  EXPECT_EQ(Value("SELECT count(*) FROM pg_index WHERE indrelid = 'orders'::regclass"), "1");
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        return Value(
                   "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
                   "'%/index-advice'") == "0";
      },
      absl::Seconds(10)));

  // The CLI shows the same advice, then creates the orders suggestion.
  const std::string addr = absl::StrCat("--addr=", server_->address());
  const std::string token = absl::StrCat("--token=", kAdminToken);
  absl::StatusOr<testing::CommandResult> shown = testing::RunCommand(
      {RunfilePath("cli/poolside"), addr, token, "advise", "--db", kDb, "--min-calls", "2"});
  ASSERT_TRUE(shown.ok()) << shown.status();
  EXPECT_EQ(shown->exit_code, 0) << shown->output;
  EXPECT_TRUE(absl::StrContains(shown->output, orders->create_sql())) << shown->output;
  EXPECT_TRUE(absl::StrContains(shown->output, "estimated improvement")) << shown->output;
  absl::StatusOr<testing::CommandResult> applied =
      testing::RunCommand({RunfilePath("cli/poolside"), addr, token, "advise", "--db", kDb,
                           "--apply", absl::StrCat(number)});
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(applied->exit_code, 0) << applied->output;
  EXPECT_TRUE(absl::StrContains(applied->output, "created index orders_customer_idx"))
      << applied->output;

  // The index is real, valid, owned by the admin's database role, and used.
  EXPECT_EQ(Value("SELECT count(*) FROM pg_index WHERE indisvalid AND indrelid = "
                  "'orders'::regclass"),
            "2");
  EXPECT_EQ(Value("SELECT pg_get_indexdef('orders_customer_idx'::regclass)"),
            "CREATE INDEX orders_customer_idx ON public.orders USING btree (customer)");
  EXPECT_TRUE(absl::StrContains(
      Value("EXPLAIN (FORMAT JSON) SELECT id, amount FROM orders WHERE customer = 'customer-7'"),
      "orders_customer_idx"));

  // The advice for it is gone; the other remains.
  v1::GetIndexAdviceResponse again;
  s = Advice(kAdminToken, &again);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(Find(again, "orders"), nullptr) << again.DebugString();
  EXPECT_NE(Find(again, "odd \"q\" t"), nullptr) << again.DebugString();

  // Creating it again is refused and changes nothing.
  s = CreateIndex(kAdminToken, orders->index());
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS) << s.error_message();
  EXPECT_EQ(Value("SELECT count(*) FROM pg_index WHERE indrelid = 'orders'::regclass"), "2");
}

TEST_F(IndexAdviceTest, OnlyAnAdminGetsAdviceOrCreatesIndexes) {
  Run(kByCustomer, "customer-", 5);
  for (const char* token : {kAppToken, kReaderToken}) {
    v1::GetIndexAdviceResponse advice;
    EXPECT_EQ(Advice(token, &advice).error_code(), grpc::StatusCode::PERMISSION_DENIED);
    v1::IndexDefinition customer;
    customer.set_table("orders");
    customer.add_columns("customer");
    EXPECT_EQ(CreateIndex(token, customer).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  v1::GetIndexAdviceResponse advice;
  EXPECT_EQ(Advice("tok-unknown", &advice).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  absl::StatusOr<testing::CommandResult> cli = testing::RunCommand(
      {RunfilePath("cli/poolside"), absl::StrCat("--addr=", server_->address()),
       absl::StrCat("--token=", kReaderToken), "advise", "--db", kDb, "--apply", "1"});
  ASSERT_TRUE(cli.ok()) << cli.status();
  EXPECT_EQ(cli->exit_code, 2) << cli->output;
  EXPECT_TRUE(absl::StrContains(cli->output, "PERMISSION_DENIED")) << cli->output;
  EXPECT_EQ(Value("SELECT count(*) FROM pg_index WHERE indrelid = 'orders'::regclass"), "1");

  // A bad index definition from an admin: refused before anything runs.
  v1::IndexDefinition bad;
  bad.set_table("orders");
  bad.add_columns("customer\"); DROP TABLE orders; --");
  EXPECT_EQ(CreateIndex(kAdminToken, bad).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Value("SELECT count(*) FROM orders"), "20000");
}

TEST_F(IndexAdviceTest, WithoutHypoPGTheAdviceSaysHowToGetIt) {
  ASSERT_TRUE(SharedPostgres().Exec(kDb, "DROP EXTENSION hypopg").ok());
  Run(kByCustomer, "customer-", 3);
  v1::GetIndexAdviceResponse advice;
  grpc::Status s = Advice(kAdminToken, &advice);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(absl::StrContains(s.error_message(), "CREATE EXTENSION hypopg")) << s.error_message();
}

}  // namespace
}  // namespace poolside::testing
