#include "services/query/index_advice.h"

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/fixtures/postgres_cluster.h"

namespace poolside::query {
namespace {

// accounts (5,000 rows) and events (50,000 rows): no index on events'
// account_id, kind or at, nor on accounts' region.
constexpr char kSetup[] = R"sql(
CREATE EXTENSION IF NOT EXISTS hypopg;
CREATE TABLE accounts (id bigint PRIMARY KEY, region text, owner text);
INSERT INTO accounts SELECT g, 'r' || (g % 50), 'o' || g FROM generate_series(1, 5000) g;
CREATE INDEX accounts_owner_idx ON accounts (owner);
CREATE TABLE events (id bigint PRIMARY KEY, account_id bigint, kind text, at timestamptz);
INSERT INTO events SELECT g, g % 5000, 'k' || (g % 20),
  timestamptz '2024-01-01' + g * interval '1 minute' FROM generate_series(1, 50000) g;
CREATE TABLE secret (id bigint PRIMARY KEY, v text);
ANALYZE;
CREATE ROLE advice_limited LOGIN;
GRANT SELECT ON accounts, events TO advice_limited;
)sql";

v1::StatementStats Stat(const std::string& sql, uint64_t calls, double total_ms) {
  v1::StatementStats s;
  s.set_database("app");
  s.set_statement(sql);
  s.set_calls(calls);
  s.set_total_ms(total_ms);
  s.set_fingerprint(absl::StrCat(std::hash<std::string>()(sql)));
  return s;
}

class IndexAdviceCoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pg_ = &testing::SharedPostgres();
    ASSERT_TRUE(pg_->CreateDatabase("app").ok());
    absl::Status s = pg_->Exec("app", kSetup);
    ASSERT_TRUE(s.ok()) << s;
  }

  void Open(const std::string& user = "advice_limited") {
    db::ConnectionOptions o;
    o.dsn = pg_->Dsn("app") + " user=" + user;
    auto c = db::Connection::Open(o);
    ASSERT_TRUE(c.ok()) << c.status();
    conn_ = *std::move(c);
    db::PlanSession::Options so;
    so.deadline = absl::Now() + absl::Seconds(30);
    auto s = db::PlanSession::Start(*conn_, so);
    ASSERT_TRUE(s.ok()) << s.status();
    session_ = *std::move(s);
  }

  static const v1::IndexSuggestion* Find(const v1::GetIndexAdviceResponse& advice,
                                         const std::string& table,
                                         const std::vector<std::string>& columns) {
    for (const auto& s : advice.suggestions()) {
      if (s.index().table() == table &&
          std::vector<std::string>(s.index().columns().begin(), s.index().columns().end()) ==
              columns) {
        return &s;
      }
    }
    return nullptr;
  }

  static testing::PostgresCluster* pg_;
  std::unique_ptr<db::Connection> conn_;
  std::unique_ptr<db::PlanSession> session_;
};

testing::PostgresCluster* IndexAdviceCoreTest::pg_ = nullptr;

TEST_F(IndexAdviceCoreTest, JoinsFiltersAndOrderAreAdvisedExistingIndexesAreNot) {
  Open();
  const std::vector<v1::StatementStats> stats = {
      Stat("SELECT e.kind, a.owner FROM events e JOIN accounts a ON a.id = e.account_id "
           "WHERE a.owner = $1",
           100, 500),
      Stat("SELECT * FROM events WHERE kind = $1 AND at >= $2 ORDER BY at LIMIT $3", 50, 300),
      Stat("SELECT * FROM accounts WHERE owner = $1", 1000, 150),  // indexed already
      Stat("SELECT $2::int", 10, 20),                              // $1's type: unknown
      Stat("SELECT * FROM secret WHERE v = $1", 10, 20),           // not readable
      Stat("SET work_mem = '64MB'", 10, 10),
  };
  v1::GetIndexAdviceResponse advice;
  AdviceOptions options;
  options.deadline = absl::Now() + absl::Seconds(30);
  ASSERT_TRUE(AdviseIndexes(*session_, stats, options, &advice).ok());

  EXPECT_DOUBLE_EQ(advice.total_ms(), 1000);
  EXPECT_EQ(advice.statements_considered(), 3u);
  const v1::IndexSuggestion* join = Find(advice, "events", {"account_id"});
  ASSERT_NE(join, nullptr) << advice.DebugString();
  ASSERT_EQ(join->statements_size(), 1);
  EXPECT_EQ(join->statements(0).calls(), 100u);
  EXPECT_DOUBLE_EQ(join->share(), 0.5);
  EXPECT_GT(join->estimated_improvement(), 0);
  EXPECT_LT(join->statements(0).cost_after(), join->statements(0).cost_before());

  // The filtered, sorted and limited read gets an index on events (which
  // one, (at) or (kind, at), is the planner's call).
  bool events_filter = false;
  for (const auto& s : advice.suggestions()) {
    if (s.index().table() == "events" && s.statements(0).statement() == stats[1].statement()) {
      events_filter = true;
      EXPECT_NE(s.index().columns(0), "account_id");
      EXPECT_LT(s.statements(0).cost_after(), s.statements(0).cost_before());
    }
    EXPECT_FALSE(s.index().table() == "accounts" && s.index().columns(0) == "owner")
        << s.DebugString();
  }
  EXPECT_TRUE(events_filter) << advice.DebugString();
  // Most improvement first.
  for (int i = 1; i < advice.suggestions_size(); ++i) {
    EXPECT_GE(advice.suggestions(i - 1).estimated_improvement(),
              advice.suggestions(i).estimated_improvement());
  }

  ASSERT_EQ(advice.skipped_size(), 3) << advice.DebugString();
  EXPECT_TRUE(absl::StrContains(advice.skipped(0).reason(), "parameter $1"))
      << advice.skipped(0).reason();
  EXPECT_TRUE(absl::StrContains(advice.skipped(1).reason(), "permission denied"))
      << advice.skipped(1).reason();
  EXPECT_EQ(advice.skipped(2).statement(), "SET work_mem = '64MB'");
  // The session is left without hypothetical indexes.
  absl::StatusOr<db::GenericPlan> plan = session_->Explain(stats[0].statement());
  ASSERT_TRUE(plan.ok()) << plan.status();
  for (const std::string& index : plan->indexes) EXPECT_EQ(index.find('<'), std::string::npos);
}

TEST_F(IndexAdviceCoreTest, MinCallsAndMaxStatementsBoundWhatIsConsidered) {
  Open();
  const std::vector<v1::StatementStats> stats = {
      Stat("SELECT * FROM events WHERE kind = $1", 2, 900),
      Stat("SELECT * FROM accounts WHERE region = $1", 20, 50),
      Stat("SELECT * FROM events WHERE account_id = $1", 20, 40),
  };
  v1::GetIndexAdviceResponse advice;
  AdviceOptions options;
  options.min_calls = 10;
  options.max_statements = 1;
  ASSERT_TRUE(AdviseIndexes(*session_, stats, options, &advice).ok());
  EXPECT_EQ(advice.statements_considered(), 1u);
  ASSERT_EQ(advice.suggestions_size(), 1) << advice.DebugString();
  EXPECT_EQ(advice.suggestions(0).index().table(), "accounts");
  EXPECT_EQ(advice.suggestions(0).index().columns(0), "region");
}

TEST_F(IndexAdviceCoreTest, CancelledOrOutOfTimeEndsWithoutAdvice) {
  Open();
  const std::vector<v1::StatementStats> stats = {
      Stat("SELECT * FROM events WHERE kind = $1", 20, 900)};
  std::atomic<bool> cancelled{true};
  AdviceOptions options;
  options.cancelled = &cancelled;
  v1::GetIndexAdviceResponse advice;
  EXPECT_EQ(AdviseIndexes(*session_, stats, options, &advice).code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(advice.suggestions_size(), 0);
  options.cancelled = nullptr;
  options.deadline = absl::Now() - absl::Seconds(1);
  EXPECT_EQ(AdviseIndexes(*session_, stats, options, &advice).code(),
            absl::StatusCode::kDeadlineExceeded);
}

}  // namespace
}  // namespace poolside::query
