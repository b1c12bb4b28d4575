#include "services/query/statement_plans.h"

#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/config.pb.h"
#include "services/query/database.h"
#include "services/query/query_config.h"
#include "services/query/row_keys.h"
#include "tests/fixtures/postgres_cluster.h"

namespace poolside::query {
namespace {

using ::poolside::testing::SharedPostgres;

constexpr char kPgDatabase[] = "statement_plans";
constexpr char kDb[] = "plans";
// The tables of kPgDatabase, made afresh for each test.
constexpr char kSchema[] =
    "DROP VIEW IF EXISTS items_view, items_barrier, items_named;"
    "DROP TABLE IF EXISTS items, named, gone, parted;"
    "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);"
    "CREATE TABLE named (name text PRIMARY KEY, v int);"
    "CREATE TABLE gone (id int PRIMARY KEY);"
    "CREATE VIEW items_view AS SELECT * FROM items;"
    "CREATE TABLE parted (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);"
    "CREATE TABLE parted_a PARTITION OF parted FOR VALUES FROM (0) TO (100);"
    "CREATE TABLE parted_b PARTITION OF parted FOR VALUES FROM (100) TO (200)";

TEST(ParsePlanTablesTest, FindsTablesAndModifications) {
  const std::string plan = R"([{"Plan": {"Node Type": "Hash Join", "Plans": [
      {"Node Type": "Seq Scan", "Relation Name": "orders", "Schema": "shop", "Alias": "o"},
      {"Node Type": "Hash", "Plans": [
        {"Node Type": "Index Scan", "Relation Name": "accounts", "Schema": "public"}]},
      {"Node Type": "Seq Scan", "Relation Name": "orders", "Schema": "shop", "Alias": "o2"}]}}])";
  absl::StatusOr<StatementTables> t = ParsePlanTables(plan);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->explained);
  EXPECT_FALSE(t->modifies);
  EXPECT_FALSE(t->locks_rows);
  EXPECT_TRUE(t->PlainRead());
  EXPECT_EQ(t->tables, (std::vector<std::string>{"public.accounts", "shop.orders"}));

  t = ParsePlanTables(R"([{"Plan": {"Node Type": "ModifyTable", "Operation": "Insert",
      "Relation Name": "t", "Schema": "public", "Plans": [{"Node Type": "Result"}]}}])");
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->modifies);
  EXPECT_FALSE(t->PlainRead());
  EXPECT_EQ(t->tables, (std::vector<std::string>{"public.t"}));

  t = ParsePlanTables(R"([{"Plan": {"Node Type": "LockRows", "Plans": [
      {"Node Type": "Seq Scan", "Relation Name": "t", "Schema": "public"}]}}])");
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->locks_rows);
  EXPECT_FALSE(t->PlainRead());
}

TEST(ParsePlanTablesTest, RefusesWhatIsNotAPlanList) {
  EXPECT_EQ(ParsePlanTables("not json").status().code(), absl::StatusCode::kInternal);
  EXPECT_FALSE(ParsePlanTables(R"({"Plan": {}})").ok());  // an object, not a list
  EXPECT_FALSE(ParsePlanTables("[").ok());
  // Odd but well-formed JSON: nothing found, nothing invented.
  absl::StatusOr<StatementTables> t =
      ParsePlanTables(R"([1, "x", null, [[{"Plans": []}]], {"Node Type": ["LockRows"]}])");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->explained);
  EXPECT_FALSE(t->locks_rows);
  EXPECT_FALSE(t->modifies);
  EXPECT_TRUE(t->tables.empty());
}

StatementTables KeyedPlan() {
  StatementTables t;
  t.explained = true;
  t.tables = {"public.items"};
  KeyPlan key;
  key.table = "public.items";
  sql::KeyOperand param;
  param.kind = sql::KeyOperand::Kind::kParam;
  param.param = 1;
  key.columns.emplace_back(KeyFamily::kInteger, param);
  t.key = std::move(key);
  return t;
}

TEST(ReadTagsTest, KeyLookupsAreTaggedByRowOthersByTable) {
  const StatementTables t = KeyedPlan();
  v1::ExecuteRequest request;
  request.mutable_params()->Add()->set_int64_value(42);
  request.mutable_cache()->add_tags("report");
  bool keyed = false;
  std::vector<std::string> tags = ReadTags(kDb, t, request, &keyed);
  EXPECT_TRUE(keyed);
  std::optional<std::string> canonical = CanonicalKeyValue(KeyFamily::kInteger, request.params(0));
  ASSERT_TRUE(canonical.has_value());
  EXPECT_EQ(tags, (std::vector<std::string>{DatabaseTag(kDb), TableTag(kDb, "public.items"),
                                            RowTag(kDb, "public.items", RowKeyHash({*canonical})),
                                            "report"}));

  // The same key from a parameter of another value is another row.
  v1::ExecuteRequest other = request;
  other.mutable_params(0)->set_int64_value(43);
  std::vector<std::string> other_tags = ReadTags(kDb, t, other, &keyed);
  EXPECT_TRUE(keyed);
  EXPECT_NE(other_tags[2], tags[2]);

  // No parameter for the key (a hostile or short request): table-level.
  v1::ExecuteRequest missing;
  tags = ReadTags(kDb, t, missing, &keyed);
  EXPECT_FALSE(keyed);
  EXPECT_EQ(tags, (std::vector<std::string>{DatabaseTag(kDb), TableTag(kDb, "public.items"),
                                            TableScanTag(kDb, "public.items")}));

  // No key plan: table-level for every table.
  StatementTables join;
  join.explained = true;
  join.tables = {"public.a", "public.b"};
  tags = ReadTags(kDb, join, request, &keyed);
  EXPECT_FALSE(keyed);
  EXPECT_EQ(tags, (std::vector<std::string>{
                      DatabaseTag(kDb), TableTag(kDb, "public.a"), TableTag(kDb, "public.b"),
                      TableScanTag(kDb, "public.a"), TableScanTag(kDb, "public.b"), "report"}));
}

// Over a real database: what EXPLAIN and the catalog say, remembered.
class StatementPlansTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::PostgresCluster& pg = SharedPostgres();
    absl::Status s = pg.CreateDatabase(kPgDatabase, kSchema);
    ASSERT_TRUE(s.ok()) << s;
    db_ = MakeDatabase(pg.Dsn(kPgDatabase));
    plans_ = std::make_unique<StatementPlans>(&in_flight_,
                                              [this](const Database&) { return learn_keys_; });
  }

  void TearDown() override {
    in_flight_.WaitIdle();
    plans_.reset();
    db_.reset();
  }

  static std::unique_ptr<Database> MakeDatabase(const std::string& dsn) {
    v1::QueryServiceConfig c;
    c.mutable_server()->mutable_tls()->set_plaintext(true);
    v1::DatabaseConfig* db = c.add_databases();
    db->set_name(kDb);
    db->set_dsn(dsn);
    db->set_allow_privileged_role(true);  // the fixture's superuser
    db->mutable_pool()->set_max_size(2);
    db->mutable_pool()->set_min_idle(0);
    db->mutable_pool()->set_connect_timeout_ms(2000);
    absl::StatusOr<v1::QueryServiceConfig> finalized = FinalizeQueryConfig(c);
    EXPECT_TRUE(finalized.ok()) << finalized.status();
    return std::make_unique<Database>(finalized->databases(0));
  }

  struct Result {
    StatementPlans::Learned learned = absl::UnknownError("not run");
    bool inline_answer = false;  // `then` ran before Learn returned
  };

  Result Learn(Database* db, const std::string& sql, const std::vector<int64_t>& params = {}) {
    google::protobuf::RepeatedPtrField<v1::Value> p;
    for (int64_t v : params) p.Add()->set_int64_value(v);
    auto out = std::make_shared<Result>();
    auto done = std::make_shared<absl::Notification>();
    const std::thread::id caller = std::this_thread::get_id();
    plans_->Learn(db, sql, p, absl::Now() + absl::Seconds(10),
                  [out, done, caller](StatementPlans::Learned t) {
                    out->learned = std::move(t);
                    out->inline_answer = std::this_thread::get_id() == caller;
                    done->Notify();
                  });
    EXPECT_TRUE(done->WaitForNotificationWithTimeout(absl::Seconds(30))) << sql;
    return *out;
  }

  InFlight in_flight_;
  bool learn_keys_ = true;
  std::unique_ptr<Database> db_;
  std::unique_ptr<StatementPlans> plans_;
};

TEST_F(StatementPlansTest, LearnsTablesAndKeyLookupsOnceAndRemembersThem) {
  const std::string sql = "SELECT name FROM items WHERE id = $1";
  Result r = Learn(db_.get(), sql, {1});
  ASSERT_TRUE(r.learned.ok()) << r.learned.status();
  const StatementTables& t = **r.learned;
  EXPECT_FALSE(r.inline_answer);
  EXPECT_TRUE(t.PlainRead());
  EXPECT_EQ(t.tables, (std::vector<std::string>{"public.items"}));
  ASSERT_TRUE(t.key.has_value());
  EXPECT_EQ(t.key->table, "public.items");
  ASSERT_EQ(t.key->columns.size(), 1u);
  EXPECT_EQ(t.key->columns[0].first, KeyFamily::kInteger);
  EXPECT_EQ(t.key->columns[0].second.kind, sql::KeyOperand::Kind::kParam);
  EXPECT_EQ(plans_->size(), 1u);
  EXPECT_EQ(plans_->Remembered(*db_, sql), *r.learned);

  // Remembered: answered at once, without the database (the table is gone).
  ASSERT_TRUE(SharedPostgres().Exec(kPgDatabase, "DROP VIEW items_view; DROP TABLE items").ok());
  Result again = Learn(db_.get(), sql, {1});
  ASSERT_TRUE(again.learned.ok()) << again.learned.status();
  EXPECT_TRUE(again.inline_answer);
  EXPECT_EQ(*again.learned, *r.learned);  // the same plan, not a copy
  EXPECT_EQ(in_flight_.count(), 0);
}

TEST_F(StatementPlansTest, KeysOnlyForPlainReadsOfATableByItsWholeKey) {
  Result text = Learn(db_.get(), "SELECT v FROM named WHERE name = 'x'");
  ASSERT_TRUE(text.learned.ok()) << text.learned.status();
  ASSERT_TRUE((*text.learned)->key.has_value());
  EXPECT_EQ((*text.learned)->key->columns[0].first, KeyFamily::kText);

  // A view is not a table: its base table, no key.
  Result view = Learn(db_.get(), "SELECT name FROM items_view WHERE id = $1", {1});
  ASSERT_TRUE(view.learned.ok()) << view.learned.status();
  EXPECT_EQ((*view.learned)->tables, (std::vector<std::string>{"public.items"}));
  EXPECT_FALSE((*view.learned)->key.has_value());

  // Not the key column, a range, a join: no key.
  for (const char* sql :
       {"SELECT id FROM items WHERE name = 'a'", "SELECT name FROM items WHERE id > 3",
        "SELECT i.name FROM items i JOIN named n ON n.v = i.id WHERE i.id = 1"}) {
    Result r = Learn(db_.get(), sql);
    ASSERT_TRUE(r.learned.ok()) << sql << ": " << r.learned.status();
    EXPECT_TRUE((*r.learned)->PlainRead()) << sql;
    EXPECT_FALSE((*r.learned)->key.has_value()) << sql;
  }

  // Writes and locking reads: known, never keyed.
  Result insert = Learn(db_.get(), "INSERT INTO items VALUES ($1, 'x')", {7});
  ASSERT_TRUE(insert.learned.ok()) << insert.learned.status();
  EXPECT_TRUE((*insert.learned)->modifies);
  EXPECT_FALSE((*insert.learned)->key.has_value());
  Result locking = Learn(db_.get(), "SELECT name FROM items WHERE id = 1 FOR UPDATE");
  ASSERT_TRUE(locking.learned.ok()) << locking.learned.status();
  EXPECT_TRUE((*locking.learned)->locks_rows);
  EXPECT_FALSE((*locking.learned)->key.has_value());
  // Nothing was written by explaining the INSERT.
  absl::StatusOr<std::string> rows =
      SharedPostgres().QueryValue(kPgDatabase, "SELECT count(*) FROM items");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(*rows, "0");

  // Where keys are not wanted (trigger mode), none is looked up.
  learn_keys_ = false;
  Result unkeyed = Learn(db_.get(), "SELECT name FROM items WHERE id = 2");
  ASSERT_TRUE(unkeyed.learned.ok()) << unkeyed.learned.status();
  EXPECT_FALSE((*unkeyed.learned)->key.has_value());
}

// Statements that look like a lookup by primary key but can return (or
// depend on) other rows: a row tag would miss writes to them, so none is
// learned. And the lookups that are: a composite key with every column bound
// (in the table's column order, as the relay sends keys), a table of the same
// name in another schema, a key replaced by DDL (once the plan is forgotten).
TEST_F(StatementPlansTest, LookalikesOfAKeyLookupAreNotKeyed) {
  ASSERT_TRUE(
      SharedPostgres()
          .Exec(kPgDatabase,
                "DROP SCHEMA IF EXISTS other CASCADE; DROP TABLE IF EXISTS pair, nokey, ci_named, "
                "inherited CASCADE; DROP COLLATION IF EXISTS ci;"
                "CREATE TABLE pair (a int, b int, v text, PRIMARY KEY (b, a));"
                "CREATE TABLE nokey (id int UNIQUE NOT NULL, v text);"
                "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', "
                "deterministic = false);"
                "CREATE TABLE ci_named (name text COLLATE ci PRIMARY KEY, v int);"
                "CREATE TABLE inherited (id int PRIMARY KEY, v text);"
                "CREATE TABLE inherited_child () INHERITS (inherited);"
                "CREATE VIEW items_barrier WITH (security_barrier) AS SELECT * FROM items;"
                "CREATE SCHEMA other; CREATE TABLE other.items (id int8 PRIMARY KEY, n int)")
          .ok());
  for (const char* sql : {
           "SELECT name FROM items WHERE id = 1 OR true",
           "SELECT name FROM items WHERE id = 1 OR id = 2",
           "SELECT name FROM items WHERE NOT (id = 1)",
           "SELECT name FROM items WHERE id IN (1, 2)",
           "SELECT name FROM items WHERE id = 1 AND name = (SELECT name FROM named LIMIT 1)",
           "SELECT name FROM items, generate_series(1, 2) g WHERE id = 1",
           "SELECT name FROM items_barrier WHERE id = 1",
           "SELECT v FROM pair WHERE a = 1",
           "SELECT v FROM pair WHERE b = 1",
           "SELECT v FROM nokey WHERE id = 1",
           "SELECT v FROM ci_named WHERE name = 'x'",
           "SELECT v FROM inherited WHERE id = 1",
           "SELECT name FROM items WHERE id = 1 UNION ALL SELECT name FROM items WHERE id = 2",
           "SELECT v FROM named WHERE name = 'x' COLLATE \"C\"",
       }) {
    Result r = Learn(db_.get(), sql);
    ASSERT_TRUE(r.learned.ok()) << sql << ": " << r.learned.status();
    EXPECT_TRUE((*r.learned)->explained) << sql;
    EXPECT_FALSE((*r.learned)->key.has_value()) << sql;
  }

  Result pair = Learn(db_.get(), "SELECT v FROM pair WHERE b = $1 AND a = $2", {2, 1});
  ASSERT_TRUE(pair.learned.ok()) << pair.learned.status();
  ASSERT_TRUE((*pair.learned)->key.has_value());
  ASSERT_EQ((*pair.learned)->key->columns.size(), 2u);
  EXPECT_EQ((*pair.learned)->key->columns[0].second.param, 2);  // a: column 1
  EXPECT_EQ((*pair.learned)->key->columns[1].second.param, 1);  // b: column 2

  Result schema = Learn(db_.get(), "SELECT n FROM other.items WHERE id = $1", {1});
  ASSERT_TRUE(schema.learned.ok()) << schema.learned.status();
  EXPECT_EQ((*schema.learned)->tables, (std::vector<std::string>{"other.items"}));
  ASSERT_TRUE((*schema.learned)->key.has_value());
  EXPECT_EQ((*schema.learned)->key->table, "other.items");

  // The key replaced: the statement's plan is forgotten (the relay's new
  // description does that) and learned anew, by the new key.
  const std::string by_name = "SELECT id FROM items WHERE name = 'x'";
  Result before = Learn(db_.get(), by_name);
  ASSERT_TRUE(before.learned.ok()) << before.learned.status();
  EXPECT_FALSE((*before.learned)->key.has_value());
  ASSERT_TRUE(SharedPostgres()
                  .Exec(kPgDatabase,
                        "ALTER TABLE items DROP CONSTRAINT items_pkey; "
                        "ALTER TABLE items ADD PRIMARY KEY (name)")
                  .ok());
  plans_->Forget(kDb, "public.items");
  Result after = Learn(db_.get(), by_name);
  ASSERT_TRUE(after.learned.ok()) << after.learned.status();
  ASSERT_TRUE((*after.learned)->key.has_value());
  EXPECT_EQ((*after.learned)->key->columns[0].first, KeyFamily::kText);
  Result by_id = Learn(db_.get(), "SELECT name FROM items WHERE id = 3");
  ASSERT_TRUE(by_id.learned.ok()) << by_id.learned.status();
  EXPECT_FALSE((*by_id.learned)->key.has_value());
}

// A plan is learned once per statement text and remembered for every later
// parameter value, but EXPLAIN runs with the first call's values bound, which
// PostgreSQL folds into constants: with $2 = 0 below the plan is a bare
// `Result` naming no table, and plan-time partition pruning names only the
// partition the first value falls in. The tables the text names (with their
// partitions and inheritance children, and what the views among them read)
// come from the catalog instead, whatever the values.
TEST_F(StatementPlansTest, TablesDoNotDependOnTheFirstCallsParameters) {
  Result folded = Learn(db_.get(), "SELECT name FROM items WHERE id = $1 AND $2 = 1", {1, 0});
  ASSERT_TRUE(folded.learned.ok()) << folded.learned.status();
  EXPECT_TRUE((*folded.learned)->PlainRead());
  EXPECT_EQ((*folded.learned)->tables, (std::vector<std::string>{"public.items"}));

  // Read through the parent: id 150 lives in parted_b, which a plan pruned
  // for id 1 does not name. (The partitioned parent, which no publication
  // carries, is named too: such reads are not cached in "wal" mode.)
  Result pruned = Learn(db_.get(), "SELECT v FROM parted WHERE id = $1", {1});
  ASSERT_TRUE(pruned.learned.ok()) << pruned.learned.status();
  EXPECT_EQ((*pruned.learned)->tables,
            (std::vector<std::string>{"public.parted", "public.parted_a", "public.parted_b"}));

  // A view folded away: what it reads, from its definition.
  Result view = Learn(db_.get(), "SELECT name FROM items_view WHERE $1 = 1", {0});
  ASSERT_TRUE(view.learned.ok()) << view.learned.status();
  EXPECT_EQ((*view.learned)->tables, (std::vector<std::string>{"public.items"}));
}

// A function or operator written in SQL or a procedural language may read
// tables no plan names: a statement that calls one, itself or through a view
// it reads, is not a plain read. Built-in and C functions are.
TEST_F(StatementPlansTest, CallsOfRoutinesThatMayReadOtherTablesAreNotPlainReads) {
  ASSERT_TRUE(
      SharedPostgres()
          .Exec(kPgDatabase,
                "CREATE OR REPLACE FUNCTION named_of(int) RETURNS text LANGUAGE plpgsql "
                "STABLE AS $$ BEGIN RETURN (SELECT name FROM named LIMIT 1); END $$;"
                "CREATE OR REPLACE FUNCTION twice(int) RETURNS int LANGUAGE sql "
                "IMMUTABLE AS 'SELECT $1 * 2';"
                "CREATE OR REPLACE VIEW items_named AS SELECT id, named_of(id) AS n FROM items")
          .ok());
  for (const char* sql :
       {"SELECT named_of(id) FROM items WHERE id = 1", "SELECT public.named_of(id) FROM items",
        "SELECT n FROM items_named", "SELECT twice(id) FROM items"}) {
    Result r = Learn(db_.get(), sql);
    ASSERT_TRUE(r.learned.ok()) << sql << ": " << r.learned.status();
    EXPECT_TRUE((*r.learned)->calls_routines) << sql;
    EXPECT_FALSE((*r.learned)->PlainRead()) << sql;
  }
  for (const char* sql : {"SELECT lower(name), length(name) || 'x' FROM items WHERE id = 1",
                          "SELECT name FROM items_view WHERE id = 1"}) {
    Result r = Learn(db_.get(), sql);
    ASSERT_TRUE(r.learned.ok()) << sql << ": " << r.learned.status();
    EXPECT_FALSE((*r.learned)->calls_routines) << sql;
    EXPECT_TRUE((*r.learned)->PlainRead()) << sql;
  }
}

TEST_F(StatementPlansTest, StatementsEXPLAINRefusesAreRememberedAsUnexplained) {
  for (const char* sql :
       {"CREATE TABLE nope (a int)", "SELECT * FROM no_such_table", "SELEC broken"}) {
    Result r = Learn(db_.get(), sql);
    ASSERT_TRUE(r.learned.ok()) << sql << ": " << r.learned.status();
    EXPECT_FALSE((*r.learned)->explained) << sql;
    EXPECT_FALSE((*r.learned)->PlainRead()) << sql;
    EXPECT_NE(plans_->Remembered(*db_, sql), nullptr) << sql;
  }
  // Nothing was created.
  absl::StatusOr<std::string> exists =
      SharedPostgres().QueryValue(kPgDatabase, "SELECT to_regclass('nope') IS NULL");
  ASSERT_TRUE(exists.ok());
  EXPECT_EQ(*exists, "t");
}

TEST_F(StatementPlansTest, AFailureThatMayPassIsNotRemembered) {
  // A database that refuses connections: EXPLAIN cannot run now.
  std::unique_ptr<Database> down = MakeDatabase("host=127.0.0.1 port=1 dbname=x user=postgres");
  Result r = Learn(down.get(), "SELECT 1");
  EXPECT_FALSE(r.learned.ok());
  EXPECT_EQ(plans_->Remembered(*down, "SELECT 1"), nullptr);
  EXPECT_EQ(plans_->size(), 0u);
  in_flight_.WaitIdle();
}

TEST_F(StatementPlansTest, ForgetDropsOnlyThePlansThatReadTheTable) {
  ASSERT_TRUE(Learn(db_.get(), "SELECT name FROM items WHERE id = 1").learned.ok());
  ASSERT_TRUE(Learn(db_.get(), "SELECT count(*) FROM items_view").learned.ok());
  ASSERT_TRUE(Learn(db_.get(), "SELECT v FROM named WHERE name = 'a'").learned.ok());
  ASSERT_EQ(plans_->size(), 3u);
  plans_->Forget("other_database", "public.items");
  EXPECT_EQ(plans_->size(), 3u);
  plans_->Forget(kDb, "public.items");
  EXPECT_EQ(plans_->size(), 1u);
  EXPECT_EQ(plans_->Remembered(*db_, "SELECT name FROM items WHERE id = 1"), nullptr);
  EXPECT_EQ(plans_->Remembered(*db_, "SELECT count(*) FROM items_view"), nullptr);
  EXPECT_NE(plans_->Remembered(*db_, "SELECT v FROM named WHERE name = 'a'"), nullptr);
  // Forgotten plans are learned again (the table changed).
  Result r = Learn(db_.get(), "SELECT name FROM items WHERE id = 1");
  ASSERT_TRUE(r.learned.ok());
  EXPECT_FALSE(r.inline_answer);
}

TEST(InFlightTest, TokensCountUntilDestroyedMovesHandOverCopiesCountAgain) {
  InFlight in_flight;
  {
    InFlight::Token a = in_flight.Begin();
    EXPECT_EQ(in_flight.count(), 1);
    InFlight::Token b = std::move(a);
    EXPECT_FALSE(a);  // NOLINT(bugprone-use-after-move): moved-from is empty
    EXPECT_TRUE(b);
    EXPECT_EQ(in_flight.count(), 1);
    {
      InFlight::Token c = b;
      EXPECT_EQ(in_flight.count(), 2);
    }
    EXPECT_EQ(in_flight.count(), 1);
    b = InFlight::Token();
    EXPECT_EQ(in_flight.count(), 0);
  }
  EXPECT_EQ(in_flight.count(), 0);
  // WaitIdle returns once another thread let go.
  InFlight::Token held = in_flight.Begin();
  std::thread other([t = std::move(held)]() mutable { InFlight::Token gone = std::move(t); });
  in_flight.WaitIdle();
  EXPECT_EQ(in_flight.count(), 0);
  other.join();
}

}  // namespace
}  // namespace poolside::query
