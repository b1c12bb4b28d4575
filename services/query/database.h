#ifndef POOLSIDE_SERVICES_QUERY_DATABASE_H_
#define POOLSIDE_SERVICES_QUERY_DATABASE_H_

// One configured database (for one database role): a connection pool (made
// by the database's db::ManagedDatabase, common/db/managed_database.h) and the
// workers that run calls against it, one worker per connection the pool may open (max_size +
// max_overflow), started on demand. Calls are queued (bounded); each worker takes the next call
// and, when it is a single statement, every other single statement waiting behind it (up to
// max_pipeline_depth), and sends them to PostgreSQL in one pipelined round trip. Under load this
// turns many callers' point queries into few round trips; with one caller it is a plain
// prepared-statement execution.
//
// A connection is checked before use (dead ones are replaced within the call's
// deadline), and work whose connection fails under it runs once more on a
// fresh connection when that cannot run anything twice: always when the server
// provably never ran it, and for reads (Work::read_only, a statement marked
// may_share_sync, or anything on a replica, where PostgreSQL lets nothing
// write) also when it may have. A write whose outcome is unknown is
// never run again: it answers UNAVAILABLE saying so.
//
// A database with streaming replicas (AttachReplicas) routes instead: each
// member gets a Database of its own (on the ManagedDatabase's member pool,
// its own workers, made on first use), and Submit() sends work that may run on a replica
// (Work::replica_ok) to the one Topology::Pick chooses, everything else to the primary.
//
// A plain read (Work::plain_read) that fails on a replica because its
// connection failed (lost, the server shut down or terminated the session,
// no connection to be had) before any row reached its caller runs again on
// another member routing picks, excluding those it failed on and with the
// same min_lsn rule, at most kMaxReplicaReadRetries times within its
// deadline (replicas.h: ReplicaReadRetry says which failures qualify); the
// failed member is marked suspect in the topology.
//
// A read a replica refuses as a write (SQLSTATE 25006: a statement taken for
// a read that writes after all, such as a view over nextval created since
// the catalog snapshot) took effect nowhere: it runs on the primary instead,
// unless the caller's own transactions are read-only (the primary would
// refuse it too) or a stream already sent rows.
//
// A replica that hangs instead of failing (no answer, no reset) is given up
// on once the topology finds it unhealthy (a failed or late probe, or
// another call marking it suspect): every plain read routed there and not
// done yet gives its connection up at once (Connection::AbandonWhen: no
// cancel request, the connection is discarded) and goes the read-retry way
// above (reason member_unhealthy); one that already sent rows (a stream)
// ends UNAVAILABLE saying the member stopped answering. Writes,
// transactions and work on the primary are never given up this way.
//
// A call for the primary while none is known, or whose connection to it
// could not be had (so it never ran), is held for up to
// topology.failoverBufferMs until a primary is named anew, then runs there.
//
// Thread-safe. Work::done runs on a worker thread and must not block.

#include <algorithm>
#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/db/connection.h"
#include "common/db/managed_database.h"
#include "common/pool/pool.h"
#include "common/telemetry/trace_context.h"
#include "proto/poolside/v1/config.pb.h"
#include "services/query/replicas.h"

namespace poolside::query {

using ConnectionPool = db::ConnectionPool;

// The statement that reads the server's WAL insert position as a number
// (pg_lsn's 64 bits). Run after a transaction committed on the same
// connection, it gives a position at or after that commit's record: a
// consistency token (see ExecuteResponse.commit_lsn) that holds whatever
// synchronous_commit says, unlike the flushed position. With it, a snapshot
// (pg_current_snapshot()) taken after the commit: which transactions had
// finished by then (the read cache's OwnWriteCover).
inline constexpr char kCommitLsnSql[] =
    "SELECT (pg_catalog.pg_current_wal_insert_lsn() - '0/0'::pg_catalog.pg_lsn)::int8, "
    "pg_catalog.pg_current_snapshot()::text";

// How the query service's pools connect (db::ManagedDatabase makes them):
// application_name poolside-query/<database>, the configured statement
// cache, errors naming the server.
db::ManagedDatabaseOptions QueryDatabaseOptions();

// Runs kCommitLsnSql on `conn` on its own; the snapshot into `snapshot`
// when not null.
absl::StatusOr<uint64_t> ReadCommitLsn(db::Connection& conn, absl::Time deadline,
                                       std::string* snapshot = nullptr);

// Whether a call that arrived at `arrived` and is cancelled now was cancelled
// by its deadline. The server's deadline for a call is its arrival plus the
// timeout the client sent, so it is later than the client's own by the
// call's transit time; the client's deadline ends the call first (its
// cancel), earlier still on a loaded machine, and gRPC's timers may fire a
// little early too. So a cancellation in the last twentieth of the call's
// time (at least the last 10 ms) is the deadline's: calls timed out waiting
// for a connection count as timeouts, not as callers going away.
inline bool CancelledByDeadline(absl::Time deadline, absl::Time arrived) {
  if (deadline == absl::InfiniteFuture()) return false;
  const absl::Duration slack = std::max(absl::Milliseconds(10), (deadline - arrived) / 20);
  return absl::Now() >= deadline - slack;
}

// One unit of work for a database.
class Work {
 public:
  enum State { kQueued = 0, kRunning = 1, kAbandoned = 2 };

  absl::Time deadline = absl::InfiniteFuture();
  const absl::Time arrived = absl::Now();  // when the call's work was made
  std::atomic<bool> cancelled{false};
  // A single statement that may share a pipeline with other calls' statements
  // (statement.cancelled/deadline are set by Submit) ...
  bool batchable = false;
  db::Statement statement;
  // ... or a function that needs a connection to itself; it returns the call's
  // outcome, which is passed to done() once the connection is back in the pool.
  // After its connection failed it may be called once more, on another
  // connection (see the class comment and `rewind`).
  std::function<absl::Status(db::Connection&)> exclusive;
  // The work only reads, and PostgreSQL enforces it (a read-only transaction):
  // it may run again even when the server may already have run it.
  bool read_only = false;
  // Exclusive work: forgets what a first attempt delivered, so `exclusive` can
  // start again; null or false: a read that may have run is not run again.
  std::function<bool()> rewind;
  // The outcome, called exactly once on a worker thread unless Abandon() won.
  // It answers the RPC, whose request and response may be freed before it
  // even returns (gRPC may complete the call inline): nothing of the call is
  // touched after done() is called.
  std::function<void(absl::Status)> done;
  // Shown in the pool's leak reports.
  std::string holder;
  // The span this work is done for (the RPC's server span), carried from the
  // gRPC thread to the worker; its pool and statement spans are children.
  telemetry::SpanContext trace;
  // A batchable statement that may write: its pipeline also reads the
  // server's WAL insert position right after it (ReadCommitLsn), into
  // commit_lsn when that succeeded (0 otherwise), and the snapshot read with
  // it into commit_snapshot.
  bool wants_commit_lsn = false;
  uint64_t commit_lsn = 0;
  std::string commit_snapshot;

  // Routing, for a database with replicas (ignored otherwise). The work only
  // reads and may run on a replica (otherwise: the primary).
  bool replica_ok = false;
  // ... on one whose replay position (as last probed) is at least this.
  uint64_t min_lsn = 0;
  // A single read statement of the caller's (not a transaction of theirs):
  // failing on a replica before any row reached the caller, it may run
  // again on another member (see the class comment).
  bool plain_read = false;
  // When no replica has replayed min_lsn yet, wait up to
  // topology.tokenWaitMs for one before running on the primary.
  bool wait_for_replica = false;
  // A cache fill: a replica must also have replayed every write noted
  // through this database (Replicas::WriteFence).
  bool cache_fill = false;
  // May write: once it ran on the primary, its commit position (or its
  // unknown outcome) is noted for the fence of cache fills.
  bool may_write = false;
  // Set by routing before the work runs: the member it runs on, whether
  // that is a replica, and that replica's replay position when picked (the
  // read reflects at least that much).
  std::string member;
  bool on_replica = false;
  uint64_t member_lsn = 0;
  // The request's size, bounding what failover buffering holds.
  size_t request_bytes = 0;

  // Forgets what an attempt delivered so the work can run again: a batchable
  // statement's sink (none: nothing to forget), exclusive work's `rewind`.
  // False if it cannot (rows already left for the caller).
  bool Rewind() {
    if (batchable) return statement.sink == nullptr || statement.sink->Rewind();
    return rewind && rewind();
  }

  // Claims work that no worker has started, to complete it without a database
  // (e.g. from the cache). False if it was abandoned or already claimed.
  bool Claim() {
    int expected = kQueued;
    return state.compare_exchange_strong(expected, kRunning);
  }

  // Claims work that no worker has started, so the caller can fail it itself
  // (e.g. its RPC was cancelled). False if a worker already runs it; then done()
  // will come soon (the cancelled flag makes the statement stop).
  bool Abandon() {
    int expected = kQueued;
    if (!state.compare_exchange_strong(expected, kAbandoned)) return false;
    // Held for a primary: leaves the failover buffer now, not when its
    // window ends.
    if (db::ManagedDatabase* holds = held_by_.load(std::memory_order_acquire)) holds->WakeHolds();
    // Out of time before any connection served it: a pool timeout as far as
    // an operator is concerned.
    if (queue_timeouts_ != nullptr && CancelledByDeadline(deadline, arrived)) {
      queue_timeouts_->fetch_add(1, std::memory_order_relaxed);
    }
    return true;
  }

 private:
  friend class Database;
  // After a failed run on a member: clears what that run left, so routing
  // can send the work elsewhere (queued, on no member).
  void ClearRun() {
    not_run_ = false;
    no_connection_ = false;
    connection_failed_ = false;
    member_unhealthy_.store(false);
    state.store(kQueued);
    on_replica = false;
    member.clear();
  }
  // When it could not be routed again: back on the replica the failed run was
  // on, whose failure answers.
  void RestoreReplica(std::string replica, uint64_t lsn) {
    member = std::move(replica);
    on_replica = true;
    member_lsn = lsn;
  }
  std::atomic<int> state{kQueued};
  // Failed before any connection was had (the pool could not connect), or
  // a single statement its server never executed: it provably did not run,
  // so routing may hold it for a new primary.
  bool not_run_ = false;
  // Failed for want of a connection (set with not_run_ by the worker).
  bool no_connection_ = false;
  // Its connection failed under it, or none could be had: with an
  // UNAVAILABLE status and no SQL error, its member is suspect.
  bool connection_failed_ = false;
  // Raised by routing when the probes found the replica it runs on
  // unhealthy: the worker gives its connection up (or does not start).
  std::atomic<bool> member_unhealthy_{false};
  // The database whose failover buffer holds it, while it is held.
  std::atomic<db::ManagedDatabase*> held_by_{nullptr};
  std::shared_ptr<std::atomic<uint64_t>> queue_timeouts_;
};

class Database {
 public:
  // Runs its calls on `pool` (a db::ManagedDatabase's, made with `config`).
  // `role`: the DatabaseConfig.roles entry `config` was made for
  // (config::RoleDatabaseConfig), empty for the DSN's own user.
  // `member`: the topology member the pool connects to, for a member's pool
  // (see AttachReplicas); empty otherwise.
  Database(std::shared_ptr<ConnectionPool> pool, const v1::DatabaseConfig& config,
           std::string role = "", std::string member = "");
  // On a pool of its own, for `config`'s DSN user (a database without a
  // topology).
  explicit Database(const v1::DatabaseConfig& config);
  ~Database();  // fails queued work with UNAVAILABLE, joins the workers
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  // From now on Submit() routes work to the members of `replicas` (the
  // member pools of this database role, made on first use); this Database's
  // own pool serves only what takes connections directly (AcquireLive:
  // catalog snapshots, health checks), and its connections go to the current
  // primary (a db::ManagedDatabase pool of no member). Before the first
  // Submit(). `replicas` must be stopped before this is destroyed.
  void AttachReplicas(std::shared_ptr<Replicas> replicas);
  // Where sessions of this database outside routed calls connect: with
  // replicas, the current primary (as this database role; UNAVAILABLE while
  // none is known), else the configured DSN.
  absl::StatusOr<std::string> AdminDsn() const;
  // Null without replicas.
  Replicas* replicas() const { return replicas_.get(); }
  // The member pools made so far (by AttachReplicas' routing).
  std::vector<Database*> Members();

  const std::string& name() const { return config_.name(); }
  const std::string& role() const { return role_; }
  const std::string& member() const { return member_; }
  const v1::DatabaseConfig& config() const { return config_; }
  ConnectionPool& pool() { return *pool_; }

  // Queues work. RESOURCE_EXHAUSTED when max_queue calls are already waiting.
  // With replicas: on the member routing picks (UNAVAILABLE when none can
  // take it, e.g. no primary is known); a read waiting for a replica to
  // catch up is queued later, and fails through its `done` if it cannot be.
  absl::Status Submit(std::shared_ptr<Work> work);

  // A connection that passed the cheap liveness check (dead ones are discarded
  // and replaced within the same deadline).
  // A connection made for it gives up when one of `abandon` is raised (the
  // reads it is for were given up on this member).
  absl::StatusOr<ConnectionPool::Lease> AcquireLive(
      absl::Time deadline, std::string holder,
      absl::Span<const std::atomic<bool>* const> abandon = {});

  // Warm-up to min_idle, retrying for pool.startup_retry_ms while the
  // database is not up yet.
  absl::Status WarmUp();

  size_t queued() const;
  uint64_t pipelines() const { return pipelines_.load(std::memory_order_relaxed); }
  uint64_t pipelined_statements() const {
    return pipelined_statements_.load(std::memory_order_relaxed);
  }
  uint64_t pipeline_reruns() const { return pipeline_reruns_.load(std::memory_order_relaxed); }
  // Statements and exclusive work run a second time, on a fresh connection,
  // because their connection failed under them.
  uint64_t retries() const { return retries_.load(std::memory_order_relaxed); }
  // Calls whose deadline passed while they waited in the queue for a worker
  // (the pool's own timeouts count waits inside Acquire()).
  uint64_t queue_timeouts() const { return queue_timeouts_->load(std::memory_order_relaxed); }

 private:
  void WorkerLoop();
  void RunBatch(std::vector<std::shared_ptr<Work>>& batch);
  // The statements of a batch whose connection failed that may run again,
  // once, on a fresh connection.
  void RetryBatch(std::vector<std::shared_ptr<Work>>& batch);
  void RunExclusive(Work& work);
  void MaybeStartWorker() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Submit() without replicas: queues it here.
  absl::Status Enqueue(std::shared_ptr<Work> work);
  // Submit() with replicas: picks a member (after a wait, for a read whose
  // min_lsn no replica has replayed) and queues it there.
  struct RoutedCall;
  absl::Status Route(std::shared_ptr<Work> work);
  absl::Status RouteNow(const std::shared_ptr<Work>& work, const std::shared_ptr<RoutedCall>& call);
  // Holds `work` until a primary is named under a generation other than
  // `generation` (Replicas::HoldForPrimary), then routes it again.
  absl::Status HoldForPrimary(const std::shared_ptr<Work>& work,
                              const std::shared_ptr<RoutedCall>& call, uint64_t generation);
  // A plain read that failed on a replica with `failure`: sends it to
  // another member when ReplicaReadRetry allows and it can be rewound. True
  // if it was sent (or abandoned meanwhile): its outcome comes from there.
  bool RetryOnAnotherMember(Work* raw, const std::weak_ptr<Work>& weak,
                            const std::shared_ptr<RoutedCall>& call, const absl::Status& failure);
  // A read that a replica refused as a write (SQLSTATE 25006: the analyzer
  // or a stale catalog snapshot took it for a read, e.g. a view over a
  // volatile function created since the snapshot; nothing of it took
  // effect): sends it to the primary, as work that may write, unless the
  // caller's own transactions are read-only (then 25006 is the answer
  // anywhere) or rows already left. True if it was sent (or abandoned
  // meanwhile): its outcome comes from there.
  bool RunRefusedWriteOnPrimary(Work* raw, const std::weak_ptr<Work>& weak,
                                const std::shared_ptr<RoutedCall>& call,
                                const absl::Status& failure);
  // A read given up on its member (Work::member_unhealthy_) before it
  // started there: fails it as not run, which routing sends elsewhere.
  // False (and nothing done) for any other work.
  static bool FailIfGivenUp(Work& work);
  // The in-flight registry of plain reads routed to replicas: Track when
  // routed there, Untrack when done (before anything else of done()).
  void Track(const std::shared_ptr<Work>& work, const std::string& member);
  void Untrack(Work* work);
  // From the topology's record listener: raises member_unhealthy_ on the
  // tracked reads running on any of `members`.
  void GiveUpReadsOn(const std::vector<std::string>& members);
  // The Database of member `id` at `dsn` (on the db::ManagedDatabase's
  // member pool), made on first use.
  absl::StatusOr<Database*> MemberPool(const std::string& id, const std::string& dsn);

  // A Database on a pool of its own owns the pool's maker.
  std::unique_ptr<db::ManagedDatabase> own_;
  const v1::DatabaseConfig config_;
  const std::string role_;
  const std::string member_;
  std::shared_ptr<ConnectionPool> pool_;
  std::shared_ptr<Replicas> replicas_;
  struct Member {
    std::string dsn;
    std::unique_ptr<Database> db;
  };
  absl::Mutex members_mu_;
  absl::flat_hash_map<std::string, Member> members_ ABSL_GUARDED_BY(members_mu_);
  // Members whose DSN changed: work may still run on them.
  std::vector<std::unique_ptr<Database>> retired_ ABSL_GUARDED_BY(members_mu_);

  struct TrackedRead {
    std::string member;
    // The work may be freed untracked (a caller abandoned it in a queue).
    std::weak_ptr<Work> work;
  };
  absl::Mutex tracked_mu_;
  absl::flat_hash_map<Work*, TrackedRead> tracked_ ABSL_GUARDED_BY(tracked_mu_);
  // Track() drops entries of freed works once the map reaches this size.
  size_t purge_at_ ABSL_GUARDED_BY(tracked_mu_) = 64;

  mutable absl::Mutex mu_;
  absl::CondVar work_ready_;
  std::deque<std::shared_ptr<Work>> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> workers_ ABSL_GUARDED_BY(mu_);
  size_t idle_workers_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<uint64_t> pipelines_{0};
  std::atomic<uint64_t> pipelined_statements_{0};
  std::atomic<uint64_t> pipeline_reruns_{0};
  std::atomic<uint64_t> retries_{0};
  // Shared with queued Work, which may be abandoned after this is gone.
  const std::shared_ptr<std::atomic<uint64_t>> queue_timeouts_ =
      std::make_shared<std::atomic<uint64_t>>(0);
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_DATABASE_H_
