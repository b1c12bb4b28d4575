#ifndef POOLSIDE_SERVICES_INGEST_INGEST_ENGINE_H_
#define POOLSIDE_SERVICES_INGEST_INGEST_ENGINE_H_

// The ingest service's core (no gRPC types): accepts write requests, checks
// them against the configuration and the table's catalog types, encodes their
// rows as COPY text on the caller's thread, groups them into batches
// (batcher.h) and flushes the batches on `copy_connections` worker threads
// per database, each with its own connection (flusher.h). While one batch is
// in COPY, callers keep encoding the next ones and other workers copy other
// batches: encoding and COPY overlap.
//
//   IngestEngine engine(config);     // a FinalizeIngestConfig()ed config
//   engine.Start();
//   absl::Status s = engine.Submit(request, Admission::kWaitForRoom,
//                                  [] { /* read the next message */ },
//                                  [](absl::StatusOr<v1::WriteResponse> r) { ... });
//   ...
//   engine.Drain(absl::Seconds(10));  // SIGTERM: flush and answer everything
//   engine.Stop();
//
// Guarantees:
//  - `done` runs exactly once per request Submit() accepted (returned OK for),
//    after the transaction holding its rows committed (OK) or failed (its
//    rows were not written; UNAVAILABLE/ABORTED when a retry can succeed).
//  - Encoded rows held (buffered and being flushed) stay within
//    batch.buffer_bytes: kRefuseWhenFull requests get RESOURCE_EXHAUSTED
//    (retry-after payload, RetryAfterOf()); kWaitForRoom requests wait in a
//    FIFO, each holding its own encoded rows, and `admitted` runs once the
//    request is buffered or answered — the caller's cue to read more.
//  - A key already committed (in memory or in poolside_ingest_keys) or in
//    flight is answered with the first request's result (duplicate = true).
//
// Thread-safe. `admitted` and `done` run on the caller's thread (when the
// outcome is known at once) or on a worker thread; they must not block and
// must not call Drain()/Stop().

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
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
#include "common/db/connection.h"
#include "common/db/copy.h"
#include "common/pool/pool.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/ingest.pb.h"
#include "services/ingest/batcher.h"

namespace poolside::ingest {

// The retry hint attached to RESOURCE_EXHAUSTED, or zero.
absl::Duration RetryAfterOf(const absl::Status& status);

class IngestEngine {
 public:
  enum class Admission { kRefuseWhenFull, kWaitForRoom };
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

  // Non-OK: the request was refused and neither callback will run. OK: both
  // will, exactly once each (admitted first).
  absl::Status Submit(const v1::WriteRequest& request, Admission admission,
                      std::function<void()> admitted, Done done);

  // Refuses new requests (UNAVAILABLE), flushes everything buffered at once and
  // waits until every accepted request is answered. False if `timeout` passed
  // first.
  bool Drain(absl::Duration timeout);
  // Stops the workers after their current flush; requests not yet flushed are
  // answered UNAVAILABLE (not written). Idempotent.
  void Stop();

  void GetStats(v1::GetIngestStatsResponse* out) const;
  // Each database's connection pool statistics (for /metrics), by name.
  std::vector<std::pair<std::string, pool::PoolStats>> GetPoolStats() const;

 private:
  struct Table {
    bool loading = false;
    std::shared_ptr<const db::TableInfo> info;
    // Requests waiting for the catalog read.
    struct Parked {
      v1::WriteRequest request;
      Admission admission;
      std::function<void()> admitted;
      Done done;
      telemetry::SpanContext trace;  // the request's span
    };
    std::vector<Parked> parked;
  };
  struct Job {
    enum Kind { kFlush, kLoadTable, kCleanupKeys } kind = kFlush;
    Batch batch;
    std::string table;
  };
  struct Database {
    v1::DatabaseConfig config;
    absl::flat_hash_set<std::string> writable;
    std::unique_ptr<pool::Pool<db::Connection>> pool;
    std::deque<Job> jobs;  // guarded by the engine's mu_
    absl::flat_hash_map<std::string, Table> tables;  // guarded by mu_
    std::mutex keys_table_mu;
    bool keys_table_ready = false;  // guarded by keys_table_mu
  };
  struct Waiting {
    std::shared_ptr<PendingWrite> write;
    std::function<void()> admitted;
  };
  struct KeyState {
    bool committed = false;
    v1::WriteResponse response;  // when committed
    std::vector<Done> waiters;   // in flight: retries waiting for the outcome
  };
  using Callbacks = std::vector<std::function<void()>>;

  // Resolves columns and encodes rows (no lock held).
  absl::StatusOr<std::shared_ptr<PendingWrite>> Prepare(const v1::WriteRequest& request,
                                                        const std::string& database,
                                                        const db::TableInfo& table,
                                                        Done done) const;
  // Takes a prepared write in: key check, byte bound, batching. Non-OK only
  // for kRefuseWhenFull when full (nothing queued then).
  absl::Status AdmitLocked(std::shared_ptr<PendingWrite> write, Admission admission,
                           std::function<void()> admitted, Callbacks* later)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Buffers `write` (room was checked); false if it was answered from its key.
  void AcceptLocked(std::shared_ptr<PendingWrite> write, Callbacks* later)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AdmitWaitingLocked(Callbacks* later) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void QueueBatchesLocked(std::vector<Batch>& sealed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AnswerLocked(PendingWrite& write, absl::StatusOr<v1::WriteResponse> result,
                    Callbacks* later) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After a request's `done` ran.
  void Answered() ABSL_LOCKS_EXCLUDED(mu_);
  void ProcessParked(Database& db, const std::string& table, std::vector<Table::Parked> parked,
                     std::shared_ptr<const db::TableInfo> info, const absl::Status& error);

  void WorkerLoop(Database* db);
  void RunFlush(Database& db, Job& job);
  void RunLoadTable(Database& db, Job& job);
  void RunCleanup(Database& db);
  absl::Status EnsureKeysTableOnce(Database& db, db::Connection& conn);
  void ControlLoop();
  void FailJob(Database& db, Job& job, const absl::Status& status);

  const v1::IngestServiceConfig config_;
  const absl::Duration linger_;
  const absl::Duration flush_timeout_;
  const absl::Duration key_retention_;
  const absl::Duration retry_after_;
  const size_t buffer_limit_;
  std::map<std::string, std::unique_ptr<Database>> databases_;

  mutable absl::Mutex mu_;
  absl::CondVar jobs_ready_;     // any database's jobs
  absl::CondVar control_wake_;
  absl::CondVar answered_;       // unanswered_ dropped
  Batcher batcher_ ABSL_GUARDED_BY(mu_);
  std::deque<Waiting> waiting_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, KeyState> keys_ ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<absl::Time, std::string>> key_expiry_ ABSL_GUARDED_BY(mu_);
  size_t buffered_ ABSL_GUARDED_BY(mu_) = 0;
  size_t buffered_max_ ABSL_GUARDED_BY(mu_) = 0;
  size_t unanswered_ ABSL_GUARDED_BY(mu_) = 0;
  size_t queued_batches_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, uint64_t> flushes_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_;
  std::thread warmup_;
  absl::Mutex warm_mu_;
  bool warm_ ABSL_GUARDED_BY(warm_mu_) = false;
  bool destroying_ ABSL_GUARDED_BY(warm_mu_) = false;
  std::vector<std::function<void()>> when_warm_ ABSL_GUARDED_BY(warm_mu_);

  std::atomic<uint64_t> rows_written_{0}, bytes_written_{0}, batches_written_{0},
      rows_rejected_{0}, requests_{0}, requests_failed_{0}, duplicates_{0},
      batches_failed_{0}, copy_statements_{0}, refused_full_{0}, stream_waits_{0};
};

}  // namespace poolside::ingest

#endif  // POOLSIDE_SERVICES_INGEST_INGEST_ENGINE_H_
