#include "services/query/wal_relay.h"

#include <pthread.h>

#include <algorithm>
#include <deque>
#include <limits>
#include <utility>
#include <variant>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/db/error.h"
#include "common/hash/fnv1a.h"
#include "common/telemetry/log.h"
#include "services/query/result_sinks.h"
#include "services/query/row_keys.h"

namespace poolside::query {
namespace {

// Payloads NOTIFYed by one statement (one transaction).
constexpr int kPayloadsPerStatement = 32;
// After the server said it cannot decode the WAL: wait this many election
// periods before trying again.
constexpr int kUnavailableBackoff = 10;
// How long a decoded transaction may stay invisible to new snapshots (a
// synchronous standby not answering keeps it so) before the term ends; below
// the server's default wal_sender_timeout, since the stream is not read
// meanwhile.
constexpr absl::Duration kMaxInvisible = absl::Seconds(20);
// How long the holder may wait on its stream before it looks at whether it
// is being stopped, whatever the heartbeat.
constexpr absl::Duration kStopCheck = absl::Milliseconds(100);

// True when every transaction of the int8[] parameter $<param> (32-bit xids,
// as pgoutput sends them) is visible to a snapshot taken now: committed and
// out of the proc array. Each xid is widened to its xid8 next to the
// snapshot's xmax (an xid is never 2^31 transactions away from it).
std::string VisibleCondition(int param) {
  return absl::StrCat(
      "NOT EXISTS (SELECT 1 FROM pg_catalog.unnest($", param,
      "::pg_catalog.int8[]) AS t(x), (SELECT pg_catalog.pg_current_snapshot() AS s) AS c, "
      "LATERAL (SELECT pg_catalog.pg_snapshot_xmax(c.s)::text::int8 AS m) AS h, "
      "LATERAL (SELECT ((h.m & 4294967295) - t.x) & 4294967295 AS d) AS e "
      "WHERE NOT pg_catalog.pg_visible_in_snapshot((CASE WHEN e.d < 2147483648 THEN h.m - e.d "
      "ELSE h.m + 4294967296 - e.d END)::text::pg_catalog.xid8, c.s))");
}

std::string XidArray(const std::vector<uint32_t>& xids) {
  return absl::StrCat("{", absl::StrJoin(xids, ","), "}");
}

std::string Qualified(const db::RelationInfo& r) { return absl::StrCat(r.schema, ".", r.table); }

}  // namespace

absl::StatusOr<bool> WalLevelIsLogical(db::Connection& conn, absl::Time deadline) {
  absl::StatusOr<v1::ResultSet> rs =
      RunOwnStatement(conn, "SELECT current_setting('wal_level')", {}, deadline);
  if (!rs.ok()) return rs.status();
  if (rs->rows_size() != 1 || rs->rows(0).values_size() != 1) {
    return absl::InternalError("SHOW wal_level returned no value");
  }
  return rs->rows(0).values(0).text_value() == "logical";
}

std::string WhyNotPublishable(db::Connection& conn, const std::string& table, absl::Time deadline) {
  google::protobuf::RepeatedPtrField<v1::Value> params;
  params.Add()->set_text_value(table);
  absl::StatusOr<v1::ResultSet> rs = RunOwnStatement(
      conn,
      "SELECT c.relreplident::text, c.relkind::text, EXISTS (SELECT 1 FROM pg_catalog.pg_index i "
      "WHERE i.indrelid = c.oid AND i.indisprimary) FROM pg_catalog.pg_class c "
      "WHERE c.oid = pg_catalog.to_regclass($1)",
      params, deadline);
  if (!rs.ok()) return std::string(rs.status().message().substr(0, 200));
  if (rs->rows_size() != 1) return "no such table";
  const std::string identity = rs->rows(0).values(0).text_value();
  const std::string kind = rs->rows(0).values(1).text_value();
  const bool has_key = rs->rows(0).values(2).bool_value();
  if (kind != "r") {
    return "not a plain table (views, partitioned and foreign tables are not published)";
  }
  if (identity == "n" || (identity == "d" && !has_key)) {
    return "no primary key or replica identity: publishing it would make its UPDATE and "
           "DELETE fail for every writer";
  }
  return "";
}

absl::Status PublishTables(db::Connection& conn, const std::string& publication,
                           const std::vector<std::string>& tables, absl::Time deadline) {
  for (const std::string& table : tables) {
    if (!WhyNotPublishable(conn, table, deadline).empty()) continue;
    google::protobuf::RepeatedPtrField<v1::Value> params;
    params.Add()->set_text_value(publication);
    params.Add()->set_text_value(table);
    // The publication's name and the table's, quoted by the server.
    absl::StatusOr<v1::ResultSet> rs = RunOwnStatement(
        conn,
        "SELECT pg_catalog.quote_ident(p.pubname), pg_catalog.to_regclass($2)::text, "
        "EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel r WHERE r.prpubid = p.oid "
        "AND r.prrelid = pg_catalog.to_regclass($2)) OR p.puballtables "
        "FROM pg_catalog.pg_publication p WHERE p.pubname = $1",
        params, deadline);
    if (!rs.ok()) return rs.status();
    if (rs->rows_size() != 1) return absl::OkStatus();  // not created yet
    if (rs->rows(0).values(2).bool_value()) continue;
    absl::StatusOr<v1::ResultSet> added =
        RunOwnStatement(conn,
                        absl::StrCat("ALTER PUBLICATION ", rs->rows(0).values(0).text_value(),
                                     " ADD TABLE ONLY ", rs->rows(0).values(1).text_value()),
                        {}, deadline);
    // 42710: added meanwhile by someone else.
    if (!added.ok() && db::SqlStateOf(added.status()) != "42710") {
      return added.status();
    }
  }
  return absl::OkStatus();
}

int64_t WalRelay::LockKey(absl::string_view publication, absl::string_view channel) {
  return static_cast<int64_t>(
      hash::Fnv1a(absl::StrCat("poolside-wal-relay\x1f", publication, "\x1f", channel)));
}

std::string WalRelay::FencePrefix(absl::string_view publication, absl::string_view channel) {
  return absl::StrFormat("poolside-fence/%016x",
                         static_cast<uint64_t>(LockKey(publication, channel)));
}

namespace {

// The DDL event trigger's function (wal_relay.h). Its source is compared
// with the installed one's, so that a new version replaces it. It never
// fails the DDL it runs for. `$prefix` stands for WalRelay::kDdlPrefix.
constexpr char kDdlFunctionTemplate[] = R"sql(
DECLARE
  objects int := 0;
  temporary int := 0;
  r record;
BEGIN
  -- Commands that cannot change what a read returns (a trigger acts on
  -- writes, which are decoded themselves).
  IF tg_tag IN ('CREATE INDEX', 'ALTER INDEX', 'DROP INDEX', 'REINDEX', 'COMMENT',
                'CREATE STATISTICS', 'ALTER STATISTICS', 'DROP STATISTICS',
                'CREATE PUBLICATION', 'ALTER PUBLICATION', 'DROP PUBLICATION',
                'CREATE TRIGGER', 'ALTER TRIGGER', 'DROP TRIGGER') THEN
    RETURN;
  END IF;
  -- Nor does DDL on temporary objects only (each session's own).
  FOR r IN SELECT schema_name FROM pg_event_trigger_ddl_commands() LOOP
    objects := objects + 1;
    IF r.schema_name LIKE 'pg\_temp%' THEN
      temporary := temporary + 1;
    END IF;
  END LOOP;
  IF objects > 0 AND objects = temporary THEN
    RETURN;
  END IF;
  BEGIN
    PERFORM pg_logical_emit_message(true, '$prefix', tg_tag);
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'poolside: the cache was not told of this DDL: %', SQLERRM;
  END;
END
)sql";

const std::string& DdlFunctionSource() {
  static const std::string* source = new std::string(
      absl::StrReplaceAll(kDdlFunctionTemplate, {{"$prefix", WalRelay::kDdlPrefix}}));
  return *source;
}

}  // namespace

absl::StatusOr<bool> WalRelay::EnsureDdlTrigger(db::Connection& conn, absl::Time deadline) {
  absl::StatusOr<v1::ResultSet> found =
      RunOwnStatement(conn,
                      "SELECT e.evtenabled::text, p.prosrc, "
                      "(SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) "
                      "FROM (SELECT 1) one "
                      "LEFT JOIN pg_catalog.pg_event_trigger e ON e.evtname = 'poolside_cache_ddl' "
                      "LEFT JOIN pg_catalog.pg_proc p ON p.oid = e.evtfoid",
                      {}, deadline);
  if (!found.ok()) return found.status();
  if (found->rows_size() != 1 || found->rows(0).values_size() != 3) {
    return absl::InternalError("looking for the DDL event trigger returned no row");
  }
  const v1::Row& row = found->rows(0);
  const bool exists = row.values(0).has_text_value();
  const bool enabled = exists && row.values(0).text_value() != "D";
  const bool current = exists && row.values(1).text_value() == DdlFunctionSource();
  const bool superuser = row.values(2).bool_value();
  if (exists && !enabled) return false;  // someone disabled it: theirs to enable
  if (current) return true;
  if (!superuser) return false;
  std::vector<std::string> install = {
      "CREATE SCHEMA IF NOT EXISTS poolside",
      absl::StrCat("CREATE OR REPLACE FUNCTION poolside.cache_ddl_message() RETURNS event_trigger "
                   "LANGUAGE plpgsql SET search_path = pg_catalog AS $poolside$",
                   DdlFunctionSource(), "$poolside$")};
  if (!exists) {
    install.push_back(
        "CREATE EVENT TRIGGER poolside_cache_ddl ON ddl_command_end "
        "EXECUTE FUNCTION poolside.cache_ddl_message()");
  }
  for (const std::string& sql : install) {
    absl::StatusOr<v1::ResultSet> done = RunOwnStatement(conn, sql, {}, deadline);
    // 42710: made meanwhile by another relay (another publication's).
    if (!done.ok() && db::SqlStateOf(done.status()) != "42710") return done.status();
  }
  return true;
}

WalRelay::WalRelay(Options options, OnUnavailable on_unavailable)
    : options_(std::move(options)),
      fence_prefix_(FencePrefix(options_.publication, options_.channel)),
      on_unavailable_(std::move(on_unavailable)) {}

WalRelay::~WalRelay() {
  stopping_.Notify();
  if (thread_.joinable()) thread_.join();
}

void WalRelay::Start() {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "cache:walrelay");
    Run();
  });
}

WalRelay::Stats WalRelay::GetStats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

bool WalRelay::Pause(absl::Duration d) { return !stopping_.WaitForNotificationWithTimeout(d); }

void WalRelay::SetError(const absl::Status& s) {
  absl::MutexLock lock(&mu_);
  stats_.last_error = std::string(s.message().substr(0, 300));
}

absl::StatusOr<std::string> WalRelay::CurrentDsn() const {
  if (!options_.current_dsn) return options_.dsn;
  return options_.current_dsn();
}

void WalRelay::Run() {
  const int64_t key = LockKey(options_.publication, options_.channel);
  while (!stopping_.HasBeenNotified()) {
    absl::StatusOr<std::string> dsn = CurrentDsn();
    if (!dsn.ok()) {
      SetError(dsn.status());
      if (!Pause(options_.election_retry)) return;
      continue;
    }
    db::ConnectionOptions o;
    o.dsn = *dsn;
    o.application_name = absl::StrCat("poolside-cache-relay/", options_.database);
    o.connect_timeout = options_.connect_timeout;
    absl::StatusOr<std::unique_ptr<db::Connection>> session = db::Connection::Open(o);
    if (!session.ok()) {
      SetError(session.status());
      if (!Pause(options_.election_retry)) return;
      continue;
    }
    google::protobuf::RepeatedPtrField<v1::Value> params;
    params.Add()->set_int64_value(key);
    bool holder = false;
    while (!stopping_.HasBeenNotified()) {
      absl::StatusOr<v1::ResultSet> got = RunOwnStatement(
          **session, "SELECT pg_try_advisory_lock($1)", params, absl::Now() + absl::Seconds(5));
      if (!got.ok()) {
        SetError(got.status());
        break;
      }
      if (got->rows_size() == 1 && got->rows(0).values(0).bool_value()) {
        holder = true;
        break;
      }
      if (!Pause(options_.election_retry)) return;
      // The primary moved: run for election there.
      absl::StatusOr<std::string> now = CurrentDsn();
      if (!now.ok() || *now != *dsn) break;
    }
    if (!holder) {
      if (!Pause(options_.election_retry)) return;
      continue;
    }
    {
      absl::MutexLock lock(&mu_);
      stats_.holder = true;
      ++stats_.terms;
    }
    telemetry::LogInfo("this replica now reads the cache's invalidations from the WAL",
                       {{"database", options_.database}, {"publication", options_.publication}});
    // The relay's NOTIFY transactions need not wait for their commit to be
    // flushed: listeners get a notification at commit, and a server that
    // crashes before the flush ends every listener's session anyway (replicas
    // then bypass and flush). Each batch would otherwise add an fsync beside
    // the writers' own, on the WAL they all wait for.
    if (absl::StatusOr<v1::ResultSet> async = RunOwnStatement(
            **session, "SET synchronous_commit = off", {}, absl::Now() + absl::Seconds(5));
        !async.ok()) {
      SetError(async.status());
      session->reset();
      if (!Pause(options_.election_retry)) return;
      continue;
    }
    const absl::Status ended = Hold(**session, *dsn);
    session->reset();  // releases the lock; the stream (and its slot) is gone already
    {
      absl::MutexLock lock(&mu_);
      stats_.holder = false;
      stats_.stream = 0;
    }
    if (stopping_.HasBeenNotified()) return;
    SetError(ended);
    telemetry::LogWarning(
        "the cache's WAL stream ended; running for election again",
        {{"database", options_.database}, {"error", std::string(ended.message().substr(0, 300))}});
    const bool unavailable = ended.code() == absl::StatusCode::kFailedPrecondition;
    if (!Pause(options_.election_retry * (unavailable ? kUnavailableBackoff : 1))) return;
  }
}

std::vector<std::string> WalRelay::PublishableTables(db::Connection& session) {
  std::vector<std::string> ok, excluded;
  for (const std::string& table : options_.tables) {
    const std::string why = WhyNotPublishable(session, table, absl::Now() + absl::Seconds(10));
    if (why.empty()) {
      ok.push_back(table);
      continue;
    }
    excluded.push_back(table);
    absl::MutexLock lock(&mu_);
    if (warned_.insert(table).second) {
      telemetry::LogError("cached table left out of the WAL stream; its reads are not cached",
                          {{"database", options_.database}, {"table", table}, {"why", why}});
    }
  }
  absl::MutexLock lock(&mu_);
  stats_.published = ok;
  stats_.excluded = excluded;
  return ok;
}

void WalRelay::Add(const db::LogicalEvent& event, Transaction* txn, Batch* batch) {
  if (const auto* begin = std::get_if<db::BeginEvent>(&event)) {
    *txn = Transaction{true, begin->xid, db::PostgresMicrosFromTime(begin->commit_time)};
    return;
  }
  if (std::holds_alternative<db::CommitEvent>(event)) {
    if (txn->fence) {
      batch->fence = true;
      absl::MutexLock lock(&mu_);
      ++stats_.fences;
    }
    if (txn->ddl) {
      batch->tables[kRelayAllTables].definition = true;
      absl::MutexLock lock(&mu_);
      ++stats_.ddl;
    }
    *txn = Transaction{};
    return;
  }
  if (const auto* m = std::get_if<db::MessageEvent>(&event)) {
    // Only a committed transaction's message says where the stream is:
    // others (anyone may send any prefix) are ignored.
    if (m->transactional && txn->open && m->prefix == fence_prefix_) txn->fence = true;
    if (m->transactional && txn->open && m->prefix == kDdlPrefix) txn->ddl = true;
    return;
  }
  // A change: its transaction must be visible before the batch is relayed,
  // and its commit counts for the batch's delay. Again after every batch, so
  // a transaction split across batches is checked in each.
  if (!txn->open) batch->xids_complete = false;
  if (txn->open && !txn->in_batch) {
    txn->in_batch = true;
    batch->xids.push_back(txn->xid);
    if (batch->oldest_commit == 0 || txn->commit_micros < batch->oldest_commit) {
      batch->oldest_commit = txn->commit_micros;
    }
  }
  Pending* pending = &batch->tables;
  auto whole = [](PendingTable& t) {
    t.whole = true;
    t.rows.clear();
  };
  if (const auto* c = std::get_if<db::ChangeEvent>(&event)) {
    const db::RelationInfo& rel = *c->relation;
    PendingTable& t = (*pending)[Qualified(rel)];
    if (t.whole) return;
    // Row by row only where the key PostgreSQL sends is the primary key.
    if (rel.replica_identity != 'd' || rel.key_columns.empty() || !c->key_known) {
      whole(t);
      return;
    }
    for (const std::vector<db::KeyValue>* values : {&c->new_key, &c->old_key}) {
      if (values->empty()) continue;
      if (values->size() != rel.key_columns.size()) {
        whole(t);
        return;
      }
      std::vector<std::string> canonical;
      for (size_t i = 0; i < values->size(); ++i) {
        const KeyFamily family = KeyFamilyOf(rel.columns[rel.key_columns[i]].type_oid);
        std::optional<std::string> v;
        if ((*values)[i].has_value()) v = CanonicalKeyText(family, *(*values)[i]);
        if (!v.has_value()) {
          whole(t);
          return;
        }
        canonical.push_back(*std::move(v));
      }
      t.rows.insert(RowKeyHash(canonical));
    }
    if (t.rows.size() > options_.max_rows_per_table) whole(t);
    return;
  }
  if (const auto* truncate = std::get_if<db::TruncateEvent>(&event)) {
    for (const auto& rel : truncate->relations) whole((*pending)[Qualified(*rel)]);
    return;
  }
  if (const auto* relation = std::get_if<db::RelationEvent>(&event)) {
    PendingTable& t = (*pending)[Qualified(*relation->relation)];
    whole(t);
    t.definition = true;
  }
}

absl::StatusOr<std::optional<db::Lsn>> WalRelay::Notify(db::Connection& session,
                                                        const std::vector<std::string>& payloads,
                                                        const std::vector<uint32_t>& xids) {
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  const bool one_statement = payloads.size() <= kPayloadsPerStatement;
  if (!xids.empty() && !one_statement) {
    // All or nothing: checked once before any statement, since a later one
    // could pass where an earlier one did not (visibility only grows).
    google::protobuf::RepeatedPtrField<v1::Value> check;
    check.Add()->set_text_value(XidArray(xids));
    absl::StatusOr<v1::ResultSet> visible =
        RunOwnStatement(session, absl::StrCat("SELECT ", VisibleCondition(1)), check, deadline);
    if (!visible.ok()) return visible.status();
    if (visible->rows_size() != 1 || !visible->rows(0).values(0).bool_value()) {
      return std::optional<db::Lsn>();
    }
  }
  std::vector<std::string> sql;
  std::vector<google::protobuf::RepeatedPtrField<v1::Value>> params;
  for (size_t i = 0; i < payloads.size(); i += kPayloadsPerStatement) {
    const size_t n = std::min<size_t>(kPayloadsPerStatement, payloads.size() - i);
    std::string text = "SELECT ";
    params.emplace_back();
    params.back().Add()->set_text_value(options_.channel);
    for (size_t j = 0; j < n; ++j) {
      absl::StrAppend(&text, "pg_catalog.pg_notify($1, $", j + 2, "), ");
      params.back().Add()->set_text_value(payloads[i + j]);
    }
    // Flushed: the stream cannot decode further (with synchronous_commit off,
    // WAL written but not flushed waits for the WAL writer).
    absl::StrAppend(&text, "pg_catalog.pg_current_wal_flush_lsn()::text");
    if (!xids.empty() && one_statement) {
      // No row, and no NOTIFY, while some transaction is not visible.
      absl::StrAppend(&text, " WHERE ", VisibleCondition(n + 2));
      params.back().Add()->set_text_value(XidArray(xids));
    }
    sql.push_back(std::move(text));
  }
  std::vector<v1::ResultSet> results(sql.size());
  std::vector<ResultBudget> budgets(sql.size(), ResultBudget{10, 1 << 20});
  std::vector<std::unique_ptr<ResultSetSink>> sinks;
  std::vector<db::Statement> statements(sql.size());
  std::vector<db::Statement*> ptrs;
  for (size_t i = 0; i < sql.size(); ++i) {
    sinks.push_back(std::make_unique<ResultSetSink>(&results[i], &budgets[i]));
    statements[i].sql = sql[i];
    statements[i].params = &params[i];
    statements[i].sink = sinks.back().get();
    statements[i].deadline = deadline;
    ptrs.push_back(&statements[i]);
  }
  if (absl::Status link = session.RunIndependent(ptrs); !link.ok()) return link;
  for (const db::Statement& st : statements) {
    if (!st.status.ok()) return st.status;
  }
  const v1::ResultSet& last = results.back();
  if (!xids.empty() && one_statement && last.rows_size() == 0) return std::optional<db::Lsn>();
  if (last.rows_size() != 1 || last.rows(0).values_size() == 0) {
    return absl::InternalError("NOTIFY returned no WAL position");
  }
  const v1::Value& lsn = last.rows(0).values(last.rows(0).values_size() - 1);
  absl::StatusOr<db::Lsn> parsed = db::ParseLsn(lsn.text_value());
  if (!parsed.ok()) return parsed.status();
  return std::optional<db::Lsn>(*parsed);
}

absl::Status WalRelay::Hold(db::Connection& session, const std::string& dsn) {
  absl::StatusOr<bool> logical = WalLevelIsLogical(session, absl::Now() + absl::Seconds(10));
  if (!logical.ok()) return logical.status();
  if (!*logical) {
    const absl::Status s = absl::FailedPreconditionError(absl::StrCat(
        "database ", options_.database,
        ": wal_level is not logical, so the cache cannot read invalidations from the WAL; set "
        "wal_level = logical (a restart) or cache.invalidation: \"trigger\""));
    if (on_unavailable_) on_unavailable_(s);
    return s;
  }
  // Permanent slots of poolside (made by hand, or by another version) pin WAL
  // until someone drops them: say so.
  if (absl::StatusOr<v1::ResultSet> slots =
          RunOwnStatement(session,
                          "SELECT slot_name::text FROM pg_catalog.pg_replication_slots "
                          "WHERE slot_name LIKE 'poolside%' AND NOT temporary",
                          {}, absl::Now() + absl::Seconds(10));
      slots.ok()) {
    for (const v1::Row& row : slots->rows()) {
      telemetry::LogWarning(
          "a permanent replication slot named poolside* pins WAL on this server; drop it with "
          "pg_drop_replication_slot() if nothing uses it",
          {{"database", options_.database}, {"slot", row.values(0).text_value()}});
    }
  }
  // DDL that changes what cached statements read without a change to a
  // table of theirs (views, policies, grants) is seen only through the event
  // trigger: make sure it is there, and say once when it cannot be.
  absl::StatusOr<bool> ddl = EnsureDdlTrigger(session, absl::Now() + absl::Seconds(10));
  {
    absl::MutexLock lock(&mu_);
    stats_.ddl_trigger = ddl.ok() && *ddl;
    if (!stats_.ddl_trigger && !warned_ddl_) {
      warned_ddl_ = true;
      telemetry::LogWarning(
          "the cache's DDL event trigger is not installed (it needs a superuser, once): "
          "redefining a view, a policy or a grant does not invalidate cached reads; flush "
          "after such changes (poolside cache invalidate --tag db:<database>)",
          {{"database", options_.database},
           {"error", ddl.ok() ? std::string("not permitted, or disabled")
                              : std::string(ddl.status().message().substr(0, 300))}});
    }
  }
  const std::vector<std::string> tables = PublishableTables(session);
  if (tables.empty()) {
    // Nothing to decode; give the lock back for a while (another replica
    // may be configured with tables that can be published).
    Pause(options_.election_retry * kUnavailableBackoff);
    return absl::FailedPreconditionError("no cached table can be published");
  }
  db::LogicalStreamOptions so;
  so.dsn = dsn;  // the lock session's server: the slot is where the lock is
  so.publication = options_.publication;
  so.tables = tables;
  so.application_name = absl::StrCat("poolside-cache-slot/", options_.database);
  so.connect_timeout = options_.connect_timeout;
  // Frequent status updates: the server sends its next keepalive (which is
  // how the stream learns that it has decoded everything up to the WAL's
  // end between transactions) only after the previous one was answered.
  so.status_interval = absl::Milliseconds(20);
  // Fences (token_fence.h) arrive as transactional messages.
  so.messages = true;
  absl::StatusOr<std::unique_ptr<db::LogicalStream>> stream = db::LogicalStream::Open(so);
  if (!stream.ok()) {
    if (stream.status().code() == absl::StatusCode::kFailedPrecondition && on_unavailable_) {
      on_unavailable_(stream.status());
    }
    return stream.status();
  }
  absl::BitGen bits;
  RelayHeader header;
  header.holder = absl::Uniform<uint64_t>(bits, 1, std::numeric_limits<uint64_t>::max());
  header.seq = 1;
  {
    absl::MutexLock lock(&mu_);
    stats_.stream = header.holder;
  }

  // Samples of the server's WAL position (read with each NOTIFY) and when:
  // how long ago the server was where the stream is now.
  std::deque<std::pair<absl::Time, db::Lsn>> wal;
  auto send = [&](RelayHeader::Kind kind, const Pending& pending, int64_t oldest_commit,
                  const std::vector<uint32_t>& xids, bool xids_complete) -> absl::Status {
    header.kind = kind;
    header.through =
        kind == RelayHeader::kHello ? (*stream)->start_lsn() : (*stream)->delivered_lsn();
    header.oldest_commit_micros = oldest_commit;
    const absl::Time now = absl::Now();
    while (!wal.empty() && wal.front().second <= header.through) wal.pop_front();
    const absl::Duration lag = wal.empty() ? absl::ZeroDuration() : now - wal.front().first;
    header.lagging = lag > options_.max_lag;
    std::vector<RelayTable> tables;
    uint64_t rows = 0;
    for (const auto& [name, t] : pending) {
      RelayTable out;
      out.name = name;
      out.change = t.definition ? RelayTable::kDefinition
                   : t.whole    ? RelayTable::kWhole
                                : RelayTable::kRows;
      if (out.change == RelayTable::kRows) {
        out.rows.assign(t.rows.begin(), t.rows.end());
        std::sort(out.rows.begin(), out.rows.end());
        rows += out.rows.size();
      }
      tables.push_back(std::move(out));
    }
    // Its transactions, for replicas that invalidated some of them already
    // (their own writes: Invalidation skips what those covered).
    if (kind == RelayHeader::kChanges && xids_complete && !xids.empty() &&
        xids.size() <= kMaxRelayXids) {
      header.xids = xids;
    }
    const std::vector<std::string> payloads = EncodeRelay(header, tables);
    header.xids.reset();
    absl::StatusOr<std::optional<db::Lsn>> at = Notify(session, payloads, xids);
    // Not visible yet: the committing backends are between their commit
    // record and leaving the proc array (or waiting for a synchronous
    // standby). No wait primitive exists for that; poll briefly.
    absl::Duration retry = absl::Microseconds(200);
    const absl::Time give_up = absl::Now() + kMaxInvisible;
    while (at.ok() && !at->has_value()) {
      {
        absl::MutexLock lock(&mu_);
        ++stats_.visibility_retries;
      }
      if (absl::Now() >= give_up) {
        return absl::DeadlineExceededError(absl::StrCat(
            "decoded transactions stayed invisible to new snapshots for ",
            absl::FormatDuration(kMaxInvisible), " (a synchronous standby not answering?)"));
      }
      if (!Pause(retry)) return absl::CancelledError("stopping");
      retry = std::min(retry * 2, absl::Milliseconds(20));
      at = Notify(session, payloads, xids);
    }
    if (!at.ok()) return at.status();
    header.seq += payloads.size();
    wal.emplace_back(now, **at);
    if (wal.size() > 256) wal.pop_front();
    if (kind != RelayHeader::kHello) (*stream)->Confirm(header.through);
    absl::MutexLock lock(&mu_);
    stats_.relayed_lsn = header.through;
    stats_.lag = lag;
    stats_.payloads += payloads.size();
    if (!pending.empty()) {
      ++stats_.batches;
      stats_.tables += pending.size();
      stats_.rows += rows;
    }
    return absl::OkStatus();
  };

  // Transactions committed but not yet visible when the stream began: those
  // before its start are never decoded, so the hello (whose flush must come
  // after them) waits for them like a batch would.
  std::vector<uint32_t> xids;
  {
    absl::StatusOr<v1::ResultSet> committing =
        RunOwnStatement(session,
                        "SELECT (x::text::int8 & 4294967295) FROM "
                        "pg_catalog.pg_snapshot_xip(pg_catalog.pg_current_snapshot()) AS x "
                        "WHERE pg_catalog.pg_xact_status(x) = 'committed'",
                        {}, absl::Now() + absl::Seconds(10));
    if (!committing.ok()) return committing.status();
    for (const v1::Row& row : committing->rows()) {
      xids.push_back(static_cast<uint32_t>(row.values(0).int64_value()));
    }
  }
  if (absl::Status s = send(RelayHeader::kHello, Pending(), 0, xids, false); !s.ok()) return s;
  telemetry::LogInfo("cache WAL stream started",
                     {{"database", options_.database},
                      {"slot", (*stream)->slot_name()},
                      {"start_lsn", db::FormatLsn((*stream)->start_lsn())},
                      {"tables", absl::StrJoin(tables, ",")}});
  absl::Time last_sent = absl::Now();
  absl::Time first_pending = absl::InfiniteFuture();
  Batch batch;
  Transaction txn;
  absl::Time primary_checked = absl::Now();
  while (!stopping_.HasBeenNotified()) {
    if (options_.current_dsn && absl::Now() >= primary_checked + kStopCheck) {
      primary_checked = absl::Now();
      absl::StatusOr<std::string> now = CurrentDsn();
      if (!now.ok() || *now != dsn) {
        RelayHeader down = header;
        down.kind = RelayHeader::kDown;
        (void)Notify(session, EncodeRelay(down, {}), {});
        return absl::UnavailableError(
            now.ok() ? "the primary moved to another server"
                     : absl::StrCat("no primary known: ", now.status().message()));
      }
    }
    absl::Time deadline = last_sent + options_.heartbeat;
    if (batch.due()) {
      // Between transactions, whatever is not already here can wait for the
      // next batch: look without waiting, but send no sooner than `batch`
      // after the last message. After a quiet spell a change goes at once;
      // under load changes gather for `batch`, so the relay's costs (a
      // NOTIFY transaction, its delivery to every replica, each replica's
      // work on it) are paid once per `batch`, not once per commit. Fences
      // alike: anyone may emit them, and so make the relay send as often as
      // a steady write load does, not more.
      deadline = txn.open ? first_pending + options_.batch : absl::Now();
      deadline = std::min(deadline, first_pending + options_.batch);
      deadline = std::max(deadline, last_sent + options_.batch);
    }
    deadline = std::min(deadline, absl::Now() + kStopCheck);
    absl::StatusOr<std::optional<db::LogicalEvent>> event = (*stream)->Next(deadline);
    if (!event.ok()) {
      // Tell the replicas at once rather than after max_lag of silence.
      RelayHeader down = header;
      down.kind = RelayHeader::kDown;
      (void)Notify(session, EncodeRelay(down, {}), {});
      return event.status();
    }
    if (event->has_value()) {
      const bool was_due = batch.due();
      Add(**event, &txn, &batch);
      if (!was_due && batch.due()) first_pending = absl::Now();
      if (!batch.due() || absl::Now() < first_pending + options_.batch) continue;
    }
    const absl::Time now = absl::Now();
    const bool changes = !batch.tables.empty();
    if (!batch.due() && now < last_sent + options_.heartbeat) continue;
    if (batch.due() && now < last_sent + options_.batch) continue;
    if (absl::Status s = send(changes ? RelayHeader::kChanges : RelayHeader::kHeartbeat,
                              batch.tables, batch.oldest_commit, batch.xids, batch.xids_complete);
        !s.ok()) {
      return s;
    }
    if (batch.fence) {
      absl::MutexLock lock(&mu_);
      ++stats_.fence_relays;
    }
    batch = Batch{};
    txn.in_batch = false;
    first_pending = absl::InfiniteFuture();
    last_sent = absl::Now();
  }
  return absl::CancelledError("stopping");
}

}  // namespace poolside::query
