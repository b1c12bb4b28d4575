#include "common/db/logical_stream.h"

#include <libpq-fe.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/fixtures/postgres_cluster.h"

namespace poolside::db {
namespace {

using ::poolside::testing::PostgresCluster;

constexpr char kDb[] = "logical";
constexpr absl::Duration kWait = absl::Seconds(30);  // only reached when something is broken

// A plain libpq client, separate from the stream: the writer.
class Writer {
 public:
  // Commits flush the WAL at once (the fixture's default, synchronous_commit
  // off, leaves that to the WAL writer, which would delay every delivery).
  explicit Writer(const std::string& dsn)
      : conn_(PQconnectdb((dsn + " options='-c synchronous_commit=on'").c_str())) {}
  ~Writer() { PQfinish(conn_); }
  bool ok() const { return PQstatus(conn_) == CONNECTION_OK; }

  absl::Status Exec(const std::string& sql) {
    std::unique_ptr<PGresult, void (*)(PGresult*)> r(PQexec(conn_, sql.c_str()), &PQclear);
    const ExecStatusType st = PQresultStatus(r.get());
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return absl::OkStatus();
    return absl::InternalError(absl::StrCat(sql, ": ", PQerrorMessage(conn_)));
  }
  std::string Value(const std::string& sql) {
    std::unique_ptr<PGresult, void (*)(PGresult*)> r(PQexec(conn_, sql.c_str()), &PQclear);
    if (PQresultStatus(r.get()) != PGRES_TUPLES_OK || PQntuples(r.get()) < 1) {
      ADD_FAILURE() << sql << ": " << PQerrorMessage(conn_);
      return "";
    }
    return PQgetvalue(r.get(), 0, 0);
  }
  Lsn InsertLsn() { return *ParseLsn(Value("SELECT pg_current_wal_insert_lsn()")); }
  // Runs `statements` in one transaction; returns its xid (32 bits, as sent).
  uint32_t Transaction(const std::vector<std::string>& statements) {
    EXPECT_TRUE(Exec("BEGIN").ok());
    const uint32_t xid =
        static_cast<uint32_t>(std::stoull(Value("SELECT txid_current() % 4294967296")));
    for (const std::string& s : statements) EXPECT_TRUE(Exec(s).ok()) << s;
    EXPECT_TRUE(Exec("COMMIT").ok());
    return xid;
  }
  absl::Status Copy(const std::string& sql, const std::string& data) {
    std::unique_ptr<PGresult, void (*)(PGresult*)> r(PQexec(conn_, sql.c_str()), &PQclear);
    if (PQresultStatus(r.get()) != PGRES_COPY_IN) return absl::InternalError(PQerrorMessage(conn_));
    if (PQputCopyData(conn_, data.data(), static_cast<int>(data.size())) != 1 ||
        PQputCopyEnd(conn_, nullptr) != 1) {
      return absl::InternalError(PQerrorMessage(conn_));
    }
    std::unique_ptr<PGresult, void (*)(PGresult*)> end(PQgetResult(conn_), &PQclear);
    while (PGresult* more = PQgetResult(conn_)) PQclear(more);
    if (PQresultStatus(end.get()) != PGRES_COMMAND_OK) {
      return absl::InternalError(PQerrorMessage(conn_));
    }
    return absl::OkStatus();
  }

 private:
  PGconn* conn_;
};

std::string Kind(const LogicalEvent& e) {
  switch (e.index()) {
    case 0:
      return "begin";
    case 1:
      return "commit";
    case 2: {
      switch (std::get<ChangeEvent>(e).kind) {
        case ChangeEvent::Kind::kInsert:
          return "insert";
        case ChangeEvent::Kind::kUpdate:
          return "update";
        case ChangeEvent::Kind::kDelete:
          return "delete";
      }
      return "change?";
    }
    case 3:
      return "truncate";
    case 4:
      return "relation";
    default:
      return "message";
  }
}

std::vector<std::string> Kinds(const std::vector<LogicalEvent>& events) {
  std::vector<std::string> out;
  for (const LogicalEvent& e : events) out.push_back(Kind(e));
  return out;
}

// The events up to and including the next Commit.
std::vector<LogicalEvent> ReadTransaction(LogicalStream& s) {
  std::vector<LogicalEvent> out;
  const absl::Time give_up = absl::Now() + kWait;
  while (absl::Now() < give_up) {
    absl::StatusOr<std::optional<LogicalEvent>> e = s.Next(give_up);
    if (!e.ok()) {
      ADD_FAILURE() << "Next: " << e.status();
      return out;
    }
    if (!e->has_value()) break;
    out.push_back(**e);
    if (std::holds_alternative<CommitEvent>(out.back())) return out;
  }
  ADD_FAILURE() << "no Commit within " << kWait << " (events: " << out.size() << ")";
  return out;
}

std::vector<const ChangeEvent*> Changes(const std::vector<LogicalEvent>& events) {
  std::vector<const ChangeEvent*> out;
  for (const LogicalEvent& e : events) {
    if (const auto* c = std::get_if<ChangeEvent>(&e)) out.push_back(c);
  }
  return out;
}

std::vector<KeyValue> Key(std::vector<KeyValue> values) { return values; }

// Calls Next (events are dropped) until `done` or kWait passes.
bool PumpUntil(LogicalStream& s, const std::function<bool()>& done) {
  const absl::Time give_up = absl::Now() + kWait;
  while (absl::Now() < give_up) {
    if (done()) return true;
    absl::StatusOr<std::optional<LogicalEvent>> e = s.Next(absl::Now() + absl::Milliseconds(50));
    if (!e.ok()) {
      ADD_FAILURE() << "Next: " << e.status();
      return false;
    }
  }
  return done();
}

// Polls the server until `sql` returns `want` or kWait passes.
bool WaitForValue(PostgresCluster& pg, const std::string& sql, const std::string& want) {
  const absl::Time give_up = absl::Now() + kWait;
  while (absl::Now() < give_up) {
    absl::StatusOr<std::string> v = pg.QueryValue(kDb, sql);
    if (v.ok() && *v == want) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return false;
}

class LogicalStreamTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { ASSERT_TRUE(testing::SharedPostgres().CreateDatabase(kDb).ok()); }

  void SetUp() override { pg_ = &testing::SharedPostgres(); }

  // Drops and creates the tables, runs `sql` for them.
  void Setup(const std::string& sql) { ASSERT_TRUE(pg_->Exec(kDb, sql).ok()) << sql; }

  LogicalStreamOptions Options(const std::string& publication,
                               std::vector<std::string> tables) const {
    LogicalStreamOptions o;
    o.dsn = pg_->Dsn(kDb);
    o.publication = publication;
    o.tables = std::move(tables);
    return o;
  }

  std::unique_ptr<LogicalStream> MustOpen(const LogicalStreamOptions& o) {
    absl::StatusOr<std::unique_ptr<LogicalStream>> s = LogicalStream::Open(o);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }

  std::string SlotCount(const std::string& slot) {
    return *pg_->QueryValue(
        kDb,
        absl::StrCat("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '", slot, "'"));
  }

  PostgresCluster* pg_ = nullptr;
};

TEST_F(LogicalStreamTest, TheFixtureRunsWithLogicalDecoding) {
  EXPECT_EQ(*pg_->QueryValue(kDb, "SHOW wal_level"), "logical");
  EXPECT_EQ(*pg_->QueryValue(kDb, "SHOW max_replication_slots"), "10");
  EXPECT_EQ(*pg_->QueryValue(kDb, "SHOW max_wal_senders"), "10");
}

TEST_F(LogicalStreamTest, DecodesInsertUpdateDeleteOfAnotherClient) {
  Setup("DROP TABLE IF EXISTS items; CREATE TABLE items (id int PRIMARY KEY, v text)");
  std::unique_ptr<LogicalStream> s = MustOpen(Options("pub_items", {"items"}));
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(absl::StartsWith(s->slot_name(), "poolside_"));
  EXPECT_EQ(SlotCount(s->slot_name()), "1");
  Writer w(pg_->Dsn(kDb));
  ASSERT_TRUE(w.ok());

  const Lsn before = w.InsertLsn();
  const uint32_t xid = w.Transaction({"INSERT INTO items VALUES (1, 'a')"});
  const Lsn after = w.InsertLsn();
  std::vector<LogicalEvent> t = ReadTransaction(*s);
  ASSERT_EQ(Kinds(t), (std::vector<std::string>{"begin", "relation", "insert", "commit"}));
  const BeginEvent& begin = std::get<BeginEvent>(t[0]);
  const CommitEvent& commit = std::get<CommitEvent>(t[3]);
  EXPECT_EQ(begin.xid, xid);
  EXPECT_EQ(begin.final_lsn, commit.commit_lsn);
  EXPECT_GT(commit.commit_lsn, before);
  EXPECT_GT(commit.end_lsn, commit.commit_lsn);
  EXPECT_LE(commit.end_lsn, after);
  EXPECT_GE(commit.commit_lsn, s->start_lsn());
  const RelationEvent& rel = std::get<RelationEvent>(t[1]);
  EXPECT_TRUE(rel.changed);
  EXPECT_EQ(rel.relation->schema, "public");
  EXPECT_EQ(rel.relation->table, "items");
  EXPECT_EQ(rel.relation->replica_identity, 'd');
  const ChangeEvent& insert = std::get<ChangeEvent>(t[2]);
  EXPECT_EQ(insert.relation, rel.relation);
  EXPECT_EQ(insert.relation->KeyColumnNames(), std::vector<std::string>{"id"});
  EXPECT_EQ(insert.new_key, Key({"1"}));
  EXPECT_TRUE(insert.old_key.empty());
  EXPECT_EQ(s->delivered_lsn(), commit.end_lsn);

  // The key unchanged: no old key.
  w.Transaction({"UPDATE items SET v = 'b' WHERE id = 1"});
  t = ReadTransaction(*s);
  ASSERT_EQ(Kinds(t), (std::vector<std::string>{"begin", "update", "commit"}));
  EXPECT_EQ(std::get<ChangeEvent>(t[1]).new_key, Key({"1"}));
  EXPECT_TRUE(std::get<ChangeEvent>(t[1]).old_key.empty());

  // The key changed: both.
  w.Transaction({"UPDATE items SET id = 2 WHERE id = 1"});
  t = ReadTransaction(*s);
  ASSERT_EQ(Kinds(t), (std::vector<std::string>{"begin", "update", "commit"}));
  EXPECT_EQ(std::get<ChangeEvent>(t[1]).new_key, Key({"2"}));
  EXPECT_EQ(std::get<ChangeEvent>(t[1]).old_key, Key({"1"}));

  // Several statements, one transaction, in order; then a delete.
  w.Transaction({"INSERT INTO items VALUES (3, 'c'), (4, 'd')",
                 "UPDATE items SET v = 'e' WHERE id = 3", "DELETE FROM items WHERE id = 2"});
  t = ReadTransaction(*s);
  ASSERT_EQ(Kinds(t),
            (std::vector<std::string>{"begin", "insert", "insert", "update", "delete", "commit"}));
  EXPECT_EQ(std::get<ChangeEvent>(t[1]).new_key, Key({"3"}));
  EXPECT_EQ(std::get<ChangeEvent>(t[2]).new_key, Key({"4"}));
  EXPECT_EQ(std::get<ChangeEvent>(t[3]).new_key, Key({"3"}));
  EXPECT_EQ(std::get<ChangeEvent>(t[4]).old_key, Key({"2"}));
  EXPECT_TRUE(std::get<ChangeEvent>(t[4]).new_key.empty());

  // DDL shows as a new description before the table's next change.
  ASSERT_TRUE(w.Exec("ALTER TABLE items ADD COLUMN n int").ok());
  w.Transaction({"INSERT INTO items VALUES (5, 'f', 7)"});
  t = ReadTransaction(*s);
  ASSERT_EQ(Kinds(t), (std::vector<std::string>{"begin", "relation", "insert", "commit"}));
  EXPECT_TRUE(std::get<RelationEvent>(t[1]).changed);
  EXPECT_EQ(std::get<RelationEvent>(t[1]).relation->columns.size(), 3u);
  EXPECT_EQ(std::get<ChangeEvent>(t[2]).new_key, Key({"5"}));
}

TEST_F(LogicalStreamTest, DecodesCopyAndTruncate) {
  Setup("DROP TABLE IF EXISTS copied; CREATE TABLE copied (id bigserial PRIMARY KEY, v text)");
  std::unique_ptr<LogicalStream> s = MustOpen(Options("pub_copied", {"copied"}));
  ASSERT_NE(s, nullptr);
  Writer w(pg_->Dsn(kDb));
  ASSERT_TRUE(w.Copy("COPY copied (id, v) FROM STDIN", "10\ta\n11\tb\n12\t\\N\n").ok());
  std::vector<LogicalEvent> t = ReadTransaction(*s);
  ASSERT_EQ(Kinds(t), (std::vector<std::string>{"begin", "relation", "insert", "insert", "insert",
                                                "commit"}));
  EXPECT_EQ(std::get<ChangeEvent>(t[2]).new_key, Key({"10"}));
  EXPECT_EQ(std::get<ChangeEvent>(t[3]).new_key, Key({"11"}));
  EXPECT_EQ(std::get<ChangeEvent>(t[4]).new_key, Key({"12"}));

  ASSERT_TRUE(w.Exec("TRUNCATE copied RESTART IDENTITY").ok());
  t = ReadTransaction(*s);
  // TRUNCATE gives the table new storage, which makes the server describe it
  // again first.
  ASSERT_EQ(Kinds(t), (std::vector<std::string>{"begin", "relation", "truncate", "commit"}));
  EXPECT_FALSE(std::get<RelationEvent>(t[1]).changed);
  const TruncateEvent& tr = std::get<TruncateEvent>(t[2]);
  ASSERT_EQ(tr.relations.size(), 1u);
  EXPECT_EQ(tr.relations[0]->table, "copied");
  EXPECT_TRUE(tr.restart_identity);
  EXPECT_FALSE(tr.cascade);
  EXPECT_EQ(*pg_->QueryValue(kDb, "SELECT count(*) FROM copied"), "0");
}

TEST_F(LogicalStreamTest, RolledBackWorkProducesNoChanges) {
  Setup("DROP TABLE IF EXISTS rb; CREATE TABLE rb (id int PRIMARY KEY)");
  std::unique_ptr<LogicalStream> s = MustOpen(Options("pub_rb", {"rb"}));
  ASSERT_NE(s, nullptr);
  Writer w(pg_->Dsn(kDb));
  ASSERT_TRUE(w.Exec("BEGIN").ok());
  ASSERT_TRUE(w.Exec("INSERT INTO rb VALUES (100)").ok());
  ASSERT_TRUE(w.Exec("ROLLBACK").ok());
  // A rolled-back subtransaction inside a committed one.
  w.Transaction({"INSERT INTO rb VALUES (101)", "SAVEPOINT s", "INSERT INTO rb VALUES (102)",
                 "ROLLBACK TO SAVEPOINT s"});
  w.Transaction({"INSERT INTO rb VALUES (103)"});

  std::vector<KeyValue> seen;
  int commits = 0;
  while (commits < 2) {
    std::vector<LogicalEvent> t = ReadTransaction(*s);
    if (t.empty()) break;
    ++commits;
    for (const ChangeEvent* c : Changes(t)) seen.push_back(c->new_key.at(0));
  }
  EXPECT_EQ(seen, Key({"101", "103"}));
  EXPECT_EQ(*pg_->QueryValue(kDb, "SELECT string_agg(id::text, ',' ORDER BY id) FROM rb"),
            "101,103");
}

TEST_F(LogicalStreamTest, CompositePrimaryKeyInTableOrder) {
  Setup(
      "DROP TABLE IF EXISTS pair; "
      "CREATE TABLE pair (a int, note text, b text, PRIMARY KEY (b, a))");
  std::unique_ptr<LogicalStream> s = MustOpen(Options("pub_pair", {"public.pair"}));
  ASSERT_NE(s, nullptr);
  Writer w(pg_->Dsn(kDb));
  w.Transaction({"INSERT INTO pair VALUES (1, 'n', 'x')"});
  std::vector<LogicalEvent> t = ReadTransaction(*s);
  ASSERT_EQ(Changes(t).size(), 1u);
  EXPECT_EQ(Changes(t)[0]->relation->KeyColumnNames(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(Changes(t)[0]->new_key, Key({"1", "x"}));

  w.Transaction({"UPDATE pair SET b = 'y' WHERE a = 1"});
  t = ReadTransaction(*s);
  ASSERT_EQ(Changes(t).size(), 1u);
  EXPECT_EQ(Changes(t)[0]->new_key, Key({"1", "y"}));
  EXPECT_EQ(Changes(t)[0]->old_key, Key({"1", "x"}));

  w.Transaction({"UPDATE pair SET note = 'm'"});
  t = ReadTransaction(*s);
  ASSERT_EQ(Changes(t).size(), 1u);
  EXPECT_EQ(Changes(t)[0]->new_key, Key({"1", "y"}));
  EXPECT_TRUE(Changes(t)[0]->old_key.empty());

  w.Transaction({"DELETE FROM pair"});
  t = ReadTransaction(*s);
  ASSERT_EQ(Changes(t).size(), 1u);
  EXPECT_EQ(Changes(t)[0]->kind, ChangeEvent::Kind::kDelete);
  EXPECT_EQ(Changes(t)[0]->old_key, Key({"1", "y"}));
}

TEST_F(LogicalStreamTest, ReplicaIdentityFullKeysTheWholeRow) {
  Setup(
      "DROP TABLE IF EXISTS full_row; CREATE TABLE full_row (id int, v text, n int); "
      "ALTER TABLE full_row REPLICA IDENTITY FULL");
  std::unique_ptr<LogicalStream> s = MustOpen(Options("pub_full", {"full_row"}));
  ASSERT_NE(s, nullptr);
  Writer w(pg_->Dsn(kDb));
  w.Transaction({"INSERT INTO full_row VALUES (1, 'a', NULL)"});
  std::vector<LogicalEvent> t = ReadTransaction(*s);
  ASSERT_EQ(Changes(t).size(), 1u);
  EXPECT_EQ(Changes(t)[0]->relation->replica_identity, 'f');
  EXPECT_EQ(Changes(t)[0]->relation->KeyColumnNames(), (std::vector<std::string>{"id", "v", "n"}));
  EXPECT_EQ(Changes(t)[0]->new_key, Key({"1", "a", std::nullopt}));

  w.Transaction({"UPDATE full_row SET v = 'b'"});
  t = ReadTransaction(*s);
  ASSERT_EQ(Changes(t).size(), 1u);
  EXPECT_EQ(Changes(t)[0]->old_key, Key({"1", "a", std::nullopt}));
  EXPECT_EQ(Changes(t)[0]->new_key, Key({"1", "b", std::nullopt}));

  // The old row is sent with every update; an unchanged one is not reported.
  w.Transaction({"UPDATE full_row SET n = n"});
  t = ReadTransaction(*s);
  ASSERT_EQ(Changes(t).size(), 1u);
  EXPECT_TRUE(Changes(t)[0]->old_key.empty());
  EXPECT_EQ(Changes(t)[0]->new_key, Key({"1", "b", std::nullopt}));

  // A value stored out of line (TOAST) and left unchanged is not sent in the
  // new row; it is taken from the old one.
  w.Transaction(
      {"UPDATE full_row SET v = (SELECT string_agg(md5(g::text), '') FROM "
       "generate_series(1, 3000) g)"});
  t = ReadTransaction(*s);
  w.Transaction({"UPDATE full_row SET n = 5"});
  t = ReadTransaction(*s);
  ASSERT_EQ(Changes(t).size(), 1u);
  const ChangeEvent& c = *Changes(t)[0];
  EXPECT_TRUE(c.key_known);
  ASSERT_EQ(c.new_key.size(), 3u);
  ASSERT_TRUE(c.new_key[1].has_value());
  EXPECT_EQ(c.new_key[1]->size(), 3000u * 32);
  EXPECT_EQ(c.new_key[2], KeyValue("5"));
  ASSERT_EQ(c.old_key.size(), 3u);
  EXPECT_EQ(c.old_key[1], c.new_key[1]);
  EXPECT_EQ(c.old_key[2], std::nullopt);

  w.Transaction({"DELETE FROM full_row"});
  t = ReadTransaction(*s);
  ASSERT_EQ(Changes(t).size(), 1u);
  EXPECT_EQ(Changes(t)[0]->kind, ChangeEvent::Kind::kDelete);
  EXPECT_EQ(Changes(t)[0]->old_key.at(0), KeyValue("1"));
}

TEST_F(LogicalStreamTest, TableWithoutPrimaryKey) {
  Setup("DROP TABLE IF EXISTS nokey; CREATE TABLE nokey (line text)");
  // Refused by default: publishing it would make PostgreSQL refuse UPDATE and
  // DELETE on it for every writer.
  absl::StatusOr<std::unique_ptr<LogicalStream>> refused =
      LogicalStream::Open(Options("pub_nokey", {"nokey"}));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "public.nokey"));
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "replica identity"));
  EXPECT_EQ(
      *pg_->QueryValue(kDb, "SELECT count(*) FROM pg_publication WHERE pubname = 'pub_nokey'"),
      "0");
  Writer w(pg_->Dsn(kDb));
  EXPECT_TRUE(w.Exec("UPDATE nokey SET line = line").ok());

  // Allowed for append-only tables: changes carry no key (invalidate the table).
  LogicalStreamOptions o = Options("pub_nokey", {"nokey"});
  o.allow_tables_without_replica_identity = true;
  std::unique_ptr<LogicalStream> s = MustOpen(o);
  ASSERT_NE(s, nullptr);
  w.Transaction({"INSERT INTO nokey VALUES ('hello')"});
  std::vector<LogicalEvent> t = ReadTransaction(*s);
  ASSERT_EQ(Changes(t).size(), 1u);
  EXPECT_TRUE(Changes(t)[0]->relation->key_columns.empty());
  EXPECT_TRUE(Changes(t)[0]->new_key.empty());
  EXPECT_TRUE(Changes(t)[0]->key_known);
  // The cost that option accepts.
  absl::Status update = w.Exec("UPDATE nokey SET line = 'x'");
  EXPECT_TRUE(absl::StrContains(update.message(), "replica identity")) << update;
  ASSERT_TRUE(pg_->Exec(kDb, "DROP PUBLICATION pub_nokey").ok());
}

TEST_F(LogicalStreamTest, QuotedSchemaQualifiedAndPartitionedTables) {
  Setup(
      "DROP SCHEMA IF EXISTS \"App\" CASCADE; CREATE SCHEMA \"App\"; "
      "CREATE TABLE \"App\".\"Odd Name\" (\"Key\" int PRIMARY KEY); "
      "DROP TABLE IF EXISTS parted; "
      "CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id); "
      "CREATE TABLE parted_low PARTITION OF parted FOR VALUES FROM (0) TO (100); "
      "CREATE TABLE parted_high PARTITION OF parted FOR VALUES FROM (100) TO (200)");
  std::unique_ptr<LogicalStream> s =
      MustOpen(Options("pub \"odd' name", {"\"App\".\"Odd Name\"", "parted"}));
  ASSERT_NE(s, nullptr);
  Writer w(pg_->Dsn(kDb));
  w.Transaction({"INSERT INTO \"App\".\"Odd Name\" VALUES (7)", "INSERT INTO parted VALUES (150)"});
  std::vector<LogicalEvent> t = ReadTransaction(*s);
  ASSERT_EQ(Changes(t).size(), 2u);
  EXPECT_EQ(Changes(t)[0]->relation->schema, "App");
  EXPECT_EQ(Changes(t)[0]->relation->table, "Odd Name");
  EXPECT_EQ(Changes(t)[0]->relation->KeyColumnNames(), std::vector<std::string>{"Key"});
  // Reported under the partitioned table, not the partition.
  EXPECT_EQ(Changes(t)[1]->relation->table, "parted");
  EXPECT_EQ(Changes(t)[1]->new_key, Key({"150"}));

  // Opening again finds everything in place (the partitioned table is listed
  // through itself or its partitions).
  std::unique_ptr<LogicalStream> again =
      MustOpen(Options("pub \"odd' name", {"parted", "\"App\".\"Odd Name\""}));
  EXPECT_NE(again, nullptr);
  EXPECT_EQ(*pg_->QueryValue(kDb,
                             "SELECT count(*) FROM pg_publication_rel r JOIN pg_publication p "
                             "ON p.oid = r.prpubid WHERE p.pubname = 'pub \"odd'' name'"),
            "2");
}

// With `messages`, pg_logical_emit_message arrives: a transactional message
// inside its transaction, in commit order (a transaction holding nothing else
// is delivered too), a rolled-back one never, a non-transactional one between
// transactions. Without it, a transaction holding only a message is skipped.
TEST_F(LogicalStreamTest, MessagesArriveInCommitOrderOnlyWhenAskedFor) {
  Setup("DROP TABLE IF EXISTS said; CREATE TABLE said (id int PRIMARY KEY)");
  LogicalStreamOptions o = Options("pub_said", {"said"});
  std::unique_ptr<LogicalStream> plain = MustOpen(o);
  ASSERT_NE(plain, nullptr);
  EXPECT_FALSE(plain->messages());
  o.messages = true;
  std::unique_ptr<LogicalStream> s = MustOpen(o);
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(s->messages()) << "PostgreSQL 14 and later send messages";

  Writer w(pg_->Dsn(kDb));
  ASSERT_TRUE(w.ok());
  w.Transaction({"INSERT INTO said VALUES (1)",
                 "SELECT pg_logical_emit_message(true, 'poolside-test', 'with a row')"});
  ASSERT_TRUE(w.Exec("SELECT pg_logical_emit_message(true, 'poolside-test', 'alone')").ok());
  const Lsn after_alone = w.InsertLsn();
  ASSERT_TRUE(w.Exec("BEGIN; SELECT pg_logical_emit_message(true, 'poolside-test', 'undone'); "
                     "ROLLBACK")
                  .ok());
  ASSERT_TRUE(w.Exec("SELECT pg_logical_emit_message(false, 'other', 'now')").ok());
  w.Transaction({"INSERT INTO said VALUES (2)"});

  std::vector<LogicalEvent> first = ReadTransaction(*s);
  EXPECT_EQ(Kinds(first),
            (std::vector<std::string>{"begin", "relation", "insert", "message", "commit"}));
  if (first.size() == 5) {
    const auto& m = std::get<MessageEvent>(first[3]);
    EXPECT_TRUE(m.transactional);
    EXPECT_EQ(m.prefix, "poolside-test");
    EXPECT_EQ(m.content, "with a row");
    EXPECT_LE(m.lsn, std::get<CommitEvent>(first[4]).commit_lsn);
  }
  std::vector<LogicalEvent> alone = ReadTransaction(*s);
  ASSERT_EQ(Kinds(alone), (std::vector<std::string>{"begin", "message", "commit"}));
  EXPECT_EQ(std::get<MessageEvent>(alone[1]).content, "alone");
  EXPECT_LE(std::get<CommitEvent>(alone[2]).end_lsn, after_alone);
  EXPECT_GE(s->delivered_lsn(), std::get<CommitEvent>(alone[2]).end_lsn);
  // The rolled-back message never comes; the non-transactional one comes on
  // its own, before the next transaction.
  std::vector<LogicalEvent> rest = ReadTransaction(*s);
  ASSERT_EQ(Kinds(rest), (std::vector<std::string>{"message", "begin", "insert", "commit"}));
  EXPECT_FALSE(std::get<MessageEvent>(rest[0]).transactional);
  EXPECT_EQ(std::get<MessageEvent>(rest[0]).prefix, "other");
  EXPECT_EQ(std::get<MessageEvent>(rest[0]).content, "now");

  // The stream that did not ask: only the two inserts' transactions.
  std::vector<LogicalEvent> one = ReadTransaction(*plain);
  EXPECT_EQ(Kinds(one), (std::vector<std::string>{"begin", "relation", "insert", "commit"}));
  std::vector<LogicalEvent> two = ReadTransaction(*plain);
  EXPECT_EQ(Kinds(two), (std::vector<std::string>{"begin", "insert", "commit"}));
}

TEST_F(LogicalStreamTest, NextHonoursItsDeadline) {
  Setup("DROP TABLE IF EXISTS quiet; CREATE TABLE quiet (id int PRIMARY KEY)");
  std::unique_ptr<LogicalStream> s = MustOpen(Options("pub_quiet", {"quiet"}));
  ASSERT_NE(s, nullptr);
  const absl::Time deadline = absl::Now() + absl::Milliseconds(300);
  absl::StatusOr<std::optional<LogicalEvent>> e = s->Next(deadline);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_FALSE(e->has_value());
  EXPECT_GE(absl::Now(), deadline);
  // A deadline already passed: one look at what is there.
  e = s->Next(absl::InfinitePast());
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_FALSE(e->has_value());
  // The stream still works.
  Writer w(pg_->Dsn(kDb));
  w.Transaction({"INSERT INTO quiet VALUES (1)"});
  EXPECT_EQ(Changes(ReadTransaction(*s)).size(), 1u);
}

// The server ends a replication connection that stays silent for
// wal_sender_timeout, asking for a reply halfway; Next answers in time even
// when its own status updates are far apart.
TEST_F(LogicalStreamTest, AnswersKeepalivesThatAskForAReply) {
  Setup("DROP TABLE IF EXISTS kept; CREATE TABLE kept (id int PRIMARY KEY)");
  LogicalStreamOptions o = Options("pub_kept", {"kept"});
  o.dsn += " options='-c wal_sender_timeout=1s'";
  o.status_interval = absl::Hours(1);
  std::unique_ptr<LogicalStream> s = MustOpen(o);
  ASSERT_NE(s, nullptr);
  const absl::Time until = absl::Now() + absl::Milliseconds(2500);
  while (absl::Now() < until) {
    absl::StatusOr<std::optional<LogicalEvent>> e = s->Next(until);
    ASSERT_TRUE(e.ok()) << e.status();
  }
  Writer w(pg_->Dsn(kDb));
  w.Transaction({"INSERT INTO kept VALUES (1)"});
  EXPECT_EQ(Changes(ReadTransaction(*s)).size(), 1u);
  EXPECT_EQ(SlotCount(s->slot_name()), "1");
}

TEST_F(LogicalStreamTest, LargeTransactionArrivesChangeByChange) {
  Setup("DROP TABLE IF EXISTS big; CREATE TABLE big (id int PRIMARY KEY, v text)");
  std::unique_ptr<LogicalStream> s = MustOpen(Options("pub_big", {"big"}));
  ASSERT_NE(s, nullptr);
  Writer w(pg_->Dsn(kDb));
  w.Transaction({"INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g"});
  int changes = 0;
  int next_key = 1;
  bool in_order = true;
  bool committed = false;
  const absl::Time give_up = absl::Now() + kWait;
  while (!committed && absl::Now() < give_up) {
    absl::StatusOr<std::optional<LogicalEvent>> e = s->Next(give_up);
    ASSERT_TRUE(e.ok()) << e.status();
    if (!e->has_value()) break;
    if (const auto* c = std::get_if<ChangeEvent>(&**e)) {
      ++changes;
      in_order = in_order && c->new_key == Key({std::to_string(next_key++)});
    }
    committed = std::holds_alternative<CommitEvent>(**e);
  }
  EXPECT_TRUE(committed);
  EXPECT_EQ(changes, 20000);
  EXPECT_TRUE(in_order);
}

TEST_F(LogicalStreamTest, TerminatedWalsenderEndsTheStreamAndLeavesNoSlot) {
  Setup("DROP TABLE IF EXISTS term; CREATE TABLE term (id int PRIMARY KEY)");
  std::unique_ptr<LogicalStream> s = MustOpen(Options("pub_term", {"term"}));
  ASSERT_NE(s, nullptr);
  const std::string slot = s->slot_name();
  EXPECT_EQ(*pg_->QueryValue(kDb, absl::StrCat("SELECT temporary::text || active_pid FROM "
                                               "pg_replication_slots WHERE slot_name = '",
                                               slot, "'")),
            absl::StrCat("true", s->backend_pid()));
  ASSERT_TRUE(
      pg_->Exec(kDb, absl::StrCat("SELECT pg_terminate_backend(", s->backend_pid(), ")")).ok());
  absl::StatusOr<std::optional<LogicalEvent>> e = s->Next(absl::Now() + kWait);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kUnavailable) << e.status();
  EXPECT_TRUE(absl::StrContains(e.status().message(), "resubscribe")) << e.status();
  // It stays over.
  e = s->Next(absl::Now());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(WaitForValue(*pg_,
                           absl::StrCat("SELECT count(*) FROM pg_replication_slots WHERE "
                                        "slot_name = '",
                                        slot, "'"),
                           "0"));
}

TEST_F(LogicalStreamTest, ClosingTheStreamDropsItsTemporarySlot) {
  Setup("DROP TABLE IF EXISTS closing; CREATE TABLE closing (id int PRIMARY KEY)");
  std::unique_ptr<LogicalStream> s = MustOpen(Options("pub_closing", {"closing"}));
  ASSERT_NE(s, nullptr);
  const std::string slot = s->slot_name();
  EXPECT_EQ(SlotCount(slot), "1");
  s.reset();
  EXPECT_TRUE(WaitForValue(*pg_,
                           absl::StrCat("SELECT count(*) FROM pg_replication_slots WHERE "
                                        "slot_name = '",
                                        slot, "'"),
                           "0"));
}

TEST_F(LogicalStreamTest, ConfirmAdvancesTheSlotsConfirmedPosition) {
  Setup("DROP TABLE IF EXISTS conf; CREATE TABLE conf (id int PRIMARY KEY)");
  LogicalStreamOptions o = Options("pub_conf", {"conf"});
  o.status_interval = absl::Milliseconds(50);
  std::unique_ptr<LogicalStream> s = MustOpen(o);
  ASSERT_NE(s, nullptr);
  Writer w(pg_->Dsn(kDb));
  w.Transaction({"INSERT INTO conf VALUES (1)"});
  std::vector<LogicalEvent> t = ReadTransaction(*s);
  ASSERT_FALSE(t.empty());
  const Lsn end = std::get<CommitEvent>(t.back()).end_lsn;
  const std::string confirmed_sql =
      absl::StrCat("SELECT confirmed_flush_lsn >= '", FormatLsn(end),
                   "'::pg_lsn FROM pg_replication_slots WHERE slot_name = '", s->slot_name(), "'");
  // Status updates keep going out, but nothing past what was confirmed.
  int updates_seen = 0;
  ASSERT_TRUE(PumpUntil(*s, [&] { return ++updates_seen > 10; }));
  EXPECT_EQ(*pg_->QueryValue(kDb, confirmed_sql), "f");
  s->Confirm(end);
  EXPECT_TRUE(PumpUntil(*s, [&] { return *pg_->QueryValue(kDb, confirmed_sql) == "t"; }));
}

TEST_F(LogicalStreamTest, DeliveredPositionFollowsUnpublishedWrites) {
  Setup(
      "DROP TABLE IF EXISTS watched, unwatched; CREATE TABLE watched (id int PRIMARY KEY); "
      "CREATE TABLE unwatched (id int PRIMARY KEY)");
  std::unique_ptr<LogicalStream> s = MustOpen(Options("pub_watched", {"watched"}));
  ASSERT_NE(s, nullptr);
  Writer w(pg_->Dsn(kDb));
  w.Transaction({"INSERT INTO unwatched VALUES (1)"});
  const Lsn token = w.InsertLsn();
  bool got_event = false;
  const absl::Time give_up = absl::Now() + kWait;
  while (s->delivered_lsn() < token && absl::Now() < give_up) {
    absl::StatusOr<std::optional<LogicalEvent>> e = s->Next(absl::Now() + absl::Milliseconds(50));
    ASSERT_TRUE(e.ok()) << e.status();
    got_event = got_event || e->has_value();
  }
  EXPECT_GE(s->delivered_lsn(), token);
  EXPECT_GE(s->server_wal_end(), token);
  EXPECT_FALSE(got_event);
}

TEST_F(LogicalStreamTest, PermanentSlotResumesAfterTheLastConfirmedPosition) {
  Setup("DROP TABLE IF EXISTS perm; CREATE TABLE perm (id int PRIMARY KEY)");
  (void)pg_->Exec(kDb, "SELECT pg_drop_replication_slot('walstream_perm')");
  LogicalStreamOptions o = Options("pub_perm", {"perm"});
  o.slot = "walstream_perm";
  o.temporary_slot = false;
  o.status_interval = absl::Milliseconds(50);
  Writer w(pg_->Dsn(kDb));
  {
    std::unique_ptr<LogicalStream> s = MustOpen(o);
    ASSERT_NE(s, nullptr);
    // A second consumer of the same slot is refused while the first holds it.
    absl::StatusOr<std::unique_ptr<LogicalStream>> second = LogicalStream::Open(o);
    EXPECT_EQ(second.status().code(), absl::StatusCode::kAborted) << second.status();

    w.Transaction({"INSERT INTO perm VALUES (1)"});
    std::vector<LogicalEvent> t = ReadTransaction(*s);
    ASSERT_FALSE(t.empty());
    const Lsn end = std::get<CommitEvent>(t.back()).end_lsn;
    s->Confirm(end);
    ASSERT_TRUE(PumpUntil(*s, [&] {
      return *pg_->QueryValue(kDb, absl::StrCat("SELECT confirmed_flush_lsn >= '", FormatLsn(end),
                                                "' FROM pg_replication_slots WHERE slot_name = "
                                                "'walstream_perm'")) == "t";
    }));
    // Delivered but never confirmed: delivered again after the reconnect.
    w.Transaction({"INSERT INTO perm VALUES (3)"});
    EXPECT_EQ(Changes(ReadTransaction(*s)).size(), 1u);
  }
  EXPECT_EQ(SlotCount("walstream_perm"), "1");
  w.Transaction({"INSERT INTO perm VALUES (2)"});
  {
    std::unique_ptr<LogicalStream> s = MustOpen(o);
    ASSERT_NE(s, nullptr);
    std::vector<KeyValue> keys;
    for (int i = 0; i < 2; ++i) {
      const std::vector<LogicalEvent> t = ReadTransaction(*s);
      for (const ChangeEvent* c : Changes(t)) keys.push_back(c->new_key.at(0));
    }
    EXPECT_EQ(keys, Key({"3", "2"}));
  }
  ASSERT_TRUE(pg_->Exec(kDb, "SELECT pg_drop_replication_slot('walstream_perm')").ok());
  EXPECT_EQ(SlotCount("walstream_perm"), "0");
}

TEST_F(LogicalStreamTest, ConcurrentOpensShareOnePublication) {
  Setup(
      "DROP TABLE IF EXISTS con_a, con_b; CREATE TABLE con_a (id int PRIMARY KEY); "
      "CREATE TABLE con_b (id int PRIMARY KEY)");
  for (int round = 0; round < 3; ++round) {
    const std::string pub = absl::StrCat("pub_con_", round);
    absl::Mutex mu;
    std::vector<absl::Status> results;
    std::vector<std::unique_ptr<LogicalStream>> streams;
    std::vector<std::thread> threads;
    for (int i = 0; i < 3; ++i) {
      threads.emplace_back([&, i] {
        LogicalStreamOptions o = Options(pub, {i == 0 ? "con_a" : i == 1 ? "con_b" : "con_a"});
        absl::StatusOr<std::unique_ptr<LogicalStream>> s = LogicalStream::Open(o);
        absl::MutexLock lock(&mu);
        results.push_back(s.status());
        if (s.ok()) streams.push_back(*std::move(s));
      });
    }
    for (std::thread& t : threads) t.join();
    for (const absl::Status& r : results) EXPECT_TRUE(r.ok()) << "round " << round << ": " << r;
    EXPECT_EQ(*pg_->QueryValue(kDb, absl::StrCat("SELECT string_agg(tablename, ',' ORDER BY "
                                                 "tablename) FROM pg_publication_tables WHERE "
                                                 "pubname = '",
                                                 pub, "'")),
              "con_a,con_b");
  }
}

TEST_F(LogicalStreamTest, OpenGivesUpBehindARunningTransactionAndLeavesNoSlot) {
  Setup("DROP TABLE IF EXISTS blocker; CREATE TABLE blocker (id int PRIMARY KEY)");
  Writer w(pg_->Dsn(kDb));
  ASSERT_TRUE(w.Exec("BEGIN").ok());
  ASSERT_TRUE(w.Exec("INSERT INTO blocker VALUES (1)").ok());  // takes an xid
  LogicalStreamOptions o = Options("pub_blocker", {"blocker"});
  o.slot = "walstream_blocked";
  o.open_timeout = absl::Seconds(1);
  absl::StatusOr<std::unique_ptr<LogicalStream>> s = LogicalStream::Open(o);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kDeadlineExceeded) << s.status();
  EXPECT_TRUE(WaitForValue(
      *pg_, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walstream_blocked'",
      "0"));
  ASSERT_TRUE(w.Exec("COMMIT").ok());
  o.open_timeout = absl::Seconds(30);
  EXPECT_NE(MustOpen(o), nullptr);
}

TEST_F(LogicalStreamTest, RefusesBadOptionsAndMissingThings) {
  Setup(
      "DROP TABLE IF EXISTS opt_t CASCADE; CREATE TABLE opt_t (id int PRIMARY KEY); "
      "CREATE VIEW opt_v AS SELECT * FROM opt_t; "
      "DROP PUBLICATION IF EXISTS pub_inserts_only; "
      "CREATE PUBLICATION pub_inserts_only FOR TABLE opt_t WITH (publish = 'insert')");
  auto code = [](const LogicalStreamOptions& o) { return LogicalStream::Open(o).status().code(); };
  LogicalStreamOptions o = Options("pub_opt", {"opt_t"});
  o.slot = "Bad-Name";
  EXPECT_EQ(code(o), absl::StatusCode::kInvalidArgument);
  o.slot = std::string(64, 'a');
  EXPECT_EQ(code(o), absl::StatusCode::kInvalidArgument);
  o = Options("", {"opt_t"});
  EXPECT_EQ(code(o), absl::StatusCode::kInvalidArgument);
  o = Options(std::string(64, 'p'), {"opt_t"});
  EXPECT_EQ(code(o), absl::StatusCode::kInvalidArgument);
  o = Options("pub_opt", {});
  EXPECT_EQ(code(o), absl::StatusCode::kInvalidArgument);
  o = Options("pub_opt", {"opt_t"});
  o.temporary_slot = false;  // a permanent slot needs a name
  EXPECT_EQ(code(o), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Options("pub_opt", {"no_such_table"})), absl::StatusCode::kNotFound);
  EXPECT_EQ(code(Options("pub_opt", {"opt_v"})), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Options("pub_inserts_only", {"opt_t"})), absl::StatusCode::kFailedPrecondition);
  o = Options("pub_opt", {"opt_t"});
  o.dsn = "host=127.0.0.1 port=" + std::to_string(*testing::PickFreePort()) + " dbname=x";
  EXPECT_EQ(code(o), absl::StatusCode::kUnavailable);
  o.dsn = "host='unterminated";
  EXPECT_EQ(code(o), absl::StatusCode::kInvalidArgument);
  // Nothing was created on the way.
  EXPECT_EQ(*pg_->QueryValue(kDb, "SELECT count(*) FROM pg_publication WHERE pubname = 'pub_opt'"),
            "0");
  // A temporary slot's name is taken while its stream runs.
  o = Options("pub_opt", {"opt_t"});
  o.slot = "walstream_dup";
  std::unique_ptr<LogicalStream> first = MustOpen(o);
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(code(o), absl::StatusCode::kAlreadyExists);
  first.reset();
  ASSERT_TRUE(pg_->Exec(kDb, "DROP PUBLICATION pub_opt").ok());
  // A role without REPLICATION.
  Setup(
      "DROP ROLE IF EXISTS walstream_plain; CREATE ROLE walstream_plain LOGIN; "
      "GRANT ALL ON opt_t TO walstream_plain");
  o = Options("pub_opt", {"opt_t"});
  o.dsn =
      absl::StrCat("host=127.0.0.1 port=", pg_->port(), " dbname=", kDb, " user=walstream_plain");
  absl::Status denied = LogicalStream::Open(o).status();
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied) << denied;
  EXPECT_TRUE(absl::StrContains(denied.message(), "REPLICATION")) << denied;
}

TEST(LogicalStreamWalLevelTest, ReplicaWalLevelIsAFailedPrecondition) {
  testing::PostgresOptions options;
  options.extra_settings = {"wal_level=replica"};
  absl::StatusOr<std::unique_ptr<PostgresCluster>> pg = PostgresCluster::Start(options);
  ASSERT_TRUE(pg.ok()) << pg.status();
  ASSERT_TRUE((*pg)->Exec("postgres", "CREATE TABLE t (id int PRIMARY KEY)").ok());
  LogicalStreamOptions o;
  o.dsn = (*pg)->Dsn();
  o.publication = "pub_t";
  o.tables = {"t"};
  absl::Status s = LogicalStream::Open(o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "wal_level = replica")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "wal_level = logical")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "fallback")) << s;
  EXPECT_EQ(*(*pg)->QueryValue("postgres", "SELECT count(*) FROM pg_publication"), "0");
  EXPECT_EQ(*(*pg)->QueryValue("postgres", "SELECT count(*) FROM pg_replication_slots"), "0");
}

}  // namespace
}  // namespace poolside::db
