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
#include "common/telemetry/log.h"
#include "common/telemetry/trace.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace poolside::query {
namespace {

// Keys longer than this bypass the cache (the sidecar's default key limit is 4096).
constexpr size_t kMaxKeyBytes = 4000;
// Distinct statements whose tables are remembered; the map is cleared when full.
constexpr size_t kMaxRememberedStatements = 10000;
// Keys of results read for read-only callers (CallAccess) start with this.
constexpr char kReadOnlyScope[] = "q1ro|";
// Advisory lock key serializing trigger installation across replicas.
constexpr int64_t kInstallLock = 0x706f6f6c73696465;  // "poolside"

// A statement's work: its own copies of SQL and parameters, since the callers
// it serves may go away before it finishes.
class OwnedStatementWork : public Work {
 public:
  std::string sql;
  google::protobuf::RepeatedPtrField<v1::Value> params;
  ResultBudget budget;
  v1::ResultSet result;
  std::unique_ptr<ResultSetSink> sink;

  void Prepare(absl::Time until, uint64_t max_rows, uint64_t max_bytes) {
    deadline = until;
    budget.max_rows = max_rows;
    budget.max_bytes = max_bytes;
    sink = std::make_unique<ResultSetSink>(&result, &budget);
    batchable = true;
    statement.sql = sql;
    statement.params = &params;
    statement.sink = sink.get();
  }
};

void WalkPlan(const google::protobuf::Value& v, StatementTables* out) {
  if (v.has_list_value()) {
    for (const auto& e : v.list_value().values()) WalkPlan(e, out);
    return;
  }
  if (!v.has_struct_value()) return;
  const auto& fields = v.struct_value().fields();
  if (auto it = fields.find("Node Type"); it != fields.end()) {
    if (it->second.string_value() == "ModifyTable") out->modifies = true;
    if (it->second.string_value() == "LockRows") out->locks_rows = true;
  }
  auto rel = fields.find("Relation Name");
  if (rel != fields.end()) {
    auto schema = fields.find("Schema");
    out->tables.push_back(absl::StrCat(
        schema != fields.end() ? schema->second.string_value() : "public", ".",
        rel->second.string_value()));
  }
  for (const auto& [name, child] : fields) WalkPlan(child, out);
}

std::string TableTag(absl::string_view db, absl::string_view table) {
  return absl::StrCat("t:", db, ":", table);
}

std::string DatabaseTag(absl::string_view db) { return absl::StrCat("db:", db); }

// Whether an EXPLAIN failure says something permanent about the statement.
bool PermanentlyUnexplainable(const absl::Status& s) {
  return s.code() == absl::StatusCode::kInvalidArgument ||
         s.code() == absl::StatusCode::kFailedPrecondition ||
         s.code() == absl::StatusCode::kNotFound ||
         s.code() == absl::StatusCode::kUnimplemented;
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

// A sidecar call made from one of our own threads, waited for.
absl::Status InvalidateNow(CacheClient& client, std::vector<std::string> tags,
                           const std::string& source) {
  struct Result {
    absl::Notification done;
    absl::Status status;
  };
  auto result = std::make_shared<Result>();
  client.Invalidate(std::move(tags), false, source, absl::Seconds(2),
                    [result](absl::Status s) {
                      result->status = std::move(s);
                      result->done.Notify();
                    });
  result->done.WaitForNotification();  // the client bounds the call
  return result->status;
}

}  // namespace

absl::StatusOr<StatementTables> ParsePlanTables(const std::string& explain_json) {
  google::protobuf::ListValue plan;
  const auto parsed = google::protobuf::util::JsonStringToMessage(explain_json, &plan);
  if (!parsed.ok()) {
    return absl::InternalError(
        absl::StrCat("EXPLAIN output is not JSON: ", std::string(parsed.message()).substr(0, 200)));
  }
  StatementTables out;
  out.explained = true;
  for (const auto& v : plan.values()) WalkPlan(v, &out);
  std::sort(out.tables.begin(), out.tables.end());
  out.tables.erase(std::unique(out.tables.begin(), out.tables.end()), out.tables.end());
  return out;
}

struct ReadCache::Participant {
  std::shared_ptr<Work> work;
  v1::ExecuteResponse* response = nullptr;
  uint64_t max_rows = 0;
  uint64_t max_bytes = 0;
  absl::Time deadline;
  std::function<void()> run_plain;
  // While it waits for another caller's identical query (single flight).
  telemetry::Span wait;
};

struct ReadCache::Flight {
  std::string key;
  Database* db = nullptr;
  uint64_t generation = 0;
  uint64_t near_generation = 0;
  std::vector<std::string> tags;
  absl::Duration ttl;
  absl::Duration stale;
  // Until Land(), which releases it (the work's `done` holds the flight).
  std::shared_ptr<OwnedStatementWork> work;
  // The trace of the call that started the flight (its query and fill).
  telemetry::SpanContext trace;
  // Guarded by ReadCache::mu_.
  std::vector<std::unique_ptr<Participant>> participants;
};

struct ReadCache::DbState {
  Database* db = nullptr;
  std::vector<std::string> tables;  // configured for NOTIFY triggers
  bool listens = false;
  // "schema.table" of the configured tables whose trigger is installed: only
  // reads of these tables alone are cached, since a write to any other table
  // (by a client outside poolside) would never invalidate them.
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
  // that may have left stale entries (start, a lost invalidation) raises
  // suspect_epoch, and a confirmed flush of the database catches up.
  std::atomic<uint64_t> suspect_epoch{1};
  std::atomic<uint64_t> flushed_epoch{0};
};

ReadCache::ReadCache(const v1::QueryCacheConfig& config, std::unique_ptr<CacheClient> client,
                     const absl::flat_hash_map<std::string, std::unique_ptr<Database>>& databases,
                     const v1::LimitsConfig& limits)
    : config_(config),
      limits_(limits),
      near_(MakeNearCache(config)),
      client_(std::move(client)) {
  for (const auto& [name, db] : databases) {
    auto state = std::make_unique<DbState>();
    state->db = db.get();
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
  // Sidecar callbacks and flights reference this object.
  while (in_flight_.load() > 0) absl::SleepFor(absl::Milliseconds(2));
}

void ReadCache::Start() {
  if (near_ != nullptr) {
    NearCache* near = near_.get();
    if (!client_->Watch([near](const CacheInvalidationEvent& e) { near->OnEvent(e); })) {
      telemetry::LogWarning("the cache client cannot watch invalidations; the near cache stays off");
    }
  }
  for (auto& [name, state] : dbs_) {
    if (state->listens) {
      DbState* s = state.get();
      threads_.emplace_back([this, s] { Listen(s); });
    }
  }
  // Flushes databases without a listener at start and after a lost
  // invalidation (listening databases do this in their own thread).
  threads_.emplace_back([this] {
    while (!stopping_.HasBeenNotified()) {
      for (auto& [name, state] : dbs_) {
        if (stopping_.HasBeenNotified()) break;
        if (!state->listens &&
            state->flushed_epoch.load() != state->suspect_epoch.load()) {
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

bool ReadCache::DatabaseReady(absl::string_view database) const {
  auto it = dbs_.find(database);
  if (it == dbs_.end()) return false;
  const DbState& s = *it->second;
  return (!s.listens || s.subscribed.load()) && s.flushed_epoch.load() == s.suspect_epoch.load();
}

bool ReadCache::Applies(const Database& db, const v1::ExecuteRequest& request,
                        const sql::Analysis& analysis) const {
  if (!request.has_cache()) return false;
  const v1::CachePolicy& p = request.cache();
  if (p.bypass() || p.ttl_ms() == 0) return false;
  // SELECT, VALUES or TABLE that writes nothing (not SHOW or EXPLAIN).
  if (analysis.kind != sql::StatementKind::kRead ||
      (analysis.command != "SELECT" && analysis.command != "VALUES")) {
    return false;
  }
  return DatabaseReady(db.name());
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
                      request.sql().size(),
                      ":", request.sql(), "|", params);
}

bool ReadCache::SidecarUsable() {
  absl::MutexLock lock(&mu_);
  return absl::Now() >= skip_until_;
}

void ReadCache::SidecarResult(bool ok) {
  absl::MutexLock lock(&mu_);
  if (ok) {
    consecutive_failures_ = 0;
    return;
  }
  counters_.sidecar_errors.fetch_add(1, std::memory_order_relaxed);
  if (++consecutive_failures_ >= static_cast<int>(config_.failure_threshold())) {
    if (absl::Now() >= skip_until_) {
      telemetry::LogWarning("cache sidecar failing; reads go to the database for a while",
                            {{"target", config_.target()},
                             {"retry_after_ms", absl::StrCat(config_.retry_after_ms())}});
    }
    skip_until_ = absl::Now() + absl::Milliseconds(config_.retry_after_ms());
    consecutive_failures_ = 0;
  }
}

void ReadCache::MarkSuspect(DbState* state) {
  state->suspect_epoch.fetch_add(1);
}

bool ReadCache::FlushDatabase(DbState* state, const std::string& source) {
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

std::vector<std::string> ReadCache::TagsFor(const Database& db, const StatementTables& t,
                                            const v1::CachePolicy& policy) const {
  std::vector<std::string> tags;
  tags.reserve(t.tables.size() + policy.tags_size() + 1);
  tags.push_back(DatabaseTag(db.name()));
  for (const std::string& table : t.tables) tags.push_back(TableTag(db.name(), table));
  for (const std::string& tag : policy.tags()) tags.push_back(tag);
  return tags;
}

void ReadCache::Tables(Database* db, const std::string& sql,
                       const google::protobuf::RepeatedPtrField<v1::Value>& params,
                       absl::Time deadline,
                       std::function<void(absl::StatusOr<StatementTables>)> then) {
  const std::string remembered = absl::StrCat(db->name(), "\x1f", sql);
  std::optional<StatementTables> known;
  {
    absl::MutexLock lock(&mu_);
    auto it = tables_.find(remembered);
    if (it != tables_.end()) known = it->second;
  }
  if (known.has_value()) {
    then(*std::move(known));
    return;
  }
  auto work = std::make_shared<OwnedStatementWork>();
  work->sql = absl::StrCat("EXPLAIN (FORMAT JSON, VERBOSE) ", sql);
  work->params = params;
  work->holder = "cache: EXPLAIN";
  work->trace = telemetry::CurrentSpanContext();
  work->Prepare(deadline, 10, 16 << 20);
  OwnedStatementWork* raw = work.get();
  in_flight_.fetch_add(1);
  work->done = [this, raw, remembered, then = std::move(then)](absl::Status s) {
    absl::StatusOr<StatementTables> tables;
    if (s.ok()) {
      if (raw->result.rows_size() == 1 && raw->result.rows(0).values_size() == 1) {
        const v1::Value& v = raw->result.rows(0).values(0);
        tables = ParsePlanTables(v.has_json_value() ? v.json_value() : v.text_value());
      } else {
        tables = absl::InternalError("EXPLAIN returned no plan");
      }
    } else if (PermanentlyUnexplainable(s)) {
      tables = StatementTables{};  // explained = false
    } else {
      tables = s;
    }
    if (tables.ok()) {
      absl::MutexLock lock(&mu_);
      if (tables_.size() >= kMaxRememberedStatements) tables_.clear();
      tables_[remembered] = *tables;
    }
    then(std::move(tables));
    in_flight_.fetch_sub(1);
  };
  if (absl::Status s = db->Submit(work); !s.ok()) {
    if (work->Claim()) work->done(s);
  }
}

void ReadCache::Execute(Database* db, const v1::ExecuteRequest& request,
                        std::shared_ptr<Work> work, v1::ExecuteResponse* response,
                        uint64_t max_rows, uint64_t max_bytes, bool read_only,
                        std::function<void()> run_plain) {
  std::string key = KeyFor(*db, request, read_only);
  uint64_t near_generation = 0;
  if (near_ != nullptr && key.size() <= kMaxKeyBytes) {
    if (std::shared_ptr<const v1::ResultSet> hit = near_->Get(key)) {
      counters_.hits.fetch_add(1, std::memory_order_relaxed);
      counters_.near_hits.fetch_add(1, std::memory_order_relaxed);
      telemetry::Span lookup =
          telemetry::StartSpan("cache.lookup", telemetry::SpanKind::kInternal, work->trace);
      if (lookup.recording()) {
        lookup.SetAttribute("db.namespace", db->name());
        lookup.SetAttribute("poolside.cache.outcome", "hit");
        lookup.SetAttribute("poolside.cache.layer", "near");
        lookup.End();
      }
      if (work->Claim()) {
        Answer(*work, response, max_rows, max_bytes, absl::OkStatus(), *hit, v1::HIT);
      }
      return;
    }
    // Before the sidecar or the database is read: a fill of what they return
    // loses against any invalidation from now on.
    near_generation = near_->ReadGeneration();
  }
  if (key.size() > kMaxKeyBytes || !SidecarUsable()) {
    counters_.bypass.fetch_add(1, std::memory_order_relaxed);
    run_plain();
    return;
  }
  // `request` and `response` die with the call, which may be cancelled while
  // the sidecar or EXPLAIN answers: keep a copy of the request, and touch the
  // response only after claiming the work.
  auto owned = std::make_shared<const v1::ExecuteRequest>(request);
  const absl::Time deadline = work->deadline;
  Tables(db, owned->sql(), owned->params(), deadline,
         [this, db, owned, key = std::move(key), work, response, max_rows, max_bytes,
          near_generation,
          run_plain = std::move(run_plain)](absl::StatusOr<StatementTables> t) mutable {
           if (!t.ok() || !t->explained || t->modifies || t->locks_rows) {
             // Not a plain read (or its plan is unknown): the database decides.
             counters_.bypass.fetch_add(1, std::memory_order_relaxed);
             run_plain();
             return;
           }
           if (DbState* state = StateOf(*db); state == nullptr || !state->Watches(t->tables)) {
             // Reads a table whose writes are not notified: never cached.
             counters_.bypass.fetch_add(1, std::memory_order_relaxed);
             run_plain();
             return;
           }
           Lookup(db, std::move(owned), std::move(key), std::move(work), response, max_rows,
                  max_bytes, std::move(run_plain), *std::move(t), near_generation);
         });
}

void ReadCache::Lookup(Database* db, std::shared_ptr<const v1::ExecuteRequest> owned,
                       std::string key, std::shared_ptr<Work> work, v1::ExecuteResponse* response,
                       uint64_t max_rows, uint64_t max_bytes, std::function<void()> run_plain,
                       StatementTables tables, uint64_t near_generation) {
  auto p = std::make_unique<Participant>();
  p->work = std::move(work);
  p->response = response;
  p->max_rows = max_rows;
  p->max_bytes = max_bytes;
  p->deadline = p->work->deadline;
  p->run_plain = std::move(run_plain);
  auto lookup = std::make_shared<telemetry::Span>(
      telemetry::StartSpan("cache.lookup", telemetry::SpanKind::kInternal, p->work->trace));
  lookup->SetAttribute("db.namespace", db->name());
  // The sidecar call is the lookup's child.
  telemetry::ScopedSpanContext lookup_scope(lookup->context());
  in_flight_.fetch_add(1);
  client_->Get(key, [this, db, owned, key, tables = std::move(tables), lookup, near_generation,
                     p = std::shared_ptr<Participant>(std::move(p))](
                        absl::StatusOr<CacheLookup> r) mutable {
    SidecarResult(r.ok());
    lookup->SetAttribute("poolside.cache.outcome",
                         !r.ok()                              ? "error"
                         : r->outcome == CacheLookup::kHit   ? "hit"
                         : r->outcome == CacheLookup::kStale ? "stale"
                                                              : "miss");
    lookup->SetStatus(r.status());
    lookup->End();
    // A stale entry's refresh belongs to this call's trace.
    telemetry::ScopedSpanContext trace(p->work->trace);
    if (!r.ok()) {
      counters_.bypass.fetch_add(1, std::memory_order_relaxed);
      p->run_plain();
      in_flight_.fetch_sub(1);
      return;
    }
    if (r->outcome != CacheLookup::kMiss) {
      auto cached = std::make_shared<v1::ResultSet>();
      if (cached->ParseFromString(r->value)) {
        const bool stale = r->outcome == CacheLookup::kStale;
        (stale ? counters_.stale : counters_.hits).fetch_add(1, std::memory_order_relaxed);
        if (stale) {
          // One background refresh; this caller does not wait for it.
          Fly(db, *owned, key, r->generation, near_generation,
              TagsFor(*db, tables, owned->cache()),
              absl::Now() + absl::Milliseconds(limits_.default_timeout_ms()), nullptr);
        } else if (near_ != nullptr && near_generation != 0) {
          near_->Fill(key, cached, r->remaining, TagsFor(*db, tables, owned->cache()),
                      near_generation);
        }
        Deliver(*p, absl::OkStatus(), *cached, stale ? v1::STALE : v1::HIT);
        in_flight_.fetch_sub(1);
        return;
      }
      // Unreadable entry: refill it.
    }
    counters_.misses.fetch_add(1, std::memory_order_relaxed);
    auto participant = std::make_unique<Participant>(std::move(*p));
    const absl::Time deadline = participant->deadline;  // before the move below
    Fly(db, *owned, key, r->generation, near_generation, TagsFor(*db, tables, owned->cache()),
        deadline, std::move(participant));
    in_flight_.fetch_sub(1);
  });
}

void ReadCache::Deliver(Participant& p, const absl::Status& status, const v1::ResultSet& result,
                        v1::CacheOutcome outcome) {
  if (!p.work->Claim()) return;  // the caller went away
  Answer(*p.work, p.response, p.max_rows, p.max_bytes, status, result, outcome);
}

void ReadCache::Answer(Work& work, v1::ExecuteResponse* response, uint64_t max_rows,
                       uint64_t max_bytes, const absl::Status& status,
                       const v1::ResultSet& result, v1::CacheOutcome outcome) {
  absl::Status s = status;
  if (s.ok()) {
    const uint64_t rows = static_cast<uint64_t>(result.rows_size());
    const uint64_t bytes = result.ByteSizeLong();
    if (rows > max_rows) {
      s = absl::ResourceExhaustedError(absl::StrCat(
          "the result has ", rows, " rows; this call's row limit is ", max_rows));
    } else if (bytes > max_bytes) {
      s = absl::ResourceExhaustedError(absl::StrCat(
          "the result has ", bytes, " bytes; this call's byte limit is ", max_bytes));
    } else {
      *response->mutable_result() = result;
    }
  }
  response->set_cache(outcome);
  work.done(std::move(s));
}

void ReadCache::Fly(Database* db, const v1::ExecuteRequest& request, const std::string& key,
                    uint64_t generation, uint64_t near_generation, std::vector<std::string> tags,
                    absl::Time deadline, std::unique_ptr<Participant> participant) {
  std::shared_ptr<Flight> flight;
  {
    absl::MutexLock lock(&mu_);
    auto it = flights_.find(key);
    if (it != flights_.end()) {
      if (participant != nullptr) {
        counters_.coalesced.fetch_add(1, std::memory_order_relaxed);
        // Ends when the shared result is delivered (the participant is gone).
        participant->wait = telemetry::StartSpan(
            "cache.singleflight.wait", telemetry::SpanKind::kInternal, participant->work->trace);
        participant->wait.SetAttribute("db.namespace", db->name());
        it->second->participants.push_back(std::move(participant));
      }
      return;
    }
    flight = std::make_shared<Flight>();
    flight->key = key;
    flight->db = db;
    flight->generation = generation;
    flight->near_generation = near_generation;
    flight->tags = std::move(tags);
    flight->ttl = absl::Milliseconds(request.cache().ttl_ms());
    flight->stale = absl::Milliseconds(request.cache().stale_while_revalidate_ms());
    flight->trace = participant != nullptr ? participant->work->trace
                                           : telemetry::CurrentSpanContext();
    if (participant != nullptr) flight->participants.push_back(std::move(participant));
    flights_[key] = flight;
  }
  auto work = std::make_shared<OwnedStatementWork>();
  work->sql = request.sql();
  work->params = request.params();
  work->holder = "cache fill";
  work->trace = flight->trace;
  work->Prepare(deadline, limits_.max_rows(), limits_.max_bytes());
  if (absl::StartsWith(key, kReadOnlyScope)) {
    // A read-only caller's scope: the fill is a read-only transaction too.
    OwnedStatementWork* raw = work.get();
    work->batchable = false;
    work->exclusive = [raw](db::Connection& conn) -> absl::Status {
      db::Statement* st = &raw->statement;
      return conn.RunTransaction("BEGIN READ ONLY", {&st, 1}, raw->deadline, &raw->cancelled);
    };
  }
  flight->work = work;
  in_flight_.fetch_add(1);
  work->done = [this, flight](absl::Status s) {
    Land(flight, std::move(s));
    in_flight_.fetch_sub(1);
  };
  if (absl::Status s = db->Submit(work); !s.ok()) {
    if (work->Claim()) work->done(s);
  }
}

void ReadCache::Land(const std::shared_ptr<Flight>& flight, absl::Status status) {
  std::vector<std::unique_ptr<Participant>> participants;
  {
    absl::MutexLock lock(&mu_);
    auto it = flights_.find(flight->key);
    if (it != flights_.end() && it->second == flight) flights_.erase(it);
    participants.swap(flight->participants);
  }
  // The work's `done` (running this) holds the flight: the flight lets go of
  // the work, or neither (nor the result) is ever freed.
  const std::shared_ptr<OwnedStatementWork> work = std::move(flight->work);
  const v1::ResultSet& result = work->result;
  if (status.ok()) {
    std::string value = result.SerializeAsString();
    if (near_ != nullptr && flight->near_generation != 0 &&
        value.size() <= config_.max_value_bytes()) {
      near_->Fill(flight->key, std::make_shared<const v1::ResultSet>(result), flight->ttl,
                  flight->tags, flight->near_generation);
    }
    if (value.size() <= config_.max_value_bytes() && SidecarUsable()) {
      CacheFill fill;
      fill.key = flight->key;
      fill.value = std::move(value);
      fill.ttl = flight->ttl;
      fill.stale = flight->stale;
      fill.tags = flight->tags;
      fill.read_generation = flight->generation;
      auto span = std::make_shared<telemetry::Span>(
          telemetry::StartSpan("cache.fill", telemetry::SpanKind::kInternal, flight->trace));
      span->SetAttribute("poolside.cache.value_bytes", fill.value.size());
      span->SetAttribute("db.namespace", flight->db->name());
      telemetry::ScopedSpanContext fill_scope(span->context());
      in_flight_.fetch_add(1);
      client_->Set(std::move(fill), [this, span](absl::StatusOr<bool> stored) {
        SidecarResult(stored.ok());
        // "refused": the sidecar saw a newer invalidation (or would not admit it).
        span->SetAttribute("poolside.cache.outcome",
                           !stored.ok() ? "error" : *stored ? "stored" : "refused");
        span->SetStatus(stored.status());
        span->End();
        if (stored.ok()) {
          (*stored ? counters_.fills : counters_.fills_refused)
              .fetch_add(1, std::memory_order_relaxed);
        }
        in_flight_.fetch_sub(1);
      });
    }
  }
  const bool callers_own_problem = status.code() == absl::StatusCode::kDeadlineExceeded ||
                                   status.code() == absl::StatusCode::kCancelled ||
                                   status.code() == absl::StatusCode::kResourceExhausted;
  for (auto& p : participants) {
    if (callers_own_problem && absl::Now() < p->deadline) {
      // The shared query ran out of its first caller's time (or its limits);
      // this caller still has time of its own.
      p->run_plain();
      continue;
    }
    Deliver(*p, status, result, v1::MISS);
  }
}

void ReadCache::AfterWrite(Database* db, std::vector<Written> statements,
                           std::function<void()> done) {
  DbState* state = StateOf(*db);
  if (statements.empty() || state == nullptr) {
    done();
    return;
  }
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
    if (!SidecarUsable()) {
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
    in_flight_.fetch_add(1);
    std::vector<std::string> sent = tags;
    client_->Invalidate(std::move(sent), false, "write",
                        absl::Milliseconds(std::max<uint32_t>(config_.call_timeout_ms(), 200)),
                        [this, state, g, span, tags](absl::Status s) {
                          if (near_ != nullptr) near_->Invalidate(tags);
                          SidecarResult(s.ok());
                          span->SetAttribute("poolside.cache.outcome",
                                             s.ok() ? "invalidated" : "error");
                          span->SetStatus(s);
                          span->End();
                          // Not delivered: the cache may hold what this write
                          // changed, so the database bypasses it until flushed.
                          if (!s.ok()) MarkSuspect(state);
                          g->done();
                          in_flight_.fetch_sub(1);
                        });
  };
  for (size_t i = 0; i < g->statements.size(); ++i) {
    const Written& w = g->statements[i];
    Tables(db, w.sql, w.params, absl::Now() + absl::Seconds(5),
           [this, db, g, finish](absl::StatusOr<StatementTables> t) {
             bool last;
             {
               absl::MutexLock lock(&g->mu);
               if (!t.ok() || !t->explained) {
                 g->unknown = true;
               } else {
                 for (const std::string& table : t->tables) {
                   g->tags.push_back(TableTag(db->name(), table));
                 }
               }
               last = --g->pending == 0;
             }
             if (last) finish();
           });
  }
}

void ReadCache::Listen(DbState* state) {
  Database* db = state->db;
  absl::Duration backoff = absl::Milliseconds(100);
  auto pause = [&] {
    stopping_.WaitForNotificationWithTimeout(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(5));
  };
  while (!stopping_.HasBeenNotified()) {
    state->subscribed.store(false);
    db::ConnectionOptions options;
    options.dsn = db->config().dsn();
    options.application_name = absl::StrCat("poolside-listener/", db->name());
    options.connect_timeout = absl::Milliseconds(db->config().pool().connect_timeout_ms());
    absl::StatusOr<std::unique_ptr<db::Connection>> conn = db::Connection::Open(options);
    if (!conn.ok()) {
      telemetry::LogWarning("cache invalidation listener cannot connect; reads of this "
                            "database bypass the cache",
                            {{"database", db->name()}, {"error", std::string(conn.status().message())}});
      pause();
      continue;
    }
    // Triggers first (idempotent), then LISTEN, then the flush: whatever was
    // written before the flush is gone from the cache, and whatever is
    // written after it is notified.
    std::vector<std::string> resolved;   // as DDL names them
    std::vector<std::string> qualified;  // "schema.table", as plans and NOTIFY name them
    for (const std::string& table : state->tables) {
      google::protobuf::RepeatedPtrField<v1::Value> params;
      params.Add()->set_text_value(table);
      v1::ResultSet rs;
      ResultBudget budget{1, 1 << 20};
      ResultSetSink sink(&rs, &budget);
      db::Statement s{"SELECT c.oid::regclass::text, n.nspname || '.' || c.relname "
                      "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                      "WHERE c.oid = $1::text::regclass",
                      &params, &sink, absl::Now() + absl::Seconds(10)};
      absl::Status link = (*conn)->RunIndependent({&s});
      if (link.ok() && s.status.ok() && rs.rows_size() == 1) {
        resolved.push_back(rs.rows(0).values(0).text_value());
        qualified.push_back(rs.rows(0).values(1).text_value());
      } else {
        telemetry::LogError("cached table not found; its writes are not seen by the cache",
                            {{"database", db->name()}, {"table", table},
                             {"error", std::string((link.ok() ? s.status : link).message())}});
      }
    }
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
      telemetry::LogError("cannot install the invalidation triggers; retrying",
                          {{"database", db->name()}, {"error", std::string(installed.message())}});
      pause();
      continue;
    }
    if (absl::Status s = (*conn)->Listen(config_.channel(), absl::Now() + absl::Seconds(10));
        !s.ok()) {
      pause();
      continue;
    }
    {
      absl::MutexLock lock(&state->watched_mu);
      state->watched.clear();
      state->watched.insert(qualified.begin(), qualified.end());
    }
    while (!stopping_.HasBeenNotified() && !FlushDatabase(state, "reconnect")) pause();
    if (stopping_.HasBeenNotified()) break;
    state->subscribed.store(true);
    backoff = absl::Milliseconds(100);
    telemetry::LogInfo("cache invalidation listener subscribed",
                       {{"database", db->name()}, {"channel", config_.channel()},
                        {"tables", absl::StrJoin(resolved, ",")}});
    absl::Time last_ping = absl::Now();
    while (!stopping_.HasBeenNotified()) {
      std::vector<db::Notification> got;
      absl::Status s =
          (*conn)->AwaitNotifications(absl::Now() + absl::Milliseconds(250), &got);
      if (!s.ok()) break;
      if (!got.empty()) {
        counters_.notifications.fetch_add(got.size(), std::memory_order_relaxed);
        std::vector<std::string> tags;
        for (const db::Notification& n : got) tags.push_back(TableTag(db->name(), n.payload));
        std::sort(tags.begin(), tags.end());
        tags.erase(std::unique(tags.begin(), tags.end()), tags.end());
        if (near_ != nullptr) near_->Invalidate(tags);
        // A trace of its own, linked to nothing: the write that notified may
        // be anyone's (another replica's, a migration's).
        telemetry::Span span = telemetry::StartSpan(
            "cache.invalidate", telemetry::SpanKind::kInternal, telemetry::SpanContext());
        span.SetAttribute("db.namespace", db->name());
        span.SetAttribute("poolside.cache.source", "notify");
        span.SetAttribute("poolside.cache.tags", tags.size());
        absl::Status inv;
        {
          telemetry::ScopedSpanContext scope(span.context());  // the sidecar call joins it
          inv = InvalidateNow(*client_, tags, "notify");
        }
        span.SetAttribute("poolside.cache.outcome", inv.ok() ? "invalidated" : "error");
        span.SetStatus(inv);
        span.End();
        if (near_ != nullptr) near_->Invalidate(tags);  // see AfterWrite
        SidecarResult(inv.ok());
        if (!inv.ok()) MarkSuspect(state);
      }
      if (state->flushed_epoch.load() != state->suspect_epoch.load()) {
        FlushDatabase(state, "resume");
      }
      if (absl::Now() - last_ping > absl::Seconds(5)) {
        if (!(*conn)->Ping(absl::Now() + absl::Seconds(5))) break;
        last_ping = absl::Now();
      }
    }
    state->subscribed.store(false);
    if (!stopping_.HasBeenNotified()) {
      telemetry::LogWarning("cache invalidation listener lost its connection; reads of this "
                            "database bypass the cache until it resubscribes",
                            {{"database", db->name()}});
      MarkSuspect(state);
      pause();
    }
  }
}

}  // namespace poolside::query
