#include "services/query/database.h"

#include <pthread.h>

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "common/db/catalog.h"
#include "common/db/error.h"
#include "common/db/text_rows.h"
#include "common/telemetry/log.h"
#include "common/telemetry/trace.h"

namespace poolside::query {
namespace {

// A pool.acquire span for a traced call: the wait for a connection (calls
// pipelined together share one connection and so one wait).
void RecordAcquire(const Work& work, const std::string& database, absl::Time start, absl::Time end,
                   const absl::Status& status) {
  if (!work.trace.valid()) return;
  telemetry::Span span =
      telemetry::StartSpan("pool.acquire", telemetry::SpanKind::kInternal, work.trace, start);
  span.SetAttribute("db.system.name", "postgresql");
  span.SetAttribute("db.namespace", database);
  span.SetAttribute("poolside.pool.wait_seconds", absl::ToDoubleSeconds(end - start));
  span.SetStatus(status);
  span.End(end);
}

// Keeps what kCommitLsnSql returns: the position (an int8) and the snapshot.
class LsnSink : public db::RowSink {
 public:
  uint64_t lsn = 0;
  std::string snapshot;

 protected:
  absl::Status OnRow(const v1::Row& row) override {
    if (row.values_size() == 2 && row.values(0).has_int64_value()) {
      lsn = static_cast<uint64_t>(row.values(0).int64_value());
      snapshot = row.values(1).text_value();
    }
    return absl::OkStatus();
  }
};

}  // namespace

absl::StatusOr<uint64_t> ReadCommitLsn(db::Connection& conn, absl::Time deadline,
                                       std::string* snapshot) {
  LsnSink sink;
  db::Statement st;
  st.sql = kCommitLsnSql;
  st.sink = &sink;
  st.deadline = deadline;
  db::Statement* ptr = &st;
  if (absl::Status link = conn.RunIndependent({&ptr, 1}); !link.ok()) return link;
  if (!st.status.ok()) return st.status;
  if (sink.lsn == 0) return absl::InternalError("the server returned no WAL position");
  if (snapshot != nullptr) *snapshot = std::move(sink.snapshot);
  return sink.lsn;
}

db::ManagedDatabaseOptions QueryDatabaseOptions() {
  return {.application = "poolside-query", .statement_cache = true, .name_server_in_errors = true};
}

Database::Database(std::shared_ptr<ConnectionPool> pool, const v1::DatabaseConfig& config,
                   std::string role, std::string member)
    : config_(config), role_(std::move(role)), member_(std::move(member)), pool_(std::move(pool)) {}

Database::Database(const v1::DatabaseConfig& config)
    : own_(std::make_unique<db::ManagedDatabase>(config, QueryDatabaseOptions())), config_(config) {
  absl::StatusOr<std::shared_ptr<ConnectionPool>> pool = own_->Pool("");
  // Only a stopped ManagedDatabase refuses its DSN user's pool.
  pool_ = *std::move(pool);
}

Database::~Database() {
  if (replicas_ != nullptr) replicas_->UnwatchUnhealthy(this);
  std::deque<std::shared_ptr<Work>> left;
  std::vector<std::thread> workers;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    left.swap(queue_);
    workers.swap(workers_);
    work_ready_.SignalAll();
  }
  for (auto& w : left) {
    int expected = Work::kQueued;
    if (w->state.compare_exchange_strong(expected, Work::kRunning)) {
      w->done(absl::UnavailableError("the query service is shutting down"));
    }
  }
  for (auto& t : workers) t.join();
}

size_t Database::queued() const {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

absl::Status Database::Submit(std::shared_ptr<Work> work) {
  return replicas_ == nullptr ? Enqueue(std::move(work)) : Route(std::move(work));
}

void Database::AttachReplicas(std::shared_ptr<Replicas> replicas) {
  replicas_ = std::move(replicas);
  replicas_->WatchUnhealthy(
      this, [this](const std::vector<std::string>& members) { GiveUpReadsOn(members); });
}

void Database::Track(const std::shared_ptr<Work>& work, const std::string& member) {
  absl::MutexLock lock(&tracked_mu_);
  if (tracked_.size() >= purge_at_) {
    absl::erase_if(tracked_, [](const auto& entry) { return entry.second.work.expired(); });
    purge_at_ = std::max<size_t>(64, 2 * tracked_.size());
  }
  tracked_.insert_or_assign(work.get(), TrackedRead{member, work});
}

void Database::Untrack(Work* work) {
  absl::MutexLock lock(&tracked_mu_);
  tracked_.erase(work);
}

void Database::GiveUpReadsOn(const std::vector<std::string>& members) {
  absl::MutexLock lock(&tracked_mu_);
  for (auto& [raw, read] : tracked_) {
    if (std::find(members.begin(), members.end(), read.member) == members.end()) continue;
    // Locked so the work cannot be freed under the store; tracked works
    // are not done yet (done() untracks first, under this lock).
    if (std::shared_ptr<Work> work = read.work.lock()) {
      work->member_unhealthy_.store(true, std::memory_order_relaxed);
    }
  }
}

absl::StatusOr<std::string> Database::AdminDsn() const {
  if (replicas_ == nullptr) return config_.dsn();
  return replicas_->PrimaryDsn(role_);
}

std::vector<Database*> Database::Members() {
  std::vector<Database*> out;
  absl::MutexLock lock(&members_mu_);
  for (auto& [id, m] : members_) out.push_back(m.db.get());
  for (auto& db : retired_) out.push_back(db.get());
  return out;
}

absl::StatusOr<Database*> Database::MemberPool(const std::string& id, const std::string& dsn) {
  absl::MutexLock lock(&members_mu_);
  auto it = members_.find(id);
  if (it != members_.end() && it->second.dsn == dsn) return it->second.db.get();
  db::ManagedDatabase& managed = replicas_->database();
  absl::StatusOr<v1::DatabaseConfig> c = managed.PoolConfig(role_, dsn);
  if (!c.ok()) return c.status();
  absl::StatusOr<std::shared_ptr<ConnectionPool>> pool = managed.MemberPool(role_, id, dsn);
  if (!pool.ok()) return pool.status();
  auto made = std::make_unique<Database>(*std::move(pool), *c, role_, id);
  Database* out = made.get();
  if (it != members_.end()) {
    retired_.push_back(std::move(it->second.db));
    it->second = Member{dsn, std::move(made)};
  } else {
    members_.emplace(id, Member{dsn, std::move(made)});
  }
  return out;
}

// One routed call's state, shared by its `done` wrapper and its routings.
struct Database::RoutedCall {
  uint64_t min_lsn = 0;
  // Counts as outstanding on its member until the work is done.
  std::optional<db::Topology::Route> route;
  // Held for a new primary once after its connection could not be had.
  bool held_after_failure = false;
  // The primary's generation when it was last routed.
  uint64_t generation = 0;
  // Members a read failed on (RetryOnAnotherMember), passed over by Pick.
  std::vector<std::string> failed_members;
  // In the in-flight registry (a plain read routed to a replica).
  bool tracked = false;
};

absl::Status Database::Route(std::shared_ptr<Work> work) {
  auto call = std::make_shared<RoutedCall>();
  call->min_lsn = work->replica_ok ? work->min_lsn : 0;
  if (work->replica_ok && work->cache_fill) {
    call->min_lsn = std::max(call->min_lsn, replicas_->WriteFence());
  }
  Work* raw = work.get();
  std::weak_ptr<Work> weak = work;
  work->done = [this, raw, weak, call, replicas = replicas_,
                done = std::move(work->done)](absl::Status s) {
    if (call->tracked) {
      Untrack(raw);
      call->tracked = false;
    }
    if (!s.ok() && !raw->on_replica && raw->connection_failed_ && !raw->member.empty() &&
        db::IsConnectionFailure(s) && !replicas->stopped()) {
      // Its connection to the primary failed: other calls sent now would go
      // out on the pool's other connections to the same server and most
      // likely fail alike. Held instead until the primary's next probe,
      // asked for now, names it again or finds it gone.
      replicas->MarkSuspect(raw->member, s);
    }
    if (!s.ok() && raw->on_replica && RetryOnAnotherMember(raw, weak, call, s)) return;
    if (!s.ok() && raw->on_replica && RunRefusedWriteOnPrimary(raw, weak, call, s)) return;
    if (s.code() == absl::StatusCode::kUnavailable && raw->on_replica &&
        raw->member_unhealthy_.load(std::memory_order_relaxed)) {
      // Given up on its member and not run elsewhere: a stream that had
      // sent rows (they cannot be sent again), or out of retries or time.
      s = absl::UnavailableError(absl::StrCat(
          "database ", config_.name(), ": replica ", raw->member,
          " stopped answering (its probes failed) while the read ran there, and the read could "
          "not run again elsewhere (rows had already been sent, or no member or time was left); "
          "retry the call"));
    }
    // The primary refused a write as read-only (SQLSTATE 25006): it was
    // demoted, and the write's transaction rolled back. Not for a caller
    // whose own transactions are read-only.
    const bool demoted = !raw->not_run_ && raw->may_write && !raw->read_only && !raw->on_replica &&
                         db::SqlStateOf(s) == "25006" && raw->Rewind();
    if (((raw->not_run_ && s.code() == absl::StatusCode::kUnavailable) || demoted) &&
        !raw->on_replica && !call->held_after_failure &&
        replicas->failover_buffer() > absl::ZeroDuration()) {
      // The primary could not be reached, or was demoted, and nothing of
      // the call took effect: a switchover or failover may be under way.
      // Held until the probes name a primary anew.
      std::shared_ptr<Work> strong = weak.lock();
      if (strong != nullptr) {
        if (demoted) {
          // Until the primary's next probe, asked for now: a demoted member
          // is in recovery by then (held until a new primary is named); one
          // that refuses writes without being demoted (its database set
          // default_transaction_read_only) is named primary again, under a
          // new generation, and the write runs there once more and answers
          // its refusal, rather than being held for failoverBufferMs for a
          // primary that does not change.
          replicas->MarkSuspect(raw->member, s);
        }
        call->held_after_failure = true;
        raw->not_run_ = false;
        const uint64_t generation = call->generation;
        call->route.reset();
        raw->state.store(Work::kQueued);
        if (HoldForPrimary(strong, call, generation).ok()) return;
        raw->state.store(Work::kRunning);
      }
    }
    if (raw->may_write && !raw->on_replica) {
      // Before the caller hears of it (and invalidates the cache): fills
      // from replicas from now on need this write replayed.
      const bool committed = s.ok() && raw->commit_lsn != 0;
      const bool may_have_run =
          !s.ok() && !raw->not_run_ &&
          (s.code() == absl::StatusCode::kUnavailable ||
           s.code() == absl::StatusCode::kDeadlineExceeded ||
           s.code() == absl::StatusCode::kCancelled || s.code() == absl::StatusCode::kUnknown ||
           s.code() == absl::StatusCode::kInternal);
      if (committed) {
        replicas->NoteWrite(raw->commit_lsn);
      } else if (s.ok() || may_have_run) {
        replicas->NoteWrite(0);
      }
    }
    call->route.reset();
    done(std::move(s));
  };
  if (work->replica_ok && work->wait_for_replica && call->min_lsn != 0 &&
      replicas_->token_wait() > absl::ZeroDuration() && replicas_->WorthWaiting(call->min_lsn)) {
    const absl::Time until = std::min(work->deadline, absl::Now() + replicas_->token_wait());
    replicas_->AwaitReplay(call->min_lsn, until, [this, work, call](bool) {
      if (work->state.load() != Work::kQueued) return;  // abandoned meanwhile
      if (absl::Status s = RouteNow(work, call); !s.ok() && work->Claim()) work->done(s);
    });
    return absl::OkStatus();
  }
  return RouteNow(work, call);
}

absl::Status Database::RouteNow(const std::shared_ptr<Work>& work,
                                const std::shared_ptr<RoutedCall>& call) {
  const uint64_t generation = replicas_->primary_generation();
  absl::StatusOr<db::Topology::Route> route =
      replicas_->topology().Pick(work->replica_ok, call->min_lsn, call->failed_members);
  if (!route.ok()) {
    // No primary known (rather than no replica for a read that must not
    // fall back): held until one is.
    if (route.status().code() == absl::StatusCode::kUnavailable &&
        replicas_->topology().primary().empty() &&
        replicas_->failover_buffer() > absl::ZeroDuration()) {
      if (absl::Status held = HoldForPrimary(work, call, generation); held.ok()) return held;
    }
    return route.status();
  }
  absl::StatusOr<Database*> target = MemberPool(route->id(), route->dsn());
  if (!target.ok()) return target.status();
  work->member = route->id();
  work->on_replica = !route->primary();
  work->member_lsn = route->lsn();
  call->generation = generation;
  call->route = *std::move(route);
  if (work->on_replica && work->plain_read && work->replica_ok) {
    Track(work, work->member);
    call->tracked = true;
  }
  absl::Status queued = (*target)->Submit(work);
  if (!queued.ok() && call->tracked) {
    Untrack(work.get());
    call->tracked = false;
  }
  return queued;
}

bool Database::RetryOnAnotherMember(Work* raw, const std::weak_ptr<Work>& weak,
                                    const std::shared_ptr<RoutedCall>& call,
                                    const absl::Status& failure) {
  const ReadRetryReason reason =
      ReplicaReadRetry(failure, {.on_replica = raw->on_replica,
                                 .plain_read = raw->plain_read && raw->replica_ok,
                                 .connection_failed = raw->connection_failed_,
                                 .no_connection = raw->no_connection_,
                                 .abandoned = raw->member_unhealthy_.load(),
                                 .cancelled = raw->cancelled.load(std::memory_order_relaxed),
                                 .past_deadline = absl::Now() >= raw->deadline,
                                 .stopping = replicas_->stopped(),
                                 .retries = static_cast<int>(call->failed_members.size())});
  if (reason == ReadRetryReason::kNone) return false;
  std::shared_ptr<Work> strong = weak.lock();
  if (strong == nullptr) return false;
  // A member whose connection failed is passed over by every call until its
  // next good probe; not for a session ended by the server's administrator
  // (57P01 is also pg_terminate_backend's): a member really shutting down
  // refuses the next connection, and that marks it.
  if (reason != ReadRetryReason::kServerShutdown) replicas_->MarkSuspect(raw->member, failure);
  // Last: a stream that already sent rows cannot start over.
  if (!raw->Rewind()) return false;
  call->failed_members.push_back(raw->member);
  const std::string failed_member = raw->member;
  const uint64_t failed_lsn = raw->member_lsn;
  const bool gave_up = raw->member_unhealthy_.load();
  // Untracked already (done() did that first): nothing raises its
  // member_unhealthy_ again. Until routed again the work is nowhere: held for
  // a primary that never comes, its failure must not read as this member's
  // again.
  raw->ClearRun();
  if (absl::Status routed = RouteNow(strong, call); routed.ok()) {
    replicas_->CountReadRetry(reason);
    return true;
  }
  // Nowhere else to go (no other member, or no primary to fall back to):
  // the first failure answers, naming where it happened, unless the caller
  // abandoned the call meanwhile.
  if (!raw->Claim()) return true;
  raw->RestoreReplica(failed_member, failed_lsn);
  raw->member_unhealthy_.store(gave_up);
  return false;
}

bool Database::RunRefusedWriteOnPrimary(Work* raw, const std::weak_ptr<Work>& weak,
                                        const std::shared_ptr<RoutedCall>& call,
                                        const absl::Status& failure) {
  // A read-only caller's work (a read-only transaction, a read-only
  // principal's statement) would be refused on the primary too: 25006 is
  // its true answer.
  if (db::SqlStateOf(failure) != "25006" || raw->read_only || !raw->replica_ok ||
      raw->cancelled.load(std::memory_order_relaxed) || absl::Now() >= raw->deadline ||
      replicas_->stopped()) {
    return false;
  }
  std::shared_ptr<Work> strong = weak.lock();
  if (strong == nullptr) return false;
  // Last: a stream that already sent rows cannot start over (it answers
  // 25006: the caller can send it again with primary set).
  if (!raw->Rewind()) return false;
  const std::string failed_member = raw->member;
  const uint64_t failed_lsn = raw->member_lsn;
  // From now on it is what it proved to be: work for the primary that may
  // write (its position unknown: fills read the primary until the next
  // probe of it), never run on a replica again.
  raw->replica_ok = false;
  raw->plain_read = false;
  raw->may_write = true;
  raw->ClearRun();
  if (absl::Status routed = RouteNow(strong, call); routed.ok()) return true;
  // No primary to run it on: the replica's refusal answers, unless the
  // caller abandoned the call meanwhile.
  if (!raw->Claim()) return true;
  raw->RestoreReplica(failed_member, failed_lsn);
  raw->may_write = false;
  return false;
}

absl::Status Database::HoldForPrimary(const std::shared_ptr<Work>& work,
                                      const std::shared_ptr<RoutedCall>& call,
                                      uint64_t generation) {
  work->held_by_.store(&replicas_->database(), std::memory_order_release);
  absl::Status held = replicas_->HoldForPrimary(
      generation, work->request_bytes, work->deadline,
      [this, work, call](bool known) {
        work->held_by_.store(nullptr, std::memory_order_release);
        if (work->state.load() != Work::kQueued) return;  // abandoned meanwhile
        absl::Status s = known
                             ? RouteNow(work, call)
                             : absl::UnavailableError(absl::StrCat(
                                   "database ", config_.name(),
                                   ": no primary was named within failoverBufferMs (",
                                   replicas_->config().topology().failover_buffer_ms(),
                                   " ms) or the call's deadline; the call did not run, retry it"));
        if (!s.ok() && work->Claim()) work->done(s);
      },
      // Its `then` keeps the work alive as long as the hold is asked this.
      [raw = work.get()] { return raw->state.load() == Work::kAbandoned; });
  if (!held.ok()) work->held_by_.store(nullptr, std::memory_order_release);
  return held;
}

absl::Status Database::Enqueue(std::shared_ptr<Work> work) {
  work->statement.deadline = work->deadline;
  work->statement.cancelled = &work->cancelled;
  work->statement.trace = work->trace;
  work->queue_timeouts_ = queue_timeouts_;
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the query service is shutting down");
  if (queue_.size() >= config_.pool().max_queue()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("database ", config_.name(), " has ", queue_.size(),
                     " calls waiting already (max_queue); retry with backoff"));
  }
  queue_.push_back(std::move(work));
  MaybeStartWorker();
  work_ready_.Signal();
  return absl::OkStatus();
}

void Database::MaybeStartWorker() {
  // Workers start on demand, one per connection the pool may open: max_size,
  // and max_overflow more, so that overflow connections get used (each
  // worker holds at most one connection at a time).
  const size_t max_workers = size_t{config_.pool().max_size()} + config_.pool().max_overflow();
  if (idle_workers_ > 0 || workers_.size() >= max_workers) return;
  workers_.emplace_back([this] {
    // "db:" and the database name, as far as the 15 bytes Linux keeps allow.
    pthread_setname_np(pthread_self(), absl::StrCat("db:", config_.name()).substr(0, 15).c_str());
    WorkerLoop();
  });
}

absl::StatusOr<ConnectionPool::Lease> Database::AcquireLive(
    absl::Time deadline, std::string holder, absl::Span<const std::atomic<bool>* const> abandon) {
  for (size_t attempt = 0;; ++attempt) {
    absl::StatusOr<ConnectionPool::Lease> lease = pool_->Acquire(deadline, holder, abandon);
    if (!lease.ok()) {
      if (lease.status().code() == absl::StatusCode::kDeadlineExceeded) {
        return absl::DeadlineExceededError(absl::StrCat(
            "no connection to database ", config_.name(),
            " became free before the deadline (pool maxSize ", config_.pool().max_size(),
            ", maxOverflow ", config_.pool().max_overflow(), ")"));
      }
      return lease.status();
    }
    if ((*lease)->LooksAlive()) return lease;
    // Closed by the server (restart, idle kill, failover): replace it.
    lease->MarkBroken();
    if (attempt > config_.pool().max_size() + config_.pool().max_overflow()) {
      return absl::UnavailableError(
          absl::StrCat("database ", config_.name(), ": connections keep failing"));
    }
  }
}

absl::Status Database::WarmUp() {
  return pool_->WarmUp(absl::Milliseconds(config_.pool().startup_retry_ms()));
}

void Database::WorkerLoop() {
  const size_t depth = std::max<uint32_t>(1, config_.pool().max_pipeline_depth());
  std::vector<std::shared_ptr<Work>> batch;
  while (true) {
    batch.clear();
    {
      absl::MutexLock lock(&mu_);
      ++idle_workers_;
      while (!stopping_ && queue_.empty()) work_ready_.Wait(&mu_);
      --idle_workers_;
      if (stopping_) return;
      // The next call; if it is a single statement, the single statements
      // queued right behind it join its pipeline.
      while (!queue_.empty() && batch.size() < depth) {
        std::shared_ptr<Work>& next = queue_.front();
        if (!batch.empty() && (!next->batchable || !batch.front()->batchable)) break;
        int expected = Work::kQueued;
        if (next->state.compare_exchange_strong(expected, Work::kRunning)) {
          batch.push_back(std::move(next));
        }
        queue_.pop_front();
        if (!batch.empty() && !batch.front()->batchable) break;
      }
      if (!queue_.empty()) {
        MaybeStartWorker();
        work_ready_.Signal();
      }
    }
    if (batch.empty()) continue;
    if (batch.front()->batchable) {
      RunBatch(batch);
    } else {
      RunExclusive(*batch.front());
    }
  }
}

bool Database::FailIfGivenUp(Work& work) {
  if (!work.member_unhealthy_.load(std::memory_order_relaxed)) return false;
  // Not run: a lost connection, so routing runs it elsewhere.
  work.not_run_ = true;
  work.done(absl::UnavailableError(
      "connection to the database given up: the server stopped answering (its probes failed)"));
  return true;
}

void Database::RunBatch(std::vector<std::shared_ptr<Work>>& batch) {
  // Reads given up on this member while they waited for a worker do not
  // start here: routing sends them elsewhere.
  batch.erase(std::remove_if(batch.begin(), batch.end(),
                             [](const std::shared_ptr<Work>& w) { return FailIfGivenUp(*w); }),
              batch.end());
  if (batch.empty()) return;
  absl::Time acquire_deadline = absl::InfinitePast();
  // Reads given up on this member while a connection is made for them give
  // the connect up (a server that stopped answering may not answer it).
  absl::InlinedVector<const std::atomic<bool>*, 8> give_up;
  for (auto& w : batch) {
    acquire_deadline = std::max(acquire_deadline, w->deadline);
    if (w->on_replica) give_up.push_back(&w->member_unhealthy_);
  }
  const absl::Time acquire_start = absl::Now();
  absl::StatusOr<ConnectionPool::Lease> lease =
      AcquireLive(acquire_deadline, batch.front()->holder, give_up);
  if (telemetry::GlobalTracer() != nullptr) {
    const absl::Time end = absl::Now();
    for (auto& w : batch) RecordAcquire(*w, name(), acquire_start, end, lease.status());
  }
  if (!lease.ok()) {
    for (auto& w : batch) {
      w->not_run_ = true;
      w->no_connection_ = true;
      w->connection_failed_ = true;
      w->done(lease.status());
    }
    return;
  }
  std::vector<db::Statement*> statements;
  statements.reserve(batch.size() + 1);
  bool want_lsn = false;
  for (auto& w : batch) {
    statements.push_back(&w->statement);
    want_lsn = want_lsn || w->wants_commit_lsn;
  }
  pipelines_.fetch_add(1, std::memory_order_relaxed);
  pipelined_statements_.fetch_add(statements.size(), std::memory_order_relaxed);
  // Writes that want their commit's position: one read of it after all of
  // them, in the same round trip (each statement committed at its Sync).
  LsnSink lsn_sink;
  db::Statement lsn;
  if (want_lsn) {
    lsn.sql = kCommitLsnSql;
    lsn.sink = &lsn_sink;
    lsn.deadline = absl::InfinitePast();
    for (auto& w : batch) lsn.deadline = std::max(lsn.deadline, w->deadline);
    statements.push_back(&lsn);
  }
  // One pipeline: any of its reads given up gives the connection up (only
  // reads on a replica are ever given up).
  (*lease)->AbandonWhen(give_up);
  uint64_t reruns = 0;
  absl::Status link = (*lease)->RunIndependent(statements, &reruns);
  (*lease)->AbandonWhen({});
  if (reruns > 0) pipeline_reruns_.fetch_add(reruns, std::memory_order_relaxed);
  if (want_lsn && link.ok() && lsn.status.ok() && lsn_sink.lsn != 0) {
    for (auto& w : batch) {
      if (w->wants_commit_lsn && w->statement.status.ok()) {
        w->commit_lsn = lsn_sink.lsn;
        w->commit_snapshot = lsn_sink.snapshot;
      }
    }
  }
  const bool lost = !link.ok() || (*lease)->broken();
  if (lost) lease->MarkBroken();
  lease->Release();
  if (lost) RetryBatch(batch);
  for (auto& w : batch) {
    // A statement its server never executed (the session ended first, e.g.
    // the server is shutting down for a switchover) took effect nowhere:
    // routing may hold it for a new primary like one that found no
    // connection.
    if (!w->statement.status.ok() && w->statement.reach == db::Reach::kNotRun) w->not_run_ = true;
    w->connection_failed_ = lost;
    w->done(w->statement.status);
  }
}

void Database::RetryBatch(std::vector<std::shared_ptr<Work>>& batch) {
  std::vector<db::Statement*> again;
  absl::InlinedVector<const std::atomic<bool>*, 8> give_up;
  absl::Time deadline = absl::InfinitePast();
  const std::string* holder = nullptr;
  for (auto& w : batch) {
    db::Statement& s = w->statement;
    if (s.status.ok() || s.reach == db::Reach::kAnswered) continue;
    // A write that may have run is not run twice: its status says whether it
    // was rolled back or its outcome is unknown. Nothing that ran on a
    // replica wrote anything (a named query declared read-only, which
    // poolside cannot prove a read, included).
    const bool read = s.may_share_sync || w->read_only || w->on_replica;
    if (s.reach == db::Reach::kMayHaveRun && !read) continue;
    if (absl::Now() >= w->deadline || w->cancelled.load(std::memory_order_relaxed)) continue;
    // Given up on this member: routing runs it elsewhere.
    if (w->member_unhealthy_.load(std::memory_order_relaxed)) continue;
    if (s.sink != nullptr && !s.sink->Rewind()) continue;
    again.push_back(&s);
    if (w->on_replica) give_up.push_back(&w->member_unhealthy_);
    deadline = std::max(deadline, w->deadline);
    if (holder == nullptr) holder = &w->holder;
  }
  if (again.empty()) return;
  // The first failure stands if no connection can be had now.
  absl::StatusOr<ConnectionPool::Lease> lease = AcquireLive(deadline, *holder, give_up);
  // None: each keeps its first outcome (RunBatch marks what never ran).
  if (!lease.ok()) return;
  retries_.fetch_add(again.size(), std::memory_order_relaxed);
  pipelines_.fetch_add(1, std::memory_order_relaxed);
  pipelined_statements_.fetch_add(again.size(), std::memory_order_relaxed);
  uint64_t reruns = 0;
  (*lease)->AbandonWhen(give_up);
  absl::Status link = (*lease)->RunIndependent(again, &reruns);
  (*lease)->AbandonWhen({});
  if (reruns > 0) pipeline_reruns_.fetch_add(reruns, std::memory_order_relaxed);
  if (!link.ok() || (*lease)->broken()) lease->MarkBroken();
}

void Database::RunExclusive(Work& work) {
  if (absl::Now() >= work.deadline) {
    queue_timeouts_->fetch_add(1, std::memory_order_relaxed);
    work.done(absl::DeadlineExceededError("deadline passed while waiting for a worker"));
    return;
  }
  if (FailIfGivenUp(work)) return;
  absl::Status outcome;
  db::Reach first_reach = db::Reach::kMayHaveRun;
  for (int attempt = 0; attempt < 2; ++attempt) {
    const absl::Time acquire_start = absl::Now();
    const std::atomic<bool>* give_up[] = {&work.member_unhealthy_};
    absl::StatusOr<ConnectionPool::Lease> lease =
        AcquireLive(work.deadline, work.holder, absl::MakeSpan(give_up, work.on_replica ? 1 : 0));
    if (telemetry::GlobalTracer() != nullptr) {
      RecordAcquire(work, name(), acquire_start, absl::Now(), lease.status());
    }
    if (!lease.ok()) {
      // On a second attempt the first failure is the better answer; it ran
      // nothing if the first attempt did not either.
      work.not_run_ = attempt == 0 || first_reach == db::Reach::kNotRun;
      work.no_connection_ = attempt == 0;
      work.connection_failed_ = true;
      if (attempt == 0) outcome = lease.status();
      break;
    }
    {
      // The statements run on this thread: their spans are the call's children.
      telemetry::ScopedSpanContext trace(work.trace);
      const std::atomic<bool>* give_up[] = {&work.member_unhealthy_};
      (*lease)->AbandonWhen(absl::MakeSpan(give_up, work.on_replica ? 1 : 0));
      outcome = work.exclusive(**lease);
      (*lease)->AbandonWhen({});
    }
    const bool lost = (*lease)->broken();
    const db::Reach reach = (*lease)->last_call_reach();
    if (attempt == 0) first_reach = reach;
    work.connection_failed_ = lost;
    if (lost) lease->MarkBroken();
    lease->Release();
    // Run again only what cannot run twice: nothing of it ran, or it only
    // reads and can start over.
    const bool again = attempt == 0 && lost && !outcome.ok() && absl::Now() < work.deadline &&
                       !work.cancelled.load(std::memory_order_relaxed) &&
                       !work.member_unhealthy_.load(std::memory_order_relaxed) &&
                       (reach == db::Reach::kNotRun ||
                        (reach == db::Reach::kMayHaveRun && work.read_only && work.Rewind()));
    if (!again) break;
    if (reach == db::Reach::kNotRun && work.rewind) (void)work.rewind();
    retries_.fetch_add(1, std::memory_order_relaxed);
  }
  work.done(outcome);
}

}  // namespace poolside::query
