#include "services/query/read_cache.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/db/connection.h"
#include "common/telemetry/log.h"
#include "common/telemetry/trace.h"
#include "services/query/owned_statement.h"
#include "services/query/row_keys.h"

namespace poolside::query {
namespace {

// Keys longer than this bypass the cache (the sidecar's default key limit is 4096).
constexpr size_t kMaxKeyBytes = 4000;
// Keys of results read for read-only callers (CallAccess) start with this.
constexpr char kReadOnlyScope[] = "q1ro|";

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

}  // namespace

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

ReadCache::ReadCache(const v1::QueryCacheConfig& config, std::unique_ptr<CacheClient> client,
                     const absl::flat_hash_map<std::string, std::unique_ptr<Database>>& databases,
                     const v1::LimitsConfig& limits)
    : config_(config),
      limits_(limits),
      near_(MakeNearCache(config)),
      client_(std::move(client)),
      breaker_(BreakerOptions(config)),
      // Rows are invalidated by key only from the WAL.
      plans_(&in_flight_,
             [this](const Database& db) {
               const DatabaseInvalidation* state = invalidation_.Of(db);
               return state != nullptr && state->mode.load() == InvalidationMode::kWal;
             }),
      invalidation_(config, databases, InvalidationSinks()) {}

Invalidation::Sinks ReadCache::InvalidationSinks() {
  Invalidation::Sinks sinks;
  sinks.near = near_.get();
  sinks.client = client_.get();
  sinks.plans = &plans_;
  sinks.sidecar_result = [this](bool ok) { SidecarResult(ok); };
  sinks.notifications = &counters_.notifications;
  sinks.flushes = &counters_.flushes;
  return sinks;
}

ReadCache::~ReadCache() {
  client_->StopWatching();
  // Its listeners stop; reads waiting for their min_lsn run on the database.
  invalidation_.Stop();
  // Sidecar callbacks, statements and flights reference this object.
  in_flight_.WaitIdle();
}

absl::Status ReadCache::CheckInvalidation(absl::Time deadline) {
  return invalidation_.CheckWal(deadline);
}

void ReadCache::Start() {
  if (near_ != nullptr) {
    NearCache* near = near_.get();
    if (!client_->Watch([near](const CacheInvalidationEvent& e) { near->OnEvent(e); })) {
      telemetry::LogWarning(
          "the cache client cannot watch invalidations; the near cache stays off");
    }
  }
  invalidation_.Start();
}

uint64_t ReadCache::ReflectedLsn(const Database& db, uint64_t min_lsn) const {
  return invalidation_.ReflectedLsn(db, min_lsn);
}

bool ReadCache::DatabaseReady(absl::string_view database) const {
  return invalidation_.Ready(database);
}

std::vector<ReadCache::InvalidationState> ReadCache::InvalidationStates() const {
  return invalidation_.Statuses();
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
  const DatabaseInvalidation* state = invalidation_.Of(db);
  if (state == nullptr) return false;
  if (std::optional<Bypass> why = invalidation_.NotReady(*state)) {
    CountBypass(*why);
    return false;
  }
  return true;
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

void ReadCache::SidecarResult(const absl::Status& s) {
  if (s.code() != absl::StatusCode::kInvalidArgument) {
    SidecarResult(s.ok());
    return;
  }
  // The sidecar answered and refused this one request (a key or a tag past
  // its maxKeyBytes, more tags than its maxTags): an error, but no sign it is
  // failing. Counted against the breaker, one caller's oversized requests
  // made every caller's reads skip the sidecar.
  counters_.sidecar_errors.fetch_add(1, std::memory_order_relaxed);
  breaker_.Record(true);
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
  DatabaseInvalidation* state = invalidation_.Of(*db);
  const uint64_t min_lsn = request.min_lsn();
  if (state != nullptr && min_lsn != 0 && state->applied_lsn.load() < min_lsn) {
    const uint32_t wait_ms = config_.wal().token_wait_ms();
    if (state->mode.load() != InvalidationMode::kWal || wait_ms == 0) {
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
    invalidation_.WaitForLsn(
        state, min_lsn, until, [this, waiting = std::move(waiting)](bool reached) mutable {
          const std::shared_ptr<CachedRead> r = std::move(waiting);
          if (reached && invalidation_.Ready(r->db()->name())) {
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
  if (const DatabaseInvalidation* state = invalidation_.Of(db); state != nullptr) {
    if (std::optional<Bypass> why = invalidation_.NotReady(*state)) {
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
  if (DatabaseInvalidation* state = invalidation_.Of(*read->db());
      state == nullptr || !state->Watches((*plan)->tables)) {
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
  SidecarResult(found.status());
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
  DatabaseInvalidation* state = invalidation_.Of(*db);
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
  // Like a caller's read, a fill whose replica fails before it has a result
  // runs again on another member (Database's read retry), with its fence.
  work->plain_read = true;
  work->cache_fill = true;
  work->min_lsn = invalidation_.ReplicaFillFence(state);
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
        SidecarResult(done.status());
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
                           std::string commit_snapshot, std::function<void()> done) {
  DatabaseInvalidation* state = invalidation_.Of(*db);
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
    std::vector<std::string> tables;  // "schema.table"
    std::vector<Written> statements;
    std::function<void()> done;
  };
  auto g = std::make_shared<Gather>();
  // The write's trace: the invalidation is part of answering it.
  const telemetry::SpanContext trace = telemetry::CurrentSpanContext();
  g->pending = statements.size();
  g->statements = std::move(statements);
  g->done = std::move(done);
  // Unparsable (not expected from PostgreSQL): nothing is recorded, and the
  // relay's delivery of this commit is applied like any other.
  std::optional<XidSnapshot> snapshot;
  if (!commit_snapshot.empty()) {
    if (absl::StatusOr<XidSnapshot> parsed = XidSnapshot::Parse(commit_snapshot); parsed.ok()) {
      snapshot = *std::move(parsed);
    }
  }
  auto finish = [this, db, state, g, trace, snapshot = std::move(snapshot)] {
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
    // The tables a relayed change of which this write's snapshot covers may
    // be skipped (OwnWriteCover), recorded once the near cache and the
    // sidecar have both dropped them (below): from then on every entry such
    // a change would drop was looked up after this invalidation. Recorded
    // any earlier, a skipped change could move the applied position past
    // the write while the sidecar still held the entry it replaced.
    std::optional<std::vector<std::string>> cover;
    if (snapshot.has_value() && state->mode.load() == InvalidationMode::kWal) {
      cover = g->unknown ? std::vector<std::string>{std::string(OwnWriteCover::kEveryTable)}
                         : g->tables;
    }
    // In the near cache both before and after the sidecar: a read that began
    // in between may have found the old entry in the sidecar and filled it in.
    if (near_ != nullptr) near_->Invalidate(tags);
    if (!breaker_.Usable()) {
      state->MarkSuspect();
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
        [this, state, g, span, tags, cover = std::move(cover), snapshot,
         token = in_flight_.Begin()](absl::Status s) mutable {
          const InFlight::Token held = std::move(token);
          if (near_ != nullptr) near_->Invalidate(tags);
          if (s.ok() && cover.has_value()) {
            state->own_cover.Record(*cover, *snapshot, state->stream.load(), absl::Now());
          }
          SidecarResult(s.ok());
          span->SetAttribute("poolside.cache.outcome", s.ok() ? "invalidated" : "error");
          span->SetStatus(s);
          span->End();
          // Not delivered: the cache may hold what this write
          // changed, so the database bypasses it until flushed.
          if (!s.ok()) state->MarkSuspect();
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
                         g->tables.push_back(table);
                       }
                     }
                     last = --g->pending == 0;
                   }
                   if (last) finish();
                 });
  }
}

}  // namespace poolside::query
