// The ingest service writes each principal's rows as that principal's
// database role, so PostgreSQL's grants decide what it may write: the real
// `ingest_server` against a real PostgreSQL (the shared fixture), principals
// mapped to login roles with different grants, a column DEFAULT current_user
// showing which role inserted each row.

#include <libpq-fe.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/auth/token_hash.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/ingest.grpc.pb.h"
#include "proto/poolside/v1/ingest.pb.h"
#include "tests/fixtures/app_roles.h"
#include "tests/fixtures/concurrent_calls.h"
#include "tests/fixtures/files.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/service_process.h"

namespace poolside::testing {
namespace {

constexpr char kDb[] = "ingest_roles";
// Login roles: one may insert into ta only, the other into ta and tb.
constexpr char kOnlyA[] = "ingest_only_a";
constexpr char kAAndB[] = "ingest_a_and_b";
// A login role that may read the server's files (privileged).
constexpr char kReadsFiles[] = "ingest_reads_files";

constexpr absl::Duration kCallTimeout = absl::Seconds(30);

struct Principal {
  const char* name;
  const char* token;
  const char* db_role;  // "" : the DSN's own user
};
// alice runs as role "a" (login ingest_only_a), bob as ingest_a_and_b, carol
// as the DSN's user (app_owner); ops reads the statistics.
constexpr Principal kAlice{"alice", "tok-ingest-roles-alice-93b1", "a"};
constexpr Principal kBob{"bob", "tok-ingest-roles-bob-2c7e", kAAndB};
constexpr Principal kCarol{"carol", "tok-ingest-roles-carol-61d0", ""};
// dave runs as app_read, whose sessions are read-only by default.
constexpr Principal kDave{"dave", "tok-ingest-roles-dave-0a5c", testing::kAppRead};
constexpr Principal kOps{"ops", "tok-ingest-roles-ops-7f42", ""};

// Runs `sql` on a session of the test's own (a superuser's).
bool RunSql(PGconn* conn, const char* sql) {
  PGresult* r = PQexec(conn, sql);
  const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  PQclear(r);
  return ok;
}

// A session logged in as `user`, as a principal's raw SQL would run.
using Session = std::unique_ptr<PGconn, decltype(&PQfinish)>;
Session ConnectAs(const char* user) {
  Session c(PQconnectdb(testing::DsnAs(SharedPostgres(), kDb, user).c_str()), &PQfinish);
  EXPECT_EQ(PQstatus(c.get()), CONNECTION_OK) << PQerrorMessage(c.get());
  return c;
}

// Runs `sql` on `conn`: its first value ("" when none), or "ERROR <SQLSTATE>
// <message>". Each statement leaves the session idle, whatever its outcome.
std::string Outcome(PGconn* conn, const std::string& sql) {
  PGresult* r = PQexec(conn, sql.c_str());
  std::string out;
  if (PQresultStatus(r) == PGRES_TUPLES_OK || PQresultStatus(r) == PGRES_COMMAND_OK) {
    if (PQntuples(r) > 0 && PQnfields(r) > 0) out = PQgetvalue(r, 0, 0);
  } else {
    const char* state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    out = absl::StrCat("ERROR ", state == nullptr ? "?" : state, " ", PQresultErrorMessage(r));
  }
  PQclear(r);
  EXPECT_EQ(PQtransactionStatus(conn), PQTRANS_IDLE) << sql;
  return out;
}

std::string Query(const std::string& sql) {
  absl::StatusOr<std::string> v = SharedPostgres().QueryValue(kDb, sql);
  EXPECT_TRUE(v.ok()) << v.status() << " in " << sql;
  return v.ok() ? *v : "";
}

// Roles, and tables ta and tb owned by app_owner whose `written_as` column
// records the role that inserted each row.
void SetUpDatabase() {
  testing::PostgresCluster& pg = SharedPostgres();
  ASSERT_TRUE(pg.CreateDatabase(kDb).ok());
  ASSERT_TRUE(testing::CreateAppRoles(pg, kDb).ok());
  std::string roles;
  for (const char* role : {kOnlyA, kAAndB, kReadsFiles}) {
    absl::StrAppend(&roles, "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '",
                    role, "') THEN CREATE ROLE ", role, " LOGIN; END IF; END$$;");
  }
  absl::StrAppend(&roles, "GRANT pg_read_server_files TO ", kReadsFiles, ";");
  absl::Status s = pg.Exec("postgres", roles);
  ASSERT_TRUE(s.ok()) << s;
  s = pg.Exec(kDb, absl::StrCat("DROP TABLE IF EXISTS ta, tb, poolside_ingest_keys; SET ROLE ",
                                testing::kAppOwner, ";",
                                "CREATE TABLE ta (id int8 PRIMARY KEY, "
                                "written_as text NOT NULL DEFAULT current_user);"
                                "CREATE TABLE tb (id int8 PRIMARY KEY, "
                                "written_as text NOT NULL DEFAULT current_user);"
                                "GRANT INSERT ON ta TO ",
                                kOnlyA, ";", "GRANT INSERT ON ta, tb TO ", kAAndB, ";",
                                "GRANT INSERT ON ta TO ", testing::kAppRead, "; RESET ROLE"));
  ASSERT_TRUE(s.ok()) << s;
}

void AddPrincipal(v1::IngestServiceConfig* c, const Principal& p, const char* role) {
  v1::PrincipalConfig* pc = c->mutable_auth()->add_principals();
  pc->set_name(p.name);
  pc->set_token_sha256(auth::Sha256Hex(p.token));
  pc->add_roles(role);
  pc->add_databases("*");
  v1::IngestTables* t = pc->add_ingest_tables();
  t->set_database("app");
  t->add_tables("*");
  if (*p.db_role != '\0') pc->set_database_role(p.db_role);
}

// The database as app_owner (not privileged), with roles "a" (login
// ingest_only_a) and ingest_a_and_b, and the four principals.
v1::IngestServiceConfig Config() {
  v1::IngestServiceConfig c;
  v1::DatabaseConfig* db =
      AddDatabase(&c, "app", testing::DsnAs(SharedPostgres(), kDb, testing::kAppOwner));
  db->set_allow_privileged_role(false);  // said explicitly: the launcher defaults it to true
  v1::DatabaseRole* a = db->add_roles();
  a->set_name("a");
  a->set_user(kOnlyA);
  db->add_roles()->set_name(kAAndB);
  db->add_roles()->set_name(testing::kAppRead);
  AddTables(&c, "app", {"ta", "tb"});
  // Long enough that concurrent requests would share batches.
  c.mutable_batch()->set_linger_ms(50);
  c.mutable_batch()->set_copy_connections(2);
  AddPrincipal(&c, kAlice, "ingest");
  AddPrincipal(&c, kBob, "ingest");
  AddPrincipal(&c, kCarol, "ingest");
  AddPrincipal(&c, kDave, "ingest");
  AddPrincipal(&c, kOps, "admin");
  return c;
}

std::string Stem(v1::IngestServiceConfig* c) {
  const std::string stem = testing::NewStem("ingest_server");
  c->mutable_server()->set_listen("127.0.0.1:0");
  c->mutable_server()->mutable_tls()->set_plaintext(true);
  c->mutable_server()->set_port_file(stem + ".port");
  return stem;
}

struct Server {
  std::unique_ptr<ServiceProcess> process;
  std::unique_ptr<v1::IngestService::Stub> stub;
};

absl::StatusOr<Server> Start(v1::IngestServiceConfig c) {
  const std::string stem = Stem(&c);
  auto process = testing::StartConfigured("services/ingest/ingest_server", c, stem + ".port", stem,
                                          {}, absl::Seconds(20));
  if (!process.ok()) return process.status();
  auto channel = testing::Connect((*process)->address());
  if (!channel.ok()) return channel.status();
  Server s;
  s.process = *std::move(process);
  s.stub = v1::IngestService::NewStub(*channel);
  return s;
}

v1::WriteRequest Rows(const std::string& table, int64_t first, int n, const std::string& key = "") {
  v1::WriteRequest w;
  w.set_table(table);
  w.add_columns("id");
  w.set_idempotency_key(key);
  for (int i = 0; i < n; ++i) w.add_rows()->add_values()->set_int64_value(first + i);
  return w;
}

grpc::Status Write(Server& server, const Principal& who, const v1::WriteRequest& w,
                   v1::WriteResponse* resp) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
  ctx.AddMetadata("authorization", absl::StrCat("Bearer ", who.token));
  return server.stub->Write(&ctx, w, resp);
}

absl::StatusOr<v1::GetIngestStatsResponse> Stats(Server& server) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
  ctx.AddMetadata("authorization", absl::StrCat("Bearer ", kOps.token));
  v1::GetIngestStatsResponse resp;
  grpc::Status s = server.stub->GetStats(&ctx, v1::GetIngestStatsRequest(), &resp);
  if (!s.ok()) return absl::UnknownError(s.error_message());
  return resp;
}

TEST(IngestRolesTest, EachPrincipalWritesAsItsRoleAndPostgresDecides) {
  ASSERT_NO_FATAL_FAILURE(SetUpDatabase());
  absl::StatusOr<Server> server = Start(Config());
  ASSERT_TRUE(server.ok()) << server.status();

  // The table's catalog is read before tb is locked.
  v1::WriteResponse resp;
  grpc::Status s = Write(*server, kCarol, Rows("tb", 1, 1), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.rows_written(), 1u);

  // tb is locked while alice's and bob's requests arrive together, so they
  // all wait in the buffer at once: batched by table alone, they would share
  // COPYs.
  std::unique_ptr<PGconn, decltype(&PQfinish)> locker(
      PQconnectdb(SharedPostgres().Dsn(kDb).c_str()), &PQfinish);
  ASSERT_EQ(PQstatus(locker.get()), CONNECTION_OK);
  ASSERT_TRUE(RunSql(locker.get(), "BEGIN; LOCK TABLE tb IN ACCESS EXCLUSIVE MODE"));
  // One request per thread, all in flight at once: even threads are
  // alice's (ids from 100000), odd ones bob's (from 1000); every other one of
  // each keyed.
  constexpr int kThreads = 16, kCalls = 1, kRows = 10;
  auto keyed = [](int thread) { return (thread / 2) % 2 == 0; };
  auto request = [&](int thread, int i) {
    const bool alice = thread % 2 == 0;
    const int64_t first = (alice ? 100000 : 1000) + (thread * kCalls + i) * kRows;
    return Rows("tb", first, kRows,
                keyed(thread) ? absl::StrCat("tb-", thread, "-", i) : std::string());
  };
  absl::Mutex mu;
  std::vector<std::string> alice_errors;
  testing::ConcurrentCalls calls;
  std::thread writers([&] {
    calls = testing::RunConcurrentCalls(kThreads, kCalls, [&](int thread, int i) -> std::string {
      const bool alice = thread % 2 == 0;
      v1::WriteResponse r;
      grpc::Status st = Write(*server, alice ? kAlice : kBob, request(thread, i), &r);
      if (alice) {
        if (st.error_code() != grpc::StatusCode::PERMISSION_DENIED) {
          return absl::StrCat("alice: ", st.error_code(), " ", st.error_message());
        }
        absl::MutexLock lock(&mu);
        alice_errors.push_back(st.error_message());
        return "";
      }
      if (!st.ok()) return absl::StrCat("bob: ", st.error_code(), " ", st.error_message());
      if (r.rows_written() != kRows || r.duplicate()) return absl::StrCat("bob: ", r.DebugString());
      return "";
    });
  });
  const bool all_buffered = testing::WaitFor(
      [&] {
        absl::StatusOr<v1::GetIngestStatsResponse> st = Stats(*server);
        return st.ok() && st->requests() >= 1 + kThreads * kCalls;
      },
      absl::Seconds(20));
  EXPECT_TRUE(all_buffered);
  ASSERT_TRUE(RunSql(locker.get(), "ROLLBACK"));
  writers.join();
  EXPECT_EQ(calls.failures, 0) << calls.first_failure;

  // Alice's were refused, naming the table and her role; nothing of them
  // written. Bob's all landed, as his role.
  ASSERT_EQ(alice_errors.size(), static_cast<size_t>(kThreads / 2 * kCalls));
  for (const std::string& e : alice_errors) {
    EXPECT_TRUE(absl::StrContains(e, "table tb")) << e;
    EXPECT_TRUE(absl::StrContains(e, "\"a\"")) << e;
    EXPECT_TRUE(absl::StrContains(e, kOnlyA)) << e;
    EXPECT_TRUE(absl::StrContains(e, "42501")) << e;
  }
  EXPECT_EQ(Query("SELECT count(*) FROM tb WHERE id >= 100000"), "0");
  EXPECT_EQ(Query("SELECT count(*) || ' ' || string_agg(DISTINCT written_as, ',') FROM tb "
                  "WHERE id BETWEEN 1000 AND 99999"),
            absl::StrCat(kThreads / 2 * kCalls * kRows, " ", kAAndB));
  EXPECT_EQ(Query("SELECT written_as FROM tb WHERE id = 1"), testing::kAppOwner);
  // Keys: bob's refer to his committed requests; none of alice's was kept.
  EXPECT_EQ(Query("SELECT coalesce(string_agg(DISTINCT principal, ','), '') || ' ' || count(*) "
                  "FROM poolside_ingest_keys WHERE key LIKE 'tb-%'"),
            absl::StrCat("bob ", kThreads / 4 * kCalls));

  // Alice may write ta, as her role; a retry is answered from her key, and
  // a refused keyed request stays refused on retry (its key was not kept).
  const std::string key = absl::StrCat("k-", absl::ToUnixMicros(absl::Now()));
  resp.Clear();
  s = Write(*server, kAlice, Rows("ta", 1, 3, key), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.rows_written(), 3u);
  resp.Clear();
  s = Write(*server, kAlice, Rows("ta", 1, 3, key), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(resp.duplicate());
  for (int attempt = 0; attempt < 2; ++attempt) {
    s = Write(*server, kAlice, Rows("tb", 200000, 3, key + "-tb"), &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  }
  // Bob's key of the same name is his own; carol writes as the DSN's user.
  resp.Clear();
  s = Write(*server, kBob, Rows("ta", 10, 3, key), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_FALSE(resp.duplicate());
  s = Write(*server, kCarol, Rows("ta", 20, 2), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(Query("SELECT string_agg(id || '=' || written_as, ',' ORDER BY id) FROM ta"),
            absl::StrCat("1=", kOnlyA, ",2=", kOnlyA, ",3=", kOnlyA, ",10=", kAAndB, ",11=", kAAndB,
                         ",12=", kAAndB, ",20=", testing::kAppOwner, ",21=", testing::kAppOwner));
  EXPECT_EQ(Query("SELECT count(*) FROM tb WHERE id >= 200000"), "0");
  // A read-only role: refused too, though it holds INSERT.
  s = Write(*server, kDave, Rows("ta", 30, 2), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), testing::kAppRead)) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "read-only")) << s.error_message();
  EXPECT_EQ(Query(absl::StrCat("SELECT string_agg(principal || '/' || tbl, ',' ORDER BY "
                               "principal) FROM poolside_ingest_keys WHERE key LIKE '",
                               key, "%'")),
            "alice/ta,bob/ta");
  // Four pools, each logged in as its own role.
  EXPECT_EQ(Query("SELECT string_agg(DISTINCT usename::text, ',') FROM pg_stat_activity "
                  "WHERE application_name = 'poolside-ingest/app'"),
            absl::StrCat(testing::kAppOwner, ",", testing::kAppRead, ",", kAAndB, ",", kOnlyA));

  absl::StatusOr<v1::GetIngestStatsResponse> stats = Stats(*server);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->buffered_bytes(), 0u);
  EXPECT_EQ(stats->queue_requests(), 0u);
  EXPECT_EQ(testing::Terminate(*server->process).value_or(-1), 0);
}

// Keys commit as each principal's login role, which is granted SELECT,
// INSERT on the key table: with raw SQL as one role, the other logins' keys
// can be neither read nor forged, and the owner (the DSN user) answers only
// from its own login's keys.
TEST(IngestRolesTest, KeysOfOtherLoginsCanBeNeitherReadNorForged) {
  ASSERT_NO_FATAL_FAILURE(SetUpDatabase());
  absl::StatusOr<Server> server = Start(Config());
  ASSERT_TRUE(server.ok()) << server.status();
  v1::WriteResponse resp;
  grpc::Status s = Write(*server, kAlice, Rows("ta", 1, 1, "a-own"), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  s = Write(*server, kBob, Rows("ta", 10, 1, "b-secret"), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  s = Write(*server, kCarol, Rows("ta", 20, 1, "c-secret"), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();

  // As alice's login: only its own key is visible, by any route.
  Session a = ConnectAs(kOnlyA);
  EXPECT_EQ(Outcome(a.get(),
                    "SELECT string_agg(login || '/' || principal || '/' || key, ',') "
                    "FROM poolside_ingest_keys"),
            absl::StrCat(kOnlyA, "/alice/a-own"));
  EXPECT_EQ(Outcome(a.get(), "SELECT count(*) FROM poolside_ingest_keys WHERE key LIKE '%secret'"),
            "0");
  // Nor through the planner's statistics.
  ASSERT_TRUE(SharedPostgres().Exec(kDb, "ANALYZE poolside_ingest_keys").ok());
  EXPECT_NE(Query("SELECT count(*) FROM pg_stats WHERE tablename = 'poolside_ingest_keys'"), "0");
  EXPECT_EQ(
      Outcome(a.get(), "SELECT count(*) FROM pg_stats WHERE tablename = 'poolside_ingest_keys'"),
      "0");
  // Rows under another login's name are refused by the policy.
  constexpr char kForge[] =
      "INSERT INTO poolside_ingest_keys (login, principal, key, tbl, digest, rows, result) "
      "VALUES ";
  for (const char* login : {kAAndB, testing::kAppOwner}) {
    for (const char* key : {"victim", "b-secret"}) {
      const std::string r = Outcome(a.get(), absl::StrCat(kForge, "('", login, "', 'bob', '", key,
                                                          "', 'ta', '\\x00', 0, '\\x1001')"));
      EXPECT_TRUE(absl::StartsWith(r, "ERROR 42501") && absl::StrContains(r, "row-level security"))
          << r;
    }
  }
  // Under its own login the rows go in, and are its own business: stored
  // results and a legacy (digest-less) key for bob's, carol's and the
  // DSN user's principals.
  EXPECT_EQ(Outcome(a.get(), absl::StrCat(kForge,
                                          "(DEFAULT, 'bob', 'victim', 'ta', '\\x00', 0, "
                                          "'\\x1001'), (session_user, 'carol', 'victim', "
                                          "'ta', '\\x00', 0, '\\x1001'), (DEFAULT, '', "
                                          "'victim-legacy', '', NULL, 0, '\\x1001')")),
            "");
  // Changing or removing keys, or the protection, is not granted.
  for (const char* sql :
       {"UPDATE poolside_ingest_keys SET login = 'ingest_a_and_b'",
        "UPDATE poolside_ingest_keys SET digest = '\\x00' WHERE principal = 'bob'",
        "DELETE FROM poolside_ingest_keys", "TRUNCATE poolside_ingest_keys",
        "ALTER TABLE poolside_ingest_keys DISABLE ROW LEVEL SECURITY",
        "DROP POLICY poolside_ingest_keys_login ON poolside_ingest_keys",
        "CREATE POLICY open ON poolside_ingest_keys USING (true)"}) {
    const std::string r = Outcome(a.get(), sql);
    EXPECT_TRUE(absl::StartsWith(r, "ERROR 42501")) << sql << ": " << r;
  }

  // Bob's and carol's writes under those keys are written and acknowledged,
  // not answered from alice's rows; bob's retry is answered from his own.
  for (const auto& [who, first, key] :
       {std::make_tuple(&kBob, 40, "victim"), std::make_tuple(&kBob, 50, "victim-legacy"),
        std::make_tuple(&kCarol, 60, "victim"), std::make_tuple(&kCarol, 70, "victim-legacy")}) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      resp.Clear();
      s = Write(*server, *who, Rows("ta", first, 2, key), &resp);
      ASSERT_TRUE(s.ok()) << who->name << " " << key << ": " << s.error_message();
      EXPECT_EQ(resp.rows_written(), 2u) << who->name << " " << key;
      EXPECT_EQ(resp.duplicate(), attempt == 1) << who->name << " " << key;
    }
  }
  EXPECT_EQ(Query("SELECT string_agg(id || '=' || written_as, ',' ORDER BY id) FROM ta "
                  "WHERE id >= 40"),
            absl::StrCat("40=", kAAndB, ",41=", kAAndB, ",50=", kAAndB, ",51=", kAAndB,
                         ",60=app_owner,61=app_owner,70=app_owner,71=app_owner"));
  EXPECT_EQ(Query("SELECT string_agg(login || '/' || principal || '/' || key, ',' ORDER BY "
                  "login, principal, key) FROM poolside_ingest_keys"),
            absl::StrCat("app_owner/carol/c-secret,app_owner/carol/victim,"
                         "app_owner/carol/victim-legacy,",
                         kAAndB, "/bob/b-secret,", kAAndB, "/bob/victim,", kAAndB,
                         "/bob/victim-legacy,", kOnlyA, "//victim-legacy,", kOnlyA, "/alice/a-own,",
                         kOnlyA, "/bob/victim,", kOnlyA, "/carol/victim"));
  // And alice's login still sees only its own, while the owner (the DSN
  // user, whose cleanup deletes expired keys) sees every login's.
  EXPECT_EQ(
      Outcome(a.get(), "SELECT count(*) FROM poolside_ingest_keys WHERE login <> session_user"),
      "0");
  Session owner = ConnectAs(testing::kAppOwner);
  EXPECT_EQ(Outcome(owner.get(), "SELECT count(DISTINCT login) FROM poolside_ingest_keys"), "3");

  // The key table refuses bob's login (no policy for it, then no INSERT
  // grant): each keyed write is refused PERMISSION_DENIED naming the key
  // table, nothing of it written or kept, and his connections are left idle
  // and usable (an unkeyed write goes through them).
  ASSERT_TRUE(SharedPostgres()
                  .Exec(kDb, "DROP POLICY poolside_ingest_keys_login ON poolside_ingest_keys")
                  .ok());
  auto refused = [&](int first, const std::string& key, const char* reason) {
    s = Write(*server, kBob, Rows("ta", first, 2, key), &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
    EXPECT_TRUE(absl::StrContains(s.error_message(), "poolside_ingest_keys") &&
                absl::StrContains(s.error_message(), reason))
        << s.error_message();
    EXPECT_EQ(
        Query(absl::StrCat("SELECT count(*) FROM ta WHERE id >= ", first, " AND id < ", first + 2)),
        "0");
    EXPECT_EQ(
        Query(absl::StrCat("SELECT count(*) FROM poolside_ingest_keys WHERE key = '", key, "'")),
        "0");
    EXPECT_EQ(Query(absl::StrCat("SELECT count(*) > 0 AND bool_and(state = 'idle') FROM "
                                 "pg_stat_activity WHERE usename = '",
                                 kAAndB, "'")),
              "t");
    s = Write(*server, kBob, Rows("ta", first + 5, 1), &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
  };
  refused(100, "no-policy", "row-level security");
  ASSERT_TRUE(SharedPostgres()
                  .Exec(kDb, absl::StrCat("REVOKE INSERT ON poolside_ingest_keys FROM ", kAAndB))
                  .ok());
  refused(200, "no-grant", "permission denied");
  EXPECT_EQ(Query("SELECT count(*) FROM ta WHERE id IN (105, 205)"), "2");

  // With the policy and the grant back (as ingest makes them at start;
  // their repair: services/ingest/flusher_test), the same server writes
  // both: the refused keys were kept neither in the table nor in memory.
  ASSERT_TRUE(SharedPostgres()
                  .Exec(kDb, absl::StrCat("CREATE POLICY poolside_ingest_keys_login ON "
                                          "poolside_ingest_keys USING (login = session_user) "
                                          "WITH CHECK (login = session_user); GRANT INSERT ON "
                                          "poolside_ingest_keys TO ",
                                          kAAndB))
                  .ok());
  for (const auto& [first, key] :
       {std::make_pair(100, "no-policy"), std::make_pair(200, "no-grant")}) {
    resp.Clear();
    s = Write(*server, kBob, Rows("ta", first, 2, key), &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(resp.rows_written(), 2u);
    EXPECT_FALSE(resp.duplicate());
  }
  EXPECT_EQ(
      Outcome(a.get(), "SELECT count(*) FROM poolside_ingest_keys WHERE login <> session_user"),
      "0");
  EXPECT_EQ(testing::Terminate(*server->process).value_or(-1), 0);
}

// Starts ingest_server expecting it to refuse: its exit code (0: it started,
// and was stopped) and its log.
std::pair<int, std::string> StartExpectingRefusal(v1::IngestServiceConfig c) {
  const std::string stem = Stem(&c);
  auto p = testing::StartConfigured("services/ingest/ingest_server", c, stem + ".port", stem, {},
                                    absl::Seconds(20));
  if (p.ok()) {
    testing::Terminate(**p).IgnoreError();
    return {0, ""};
  }
  return {-1, ReadFile(stem + ".log").value_or("")};
}

TEST(IngestRolesTest, APrivilegedRoleIsRefusedAtStartUnlessAllowed) {
  ASSERT_NO_FATAL_FAILURE(SetUpDatabase());
  // A superuser among several roles (checked concurrently, each of them).
  v1::IngestServiceConfig su = Config();
  v1::DatabaseRole* r = su.mutable_databases(0)->add_roles();
  r->set_name("su");
  r->set_user("postgres");
  auto [code, log] = StartExpectingRefusal(su);
  EXPECT_NE(code, 0) << "it started";
  EXPECT_TRUE(absl::StrContains(log, "database app") && absl::StrContains(log, "postgres") &&
              absl::StrContains(log, "superuser"))
      << log;
  // A member of pg_read_server_files.
  v1::IngestServiceConfig files = Config();
  r = files.mutable_databases(0)->add_roles();
  r->set_name("files");
  r->set_user(kReadsFiles);
  std::tie(code, log) = StartExpectingRefusal(files);
  EXPECT_NE(code, 0) << "it started";
  EXPECT_TRUE(absl::StrContains(log, kReadsFiles) && absl::StrContains(log, "pg_read_server_files"))
      << log;
  // A principal naming a role the database does not configure.
  v1::IngestServiceConfig unknown = Config();
  unknown.mutable_auth()->mutable_principals(0)->set_database_role("no_such_role");
  std::tie(code, log) = StartExpectingRefusal(unknown);
  EXPECT_NE(code, 0) << "it started";
  EXPECT_TRUE(absl::StrContains(log, "no_such_role")) << log;

  // With the opt-in it starts, says so, and writes as that role.
  su.mutable_databases(0)->set_allow_privileged_role(true);
  su.mutable_auth()->mutable_principals(2)->set_database_role("su");  // carol
  absl::StatusOr<Server> server = Start(su);
  ASSERT_TRUE(server.ok()) << server.status();
  v1::WriteResponse resp;
  grpc::Status s = Write(*server, kCarol, Rows("ta", 500, 1), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(Query("SELECT written_as FROM ta WHERE id = 500"), "postgres");
  EXPECT_EQ(testing::Terminate(*server->process).value_or(-1), 0);
  EXPECT_TRUE(absl::StrContains(ReadFile(server->process->log_path()).value_or(""), "privileged"));
}

}  // namespace
}  // namespace poolside::testing
