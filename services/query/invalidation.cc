#include "services/query/invalidation.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/synchronization/mutex.h"
#include "common/db/pgoutput_decoder.h"
#include "common/telemetry/log.h"
#include "common/telemetry/trace.h"
#include "services/query/relay_message.h"
#include "services/query/result_sinks.h"
#include "services/query/row_keys.h"
#include "services/query/token_fence.h"
#include "services/query/wal_relay.h"

namespace poolside::query {
namespace {

// Advisory lock key serializing trigger installation across replicas.
constexpr int64_t kInstallLock = 0x706f6f6c73696465;  // "poolside"
// How often a "wal" listener reads again which cached tables are published.
constexpr absl::Duration kPublicationRefresh = absl::Seconds(5);
// How long the session found holding the relay's lock is trusted before
// pg_locks is asked again (a backend's pid may be reused once it is gone).
constexpr absl::Duration kHolderRecheck = absl::Seconds(5);
// Tags per sidecar Invalidate call (the sidecar bounds each request).
constexpr size_t kTagsPerInvalidate = 512;

// A sidecar call made from one of our own threads, waited for; tags in
// calls of at most kTagsPerInvalidate.
absl::Status InvalidateNow(CacheClient& client, const std::vector<std::string>& tags,
                           const std::string& source) {
  for (size_t i = 0; i < tags.size(); i += kTagsPerInvalidate) {
    struct Result {
      absl::Notification done;
      absl::Status status;
    };
    auto result = std::make_shared<Result>();
    std::vector<std::string> part(tags.begin() + i,
                                  tags.begin() + std::min(tags.size(), i + kTagsPerInvalidate));
    client.Invalidate(std::move(part), false, source, absl::Seconds(2), [result](absl::Status s) {
      result->status = std::move(s);
      result->done.Notify();
    });
    result->done.WaitForNotification();  // the client bounds the call
    if (!result->status.ok()) return result->status;
  }
  return absl::OkStatus();
}

}  // namespace

// What a burst of notifications asks the listener to do, applied at once.
struct Invalidation::Applying {
  std::vector<std::string> tags;
  std::vector<std::string> forget;  // tables whose definition changed
  uint64_t through = 0;             // the applied LSN to record afterwards
  std::optional<bool> lagging;
  std::vector<int64_t> commits;  // PostgreSQL micros: each batch's oldest commit
  bool relayed = false;          // any of it came from the WAL relay
};

Invalidation::Invalidation(
    const v1::QueryCacheConfig& config,
    const absl::flat_hash_map<std::string, std::unique_ptr<Database>>& databases, Sinks sinks)
    : config_(config),
      max_lag_(absl::Milliseconds(config.wal().max_lag_ms())),
      near_(sinks.near),
      client_(sinks.client),
      plans_(sinks.plans),
      sidecar_result_(std::move(sinks.sidecar_result)),
      notifications_(sinks.notifications),
      flushes_(sinks.flushes) {
  const InvalidationMode mode =
      config_.invalidation() == "trigger" ? InvalidationMode::kTrigger : InvalidationMode::kWal;
  for (const auto& [name, db] : databases) {
    auto state = std::make_unique<DatabaseInvalidation>();
    state->db = db.get();
    state->mode.store(mode);
    dbs_.emplace(name, std::move(state));
  }
  for (const v1::CachedTables& t : config_.tables()) {
    auto it = dbs_.find(t.database());
    if (it == dbs_.end()) continue;  // rejected by config validation
    it->second->tables.assign(t.tables().begin(), t.tables().end());
    it->second->listens = true;
  }
}

Invalidation::~Invalidation() { Stop(); }

void Invalidation::Stop() {
  if (!stopping_.HasBeenNotified()) stopping_.Notify();
  for (std::thread& t : threads_) t.join();
  threads_.clear();
  for (auto& [name, state] : dbs_) {
    state->relay.reset();  // drops the slots, releases the locks
    state->token_fence.reset();
  }
  // Reads waiting for their min_lsn are told it was not reached.
  waiters_.reset();
}

absl::Status Invalidation::CheckWal(absl::Time deadline) {
  for (auto& [name, state] : dbs_) {
    if (!state->listens || state->mode.load() != InvalidationMode::kWal) continue;
    absl::StatusOr<std::string> dsn = state->db->AdminDsn();
    db::ConnectionOptions o;
    o.dsn = dsn.value_or("");
    o.application_name = absl::StrCat("poolside-listener/", name);
    o.connect_timeout = std::max(absl::Seconds(1), deadline - absl::Now());
    absl::StatusOr<std::unique_ptr<db::Connection>> conn =
        dsn.ok() ? db::Connection::Open(o)
                 : absl::StatusOr<std::unique_ptr<db::Connection>>(dsn.status());
    absl::StatusOr<bool> logical =
        conn.ok() ? WalLevelIsLogical(**conn, deadline) : absl::StatusOr<bool>(conn.status());
    if (!logical.ok()) {
      telemetry::LogWarning(
          "cannot check wal_level now; the cache's listener checks it when it connects",
          {{"database", name}, {"error", std::string(logical.status().message())}});
      continue;
    }
    if (*logical) continue;
    const std::string why = absl::StrCat(
        "database ", name,
        ": cache.invalidation is \"wal\" but its server's wal_level is not logical; set "
        "wal_level = logical (a server restart), or cache.walUnavailable to \"trigger\" "
        "(NOTIFY triggers: every writer of a cached table pays, commits serialize) or "
        "\"bypass\" (its reads are not cached)");
    if (config_.wal_unavailable() == "fail") return absl::FailedPreconditionError(why);
    OnWalUnavailable(state.get(), absl::FailedPreconditionError(why));
  }
  return absl::OkStatus();
}

void Invalidation::OnWalUnavailable(DatabaseInvalidation* state, const absl::Status& why) {
  if (state->mode.load() != InvalidationMode::kWal) return;
  // "fail" can only stop the start; found later, it bypasses.
  const InvalidationMode mode =
      config_.wal_unavailable() == "trigger" ? InvalidationMode::kTrigger : InvalidationMode::kOff;
  state->mode.store(mode);
  state->stream.store(0);
  state->mode_changed.store(true);
  state->MarkSuspect();
  state->SetNote(std::string(why.message().substr(0, 300)));
  telemetry::LogError(mode == InvalidationMode::kTrigger
                          ? "falling back to trigger invalidation (cache.walUnavailable); "
                            "writers of cached tables now pay for NOTIFY"
                          : "reads of this database bypass the cache (cache.walUnavailable)",
                      {{"database", state->db->name()}, {"why", std::string(why.message())}});
}

void Invalidation::Start() {
  const v1::WalInvalidationConfig& wal = config_.wal();
  for (auto& [name, state] : dbs_) {
    if (!state->listens) continue;
    if (state->mode.load() == InvalidationMode::kWal) {
      WalRelay::Options o;
      o.database = name;
      o.dsn = state->db->config().dsn();
      // With replicas, where the primary is now: decoding, LISTEN and NOTIFY
      // work on a primary only.
      o.current_dsn = [db = state->db] { return db->AdminDsn(); };
      o.channel = config_.channel();
      o.publication = wal.publication();
      o.tables = state->tables;
      o.batch = absl::Milliseconds(wal.batch_ms());
      o.heartbeat = absl::Milliseconds(wal.heartbeat_ms());
      o.election_retry = absl::Milliseconds(wal.election_retry_ms());
      o.max_lag = absl::Milliseconds(wal.max_lag_ms());
      o.max_rows_per_table = wal.max_rows_per_table();
      o.connect_timeout = absl::Milliseconds(state->db->config().pool().connect_timeout_ms());
      DatabaseInvalidation* s = state.get();
      state->relay = std::make_unique<WalRelay>(
          std::move(o), [this, s](const absl::Status& why) { OnWalUnavailable(s, why); });
      state->relay->Start();
      TokenFence::Options f;
      f.database = name;
      f.dsn = state->db->config().dsn();
      f.current_dsn = [db = state->db] { return db->AdminDsn(); };
      f.prefix = WalRelay::FencePrefix(wal.publication(), config_.channel());
      f.connect_timeout = absl::Milliseconds(state->db->config().pool().connect_timeout_ms());
      state->token_fence = std::make_unique<TokenFence>(std::move(f));
      state->token_fence->Start();
    }
    DatabaseInvalidation* s = state.get();
    threads_.emplace_back([this, s] { Listen(s); });
  }
  // Flushes databases without a listener at start and after a lost
  // invalidation (listening databases do this in their own thread).
  threads_.emplace_back([this] {
    while (!stopping_.HasBeenNotified()) {
      for (auto& [name, state] : dbs_) {
        if (stopping_.HasBeenNotified()) break;
        if (!state->listens && state->flushed_epoch.load() != state->suspect_epoch.load()) {
          FlushDatabase(state.get(), "resume");
        }
      }
      stopping_.WaitForNotificationWithTimeout(absl::Milliseconds(200));
    }
  });
}

DatabaseInvalidation* Invalidation::Of(const Database& db) const {
  auto it = dbs_.find(db.name());
  return it == dbs_.end() ? nullptr : it->second.get();
}

bool Invalidation::Ready(absl::string_view database) const {
  auto it = dbs_.find(database);
  if (it == dbs_.end()) return false;
  return !NotReady(*it->second).has_value();
}

uint64_t Invalidation::ReflectedLsn(const Database& db, uint64_t min_lsn) const {
  const DatabaseInvalidation* state = Of(db);
  if (state == nullptr || state->mode.load() != InvalidationMode::kWal ||
      NotReady(*state).has_value()) {
    return min_lsn;
  }
  return std::max(state->applied_lsn.load(), min_lsn);
}

void Invalidation::WaitForLsn(DatabaseInvalidation* state, uint64_t lsn, absl::Time deadline,
                              std::function<void(bool)> then) {
  if (waiters_ == nullptr) {
    then(false);
    return;
  }
  waiters_->Wait(&state->applied_lsn, lsn, deadline, std::move(then));
}

bool Invalidation::FlushDatabase(DatabaseInvalidation* state, const std::string& source) {
  // A flush covers commits no position names: fills from replicas read the
  // primary until the stream's next position.
  state->fence_opened.fetch_add(1);
  const uint64_t epoch = state->suspect_epoch.load();
  if (near_ != nullptr) near_->Invalidate({DatabaseTag(state->db->name())});
  absl::Status s = InvalidateNow(*client_, {DatabaseTag(state->db->name())}, source);
  // Again: see the class comment.
  if (near_ != nullptr) near_->Invalidate({DatabaseTag(state->db->name())});
  if (!s.ok()) {
    sidecar_result_(false);
    return false;
  }
  sidecar_result_(true);
  flushes_->fetch_add(1, std::memory_order_relaxed);
  state->Flushed(epoch);
  return true;
}

bool Invalidation::HolderSession(DatabaseInvalidation* state, db::Connection& conn, int pid) {
  const absl::Time now = absl::Now();
  if (pid == state->holder_pid && now - state->holder_checked < kHolderRecheck) return true;
  const int64_t key = WalRelay::LockKey(config_.wal().publication(), config_.channel());
  google::protobuf::RepeatedPtrField<v1::Value> params;
  params.Add()->set_int64_value(static_cast<int64_t>(static_cast<uint64_t>(key) >> 32));
  params.Add()->set_int64_value(static_cast<int64_t>(static_cast<uint64_t>(key) & 0xffffffffu));
  params.Add()->set_int64_value(pid);
  absl::StatusOr<v1::ResultSet> rs =
      RunOwnStatement(conn,
                      "SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND granted "
                      "AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = "
                      "pg_catalog.current_database()) AND classid::int8 = $1 AND objid::int8 = $2 "
                      "AND objsubid = 1 AND pid = $3",
                      params, now + absl::Seconds(5));
  if (!rs.ok() || rs->rows_size() != 1) return false;
  state->holder_pid = pid;
  state->holder_checked = now;
  return true;
}

void Invalidation::OnRelayed(DatabaseInvalidation* state, db::Connection& conn,
                             const db::Notification& n, Applying* a) {
  absl::StatusOr<RelayMessage> m = DecodeRelay(n.payload);
  if (!m.ok()) {
    telemetry::LogWarning("ignoring a malformed message on the cache's channel",
                          {{"database", state->db->name()},
                           {"pid", absl::StrCat(n.backend_pid)},
                           {"error", std::string(m.status().message())}});
    return;
  }
  const std::string& db = state->db->name();
  const absl::Time now = absl::Now();
  // Invalidations are taken from anyone (one too many costs a miss)...
  for (const RelayTable& t : m->tables) {
    // ...except a table's change whose every transaction had finished when
    // a write through this replica invalidated the table itself, during
    // this message's stream (its entries since were read later:
    // OwnWriteCover). A sender may name transactions for its own entries
    // only, so skipping cannot hide another message's. Definitions always
    // go (their plans too).
    if (t.change != RelayTable::kDefinition && m->header.xids.has_value() &&
        state->mode.load() == InvalidationMode::kWal &&
        state->own_cover.Covers(t.name, *m->header.xids, m->header.holder, now)) {
      state->own_write_skips.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    switch (t.change) {
      case RelayTable::kRows:
        for (uint64_t row : t.rows) a->tags.push_back(RowTag(db, t.name, row));
        a->tags.push_back(TableScanTag(db, t.name));
        break;
      case RelayTable::kDefinition:
        a->forget.push_back(t.name);
        // DDL (the event trigger's): every entry of the database.
        a->tags.push_back(t.name == kRelayAllTables ? DatabaseTag(db) : TableTag(db, t.name));
        break;
      case RelayTable::kWhole:
        a->tags.push_back(TableTag(db, t.name));
        break;
    }
  }
  a->relayed = true;
  // ...but what the stream has covered only from the holder's own session.
  if (state->mode.load() != InvalidationMode::kWal) return;
  if (!HolderSession(state, conn, n.backend_pid)) return;
  state->relay_messages.fetch_add(1, std::memory_order_relaxed);
  const RelayHeader& h = m->header;
  const uint64_t current = state->stream.load();
  if (h.kind == RelayHeader::kDown) {
    if (h.holder == current) {
      Apply(state, a);
      state->stream.store(0);
    }
    return;
  }
  // A stream begins at its slot's consistent point: what committed before
  // was decoded by nobody, so the database's entries go. The same when a
  // stream's messages arrive that this listener did not see begin (unless
  // it has just subscribed and flushed: then it saw everything since).
  const bool new_stream = h.kind == RelayHeader::kHello || (current != 0 && h.holder != current) ||
                          (current == 0 && !state->fresh);
  if (new_stream) {
    Apply(state, a);
    state->MarkSuspect();
    state->stream.store(0);
    FlushDatabase(state, "stream");  // failed: stays suspect, the listener retries
    state->streams_seen.fetch_add(1, std::memory_order_relaxed);
    // The new holder may have published more tables.
    state->published_at = absl::InfinitePast();
  }
  state->fresh = false;
  state->stream.store(h.holder);
  state->last_heard_micros.store(absl::ToUnixMicros(absl::Now()));
  if (h.final) {
    a->through = std::max(a->through, h.through);
    a->lagging = h.lagging;
  }
  if (h.oldest_commit_micros != 0) a->commits.push_back(h.oldest_commit_micros);
}

void Invalidation::Apply(DatabaseInvalidation* state, Applying* a) {
  const std::string& db = state->db->name();
  // The openings `through` (sent after everything it covers) closes.
  const uint64_t opened = state->fence_opened.load();
  if (a->through != 0) {
    uint64_t seen = state->fence_lsn.load();
    while (seen < a->through && !state->fence_lsn.compare_exchange_weak(seen, a->through)) {
    }
  } else if (!a->tags.empty() || !a->forget.empty()) {
    state->fence_opened.fetch_add(1);
  }
  for (const std::string& table : a->forget) {
    if (table == kRelayAllTables) {
      plans_->ForgetDatabase(db);
    } else {
      plans_->Forget(db, table);
    }
  }
  if (!a->tags.empty()) {
    std::sort(a->tags.begin(), a->tags.end());
    a->tags.erase(std::unique(a->tags.begin(), a->tags.end()), a->tags.end());
    // A trace of its own: no caller's request caused it.
    telemetry::Span span = telemetry::StartSpan("cache.invalidate", telemetry::SpanKind::kInternal,
                                                telemetry::SpanContext());
    if (span.recording()) {
      span.SetAttribute("db.namespace", db);
      span.SetAttribute("poolside.cache.source", a->relayed ? "wal" : "notify");
      span.SetAttribute("poolside.cache.tags", a->tags.size());
      if (a->through != 0) span.SetAttribute("poolside.cache.through_lsn", a->through);
    }
    telemetry::ScopedSpanContext scope(span.context());  // the sidecar call is its child
    if (near_ != nullptr) near_->Invalidate(a->tags);
    absl::Status inv = InvalidateNow(*client_, a->tags, a->relayed ? "wal" : "notify");
    if (near_ != nullptr) near_->Invalidate(a->tags);  // see the class comment
    sidecar_result_(inv.ok());
    if (!inv.ok()) state->MarkSuspect();
    span.SetAttribute("poolside.cache.outcome", inv.ok() ? "invalidated" : "error");
    span.SetStatus(inv);
    span.End();
  }
  if (a->through != 0) {
    uint64_t closed = state->fence_closed.load();
    while (closed < opened && !state->fence_closed.compare_exchange_weak(closed, opened)) {
    }
  }
  if (a->through > state->applied_lsn.load()) {
    state->applied_lsn.store(a->through, std::memory_order_release);
    waiters_->Advance(&state->applied_lsn);
  }
  const absl::Time now = absl::Now();
  const absl::Duration bound = absl::Milliseconds(config_.wal().max_lag_ms());
  bool late = false;
  for (int64_t commit : a->commits) {
    const absl::Duration delay = now - db::TimeFromPostgresMicros(commit);
    state->delay.Observe(delay);
    late = late || delay > bound;
  }
  // Late here, or behind by the holder's own measure: bypass until neither.
  if (late) {
    state->lagging.store(true);
  } else if (a->lagging.has_value()) {
    state->lagging.store(*a->lagging);
  }
  *a = Applying{};
}

// One subscription of a database's listener: its own connection, LISTENing
// on the channel, and the cached tables it found.
struct Invalidation::Subscription {
  InvalidationMode mode = InvalidationMode::kWal;
  std::string dsn;  // the server listened on: the primary when subscribed
  std::unique_ptr<db::Connection> conn;
  std::vector<std::string> resolved;   // as DDL names them
  std::vector<std::string> qualified;  // "schema.table", as plans and NOTIFY name them
  bool warned_publish = false;
};

void Invalidation::Listen(DatabaseInvalidation* state) {
  Database* db = state->db;
  absl::Duration backoff = absl::Milliseconds(100);
  auto pause = [&] {
    stopping_.WaitForNotificationWithTimeout(backoff);
    // Bounded low: while the listener is away, the database's reads bypass the cache.
    backoff = std::min(backoff * 2, absl::Seconds(1));
  };
  while (!stopping_.HasBeenNotified()) {
    state->subscribed.store(false);
    state->stream.store(0);
    state->mode_changed.store(false);
    Subscription sub;
    sub.mode = state->mode.load();
    if (sub.mode == InvalidationMode::kOff) {
      stopping_.WaitForNotificationWithTimeout(absl::Seconds(1));
      continue;
    }
    const Subscribed subscribed = Subscribe(state, &sub);
    if (subscribed == Subscribed::kModeChanged) continue;
    if (subscribed == Subscribed::kFailed) {
      pause();
      continue;
    }
    // After LISTEN: whatever was written before the flush is gone from the
    // cache, and whatever is written after it is notified.
    while (!stopping_.HasBeenNotified() && !FlushDatabase(state, "reconnect")) pause();
    if (stopping_.HasBeenNotified()) break;
    state->fresh = true;
    state->holder_pid = 0;
    state->subscribed.store(true);
    backoff = absl::Milliseconds(100);
    telemetry::LogInfo("cache invalidation listener subscribed",
                       {{"database", db->name()},
                        {"channel", config_.channel()},
                        {"mode", InvalidationModeName(sub.mode)},
                        {"tables", absl::StrJoin(sub.resolved, ",")}});
    Receive(state, &sub);
    state->subscribed.store(false);
    state->stream.store(0);
    if (!stopping_.HasBeenNotified()) {
      state->MarkSuspect();
      if (!state->mode_changed.load()) {
        telemetry::LogWarning(
            "cache invalidation listener lost its connection; reads of this "
            "database bypass the cache until it resubscribes",
            {{"database", db->name()}});
        pause();
      }
    }
  }
}

Invalidation::Subscribed Invalidation::Subscribe(DatabaseInvalidation* state, Subscription* sub) {
  Database* db = state->db;
  // The primary (LISTEN cannot run on a hot standby, and NOTIFY reaches the
  // sessions of its own server only); Receive() ends when it moves.
  absl::StatusOr<std::string> dsn = db->AdminDsn();
  if (!dsn.ok()) {
    telemetry::LogWarning(
        "cache invalidation listener: no primary known; reads of this database bypass the cache",
        {{"database", db->name()}, {"error", std::string(dsn.status().message())}});
    return Subscribed::kFailed;
  }
  sub->dsn = *dsn;
  db::ConnectionOptions options;
  options.dsn = *dsn;
  options.application_name = absl::StrCat("poolside-listener/", db->name());
  options.connect_timeout = absl::Milliseconds(db->config().pool().connect_timeout_ms());
  absl::StatusOr<std::unique_ptr<db::Connection>> conn = db::Connection::Open(options);
  if (!conn.ok()) {
    telemetry::LogWarning(
        "cache invalidation listener cannot connect; reads of this "
        "database bypass the cache",
        {{"database", db->name()}, {"error", std::string(conn.status().message())}});
    return Subscribed::kFailed;
  }
  sub->conn = *std::move(conn);
  db::Connection& c = *sub->conn;
  if (sub->mode == InvalidationMode::kWal) {
    absl::StatusOr<bool> logical = WalLevelIsLogical(c, absl::Now() + absl::Seconds(10));
    if (!logical.ok()) return Subscribed::kFailed;
    if (!*logical) {
      OnWalUnavailable(state, absl::FailedPreconditionError(absl::StrCat(
                                  "database ", db->name(),
                                  ": its server's wal_level is not logical (cache.invalidation "
                                  "is \"wal\")")));
      return Subscribed::kModeChanged;
    }
  }
  for (const std::string& table : state->tables) {
    google::protobuf::RepeatedPtrField<v1::Value> params;
    params.Add()->set_text_value(table);
    absl::StatusOr<v1::ResultSet> rs =
        RunOwnStatement(c,
                        "SELECT c.oid::regclass::text, n.nspname || '.' || c.relname "
                        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE c.oid = $1::text::regclass",
                        params, absl::Now() + absl::Seconds(10));
    if (rs.ok() && rs->rows_size() == 1) {
      sub->resolved.push_back(rs->rows(0).values(0).text_value());
      sub->qualified.push_back(rs->rows(0).values(1).text_value());
    } else {
      telemetry::LogError("cached table not found; its writes are not seen by the cache",
                          {{"database", db->name()},
                           {"table", table},
                           {"error", std::string(rs.status().message())}});
    }
  }
  // Trigger mode: the triggers first (idempotent), then LISTEN, then the flush.
  if (sub->mode == InvalidationMode::kTrigger) {
    if (absl::Status installed = InstallTriggers(c, sub->resolved); !installed.ok()) {
      telemetry::LogError("cannot install the invalidation triggers; retrying",
                          {{"database", db->name()}, {"error", std::string(installed.message())}});
      return Subscribed::kFailed;
    }
  }
  if (absl::Status s = c.Listen(config_.channel(), absl::Now() + absl::Seconds(10)); !s.ok()) {
    return Subscribed::kFailed;
  }
  if (sub->mode == InvalidationMode::kTrigger) {
    absl::MutexLock lock(&state->watched_mu);
    state->watched.clear();
    state->watched.insert(sub->qualified.begin(), sub->qualified.end());
    return Subscribed::kYes;
  }
  // "wal": which cached tables the stream decodes (the holder publishes
  // them); read after LISTEN, so a table published later is only counted
  // once the stream that publishes it has been seen.
  state->published_at = absl::InfinitePast();
  if (!RefreshPublished(state, sub)) return Subscribed::kFailed;
  NoteLeftoverTriggers(state, c);
  return Subscribed::kYes;
}

absl::Status Invalidation::InstallTriggers(db::Connection& conn,
                                           const std::vector<std::string>& tables) {
  const std::string channel_literal =
      absl::StrCat("'", absl::StrReplaceAll(config_.channel(), {{"'", "''"}}), "'");
  std::vector<std::string> ddl = {
      absl::StrCat("SELECT pg_advisory_xact_lock(", kInstallLock, ")"),
      "CREATE OR REPLACE FUNCTION public.poolside_notify_write() RETURNS trigger "
      "LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify(TG_ARGV[0], TG_TABLE_SCHEMA || '.' || "
      "TG_TABLE_NAME); RETURN NULL; END $$"};
  for (const std::string& table : tables) {
    ddl.push_back(absl::StrCat(
        "CREATE OR REPLACE TRIGGER poolside_invalidate AFTER INSERT OR UPDATE OR DELETE OR "
        "TRUNCATE ON ",
        table, " FOR EACH STATEMENT EXECUTE FUNCTION public.poolside_notify_write(",
        channel_literal, ")"));
  }
  std::vector<db::Statement> statements(ddl.size());
  std::vector<db::Statement*> ptrs;
  for (size_t i = 0; i < ddl.size(); ++i) {
    statements[i].sql = ddl[i];
    ptrs.push_back(&statements[i]);
  }
  return conn.RunTransaction("BEGIN", ptrs, absl::Now() + absl::Seconds(30), nullptr);
}

void Invalidation::NoteLeftoverTriggers(DatabaseInvalidation* state, db::Connection& conn) {
  google::protobuf::RepeatedPtrField<v1::Value> none;
  absl::StatusOr<v1::ResultSet> triggers =
      RunOwnStatement(conn,
                      "SELECT string_agg(tgrelid::regclass::text, ', ') FROM pg_catalog.pg_trigger "
                      "WHERE tgname = 'poolside_invalidate'",
                      none, absl::Now() + absl::Seconds(10));
  if (!triggers.ok() || triggers->rows_size() != 1 ||
      triggers->rows(0).values(0).text_value().empty()) {
    return;
  }
  const std::string on = triggers->rows(0).values(0).text_value();
  state->SetNote(absl::StrCat("poolside_invalidate triggers still installed on ", on,
                              ": writers pay for them; drop them once no replica uses "
                              "cache.invalidation \"trigger\""));
  telemetry::LogWarning(
      "NOTIFY triggers of trigger mode are still installed; writers of "
      "these tables pay for them",
      {{"database", state->db->name()}, {"tables", on}});
}

bool Invalidation::RefreshPublished(DatabaseInvalidation* state, Subscription* sub) {
  db::Connection& conn = *sub->conn;
  size_t watched_now;
  {
    absl::MutexLock lock(&state->watched_mu);
    watched_now = state->watched.size();
  }
  if (watched_now < sub->qualified.size() || state->published_at == absl::InfinitePast()) {
    // This replica's cached tables are decoded whoever holds the slot;
    // until the publication exists (its first holder creates it), again
    // at each refresh.
    if (absl::Status s = PublishTables(conn, config_.wal().publication(), state->tables,
                                       absl::Now() + absl::Seconds(10));
        !s.ok() && !sub->warned_publish) {
      sub->warned_publish = true;
      telemetry::LogWarning(
          "cannot add the cached tables to the publication; reads of "
          "those not in it bypass the cache",
          {{"database", state->db->name()}, {"error", std::string(s.message())}});
    }
  }
  google::protobuf::RepeatedPtrField<v1::Value> params;
  params.Add()->set_text_value(config_.wal().publication());
  absl::StatusOr<v1::ResultSet> rs =
      RunOwnStatement(conn,
                      "SELECT schemaname || '.' || tablename FROM pg_catalog.pg_publication_tables "
                      "WHERE pubname = $1",
                      params, absl::Now() + absl::Seconds(10));
  if (!rs.ok()) return false;
  absl::flat_hash_set<std::string> published;
  for (const v1::Row& row : rs->rows()) published.insert(row.values(0).text_value());
  absl::MutexLock lock(&state->watched_mu);
  state->watched.clear();
  for (const std::string& t : sub->qualified) {
    if (published.contains(t)) state->watched.insert(t);
  }
  state->published_at = absl::Now();
  return true;
}

void Invalidation::Receive(DatabaseInvalidation* state, Subscription* sub) {
  db::Connection& conn = *sub->conn;
  absl::Time last_ping = absl::Now();
  while (!stopping_.HasBeenNotified() && !state->mode_changed.load()) {
    std::vector<db::Notification> got;
    absl::Status s = conn.AwaitNotifications(absl::Now() + absl::Milliseconds(250), &got);
    if (!s.ok()) return;
    if (!got.empty()) {
      notifications_->fetch_add(got.size(), std::memory_order_relaxed);
      Applying a;
      for (const db::Notification& n : got) {
        if (IsRelayPayload(n.payload)) {
          OnRelayed(state, conn, n, &a);
        } else {
          // A trigger's: the table's name.
          a.tags.push_back(TableTag(state->db->name(), n.payload));
        }
      }
      Apply(state, &a);
      if (conn.broken()) return;
    }
    if (state->flushed_epoch.load() != state->suspect_epoch.load()) {
      FlushDatabase(state, "resume");
    }
    if (sub->mode == InvalidationMode::kWal) {
      bool complete;
      {
        absl::MutexLock lock(&state->watched_mu);
        complete = state->watched.size() == sub->qualified.size();
      }
      // Sooner while some cached table is not published yet (its
      // publication may not exist before the first holder's stream).
      const absl::Duration every = complete ? kPublicationRefresh : absl::Seconds(1);
      if (absl::Now() - state->published_at > every && !RefreshPublished(state, sub)) return;
    }
    if (absl::Now() - last_ping > absl::Seconds(5)) {
      if (!conn.Ping(absl::Now() + absl::Seconds(5))) return;
      last_ping = absl::Now();
    }
    // The primary moved (a switchover or failover): this server's NOTIFYs
    // are no longer the ones that matter; subscribe again where it is.
    if (absl::StatusOr<std::string> now = state->db->AdminDsn(); !now.ok() || *now != sub->dsn) {
      return;
    }
  }
}

std::vector<InvalidationStatus> Invalidation::Statuses() const {
  std::vector<InvalidationStatus> out;
  for (const auto& [name, state] : dbs_) {
    if (!state->listens) continue;
    out.push_back(state->Status(name, max_lag_));
  }
  std::sort(out.begin(), out.end(), [](const InvalidationStatus& a, const InvalidationStatus& b) {
    return a.database < b.database;
  });
  return out;
}

}  // namespace poolside::query
