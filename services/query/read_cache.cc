#include "services/query/read_cache.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/db/connection.h"
#include "common/db/pgoutput_decoder.h"
#include "common/telemetry/log.h"
#include "common/telemetry/trace.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "services/query/owned_statement.h"
#include "services/query/relay_message.h"

namespace poolside::query {
namespace {

// Keys longer than this bypass the cache (the sidecar's default key limit is 4096).
constexpr size_t kMaxKeyBytes = 4000;
// Keys of results read for read-only callers (CallAccess) start with this.
constexpr char kReadOnlyScope[] = "q1ro|";
// Advisory lock key serializing trigger installation across replicas.
constexpr int64_t kInstallLock = 0x706f6f6c73696465;  // "poolside"
// How often a "wal" listener reads again which cached tables are published.
constexpr absl::Duration kPublicationRefresh = absl::Seconds(5);
// How long the session found holding the relay's lock is trusted before
// pg_locks is asked again (a backend's pid may be reused once it is gone).
constexpr absl::Duration kHolderRecheck = absl::Seconds(5);
// Tags per sidecar Invalidate call (the sidecar bounds each request).
constexpr size_t kTagsPerInvalidate = 512;

// How a database's cache learns of writes.
enum Mode : int { kWalMode = 0, kTriggerMode = 1, kOffMode = 2 };

const char* ModeName(int mode) {
  switch (mode) {
    case kWalMode:
      return "wal";
    case kTriggerMode:
      return "trigger";
    default:
      return "off";
  }
}

std::unique_ptr<NearCache> MakeNearCache(const v1::QueryCacheConfig& config) {
  const v1::NearCacheConfig& near = config.near();
  if (near.capacity_bytes() == 0) return nullptr;
  NearCache::Options options;
  options.capacity_bytes = near.capacity_bytes();
  if (near.shards() != 0) options.shards = near.shards();
  if (near.max_ttl_ms() != 0) options.max_ttl = absl::Milliseconds(near.max_ttl_ms());
  return std::make_unique<NearCache>(options);
}

SidecarBreaker::Options BreakerOptions(const v1::QueryCacheConfig& config) {
  SidecarBreaker::Options o;
  o.failure_threshold = config.failure_threshold();
  o.retry_after = absl::Milliseconds(config.retry_after_ms());
  o.target = config.target();
  return o;
}

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

// One statement on a connection of the listener's own.
absl::StatusOr<v1::ResultSet> QueryOwn(db::Connection& conn, const std::string& sql,
                                       const google::protobuf::RepeatedPtrField<v1::Value>& params,
                                       absl::Time deadline) {
  v1::ResultSet rs;
  ResultBudget budget{100000, 16 << 20};
  ResultSetSink sink(&rs, &budget);
  db::Statement s{sql, &params, &sink, deadline};
  if (absl::Status link = conn.RunIndependent({&s}); !link.ok()) return link;
  if (!s.status.ok()) return s.status;
  return rs;
}

}  // namespace

const char* ReadCache::BypassName(Bypass reason) {
  switch (reason) {
    case Bypass::kStream:
      return "stream";
    case Bypass::kLag:
      return "lag";
    case Bypass::kToken:
      return "token";
    case Bypass::kUnwatched:
      return "unwatched";
    case Bypass::kPlan:
      return "plan";
    case Bypass::kSidecar:
      return "sidecar";
    case Bypass::kKeySize:
      return "key_size";
    case Bypass::kOff:
      return "off";
    case Bypass::kCount:
      break;
  }
  return "unknown";
}

// A flight's read: a database query whose result fills the near cache and
// the sidecar and answers every read that joined.
struct ReadCache::Fill : SingleFlight::Flight {
  Database* db = nullptr;
  uint64_t generation = 0;       // the sidecar's at the lookup
  uint64_t near_generation = 0;  // the near cache's before the lookup; 0: no near fill
  bool keyed = false;
  std::vector<std::string> tags;
  absl::Duration ttl;
  absl::Duration stale;
  // Until Land(), which releases it (the work's `done` holds the fill).
  std::shared_ptr<OwnedStatement> work;
  // The trace of the call that started the flight (its query and fill).
  telemetry::SpanContext trace;
  // From the start to the end of the flight (its work's `done` holds it last).
  InFlight::Token in_flight;
};

struct ReadCache::DbState {
  Database* db = nullptr;
  std::vector<std::string> tables;  // configured
  bool listens = false;
  std::atomic<int> mode{kWalMode};
  // Set when `mode` changed: the listener subscribes again in the new mode.
  std::atomic<bool> mode_changed{false};
  // "schema.table" of the configured tables whose writes are seen (trigger
  // installed, or published): only reads of these tables alone are cached,
  // since a write to any other table (by a client outside poolside) would
  // never invalidate them.
  absl::Mutex watched_mu;
  absl::flat_hash_set<std::string> watched ABSL_GUARDED_BY(watched_mu);
  bool Watches(const std::vector<std::string>& tables) {
    absl::MutexLock lock(&watched_mu);
    for (const std::string& t : tables) {
      if (!watched.contains(t)) return false;
    }
    return true;
  }
  std::atomic<bool> subscribed{false};
  // Reads use the cache while flushed_epoch == suspect_epoch: every event
  // that may have left stale entries (start, a lost invalidation, a new
  // stream) raises suspect_epoch, and a confirmed flush of the database
  // catches up.
  std::atomic<uint64_t> suspect_epoch{1};
  std::atomic<uint64_t> flushed_epoch{0};
  // Writes through this replica so far (AfterWrite): a read does not join a
  // flight that began before the last of them.
  std::atomic<uint64_t> own_writes{0};

  // "wal" mode.
  std::unique_ptr<WalRelay> relay;
  std::unique_ptr<TokenFence> token_fence;
  // The stream whose messages are applied; 0 when none is.
  std::atomic<uint64_t> stream{0};
  // Every commit before it has been invalidated in the near cache and the
  // sidecar (or was committed before their last flush).
  std::atomic<uint64_t> applied_lsn{0};
  // The fence of fills read from a replica (ReplicaFillFence): every
  // invalidation this replica has applied or is applying is for a commit at
  // or before fence_lsn, except while fence_opened > fence_closed (an
  // invalidation or flush of unknown position since). Both are raised
  // before the invalidation is sent, so a fill whose lookup saw it reads
  // them raised.
  std::atomic<uint64_t> fence_lsn{0};
  std::atomic<uint64_t> fence_opened{0}, fence_closed{0};
  std::atomic<int64_t> last_heard_micros{0};  // unix micros, the holder's last message
  std::atomic<bool> lagging{false};
  std::atomic<uint64_t> streams_seen{0}, relay_messages{0};
  telemetry::Histogram delay;
  // Listener thread only.
  bool fresh = false;  // subscribed and flushed, no stream applied since
  int holder_pid = 0;
  absl::Time holder_checked = absl::InfinitePast();
  absl::Time published_at = absl::InfinitePast();

  absl::Mutex note_mu;
  std::string note ABSL_GUARDED_BY(note_mu);
  void SetNote(std::string n) {
    absl::MutexLock lock(&note_mu);
    note = std::move(n);
  }
};

// What a burst of notifications asks the listener to do, applied at once.
struct ReadCache::Applying {
  std::vector<std::string> tags;
  std::vector<std::string> forget;  // tables whose definition changed
  uint64_t through = 0;             // the applied LSN to record afterwards
  std::optional<bool> lagging;
  std::vector<int64_t> commits;  // PostgreSQL micros: each batch's oldest commit
  bool relayed = false;          // any of it came from the WAL relay
};

ReadCache::ReadCache(const v1::QueryCacheConfig& config, std::unique_ptr<CacheClient> client,
                     const absl::flat_hash_map<std::string, std::unique_ptr<Database>>& databases,
                     const v1::LimitsConfig& limits)
    : config_(config),
      limits_(limits),
      near_(MakeNearCache(config)),
      client_(std::move(client)),
      breaker_(BreakerOptions(config)),
      // Rows are invalidated by key only from the WAL.
      plans_(&in_flight_, [this](const Database& db) {
        const DbState* state = StateOf(db);
        return state != nullptr && state->mode.load() == kWalMode;
      }) {
  const int mode = config_.invalidation() == "trigger" ? kTriggerMode : kWalMode;
  for (const auto& [name, db] : databases) {
    auto state = std::make_unique<DbState>();
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

ReadCache::~ReadCache() {
  client_->StopWatching();
  stopping_.Notify();
  for (std::thread& t : threads_) t.join();
  for (auto& [name, state] : dbs_) {
    state->relay.reset();  // drops the slots, releases the locks
    state->token_fence.reset();
  }
  // Reads waiting for their min_lsn run on the database.
  waiters_.reset();
  // Sidecar callbacks, statements and flights reference this object.
  in_flight_.WaitIdle();
}

absl::Status ReadCache::CheckInvalidation(absl::Time deadline) {
  for (auto& [name, state] : dbs_) {
    if (!state->listens || state->mode.load() != kWalMode) continue;
    db::ConnectionOptions o;
    o.dsn = state->db->config().dsn();
    o.application_name = absl::StrCat("poolside-listener/", name);
    o.connect_timeout = std::max(absl::Seconds(1), deadline - absl::Now());
    absl::StatusOr<std::unique_ptr<db::Connection>> conn = db::Connection::Open(o);
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

void ReadCache::OnWalUnavailable(DbState* state, const absl::Status& why) {
  if (state->mode.load() != kWalMode) return;
  // "fail" can only stop the start; found later, it bypasses.
  const int mode = config_.wal_unavailable() == "trigger" ? kTriggerMode : kOffMode;
  state->mode.store(mode);
  state->stream.store(0);
  state->mode_changed.store(true);
  MarkSuspect(state);
  state->SetNote(std::string(why.message().substr(0, 300)));
  telemetry::LogError(mode == kTriggerMode
                          ? "falling back to trigger invalidation (cache.walUnavailable); "
                            "writers of cached tables now pay for NOTIFY"
                          : "reads of this database bypass the cache (cache.walUnavailable)",
                      {{"database", state->db->name()}, {"why", std::string(why.message())}});
}

void ReadCache::Start() {
  if (near_ != nullptr) {
    NearCache* near = near_.get();
    if (!client_->Watch([near](const CacheInvalidationEvent& e) { near->OnEvent(e); })) {
      telemetry::LogWarning(
          "the cache client cannot watch invalidations; the near cache stays off");
    }
  }
  const v1::WalInvalidationConfig& wal = config_.wal();
  for (auto& [name, state] : dbs_) {
    if (!state->listens) continue;
    if (state->mode.load() == kWalMode) {
      WalRelay::Options o;
      o.database = name;
      o.dsn = state->db->config().dsn();
      o.channel = config_.channel();
      o.publication = wal.publication();
      o.tables = state->tables;
      o.batch = absl::Milliseconds(wal.batch_ms());
      o.heartbeat = absl::Milliseconds(wal.heartbeat_ms());
      o.election_retry = absl::Milliseconds(wal.election_retry_ms());
      o.max_lag = absl::Milliseconds(wal.max_lag_ms());
      o.max_rows_per_table = wal.max_rows_per_table();
      o.connect_timeout = absl::Milliseconds(state->db->config().pool().connect_timeout_ms());
      DbState* s = state.get();
      state->relay = std::make_unique<WalRelay>(
          std::move(o), [this, s](const absl::Status& why) { OnWalUnavailable(s, why); });
      state->relay->Start();
      TokenFence::Options f;
      f.database = name;
      f.dsn = state->db->config().dsn();
      f.prefix = WalRelay::FencePrefix(wal.publication(), config_.channel());
      f.connect_timeout = absl::Milliseconds(state->db->config().pool().connect_timeout_ms());
      state->token_fence = std::make_unique<TokenFence>(std::move(f));
      state->token_fence->Start();
    }
    DbState* s = state.get();
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

ReadCache::DbState* ReadCache::StateOf(const Database& db) const {
  auto it = dbs_.find(db.name());
  return it == dbs_.end() ? nullptr : it->second.get();
}

std::optional<ReadCache::Bypass> ReadCache::NotReady(const DbState& s) const {
  const int mode = s.mode.load();
  if (mode == kOffMode) return Bypass::kOff;
  if (s.listens) {
    if (!s.subscribed.load()) return Bypass::kStream;
    if (mode == kWalMode) {
      if (s.stream.load() == 0) return Bypass::kStream;
      const int64_t silent = absl::ToUnixMicros(absl::Now()) - s.last_heard_micros.load();
      if (silent > int64_t{config_.wal().max_lag_ms()} * 1000) return Bypass::kStream;
      if (s.lagging.load()) return Bypass::kLag;
    }
  }
  if (s.flushed_epoch.load() != s.suspect_epoch.load()) return Bypass::kStream;
  return std::nullopt;
}

bool ReadCache::DatabaseReady(absl::string_view database) const {
  auto it = dbs_.find(database);
  if (it == dbs_.end()) return false;
  return !NotReady(*it->second).has_value();
}

void ReadCache::CountBypass(Bypass reason) const {
  counters_.bypass_by_reason[static_cast<int>(reason)].fetch_add(1, std::memory_order_relaxed);
}

bool ReadCache::Applies(const Database& db, const v1::ExecuteRequest& request,
                        const sql::Analysis& analysis) const {
  if (!request.has_cache()) return false;
  const v1::CachePolicy& p = request.cache();
  if (p.bypass() || p.ttl_ms() == 0) return false;
  // SELECT, VALUES or TABLE that writes nothing (not SHOW or EXPLAIN).
  if (analysis.kind != sql::StatementKind::kRead ||
      (analysis.command != "SELECT" && analysis.command != "VALUES")) {
    CountBypass(Bypass::kPlan);
    return false;
  }
  const DbState* state = StateOf(db);
  if (state == nullptr) return false;
  if (std::optional<Bypass> why = NotReady(*state)) {
    CountBypass(*why);
    return false;
  }
  return true;
}

uint64_t ReadCache::ReplicaFillFence(const DbState* state) const {
  if (state == nullptr || state->mode.load() != kWalMode) return UINT64_MAX;
  const uint64_t opened = state->fence_opened.load();
  if (state->fence_closed.load() < opened) return UINT64_MAX;
  return state->fence_lsn.load();
}

uint64_t ReadCache::ReflectedLsn(const Database& db, uint64_t min_lsn) const {
  const DbState* state = StateOf(db);
  if (state == nullptr || state->mode.load() != kWalMode || NotReady(*state).has_value()) {
    return min_lsn;
  }
  return std::max(state->applied_lsn.load(), min_lsn);
}

std::string ReadCache::KeyFor(const Database& db, const v1::ExecuteRequest& request,
                              bool read_only) const {
  std::string params;
  for (const v1::Value& v : request.params()) {
    const std::string one = v.SerializeAsString();
    absl::StrAppend(&params, one.size(), ":", one);
  }
  // scope|database|role|...: a prefix "q1|db|" still names every key of a
  // database (and scope), whatever the callers' roles.
  return absl::StrCat(read_only ? kReadOnlyScope : "q1|", db.name(), "|", db.role(), "|",
                      request.sql().size(), ":", request.sql(), "|", params);
}

void ReadCache::SidecarResult(bool ok) {
  if (!ok) counters_.sidecar_errors.fetch_add(1, std::memory_order_relaxed);
  breaker_.Record(ok);
}

void ReadCache::MarkSuspect(DbState* state) { state->suspect_epoch.fetch_add(1); }

bool ReadCache::FlushDatabase(DbState* state, const std::string& source) {
  // A flush covers commits no position names: fills from replicas read the
  // primary until the stream's next position.
  state->fence_opened.fetch_add(1);
  const uint64_t epoch = state->suspect_epoch.load();
  if (near_ != nullptr) near_->Invalidate({DatabaseTag(state->db->name())});
  absl::Status s = InvalidateNow(*client_, {DatabaseTag(state->db->name())}, source);
  if (near_ != nullptr) near_->Invalidate({DatabaseTag(state->db->name())});  // see AfterWrite
  if (!s.ok()) {
    SidecarResult(false);
    return false;
  }
  SidecarResult(true);
  counters_.flushes.fetch_add(1, std::memory_order_relaxed);
  uint64_t seen = state->flushed_epoch.load();
  while (seen < epoch && !state->flushed_epoch.compare_exchange_weak(seen, epoch)) {
  }
  return true;
}

void ReadCache::RunOnDatabase(CachedRead& read, Bypass reason) {
  counters_.bypass.fetch_add(1, std::memory_order_relaxed);
  CountBypass(reason);
  read.RunPlain();
}

void ReadCache::Execute(Database* db, const v1::ExecuteRequest& request, std::shared_ptr<Work> work,
                        v1::ExecuteResponse* response, uint64_t max_rows, uint64_t max_bytes,
                        bool read_only, std::function<void()> run_plain) {
  CachedRead read(db, request, std::move(work), response, max_rows, max_bytes,
                  std::move(run_plain));
  read.key = KeyFor(*db, request, read_only);
  DbState* state = StateOf(*db);
  const uint64_t min_lsn = request.min_lsn();
  if (state != nullptr && min_lsn != 0 && state->applied_lsn.load() < min_lsn) {
    const uint32_t wait_ms = config_.wal().token_wait_ms();
    if (state->mode.load() != kWalMode || wait_ms == 0) {
      // Trigger invalidation knows no positions: only the database can tell.
      RunOnDatabase(read, Bypass::kToken);
      return;
    }
    counters_.token_waits.fetch_add(1, std::memory_order_relaxed);
    // Nothing may be decoded past the token for a while (it follows the last
    // commit to a cached table): a fence makes the relay get there now.
    if (state->token_fence != nullptr) state->token_fence->Request(min_lsn);
    const absl::Time until = std::min(read.deadline(), absl::Now() + absl::Milliseconds(wait_ms));
    // The call may end while it waits.
    std::shared_ptr<CachedRead> waiting = CachedRead::Detach(std::move(read), in_flight_);
    waiters_->Wait(&state->applied_lsn, min_lsn, until,
                   [this, waiting = std::move(waiting)](bool reached) mutable {
                     const std::shared_ptr<CachedRead> r = std::move(waiting);
                     if (reached && DatabaseReady(r->db()->name())) {
                       counters_.token_waits_reached.fetch_add(1, std::memory_order_relaxed);
                       if (!AnswerWithoutSidecar(*r)) LookUp(r);
                     } else {
                       RunOnDatabase(*r, Bypass::kToken);
                     }
                   });
    return;
  }
  // The read stays on the stack unless it goes on past the near cache.
  if (!AnswerWithoutSidecar(read)) LookUp(CachedRead::Detach(std::move(read), in_flight_));
}

bool ReadCache::AnswerWithoutSidecar(CachedRead& read) {
  Database& db = *read.db();
  // Again, after the applied LSN was found to cover min_lsn: an invalidation
  // that failed meanwhile (the database is suspect) still advanced it.
  if (const DbState* state = StateOf(db); state != nullptr) {
    if (std::optional<Bypass> why = NotReady(*state)) {
      RunOnDatabase(read, *why);
      return true;
    }
  }
  // Taken before anything is read: a result found or read from now on
  // reflects every commit the stream had applied by then.
  read.lsn = ReflectedLsn(db, read.min_lsn());
  const bool key_fits = read.key.size() <= kMaxKeyBytes;
  if (near_ != nullptr && key_fits) {
    if (std::shared_ptr<const v1::ResultSet> hit = near_->Get(read.key)) {
      counters_.hits.fetch_add(1, std::memory_order_relaxed);
      counters_.near_hits.fetch_add(1, std::memory_order_relaxed);
      telemetry::Span lookup =
          telemetry::StartSpan("cache.lookup", telemetry::SpanKind::kInternal, read.work().trace);
      if (lookup.recording()) {
        lookup.SetAttribute("db.namespace", db.name());
        lookup.SetAttribute("poolside.cache.outcome", "hit");
        lookup.SetAttribute("poolside.cache.layer", "near");
        lookup.End();
      }
      read.Answer(absl::OkStatus(), *hit, v1::HIT, v1::NEAR_CACHE, read.lsn);
      return true;
    }
    // Before the sidecar or the database is read: a fill of what they return
    // loses against any invalidation from now on.
    read.near_generation = near_->ReadGeneration();
  }
  if (!key_fits || !breaker_.Usable()) {
    RunOnDatabase(read, !key_fits ? Bypass::kKeySize : Bypass::kSidecar);
    return true;
  }
  return false;
}

void ReadCache::LookUp(std::shared_ptr<CachedRead> read) {
  const v1::ExecuteRequest& request = read->request();
  if (StatementPlans::Plan plan = plans_.Remembered(*read->db(), request.sql())) {
    WithPlan(std::move(read), std::move(plan));
    return;
  }
  // `read` (and `request`) stay alive while Learn runs, whenever `then` does.
  plans_.Learn(read->db(), request.sql(), request.params(), read->deadline(),
               [this, read](StatementPlans::Learned plan) mutable {
                 WithPlan(std::move(read), std::move(plan));
               });
}

void ReadCache::WithPlan(std::shared_ptr<CachedRead> read, StatementPlans::Learned plan) {
  if (!plan.ok() || !(*plan)->PlainRead()) {
    // Not a plain read (or its plan is unknown): the database decides.
    RunOnDatabase(*read, Bypass::kPlan);
    return;
  }
  if (DbState* state = StateOf(*read->db()); state == nullptr || !state->Watches((*plan)->tables)) {
    // Reads a table whose writes are not seen: never cached.
    RunOnDatabase(*read, Bypass::kUnwatched);
    return;
  }
  read->plan = *std::move(plan);
  read->lookup =
      telemetry::StartSpan("cache.lookup", telemetry::SpanKind::kInternal, read->work().trace);
  read->lookup.SetAttribute("db.namespace", read->db()->name());
  // The sidecar call is the lookup's child.
  telemetry::ScopedSpanContext lookup_scope(read->lookup.context());
  // `read` (and its key) stay alive while Get runs, whenever `done` does.
  client_->Get(read->key, [this, read](absl::StatusOr<CacheLookup> found) mutable {
    OnSidecarLookup(std::move(read), std::move(found));
  });
}

void ReadCache::OnSidecarLookup(std::shared_ptr<CachedRead> read,
                                absl::StatusOr<CacheLookup> found) {
  SidecarResult(found.ok());
  read->lookup.SetAttribute("poolside.cache.outcome", !found.ok() ? "error"
                                                      : found->outcome == CacheLookup::kHit ? "hit"
                                                      : found->outcome == CacheLookup::kStale
                                                          ? "stale"
                                                          : "miss");
  read->lookup.SetStatus(found.status());
  read->lookup.End();
  // A stale entry's refresh belongs to this call's trace.
  telemetry::ScopedSpanContext trace(read->work().trace);
  if (!found.ok()) {
    RunOnDatabase(*read, Bypass::kSidecar);
    return;
  }
  bool keyed = false;
  std::vector<std::string> tags =
      ReadTags(read->db()->name(), *read->plan, read->request(), &keyed);
  if (found->outcome != CacheLookup::kMiss) {
    auto cached = std::make_shared<v1::ResultSet>();
    if (cached->ParseFromString(found->value)) {
      const bool stale = found->outcome == CacheLookup::kStale;
      (stale ? counters_.stale : counters_.hits).fetch_add(1, std::memory_order_relaxed);
      if (stale) {
        // One background refresh; this caller does not wait for it.
        ReadShared(*read, nullptr, found->generation, std::move(tags), keyed,
                   absl::Now() + absl::Milliseconds(limits_.default_timeout_ms()));
      } else if (near_ != nullptr && read->near_generation != 0) {
        near_->Fill(read->key, cached, found->remaining, std::move(tags), read->near_generation);
      }
      read->Answer(absl::OkStatus(), *cached, stale ? v1::STALE : v1::HIT, v1::SIDECAR, read->lsn);
      return;
    }
    // Unreadable entry: refill it.
  }
  counters_.misses.fetch_add(1, std::memory_order_relaxed);
  const CachedRead& about = *read;
  ReadShared(about, std::move(read), found->generation, std::move(tags), keyed, about.deadline());
}

void ReadCache::ReadShared(const CachedRead& about, std::shared_ptr<CachedRead> reader,
                           uint64_t generation, std::vector<std::string> tags, bool keyed,
                           absl::Time deadline) {
  Database* db = about.db();
  DbState* state = StateOf(*db);
  const uint64_t own_writes = state != nullptr ? state->own_writes.load() : 0;
  const bool refresh = reader == nullptr;
  std::shared_ptr<SingleFlight::Flight> started;
  const SingleFlight::Entry entry = flights_.Enter(
      about.key, own_writes, &reader,
      [&]() -> std::shared_ptr<SingleFlight::Flight> {
        auto fill = std::make_shared<Fill>();
        fill->key = about.key;
        fill->lsn = about.lsn;
        fill->own_writes = own_writes;
        fill->db = db;
        fill->generation = generation;
        fill->near_generation = about.near_generation;
        fill->keyed = keyed;
        fill->tags = std::move(tags);
        fill->ttl = absl::Milliseconds(about.request().cache().ttl_ms());
        fill->stale = absl::Milliseconds(about.request().cache().stale_while_revalidate_ms());
        fill->trace = refresh ? telemetry::CurrentSpanContext() : about.work().trace;
        fill->in_flight = in_flight_.Begin();
        return fill;
      },
      &started);
  if (entry == SingleFlight::Entry::kJoined) {
    counters_.coalesced.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (entry == SingleFlight::Entry::kRunning) return;  // a refresh is on its way already
  if (entry == SingleFlight::Entry::kAlone) {
    RunOnDatabase(*reader, Bypass::kToken);
    return;
  }
  std::shared_ptr<Fill> fill = std::static_pointer_cast<Fill>(std::move(started));
  auto work = std::make_shared<OwnedStatement>();
  work->sql = about.request().sql();
  work->params = about.request().params();
  work->holder = "cache fill";
  work->trace = fill->trace;
  work->Prepare(deadline, limits_.max_rows(), limits_.max_bytes());
  if (absl::StartsWith(fill->key, kReadOnlyScope)) {
    // A read-only caller's scope: the fill is a read-only transaction too.
    OwnedStatement* raw = work.get();
    work->batchable = false;
    work->exclusive = [raw](db::Connection& conn) -> absl::Status {
      db::Statement* st = &raw->statement;
      return conn.RunTransaction("BEGIN READ ONLY", {&st, 1}, raw->deadline, &raw->cancelled);
    };
  }
  // On a database with replicas the fill may read a replica, one that has
  // replayed every invalidation applied so far (read after the lookup, so
  // it covers what the lookup's generation saw): never an older row than
  // the primary had when the lookup ran.
  work->replica_ok = true;
  work->cache_fill = true;
  work->min_lsn = ReplicaFillFence(state);
  fill->work = work;
  work->done = [this, fill](absl::Status s) mutable {
    // The last hold of the fill: it (and its count in flight) ends here.
    const std::shared_ptr<Fill> landing = std::move(fill);
    Land(*landing, std::move(s));
  };
  SubmitOrFail(*db, std::move(work));
}

void ReadCache::Land(Fill& fill, absl::Status status) {
  std::vector<std::shared_ptr<CachedRead>> readers = flights_.Land(fill);
  // The work's `done` (running this) holds the fill: the fill lets go of
  // the work, or neither (nor the result) is ever freed.
  const std::shared_ptr<OwnedStatement> work = std::move(fill.work);
  const v1::ResultSet& result = work->result;
  if (status.ok()) {
    std::string value = result.SerializeAsString();
    if (near_ != nullptr && fill.near_generation != 0 &&
        value.size() <= config_.max_value_bytes()) {
      near_->Fill(fill.key, std::make_shared<const v1::ResultSet>(result), fill.ttl, fill.tags,
                  fill.near_generation);
    }
    if (value.size() <= config_.max_value_bytes() && breaker_.Usable()) {
      CacheFill stored;
      stored.key = fill.key;
      stored.value = std::move(value);
      stored.ttl = fill.ttl;
      stored.stale = fill.stale;
      stored.tags = fill.tags;
      stored.read_generation = fill.generation;
      auto span = std::make_shared<telemetry::Span>(
          telemetry::StartSpan("cache.fill", telemetry::SpanKind::kInternal, fill.trace));
      span->SetAttribute("poolside.cache.value_bytes", stored.value.size());
      span->SetAttribute("db.namespace", fill.db->name());
      span->SetAttribute("poolside.cache.keyed", fill.keyed);
      telemetry::ScopedSpanContext fill_scope(span->context());
      const bool keyed = fill.keyed;
      client_->Set(std::move(stored), [this, span, keyed, token = in_flight_.Begin()](
                                          absl::StatusOr<bool> done) mutable {
        const InFlight::Token held = std::move(token);
        SidecarResult(done.ok());
        // "refused": the sidecar saw a newer invalidation (or would not admit it).
        span->SetAttribute("poolside.cache.outcome", !done.ok() ? "error"
                                                     : *done    ? "stored"
                                                                : "refused");
        span->SetStatus(done.status());
        span->End();
        if (done.ok()) {
          (*done ? counters_.fills : counters_.fills_refused)
              .fetch_add(1, std::memory_order_relaxed);
          if (*done && keyed) counters_.keyed_fills.fetch_add(1, std::memory_order_relaxed);
        }
      });
    }
  }
  const bool callers_own_problem = status.code() == absl::StatusCode::kDeadlineExceeded ||
                                   status.code() == absl::StatusCode::kCancelled ||
                                   status.code() == absl::StatusCode::kResourceExhausted;
  for (const std::shared_ptr<CachedRead>& r : readers) {
    if (callers_own_problem && absl::Now() < r->deadline()) {
      // The shared query ran out of its first caller's time (or its limits);
      // this caller still has time of its own.
      r->RunPlain();
      continue;
    }
    r->Answer(status, result, v1::MISS, v1::DATABASE, fill.lsn, work->member);
  }
}

void ReadCache::AfterWrite(Database* db, std::vector<Written> statements,
                           std::function<void()> done) {
  DbState* state = StateOf(*db);
  if (statements.empty() || state == nullptr) {
    done();
    return;
  }
  // Committed already: a flight that begins from now on reads after it.
  state->own_writes.fetch_add(1);
  struct Gather {
    absl::Mutex mu;
    size_t pending = 0;
    bool unknown = false;
    std::vector<std::string> tags;
    std::vector<Written> statements;
    std::function<void()> done;
  };
  auto g = std::make_shared<Gather>();
  // The write's trace: the invalidation is part of answering it.
  const telemetry::SpanContext trace = telemetry::CurrentSpanContext();
  g->pending = statements.size();
  g->statements = std::move(statements);
  g->done = std::move(done);
  auto finish = [this, db, state, g, trace] {
    std::vector<std::string> tags;
    if (g->unknown) {
      tags.push_back(DatabaseTag(db->name()));
    } else {
      std::sort(g->tags.begin(), g->tags.end());
      g->tags.erase(std::unique(g->tags.begin(), g->tags.end()), g->tags.end());
      tags = g->tags;
    }
    if (tags.empty()) {
      g->done();
      return;
    }
    // In the near cache both before and after the sidecar: a read that began
    // in between may have found the old entry in the sidecar and filled it in.
    if (near_ != nullptr) near_->Invalidate(tags);
    if (!breaker_.Usable()) {
      MarkSuspect(state);
      g->done();
      return;
    }
    counters_.write_invalidations.fetch_add(1, std::memory_order_relaxed);
    auto span = std::make_shared<telemetry::Span>(
        telemetry::StartSpan("cache.invalidate", telemetry::SpanKind::kInternal, trace));
    span->SetAttribute("db.namespace", db->name());
    span->SetAttribute("poolside.cache.source", "write");
    span->SetAttribute("poolside.cache.tags", tags.size());
    telemetry::ScopedSpanContext invalidate_scope(span->context());
    std::vector<std::string> sent = tags;
    client_->Invalidate(
        std::move(sent), false, "write",
        absl::Milliseconds(std::max<uint32_t>(config_.call_timeout_ms(), 200)),
        [this, state, g, span, tags, token = in_flight_.Begin()](absl::Status s) mutable {
          const InFlight::Token held = std::move(token);
          if (near_ != nullptr) near_->Invalidate(tags);
          SidecarResult(s.ok());
          span->SetAttribute("poolside.cache.outcome", s.ok() ? "invalidated" : "error");
          span->SetStatus(s);
          span->End();
          // Not delivered: the cache may hold what this write
          // changed, so the database bypasses it until flushed.
          if (!s.ok()) MarkSuspect(state);
          g->done();
        });
  };
  for (size_t i = 0; i < g->statements.size(); ++i) {
    const Written& w = g->statements[i];
    plans_.Learn(db, w.sql, w.params, absl::Now() + absl::Seconds(5),
                 [db, g, finish](StatementPlans::Learned t) {
                   bool last;
                   {
                     absl::MutexLock lock(&g->mu);
                     if (!t.ok() || !(*t)->explained) {
                       g->unknown = true;
                     } else {
                       for (const std::string& table : (*t)->tables) {
                         g->tags.push_back(TableTag(db->name(), table));
                       }
                     }
                     last = --g->pending == 0;
                   }
                   if (last) finish();
                 });
  }
}

bool ReadCache::HolderSession(DbState* state, db::Connection& conn, int pid) {
  const absl::Time now = absl::Now();
  if (pid == state->holder_pid && now - state->holder_checked < kHolderRecheck) return true;
  const int64_t key = WalRelay::LockKey(config_.wal().publication(), config_.channel());
  google::protobuf::RepeatedPtrField<v1::Value> params;
  params.Add()->set_int64_value(static_cast<int64_t>(static_cast<uint64_t>(key) >> 32));
  params.Add()->set_int64_value(static_cast<int64_t>(static_cast<uint64_t>(key) & 0xffffffffu));
  params.Add()->set_int64_value(pid);
  absl::StatusOr<v1::ResultSet> rs =
      QueryOwn(conn,
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

void ReadCache::OnRelayed(DbState* state, db::Connection& conn, const db::Notification& n,
                          Applying* a) {
  absl::StatusOr<RelayMessage> m = DecodeRelay(n.payload);
  if (!m.ok()) {
    telemetry::LogWarning("ignoring a malformed message on the cache's channel",
                          {{"database", state->db->name()},
                           {"pid", absl::StrCat(n.backend_pid)},
                           {"error", std::string(m.status().message())}});
    return;
  }
  const std::string& db = state->db->name();
  // Invalidations are taken from anyone (one too many costs a miss)...
  for (const RelayTable& t : m->tables) {
    switch (t.change) {
      case RelayTable::kRows:
        for (uint64_t row : t.rows) a->tags.push_back(RowTag(db, t.name, row));
        a->tags.push_back(TableScanTag(db, t.name));
        break;
      case RelayTable::kDefinition:
        a->forget.push_back(t.name);
        a->tags.push_back(TableTag(db, t.name));
        break;
      case RelayTable::kWhole:
        a->tags.push_back(TableTag(db, t.name));
        break;
    }
  }
  a->relayed = true;
  // ...but what the stream has covered only from the holder's own session.
  if (state->mode.load() != kWalMode || !HolderSession(state, conn, n.backend_pid)) return;
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
    MarkSuspect(state);
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

void ReadCache::Apply(DbState* state, Applying* a) {
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
  for (const std::string& table : a->forget) plans_.Forget(db, table);
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
    if (near_ != nullptr) near_->Invalidate(a->tags);  // see AfterWrite
    SidecarResult(inv.ok());
    if (!inv.ok()) MarkSuspect(state);
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

void ReadCache::Listen(DbState* state) {
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
    const int mode = state->mode.load();
    if (mode == kOffMode) {
      stopping_.WaitForNotificationWithTimeout(absl::Seconds(1));
      continue;
    }
    db::ConnectionOptions options;
    options.dsn = db->config().dsn();
    options.application_name = absl::StrCat("poolside-listener/", db->name());
    options.connect_timeout = absl::Milliseconds(db->config().pool().connect_timeout_ms());
    absl::StatusOr<std::unique_ptr<db::Connection>> conn = db::Connection::Open(options);
    if (!conn.ok()) {
      telemetry::LogWarning(
          "cache invalidation listener cannot connect; reads of this "
          "database bypass the cache",
          {{"database", db->name()}, {"error", std::string(conn.status().message())}});
      pause();
      continue;
    }
    if (mode == kWalMode) {
      absl::StatusOr<bool> logical = WalLevelIsLogical(**conn, absl::Now() + absl::Seconds(10));
      if (!logical.ok()) {
        pause();
        continue;
      }
      if (!*logical) {
        OnWalUnavailable(state, absl::FailedPreconditionError(absl::StrCat(
                                    "database ", db->name(),
                                    ": its server's wal_level is not logical (cache.invalidation "
                                    "is \"wal\")")));
        continue;
      }
    }
    std::vector<std::string> resolved;   // as DDL names them
    std::vector<std::string> qualified;  // "schema.table", as plans and NOTIFY name them
    for (const std::string& table : state->tables) {
      google::protobuf::RepeatedPtrField<v1::Value> params;
      params.Add()->set_text_value(table);
      absl::StatusOr<v1::ResultSet> rs =
          QueryOwn(**conn,
                   "SELECT c.oid::regclass::text, n.nspname || '.' || c.relname "
                   "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                   "WHERE c.oid = $1::text::regclass",
                   params, absl::Now() + absl::Seconds(10));
      if (rs.ok() && rs->rows_size() == 1) {
        resolved.push_back(rs->rows(0).values(0).text_value());
        qualified.push_back(rs->rows(0).values(1).text_value());
      } else {
        telemetry::LogError("cached table not found; its writes are not seen by the cache",
                            {{"database", db->name()},
                             {"table", table},
                             {"error", std::string(rs.status().message())}});
      }
    }
    std::vector<std::string> watched;
    if (mode == kTriggerMode) {
      // Triggers first (idempotent), then LISTEN, then the flush: whatever
      // was written before the flush is gone from the cache, and whatever is
      // written after it is notified.
      const std::string channel_literal =
          absl::StrCat("'", absl::StrReplaceAll(config_.channel(), {{"'", "''"}}), "'");
      std::vector<std::string> ddl = {
          absl::StrCat("SELECT pg_advisory_xact_lock(", kInstallLock, ")"),
          "CREATE OR REPLACE FUNCTION public.poolside_notify_write() RETURNS trigger "
          "LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify(TG_ARGV[0], TG_TABLE_SCHEMA || '.' || "
          "TG_TABLE_NAME); RETURN NULL; END $$"};
      for (const std::string& table : resolved) {
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
      absl::Status installed =
          (*conn)->RunTransaction("BEGIN", ptrs, absl::Now() + absl::Seconds(30), nullptr);
      if (!installed.ok()) {
        telemetry::LogError(
            "cannot install the invalidation triggers; retrying",
            {{"database", db->name()}, {"error", std::string(installed.message())}});
        pause();
        continue;
      }
      watched = qualified;
    }
    if (absl::Status s = (*conn)->Listen(config_.channel(), absl::Now() + absl::Seconds(10));
        !s.ok()) {
      pause();
      continue;
    }
    // "wal": which cached tables the stream decodes (the holder publishes
    // them); read after LISTEN, so a table published later is only counted
    // once the stream that publishes it has been seen.
    bool warned_publish = false;
    state->published_at = absl::InfinitePast();
    auto refresh_published = [&]() -> bool {
      size_t watched_now;
      {
        absl::MutexLock lock(&state->watched_mu);
        watched_now = state->watched.size();
      }
      if (watched_now < qualified.size() || state->published_at == absl::InfinitePast()) {
        // This replica's cached tables are decoded whoever holds the slot;
        // until the publication exists (its first holder creates it), again
        // at each refresh.
        if (absl::Status s = PublishTables(**conn, config_.wal().publication(), state->tables,
                                           absl::Now() + absl::Seconds(10));
            !s.ok() && !warned_publish) {
          warned_publish = true;
          telemetry::LogWarning(
              "cannot add the cached tables to the publication; reads of "
              "those not in it bypass the cache",
              {{"database", db->name()}, {"error", std::string(s.message())}});
        }
      }
      google::protobuf::RepeatedPtrField<v1::Value> params;
      params.Add()->set_text_value(config_.wal().publication());
      absl::StatusOr<v1::ResultSet> rs =
          QueryOwn(**conn,
                   "SELECT schemaname || '.' || tablename FROM pg_catalog.pg_publication_tables "
                   "WHERE pubname = $1",
                   params, absl::Now() + absl::Seconds(10));
      if (!rs.ok()) return false;
      absl::flat_hash_set<std::string> published;
      for (const v1::Row& row : rs->rows()) published.insert(row.values(0).text_value());
      absl::MutexLock lock(&state->watched_mu);
      state->watched.clear();
      for (const std::string& t : qualified) {
        if (published.contains(t)) state->watched.insert(t);
      }
      state->published_at = absl::Now();
      return true;
    };
    if (mode == kWalMode) {
      if (!refresh_published()) {
        pause();
        continue;
      }
      google::protobuf::RepeatedPtrField<v1::Value> none;
      absl::StatusOr<v1::ResultSet> triggers =
          QueryOwn(**conn,
                   "SELECT string_agg(tgrelid::regclass::text, ', ') FROM pg_catalog.pg_trigger "
                   "WHERE tgname = 'poolside_invalidate'",
                   none, absl::Now() + absl::Seconds(10));
      if (triggers.ok() && triggers->rows_size() == 1 &&
          !triggers->rows(0).values(0).text_value().empty()) {
        const std::string on = triggers->rows(0).values(0).text_value();
        state->SetNote(absl::StrCat("poolside_invalidate triggers still installed on ", on,
                                    ": writers pay for them; drop them once no replica uses "
                                    "cache.invalidation \"trigger\""));
        telemetry::LogWarning(
            "NOTIFY triggers of trigger mode are still installed; writers of "
            "these tables pay for them",
            {{"database", db->name()}, {"tables", on}});
      }
    } else {
      absl::MutexLock lock(&state->watched_mu);
      state->watched.clear();
      state->watched.insert(watched.begin(), watched.end());
    }
    while (!stopping_.HasBeenNotified() && !FlushDatabase(state, "reconnect")) pause();
    if (stopping_.HasBeenNotified()) break;
    state->fresh = true;
    state->holder_pid = 0;
    state->subscribed.store(true);
    backoff = absl::Milliseconds(100);
    telemetry::LogInfo("cache invalidation listener subscribed",
                       {{"database", db->name()},
                        {"channel", config_.channel()},
                        {"mode", ModeName(mode)},
                        {"tables", absl::StrJoin(resolved, ",")}});
    absl::Time last_ping = absl::Now();
    while (!stopping_.HasBeenNotified() && !state->mode_changed.load()) {
      std::vector<db::Notification> got;
      absl::Status s = (*conn)->AwaitNotifications(absl::Now() + absl::Milliseconds(250), &got);
      if (!s.ok()) break;
      if (!got.empty()) {
        counters_.notifications.fetch_add(got.size(), std::memory_order_relaxed);
        Applying a;
        for (const db::Notification& n : got) {
          if (IsRelayPayload(n.payload)) {
            OnRelayed(state, **conn, n, &a);
          } else {
            // A trigger's: the table's name.
            a.tags.push_back(TableTag(db->name(), n.payload));
          }
        }
        Apply(state, &a);
        if ((*conn)->broken()) break;
      }
      if (state->flushed_epoch.load() != state->suspect_epoch.load()) {
        FlushDatabase(state, "resume");
      }
      if (mode == kWalMode) {
        bool complete;
        {
          absl::MutexLock lock(&state->watched_mu);
          complete = state->watched.size() == qualified.size();
        }
        // Sooner while some cached table is not published yet (its
        // publication may not exist before the first holder's stream).
        const absl::Duration every = complete ? kPublicationRefresh : absl::Seconds(1);
        if (absl::Now() - state->published_at > every && !refresh_published()) break;
      }
      if (absl::Now() - last_ping > absl::Seconds(5)) {
        if (!(*conn)->Ping(absl::Now() + absl::Seconds(5))) break;
        last_ping = absl::Now();
      }
    }
    state->subscribed.store(false);
    state->stream.store(0);
    if (!stopping_.HasBeenNotified()) {
      MarkSuspect(state);
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

std::vector<ReadCache::InvalidationState> ReadCache::InvalidationStates() const {
  std::vector<InvalidationState> out;
  for (const auto& [name, state] : dbs_) {
    if (!state->listens) continue;
    InvalidationState s;
    s.database = name;
    s.mode = ModeName(state->mode.load());
    s.ready = !NotReady(*state).has_value();
    s.subscribed = state->subscribed.load();
    s.stream = state->stream.load();
    s.applied_lsn = state->applied_lsn.load();
    const int64_t heard = state->last_heard_micros.load();
    if (heard != 0) s.since_heard = absl::Now() - absl::FromUnixMicros(heard);
    s.lagging = state->lagging.load();
    s.streams_seen = state->streams_seen.load();
    s.relay_messages = state->relay_messages.load();
    s.delay = state->delay.Take();
    if (state->relay != nullptr) {
      s.relay = state->relay->GetStats();
      s.holder = s.relay.holder;
    }
    if (state->token_fence != nullptr) s.fence = state->token_fence->GetStats();
    {
      absl::MutexLock lock(&state->watched_mu);
      s.watched.assign(state->watched.begin(), state->watched.end());
    }
    std::sort(s.watched.begin(), s.watched.end());
    {
      absl::MutexLock lock(&state->note_mu);
      s.note = state->note;
    }
    out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end(), [](const InvalidationState& a, const InvalidationState& b) {
    return a.database < b.database;
  });
  return out;
}

}  // namespace poolside::query
