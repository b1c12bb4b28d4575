#include "services/ingest/flusher.h"

#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/db/copy.h"
#include "gtest/gtest.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/values.h"

namespace poolside::ingest {
namespace {

class FlusherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pg_ = &testing::SharedPostgres();
    ASSERT_TRUE(
        pg_->CreateDatabase("flusher",
                            "DROP TABLE IF EXISTS ev; DROP TABLE IF EXISTS poolside_ingest_keys; "
                            "CREATE TABLE ev (id int8 PRIMARY KEY, code varchar(5), "
                            "n int4 CHECK (n >= 0))")
            .ok());
    db::ConnectionOptions o;
    o.dsn = pg_->Dsn("flusher");
    auto c = db::Connection::Open(o);
    ASSERT_TRUE(c.ok()) << c.status();
    conn_ = *std::move(c);
    ASSERT_TRUE(EnsureKeysTable(*conn_, Soon()).ok());
    auto t = db::DescribeTable(*conn_, "ev", Soon());
    ASSERT_TRUE(t.ok()) << t.status();
    table_ = *std::move(t);
  }

  absl::Time Soon() { return absl::Now() + absl::Seconds(20); }

  // A write of rows (id, code, n).
  std::shared_ptr<PendingWrite> Write(std::vector<std::tuple<int64_t, std::string, int64_t>> rows,
                                      std::string key = "") {
    std::vector<const db::ColumnInfo*> cols;
    for (const auto& c : table_.columns) cols.push_back(&c);
    auto w = std::make_shared<PendingWrite>();
    w->database = "flusher";
    w->table = "ev";
    w->key = std::move(key);
    w->total_rows = static_cast<uint32_t>(rows.size());
    w->copy_target = db::CopyTarget(table_, cols);
    for (size_t i = 0; i < rows.size(); ++i) {
      v1::Row row;
      row.add_values()->set_int64_value(std::get<0>(rows[i]));
      row.add_values()->set_text_value(std::get<1>(rows[i]));
      row.add_values()->set_int64_value(std::get<2>(rows[i]));
      EXPECT_TRUE(db::AppendCopyRow(row, cols, &w->data).ok());
      w->line_ends.push_back(static_cast<uint32_t>(w->data.size()));
      w->row_index.push_back(static_cast<uint32_t>(i));
    }
    // The engine's digest stands for the content; here the data itself does.
    w->digest = w->data;
    return w;
  }

  Batch MakeBatch(std::vector<std::shared_ptr<PendingWrite>> writes) {
    Batch b;
    b.database = "flusher";
    b.copy_target = writes[0]->copy_target;
    b.writes = std::move(writes);
    return b;
  }

  std::string Count(const std::string& where = "true") {
    return *pg_->QueryValue("flusher", absl::StrCat("SELECT count(*) FROM ev WHERE ", where));
  }

  testing::PostgresCluster* pg_;
  std::unique_ptr<db::Connection> conn_;
  db::TableInfo table_;
};

TEST_F(FlusherTest, GoodBatchCommitsWithKeys) {
  Batch b = MakeBatch({Write({{1, "a", 1}, {2, "b", 2}}, "k1"), Write({{3, "c", 3}})});
  FlushResult r = FlushBatch(*conn_, b, Soon());
  ASSERT_TRUE(r.status.ok()) << r.status;
  ASSERT_EQ(r.responses.size(), 2u);
  EXPECT_EQ(r.responses[0]->rows_written(), 2u);
  EXPECT_EQ(r.responses[1]->rows_written(), 1u);
  EXPECT_EQ(r.rows_written, 3u);
  EXPECT_EQ(r.copy_statements, 1u);
  EXPECT_EQ(Count(), "3");
  EXPECT_EQ(*pg_->QueryValue("flusher", "SELECT rows FROM poolside_ingest_keys WHERE key = 'k1'"),
            "2");

  // The same key again: answered from the table, nothing written.
  Batch again = MakeBatch({Write({{1, "a", 1}, {2, "b", 2}}, "k1"), Write({{4, "d", 4}}, "k2")});
  r = FlushBatch(*conn_, again, Soon());
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_TRUE(r.responses[0]->duplicate());
  EXPECT_EQ(r.responses[0]->rows_written(), 2u);
  EXPECT_FALSE(r.responses[1]->duplicate());
  EXPECT_EQ(Count(), "4");
}

TEST_F(FlusherTest, IsolatesBadRowsAndCommitsTheRest) {
  ASSERT_TRUE(pg_->Exec("flusher", "INSERT INTO ev VALUES (100000, 'x', 0)").ok());
  std::vector<std::tuple<int64_t, std::string, int64_t>> rows;
  for (int i = 0; i < 200; ++i) rows.emplace_back(i, "ok", i);
  rows[17] = {100000, "dup", 1};  // unique violation with an existing row
  rows[50] = {50, "toolong", 1};  // varchar(5): 22001
  rows[120] = {120, "neg", -1};   // CHECK: 23514
  rows[199] = {3, "dup2", 1};     // unique violation inside the batch
  Batch b = MakeBatch({Write({{1000, "w0", 0}}, "kx"), Write(rows, "ky")});
  FlushResult r = FlushBatch(*conn_, b, Soon());
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.responses[0]->rows_written(), 1u);
  ASSERT_TRUE(r.responses[1].ok()) << r.responses[1].status();
  const v1::WriteResponse& resp = *r.responses[1];
  EXPECT_EQ(resp.rows_written(), 196u);
  ASSERT_EQ(resp.rejected_size(), 4);
  EXPECT_EQ(resp.rejected(0).row_index(), 17u);
  EXPECT_EQ(resp.rejected(0).sqlstate(), "23505");
  EXPECT_EQ(resp.rejected(1).row_index(), 50u);
  EXPECT_EQ(resp.rejected(1).sqlstate(), "22001");
  EXPECT_EQ(resp.rejected(2).row_index(), 120u);
  EXPECT_EQ(resp.rejected(2).sqlstate(), "23514");
  EXPECT_EQ(resp.rejected(3).row_index(), 199u);
  EXPECT_NE(resp.rejected(3).reason().find("duplicate key"), std::string::npos)
      << resp.rejected(3).reason();
  EXPECT_EQ(Count(), "198");  // 1 existing + 1 + 196
  // The stored result carries the rejections too.
  Batch again = MakeBatch({Write(rows, "ky")});
  r = FlushBatch(*conn_, again, Soon());
  ASSERT_TRUE(r.status.ok());
  ASSERT_TRUE(r.responses[0].ok()) << r.responses[0].status();
  EXPECT_TRUE(r.responses[0]->duplicate());
  EXPECT_EQ(r.responses[0]->rejected_size(), 4);
  EXPECT_EQ(Count(), "198");
}

TEST_F(FlusherTest, KeyReusedForOtherContentIsRefusedNotDropped) {
  Batch first = MakeBatch({Write({{1, "a", 1}, {2, "b", 2}}, "k")});
  ASSERT_TRUE(FlushBatch(*conn_, first, Soon()).status.ok());
  // Other rows, another table (as the engine records it), another principal.
  auto other_rows = Write({{3, "c", 3}}, "k");
  auto other_table = Write({{1, "a", 1}, {2, "b", 2}}, "k");
  other_table->table = "ev_archive";
  auto other_principal = Write({{4, "d", 4}}, "k");
  other_principal->principal = "bob";
  Batch again = MakeBatch({other_rows, other_table, other_principal, Write({{5, "e", 5}})});
  FlushResult r = FlushBatch(*conn_, again, Soon());
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.responses[0].status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.responses[0].status().message().find("\"k\""), absl::string_view::npos)
      << r.responses[0].status();
  EXPECT_EQ(r.responses[1].status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.responses[1].status().message().find("table ev"), absl::string_view::npos)
      << r.responses[1].status();
  // Bob's "k" is his own.
  ASSERT_TRUE(r.responses[2].ok()) << r.responses[2].status();
  EXPECT_EQ(r.responses[2]->rows_written(), 1u);
  ASSERT_TRUE(r.responses[3].ok());
  EXPECT_EQ(Count(), "4");  // 1, 2, bob's 4, 5
  EXPECT_EQ(Count("id = 3"), "0");
  EXPECT_EQ(*pg_->QueryValue("flusher",
                             "SELECT string_agg(principal || ':' || key || ':' || tbl, "
                             "',' ORDER BY principal) FROM poolside_ingest_keys"),
            ":k:ev,bob:k:ev");
}

TEST_F(FlusherTest, AllBadRowsAreEachReportedInBoundedTime) {
  constexpr int kRows = 2000;  // 10,000 through the service: tests/ingest_service_test.cc
  ASSERT_TRUE(pg_->Exec("flusher", absl::StrCat("INSERT INTO ev SELECT g, 'old', 0 FROM "
                                                "generate_series(0, ",
                                                kRows - 1, ") g"))
                  .ok());
  std::vector<std::tuple<int64_t, std::string, int64_t>> rows;
  for (int i = 0; i < kRows; ++i) rows.emplace_back(i, "dup", i);
  Batch b = MakeBatch({Write(rows, "all-bad")});
  const absl::Time start = absl::Now();
  FlushResult r = FlushBatch(*conn_, b, absl::Now() + absl::Seconds(60));
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(r.status.ok()) << r.status;
  ASSERT_TRUE(r.responses[0].ok());
  const v1::WriteResponse& resp = *r.responses[0];
  EXPECT_EQ(resp.rows_written(), 0u);
  ASSERT_TRUE(testing::RejectedAsDuplicates(resp, kRows));
  // One COPY per bad row (each fails on its first line), plus the plain try.
  EXPECT_LE(r.copy_statements, static_cast<uint64_t>(kRows) + 1);
  EXPECT_EQ(Count("code = 'dup'"), "0");
  EXPECT_EQ(*pg_->QueryValue("flusher", "SELECT rows FROM poolside_ingest_keys"), "0");
  printf("%d all-bad rows isolated in %s, %llu COPY statements\n", kRows,
         absl::FormatDuration(took).c_str(), static_cast<unsigned long long>(r.copy_statements));
}

TEST_F(FlusherTest, FewBadRowsAmongManyCommitEveryGoodRowOnce) {
  constexpr int kRows = 20000;
  std::vector<std::tuple<int64_t, std::string, int64_t>> rows;
  for (int i = 0; i < kRows; ++i) rows.emplace_back(i, "ok", i);
  std::vector<int> bad;
  for (int i = 7; i < kRows; i += 1499) bad.push_back(i);
  for (size_t k = 0; k < bad.size(); ++k) {
    // Alternate: too long for varchar(5), negative for the CHECK, an id of
    // an earlier row in the batch.
    const int i = bad[k];
    if (k % 3 == 0) rows[i] = {i, "toolong", 1};
    if (k % 3 == 1) rows[i] = {i, "neg", -1};
    if (k % 3 == 2) rows[i] = {i - 3, "dup", 1};
  }
  // Split over three requests of one batch.
  std::vector<decltype(rows)> parts(3);
  for (int i = 0; i < kRows; ++i) parts[i * 3 / kRows].push_back(rows[i]);
  Batch b = MakeBatch({Write(parts[0]), Write(parts[1], "k1"), Write(parts[2])});
  FlushResult r = FlushBatch(*conn_, b, Soon());
  ASSERT_TRUE(r.status.ok()) << r.status;
  uint64_t written = 0, rejected = 0;
  for (auto& resp : r.responses) {
    ASSERT_TRUE(resp.ok());
    written += resp->rows_written();
    rejected += resp->rejected_size();
    for (const v1::RowError& e : resp->rejected()) EXPECT_FALSE(e.reason().empty());
  }
  EXPECT_EQ(rejected, bad.size());
  EXPECT_EQ(written, kRows - bad.size());
  EXPECT_EQ(Count(), absl::StrCat(kRows - bad.size()));
  EXPECT_EQ(*pg_->QueryValue("flusher", "SELECT count(DISTINCT id) FROM ev"),
            absl::StrCat(kRows - bad.size()));
  EXPECT_EQ(Count("code <> 'ok'"), "0");
  // A few COPYs per bad row, not one per row.
  EXPECT_LE(r.copy_statements, 5 * bad.size() + 40) << r.copy_statements;
}

TEST_F(FlusherTest, DeferredConstraintsAreIsolatedToo) {
  ASSERT_TRUE(pg_->Exec("flusher",
                        "DROP TABLE IF EXISTS dv; CREATE TABLE dv (id int8, code varchar(5), n "
                        "int4, UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)")
                  .ok());
  auto t = db::DescribeTable(*conn_, "dv", Soon());
  ASSERT_TRUE(t.ok());
  table_ = *std::move(t);
  std::vector<std::tuple<int64_t, std::string, int64_t>> rows;
  for (int i = 0; i < 100; ++i) rows.emplace_back(i % 90, "x", i);  // 10 repeated ids
  Batch b = MakeBatch({Write(rows)});
  FlushResult r = FlushBatch(*conn_, b, Soon());
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.responses[0]->rows_written(), 90u);
  EXPECT_EQ(r.responses[0]->rejected_size(), 10);
  EXPECT_EQ(*pg_->QueryValue("flusher", "SELECT count(DISTINCT id) || '/' || count(*) FROM dv"),
            "90/90");
}

TEST_F(FlusherTest, KeysTableOfAnEarlierVersionIsMigrated) {
  ASSERT_TRUE(pg_->Exec("flusher",
                        "DROP TABLE poolside_ingest_keys; CREATE TABLE poolside_ingest_keys "
                        "(key text PRIMARY KEY, rows bigint NOT NULL, result bytea NOT NULL, "
                        "written_at timestamptz NOT NULL DEFAULT now())")
                  .ok());
  // A key written by the earlier version: 2 rows written, none rejected.
  v1::WriteResponse old;
  old.set_rows_written(2);
  std::string hex;
  for (unsigned char c : old.SerializeAsString()) hex += absl::StrFormat("%02x", c);
  ASSERT_TRUE(pg_->Exec("flusher", absl::StrCat("INSERT INTO poolside_ingest_keys (key, rows, "
                                                "result) VALUES ('legacy', 2, '\\x",
                                                hex, "')"))
                  .ok());
  ASSERT_TRUE(EnsureKeysTable(*conn_, Soon()).ok());
  ASSERT_TRUE(EnsureKeysTable(*conn_, Soon()).ok());  // idempotent
  EXPECT_EQ(*pg_->QueryValue("flusher",
                             "SELECT string_agg(a.attname, ',' ORDER BY k.n) FROM pg_index i "
                             "CROSS JOIN unnest(i.indkey) WITH ORDINALITY k(attnum, n) JOIN "
                             "pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                             "WHERE i.indrelid = 'poolside_ingest_keys'::regclass AND "
                             "i.indisprimary"),
            "login,principal,key");
  EXPECT_EQ(*pg_->QueryValue("flusher",
                             "SELECT count(*) FROM pg_indexes WHERE indexname = "
                             "'poolside_ingest_keys_written_at'"),
            "1");
  // Row-level security on (not forced), one policy for every role, and the
  // legacy key is the migrating user's.
  EXPECT_EQ(*pg_->QueryValue("flusher",
                             "SELECT relrowsecurity || ',' || relforcerowsecurity || ',' || "
                             "(SELECT string_agg(polname || ':' || polroles::text || ':' || "
                             "pg_get_expr(polqual, polrelid) || ':' || "
                             "pg_get_expr(polwithcheck, polrelid), ';') FROM pg_policy WHERE "
                             "polrelid = c.oid) FROM pg_class c WHERE "
                             "oid = 'poolside_ingest_keys'::regclass"),
            "true,false,poolside_ingest_keys_login:{0}:(login = SESSION_USER):"
            "(login = SESSION_USER)");
  EXPECT_EQ(*pg_->QueryValue("flusher", "SELECT login = session_user FROM poolside_ingest_keys"),
            "t");
  // The legacy key still answers a retry of the same size as a duplicate,
  // and refuses one of another size.
  Batch retry = MakeBatch({Write({{1, "a", 1}, {2, "b", 2}}, "legacy")});
  FlushResult r = FlushBatch(*conn_, retry, Soon());
  ASSERT_TRUE(r.status.ok()) << r.status;
  ASSERT_TRUE(r.responses[0].ok()) << r.responses[0].status();
  EXPECT_TRUE(r.responses[0]->duplicate());
  Batch other = MakeBatch({Write({{1, "a", 1}}, "legacy")});
  r = FlushBatch(*conn_, other, Soon());
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.responses[0].status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Count(), "0");
  // New keys go in beside it.
  Batch fresh = MakeBatch({Write({{1, "a", 1}}, "new")});
  r = FlushBatch(*conn_, fresh, Soon());
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(Count(), "1");
  EXPECT_EQ(*pg_->QueryValue("flusher", "SELECT count(*) FROM poolside_ingest_keys"), "2");
}

// A key table of the version before logins (keys per principal, no row
// security), here with FORCE set: brought up to date, its keys still the
// migrating user's.
TEST_F(FlusherTest, KeysTableWithoutLoginsIsMigrated) {
  FlushResult r = FlushBatch(*conn_, MakeBatch({Write({{1, "a", 1}}, "kept")}), Soon());
  ASSERT_TRUE(r.status.ok()) << r.status;
  ASSERT_TRUE(pg_->Exec("flusher",
                        "DROP POLICY poolside_ingest_keys_login ON poolside_ingest_keys; "
                        "ALTER TABLE poolside_ingest_keys DISABLE ROW LEVEL SECURITY, "
                        "DROP CONSTRAINT poolside_ingest_keys_pkey, DROP COLUMN login, "
                        "ADD PRIMARY KEY (principal, key), FORCE ROW LEVEL SECURITY")
                  .ok());
  ASSERT_TRUE(EnsureKeysTable(*conn_, Soon()).ok());
  EXPECT_EQ(*pg_->QueryValue("flusher",
                             "SELECT relrowsecurity || ',' || relforcerowsecurity || ',' || "
                             "(SELECT count(*) FROM pg_policy WHERE polrelid = c.oid) || ',' || "
                             "(SELECT string_agg(login || ':' || key, ',') FROM "
                             "poolside_ingest_keys) FROM pg_class c WHERE "
                             "oid = 'poolside_ingest_keys'::regclass"),
            "true,false,1,postgres:kept");
  r = FlushBatch(*conn_, MakeBatch({Write({{1, "a", 1}}, "kept")}), Soon());
  ASSERT_TRUE(r.status.ok()) << r.status;
  ASSERT_TRUE(r.responses[0].ok()) << r.responses[0].status();
  EXPECT_TRUE(r.responses[0]->duplicate());
  EXPECT_EQ(Count(), "1");
}

// The owner bypasses row-level security: its lookups must still read only
// its own login's keys, whatever another login stored under its principal.
TEST_F(FlusherTest, AnotherLoginsKeyIsNotTheCallers) {
  v1::WriteResponse forged;
  forged.set_rows_written(1);
  std::string hex;
  for (unsigned char c : forged.SerializeAsString()) hex += absl::StrFormat("%02x", c);
  ASSERT_TRUE(
      pg_->Exec("flusher", absl::StrCat("INSERT INTO poolside_ingest_keys (login, principal, key, "
                                        "tbl, digest, rows, result) VALUES ('someone_else', '', "
                                        "'victim', 'ev', '\\x00', 1, '\\x",
                                        hex,
                                        "'), "
                                        "('someone_else', '', 'victim-legacy', '', NULL, 1, '\\x",
                                        hex, "')"))
          .ok());
  Batch b = MakeBatch({Write({{1, "a", 1}}, "victim"), Write({{2, "b", 2}}, "victim-legacy")});
  FlushResult r = FlushBatch(*conn_, b, Soon());
  ASSERT_TRUE(r.status.ok()) << r.status;
  for (const auto& resp : r.responses) {
    ASSERT_TRUE(resp.ok()) << resp.status();
    EXPECT_FALSE(resp->duplicate());
    EXPECT_EQ(resp->rows_written(), 1u);
  }
  EXPECT_EQ(Count(), "2");
  EXPECT_EQ(*pg_->QueryValue("flusher",
                             "SELECT string_agg(login || ':' || key, ',' ORDER BY "
                             "login, key) FROM poolside_ingest_keys"),
            "postgres:victim,postgres:victim-legacy,someone_else:victim,"
            "someone_else:victim-legacy");
}

// A row PostgreSQL refuses for its size (an index entry past btree's limit:
// SQLSTATE 54000, not a data error) is that row's rejection, like a bad value:
// it must not fail the other rows and requests of its batch (with batches
// joined, other clients' requests).
TEST_F(FlusherTest, ARowTooLargeForItsIndexIsRejectedAlone) {
  ASSERT_TRUE(
      pg_->Exec("flusher", "ALTER TABLE ev ALTER COLUMN code TYPE text; CREATE INDEX ON ev (code)")
          .ok());
  // Incompressible, so that no compression brings it under the limit.
  std::string huge;
  uint64_t x = 88172645463325252u;
  while (huge.size() < 9000) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    huge.push_back(static_cast<char>('!' + x % 90));
  }
  Batch b = MakeBatch({Write({{1, "a", 1}, {2, "b", 2}}, "k-other"),
                       Write({{3, "c", 3}, {4, huge, 4}, {5, "e", 5}}, "k-huge")});
  FlushResult r = FlushBatch(*conn_, b, Soon());
  ASSERT_TRUE(r.status.ok()) << r.status;
  ASSERT_TRUE(r.responses[0].ok()) << r.responses[0].status();
  EXPECT_EQ(r.responses[0]->rows_written(), 2u);
  ASSERT_TRUE(r.responses[1].ok()) << r.responses[1].status();
  EXPECT_EQ(r.responses[1]->rows_written(), 2u);
  EXPECT_EQ(testing::RejectedRows(*r.responses[1]), "1:54000");
  EXPECT_EQ(*pg_->QueryValue("flusher", "SELECT string_agg(id::text, ',' ORDER BY id) FROM ev"),
            "1,2,3,5");
  EXPECT_EQ(*pg_->QueryValue("flusher", "SELECT count(*) FROM poolside_ingest_keys"), "2");
}

// A trigger that refuses one row with RAISE EXCEPTION (SQLSTATE P0001, the
// common way a table validates its rows in PL/pgSQL): that row is rejected
// with its reason, the rest written (docs/ingest.md, "Bad rows are
// isolated"), not the whole batch failed for one row of one request.
TEST_F(FlusherTest, ARowATriggerRefusesIsRejectedAlone) {
  ASSERT_TRUE(
      pg_->Exec("flusher",
                "CREATE OR REPLACE FUNCTION no13() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN IF "
                "NEW.n = 13 THEN RAISE EXCEPTION 'thirteen is refused'; END IF; RETURN "
                "NEW; END$$; CREATE TRIGGER no13 BEFORE INSERT ON ev FOR EACH ROW "
                "EXECUTE FUNCTION no13()")
          .ok());
  Batch b = MakeBatch({Write({{1, "a", 1}, {2, "b", 2}}), Write({{3, "c", 3}, {4, "d", 13}})});
  FlushResult r = FlushBatch(*conn_, b, Soon());
  ASSERT_TRUE(r.status.ok()) << r.status;
  ASSERT_TRUE(r.responses[0].ok()) << r.responses[0].status();
  EXPECT_EQ(r.responses[0]->rows_written(), 2u);
  ASSERT_TRUE(r.responses[1].ok()) << r.responses[1].status();
  EXPECT_EQ(r.responses[1]->rows_written(), 1u);
  EXPECT_EQ(testing::RejectedRows(*r.responses[1]), "1:P0001");
  EXPECT_EQ(Count(), "3");
}

TEST_F(FlusherTest, NonDataErrorFailsTheBatch) {
  ASSERT_TRUE(pg_->Exec("flusher", "ALTER TABLE ev RENAME TO ev_old").ok());
  Batch b = MakeBatch({Write({{1, "a", 1}}, "kz")});
  FlushResult r = FlushBatch(*conn_, b, Soon());
  EXPECT_FALSE(r.status.ok());
  EXPECT_FALSE(r.broken);
  EXPECT_EQ(*pg_->QueryValue("flusher", "SELECT count(*) FROM poolside_ingest_keys"), "0");
  ASSERT_TRUE(pg_->Exec("flusher", "ALTER TABLE ev_old RENAME TO ev").ok());
}

TEST_F(FlusherTest, ConnectionLostDuringCommitIsUnknownAndAKeyedRetryWritesOnce) {
  // COMMIT runs a deferred trigger that sleeps; the backend is terminated
  // meanwhile, so the connection dies while COMMIT is under way.
  ASSERT_TRUE(pg_->Exec("flusher",
                        "CREATE OR REPLACE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql "
                        "AS $$BEGIN PERFORM pg_sleep(30); RETURN NULL; END$$; "
                        "CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON ev DEFERRABLE INITIALLY "
                        "DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()")
                  .ok());
  std::atomic<bool> terminated{false};
  std::thread killer([&] {
    const absl::Time give_up = absl::Now() + absl::Seconds(20);
    while (!terminated.load() && absl::Now() < give_up) {
      absl::StatusOr<std::string> n = pg_->QueryValue(
          "flusher",
          "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = "
          "'flusher' AND state = 'active' AND query = 'COMMIT' AND wait_event = 'PgSleep'");
      if (n.ok() && *n != "0") {
        terminated.store(true);
      } else {
        absl::SleepFor(absl::Milliseconds(10));
      }
    }
  });
  Batch b = MakeBatch({Write({{1, "a", 1}}, "doubt"), Write({{2, "b", 2}})});
  FlushResult r = FlushBatch(*conn_, b, Soon());
  killer.join();
  ASSERT_TRUE(terminated.load());
  EXPECT_EQ(r.status.code(), absl::StatusCode::kUnavailable) << r.status;
  EXPECT_TRUE(r.commit_unknown);
  EXPECT_TRUE(r.broken);
  EXPECT_NE(r.status.message().find("outcome of the COMMIT is unknown"), std::string::npos)
      << r.status;
  // It did not commit (the trigger ran before the commit record), which the
  // keyed retry finds out by not finding its key.
  EXPECT_EQ(Count(), "0");
  ASSERT_TRUE(pg_->Exec("flusher", "DROP TRIGGER slow ON ev").ok());
  db::ConnectionOptions o;
  o.dsn = pg_->Dsn("flusher");
  auto c = db::Connection::Open(o);
  ASSERT_TRUE(c.ok()) << c.status();
  conn_ = *std::move(c);
  Batch retry = MakeBatch({Write({{1, "a", 1}}, "doubt")});
  r = FlushBatch(*conn_, retry, Soon());
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_FALSE(r.commit_unknown);
  ASSERT_TRUE(r.responses[0].ok());
  EXPECT_FALSE(r.responses[0]->duplicate());
  EXPECT_EQ(Count(), "1");
  // Once committed, the key answers for it.
  r = FlushBatch(*conn_, retry, Soon());
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_TRUE(r.responses[0]->duplicate());
  EXPECT_EQ(Count(), "1");
}

// Concurrent flushes into one table whose rows collide (a COPY waits for
// another transaction's uncommitted rows, then isolates the ones it finds
// taken) all finish, and each row and each key is written exactly once.
TEST_F(FlusherTest, ConcurrentFlushesOfOverlappingRowsAllFinishExactlyOnce) {
  constexpr int kThreads = 4, kRounds = 6, kRowsPerRound = 20;
  std::vector<std::unique_ptr<db::Connection>> conns;
  for (int t = 0; t < kThreads; ++t) {
    db::ConnectionOptions o;
    o.dsn = pg_->Dsn("flusher");
    auto c = db::Connection::Open(o);
    ASSERT_TRUE(c.ok()) << c.status();
    conns.push_back(*std::move(c));
  }
  // Every thread writes the same ids each round (different content, its own
  // key), so all but one of a round's writers find each id taken.
  std::vector<std::vector<std::shared_ptr<PendingWrite>>> writes(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    for (int round = 0; round < kRounds; ++round) {
      std::vector<std::tuple<int64_t, std::string, int64_t>> rows;
      for (int i = 0; i < kRowsPerRound; ++i) {
        rows.emplace_back(round * kRowsPerRound + i, absl::StrCat("t", t), t);
      }
      writes[t].push_back(Write(rows, absl::StrCat("k", t, "-", round)));
    }
  }
  std::vector<FlushResult> results(kThreads * kRounds);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < kRounds; ++round) {
        results[t * kRounds + round] = FlushBatch(*conns[t], MakeBatch({writes[t][round]}), Soon());
      }
    });
  }
  for (auto& th : threads) th.join();
  uint64_t written = 0, rejected = 0;
  for (const FlushResult& r : results) {
    ASSERT_TRUE(r.status.ok()) << r.status;
    ASSERT_EQ(r.responses.size(), 1u);
    ASSERT_TRUE(r.responses[0].ok()) << r.responses[0].status();
    written += r.responses[0]->rows_written();
    for (const v1::RowError& e : r.responses[0]->rejected()) {
      EXPECT_EQ(e.sqlstate(), "23505") << e.reason();
      ++rejected;
    }
  }
  EXPECT_EQ(written, static_cast<uint64_t>(kRounds * kRowsPerRound));
  EXPECT_EQ(rejected, static_cast<uint64_t>((kThreads - 1) * kRounds * kRowsPerRound));
  EXPECT_EQ(Count(), absl::StrCat(kRounds * kRowsPerRound));
  EXPECT_EQ(*pg_->QueryValue("flusher", "SELECT count(*) FROM poolside_ingest_keys"),
            absl::StrCat(kThreads * kRounds));
  EXPECT_EQ(*pg_->QueryValue("flusher", "SELECT sum(rows) FROM poolside_ingest_keys"),
            absl::StrCat(kRounds * kRowsPerRound));
}

TEST_F(FlusherTest, InRecoveryIsFalseOnAPrimary) {
  absl::StatusOr<bool> recovering = InRecovery(*conn_, Soon());
  ASSERT_TRUE(recovering.ok()) << recovering.status();
  EXPECT_FALSE(*recovering);
}

TEST_F(FlusherTest, DeletesExpiredKeys) {
  ASSERT_TRUE(pg_->Exec("flusher",
                        "INSERT INTO poolside_ingest_keys (key, rows, result, written_at) "
                        "VALUES ('old', 1, '', now() - interval '2 hours'), ('new', 1, '', now())")
                  .ok());
  auto n = DeleteExpiredKeys(*conn_, absl::Hours(1), Soon());
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 1);
  EXPECT_EQ(*pg_->QueryValue("flusher", "SELECT string_agg(key, ',') FROM poolside_ingest_keys"),
            "new");
}

}  // namespace
}  // namespace poolside::ingest
