// Adversarial tests of the isolation between the query service's callers
// (issue 21): hostile statements in every disguise, sent by a read and a
// write principal through Execute, ExecuteStream and ExecuteTransaction;
// acknowledged writes next to hostile neighbours; reads pipelined next to
// search_path changes; the database-role boundary, the ddl grant, privileged
// roles at startup, the deadline cap, literal-free statement statistics, and a
// server that still drains after COPY attempts.
//
// Every case is checked twice: the answer, then NothingLeftBehind(), a probe of
// every pooled backend (through a superuser session, and through poolside as
// each principal). Each database role's pool holds one connection, so a probe
// sent through poolside runs on the backend that served the attack.
//
// Refusals are told from PostgreSQL's own errors by the message: poolside's
// refusal happens before anything is sent, so it carries no SQLSTATE, while
// every error from PostgreSQL ends in "(SQLSTATE xxxxx)" (common/db/error.h).

#include <libpq-fe.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <future>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/auth/token_hash.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/common.pb.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/query.grpc.pb.h"
#include "tests/fixtures/app_roles.h"
#include "tests/fixtures/concurrent_calls.h"
#include "tests/fixtures/files.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/service_process.h"

namespace poolside::testing {
namespace {

using Code = ::grpc::StatusCode;

constexpr char kDb[] = "isolation";
constexpr absl::Duration kCallTimeout = absl::Seconds(10);
constexpr char kAccounts[] = "1:100,2:200,3:300";  // accounts as set up; nothing here changes it
constexpr char kDefaultSearchPath[] = "\"$user\", public";
// Advisory lock keys the attacks use; the probe takes each from a superuser
// session.
constexpr int64_t kAdvisoryKeys[] = {4711, 4712, 4713, 4714, 4720, 4721, 4722};

// ---------------------------------------------------------------------------
// Principals and servers.

struct Principal {
  const char* name;
  const char* token;
  const char* db_role;  // current_user and session_user of its backends
  bool read_only;       // no "write" role: read-only transactions, read-only role
};
constexpr Principal kReader{"reader", "tok-iso-reader-4c1f9a07", "app_read", true};
// Another read principal of the same database role: the victim whose reads
// share a pooled connection (and pipelines) with kReader's attacks.
constexpr Principal kNeighbour{"neighbour", "tok-iso-neighbour-d20b7e55", "app_read", true};
constexpr Principal kWriter{"writer", "tok-iso-writer-93e5c1b8", "app_write", false};
constexpr Principal kDdl{"ddl", "tok-iso-ddl-0e6b42f3", "app_write", false};
constexpr Principal kAdmin{"admin", "tok-iso-admin-5a77d019", "", false};

void AddPrincipal(v1::QueryServiceConfig* c, const Principal& p, std::vector<std::string> roles) {
  v1::PrincipalConfig* pc = c->mutable_auth()->add_principals();
  pc->set_name(p.name);
  pc->set_token_sha256(auth::Sha256Hex(p.token));
  for (std::string& r : roles) pc->add_roles(std::move(r));
  pc->add_databases(kDb);
  if (*p.db_role != '\0') pc->set_database_role(p.db_role);
}

// The database (owned by app_owner) and its two roles, one connection each.
v1::QueryServiceConfig BaseConfig() {
  v1::QueryServiceConfig c;
  v1::DatabaseConfig* db =
      AddDatabase(&c, kDb, testing::DsnAs(SharedPostgres(), kDb, testing::kAppOwner));
  db->mutable_pool()->set_max_size(1);
  db->mutable_pool()->set_min_idle(0);
  // Said explicitly: test fixtures may default it to true.
  db->set_allow_privileged_role(false);
  for (const char* role : {testing::kAppRead, testing::kAppWrite}) {
    v1::DatabaseRole* r = db->add_roles();
    r->set_name(role);
    r->mutable_pool()->set_max_size(1);
  }
  return c;
}

v1::QueryServiceConfig SharedConfig() {
  v1::QueryServiceConfig c = BaseConfig();
  AddPrincipal(&c, kReader, {"read", "sql"});
  AddPrincipal(&c, kNeighbour, {"read", "sql"});
  AddPrincipal(&c, kWriter, {"read", "write", "sql"});
  AddPrincipal(&c, kAdmin, {"admin"});
  return c;
}

absl::StatusOr<std::unique_ptr<ServiceProcess>> StartQuery(v1::QueryServiceConfig c) {
  return testing::StartOnLoopback("services/query/query_server", std::move(c));
}

// ---------------------------------------------------------------------------
// Calls.

enum class Rpc { kExecute, kStream, kTransaction };
constexpr Rpc kAllRpcs[] = {Rpc::kExecute, Rpc::kStream, Rpc::kTransaction};

// The RPCs' names, in the enum's order.
const char* RpcName(Rpc rpc) {
  static constexpr const char* kNames[] = {"Execute", "ExecuteStream", "ExecuteTransaction"};
  return kNames[static_cast<int>(rpc)];
}

std::string CodeName(Code code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

using Rows = std::vector<std::vector<std::string>>;

struct Answer {
  grpc::Status status;
  std::vector<Rows> results;  // one per result set (ExecuteTransaction: per statement)

  Code code() const { return status.error_code(); }
  const Rows& rows() const {
    static const Rows kNone;
    return results.empty() ? kNone : results.back();
  }
  // The only value of a one-row, one-column result, or "<no single value>".
  std::string value() const {
    const Rows& r = rows();
    return r.size() == 1 && r[0].size() == 1 ? r[0][0] : "<no single value>";
  }
};

std::string AsText(const v1::Value& v) {
  switch (v.kind_case()) {
    case v1::Value::kTextValue:
      return v.text_value();
    case v1::Value::kInt64Value:
      return absl::StrCat(v.int64_value());
    case v1::Value::kBoolValue:
      return v.bool_value() ? "true" : "false";
    case v1::Value::kDoubleValue:
      return absl::StrCat(v.double_value());
    case v1::Value::kNumericValue:
      return v.numeric_value();
    case v1::Value::kJsonValue:
      return v.json_value();
    case v1::Value::kBytesValue:
      return v.bytes_value();
    case v1::Value::kTimestampValue:
      return v.timestamp_value().ShortDebugString();
    default:
      return "NULL";
  }
}

void AppendRows(const google::protobuf::RepeatedPtrField<v1::Row>& rows, Rows* out) {
  for (const v1::Row& row : rows) {
    std::vector<std::string> values;
    for (const v1::Value& v : row.values()) values.push_back(AsText(v));
    out->push_back(std::move(values));
  }
}

std::string Describe(const Answer& a) {
  if (!a.status.ok()) {
    return absl::StrCat(CodeName(a.code()), ": ", a.status.error_message().substr(0, 400));
  }
  std::vector<std::string> rows;
  for (const auto& row : a.rows()) rows.push_back(absl::StrJoin(row, "|"));
  if (rows.size() > 4) rows.resize(4);
  return absl::StrCat("OK [", absl::StrJoin(rows, "; "), "]");
}

class Client {
 public:
  explicit Client(const std::shared_ptr<grpc::Channel>& channel)
      : stub_(v1::QueryService::NewStub(channel)) {}

  Answer Execute(const Principal& who, const std::string& sql,
                 absl::Duration timeout = kCallTimeout, std::vector<v1::Value> params = {}) {
    grpc::ClientContext ctx;
    Prepare(&ctx, who, timeout);
    v1::ExecuteRequest req;
    req.set_database(kDb);
    req.set_sql(sql);
    for (v1::Value& p : params) *req.add_params() = std::move(p);
    v1::ExecuteResponse resp;
    Answer a;
    a.status = stub_->Execute(&ctx, req, &resp);
    a.results.emplace_back();
    AppendRows(resp.result().rows(), &a.results.back());
    return a;
  }

  Answer Stream(const Principal& who, const std::string& sql,
                absl::Duration timeout = kCallTimeout) {
    grpc::ClientContext ctx;
    Prepare(&ctx, who, timeout);
    v1::ExecuteRequest req;
    req.set_database(kDb);
    req.set_sql(sql);
    std::unique_ptr<grpc::ClientReader<v1::ExecuteStreamResponse>> reader =
        stub_->ExecuteStream(&ctx, req);
    Answer a;
    a.results.emplace_back();
    v1::ExecuteStreamResponse chunk;
    while (reader->Read(&chunk)) AppendRows(chunk.rows(), &a.results.back());
    a.status = reader->Finish();
    return a;
  }

  Answer Transaction(const Principal& who, const std::vector<std::string>& statements,
                     absl::Duration timeout = kCallTimeout) {
    grpc::ClientContext ctx;
    Prepare(&ctx, who, timeout);
    v1::ExecuteTransactionRequest req;
    req.set_database(kDb);
    for (const std::string& s : statements) req.add_statements()->set_sql(s);
    v1::ExecuteTransactionResponse resp;
    Answer a;
    a.status = stub_->ExecuteTransaction(&ctx, req, &resp);
    for (const v1::ResultSet& r : resp.results()) {
      a.results.emplace_back();
      AppendRows(r.rows(), &a.results.back());
    }
    return a;
  }

  // `sql` alone, or (ExecuteTransaction) after "SELECT 1" and `before`.
  Answer Run(Rpc rpc, const Principal& who, const std::string& sql,
             const std::vector<std::string>& before = {}) {
    switch (rpc) {
      case Rpc::kExecute:
        return Execute(who, sql);
      case Rpc::kStream:
        return Stream(who, sql);
      case Rpc::kTransaction: {
        std::vector<std::string> statements = {"SELECT 1"};
        statements.insert(statements.end(), before.begin(), before.end());
        statements.push_back(sql);
        return Transaction(who, statements);
      }
    }
    return Answer();
  }

  grpc::Status StatementStats(v1::GetStatementStatsResponse* out) {
    grpc::ClientContext ctx;
    Prepare(&ctx, kAdmin, kCallTimeout);
    v1::GetStatementStatsRequest req;
    req.set_database(kDb);
    return stub_->GetStatementStats(&ctx, req, out);
  }

 private:
  static void Prepare(grpc::ClientContext* ctx, const Principal& who, absl::Duration timeout) {
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    ctx->AddMetadata("authorization", absl::StrCat("Bearer ", who.token));
  }

  std::unique_ptr<v1::QueryService::Stub> stub_;
};

// ---------------------------------------------------------------------------
// The database: roles, tables, and what the superuser sees.

void SetUpDatabase() {
  static bool done = false;
  if (done) return;
  PostgresCluster& pg = SharedPostgres();
  ASSERT_TRUE(pg.CreateDatabase(kDb).ok());
  absl::Status roles = testing::CreateAppRoles(pg, kDb);
  ASSERT_TRUE(roles.ok()) << roles;
  // For the startup test: a role that may read the server's files.
  absl::Status files = pg.Exec(
      "postgres",
      "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_reads_files') THEN "
      "CREATE ROLE app_reads_files LOGIN IN ROLE pg_read_server_files; END IF; END$$");
  ASSERT_TRUE(files.ok()) << files;
  absl::Status schema = pg.Exec(kDb, R"sql(
    CREATE SCHEMA shadow AUTHORIZATION app_owner;
    SET ROLE app_owner;
    CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
    INSERT INTO accounts VALUES (1, 100), (2, 200), (3, 300);
    CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL);
    INSERT INTO items VALUES (1, 'real-1'), (2, 'real-2'), (3, 'real-3');
    CREATE TABLE shadow.items (id bigint PRIMARY KEY, label text NOT NULL);
    INSERT INTO shadow.items VALUES (1, 'shadow-1'), (2, 'shadow-2'), (3, 'shadow-3');
    CREATE TABLE writes (k bigint PRIMARY KEY CHECK (k >= 0), v text NOT NULL);
    INSERT INTO writes VALUES (99, 'taken');
    CREATE TABLE secret (note text);
    INSERT INTO secret VALUES ('granted to nobody');
    CREATE PROCEDURE leak_search_path() LANGUAGE plpgsql
      AS $$BEGIN PERFORM set_config('search_path', 'shadow', false); END$$;
    CREATE PROCEDURE add_write(key bigint) LANGUAGE sql
      AS $$INSERT INTO writes (k, v) VALUES (key, 'from a procedure')$$;
    CREATE FUNCTION one() RETURNS int LANGUAGE sql AS 'SELECT 1';
    RESET ROLE;
    GRANT USAGE ON SCHEMA shadow TO app_read, app_write;
    GRANT SELECT ON shadow.items TO app_read, app_write;
  )sql");
  ASSERT_TRUE(schema.ok()) << schema;
  absl::Status grants = testing::GrantAppTables(pg, kDb, {"accounts", "items", "writes"});
  ASSERT_TRUE(grants.ok()) << grants;
  done = true;
}

// One superuser session for the checks: the probe runs after every group of
// calls, and a connection per query would cost more than the calls it checks.
class SuperuserSession {
 public:
  // The first column of the first row ("" for NULL), or "<query failed: ...>".
  std::string Query(const std::string& sql) {
    absl::MutexLock lock(&mu_);
    if (conn_ == nullptr || PQstatus(conn_) != CONNECTION_OK) {
      if (conn_ != nullptr) PQfinish(conn_);
      // Every statement bounded: a check never waits for long.
      conn_ = PQconnectdb(absl::StrCat(SharedPostgres().Dsn(kDb),
                                       " connect_timeout=10 application_name=isolation_test",
                                       " options='-c statement_timeout=10000'")
                              .c_str());
    }
    PGresult* r = PQexec(conn_, sql.c_str());
    std::string out;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
      out = absl::StrCat("<query failed: ", PQerrorMessage(conn_), ">");
    } else if (PQntuples(r) > 0 && PQnfields(r) > 0) {
      out = PQgetvalue(r, 0, 0);
    }
    PQclear(r);
    return out;
  }

 private:
  absl::Mutex mu_;
  PGconn* conn_ ABSL_GUARDED_BY(mu_) = nullptr;
};

std::string Query(const std::string& sql) {
  static SuperuserSession* const session = new SuperuserSession;
  return session->Query(sql);
}

std::string AccountsNow() {
  return Query("SELECT string_agg(id || ':' || balance, ',' ORDER BY id) FROM accounts");
}

bool RowExists(int64_t key) {
  return Query(absl::StrCat("SELECT count(*) FROM writes WHERE k = ", key)) == "1";
}

std::string PoolsideBackends() {
  return Query(
      "SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity "
      "WHERE application_name LIKE 'poolside-query/%'");
}

// poolside's backends that are not idle outside a transaction.
constexpr char kBusyBackendsSql[] = R"sql(
  SELECT string_agg(format('backend %s (%s) %s%s', pid, usename, state,
                           CASE WHEN backend_xid IS NOT NULL
                                THEN ' holding xid ' || backend_xid ELSE '' END), '; ')
  FROM pg_stat_activity
  WHERE application_name LIKE 'poolside-query/%'
    AND (state IS DISTINCT FROM 'idle' OR xact_start IS NOT NULL OR backend_xid IS NOT NULL))sql";

// Everything the superuser can see that an attack could leave behind: "" when
// nothing. (Session advisory locks show in pg_locks, and the probe's own
// pg_try_advisory_lock fails for a key some other session holds.)
std::string LeftoversSql() {
  return absl::StrCat("SELECT concat_ws(' | ', (", kBusyBackendsSql, R"sql(),
      (SELECT 'locks held by idle poolside backends: ' ||
              string_agg(format('%s %s %s', l.pid, l.locktype, l.mode), ', ')
       FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
       WHERE a.application_name LIKE 'poolside-query/%'),
      (SELECT 'temporary relations: ' || string_agg(n.nspname || '.' || c.relname, ', ')
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relpersistence = 't'),
      (SELECT 'prepared transactions: ' || string_agg(gid, ', ') FROM pg_prepared_xacts),
      (SELECT 'large objects: ' || count(*) FROM pg_largeobject_metadata HAVING count(*) > 0),
      (SELECT 'advisory keys held elsewhere: ' || string_agg(k::text, ', ')
       FROM unnest(ARRAY[)sql",
                      absl::StrJoin(kAdvisoryKeys, ","),
                      R"sql(]::bigint[]) AS k WHERE NOT pg_try_advisory_lock(k)),
      (SELECT 'advisory key (4715, 4716) held elsewhere' WHERE NOT pg_try_advisory_lock(4715, 4716)),
      (SELECT 'accounts changed: ' || string_agg(id || ':' || balance, ',' ORDER BY id)
       FROM accounts HAVING string_agg(id || ':' || balance, ',' ORDER BY id) <> ')sql",
                      kAccounts, R"sql('),
      (SELECT 'relations made by attacks: ' || string_agg(relname, ', ') FROM pg_class
       WHERE relname LIKE 'iso\_%' AND relpersistence <> 't'
         AND relnamespace IN ('public'::regnamespace, 'shadow'::regnamespace)),
      (SELECT 'functions made by attacks: ' || string_agg(proname, ', ') FROM pg_proc
       WHERE proname LIKE 'iso\_%' AND pronamespace = 'public'::regnamespace),
      (SELECT 'rows written by attacks: ' || string_agg(k::text, ', ') FROM writes
       WHERE k BETWEEN 900000 AND 909999),
      (SELECT 'role or database settings changed: ' || string_agg(array_to_string(setconfig, ','), '; ')
       FROM pg_db_role_setting
       WHERE setconfig::text <> '{default_transaction_read_only=on}'),
      (SELECT 'poolside backends logged in as another role: ' || string_agg(DISTINCT usename, ', ')
       FROM pg_stat_activity WHERE application_name LIKE 'poolside-query/%'
       AND usename NOT IN ('app_owner', 'app_read', 'app_write')),
      (SELECT 'role memberships granted: ' || string_agg(r.rolname, ', ')
       FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member
       WHERE r.rolname IN ('app_owner', 'app_read', 'app_write')),
      (SELECT 'privileged roles: ' || string_agg(rolname, ', ') FROM pg_roles
       WHERE rolname IN ('app_owner', 'app_read', 'app_write') AND rolsuper))
  )sql");
}

// What a pooled backend shows of its own session, through poolside: one row.
constexpr char kSessionProbeSql[] = R"sql(
  SELECT current_user::text, session_user::text,
         (SELECT count(*) FROM pg_prepared_statements WHERE from_sql)::text,
         (SELECT count(*) FROM pg_cursors WHERE name <> '')::text,
         (SELECT count(*) FROM pg_listening_channels())::text,
         current_setting('search_path'),
         (SELECT coalesce(string_agg(name || '=' || setting, ', ' ORDER BY name), '')
          FROM pg_settings WHERE source = 'session' AND name NOT IN (
            'statement_timeout', 'application_name', 'DateStyle', 'TimeZone', 'IntervalStyle',
            'extra_float_digits', 'bytea_output', 'client_encoding',
            'transaction_read_only', 'transaction_isolation', 'transaction_deferrable')),
         current_setting('default_transaction_read_only'),
         coalesce(current_setting('iso.flag', true), ''))sql";

// The probe: poolside's backends are idle outside a transaction and hold
// nothing; the database holds nothing an attack made; and each principal's
// pooled backend runs as its role with no session state of anyone's.
::testing::AssertionResult NothingLeftBehind(Client& client,
                                             std::vector<const Principal*> principals) {
  std::vector<std::string> problems;
  // A backend finishes its call just after answering it, and the pool may
  // use one meanwhile: what is left behind is what stays.
  std::string left;
  testing::WaitFor(
      [&] {
        left = Query(LeftoversSql());
        // The advisory locks the check itself took.
        Query("SELECT pg_advisory_unlock_all()");
        return left.empty();
      },
      absl::Seconds(3));
  if (!left.empty()) problems.push_back(left);
  for (const Principal* p : principals) {
    const Answer a = client.Execute(*p, kSessionProbeSql);
    if (!a.status.ok()) {
      problems.push_back(absl::StrCat(p->name, ": the probe failed: ", Describe(a)));
      continue;
    }
    if (a.rows().size() != 1 || a.rows()[0].size() != 9) {
      problems.push_back(absl::StrCat(p->name, ": the probe returned ", Describe(a)));
      continue;
    }
    const std::vector<std::string>& r = a.rows()[0];
    const std::pair<std::string, std::string> want[] = {
        {"current_user", p->db_role},
        {"session_user", p->db_role},
        {"statements prepared with SQL", "0"},
        {"open cursors", "0"},
        {"channels listened on", "0"},
        {"search_path", kDefaultSearchPath},
        {"settings changed for the session", ""},
        {"default_transaction_read_only", p->read_only ? "on" : "off"},
        {"iso.flag", ""},
    };
    for (size_t i = 0; i < r.size(); ++i) {
      if (r[i] != want[i].second) {
        problems.push_back(absl::StrCat(p->name, "'s backend: ", want[i].first, " is \"", r[i],
                                        "\", want \"", want[i].second, "\""));
      }
    }
  }
  if (problems.empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "left behind:\n  " << absl::StrJoin(problems, "\n  ");
}

// A superuser session LISTENing on poolside's invalidation channel.
class ChannelListener {
 public:
  ChannelListener() {
    conn_ = PQconnectdb(absl::StrCat(SharedPostgres().Dsn(kDb), " connect_timeout=10",
                                     " options='-c statement_timeout=10000'")
                            .c_str());
    if (PQstatus(conn_) != CONNECTION_OK) {
      error_ = PQerrorMessage(conn_);
      return;
    }
    PGresult* r = PQexec(conn_, "LISTEN poolside_invalidate");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) error_ = PQerrorMessage(conn_);
    PQclear(r);
  }
  ~ChannelListener() { PQfinish(conn_); }
  ChannelListener(const ChannelListener&) = delete;
  ChannelListener& operator=(const ChannelListener&) = delete;

  const std::string& error() const { return error_; }

  // Notifications received so far. A round trip first: a notification
  // committed before this call has arrived by the time it returns.
  int Received() {
    PQclear(PQexec(conn_, "SELECT 1"));
    PQconsumeInput(conn_);
    while (PGnotify* n = PQnotifies(conn_)) {
      ++received_;
      PQfreemem(n);
    }
    return received_;
  }

 private:
  PGconn* conn_ = nullptr;
  std::string error_;
  int received_ = 0;
};

// ---------------------------------------------------------------------------
// Expected outcomes.

bool IsWordChar(char c) { return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_'; }

// Whether `message` contains `word` (any case) not as part of a longer name.
bool NamesWord(absl::string_view message, absl::string_view word) {
  const std::string m = absl::AsciiStrToLower(message);
  const std::string w = absl::AsciiStrToLower(word);
  for (size_t at = m.find(w); at != std::string::npos; at = m.find(w, at + 1)) {
    const bool left = at == 0 || !IsWordChar(m[at - 1]);
    const bool right = at + w.size() == m.size() || !IsWordChar(m[at + w.size()]);
    if (left && right) return true;
  }
  return false;
}

struct Outcome {
  // Refused by poolside before anything runs: INVALID_ARGUMENT naming one of
  // `names`. Otherwise it runs, and ends with one of the codes.
  bool refused = true;
  std::vector<std::string> names;
  std::vector<Code> reader_codes;
  std::vector<Code> writer_codes;
};

Outcome RefusedNaming(std::vector<std::string> names) {
  Outcome o;
  o.names = std::move(names);
  return o;
}

Outcome Runs(std::vector<Code> reader_codes, std::vector<Code> writer_codes) {
  Outcome o;
  o.refused = false;
  o.reader_codes = std::move(reader_codes);
  o.writer_codes = std::move(writer_codes);
  return o;
}

// "" when `got` is what `want` says, else why not.
std::string Mismatch(const Outcome& want, const Principal& who, const Answer& got) {
  if (want.refused) {
    if (got.code() != Code::INVALID_ARGUMENT) {
      return absl::StrCat("want INVALID_ARGUMENT naming ", absl::StrJoin(want.names, " or "),
                          ", got ", Describe(got));
    }
    const std::string& message = got.status.error_message();
    if (absl::StrContains(message, "(SQLSTATE ")) {
      return absl::StrCat("it reached PostgreSQL (poolside must refuse it first): ", Describe(got));
    }
    for (const std::string& name : want.names) {
      if (NamesWord(message, name)) return "";
    }
    return absl::StrCat("the message names none of ", absl::StrJoin(want.names, ", "), ": ",
                        Describe(got));
  }
  const std::vector<Code>& codes = who.read_only ? want.reader_codes : want.writer_codes;
  if (std::find(codes.begin(), codes.end(), got.code()) != codes.end()) return "";
  std::vector<std::string> names;
  for (Code c : codes) names.push_back(CodeName(c));
  return absl::StrCat("want ", absl::StrJoin(names, " or "), ", got ", Describe(got));
}

// ---------------------------------------------------------------------------
// The hostile statement table.

struct Construct {
  std::string label;
  std::vector<std::string> texts;  // the construct in its disguises
  Outcome alone;                   // Execute and ExecuteStream
  Outcome in_transaction;          // ExecuteTransaction, after "SELECT 1" and `before`
  std::vector<std::string> before;
};

bool ValidDollarTag(absl::string_view tag) {
  if (tag.empty()) return true;
  if (absl::ascii_isdigit(static_cast<unsigned char>(tag[0]))) return false;
  return std::all_of(tag.begin(), tag.end(), IsWordChar);
}

// For each byte of `sql`: outside string literals, quoted identifiers and
// dollar-quoted text (enough for this file's texts: no backslash escapes).
std::vector<bool> OutsideQuotes(absl::string_view sql) {
  std::vector<bool> outside(sql.size(), true);
  size_t i = 0;
  while (i < sql.size()) {
    size_t end = std::string::npos;
    if (sql[i] == '\'' || sql[i] == '"') {
      const size_t close = sql.find(sql[i], i + 1);
      end = close == std::string::npos ? sql.size() : close + 1;
    } else if (sql[i] == '$') {
      const size_t close = sql.find('$', i + 1);
      if (close != std::string::npos && ValidDollarTag(sql.substr(i + 1, close - i - 1))) {
        const absl::string_view tag = sql.substr(i, close - i + 1);
        const size_t term = sql.find(tag, close + 1);
        end = term == std::string::npos ? sql.size() : term + tag.size();
      }
    }
    if (end == std::string::npos) {
      ++i;
      continue;
    }
    for (size_t j = i; j < end; ++j) outside[j] = false;
    i = end;
  }
  return outside;
}

// aLtErNaTiNg case outside quotes (which keeps the meaning).
std::string MixedCase(absl::string_view sql) {
  const std::vector<bool> outside = OutsideQuotes(sql);
  std::string out(sql);
  bool upper = false;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!outside[i] || !absl::ascii_isalpha(static_cast<unsigned char>(out[i]))) continue;
    out[i] = upper ? absl::ascii_toupper(out[i]) : absl::ascii_tolower(out[i]);
    upper = !upper;
  }
  return out;
}

// Comments between the first two words and before the first parenthesis.
std::string CommentsInside(absl::string_view sql) {
  const std::vector<bool> outside = OutsideQuotes(sql);
  std::string out;
  bool spaced = false, parenthesized = false;
  for (size_t i = 0; i < sql.size(); ++i) {
    if (outside[i] && !spaced && sql[i] == ' ') {
      out += " /* inside */\n-- and a line comment\n";
      spaced = true;
      continue;
    }
    if (outside[i] && !parenthesized && sql[i] == '(') {
      out += "/**/(";
      parenthesized = true;
      continue;
    }
    out += sql[i];
  }
  if (!spaced) out += " /* after */";
  return out;
}

// The text and the ways a text-matching check could be led past it.
std::vector<std::string> Disguises(const std::string& sql) {
  return {sql,
          ";" + sql,
          ";;" + sql,
          "; ;\n" + sql,
          sql + ";",
          ";;" + sql + " ;;",
          "-- hostile\n" + sql,
          "/* hostile */" + sql,
          "/* outer /* nested */ still outer */ " + sql,
          "/* ; COMMIT; */ " + sql,
          ";/**/;--;\n" + sql + "\n-- trailing",
          CommentsInside(sql),
          MixedCase(sql),
          "\n\t  " + sql + " \n"};
}

// A function that runs SQL text or changes session or server state.
struct FunctionAttack {
  std::string name;  // as PostgreSQL resolves it
  std::string args;  // "(...)"
  std::string from;  // the rest of a "SELECT name(args)" statement, if any
  std::vector<std::string> also_named = {};
};

// The ways of writing a function's name that all call it.
std::vector<std::string> NameForms(const std::string& name) {
  char first[8];
  std::snprintf(first, sizeof first, "%04x", static_cast<unsigned>(name[0]));
  return {name,
          "pg_catalog." + name,
          "\"pg_catalog\".\"" + name + "\"",
          absl::AsciiStrToUpper("pg_catalog." + name),
          "\"" + name + "\"",
          "pg_catalog . " + name,
          absl::StrCat("U&\"\\", first, name.substr(1), "\"")};
}

// Where a call can hide: {CALL} is the call, {FROM} the rest of its SELECT.
constexpr const char* kPlacements[] = {
    "SELECT * FROM (SELECT {CALL} AS r{FROM}) AS sub",
    "WITH c AS (SELECT {CALL} AS r{FROM}) SELECT * FROM c",
    "WITH c AS MATERIALIZED (SELECT 1) SELECT (SELECT {CALL}{FROM} LIMIT 1) FROM c",
    "SELECT 1 WHERE EXISTS (SELECT {CALL}{FROM})",
    "SELECT 1 AS one ORDER BY (SELECT {CALL}{FROM} LIMIT 1)",
    "VALUES ((SELECT {CALL}{FROM} LIMIT 1))",
    "SELECT CASE WHEN false THEN (SELECT {CALL}{FROM} LIMIT 1) END",
    "SELECT * FROM (VALUES (1)) AS v (x), LATERAL (SELECT {CALL}{FROM}) AS l",
    "EXPLAIN ANALYZE SELECT {CALL}{FROM}",
    "CREATE TABLE iso_ctas AS SELECT {CALL} AS r{FROM}",
    "INSERT INTO writes (k, v) SELECT 900001, (SELECT {CALL}{FROM} LIMIT 1)::text",
    "UPDATE accounts SET balance = balance WHERE id = 0 OR (SELECT {CALL}{FROM} LIMIT 1) IS NULL",
};
// For calls that stand alone: in the FROM clause.
constexpr const char* kFromPlacements[] = {
    "SELECT * FROM {CALL} AS f",
    "SELECT * FROM ROWS FROM ({CALL}) AS f",
    "SELECT * FROM (VALUES (1)) AS v (x) CROSS JOIN LATERAL {CALL} AS f",
    "SELECT count(*) FROM accounts WHERE {CALL} IS NOT NULL",
};
constexpr const char* kDoBodies[] = {
    "DO $$BEGIN PERFORM {CALL}{FROM}; END$$",
    "DO LANGUAGE plpgsql $body$ BEGIN PERFORM {CALL}{FROM}; END $body$",
};

std::string Place(absl::string_view placement, const std::string& call, const std::string& from) {
  return absl::StrReplaceAll(placement, {{"{CALL}", call}, {"{FROM}", from}});
}

// The SQL text inside some attacks: a session-level set_config smuggled
// through a function that runs SQL.
constexpr char kSmuggled[] = "SELECT set_config(''search_path'', ''shadow'', false)";

std::vector<FunctionAttack> FunctionAttacks() {
  const std::string backends =
      " FROM pg_stat_activity WHERE application_name LIKE 'poolside-query/%' "
      "AND pid <> pg_backend_pid()";
  const std::string xml_args = absl::StrCat("('", kSmuggled, "', true, false, '')");
  return {
      {"set_config", "('search_path', 'shadow', false)", ""},
      {"set_config", "('iso.flag', 'intruder', false)", ""},
      {"set_config", "('search_path', 'shadow', 1 = 1)", ""},
      {"set_config", "('search_path', 'shadow', NOT false)", ""},
      {"set_config", "('search' || '_path', 'shadow', true)", ""},
      {"set_config", "('search_path', current_setting('search_path') || ', shadow', true)", ""},
      {"set_config", "('search_path', 'pg_temp, public', true)", "", {"pg_temp"}},
      {"set_config", "('statement_timeout', '0', false)", ""},
      {"pg_advisory_lock", "(4711)", ""},
      {"pg_advisory_lock_shared", "(4712)", ""},
      {"pg_try_advisory_lock", "(4713)", ""},
      {"pg_try_advisory_lock_shared", "(4714)", ""},
      {"pg_advisory_lock", "(4715, 4716)", ""},
      {"dblink", "('dbname=isolation', 'UPDATE accounts SET balance = 0')", ""},
      {"dblink_exec", "('dbname=isolation', 'UPDATE accounts SET balance = 0')", ""},
      {"dblink_connect", "('iso', 'dbname=isolation')", ""},
      {"query_to_xml", xml_args, ""},
      {"query_to_xml_and_xmlschema", xml_args, ""},
      {"query_to_xmlschema", xml_args, ""},
      {"ts_rewrite", absl::StrCat("('a'::tsquery, '", kSmuggled, "::tsquery, ''b''::tsquery')"),
       ""},
      {"ts_stat", "('SELECT to_tsvector(set_config(''search_path'', ''shadow'', false))')", ""},
      {"lo_import", "('/etc/passwd')", ""},
      {"lo_create", "(0)", ""},
      {"lo_creat", "(-1)", ""},
      {"lo_from_bytea", "(0, '\\x6869')", ""},
      {"lo_put", "(424242, 0, '\\x00')", ""},
      {"lo_unlink", "(424242)", ""},
      {"lo_export", "(424242, '/tmp/poolside-isolation-lo')", ""},
      {"pg_read_file", "('/etc/passwd')", ""},
      {"pg_read_binary_file", "('/etc/passwd')", ""},
      {"pg_ls_dir", "('.')", ""},
      {"pg_ls_waldir", "()", ""},
      {"pg_ls_tmpdir", "()", ""},
      {"pg_stat_file", "('PG_VERSION')", ""},
      {"pg_cancel_backend", "(pid)", backends},
      {"pg_terminate_backend", "(pid)", backends},
      {"pg_notify", "('poolside_invalidate', 'accounts')", ""},
      {"pg_reload_conf", "()", ""},
      {"pg_rotate_logfile", "()", ""},
      {"pg_switch_wal", "()", ""},
  };
}

std::string TouchPath() { return absl::StrCat("/tmp/poolside-isolation-", getpid(), "-touched"); }
std::string CopyPath() { return absl::StrCat("/tmp/poolside-isolation-", getpid(), "-copied"); }

std::vector<Construct> HostileStatements() {
  std::vector<Construct> out;
  auto add = [&](std::string text, Outcome alone, Outcome in_transaction,
                 std::vector<std::string> before = {}) {
    Construct c;
    c.label = text;
    c.texts = Disguises(text);
    c.alone = std::move(alone);
    c.in_transaction = std::move(in_transaction);
    c.before = std::move(before);
    out.push_back(std::move(c));
  };
  // Each of `texts` is refused with a message naming one of `names`.
  auto refused = [&](std::vector<std::string> names, std::vector<std::string> texts) {
    for (std::string& text : texts) {
      add(std::move(text), RefusedNaming(names), RefusedNaming(names));
    }
  };
  const Outcome ok = Runs({Code::OK}, {Code::OK});

  // Transaction control.
  refused({"BEGIN"}, {"BEGIN", "BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE"});
  refused({"START", "BEGIN"}, {"START TRANSACTION READ WRITE"});
  refused({"COMMIT"}, {"COMMIT", "COMMIT AND CHAIN"});
  refused({"END", "COMMIT"}, {"END"});
  refused({"ROLLBACK"}, {"ROLLBACK"});
  refused({"ABORT", "ROLLBACK"}, {"ABORT"});
  refused({"SAVEPOINT"}, {"SAVEPOINT s1"});
  refused({"RELEASE"}, {"RELEASE SAVEPOINT s1"});
  refused({"ROLLBACK"}, {"ROLLBACK TO SAVEPOINT s1"});
  refused({"PREPARE TRANSACTION"}, {"PREPARE TRANSACTION 'iso_px'"});
  refused({"COMMIT PREPARED"}, {"COMMIT PREPARED 'iso_px'"});
  refused({"ROLLBACK PREPARED"}, {"ROLLBACK PREPARED 'iso_px'"});
  refused({"SET TRANSACTION"},
          {"SET TRANSACTION READ WRITE", "SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED"});
  refused({"SESSION CHARACTERISTICS"}, {"SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
                                        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"});

  // Session state.
  refused({"SET"}, {"SET search_path = shadow, public", "SET SESSION search_path TO shadow",
                    "SET statement_timeout = 1", "SET iso.flag = 'intruder'"});
  refused({"pg_temp"},
          {"SET LOCAL search_path = pg_temp, public", "SET LOCAL search_path TO public, pg_temp"});
  refused({"RESET"}, {"RESET ALL", "RESET search_path"});
  refused({"SET ROLE", "SET"}, {"SET ROLE app_write", "SET ROLE NONE"});
  refused({"SESSION AUTHORIZATION"}, {"SET SESSION AUTHORIZATION app_owner"});
  refused({"SESSION AUTHORIZATION", "RESET"}, {"RESET SESSION AUTHORIZATION"});
  refused({"DISCARD"}, {"DISCARD ALL", "DISCARD PLANS", "DISCARD TEMP"});
  refused({"LISTEN"}, {"LISTEN poolside_invalidate"});
  refused({"UNLISTEN"}, {"UNLISTEN *"});
  refused({"NOTIFY"}, {"NOTIFY poolside_invalidate, 'accounts'"});
  refused({"PREPARE"},
          {"PREPARE iso_p AS SELECT 1", "PREPARE poolside_1 AS UPDATE accounts SET balance = 0"});
  refused({"EXECUTE"}, {"EXECUTE poolside_1"});
  refused({"DEALLOCATE"}, {"DEALLOCATE poolside_1", "DEALLOCATE ALL"});
  refused({"HOLD", "DECLARE"}, {"DECLARE iso_c CURSOR WITH HOLD FOR SELECT id FROM accounts"});
  refused({"LOAD"}, {"LOAD 'auto_explain'"});
  refused({"pg_settings"},
          {"UPDATE pg_settings SET setting = 'shadow' WHERE name = 'search_path'"});
  refused({"temporary", "TEMP"}, {"CREATE TEMP TABLE iso_t (x int)",
                                  "CREATE TEMPORARY TABLE iso_t (x int) ON COMMIT DELETE ROWS",
                                  "CREATE TEMP TABLE iso_t (x int) ON COMMIT PRESERVE ROWS"});
  refused({"temporary", "TEMP", "pg_temp"}, {"CREATE TABLE pg_temp.iso_t (x int)"});
  refused({"temporary", "TEMP"},
          {"CREATE TEMP VIEW iso_v AS SELECT 1 AS x", "CREATE TEMP SEQUENCE iso_s",
           "SELECT 1 AS x INTO TEMP iso_t", "SELECT 1 AS x INTO TEMPORARY TABLE iso_t",
           "CREATE TEMP TABLE iso_t AS SELECT 1 AS x",
           "EXPLAIN ANALYZE CREATE TEMP TABLE iso_t AS SELECT 1 AS x"});

  // COPY (TO STDOUT and FROM STDIN: the drain test, with a server of its own).
  refused({"COPY"},
          {absl::StrCat("COPY (SELECT 1) TO PROGRAM 'touch ", TouchPath(), "'"),
           absl::StrCat("COPY accounts TO '", CopyPath(), "'"),
           "COPY writes FROM PROGRAM 'echo 900002,x'", "COPY writes FROM '/etc/hostname'"});

  // DO, CALL and definitions without the ddl grant.
  refused({"DO"}, {"DO $$BEGIN PERFORM set_config('search_path', 'shadow', false); END$$",
                   "DO $$BEGIN EXECUTE 'DEALLOCATE ALL'; END$$",
                   "DO $$BEGIN PERFORM pg_advisory_lock(4711); END$$",
                   "DO $$BEGIN CREATE TEMP TABLE iso_t (x int); END$$"});
  refused({"CALL"}, {"CALL leak_search_path()", "CALL public.add_write(900003)"});
  refused({"FUNCTION"},
          {"CREATE FUNCTION iso_f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
           "CREATE OR REPLACE FUNCTION one() RETURNS int LANGUAGE sql AS 'SELECT 2'"});
  refused({"PROCEDURE"}, {"CREATE PROCEDURE iso_p() LANGUAGE sql AS 'SELECT 1'"});
  refused({"FUNCTION"}, {"ALTER FUNCTION one() SECURITY DEFINER"});
  refused({"TRIGGER"},
          {"CREATE TRIGGER iso_tr BEFORE INSERT ON writes FOR EACH ROW EXECUTE FUNCTION one()"});
  refused({"RULE"}, {"CREATE RULE iso_r AS ON INSERT TO writes DO INSTEAD NOTHING"});
  refused({"EVENT TRIGGER", "TRIGGER"},
          {"CREATE EVENT TRIGGER iso_et ON ddl_command_start EXECUTE FUNCTION one()"});
  refused({"ALTER ROLE", "ROLE"},
          {"ALTER ROLE app_read SET search_path = shadow",
           "ALTER ROLE CURRENT_USER SET default_transaction_read_only = off"});
  refused({"ALTER DATABASE", "DATABASE"}, {"ALTER DATABASE isolation SET search_path = shadow"});
  refused({"ALTER SYSTEM", "SYSTEM"}, {"ALTER SYSTEM SET work_mem = '1GB'"});

  // More than one statement in a text.
  refused({"statements", "statement"},
          {"SELECT 1; COMMIT", "SELECT 1; SET search_path = shadow",
           "COMMIT; UPDATE accounts SET balance = 0", "SELECT 1;SELECT 2"});

  // Allowed only in ExecuteTransaction (a reader's transaction is read-only
  // and its role may not lock more than ACCESS SHARE).
  const std::vector<std::string> cursor = {"DECLARE iso_c CURSOR FOR SELECT id FROM accounts"};
  add("DECLARE iso_c CURSOR FOR SELECT id FROM accounts", RefusedNaming({"DECLARE", "cursor"}), ok);
  add("DECLARE iso_c NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1",
      RefusedNaming({"DECLARE", "cursor"}), ok);
  add("FETCH 1 FROM iso_c", RefusedNaming({"FETCH", "cursor"}), ok, cursor);
  add("MOVE NEXT IN iso_c", RefusedNaming({"MOVE", "cursor"}), ok, cursor);
  add("CLOSE iso_c", RefusedNaming({"CLOSE", "cursor"}), ok, cursor);
  add("CLOSE ALL", RefusedNaming({"CLOSE", "cursor"}), ok);
  const Outcome temp_in_txn =
      Runs({Code::OK, Code::FAILED_PRECONDITION, Code::PERMISSION_DENIED}, {Code::OK});
  add("CREATE TEMP TABLE iso_t (x int) ON COMMIT DROP", RefusedNaming({"temporary", "TEMP"}),
      temp_in_txn);
  add("CREATE TEMPORARY TABLE iso_t ON COMMIT DROP AS SELECT 1 AS x",
      RefusedNaming({"temporary", "TEMP"}), temp_in_txn);
  const Outcome strong_lock =
      Runs({Code::PERMISSION_DENIED, Code::FAILED_PRECONDITION}, {Code::OK});
  add("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE", RefusedNaming({"LOCK"}), strong_lock);
  add("LOCK accounts", RefusedNaming({"LOCK"}), strong_lock);
  add("LOCK TABLE accounts IN ROW SHARE MODE NOWAIT", RefusedNaming({"LOCK"}), strong_lock);
  add("LOCK TABLE accounts IN ACCESS SHARE MODE", RefusedNaming({"LOCK"}), ok);

  // Allowed everywhere: transaction-scoped forms.
  add("SET LOCAL statement_timeout = '5s'", ok, ok);
  add("SET LOCAL search_path = shadow, public", ok, ok);
  add("SELECT set_config('statement_timeout', '5s', true)", ok, ok);
  add("SELECT pg_catalog.set_config('search_path', 'shadow', TRUE)", ok, ok);
  add("SELECT pg_advisory_xact_lock(4720)", ok, ok);
  add("SELECT pg_advisory_xact_lock_shared(4720)", ok, ok);

  // Functions, in every spelling and placement.
  Construct in_do;
  in_do.label = "DO bodies calling each function";
  in_do.alone = in_do.in_transaction = RefusedNaming({"DO"});
  for (const FunctionAttack& f : FunctionAttacks()) {
    const std::string call = f.name + f.args;
    Construct c;
    c.label = absl::StrCat("SELECT ", call, f.from);
    std::vector<std::string> names = {f.name};
    names.insert(names.end(), f.also_named.begin(), f.also_named.end());
    c.alone = c.in_transaction = RefusedNaming(names);
    c.texts = Disguises(c.label);
    for (const std::string& form : NameForms(f.name)) {
      if (form != f.name) c.texts.push_back(absl::StrCat("SELECT ", form, f.args, f.from));
    }
    for (const char* p : kPlacements) c.texts.push_back(Place(p, call, f.from));
    if (f.from.empty()) {
      for (const char* p : kFromPlacements) c.texts.push_back(Place(p, call, f.from));
    }
    for (const char* p : kDoBodies) in_do.texts.push_back(Place(p, call, f.from));
    out.push_back(std::move(c));
  }
  out.push_back(std::move(in_do));
  return out;
}

// ---------------------------------------------------------------------------
// One server for the cases that share a configuration.

// A suite whose tests share one query_server, of the configuration
// `kConfig()`, and a client of it; the server must exit 0 when the suite ends.
template <v1::QueryServiceConfig (*kConfig)()>
class SharedServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    SetUpDatabase();
    if (::testing::Test::HasFatalFailure()) return;
    absl::StatusOr<std::unique_ptr<ServiceProcess>> query = StartQuery(kConfig());
    ASSERT_TRUE(query.ok()) << query.status();
    query_ = query->release();
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = testing::Connect(query_->address());
    ASSERT_TRUE(channel.ok()) << channel.status();
    client_ = new Client(*channel);
  }
  static void TearDownTestSuite() {
    if (query_ != nullptr) {
      absl::StatusOr<int> code = testing::Terminate(*query_);
      EXPECT_TRUE(code.ok() && *code == 0)
          << (code.ok() ? absl::StrCat("exit ", *code) : code.status().ToString());
    }
    delete client_;
    delete query_;
    client_ = nullptr;
    query_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(client_, nullptr) << "the shared query_server did not start"; }

  static inline ServiceProcess* query_ = nullptr;
  static inline Client* client_ = nullptr;
};

class IsolationTest : public SharedServerTest<SharedConfig> {
 protected:
  static ::testing::AssertionResult Clean() {
    return NothingLeftBehind(*client_, {&kReader, &kWriter});
  }
};

TEST_F(IsolationTest, TheProbeSeesAFreshServerAsClean) {
  // Both pools have served a call, so the probe below covers two backends.
  EXPECT_TRUE(Clean());
  EXPECT_EQ(Query("SELECT string_agg(DISTINCT usename::text, ',' ORDER BY usename::text) FROM "
                  "pg_stat_activity "
                  "WHERE application_name LIKE 'poolside-query/%' "
                  "AND usename IN ('app_read', 'app_write')"),
            "app_read,app_write");
}

TEST_F(IsolationTest, HostileStatementsAreRefusedInEveryDisguise) {
  unlink(TouchPath().c_str());
  unlink(CopyPath().c_str());
  ChannelListener listener;
  ASSERT_EQ(listener.error(), "");
  const std::vector<Construct> constructs = HostileStatements();
  const Principal* const callers[] = {&kReader, &kWriter};
  size_t total = 0;
  for (const Construct& c : constructs) {
    struct Case {
      const std::string* text;
      Rpc rpc;
      const Principal* who;
    };
    std::vector<Case> cases;
    for (const std::string& text : c.texts) {
      for (Rpc rpc : kAllRpcs) {
        for (const Principal* who : callers) cases.push_back({&text, rpc, who});
      }
    }
    total += cases.size();
    std::vector<std::string> mismatches(cases.size());
    constexpr int kThreads = 4;
    testing::RunConcurrentCalls(
        kThreads, static_cast<int>((cases.size() + kThreads - 1) / kThreads),
        [&](int thread, int i) {
          const size_t at = static_cast<size_t>(i) * kThreads + thread;
          if (at >= cases.size()) return std::string();
          const Case& k = cases[at];
          const Answer a = client_->Run(k.rpc, *k.who, *k.text, c.before);
          const Outcome& want = k.rpc == Rpc::kTransaction ? c.in_transaction : c.alone;
          std::string why = Mismatch(want, *k.who, a);
          if (!why.empty()) {
            mismatches[at] = absl::StrCat(RpcName(k.rpc), " as ", k.who->name, ": ",
                                          absl::CEscape(*k.text), "\n      ", why);
          }
          return std::string();
        });
    std::vector<std::string> failed;
    for (std::string& m : mismatches) {
      if (!m.empty()) failed.push_back(std::move(m));
    }
    const size_t count = failed.size();
    if (failed.size() > 4) failed.resize(4);
    EXPECT_EQ(count, 0u) << c.label << ": " << count << " of " << cases.size()
                         << " calls answered wrongly, e.g.\n    "
                         << absl::StrJoin(failed, "\n    ");
    EXPECT_TRUE(Clean()) << "after " << c.label;
  }
  printf("%zu hostile calls in %zu constructs\n", total, constructs.size());
  EXPECT_GT(total, 5000u);
  EXPECT_EQ(listener.Received(), 0) << "a caller notified poolside's invalidation channel";
  EXPECT_NE(access(TouchPath().c_str(), F_OK), 0) << "COPY ... TO PROGRAM ran: " << TouchPath();
  EXPECT_NE(access(CopyPath().c_str(), F_OK), 0) << "COPY ... TO a file ran: " << CopyPath();
}

TEST_F(IsolationTest, AReadPrincipalCannotCommitAWrite) {
  // The issue's escapes from a read principal's read-only transaction, each
  // followed by the UPDATE it was meant to let through.
  const std::pair<const char*, const char*> escapes[] = {
      {";COMMIT", "COMMIT"},
      {";; COMMIT", "COMMIT"},
      {";SET TRANSACTION READ WRITE", "SET TRANSACTION"},
      {"; SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", "SESSION CHARACTERISTICS"},
      {"/* ; */ END", "END"},
      {";ROLLBACK", "ROLLBACK"},
      {";BEGIN READ WRITE", "BEGIN"},
      {";SET ROLE app_write", "SET"},
  };
  for (const auto& [escape, name] : escapes) {
    SCOPED_TRACE(escape);
    const Answer a = client_->Transaction(
        kReader, {escape, "UPDATE accounts SET balance = balance + 1 WHERE id = 1"});
    EXPECT_EQ(Mismatch(RefusedNaming({name, "COMMIT"}), kReader, a), "");
    // The same escape alone, then the UPDATE on the same pooled connection.
    const Answer alone = client_->Execute(kReader, escape);
    EXPECT_EQ(Mismatch(RefusedNaming({name, "COMMIT"}), kReader, alone), "");
    const Answer update =
        client_->Execute(kReader, "UPDATE accounts SET balance = balance + 1 WHERE id = 1");
    EXPECT_TRUE(update.code() == Code::PERMISSION_DENIED ||
                update.code() == Code::FAILED_PRECONDITION)
        << Describe(update);
    EXPECT_EQ(AccountsNow(), kAccounts);
  }
  // A writer's transaction is all or nothing: a COMMIT smuggled between its
  // INSERT and a failing statement must not commit the INSERT.
  const Answer w = client_->Transaction(
      kWriter, {"INSERT INTO writes (k, v) VALUES (910001, 'before the smuggled COMMIT')",
                ";COMMIT", "SELECT 1/0"});
  EXPECT_EQ(Mismatch(RefusedNaming({"COMMIT"}), kWriter, w), "");
  EXPECT_FALSE(RowExists(910001)) << "a failed transaction's INSERT was committed";
  EXPECT_TRUE(Clean());
}

TEST_F(IsolationTest, NoCallerRunsAnotherCallersStatement) {
  // The issue's DO block: re-prepare poolside's own statements as UPDATEs,
  // for the victim's next SELECT to run.
  const std::string reprepare =
      "DO $$DECLARE r record; BEGIN FOR r IN SELECT name FROM pg_prepared_statements LOOP "
      "EXECUTE format('DEALLOCATE %I', r.name); "
      "EXECUTE format('PREPARE %I AS UPDATE accounts SET balance = balance + 1000 RETURNING 1', "
      "r.name); END LOOP; END$$";
  for (const Principal* attacker : {&kReader, &kWriter}) {
    for (Rpc rpc : kAllRpcs) {
      const Answer a = client_->Run(rpc, *attacker, reprepare);
      EXPECT_EQ(Mismatch(RefusedNaming({"DO"}), *attacker, a), "")
          << RpcName(rpc) << " as " << attacker->name;
    }
    for (const char* sql : {"DEALLOCATE ALL", ";DISCARD ALL", "DEALLOCATE PREPARE poolside_1",
                            "PREPARE poolside_1 AS UPDATE accounts SET balance = 0"}) {
      const Answer a = client_->Execute(*attacker, sql);
      EXPECT_EQ(a.code(), Code::INVALID_ARGUMENT) << sql << ": " << Describe(a);
    }
  }
  // The victims' statements (the probe's, prepared by poolside) still run as
  // themselves, again and again.
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(Clean()) << "round " << i;
    const Answer read = client_->Execute(kWriter, "SELECT label FROM items ORDER BY id");
    EXPECT_EQ(Describe(read), "OK [real-1; real-2; real-3]");
  }
  EXPECT_EQ(AccountsNow(), kAccounts);
}

TEST_F(IsolationTest, ServerSideEffectsAreRefused) {
  ChannelListener listener;
  ASSERT_EQ(listener.error(), "");
  unlink(TouchPath().c_str());
  // Both pools hold a backend; an attack must not end either.
  EXPECT_TRUE(Clean());
  const std::string backends = PoolsideBackends();
  struct Attack {
    std::string sql;
    std::vector<std::string> names;
  };
  const Attack attacks[] = {
      {absl::StrCat("COPY (SELECT 1) TO PROGRAM 'touch ", TouchPath(), "'"), {"COPY"}},
      {"SELECT pg_read_file('/etc/passwd')", {"pg_read_file"}},
      {"SELECT * FROM pg_catalog.pg_read_binary_file('/etc/passwd')", {"pg_read_binary_file"}},
      {"SELECT lo_import('/etc/passwd')", {"lo_import"}},
      {"SELECT lo_create(0)", {"lo_create"}},
      {"SELECT \"pg_catalog\".\"lo_from_bytea\"(0, 'x')", {"lo_from_bytea"}},
      {"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
       "WHERE application_name LIKE 'poolside-query/%' AND pid <> pg_backend_pid()",
       {"pg_terminate_backend"}},
      {"SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
       "WHERE application_name LIKE 'poolside-query/%'",
       {"pg_cancel_backend"}},
      {"SELECT pg_notify('poolside_invalidate', 'accounts')", {"pg_notify"}},
      {"NOTIFY poolside_invalidate, 'accounts'", {"NOTIFY"}},
      {"SELECT pg_advisory_lock(4711)", {"pg_advisory_lock"}},
      {"CREATE TEMP TABLE iso_t (x int)", {"temporary", "TEMP"}},
      {"SELECT ts_rewrite('a'::tsquery, "
       "'SELECT set_config(''search_path'', ''shadow'', false)::tsquery, ''b''::tsquery')",
       {"ts_rewrite"}},
      {";LISTEN poolside_invalidate", {"LISTEN"}},
      {";DECLARE iso_c CURSOR WITH HOLD FOR SELECT 1", {"DECLARE"}},
      {";SET iso.flag = 'intruder'", {"SET"}},
  };
  for (const Attack& attack : attacks) {
    for (const Principal* who : {&kReader, &kWriter}) {
      for (Rpc rpc : kAllRpcs) {
        const Answer a = client_->Run(rpc, *who, attack.sql);
        EXPECT_EQ(Mismatch(RefusedNaming(attack.names), *who, a), "")
            << RpcName(rpc) << " as " << who->name << ": " << attack.sql;
      }
    }
  }
  EXPECT_NE(access(TouchPath().c_str(), F_OK), 0) << "COPY ... TO PROGRAM ran";
  EXPECT_EQ(listener.Received(), 0) << "a caller notified poolside's invalidation channel";
  EXPECT_EQ(PoolsideBackends(), backends) << "poolside's backends were ended";
  EXPECT_TRUE(Clean());
}

TEST_F(IsolationTest, AReadersLockNeverBlocksAWritersRead) {
  // If the LOCK were granted, the transaction would hold it through the sleep.
  std::future<Answer> locker = std::async(std::launch::async, [] {
    return client_->Transaction(
        kReader, {"LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE", "SELECT pg_sleep(5)"},
        absl::Seconds(8));
  });
  testing::WaitFor(
      [&] {
        return locker.wait_for(std::chrono::seconds(0)) == std::future_status::ready ||
               Query(
                   "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                   "WHERE a.application_name LIKE 'poolside-query/%' AND l.granted "
                   "AND l.relation = 'accounts'::regclass "
                   "AND l.mode = 'AccessExclusiveLock'") != "0";
      },
      absl::Seconds(8));
  const Answer read = client_->Execute(kWriter, "SELECT count(*) FROM accounts", absl::Seconds(2));
  EXPECT_EQ(Describe(read), "OK [3]") << "the writer's read waited for the reader's lock";
  const Answer locked = locker.get();
  EXPECT_TRUE(locked.code() == Code::PERMISSION_DENIED ||
              locked.code() == Code::FAILED_PRECONDITION)
      << Describe(locked);
  EXPECT_TRUE(Clean());
}

TEST_F(IsolationTest, SearchPathChangesNeverReachPipelinedNeighbours) {
  // kReader's set_config(..., true) and SET LOCAL are allowed, and run on the
  // same pooled connection as kNeighbour's reads, pipelined with them: none of
  // those reads may see shadow.items.
  constexpr int kReaderThreads = 12, kAttackerThreads = 4, kRounds = 20;
  const char* const attacks[] = {
      "SELECT set_config('search_path', 'shadow', true) AS sp",
      "SELECT set_config('search_path', 'shadow, public', true), count(*) FROM items",
      "SET LOCAL search_path = shadow",
      "SELECT label FROM items WHERE set_config('search_path', 'shadow', true) <> ''",
  };
  std::atomic<int> shadow_reads{0}, attacks_run{0};
  const testing::ConcurrentCalls r = testing::RunConcurrentCalls(
      kReaderThreads + kAttackerThreads, kRounds, [&](int thread, int i) -> std::string {
        if (thread >= kReaderThreads) {
          const char* sql = attacks[(thread + i) % 4];
          const Answer a = client_->Execute(kReader, sql, absl::Seconds(20));
          if (!a.status.ok()) return absl::StrCat("attack ", sql, ": ", Describe(a));
          attacks_run.fetch_add(1);
          return "";
        }
        const Answer a = client_->Execute(kNeighbour,
                                          i % 2 == 0 ? "SELECT label FROM items ORDER BY id"
                                                     : "SELECT label FROM items WHERE id = 2",
                                          absl::Seconds(20));
        const std::string got = Describe(a);
        if (absl::StrContains(got, "shadow")) shadow_reads.fetch_add(1);
        const std::string want = i % 2 == 0 ? "OK [real-1; real-2; real-3]" : "OK [real-2]";
        return got == want ? "" : absl::StrCat("read: ", got);
      });
  EXPECT_EQ(shadow_reads.load(), 0) << "of " << kReaderThreads * kRounds << " reads";
  EXPECT_EQ(r.failures, 0) << "first: " << r.first_failure;
  EXPECT_EQ(attacks_run.load(), kAttackerThreads * kRounds);
  EXPECT_TRUE(NothingLeftBehind(*client_, {&kReader, &kNeighbour, &kWriter}));
}

TEST_F(IsolationTest, TransactionScopedFormsWorkAndEndWithTheirTransaction) {
  const std::string real = "OK [real-1; real-2; real-3]";
  const std::string shadow = "OK [shadow-1; shadow-2; shadow-3]";
  for (const Principal* who : {&kReader, &kWriter}) {
    SCOPED_TRACE(who->name);
    // SET LOCAL and set_config(..., true) change the transaction they run in.
    Answer a = client_->Transaction(
        *who, {"SET LOCAL statement_timeout = '5s'", "SET LOCAL search_path = shadow, public",
               "SELECT label FROM items ORDER BY id"});
    EXPECT_EQ(Describe(a), shadow);
    EXPECT_EQ(Describe(client_->Execute(*who, "SELECT label FROM items ORDER BY id")), real);
    a = client_->Transaction(
        *who, {"SELECT set_config('search_path', 'shadow', true)",
               "SELECT set_config('iso.flag', 'on', true)", "SELECT current_setting('iso.flag')",
               "SELECT label FROM items ORDER BY id"});
    EXPECT_EQ(a.results.size() == 4 ? a.results[2] : Rows(), Rows{std::vector<std::string>{"on"}})
        << Describe(a);
    EXPECT_EQ(Describe(a), shadow);
    a = client_->Execute(*who, "SELECT set_config('search_path', 'shadow', true) AS sp");
    EXPECT_EQ(Describe(a), "OK [shadow]");
    a = client_->Stream(*who, "SELECT pg_catalog.set_config('iso.flag', 'on', TRUE)");
    EXPECT_EQ(Describe(a), "OK [on]");
    EXPECT_EQ(Describe(client_->Execute(*who, "SELECT label FROM items ORDER BY id")), real);
    // Transaction-scoped advisory locks.
    EXPECT_EQ(Describe(client_->Execute(*who, "SELECT 1 FROM pg_advisory_xact_lock(4721)")),
              "OK [1]");
    a = client_->Transaction(
        *who, {"SELECT pg_advisory_xact_lock(4722)", "SELECT pg_advisory_xact_lock_shared(4721)"});
    EXPECT_TRUE(a.status.ok()) << Describe(a);
    // Cursors inside a transaction.
    a = client_->Transaction(
        *who, {"DECLARE iso_c CURSOR FOR SELECT id FROM accounts ORDER BY id", "FETCH 1 FROM iso_c",
               "MOVE 1 IN iso_c", "FETCH 1 FROM iso_c", "CLOSE iso_c"});
    EXPECT_EQ(a.results.size() == 5 ? a.results[1] : Rows(), Rows{std::vector<std::string>{"1"}})
        << Describe(a);
    EXPECT_EQ(a.results.size() == 5 ? a.results[3] : Rows(), Rows{std::vector<std::string>{"3"}})
        << Describe(a);
    // The weakest lock, which a reader's role may take.
    a = client_->Transaction(
        *who, {"LOCK TABLE accounts IN ACCESS SHARE MODE", "SELECT count(*) FROM accounts"});
    EXPECT_EQ(Describe(a), "OK [3]");
    // Keywords inside literals, identifiers and comments are just text.
    const std::pair<std::string, std::string> literals[] = {
        {"SELECT 'COMMIT; DROP TABLE accounts' AS s", "COMMIT; DROP TABLE accounts"},
        {"SELECT ';BEGIN;' AS s", ";BEGIN;"},
        {R"(SELECT E'\';COMMIT;--' AS s)", "';COMMIT;--"},
        {"SELECT $$COMMIT; SET ROLE postgres$$ AS s", "COMMIT; SET ROLE postgres"},
        {"SELECT $q$ pg_read_file('/etc/passwd') $q$ AS s", " pg_read_file('/etc/passwd') "},
        {"SELECT 'set_config(''search_path'', ''shadow'', false)' AS s",
         "set_config('search_path', 'shadow', false)"},
        {"SELECT $a$DO $$ BEGIN END $$$a$ AS s", "DO $$ BEGIN END $$"},
        {"SELECT 'LISTEN poolside_invalidate' AS s", "LISTEN poolside_invalidate"},
        {"SELECT 1 AS \"COMMIT\"", "1"},
        {"SELECT 'x' AS s -- ; COMMIT", "x"},
        {"SELECT /* COPY x TO PROGRAM 'y'; */ 'y' AS s", "y"},
        {"SELECT length('DISCARD ALL') AS s", "11"},
    };
    for (const auto& [sql, want] : literals) {
      for (Rpc rpc : kAllRpcs) {
        const Answer got = client_->Run(rpc, *who, sql);
        EXPECT_EQ(Describe(got), absl::StrCat("OK [", want, "]")) << RpcName(rpc) << ": " << sql;
      }
    }
  }
  // A temporary table that ends with its transaction, twice under one name.
  for (int i = 0; i < 2; ++i) {
    const Answer a = client_->Transaction(
        kWriter, {"CREATE TEMP TABLE iso_scratch (x int) ON COMMIT DROP",
                  "INSERT INTO iso_scratch VALUES (1), (2)", "SELECT count(*) FROM iso_scratch"});
    EXPECT_EQ(Describe(a), "OK [2]");
  }
  EXPECT_TRUE(Clean());
}

TEST_F(IsolationTest, EveryAcknowledgedWriteSurvivesHostileNeighbours) {
  constexpr int kInserters = 12, kAttackers = 6, kRounds = 20;
  constexpr int64_t kFirstKey = 100000;     // one single-row INSERT each
  constexpr int64_t kDoomedFirst = 500000;  // written only by transactions meant to fail
  struct Hostile {
    Rpc rpc;
    const Principal* who;
    std::vector<std::string> statements;  // "{key}": a doomed key
    absl::Duration timeout = absl::Seconds(20);
  };
  const std::string doomed = "INSERT INTO writes (k, v) VALUES ({key}, 'doomed')";
  const Hostile hostile[] = {
      {Rpc::kExecute, &kWriter, {"BEGIN"}},
      {Rpc::kExecute, &kWriter, {";COMMIT"}},
      {Rpc::kExecute, &kWriter, {"ROLLBACK"}},
      {Rpc::kExecute, &kWriter, {"SELEC 1"}},
      {Rpc::kExecute, &kWriter, {"SELECT 1/0"}},
      {Rpc::kExecute, &kWriter, {"INSERT INTO writes (k, v) VALUES (99, 'unique violation')"}},
      {Rpc::kExecute, &kWriter, {"INSERT INTO writes (k, v) VALUES (-1, 'check violation')"}},
      {Rpc::kExecute, &kWriter, {"INSERT INTO writes (k, v) VALUES (900006, NULL)"}},
      {Rpc::kExecute, &kWriter, {"SELECT pg_sleep(1)"}, absl::Milliseconds(5)},
      {Rpc::kExecute, &kWriter, {"UPDATE writes SET v = v WHERE k = 99"}, absl::Milliseconds(2)},
      {Rpc::kStream, &kWriter, {"SELECT 1/0"}},
      {Rpc::kStream, &kWriter, {"BEGIN"}},
      {Rpc::kExecute, &kWriter, {"DISCARD ALL"}},
      {Rpc::kExecute, &kWriter, {"DEALLOCATE ALL"}},
      {Rpc::kExecute, &kWriter, {"SET search_path = shadow"}},
      {Rpc::kExecute, &kWriter, {"SELECT pg_advisory_lock(4711)"}},
      {Rpc::kExecute, &kReader, {"INSERT INTO writes (k, v) VALUES (900005, 'read-only')"}},
      {Rpc::kExecute, &kReader, {";COMMIT"}},
      {Rpc::kExecute, &kReader, {"BEGIN"}},
      {Rpc::kTransaction, &kWriter, {doomed, "SELECT 1/0"}},
      {Rpc::kTransaction, &kWriter, {doomed, "COMMIT"}},
      {Rpc::kTransaction, &kWriter, {doomed, ";COMMIT", "SELECT 1/0"}},
      {Rpc::kTransaction, &kWriter, {doomed, "INSERT INTO writes (k, v) VALUES (99, 'dup')"}},
      {Rpc::kTransaction, &kWriter, {doomed, "SELECT pg_sleep(1)"}, absl::Milliseconds(30)},
  };
  constexpr size_t kHostileKinds = sizeof(hostile) / sizeof(hostile[0]);
  std::vector<Code> insert_codes(kInserters * kRounds, Code::UNKNOWN);
  std::vector<bool> short_deadline(kInserters * kRounds, false);
  std::vector<Code> doomed_codes(kAttackers * kRounds, Code::OK);
  std::vector<bool> doomed_used(kAttackers * kRounds, false);
  testing::RunConcurrentCalls(kInserters + kAttackers, kRounds, [&](int thread, int i) {
    if (thread < kInserters) {
      const int n = thread * kRounds + i;
      const int64_t key = kFirstKey + n;
      // Every eighth caller gives up early: its outcome is unknown to it.
      short_deadline[n] = n % 8 == 7;
      const absl::Duration timeout = short_deadline[n] ? absl::Milliseconds(3) : absl::Seconds(20);
      v1::Value k;
      k.set_int64_value(key);
      const Answer a =
          n % 2 == 0
              ? client_->Execute(kWriter, "INSERT INTO writes (k, v) VALUES ($1, 'acknowledged')",
                                 timeout, {k})
              : client_->Execute(kWriter,
                                 absl::StrCat("INSERT INTO writes (k, v) VALUES (", key, ", 'ok')"),
                                 timeout);
      insert_codes[n] = a.code();
      return std::string();
    }
    const int n = (thread - kInserters) * kRounds + i;
    const Hostile& h = hostile[n % kHostileKinds];
    std::vector<std::string> statements;
    for (const std::string& s : h.statements) {
      statements.push_back(absl::StrReplaceAll(s, {{"{key}", absl::StrCat(kDoomedFirst + n)}}));
      if (s != statements.back()) doomed_used[n] = true;
    }
    Answer a;
    if (h.rpc == Rpc::kTransaction) {
      a = client_->Transaction(*h.who, statements, h.timeout);
    } else if (h.rpc == Rpc::kStream) {
      a = client_->Stream(*h.who, statements[0], h.timeout);
    } else {
      a = client_->Execute(*h.who, statements[0], h.timeout);
    }
    doomed_codes[n] = a.code();
    return std::string();
  });

  std::set<int64_t> present;
  for (absl::string_view k :
       absl::StrSplit(Query("SELECT string_agg(k::text, ',') FROM writes WHERE k >= 100000"), ',',
                      absl::SkipEmpty())) {
    int64_t key = 0;
    if (absl::SimpleAtoi(k, &key)) present.insert(key);
  }
  auto outcome_unknown = [](Code c) {
    return c == Code::DEADLINE_EXCEEDED || c == Code::UNAVAILABLE || c == Code::UNKNOWN;
  };
  std::vector<std::string> lost, denied_but_present, failed;
  int acknowledged = 0;
  for (int n = 0; n < kInserters * kRounds; ++n) {
    const int64_t key = kFirstKey + n;
    const bool exists = present.count(key) > 0;
    if (insert_codes[n] == Code::OK) ++acknowledged;
    if (insert_codes[n] == Code::OK && !exists) lost.push_back(absl::StrCat(key));
    if (exists && insert_codes[n] != Code::OK && !outcome_unknown(insert_codes[n])) {
      denied_but_present.push_back(absl::StrCat(key, " (", CodeName(insert_codes[n]), ")"));
    }
    if (!short_deadline[n] && insert_codes[n] != Code::OK) {
      failed.push_back(absl::StrCat(key, " (", CodeName(insert_codes[n]), ")"));
    }
  }
  for (int n = 0; n < kAttackers * kRounds; ++n) {
    const int64_t key = kDoomedFirst + n;
    if (!doomed_used[n]) continue;
    const bool exists = present.count(key) > 0;
    if (doomed_codes[n] == Code::OK && !exists) lost.push_back(absl::StrCat(key));
    if (exists && doomed_codes[n] != Code::OK && !outcome_unknown(doomed_codes[n])) {
      denied_but_present.push_back(absl::StrCat(key, " (", CodeName(doomed_codes[n]), ")"));
    }
  }
  EXPECT_TRUE(lost.empty()) << "acknowledged, not there: " << absl::StrJoin(lost, ", ");
  EXPECT_TRUE(denied_but_present.empty())
      << "answered with a failure, but written: " << absl::StrJoin(denied_but_present, ", ");
  EXPECT_TRUE(failed.empty()) << "single-row INSERTs with distinct keys and time to spare that "
                                 "failed next to hostile callers: "
                              << absl::StrJoin(failed, ", ");
  EXPECT_GE(acknowledged, kInserters * kRounds * 7 / 8);
  printf("%d of %d INSERTs acknowledged, %zu rows present\n", acknowledged, kInserters * kRounds,
         present.size());
  EXPECT_TRUE(Clean());
}

TEST_F(IsolationTest, DatabaseRolesBoundEachPrincipal) {
  // Nobody here is privileged: what PostgreSQL would refuse them, it does.
  const std::string privileged =
      "SELECT (rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls "
      "OR pg_has_role(current_user, 'pg_execute_server_program', 'MEMBER') "
      "OR pg_has_role(current_user, 'pg_read_server_files', 'MEMBER') "
      "OR pg_has_role(current_user, 'pg_write_server_files', 'MEMBER') "
      "OR pg_has_role(current_user, 'pg_signal_backend', 'MEMBER'))::text "
      "FROM pg_roles WHERE rolname = current_user";
  for (const Principal* who : {&kReader, &kWriter}) {
    SCOPED_TRACE(who->name);
    EXPECT_EQ(Describe(client_->Execute(*who, "SELECT current_user::text")),
              absl::StrCat("OK [", who->db_role, "]"));
    EXPECT_EQ(Describe(client_->Execute(*who, privileged)), "OK [false]");
    // A table granted to neither role.
    for (Rpc rpc : kAllRpcs) {
      const Answer a = client_->Run(rpc, *who, "SELECT note FROM secret");
      EXPECT_EQ(a.code(), Code::PERMISSION_DENIED) << RpcName(rpc) << ": " << Describe(a);
      EXPECT_TRUE(absl::StrContains(a.status.error_message(), "42501")) << Describe(a);
    }
    // Writes to catalogs (large objects, roles) and objects it may not make.
    for (const char* sql :
         {"INSERT INTO pg_largeobject_metadata (oid, lomowner) VALUES (424242, 10)",
          "DELETE FROM pg_largeobject", "CREATE TABLE iso_made (x int)",
          "GRANT app_owner TO app_write", "ALTER ROLE app_write SUPERUSER", "TRUNCATE accounts"}) {
      // PostgreSQL refuses these; poolside may refuse the DDL among them first.
      const Answer a = client_->Execute(*who, sql);
      const bool refused_first = a.code() == Code::INVALID_ARGUMENT &&
                                 !absl::StrContains(a.status.error_message(), "SQLSTATE");
      EXPECT_TRUE(a.code() == Code::PERMISSION_DENIED || a.code() == Code::FAILED_PRECONDITION ||
                  refused_first)
          << sql << ": " << Describe(a);
    }
  }
  // The reader writes nothing, by any call.
  const char* const writes[] = {
      "INSERT INTO accounts VALUES (10, 1000)",
      "UPDATE accounts SET balance = 0",
      "DELETE FROM accounts",
      "WITH d AS (DELETE FROM accounts RETURNING id) SELECT count(*) FROM d",
      "SELECT id FROM accounts FOR UPDATE",
      "INSERT INTO writes (k, v) VALUES (900004, 'by a reader')",
  };
  for (const char* sql : writes) {
    for (Rpc rpc : kAllRpcs) {
      const Answer a = client_->Run(rpc, kReader, sql);
      EXPECT_TRUE(a.code() == Code::PERMISSION_DENIED || a.code() == Code::FAILED_PRECONDITION)
          << RpcName(rpc) << ": " << sql << ": " << Describe(a);
    }
  }
  // The reader may lock only in ACCESS SHARE mode.
  for (const char* mode : {"ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE",
                           "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"}) {
    const Answer a = client_->Transaction(
        kReader, {absl::StrCat("LOCK TABLE accounts IN ", mode, " MODE NOWAIT"), "SELECT 1"});
    EXPECT_TRUE(a.code() == Code::PERMISSION_DENIED || a.code() == Code::FAILED_PRECONDITION)
        << mode << ": " << Describe(a);
  }
  // Nor does it see the writer's statements.
  ASSERT_TRUE(client_->Execute(kWriter, "SELECT 'iso marker' AS m").status.ok());
  EXPECT_EQ(
      Describe(client_->Execute(
          kReader,
          "SELECT (count(*) > 0 AND count(*) FILTER (WHERE query <> '<insufficient privilege>') "
          "= 0)::text FROM pg_stat_activity WHERE usename = 'app_write'")),
      "OK [true]");
  EXPECT_EQ(Query("SELECT rolsuper::text FROM pg_roles WHERE rolname = 'app_write'"), "false");
  EXPECT_TRUE(Clean());
}

TEST_F(IsolationTest, StatementStatisticsHoldNoLiterals) {
  // Each marker literal in a statement of its own shape (texts that differ
  // only in literals, aliases and lists of constants share one entry, shown as
  // the first seen): statement i passes its value through function i, named
  // as no other statement here names it.
  struct Marked {
    Rpc rpc;
    const char* select;  // "<expression> AS <alias>" or a whole statement
    const char* marker;
  };
  const char* const functions[] = {
      "upper",          "lower",       "md5",          "reverse",       "btrim",
      "initcap",        "ltrim",       "rtrim",        "quote_literal", "quote_ident",
      "quote_nullable", "char_length", "octet_length", "bit_length",    "ascii"};
  const std::vector<Marked> marked = {
      {Rpc::kExecute, "'mkPlainQuote7731' AS iso_stats_plain", "mkPlainQuote7731"},
      {Rpc::kExecute, "E'mkEscape8842\\n' AS iso_stats_escape", "mkEscape8842"},
      {Rpc::kExecute, "$$mkDollar9953$$ AS iso_stats_dollar", "mkDollar9953"},
      {Rpc::kExecute, "$tag$mkDollarTag1064$tag$ AS iso_stats_tagged", "mkDollarTag1064"},
      {Rpc::kExecute, "8675309123 AS iso_stats_int", "8675309123"},
      {Rpc::kExecute, "-31337.4242 AS iso_stats_numeric", "31337"},
      {Rpc::kExecute, "B'1011011101101' AS iso_stats_bits", "1011011101101"},
      {Rpc::kExecute, "X'DEADBEEF42' AS iso_stats_hex", "DEADBEEF42"},
      {Rpc::kExecute, "U&'mkUnicode\\0041' AS iso_stats_unicode", "mkUnicode"},
      {Rpc::kExecute, "'4815162342 seconds'::interval AS iso_stats_interval", "4815162342"},
      {Rpc::kExecute, "(SELECT count(*) FROM accounts WHERE id IN (73917, 73923)) AS iso_stats_in",
       "73917"},
      {Rpc::kExecute,
       "(SELECT max(id) FROM (SELECT id FROM accounts LIMIT 6021023) AS l) AS iso_stats_limit",
       "6021023"},
      {Rpc::kStream, "$$mkStream3310$$ AS iso_stats_stream", "mkStream3310"},
      {Rpc::kTransaction, "'mkTransaction4410' AS iso_stats_txn", "mkTransaction4410"},
  };
  std::vector<std::string> aliases;
  ASSERT_LE(marked.size(), sizeof(functions) / sizeof(functions[0]));
  for (size_t i = 0; i < marked.size(); ++i) {
    const absl::string_view select = marked[i].select;
    const size_t as = select.rfind(" AS ");
    const std::string sql = absl::StrCat("SELECT pg_catalog.", functions[i], "((",
                                         select.substr(0, as), ")::text)", select.substr(as));
    const Answer a = client_->Run(marked[i].rpc, kWriter, sql);
    EXPECT_TRUE(a.status.ok()) << sql << ": " << Describe(a);
    aliases.push_back(
        std::string(absl::string_view(marked[i].select)
                        .substr(absl::string_view(marked[i].select).find("iso_stats_"))));
  }
  // Failed and refused statements, if counted at all, hold none either.
  const std::vector<Marked> unsuccessful = {
      {Rpc::kExecute, "SELECT 1/0 AS iso_stats_error WHERE 'mkFailing5521' <> ''", "mkFailing5521"},
      {Rpc::kExecute, "SELECT set_config('search_path', 'mkRefused6631', false)", "mkRefused6631"},
      {Rpc::kExecute, "SELECT 'mkNoSuchColumn2291' AS x FROM accounts WHERE nope = 1",
       "mkNoSuchColumn2291"},
  };
  for (const Marked& m : unsuccessful) {
    EXPECT_FALSE(client_->Run(m.rpc, kWriter, m.select).status.ok()) << m.select;
  }

  v1::GetStatementStatsResponse stats;
  grpc::Status s = client_->StatementStats(&stats);
  ASSERT_TRUE(s.ok()) << s.error_message();
  std::vector<std::string> statements;
  for (const v1::StatementStats& st : stats.statements()) statements.push_back(st.statement());
  const std::string all = absl::StrJoin(statements, "\n");
  for (const std::string& alias : aliases) {
    EXPECT_TRUE(std::any_of(statements.begin(), statements.end(),
                            [&](const std::string& st) { return NamesWord(st, alias); }))
        << "no statistics for " << alias << " in:\n"
        << all;
  }
  for (const auto* list : {&marked, &unsuccessful}) {
    for (const Marked& m : *list) {
      EXPECT_FALSE(absl::StrContains(absl::AsciiStrToLower(all), absl::AsciiStrToLower(m.marker)))
          << "a literal in the statistics:\n"
          << all;
    }
  }
}

// ---------------------------------------------------------------------------
// The ddl grant, on a server of its own (the extra principal).

v1::QueryServiceConfig DdlConfig() {
  v1::QueryServiceConfig c = BaseConfig();
  AddPrincipal(&c, kReader, {"read", "sql"});
  AddPrincipal(&c, kWriter, {"read", "write", "sql"});
  AddPrincipal(&c, kDdl, {"read", "write", "sql", "ddl"});
  return c;
}

using DdlGrantTest = SharedServerTest<DdlConfig>;

TEST_F(DdlGrantTest, DoAndCallNeedTheGrantAndStayWithinTheRole) {
  auto insert_in_do = [](int64_t key) {
    return absl::StrCat("DO $$BEGIN INSERT INTO writes (k, v) VALUES (", key,
                        ", 'from DO'); END$$");
  };
  // With the grant: DO and CALL run, as app_write.
  Answer a = client_->Execute(kDdl, insert_in_do(930001));
  EXPECT_TRUE(a.status.ok()) << Describe(a);
  EXPECT_TRUE(RowExists(930001));
  a = client_->Transaction(kDdl, {insert_in_do(930002), "SELECT 1"});
  EXPECT_TRUE(a.status.ok()) << Describe(a);
  EXPECT_TRUE(RowExists(930002));
  a = client_->Execute(kDdl, "CALL add_write(930003)");
  EXPECT_TRUE(a.status.ok()) << Describe(a);
  EXPECT_TRUE(RowExists(930003));
  // ... and no further than the role may.
  a = client_->Execute(kDdl, "DO $$BEGIN CREATE TABLE iso_by_ddl (x int); END$$");
  EXPECT_EQ(a.code(), Code::PERMISSION_DENIED) << Describe(a);
  a = client_->Execute(kDdl, "CREATE FUNCTION iso_by_ddl() RETURNS int LANGUAGE sql AS 'SELECT 1'");
  EXPECT_EQ(a.code(), Code::PERMISSION_DENIED) << Describe(a);
  a = client_->Execute(kDdl, "DO $$BEGIN UPDATE secret SET note = 'changed'; END$$");
  EXPECT_EQ(a.code(), Code::PERMISSION_DENIED) << Describe(a);
  EXPECT_EQ(Query("SELECT to_regclass('iso_by_ddl') IS NULL AND to_regproc('iso_by_ddl') IS NULL"),
            "t");
  EXPECT_EQ(Query("SELECT note FROM secret"), "granted to nobody");

  // Without it: refused, naming DO or CALL, and nothing ran.
  int64_t key = 930100;
  for (const Principal* who : {&kWriter, &kReader}) {
    for (Rpc rpc : kAllRpcs) {
      SCOPED_TRACE(absl::StrCat(RpcName(rpc), " as ", who->name));
      a = client_->Run(rpc, *who, insert_in_do(++key));
      EXPECT_EQ(Mismatch(RefusedNaming({"DO"}), *who, a), "");
      EXPECT_FALSE(RowExists(key));
      a = client_->Run(rpc, *who, absl::StrCat("CALL add_write(", ++key, ")"));
      EXPECT_EQ(Mismatch(RefusedNaming({"CALL"}), *who, a), "");
      EXPECT_FALSE(RowExists(key));
    }
  }
  EXPECT_TRUE(NothingLeftBehind(*client_, {&kReader, &kWriter, &kDdl}));
}

// ---------------------------------------------------------------------------
// Startup with privileged or unknown roles.

struct StartOutcome {
  bool started = false;
  int exit_code = 0;
  std::string log;
  std::string status;
};

// Starts query_server expecting it to refuse; one that starts is stopped.
StartOutcome StartExpectingRefusal(v1::QueryServiceConfig c) {
  const std::string stem = testing::ServeOnLoopback(c.mutable_server(), "query_server");
  absl::StatusOr<std::unique_ptr<ServiceProcess>> p = testing::StartConfigured(
      "services/query/query_server", c, stem + ".port", stem, {}, absl::Seconds(20));
  StartOutcome out;
  if (p.ok()) {
    out.started = true;
    testing::Terminate(**p).IgnoreError();
    return out;
  }
  out.status = p.status().ToString();
  out.exit_code = -1000;
  const size_t at = out.status.find("exited with code ");
  if (p.status().code() == absl::StatusCode::kFailedPrecondition && at != std::string::npos) {
    absl::string_view rest = absl::string_view(out.status).substr(at + 17);
    absl::SimpleAtoi(rest.substr(0, rest.find(' ')), &out.exit_code);
  }
  out.log = ReadFile(stem + ".log").value_or("");
  return out;
}

// The log's lines that contain every one of `words` (any case).
std::vector<std::string> LinesNaming(const std::string& log, std::vector<std::string> words) {
  std::vector<std::string> found;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (std::all_of(words.begin(), words.end(),
                    [&](const std::string& w) { return NamesWord(line, w); })) {
      found.emplace_back(line);
    }
  }
  return found;
}

// It exited non-zero (not stopped by a timeout) and a line of its log names
// all of `words`.
::testing::AssertionResult RefusedToStart(const StartOutcome& out, std::vector<std::string> words) {
  if (out.started) return ::testing::AssertionFailure() << "it started and served";
  if (out.exit_code == 0 || out.exit_code == -1000) {
    return ::testing::AssertionFailure() << "it did not exit non-zero: " << out.status;
  }
  if (LinesNaming(out.log, words).empty()) {
    return ::testing::AssertionFailure()
           << "no line of its log names all of " << absl::StrJoin(words, ", ") << ":\n"
           << out.log;
  }
  return ::testing::AssertionSuccess();
}

v1::QueryServiceConfig PrivilegedConfig(const std::string& dsn_user) {
  v1::QueryServiceConfig c;
  v1::DatabaseConfig* db =
      AddDatabase(&c, "privileged_db", testing::DsnAs(SharedPostgres(), kDb, dsn_user));
  db->mutable_pool()->set_max_size(1);
  db->set_allow_privileged_role(false);
  c.mutable_auth()->set_disabled(true);
  return c;
}

TEST(IsolationStartupTest, APrivilegedRoleIsRefusedUnlessAllowed) {
  ASSERT_NO_FATAL_FAILURE(SetUpDatabase());
  // The superuser as the DSN's own user.
  EXPECT_TRUE(RefusedToStart(StartExpectingRefusal(PrivilegedConfig("postgres")),
                             {"privileged_db", "postgres", "superuser"}));
  // A role (not the DSN's user) that may read the server's files.
  v1::QueryServiceConfig files = PrivilegedConfig(testing::kAppOwner);
  v1::DatabaseRole* role = files.mutable_databases(0)->add_roles();
  role->set_name("files");
  role->set_user("app_reads_files");
  EXPECT_TRUE(RefusedToStart(StartExpectingRefusal(files),
                             {"privileged_db", "app_reads_files", "pg_read_server_files"}));

  // With the opt-in it serves, as the superuser, and says so in its log.
  v1::QueryServiceConfig allowed = PrivilegedConfig("postgres");
  allowed.mutable_databases(0)->set_allow_privileged_role(true);
  absl::StatusOr<std::unique_ptr<ServiceProcess>> server = StartQuery(allowed);
  ASSERT_TRUE(server.ok()) << server.status();
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = testing::Connect((*server)->address());
  ASSERT_TRUE(channel.ok());
  auto stub = v1::QueryService::NewStub(*channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
  v1::ExecuteRequest req;
  req.set_database("privileged_db");
  req.set_sql("SELECT current_user::text");
  v1::ExecuteResponse resp;
  grpc::Status s = stub->Execute(&ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(resp.result().rows_size(), 1);
  EXPECT_EQ(AsText(resp.result().rows(0).values(0)), "postgres");
  EXPECT_EQ(testing::Terminate(**server).value_or(-1), 0);
  EXPECT_TRUE(absl::StrContains(absl::AsciiStrToLower(ReadFile((*server)->log_path()).value_or("")),
                                "privileged"))
      << "no warning in " << (*server)->log_path();
}

TEST(IsolationStartupTest, APrincipalNamingAnUnconfiguredRoleIsRefused) {
  ASSERT_NO_FATAL_FAILURE(SetUpDatabase());
  v1::QueryServiceConfig c = BaseConfig();
  AddPrincipal(&c, kWriter, {"read", "write", "sql"});
  c.mutable_auth()->mutable_principals(0)->set_database_role("no_such_role");
  EXPECT_TRUE(RefusedToStart(StartExpectingRefusal(c), {"no_such_role"}));
}

// ---------------------------------------------------------------------------
// Servers of their own: the deadline cap, and COPY then SIGTERM.

struct OwnServer {
  std::unique_ptr<ServiceProcess> process;
  std::unique_ptr<Client> client;
};

absl::StatusOr<OwnServer> StartOwnServer(v1::QueryServiceConfig c) {
  absl::StatusOr<std::unique_ptr<ServiceProcess>> process = StartQuery(std::move(c));
  if (!process.ok()) return process.status();
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = testing::Connect((*process)->address());
  if (!channel.ok()) return channel.status();
  OwnServer s;
  s.process = *std::move(process);
  s.client = std::make_unique<Client>(*channel);
  return s;
}

TEST(IsolationDeadlineTest, ACallersDeadlineIsCutToMaxTimeout) {
  ASSERT_NO_FATAL_FAILURE(SetUpDatabase());
  v1::QueryServiceConfig c = BaseConfig();
  AddPrincipal(&c, kReader, {"read", "sql"});
  AddPrincipal(&c, kWriter, {"read", "write", "sql"});
  c.mutable_limits()->set_max_timeout_ms(500);
  c.mutable_limits()->set_default_timeout_ms(500);
  absl::StatusOr<OwnServer> server = StartOwnServer(c);
  ASSERT_TRUE(server.ok()) << server.status();
  Client& client = *server->client;
  // A 60 s deadline is cut to 500 ms: the 2 s sleep never finishes. A SET
  // LOCAL statement_timeout does not lift the cut.
  const std::string sleep = "SELECT pg_sleep(2)";
  const std::pair<const Principal*, Answer> answers[] = {
      {&kWriter, client.Execute(kWriter, sleep, absl::Seconds(60))},
      {&kWriter, client.Stream(kWriter, sleep, absl::Seconds(60))},
      {&kWriter, client.Transaction(kWriter, {sleep}, absl::Seconds(60))},
      {&kWriter, client.Transaction(kWriter, {"SET LOCAL statement_timeout = '10min'", sleep},
                                    absl::Seconds(60))},
      {&kReader, client.Execute(kReader, sleep, absl::Seconds(60))},
  };
  for (const auto& [who, a] : answers) {
    EXPECT_EQ(a.code(), Code::DEADLINE_EXCEEDED) << who->name << ": " << Describe(a);
  }
  EXPECT_TRUE(NothingLeftBehind(client, {&kReader, &kWriter}));
  EXPECT_EQ(testing::Terminate(*server->process).value_or(-1), 0);
}

TEST(IsolationDrainTest, CopyIsRefusedAndTheServerStillDrains) {
  ASSERT_NO_FATAL_FAILURE(SetUpDatabase());
  v1::QueryServiceConfig c = BaseConfig();
  AddPrincipal(&c, kReader, {"read", "sql"});
  AddPrincipal(&c, kWriter, {"read", "write", "sql"});
  c.mutable_server()->set_drain_timeout_ms(2000);
  absl::StatusOr<OwnServer> server = StartOwnServer(c);
  ASSERT_TRUE(server.ok()) << server.status();
  Client& client = *server->client;
  bool wedged = false;
  for (const char* sql : {"COPY (SELECT 1) TO STDOUT", "COPY accounts TO STDOUT",
                          "COPY (SELECT generate_series(1, 1000000)) TO STDOUT",
                          "COPY accounts TO STDOUT WITH (FORMAT binary)", "COPY writes FROM STDIN",
                          ";COPY writes (k, v) FROM STDIN WITH (FORMAT csv)"}) {
    for (const Principal* who : {&kReader, &kWriter}) {
      for (Rpc rpc : kAllRpcs) {
        if (wedged) continue;
        const Answer a = rpc == Rpc::kExecute  ? client.Execute(*who, sql, absl::Seconds(3))
                         : rpc == Rpc::kStream ? client.Stream(*who, sql, absl::Seconds(3))
                                               : client.Transaction(*who, {sql}, absl::Seconds(3));
        EXPECT_EQ(Mismatch(RefusedNaming({"COPY"}), *who, a), "")
            << RpcName(rpc) << " as " << who->name << ": " << sql;
        // A call that never came back: the rest would only wait as long.
        wedged = a.code() == Code::DEADLINE_EXCEEDED;
      }
    }
  }
  // Nothing is wedged: both principals are served ...
  for (const Principal* who : {&kReader, &kWriter}) {
    EXPECT_EQ(Describe(client.Execute(*who, "SELECT 7", absl::Seconds(3))), "OK [7]") << who->name;
  }
  EXPECT_TRUE(NothingLeftBehind(client, {&kReader, &kWriter}));
  // ... and SIGTERM ends the server within its drain time (2 s; the margin is
  // for a slow machine, a wedged worker never ends).
  absl::StatusOr<int> code = testing::Terminate(*server->process, absl::Seconds(10));
  ASSERT_TRUE(code.ok()) << code.status() << "\n" << server->process->LogTail();
  EXPECT_EQ(*code, 0) << server->process->LogTail();
}

}  // namespace
}  // namespace poolside::testing
