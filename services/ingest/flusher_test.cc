#include "services/ingest/flusher.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/db/copy.h"
#include "gtest/gtest.h"
#include "tests/fixtures/postgres_cluster.h"

namespace poolside::ingest {
namespace {

class FlusherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pg_ = &testing::SharedPostgres();
    ASSERT_TRUE(pg_->CreateDatabase("flusher").ok());
    ASSERT_TRUE(pg_->Exec("flusher",
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
    w->key = std::move(key);
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
  EXPECT_EQ(r.responses[0].rows_written(), 2u);
  EXPECT_EQ(r.responses[1].rows_written(), 1u);
  EXPECT_EQ(r.rows_written, 3u);
  EXPECT_EQ(r.copy_statements, 1u);
  EXPECT_EQ(Count(), "3");
  EXPECT_EQ(*pg_->QueryValue("flusher", "SELECT rows FROM poolside_ingest_keys WHERE key = 'k1'"),
            "2");

  // The same key again: answered from the table, nothing written.
  Batch again = MakeBatch({Write({{1, "a", 1}, {2, "b", 2}}, "k1"), Write({{4, "d", 4}}, "k2")});
  r = FlushBatch(*conn_, again, Soon());
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_TRUE(r.responses[0].duplicate());
  EXPECT_EQ(r.responses[0].rows_written(), 2u);
  EXPECT_FALSE(r.responses[1].duplicate());
  EXPECT_EQ(Count(), "4");
}

TEST_F(FlusherTest, IsolatesBadRowsAndCommitsTheRest) {
  ASSERT_TRUE(pg_->Exec("flusher", "INSERT INTO ev VALUES (100000, 'x', 0)").ok());
  std::vector<std::tuple<int64_t, std::string, int64_t>> rows;
  for (int i = 0; i < 200; ++i) rows.emplace_back(i, "ok", i);
  rows[17] = {100000, "dup", 1};          // unique violation with an existing row
  rows[50] = {50, "toolong", 1};       // varchar(5): 22001
  rows[120] = {120, "neg", -1};        // CHECK: 23514
  rows[199] = {3, "dup2", 1};          // unique violation inside the batch
  Batch b = MakeBatch({Write({{1000, "w0", 0}}, "kx"), Write(rows, "ky")});
  FlushResult r = FlushBatch(*conn_, b, Soon());
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.responses[0].rows_written(), 1u);
  const v1::WriteResponse& resp = r.responses[1];
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
  Batch again = MakeBatch({Write({{5000, "zz", 0}}, "ky")});
  r = FlushBatch(*conn_, again, Soon());
  ASSERT_TRUE(r.status.ok());
  EXPECT_TRUE(r.responses[0].duplicate());
  EXPECT_EQ(r.responses[0].rejected_size(), 4);
  EXPECT_EQ(Count(), "198");
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

TEST_F(FlusherTest, DeletesExpiredKeys) {
  ASSERT_TRUE(pg_->Exec("flusher",
                        "INSERT INTO poolside_ingest_keys VALUES ('old', 1, '', now() - "
                        "interval '2 hours'), ('new', 1, '', now())")
                  .ok());
  auto n = DeleteExpiredKeys(*conn_, absl::Hours(1), Soon());
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 1);
  EXPECT_EQ(*pg_->QueryValue("flusher", "SELECT string_agg(key, ',') FROM poolside_ingest_keys"),
            "new");
}

}  // namespace
}  // namespace poolside::ingest
