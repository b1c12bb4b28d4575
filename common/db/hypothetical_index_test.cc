#include "common/db/hypothetical_index.h"

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/db/sql_quote.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fixtures/postgres_cluster.h"

namespace poolside::db {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A table with a quote in the schema's name, a space in the table's and a
// quote in a column's, 20,000 rows, no index on the filtered columns.
constexpr char kSetup[] = R"sql(
CREATE EXTENSION IF NOT EXISTS hypopg;
CREATE SCHEMA "we""ird";
CREATE TABLE "we""ird"."Ta ble" (id bigint PRIMARY KEY, "o""wner" text, n int);
INSERT INTO "we""ird"."Ta ble" SELECT g, 'owner-' || g, g % 100 FROM generate_series(1, 20000) g;
ANALYZE "we""ird"."Ta ble";
CREATE ROLE advice_reader LOGIN;
GRANT USAGE ON SCHEMA "we""ird" TO advice_reader;
GRANT SELECT ON "we""ird"."Ta ble" TO advice_reader;
)sql";

constexpr char kByOwner[] = R"(SELECT * FROM "we""ird"."Ta ble" WHERE "o""wner" = $1)";

class HypotheticalIndexTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pg_ = &testing::SharedPostgres();
    ASSERT_TRUE(pg_->CreateDatabase("advice").ok());
    ASSERT_TRUE(pg_->CreateDatabase("nohypo").ok());
    absl::Status s = pg_->Exec("advice", kSetup);
    ASSERT_TRUE(s.ok()) << s;
  }

  static std::unique_ptr<Connection> Connect(const std::string& db,
                                             const std::string& user = "postgres") {
    ConnectionOptions o;
    o.dsn = pg_->Dsn(db) + " user=" + user;
    auto c = Connection::Open(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  static PlanSession::Options Options() {
    PlanSession::Options o;
    o.deadline = absl::Now() + absl::Seconds(20);
    return o;
  }

  static testing::PostgresCluster* pg_;
};

testing::PostgresCluster* HypotheticalIndexTest::pg_ = nullptr;

TEST_F(HypotheticalIndexTest, HypotheticalIndexLowersTheGenericPlanAndIsGoneAfterReset) {
  auto conn = Connect("advice", "advice_reader");  // reads, owns nothing
  ASSERT_NE(conn, nullptr);
  auto session = PlanSession::Start(*conn, Options());
  ASSERT_TRUE(session.ok()) << session.status();
  absl::StatusOr<GenericPlan> before = (*session)->Explain(kByOwner);
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_TRUE(before->indexes.empty());

  absl::StatusOr<std::string> name =
      (*session)->CreateHypothetical({"we\"ird", "Ta ble", {"o\"wner"}});
  ASSERT_TRUE(name.ok()) << name.status();
  absl::StatusOr<GenericPlan> after = (*session)->Explain(kByOwner, /*with_text=*/true);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(after->Uses(*name)) << after->text;
  EXPECT_LT(after->total_cost, before->total_cost / 10);
  EXPECT_THAT(after->text, HasSubstr("Index Scan"));
  // A filter the index cannot serve keeps its plan.
  absl::StatusOr<GenericPlan> other =
      (*session)->Explain(R"(SELECT * FROM "we""ird"."Ta ble" WHERE n = $1)");
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_FALSE(other->Uses(*name));

  ASSERT_TRUE((*session)->ResetHypothetical().ok());
  absl::StatusOr<GenericPlan> reset = (*session)->Explain(kByOwner);
  ASSERT_TRUE(reset.ok()) << reset.status();
  EXPECT_FALSE(reset->Uses(*name));
  EXPECT_DOUBLE_EQ(reset->total_cost, before->total_cost);
  // Nothing real was created.
  EXPECT_EQ(*pg_->QueryValue("advice",
                             "SELECT count(*) FROM pg_index WHERE indrelid = "
                             "'\"we\"\"ird\".\"Ta ble\"'::regclass"),
            "1");
}

TEST_F(HypotheticalIndexTest, BadStatementsFailAloneAndWritesArePlannedNotRun) {
  auto conn = Connect("advice");
  ASSERT_NE(conn, nullptr);
  auto session = PlanSession::Start(*conn, Options());
  ASSERT_TRUE(session.ok()) << session.status();
  // A parameter whose type nothing determines, a missing table, not preparable.
  EXPECT_EQ((*session)->Explain("SELECT $2::int").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*session)->Explain("SELECT * FROM missing WHERE a = $1").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE((*session)->Explain("VACUUM").ok());
  // A second statement smuggled into the text: the server refuses the whole
  // text (the extended protocol takes one statement per Parse).
  EXPECT_FALSE((*session)->Explain(R"(SELECT 1; DROP TABLE "we""ird"."Ta ble")").ok());
  // The session is fine afterwards; a DELETE is planned, never run.
  absl::StatusOr<GenericPlan> del =
      (*session)->Explain(R"(DELETE FROM "we""ird"."Ta ble" WHERE n = $1)");
  ASSERT_TRUE(del.ok()) << del.status();
  EXPECT_GT(del->total_cost, 0);
  EXPECT_EQ(*pg_->QueryValue("advice", R"(SELECT count(*) FROM "we""ird"."Ta ble")"), "20000");
  // A hypothetical index on a column that does not exist is refused.
  EXPECT_FALSE((*session)->CreateHypothetical({"we\"ird", "Ta ble", {"nope"}}).ok());
}

TEST_F(HypotheticalIndexTest, WithoutHypoPGIsAFailedPrecondition) {
  auto conn = Connect("nohypo");
  ASSERT_NE(conn, nullptr);
  auto session = PlanSession::Start(*conn, Options());
  ASSERT_EQ(session.status().code(), absl::StatusCode::kFailedPrecondition) << session.status();
  EXPECT_THAT(std::string(session.status().message()), HasSubstr("CREATE EXTENSION hypopg"));
}

TEST_F(HypotheticalIndexTest, DescribeAndCreateConcurrently) {
  auto conn = Connect("advice");
  ASSERT_NE(conn, nullptr);
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  EXPECT_EQ(DescribeTable(*conn, "", "missing", deadline).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(DescribeTable(*conn, "x\"); DROP TABLE t; --", "t", deadline).status().code(),
            absl::StatusCode::kNotFound);
  absl::StatusOr<TableInfo> info = DescribeTable(*conn, "we\"ird", "Ta ble", deadline);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->schema, "we\"ird");
  EXPECT_THAT(info->columns, ElementsAre("id", "o\"wner", "n"));
  EXPECT_THAT(info->index_keys, ElementsAre(ElementsAre("id")));
  EXPECT_TRUE(info->Covers({"id"}));
  EXPECT_FALSE(info->Covers({"n"}));

  EXPECT_EQ(
      CreateIndexConcurrently(*conn, {"we\"ird", "Ta ble", {"nope"}}, deadline).status().code(),
      absl::StatusCode::kNotFound);
  absl::StatusOr<std::string> name =
      CreateIndexConcurrently(*conn, {"we\"ird", "Ta ble", {"n", "o\"wner"}}, deadline);
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_EQ(*name, "Ta ble_n_o\"wner_idx");
  info = DescribeTable(*conn, "we\"ird", "Ta ble", deadline);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->Covers({"n"}));
  EXPECT_TRUE(info->Covers({"n", "o\"wner"}));
  EXPECT_EQ(CreateIndexConcurrently(*conn, {"we\"ird", "Ta ble", {"n"}}, deadline).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(*pg_->QueryValue("advice",
                             "SELECT count(*) FROM pg_index WHERE indisvalid AND indrelid = "
                             "'\"we\"\"ird\".\"Ta ble\"'::regclass"),
            "2");
  ASSERT_TRUE(
      pg_->Exec("advice", absl::StrCat("DROP INDEX \"we\"\"ird\".", QuoteIdentifier(*name))).ok());

  // A taken name gets a number; a long one is cut to PostgreSQL's 63 bytes.
  ASSERT_TRUE(pg_->Exec("advice", R"(CREATE SEQUENCE "we""ird"."Ta ble_id_n_idx")").ok());
  name = CreateIndexConcurrently(*conn, {"we\"ird", "Ta ble", {"id", "n"}}, deadline);
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_EQ(*name, "Ta ble_id_n_idx1");
  ASSERT_TRUE(pg_->Exec("advice", R"(CREATE TABLE "we""ird".)" +
                                      QuoteIdentifier(std::string(60, 'x')) + " (a int, " +
                                      QuoteIdentifier(std::string(40, 'c')) + " int)")
                  .ok());
  name = CreateIndexConcurrently(*conn, {"we\"ird", std::string(60, 'x'), {std::string(40, 'c')}},
                                 deadline);
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_EQ(*name, std::string(59, 'x') + "_idx");
}

}  // namespace
}  // namespace poolside::db
