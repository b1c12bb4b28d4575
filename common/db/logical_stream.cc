#include "common/db/logical_stream.h"

#include <libpq-fe.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <random>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/db/conninfo.h"
#include "common/db/error.h"
#include "common/db/socket_wait.h"
#include "common/db/sql_quote.h"

namespace poolside::db {
namespace {

// PostgreSQL truncates longer identifiers (NAMEDATALEN - 1).
constexpr size_t kMaxIdentifier = 63;
// How long a cancelled statement of Open may take to stop before Open gives up.
constexpr absl::Duration kCancelGrace = absl::Seconds(2);
// Rounds of "read the publication, create or extend it" before concurrent
// changers are deemed to keep racing.
constexpr int kPublicationAttempts = 10;

struct ConnCloser {
  void operator()(PGconn* c) const { PQfinish(c); }
};
struct ResultClearer {
  void operator()(PGresult* r) const { PQclear(r); }
};
using ConnPtr = std::unique_ptr<PGconn, ConnCloser>;
using ResultPtr = std::unique_ptr<PGresult, ResultClearer>;

std::string Trimmed(absl::string_view s) {
  std::string out(absl::StripAsciiWhitespace(s));
  if (out.size() > kMaxErrorMessage) out.resize(kMaxErrorMessage);
  return out;
}

// The same status with `context: ` in front of its message (payloads kept).
absl::Status WithContext(const absl::Status& status, absl::string_view context) {
  absl::Status out(status.code(), absl::StrCat(context, ": ", status.message()));
  status.ForEachPayload(
      [&out](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

// The user's DSN rebuilt with our defaults where the user set none, and
// `replication=database` for the replication connection.
absl::StatusOr<std::string> BuildConninfo(const LogicalStreamOptions& o, bool replication) {
  absl::StatusOr<Conninfo> c = Conninfo::Parse(o.dsn);
  if (!c.ok()) return c.status();
  c->Erase("replication");  // ours to decide
  c->SetDefault("application_name", o.application_name);
  c->SetDefault("connect_timeout",
                absl::StrCat(std::max<int64_t>(
                    1, absl::ToInt64Seconds(absl::Ceil(o.connect_timeout, absl::Seconds(1))))));
  // A replication connection can stay quiet for long: notice a dead peer.
  c->SetDefault("keepalives", "1");
  c->SetDefault("keepalives_idle", "10");
  c->SetDefault("keepalives_interval", "5");
  c->SetDefault("keepalives_count", "3");
  if (replication) c->Set("replication", "database");
  return c->ToString();
}

void DiscardNotice(void*, const char*) {}

absl::StatusOr<ConnPtr> Connect(const std::string& conninfo, absl::Time deadline,
                                absl::string_view what) {
  ConnPtr conn(PQconnectStart(conninfo.c_str()));
  if (absl::Status s = CompleteConnect(conn.get(), deadline); !s.ok()) {
    if (s.code() == absl::StatusCode::kDeadlineExceeded) {
      return absl::DeadlineExceededError(
          absl::StrCat("opening the ", what, " connection took too long"));
    }
    if (s.code() != absl::StatusCode::kUnavailable) return s;
    return absl::UnavailableError(
        absl::StrCat("cannot open the ", what, " connection: ", s.message()));
  }
  PQsetNoticeProcessor(conn.get(), &DiscardNotice, nullptr);
  if (PQsetnonblocking(conn.get(), 1) != 0) {
    return absl::InternalError("cannot switch the connection to non-blocking mode");
  }
  return conn;
}

absl::Status ResultError(const PGresult* r) {
  const char* sqlstate = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  const char* primary = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
  const char* detail = PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL);
  if (sqlstate == nullptr) {
    return absl::UnavailableError(Trimmed(PQresultErrorMessage(r)));
  }
  return StatusFromSqlState(sqlstate, primary != nullptr ? primary : PQresultErrorMessage(r),
                            detail != nullptr ? detail : "");
}

// Runs one statement and returns its last result: rows, command status, or
// COPY_BOTH (START_REPLICATION), after which nothing more is read. Text
// parameters use the extended protocol; without them the simple protocol (the
// only one a replication connection speaks). At `deadline` the statement is
// cancelled and DEADLINE_EXCEEDED returned; the caller then closes `conn`.
absl::StatusOr<ResultPtr> Exec(PGconn* conn, const std::string& sql,
                               const std::vector<std::string>& params, absl::Time deadline) {
  int sent;
  if (params.empty()) {
    sent = PQsendQuery(conn, sql.c_str());
  } else {
    std::vector<const char*> values;
    for (const std::string& p : params) values.push_back(p.c_str());
    sent = PQsendQueryParams(conn, sql.c_str(), static_cast<int>(values.size()), nullptr,
                             values.data(), nullptr, nullptr, 0);
  }
  if (sent != 1) {
    return absl::UnavailableError(
        absl::StrCat("cannot send a statement: ", Trimmed(PQerrorMessage(conn))));
  }
  ResultPtr last;
  absl::Status error;
  absl::Time give_up = deadline;
  bool cancelled = false;
  while (true) {
    const int flush = PQflush(conn);
    if (flush < 0) {
      return absl::UnavailableError(
          absl::StrCat("connection lost while sending: ", Trimmed(PQerrorMessage(conn))));
    }
    if (flush == 0 && !PQisBusy(conn)) {
      ResultPtr r(PQgetResult(conn));
      if (r == nullptr) break;
      const ExecStatusType st = PQresultStatus(r.get());
      if (st == PGRES_COPY_BOTH) return r;
      if (st == PGRES_FATAL_ERROR || st == PGRES_NONFATAL_ERROR || st == PGRES_BAD_RESPONSE) {
        if (error.ok()) error = ResultError(r.get());
      } else {
        last = std::move(r);
      }
      continue;
    }
    absl::StatusOr<bool> ready = WaitForSocket(
        PQsocket(conn), static_cast<short>(POLLIN | (flush == 1 ? POLLOUT : 0)), give_up);
    if (!ready.ok()) return ready.status();
    if (!*ready) {
      if (cancelled) break;
      // Ask the server to stop the statement (a slot waiting for running
      // transactions, say) so nothing it started is left behind.
      cancelled = true;
      give_up = absl::Now() + kCancelGrace;
      if (PGcancel* c = PQgetCancel(conn)) {
        char buf[256];
        (void)PQcancel(c, buf, sizeof(buf));
        PQfreeCancel(c);
      }
      continue;
    }
    if (PQconsumeInput(conn) == 0) {
      return absl::UnavailableError(
          absl::StrCat("connection lost while reading: ", Trimmed(PQerrorMessage(conn))));
    }
  }
  if (cancelled) {
    return absl::DeadlineExceededError("the statement did not finish before the deadline");
  }
  if (!error.ok()) return error;
  if (last == nullptr) return absl::InternalError("the server returned no result");
  return last;
}

absl::StatusOr<ResultPtr> Query(PGconn* conn, const std::string& sql,
                                const std::vector<std::string>& params, absl::Time deadline,
                                absl::string_view what) {
  absl::StatusOr<ResultPtr> r = Exec(conn, sql, params, deadline);
  if (!r.ok()) return WithContext(r.status(), what);
  return r;
}

std::string Value(const PGresult* r, int row, int col) {
  return PQgetisnull(r, row, col) ? "" : std::string(PQgetvalue(r, row, col));
}

absl::Status ValidateOptions(const LogicalStreamOptions& o) {
  if (o.publication.empty() || o.publication.size() > kMaxIdentifier ||
      o.publication.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("publication name must be 1 to ", kMaxIdentifier, " bytes"));
  }
  if (o.tables.empty()) return absl::InvalidArgumentError("no tables to publish");
  for (const std::string& t : o.tables) {
    if (t.empty() || t.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError("empty table name");
    }
  }
  if (!o.slot.empty()) {
    const bool valid =
        o.slot.size() <= kMaxIdentifier && std::all_of(o.slot.begin(), o.slot.end(), [](char c) {
          return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
        });
    if (!valid) {
      return absl::InvalidArgumentError(
          absl::StrCat("replication slot name \"", o.slot.substr(0, kMaxIdentifier),
                       "\" must be 1 to 63 lowercase letters, digits or underscores"));
    }
  } else if (!o.temporary_slot) {
    return absl::InvalidArgumentError("a permanent replication slot needs a name");
  }
  if (o.status_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("status_interval must be positive");
  }
  return absl::OkStatus();
}

std::string RandomSlotName() {
  std::random_device rd;
  std::mt19937_64 gen((uint64_t{rd()} << 32) ^ rd() ^ static_cast<uint64_t>(getpid()));
  return absl::StrFormat("poolside_%016x", gen());
}

struct ServerFacts {
  int version = 0;
};

absl::StatusOr<ServerFacts> CheckServer(PGconn* conn, absl::Time deadline) {
  absl::StatusOr<ResultPtr> r =
      Query(conn,
            "SELECT current_setting('server_version_num'), current_setting('wal_level'), "
            "current_setting('max_replication_slots'), current_setting('max_wal_senders'), "
            "(SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user), "
            "current_user",
            {}, deadline, "checking the server's settings");
  if (!r.ok()) return r.status();
  const PGresult* res = r->get();
  ServerFacts facts;
  int slots = 0, senders = 0;
  if (PQntuples(res) != 1 || !absl::SimpleAtoi(Value(res, 0, 0), &facts.version) ||
      !absl::SimpleAtoi(Value(res, 0, 2), &slots) ||
      !absl::SimpleAtoi(Value(res, 0, 3), &senders)) {
    return absl::InternalError("unexpected answer when reading the server's settings");
  }
  const std::string wal_level = Value(res, 0, 1);
  if (facts.version < 100000) {
    return absl::FailedPreconditionError(
        absl::StrCat("logical decoding with pgoutput needs PostgreSQL 10 or later; the server is ",
                     facts.version, "; use the trigger-based invalidation fallback"));
  }
  if (wal_level != "logical") {
    return absl::FailedPreconditionError(
        absl::StrCat("the server runs with wal_level = ", wal_level,
                     ", but invalidation from the WAL needs wal_level = logical (set it in "
                     "postgresql.conf or with ALTER SYSTEM, then restart PostgreSQL), or use the "
                     "trigger-based invalidation fallback"));
  }
  if (slots <= 0 || senders <= 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the server runs with max_replication_slots = ", slots, " and max_wal_senders = ", senders,
        "; logical decoding needs both above 0 (set them and restart PostgreSQL), or "
        "use the trigger-based invalidation fallback"));
  }
  if (Value(res, 0, 4) != "t") {
    return absl::PermissionDeniedError(
        absl::StrCat("role ", Value(res, 0, 5), " may not start replication: ALTER ROLE ",
                     QuoteIdentifier(Value(res, 0, 5)), " REPLICATION"));
  }
  return facts;
}

struct Table {
  std::string qualified;  // format('%I.%I'): safe in SQL
  bool partitioned = false;
};

absl::StatusOr<std::vector<Table>> ResolveTables(PGconn* conn, const LogicalStreamOptions& o,
                                                 absl::Time deadline) {
  std::vector<Table> tables;
  absl::flat_hash_set<std::string> seen;
  std::vector<std::string> without_identity;
  for (const std::string& name : o.tables) {
    absl::StatusOr<ResultPtr> r =
        Query(conn,
              "SELECT format('%I.%I', n.nspname, c.relname), c.relkind, "
              "  c.relreplident = 'f' OR EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid "
              "    AND ((c.relreplident = 'd' AND i.indisprimary) OR "
              "         (c.relreplident = 'i' AND i.indisreplident))) "
              "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
              "WHERE c.oid = to_regclass($1)",
              {name}, deadline, absl::StrCat("looking up table ", name));
    if (!r.ok()) return r.status();
    const PGresult* res = r->get();
    if (PQntuples(res) != 1) {
      return absl::NotFoundError(
          absl::StrCat("table ", name, " does not exist (or is not on the search_path)"));
    }
    Table t{Value(res, 0, 0), Value(res, 0, 1) == "p"};
    const std::string kind = Value(res, 0, 1);
    if (kind != "r" && kind != "p") {
      return absl::InvalidArgumentError(absl::StrCat(name, " is not a table (relkind '", kind,
                                                     "'): only tables can be published"));
    }
    if (Value(res, 0, 2) != "t") without_identity.push_back(t.qualified);
    if (seen.insert(t.qualified).second) tables.push_back(std::move(t));
  }
  if (!without_identity.empty() && !o.allow_tables_without_replica_identity) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no replica identity on ", absl::StrJoin(without_identity, ", "),
        ": publishing a table without one makes PostgreSQL refuse every UPDATE and DELETE on "
        "it; add a primary key or ALTER TABLE ... REPLICA IDENTITY FULL, or leave it out"));
  }
  return tables;
}

// A concurrent Open (or anyone) creating or extending the same publication.
bool LostRace(const absl::Status& s) {
  const std::string state = SqlStateOf(s);
  return state == "42710" || state == "23505" || state == "40P01" ||
         absl::StrContains(s.message(), "concurrently");
}

absl::Status EnsurePublication(PGconn* conn, const LogicalStreamOptions& o,
                               const std::vector<Table>& tables, absl::Time deadline) {
  const std::string pub = QuoteIdentifier(o.publication);
  for (int attempt = 0; attempt < kPublicationAttempts; ++attempt) {
    absl::StatusOr<ResultPtr> r =
        Query(conn,
              "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate, puballtables "
              "FROM pg_publication WHERE pubname = $1",
              {o.publication}, deadline, "reading the publication");
    if (!r.ok()) return r.status();
    const PGresult* res = r->get();
    if (PQntuples(res) == 0) {
      std::vector<std::string> names;
      bool partitioned = false;
      for (const Table& t : tables) {
        names.push_back(t.qualified);
        partitioned = partitioned || t.partitioned;
      }
      // Changes to partitions are reported as changes to the partitioned
      // table the cache knows, not to the leaf partition.
      absl::StatusOr<ResultPtr> created =
          Query(conn,
                absl::StrCat("CREATE PUBLICATION ", pub, " FOR TABLE ", absl::StrJoin(names, ", "),
                             " WITH (publish = 'insert, update, delete, truncate'",
                             partitioned ? ", publish_via_partition_root = true" : "", ")"),
                {}, deadline, "creating the publication");
      if (created.ok()) return absl::OkStatus();
      if (!LostRace(created.status())) return created.status();
      continue;
    }
    if (Value(res, 0, 0) != "t") {
      return absl::FailedPreconditionError(absl::StrCat(
          "publication ", o.publication,
          " exists but does not publish every kind of change, so it would miss some: ALTER "
          "PUBLICATION ",
          pub, " SET (publish = 'insert, update, delete, truncate'), or choose another name"));
    }
    if (Value(res, 0, 1) == "t") return absl::OkStatus();  // FOR ALL TABLES
    // pg_publication_tables also lists tables published through FOR TABLES IN
    // SCHEMA; a partitioned table shows as its partitions (unless published
    // via its root), so it looks missing and ADD TABLE says it is a member.
    std::vector<std::string> missing;
    for (const Table& t : tables) {
      absl::StatusOr<ResultPtr> member =
          Query(conn,
                "SELECT EXISTS (SELECT 1 FROM pg_publication_tables "
                "  WHERE pubname = $1 AND format('%I.%I', schemaname, tablename) = $2)",
                {o.publication, t.qualified}, deadline, "reading the publication's tables");
      if (!member.ok()) return member.status();
      if (Value(member->get(), 0, 0) != "t") missing.push_back(t.qualified);
    }
    if (missing.empty()) return absl::OkStatus();
    bool raced = false;
    for (const std::string& t : missing) {
      absl::StatusOr<ResultPtr> added =
          Query(conn, absl::StrCat("ALTER PUBLICATION ", pub, " ADD TABLE ", t), {}, deadline,
                absl::StrCat("adding ", t, " to the publication"));
      if (added.ok()) continue;
      // 42710: already a member (a partitioned table listed through its
      // partitions, or a concurrent Open added it); the next round checks.
      if (!LostRace(added.status())) return added.status();
      raced = true;
    }
    if (!raced) return absl::OkStatus();
  }
  return absl::AbortedError(absl::StrCat("publication ", o.publication,
                                         " kept changing under concurrent changes; retry"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<LogicalStream>> LogicalStream::Open(
    const LogicalStreamOptions& options) {
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  const absl::Time deadline = absl::Now() + options.open_timeout;
  const absl::Time connect_deadline = std::min(deadline, absl::Now() + options.connect_timeout);
  absl::StatusOr<std::string> plain_info = BuildConninfo(options, /*replication=*/false);
  if (!plain_info.ok()) return plain_info.status();
  absl::StatusOr<std::string> repl_info = BuildConninfo(options, /*replication=*/true);
  if (!repl_info.ok()) return repl_info.status();

  absl::StatusOr<ConnPtr> session = Connect(*plain_info, connect_deadline, "database");
  if (!session.ok()) return session.status();
  absl::StatusOr<ServerFacts> facts = CheckServer(session->get(), deadline);
  if (!facts.ok()) return facts.status();
  absl::StatusOr<std::vector<Table>> tables = ResolveTables(session->get(), options, deadline);
  if (!tables.ok()) return tables.status();
  if (absl::Status s = EnsurePublication(session->get(), options, *tables, deadline); !s.ok()) {
    return s;
  }

  std::unique_ptr<LogicalStream> stream(
      new LogicalStream(options.messages && facts->version >= 140000));
  stream->slot_ = options.slot.empty() ? RandomSlotName() : options.slot;
  stream->temporary_ = options.temporary_slot;
  stream->status_interval_ = options.status_interval;
  absl::StatusOr<ConnPtr> repl =
      Connect(*repl_info, std::min(deadline, absl::Now() + options.connect_timeout), "replication");
  if (!repl.ok()) return repl.status();

  // No snapshot: the stream needs none, and exporting one would hold this
  // connection's transaction open.
  const std::string create =
      absl::StrCat("CREATE_REPLICATION_SLOT ", stream->slot_,
                   options.temporary_slot ? " TEMPORARY" : "", " LOGICAL pgoutput",
                   facts->version >= 150000 ? " (SNAPSHOT 'nothing')" : " NOEXPORT_SNAPSHOT");
  absl::StatusOr<ResultPtr> slot = Exec(repl->get(), create, {}, deadline);
  Lsn start = 0;
  if (slot.ok()) {
    const PGresult* res = slot->get();
    absl::StatusOr<Lsn> point =
        PQntuples(res) == 1 && PQnfields(res) >= 2
            ? ParseLsn(Value(res, 0, 1))
            : absl::StatusOr<Lsn>(absl::InternalError("no consistent point"));
    if (!point.ok()) {
      return absl::InternalError(
          absl::StrCat("unexpected answer to CREATE_REPLICATION_SLOT: ", point.status().message()));
    }
    start = *point;
  } else if (SqlStateOf(slot.status()) == "42710" && !options.temporary_slot) {
    // The permanent slot exists: resume after its confirmed position.
    absl::StatusOr<ResultPtr> r =
        Query(session->get(),
              "SELECT plugin, slot_type, database = current_database(), temporary, "
              "  confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1",
              {stream->slot_}, deadline, "reading the existing replication slot");
    if (!r.ok()) return r.status();
    const PGresult* res = r->get();
    if (PQntuples(res) != 1 || Value(res, 0, 0) != "pgoutput" || Value(res, 0, 1) != "logical" ||
        Value(res, 0, 2) != "t" || Value(res, 0, 3) != "f") {
      return absl::FailedPreconditionError(absl::StrCat(
          "replication slot ", stream->slot_,
          " exists but is not a permanent pgoutput slot of this database; choose another name"));
    }
    absl::StatusOr<Lsn> point = ParseLsn(Value(res, 0, 4));
    if (!point.ok()) return point.status();
    start = *point;
  } else if (SqlStateOf(slot.status()) == "42710") {
    return absl::AlreadyExistsError(
        absl::StrCat("replication slot ", stream->slot_, " already exists; choose another name"));
  } else {
    return WithContext(slot.status(), "creating the replication slot");
  }

  const std::string start_sql = absl::StrCat(
      "START_REPLICATION SLOT ", stream->slot_, " LOGICAL ", FormatLsn(start),
      " (proto_version '1', publication_names ", QuoteLiteral(QuoteIdentifier(options.publication)),
      stream->messages_ ? ", messages 'true'" : "", ")");
  absl::StatusOr<ResultPtr> started = Exec(repl->get(), start_sql, {}, deadline);
  if (!started.ok()) {
    if (SqlStateOf(started.status()) == "55006") {
      return absl::AbortedError(
          absl::StrCat("replication slot ", stream->slot_,
                       " is in use by another connection: ", started.status().message()));
    }
    return WithContext(started.status(), "starting replication");
  }
  if (PQresultStatus(started->get()) != PGRES_COPY_BOTH) {
    return absl::InternalError("START_REPLICATION did not start a replication stream");
  }
  stream->start_lsn_ = start;
  stream->delivered_lsn_ = start;
  stream->last_commit_end_ = start;
  stream->reported_flush_ = start;
  stream->confirmed_.store(start);
  stream->backend_pid_ = PQbackendPID(repl->get());
  stream->next_status_at_ = absl::Now() + options.status_interval;
  stream->conn_ = repl->release();
  return stream;
}

LogicalStream::~LogicalStream() {
  if (conn_ == nullptr) return;
  // Best effort, without waiting: tell the server what was confirmed, so a
  // permanent slot resumes after it.
  if (SendStatus(absl::Now()).ok() && conn_ != nullptr) (void)PQflush(conn_);
  if (conn_ != nullptr) PQfinish(conn_);
}

void LogicalStream::Confirm(Lsn lsn) {
  Lsn seen = confirmed_.load(std::memory_order_relaxed);
  while (lsn > seen && !confirmed_.compare_exchange_weak(seen, lsn, std::memory_order_relaxed)) {
  }
}

Lsn LogicalStream::FlushToReport() {
  const Lsn confirmed = confirmed_.load(std::memory_order_relaxed);
  // When every delivered transaction is confirmed, nothing the consumer has
  // not applied lies before the delivered position (a keepalive's, between
  // transactions), so the server may free WAL up to there even if none of its
  // recent transactions touched the published tables.
  const Lsn target =
      confirmed >= last_commit_end_ ? delivered_lsn_ : std::min(confirmed, delivered_lsn_);
  reported_flush_ = std::max(reported_flush_, target);
  return reported_flush_;
}

absl::Status LogicalStream::SendStatus(absl::Time now) {
  const Lsn flush = FlushToReport();
  const std::string msg = EncodeStatusUpdate(std::max(delivered_lsn_, flush), flush, flush, now,
                                             /*reply_requested=*/false);
  const int rc = PQputCopyData(conn_, msg.data(), static_cast<int>(msg.size()));
  if (rc < 0) return Lost("sending a status update");
  if (rc == 0) {
    // libpq's output buffer is full (the server is not reading): retry soon.
    next_status_at_ = now + absl::Milliseconds(10);
    return absl::OkStatus();
  }
  next_status_at_ = now + status_interval_;
  if (PQflush(conn_) < 0) return Lost("sending a status update");
  return absl::OkStatus();
}

absl::Status LogicalStream::Fail(absl::Status status) {
  if (status_.ok()) status_ = std::move(status);
  // Closing now lets the server drop a temporary slot at once.
  if (conn_ != nullptr) {
    PQfinish(conn_);
    conn_ = nullptr;
  }
  return status_;
}

absl::Status LogicalStream::Lost(absl::string_view while_doing) {
  std::string why = conn_ != nullptr ? Trimmed(PQerrorMessage(conn_)) : "";
  absl::Status server;
  // An error the server sent (e.g. the walsender was terminated) is a result.
  if (conn_ != nullptr && !PQisBusy(conn_)) {
    ResultPtr r(PQgetResult(conn_));
    if (r != nullptr && PQresultStatus(r.get()) == PGRES_FATAL_ERROR) server = ResultError(r.get());
  }
  const std::string message = absl::StrCat(
      "logical replication stream lost while ", while_doing, ": ",
      !server.ok() ? std::string(server.message()) : (why.empty() ? "connection closed" : why),
      "; changes may have been missed: flush what depends on it and resubscribe");
  absl::Status out = absl::UnavailableError(message);
  const std::string state = SqlStateOf(server);
  // A server error other than "connection ended" keeps its own code.
  if (!server.ok() && server.code() != absl::StatusCode::kUnavailable && !state.empty()) {
    out = absl::Status(server.code(), message);
  }
  if (!state.empty()) out.SetPayload(kSqlStatePayload, absl::Cord(state));
  return out;
}

absl::StatusOr<std::optional<LogicalEvent>> LogicalStream::HandleMessage(
    absl::string_view copy_data) {
  absl::StatusOr<ReplicationMessage> m = ParseReplicationMessage(copy_data);
  if (!m.ok()) return m.status();
  server_wal_end_ = std::max(server_wal_end_, m->wal_end);
  if (m->kind == ReplicationMessage::Kind::kKeepalive) {
    // Between transactions the server has sent everything before its WAL
    // end; inside one, the rest of the transaction is still to come.
    if (!decoder_.in_transaction()) delivered_lsn_ = std::max(delivered_lsn_, m->wal_end);
    if (m->reply_requested) next_status_at_ = absl::InfinitePast();
    return std::optional<LogicalEvent>();
  }
  absl::StatusOr<std::optional<LogicalEvent>> event = decoder_.Decode(m->payload);
  if (!event.ok() || !event->has_value()) return event;
  if (const CommitEvent* c = std::get_if<CommitEvent>(&**event)) {
    last_commit_end_ = c->end_lsn;
    delivered_lsn_ = std::max(delivered_lsn_, c->end_lsn);
  }
  return event;
}

absl::StatusOr<std::optional<LogicalEvent>> LogicalStream::Next(absl::Time deadline) {
  if (!status_.ok()) return status_;
  while (true) {
    const absl::Time now = absl::Now();
    if (now >= next_status_at_) {
      if (absl::Status s = SendStatus(now); !s.ok()) return Fail(s);
    }
    char* buf = nullptr;
    const int n = PQgetCopyData(conn_, &buf, /*async=*/1);
    if (n > 0) {
      std::unique_ptr<char, void (*)(void*)> owned(buf, &PQfreemem);
      absl::StatusOr<std::optional<LogicalEvent>> event =
          HandleMessage(absl::string_view(buf, static_cast<size_t>(n)));
      if (!event.ok()) return Fail(event.status());
      if (event->has_value() || absl::Now() >= deadline) return event;
      continue;
    }
    if (n == -1) return Fail(Lost("reading (the server ended the stream)"));
    if (n < 0) return Fail(Lost("reading"));
    // Nothing complete buffered: send what is pending and wait for the socket.
    const int flush = PQflush(conn_);
    if (flush < 0) return Fail(Lost("sending"));
    if (now >= deadline) return std::optional<LogicalEvent>();
    const absl::Time wake = std::min(deadline, next_status_at_);
    const int timeout_ms = PollTimeoutMs(now, wake, 60000);
    if (PQsocket(conn_) < 0) return Fail(Lost("waiting for the server"));
    pollfd pfd{PQsocket(conn_), static_cast<short>(POLLIN | (flush == 1 ? POLLOUT : 0)), 0};
    const int rc = ::poll(&pfd, 1, timeout_ms);
    if (rc < 0 && errno != EINTR) return Fail(Lost("waiting for the server"));
    if (rc > 0 && (pfd.revents & (POLLIN | POLLHUP | POLLERR)) != 0 && PQconsumeInput(conn_) == 0) {
      return Fail(Lost("reading"));
    }
  }
}

}  // namespace poolside::db
