// WalRelay against a real PostgreSQL: one holder among several relays, what
// it relays for each kind of write, takeover when the holder goes, no slot
// left behind, and a server that cannot decode its WAL.

#include "services/query/wal_relay.h"

#include <libpq-fe.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/db/pgoutput_decoder.h"
#include "gtest/gtest.h"
#include "services/query/row_keys.h"
#include "services/query/token_fence.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/wal_position.h"

namespace poolside::query {
namespace {

using ::poolside::testing::InsertLsn;
using ::poolside::testing::PostgresCluster;
using ::poolside::testing::WaitFor;

constexpr char kDb[] = "relay";
constexpr char kChannel[] = "relay_test";
constexpr absl::Duration kWait = absl::Seconds(30);  // only reached when something is broken

// Our own cluster: commits flush the WAL at once, so decoding follows within
// milliseconds (the shared fixture's asynchronous commit leaves that to the
// WAL writer).
PostgresCluster& Cluster() {
  static PostgresCluster* pg = [] {
    testing::PostgresOptions o;
    o.extra_settings = {"synchronous_commit=on"};
    auto c = PostgresCluster::Start(o);
    if (!c.ok()) {
      ADD_FAILURE() << c.status();
      std::abort();
    }
    return c->release();
  }();
  return *pg;
}

// A LISTENing session of the test's own, collecting relay messages.
class Listener {
 public:
  explicit Listener(const std::string& dsn) {
    db::ConnectionOptions o;
    o.dsn = dsn;
    auto c = db::Connection::Open(o);
    EXPECT_TRUE(c.ok()) << c.status();
    conn_ = *std::move(c);
    EXPECT_TRUE(conn_->Listen(kChannel, absl::Now() + absl::Seconds(5)).ok());
  }

  // Reads until `done` holds for what arrived so far (false after kWait).
  bool ReadUntil(const std::function<bool(const std::vector<RelayMessage>&)>& done) {
    const absl::Time until = absl::Now() + kWait;
    while (!done(messages_)) {
      if (absl::Now() > until) return false;
      std::vector<db::Notification> got;
      if (!conn_->AwaitNotifications(absl::Now() + absl::Milliseconds(100), &got).ok()) {
        return false;
      }
      for (const db::Notification& n : got) {
        absl::StatusOr<RelayMessage> m = DecodeRelay(n.payload);
        EXPECT_TRUE(m.ok()) << m.status() << ": " << n.payload;
        if (m.ok()) {
          messages_.push_back(*std::move(m));
          pids_.push_back(n.backend_pid);
        }
      }
    }
    return true;
  }
  std::vector<RelayMessage>& messages() { return messages_; }
  const std::vector<int>& pids() const { return pids_; }
  void Clear() {
    messages_.clear();
    pids_.clear();
  }

 private:
  std::unique_ptr<db::Connection> conn_;
  std::vector<RelayMessage> messages_;
  std::vector<int> pids_;
};

WalRelay::Options RelayOptions(const std::string& publication) {
  WalRelay::Options o;
  o.database = kDb;
  o.dsn = Cluster().Dsn(kDb);
  o.channel = kChannel;
  o.publication = publication;
  o.tables = {"items", "pairs", "no_key", "missing"};
  o.heartbeat = absl::Milliseconds(100);
  o.election_retry = absl::Milliseconds(200);
  o.max_rows_per_table = 10;
  return o;
}

// The rows of `table` and whether it was relayed whole, over `messages`.
struct Seen {
  std::set<uint64_t> rows;
  bool whole = false;
  bool definition = false;
};
Seen SeenFor(const std::vector<RelayMessage>& messages, const std::string& table) {
  Seen s;
  for (const RelayMessage& m : messages) {
    for (const RelayTable& t : m.tables) {
      if (t.name != table) continue;
      s.rows.insert(t.rows.begin(), t.rows.end());
      s.whole |= t.change != RelayTable::kRows;
      s.definition |= t.change == RelayTable::kDefinition;
    }
  }
  return s;
}

uint64_t Row(const std::string& key) { return RowKeyHash({key}); }

class WalRelayTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    PostgresCluster& pg = Cluster();
    ASSERT_TRUE(pg.CreateDatabase(kDb,
                                  "CREATE TABLE items (id int8 PRIMARY KEY, name text);"
                                  "CREATE TABLE pairs (a text, b uuid, v int, PRIMARY KEY (a, b));"
                                  "CREATE TABLE no_key (v int)")
                    .ok());
  }

  // Runs `sql` in one transaction by a plain client.
  void Exec(const std::string& sql) { ASSERT_TRUE(Cluster().Exec(kDb, sql).ok()) << sql; }

  std::string Slots() {
    return Cluster().QueryValue(kDb, "SELECT count(*) FROM pg_replication_slots").value_or("error");
  }
};

TEST_F(WalRelayTest, OneHolderRelaysRowsTablesAndDefinitionsThenAnotherTakesOver) {
  Listener listener(Cluster().Dsn(kDb));
  auto a = std::make_unique<WalRelay>(RelayOptions("relay_pub"), nullptr);
  auto b = std::make_unique<WalRelay>(RelayOptions("relay_pub"), nullptr);
  a->Start();
  b->Start();
  // A hello, then heartbeats, from exactly one of them.
  ASSERT_TRUE(listener.ReadUntil([](const std::vector<RelayMessage>& m) { return m.size() >= 3; }));
  const uint64_t holder = listener.messages()[0].header.holder;
  EXPECT_EQ(listener.messages()[0].header.kind, RelayHeader::kHello);
  for (const RelayMessage& m : listener.messages()) EXPECT_EQ(m.header.holder, holder);
  WalRelay* held = a->GetStats().holder ? a.get() : b.get();
  WalRelay* other = held == a.get() ? b.get() : a.get();
  EXPECT_TRUE(held->GetStats().holder);
  EXPECT_FALSE(other->GetStats().holder);
  EXPECT_EQ(held->GetStats().stream, holder);
  EXPECT_EQ(held->GetStats().excluded, (std::vector<std::string>{"no_key", "missing"}));
  EXPECT_EQ(Slots(), "1");

  // A table's first change in a stream comes with its description, which
  // could be a DDL's: the whole table.
  listener.Clear();
  Exec("INSERT INTO items VALUES (0, 'zero'); INSERT INTO pairs VALUES ('', gen_random_uuid(), 0)");
  // A transaction may be relayed over two batches: wait for all of it.
  const db::Lsn first_writes = InsertLsn(Cluster(), kDb);
  ASSERT_TRUE(listener.ReadUntil([&](const std::vector<RelayMessage>& m) {
    return SeenFor(m, "public.items").definition && SeenFor(m, "public.pairs").definition &&
           m.back().header.through >= first_writes;
  }));

  // A rolled-back write relays nothing; committed ones their rows; an update
  // that changes a key both keys.
  listener.Clear();
  Exec("BEGIN; INSERT INTO items VALUES (99, 'gone'); ROLLBACK");
  Exec("INSERT INTO items VALUES (1, 'one'), (2, 'two'), (-3, 'minus')");
  Exec("INSERT INTO pairs VALUES ('x y', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', 1)");
  Exec("UPDATE items SET id = 4 WHERE id = 2");
  ASSERT_TRUE(listener.ReadUntil([](const std::vector<RelayMessage>& m) {
    return SeenFor(m, "public.items").rows.count(Row("4")) > 0 &&
           !SeenFor(m, "public.pairs").rows.empty();
  }));
  Seen items = SeenFor(listener.messages(), "public.items");
  EXPECT_EQ(items.rows, (std::set<uint64_t>{Row("1"), Row("2"), Row("-3"), Row("4")}));
  EXPECT_FALSE(items.whole);
  EXPECT_EQ(SeenFor(listener.messages(), "public.items").rows.count(Row("99")), 0u);
  EXPECT_EQ(SeenFor(listener.messages(), "public.pairs").rows,
            (std::set<uint64_t>{RowKeyHash({"x y", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"})}))
      << "a uuid key in the form PostgreSQL prints it";
  for (const RelayMessage& m : listener.messages()) {
    EXPECT_EQ(m.header.holder, holder);
    if (m.header.kind == RelayHeader::kChanges) {
      EXPECT_GT(m.header.oldest_commit_micros, 0);
    }
  }

  // A batch of changes names its transactions (a replica recognises what its
  // own writes invalidated already by them); other messages name none.
  listener.Clear();
  absl::StatusOr<std::string> xid =
      Cluster().QueryValue(kDb,
                           "WITH w AS (INSERT INTO items VALUES (5, 'five') RETURNING id) "
                           "SELECT pg_current_xact_id()::text FROM w");
  ASSERT_TRUE(xid.ok()) << xid.status();
  const uint32_t low = static_cast<uint32_t>(std::stoull(*xid));
  ASSERT_TRUE(listener.ReadUntil([](const std::vector<RelayMessage>& m) {
    return SeenFor(m, "public.items").rows.count(Row("5")) > 0;
  }));
  bool named = false;
  for (const RelayMessage& m : listener.messages()) {
    if (m.header.kind != RelayHeader::kChanges) {
      EXPECT_FALSE(m.header.xids.has_value());
      continue;
    }
    ASSERT_TRUE(m.header.xids.has_value());
    for (const RelayTable& t : m.tables) {
      if (t.name == "public.items" &&
          std::find(t.rows.begin(), t.rows.end(), Row("5")) != t.rows.end()) {
        named =
            std::find(m.header.xids->begin(), m.header.xids->end(), low) != m.header.xids->end();
      }
    }
  }
  EXPECT_TRUE(named) << "the batch holding row 5 does not name its transaction " << low;

  // Positions only move forward, and a later heartbeat covers every commit.
  const std::string lsn_text = *Cluster().QueryValue(kDb, "SELECT pg_current_wal_insert_lsn()");
  const db::Lsn now = *db::ParseLsn(lsn_text);
  ASSERT_TRUE(listener.ReadUntil([now](const std::vector<RelayMessage>& m) {
    return !m.empty() && m.back().header.final && m.back().header.through >= now;
  }));
  for (size_t i = 1; i < listener.messages().size(); ++i) {
    EXPECT_GE(listener.messages()[i].header.through, listener.messages()[i - 1].header.through);
    EXPECT_EQ(listener.messages()[i].header.seq, listener.messages()[i - 1].header.seq + 1);
  }

  // Many rows of one table in a batch, TRUNCATE and DDL: the whole table.
  listener.Clear();
  Exec("INSERT INTO items SELECT g, 'bulk' FROM generate_series(100, 150) g");
  ASSERT_TRUE(listener.ReadUntil(
      [](const std::vector<RelayMessage>& m) { return SeenFor(m, "public.items").whole; }));
  listener.Clear();
  Exec("TRUNCATE pairs");
  ASSERT_TRUE(listener.ReadUntil(
      [](const std::vector<RelayMessage>& m) { return SeenFor(m, "public.pairs").whole; }));
  listener.Clear();
  Exec("ALTER TABLE items ADD COLUMN extra int; UPDATE items SET extra = 1 WHERE id = 1");
  ASSERT_TRUE(listener.ReadUntil(
      [](const std::vector<RelayMessage>& m) { return SeenFor(m, "public.items").definition; }));

  // The holder goes: the other one takes over with a stream of its own.
  listener.Clear();
  if (held == a.get()) {
    a.reset();
  } else {
    b.reset();
  }
  WalRelay* survivor = a != nullptr ? a.get() : b.get();
  ASSERT_TRUE(listener.ReadUntil([holder](const std::vector<RelayMessage>& m) {
    for (const RelayMessage& r : m) {
      if (r.header.holder != holder && r.header.kind == RelayHeader::kHello) return true;
    }
    return false;
  }));
  EXPECT_TRUE(survivor->GetStats().holder);
  EXPECT_EQ(survivor->GetStats().terms, 1u);
  Exec("UPDATE items SET name = 'later' WHERE id = 1");
  ASSERT_TRUE(listener.ReadUntil([](const std::vector<RelayMessage>& m) {
    return SeenFor(m, "public.items").definition;  // its first change in the new stream
  }));
  EXPECT_TRUE(WaitFor([&] { return Slots() == "1"; }, kWait)) << "the old slot is gone";

  // Once every relay stopped, no slot is left.
  a.reset();
  b.reset();
  EXPECT_TRUE(WaitFor([&] { return Slots() == "0"; }, kWait));
}

TEST_F(WalRelayTest, ForgedOrStrayNotificationsComeFromOtherSessions) {
  // Anyone may NOTIFY on the channel; only the lock holder's session sends
  // relay messages, which is what replicas check (read_cache.cc).
  Listener listener(Cluster().Dsn(kDb));
  WalRelay relay(RelayOptions("relay_pub"), nullptr);
  relay.Start();
  ASSERT_TRUE(listener.ReadUntil([](const std::vector<RelayMessage>& m) { return !m.empty(); }));
  const int holder_pid = listener.pids()[0];
  RelayHeader forged;
  forged.kind = RelayHeader::kHeartbeat;
  forged.holder = listener.messages()[0].header.holder;
  forged.through = ~uint64_t{0} >> 1;
  Exec(absl::StrCat("SELECT pg_notify('", kChannel, "', '", EncodeRelay(forged, {})[0], "')"));
  // The relay's own heartbeats may arrive after it in the same read.
  size_t at = 0;
  ASSERT_TRUE(listener.ReadUntil([&at](const std::vector<RelayMessage>& m) {
    for (at = 0; at < m.size(); ++at) {
      if (m[at].header.through == ~uint64_t{0} >> 1) return true;
    }
    return false;
  }));
  EXPECT_NE(listener.pids()[at], holder_pid);
  const std::string lock_holder = *Cluster().QueryValue(
      kDb, absl::StrCat("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                        "((classid::int8 << 32) | objid::int8) = ",
                        WalRelay::LockKey("relay_pub", kChannel), "::int8 AND objsubid = 1"));
  EXPECT_EQ(lock_holder, absl::StrCat(holder_pid));
}

// The server's WAL insert position now: a token as a writer gets it.

// A token past every commit to a published table (here: after a write to a
// table the stream does not publish) is relayed once a fence asks for it,
// not at the next heartbeat (an hour away here). Only committed
// transactional messages with this relay's prefix are fences: others (anyone
// may emit any) are ignored, and a flood of fences makes the relay send at
// most once per batch interval.
TEST_F(WalRelayTest, AFenceIsRelayedAtOnceAndNothingElseIsTakenForOne) {
  Exec("CREATE TABLE IF NOT EXISTS uncached (v int)");
  Listener listener(Cluster().Dsn(kDb));
  WalRelay::Options o = RelayOptions("relay_fence_pub");
  o.heartbeat = absl::Hours(1);
  o.batch = absl::Milliseconds(20);
  WalRelay relay(o, nullptr);
  relay.Start();
  ASSERT_TRUE(listener.ReadUntil([](const std::vector<RelayMessage>& m) { return !m.empty(); }));
  ASSERT_EQ(listener.messages()[0].header.kind, RelayHeader::kHello);
  TokenFence::Options fo;
  fo.database = kDb;
  fo.dsn = Cluster().Dsn(kDb);
  fo.prefix = WalRelay::FencePrefix("relay_fence_pub", kChannel);
  TokenFence fence(fo);
  fence.Start();

  for (int i = 0; i < 3; ++i) {
    listener.Clear();
    Exec("INSERT INTO uncached VALUES (1)");
    const db::Lsn token = InsertLsn(Cluster(), kDb);
    fence.Request(token);
    ASSERT_TRUE(listener.ReadUntil([&](const std::vector<RelayMessage>& m) {
      return !m.empty() && m.back().header.through >= token;
    })) << "the relayed position never reached "
        << db::FormatLsn(token);
    EXPECT_EQ(listener.messages().back().header.kind, RelayHeader::kHeartbeat);
    EXPECT_TRUE(listener.messages().back().tables.empty());
  }
  EXPECT_EQ(relay.GetStats().fences, 3u);
  // Counted once its NOTIFY committed: the listener may see it first.
  EXPECT_TRUE(WaitFor([&] { return relay.GetStats().fence_relays == 3; }, kWait))
      << relay.GetStats().fence_relays;

  // Another prefix, a message outside any transaction, a rolled-back fence:
  // not fences. The next real one is decoded after them (commit order).
  const std::string prefix = fo.prefix;
  Exec("SELECT pg_logical_emit_message(true, 'someone-else', '')");
  Exec(absl::StrCat("SELECT pg_logical_emit_message(false, '", prefix, "', '')"));
  Exec(absl::StrCat("BEGIN; SELECT pg_logical_emit_message(true, '", prefix, "', ''); ROLLBACK"));
  Exec(absl::StrCat("SELECT pg_logical_emit_message(true, '", prefix, "x', '')"));
  const db::Lsn token = InsertLsn(Cluster(), kDb);
  fence.Request(token);
  ASSERT_TRUE(listener.ReadUntil([&](const std::vector<RelayMessage>& m) {
    return !m.empty() && m.back().header.through >= token;
  }));
  EXPECT_EQ(relay.GetStats().fences, 4u) << "a message that is no fence was taken for one";

  // A flood of fences from a plain client, each its own transaction: each is
  // decoded, and the relay sends at most once per batch interval.
  listener.Clear();
  const uint64_t payloads = relay.GetStats().payloads;
  const absl::Time began = absl::Now();
  Exec(absl::StrCat("DO $$ BEGIN FOR i IN 1..300 LOOP PERFORM pg_logical_emit_message(true, '",
                    prefix, "', ''); COMMIT; END LOOP; END $$"));
  // Other WAL (the relay's own NOTIFYs) may follow the last of them: a fence
  // of the test's own covers the position read now.
  const db::Lsn flooded = InsertLsn(Cluster(), kDb);
  fence.Request(flooded);
  ASSERT_TRUE(listener.ReadUntil([&](const std::vector<RelayMessage>& m) {
    return !m.empty() && m.back().header.through >= flooded;
  }));
  // The position can be relayed (by a keepalive past the WAL's end) before
  // the test's own fence, committed after it, is decoded.
  EXPECT_TRUE(WaitFor([&] { return relay.GetStats().fences == 305u; }, kWait))
      << relay.GetStats().fences;
  const absl::Duration took = absl::Now() - began;
  const uint64_t sent = relay.GetStats().payloads - payloads;
  EXPECT_LE(sent, static_cast<uint64_t>(took / o.batch) + 2)
      << sent << " messages in " << took << " for 300 fences";
  for (const RelayMessage& m : listener.messages()) EXPECT_TRUE(m.tables.empty());
}

// DDL reaches the cache through the event trigger the holder installs: what
// can change a read (a view, a grant) is relayed as every table of the
// database, once per transaction; what cannot (an index, a comment, a
// trigger, temporary objects) and rolled-back DDL is not.
TEST_F(WalRelayTest, DdlThatCanChangeAReadIsRelayedAsEveryTable) {
  Exec(
      "DROP VIEW IF EXISTS ddl_view; DROP ROLE IF EXISTS ddl_plain; "
      "CREATE ROLE ddl_plain LOGIN; GRANT CREATE ON SCHEMA public TO ddl_plain");
  Listener listener(Cluster().Dsn(kDb));
  WalRelay relay(RelayOptions("relay_ddl_pub"), nullptr);
  relay.Start();
  ASSERT_TRUE(listener.ReadUntil([](const std::vector<RelayMessage>& m) { return !m.empty(); }));
  ASSERT_TRUE(relay.GetStats().ddl_trigger);
  // Relayed through `lsn` (heartbeats move the position on): what was
  // decoded before it has been sent.
  auto relayed_through = [&](db::Lsn lsn) {
    return listener.ReadUntil([&](const std::vector<RelayMessage>& m) {
      return !m.empty() && m.back().header.through >= lsn;
    });
  };
  auto all_tables = [&] {
    int n = 0;
    for (const RelayMessage& m : listener.messages()) {
      for (const RelayTable& t : m.tables) {
        if (t.name == kRelayAllTables) {
          EXPECT_EQ(t.change, RelayTable::kDefinition);
          ++n;
        }
      }
    }
    return n;
  };
  const uint64_t before = relay.GetStats().ddl;
  Exec("CREATE INDEX IF NOT EXISTS items_by_name ON items (name)");
  Exec("COMMENT ON TABLE items IS 'indexed'");
  Exec(
      "CREATE OR REPLACE FUNCTION ddl_noop() RETURNS trigger LANGUAGE plpgsql AS "
      "$$ BEGIN RETURN NEW; END $$");
  Exec(
      "DROP TRIGGER IF EXISTS ddl_noop ON items; "
      "CREATE TRIGGER ddl_noop BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION ddl_noop()");
  Exec("CREATE TEMP TABLE scratch (v int)");
  Exec("BEGIN; CREATE VIEW rolled_back AS SELECT 1 AS one; ROLLBACK");
  ASSERT_TRUE(relayed_through(InsertLsn(Cluster(), kDb)));
  // CREATE FUNCTION counts (a view may read through it); the rest does not.
  EXPECT_EQ(relay.GetStats().ddl, before + 1);
  EXPECT_EQ(all_tables(), 1);

  listener.Clear();
  Exec("CREATE VIEW ddl_view AS SELECT id FROM items; GRANT SELECT ON ddl_view TO PUBLIC");
  // DDL by a role that is no superuser is seen too.
  ASSERT_EQ(testing::QueryDsn(absl::StrCat(Cluster().Dsn(kDb), " user=ddl_plain"),
                              "CREATE OR REPLACE VIEW ddl_plain_view AS SELECT 1 AS one; "
                              "SELECT 'made'")
                .value_or(""),
            "made");
  ASSERT_TRUE(relayed_through(InsertLsn(Cluster(), kDb)));
  EXPECT_EQ(relay.GetStats().ddl, before + 3);
  EXPECT_EQ(all_tables(), 2);

  // Installing it again changes nothing; a user who is no superuser cannot
  // install it, and a disabled trigger is left to whoever disabled it.
  db::ConnectionOptions co;
  co.dsn = Cluster().Dsn(kDb);
  auto admin = db::Connection::Open(co);
  ASSERT_TRUE(admin.ok()) << admin.status();
  co.dsn = absl::StrCat(Cluster().Dsn(kDb), " user=ddl_plain");
  auto plain = db::Connection::Open(co);
  ASSERT_TRUE(plain.ok()) << plain.status();
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  EXPECT_EQ(WalRelay::EnsureDdlTrigger(**admin, deadline).value_or(false), true);
  EXPECT_EQ(WalRelay::EnsureDdlTrigger(**plain, deadline).value_or(false), true);
  Exec("DROP EVENT TRIGGER poolside_cache_ddl");
  absl::StatusOr<bool> refused = WalRelay::EnsureDdlTrigger(**plain, deadline);
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_FALSE(*refused);
  EXPECT_EQ(WalRelay::EnsureDdlTrigger(**admin, deadline).value_or(false), true);
  Exec("ALTER EVENT TRIGGER poolside_cache_ddl DISABLE");
  EXPECT_EQ(WalRelay::EnsureDdlTrigger(**admin, deadline).value_or(true), false);
  Exec("ALTER EVENT TRIGGER poolside_cache_ddl ENABLE");
  EXPECT_EQ(WalRelay::EnsureDdlTrigger(**admin, deadline).value_or(false), true);
}

TEST_F(WalRelayTest, UnderASteadyWriteLoadChangesGatherForABatchInterval) {
  Listener listener(Cluster().Dsn(kDb));
  WalRelay::Options o = RelayOptions("relay_steady_pub");
  o.tables = {"items"};
  o.heartbeat = absl::Hours(1);
  o.batch = absl::Milliseconds(20);
  o.max_rows_per_table = 1000;
  WalRelay relay(o, nullptr);
  relay.Start();
  ASSERT_TRUE(listener.ReadUntil([](const std::vector<RelayMessage>& m) { return !m.empty(); }));
  ASSERT_EQ(listener.messages()[0].header.kind, RelayHeader::kHello);
  // The stream's first change of a table comes with the table's definition
  // (relayed as the whole table): have it go first.
  Exec("INSERT INTO items VALUES (100000, 'first')");
  ASSERT_TRUE(listener.ReadUntil(
      [&](const std::vector<RelayMessage>& m) { return SeenFor(m, "public.items").definition; }));

  // 300 transactions of one row each, committed one after another: every
  // row is relayed by its key, in at most one message per batch interval
  // (a relay sending once per commit, whenever its stream had nothing more
  // to give, sent about one message per transaction here).
  listener.Clear();
  const uint64_t payloads = relay.GetStats().payloads;
  const absl::Time began = absl::Now();
  Exec(
      "DO $$ BEGIN FOR i IN 100001..100300 LOOP "
      "INSERT INTO items VALUES (i, 'steady'); COMMIT; END LOOP; END $$");
  std::set<uint64_t> want;
  for (int i = 100001; i <= 100300; ++i) want.insert(Row(absl::StrCat(i)));
  ASSERT_TRUE(listener.ReadUntil([&](const std::vector<RelayMessage>& m) {
    const std::set<uint64_t> rows = SeenFor(m, "public.items").rows;
    return std::includes(rows.begin(), rows.end(), want.begin(), want.end());
  })) << "not every inserted row was relayed";
  const absl::Duration took = absl::Now() - began;
  EXPECT_FALSE(SeenFor(listener.messages(), "public.items").whole);
  const uint64_t sent = relay.GetStats().payloads - payloads;
  EXPECT_LE(sent, static_cast<uint64_t>(took / o.batch) + 2)
      << sent << " messages in " << took << " for 300 transactions";
  Exec("DELETE FROM items WHERE id >= 100000");
}

// A database with replicas: the relay follows the primary. When the answer
// of current_dsn changes, the holder ends its term on the old server (its
// replicas hear kDown there, its slot goes) and runs for election where the
// primary is now.
TEST(WalRelayFollowsThePrimaryTest, ATermEndsWhenThePrimaryMovesAndTheNextBeginsThere) {
  testing::PostgresOptions po;
  po.extra_settings = {"synchronous_commit=on"};
  auto other = PostgresCluster::Start(po);
  ASSERT_TRUE(other.ok()) << other.status();
  ASSERT_TRUE(
      (*other)->CreateDatabase(kDb, "CREATE TABLE items (id int8 PRIMARY KEY, name text)").ok());
  PostgresCluster& first = Cluster();
  ASSERT_TRUE(first.CreateDatabase(kDb).ok());
  ASSERT_TRUE(
      first.Exec(kDb, "CREATE TABLE IF NOT EXISTS items (id int8 PRIMARY KEY, name text)").ok());

  absl::Mutex mu;
  std::string primary = first.Dsn(kDb);
  WalRelay::Options o = RelayOptions("relay_follow_pub");
  o.tables = {"items"};
  o.heartbeat = absl::Milliseconds(100);
  o.current_dsn = [&]() -> absl::StatusOr<std::string> {
    absl::MutexLock lock(&mu);
    if (primary.empty()) return absl::UnavailableError("no primary known");
    return primary;
  };
  Listener on_first(first.Dsn(kDb));
  Listener on_other((*other)->Dsn(kDb));
  WalRelay relay(o, nullptr);
  relay.Start();
  ASSERT_TRUE(on_first.ReadUntil([](const std::vector<RelayMessage>& m) { return !m.empty(); }));
  EXPECT_EQ(on_first.messages()[0].header.kind, RelayHeader::kHello);
  const uint64_t first_term = on_first.messages()[0].header.holder;

  // No primary for a while: the term ends (kDown on the old server), nothing
  // is held anywhere.
  {
    absl::MutexLock lock(&mu);
    primary.clear();
  }
  ASSERT_TRUE(on_first.ReadUntil([&](const std::vector<RelayMessage>& m) {
    return !m.empty() && m.back().header.kind == RelayHeader::kDown;
  }));
  EXPECT_TRUE(WaitFor([&] { return !relay.GetStats().holder; }, kWait));
  EXPECT_TRUE(WaitFor(
      [&] {
        return first.QueryValue(kDb, "SELECT count(*) FROM pg_replication_slots").value_or("") ==
               "0";
      },
      kWait))
      << "the old server's slot was left behind";

  // The primary is the other server now: a new term there, relaying its writes.
  {
    absl::MutexLock lock(&mu);
    primary = (*other)->Dsn(kDb);
  }
  ASSERT_TRUE(on_other.ReadUntil([](const std::vector<RelayMessage>& m) {
    return !m.empty() && m[0].header.kind == RelayHeader::kHello;
  }));
  EXPECT_NE(on_other.messages()[0].header.holder, first_term);
  ASSERT_TRUE((*other)->Exec(kDb, "INSERT INTO items VALUES (7, 'seven')").ok());
  ASSERT_TRUE(on_other.ReadUntil([](const std::vector<RelayMessage>& m) {
    return SeenFor(m, "public.items").rows.count(Row("7")) > 0 ||
           SeenFor(m, "public.items").definition;
  }));
  EXPECT_EQ(relay.GetStats().terms, 2u);
  EXPECT_EQ((*other)->QueryValue(kDb, "SELECT count(*) FROM pg_replication_slots").value_or(""),
            "1");
}

TEST(WalRelayUnavailableTest, AServerWithoutLogicalDecodingIsReported) {
  testing::PostgresOptions o;
  o.extra_settings = {"wal_level=replica"};
  auto pg = PostgresCluster::Start(o);
  ASSERT_TRUE(pg.ok()) << pg.status();
  ASSERT_TRUE((*pg)->CreateDatabase(kDb, "CREATE TABLE items (id int PRIMARY KEY)").ok());
  absl::Mutex mu;
  absl::Status reported;
  WalRelay::Options options = RelayOptions("relay_pub");
  options.dsn = (*pg)->Dsn(kDb);
  WalRelay relay(options, [&](const absl::Status& s) {
    absl::MutexLock lock(&mu);
    reported = s;
  });
  relay.Start();
  ASSERT_TRUE(WaitFor(
      [&] {
        absl::MutexLock lock(&mu);
        return !reported.ok();
      },
      kWait));
  absl::MutexLock lock(&mu);
  EXPECT_EQ(reported.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(reported.message().find("wal_level"), absl::string_view::npos) << reported;
  EXPECT_NE(reported.message().find("trigger"), absl::string_view::npos) << reported;
}

}  // namespace
}  // namespace poolside::query
