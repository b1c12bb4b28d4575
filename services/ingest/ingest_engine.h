#ifndef POOLSIDE_SERVICES_INGEST_INGEST_ENGINE_H_
#define POOLSIDE_SERVICES_INGEST_INGEST_ENGINE_H_

// The ingest service's core (no gRPC types): accepts serialized write
// requests, checks them against the configuration and the table's catalog
// types, parses and encodes their rows as COPY text row by row on the
// caller's thread (request_reader.h), groups them into batches (batcher.h)
// and flushes the batches on `copy_connections` worker threads per database,
// each with its own connection (flusher.h). While one batch is in COPY,
// callers keep encoding the next ones and other workers copy other batches.
//
// Each principal's rows are written as its database role
// (Principal::DatabaseRoleFor, DatabaseConfig.roles), so PostgreSQL's own
// grants decide what it may write: one connection pool per (database, role),
// made on first use (common/db/managed_database.h runs each database's pools,
// topology, failover holds and warm-up); a principal without a role (or no authentication) writes
// as the database DSN's own user. A batch holds the rows of one role only. A
// flush PostgreSQL refuses for want of a privilege (SQLSTATE 42501, or 25006
// for a role whose sessions are read-only) answers that batch's requests
// PERMISSION_DENIED naming the table and the role, nothing of them written.
//
// A database with a topology (DatabaseConfig.topology: replicas or Patroni
// endpoints) is written on the member its probes name as primary
// (common/db/topology_monitor.h), whichever member `dsn` names: every pool
// connects there, and is replaced (the former primary's closed) when another
// member becomes primary. When
// there is none, or its connections fail, or it refuses a write as read-only
// while in recovery (demoted), a batch is held until the probes name a
// primary anew (for up to topology.failoverBufferMs from the moment the
// primary was lost), then written there; past that, its requests fail
// UNAVAILABLE, nothing written. A batch is retried on a new primary only
// when nothing of it committed — or, for requests with an idempotency key,
// when its COMMIT's outcome is unknown: the key on the new primary tells
// whether that commit reached it. A request without a key whose COMMIT's
// outcome is unknown is answered UNAVAILABLE saying so.
//
//   IngestEngine engine(config);     // a FinalizeIngestConfig()ed config
//   engine.Start();
//   bool now;                        // a stream, before each read:
//   uint64_t ticket = engine.ReserveRead(bytes, [](uint64_t) { /* read */ }, &now);
//   if (now) { /* read */ }
//   ...                              // its message arrived:
//   absl::Status s = engine.Submit(std::move(request), principal, ticket,  // or nullptr
//                                  [](absl::StatusOr<v1::WriteResponse> r) { ... });
//   ...
//   engine.Drain(absl::Seconds(10));  // SIGTERM: flush and answer everything
//   engine.Stop();
//
// Memory: one bound, batch.buffer_bytes, covers everything the engine holds
// for requests — encoded rows buffered or being flushed, requests being
// encoded or waiting for their table's catalog (each at twice its serialized
// size until encoded) — and the room streams reserve before reading their
// next message. A stream reads only once its reservation is granted
// (ReserveRead, FIFO), so a full buffer stops reading (and gRPC's flow
// control holds the client back) before any bytes arrive; a message is taken
// in at once on arrival, in whatever room its reservation left. A message
// larger than its reservation is counted when it arrives (an overrun that
// delays the next reservations). A unary request (ticket 0) is refused with
// RESOURCE_EXHAUSTED when the bound has no room for it. A reservation held a
// second without its message arriving while others wait is given back (an
// idle stream must not starve the rest); its message is counted on arrival.
//
// Guarantees:
//  - `done` runs exactly once per request Submit() accepted (returned OK for),
//    after the transaction holding its rows committed (OK) or failed (its
//    rows were not written; UNAVAILABLE/ABORTED when a retry can succeed).
//  - Idempotency keys belong to (principal, database) and name one request:
//    a key committed (in memory or in poolside_ingest_keys) or in flight with
//    the same content (table, columns, rows: a digest) is answered with the
//    first request's result (duplicate = true); with other content,
//    FAILED_PRECONDITION naming the key.
//  - A request that does not parse is refused with IsMalformed() (or, if
//    found while its table's catalog was being read, answered so).
//
// Thread-safe. `granted` and `done` run on the caller's thread (when the
// outcome is known at once) or on a worker thread; they must not block and
// must not call Drain()/Stop(). Call ReserveRead/ReleaseRead/Submit without
// holding a lock that a `granted` or `done` callback takes.

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/auth/authorizer.h"
#include "common/db/connection.h"
#include "common/db/copy.h"
#include "common/db/database_set.h"
#include "common/db/managed_database.h"
#include "common/db/topology.h"
#include "common/pool/pool.h"
#include "common/telemetry/histogram.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/ingest.pb.h"
#include "services/ingest/batcher.h"
#include "services/ingest/request_reader.h"

namespace poolside::ingest {

// The retry hint attached to RESOURCE_EXHAUSTED, or zero.
absl::Duration RetryAfterOf(const absl::Status& status);

class IngestEngine {
 public:
  using Done = PendingWrite::Done;

  explicit IngestEngine(v1::IngestServiceConfig config);
  ~IngestEngine();  // Stop()
  IngestEngine(const IngestEngine&) = delete;
  IngestEngine& operator=(const IngestEngine&) = delete;

  // Starts the workers and the linger timer; warms the pools up in the
  // background.
  void Start();

  // Runs `ready` once every database's pool warm-up has finished (min_idle
  // connections made, or given up after pool.startup_retry_ms) — at once if
  // that already happened, else on the warm-up thread. Not run if the engine
  // is destroyed first. For readiness.
  void WhenWarm(std::function<void()> ready);

  // Reserves `bytes` (at most the bound) for a stream's next message and
  // returns the reservation's ticket. `*now` true: reserved at once. False:
  // queued behind earlier reservations; `granted` runs once with the ticket
  // when reserved (possibly before this returns, on another thread), unless
  // ReleaseRead() withdrew it first. While draining, reservations are
  // granted at once (requests are refused then).
  uint64_t ReserveRead(size_t bytes, std::function<void(uint64_t ticket)> granted, bool* now);
  // Gives back a reservation no message used (the stream ended). True if it
  // was still queued: its `granted` will not run. Unknown tickets are ignored.
  bool ReleaseRead(uint64_t ticket);

  // Takes in one serialized WriteRequest from `principal` (null: no
  // authentication; it need only outlive the call), which arrived on the
  // read reserved by `ticket` (0: a unary call, refused with
  // RESOURCE_EXHAUSTED when there is no room). The ticket is used up either
  // way. Non-OK: the request was refused and `done` will not run
  // (FAILED_PRECONDITION when the principal's database role is not
  // configured for the database). OK: `done` will run exactly once.
  absl::Status Submit(SerializedWrite request, const auth::Principal* principal, uint64_t ticket,
                      Done done);
  // The same for a parsed request (serialized first).
  absl::Status Submit(const v1::WriteRequest& request, const auth::Principal* principal,
                      uint64_t ticket, Done done);

  // Refuses new requests (UNAVAILABLE), flushes everything buffered at once and
  // waits until every accepted request is answered. False if `timeout` passed
  // first.
  bool Drain(absl::Duration timeout);
  // Stops the workers after their current flush; requests not yet flushed are
  // answered UNAVAILABLE (not written). Idempotent.
  void Stop();

  // The largest serialized request taken (batch.max_request_bytes), and the
  // answer to a larger one (INVALID_ARGUMENT stating both sizes).
  size_t max_request_bytes() const { return max_request_; }
  absl::Status RequestTooLarge(size_t bytes) const;

  void GetStats(v1::GetIngestStatsResponse* out) const;
  // Each connection pool's statistics (for /metrics), by name: the
  // database's, and "<database>/<role>" for each role's made so far; with a
  // topology, "@<member>" after either.
  std::vector<std::pair<std::string, pool::PoolStats>> GetPoolStats() const;

  // A database with a topology, as ingest sees it.
  struct TopologyStats {
    std::string database;
    // The members as last probed.
    std::vector<db::MemberStatus> members;
    // The member the last committed flush wrote to ("" before the first).
    std::string writing_member;
    // Flushes and catalog reads held for a primary.
    db::ManagedDatabase::HoldStats held;
  };
  // One per database with a topology, in name order.
  std::vector<TopologyStats> GetTopologyStats() const;

 private:
  // A request accepted before its table's catalog was read.
  struct Parked {
    SerializedWrite request;
    RequestHeader header;
    std::string principal;
    std::string role;
    size_t hold = 0;  // what it holds against the bound
    Done done;
    telemetry::SpanContext trace;  // the request's span
  };
  struct Table {
    bool loading = false;
    std::shared_ptr<const db::TableInfo> info;
    std::vector<Parked> parked;  // waiting for the catalog read
  };
  struct Job {
    enum Kind { kFlush, kLoadTable, kCleanupKeys } kind = kFlush;
    Batch batch;
    std::string table;
  };
  struct Database {
    // Its pools, topology and failover holds (in databases_set_).
    db::ManagedDatabase* managed = nullptr;
    absl::flat_hash_set<std::string> writable;
    absl::Mutex writing_mu;
    std::string writing_member ABSL_GUARDED_BY(writing_mu);
    std::deque<Job> jobs;                            // guarded by the engine's mu_
    absl::flat_hash_map<std::string, Table> tables;  // guarded by mu_
    absl::Mutex keys_table_mu;
    bool keys_table_ready ABSL_GUARDED_BY(keys_table_mu) = false;
    // The roles' login users may use the key table (GrantKeysTable).
    bool keys_table_granted ABSL_GUARDED_BY(keys_table_mu) = false;
    bool keys_table_grant_warned ABSL_GUARDED_BY(keys_table_mu) = false;
  };
  // A connection leased from `pool`, which it keeps alive (members are
  // destroyed in reverse order: the lease first).
  struct Writer {
    std::shared_ptr<db::ConnectionPool> pool;
    db::ConnectionPool::Lease lease;
    std::string member;
    // The topology's primary generation when the member was picked.
    uint64_t generation = 0;
  };
  using FailoverHold = db::ManagedDatabase::FailoverHold;
  struct KeyState {
    std::string table;
    std::string digest;
    bool committed = false;
    v1::WriteResponse response;  // when committed
    std::vector<Done> waiters;   // in flight: retries waiting for the outcome
  };
  // A read reservation: granted (`bytes` counted, 0 once given back for
  // idling) or queued.
  struct Reservation {
    size_t bytes = 0;
    absl::Time granted_at;
  };
  struct QueuedRead {
    uint64_t ticket;
    size_t bytes;
    std::function<void(uint64_t)> granted;
  };
  using Callbacks = std::vector<std::function<void()>>;

  // Resolves columns, parses and encodes rows (no lock held).
  absl::StatusOr<std::shared_ptr<PendingWrite>> Prepare(
      const SerializedWrite& request, const RequestHeader& header, const std::string& database,
      const std::string& principal, const std::string& role, const db::TableInfo& table,
      Done done) const;
  // A live connection where `role`'s rows go (the primary, with a
  // topology), waiting up to `acquire` for one. With a topology and `hold`, a
  // primary that is missing or cannot be reached is waited for
  // (ManagedDatabase::WaitForPrimary). Errors are the answers to give:
  // UNAVAILABLE naming the database.
  absl::StatusOr<Writer> LeaseWriter(Database& db, const std::string& role, absl::Duration acquire,
                                     FailoverHold* hold, const char* holder);
  // The answer when no primary could be written to: `last` is why.
  absl::Status NoPrimary(const Database& db, const absl::Status& last) const;
  // The answer to a flush PostgreSQL refused for want of a privilege.
  absl::Status PermissionDenied(const Database& db, const Batch& batch,
                                const absl::Status& error) const;
  // Takes a prepared write in (it held `hold` until now): key check, then
  // batching.
  void AcceptLocked(std::shared_ptr<PendingWrite> write, size_t hold, Callbacks* later)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void GrantReadsLocked(Callbacks* later) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes a granted reservation; returns its bytes (0 if unknown).
  size_t TakeReservationLocked(uint64_t ticket) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Hold(int64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Gives back reservations idle for too long while others wait; returns when
  // to look again.
  absl::Time ReleaseIdleReadsLocked(absl::Time now, Callbacks* later)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool KeyKnownLocked(const std::string& database, const std::string& principal,
                      const std::string& key) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void QueueBatchesLocked(std::vector<Batch>& sealed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AnswerLocked(PendingWrite& write, absl::StatusOr<v1::WriteResponse> result, Callbacks* later)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After a request's `done` ran.
  void Answered() ABSL_LOCKS_EXCLUDED(mu_);
  void ProcessParked(Database& db, std::vector<Parked> parked,
                     std::shared_ptr<const db::TableInfo> info, const absl::Status& error);

  void WorkerLoop(Database* db);
  void RunFlush(Database& db, Job& job);
  void RunLoadTable(Database& db, Job& job);
  void RunCleanup(Database& db);
  absl::Status EnsureKeysTableOnce(Database& db, db::Connection& conn);
  void ControlLoop();
  // Joins to `batch` the batches of its group queued behind it
  // (Batcher::Join), so they commit in its transaction.
  void JoinQueuedLocked(Database& db, Batch& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FailJob(Database& db, Job& job, const absl::Status& status);
  // Fails a flush job: each write with `status`, or with its entry of
  // `unknown` when that is set (an earlier attempt's COMMIT outcome).
  void FailFlush(Job& job, const absl::Status& status, const std::vector<absl::Status>& unknown);
  // Fails every write of `batch` for which `drop` is true and removes it.
  void DropWrites(Batch& batch, const std::vector<bool>& drop, const absl::Status& status);

  const v1::IngestServiceConfig config_;
  const absl::Duration linger_;
  const absl::Duration flush_timeout_;
  const absl::Duration key_retention_;
  const absl::Duration retry_after_;
  const size_t buffer_limit_;
  const size_t max_request_;
  // Before databases_, which point into it.
  db::DatabaseSet database_set_;
  std::map<std::string, std::unique_ptr<Database>> databases_;

  mutable absl::Mutex mu_;
  absl::CondVar jobs_ready_;  // any database's jobs
  absl::CondVar control_wake_;
  absl::CondVar answered_;  // unanswered_ dropped
  Batcher batcher_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, KeyState> keys_ ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<absl::Time, std::string>> key_expiry_ ABSL_GUARDED_BY(mu_);
  // Everything counted against buffer_limit_: held_ (requests) plus granted
  // reservations.
  size_t used_ ABSL_GUARDED_BY(mu_) = 0;
  size_t held_ ABSL_GUARDED_BY(mu_) = 0;
  size_t held_max_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<uint64_t, Reservation> reservations_ ABSL_GUARDED_BY(mu_);
  std::deque<QueuedRead> read_queue_ ABSL_GUARDED_BY(mu_);
  uint64_t next_ticket_ ABSL_GUARDED_BY(mu_) = 0;
  size_t unanswered_ ABSL_GUARDED_BY(mu_) = 0;
  size_t queued_batches_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, uint64_t> flushes_ ABSL_GUARDED_BY(mu_);
  uint64_t batches_joined_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::thread> threads_;

  std::atomic<uint64_t> rows_written_{0}, rows_binary_{0}, bytes_written_{0}, batches_written_{0},
      rows_rejected_{0}, requests_{0}, requests_failed_{0}, duplicates_{0}, batches_failed_{0},
      copy_statements_{0}, refused_full_{0}, stream_waits_{0};
};

}  // namespace poolside::ingest

#endif  // POOLSIDE_SERVICES_INGEST_INGEST_ENGINE_H_
