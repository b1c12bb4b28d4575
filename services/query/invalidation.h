#ifndef POOLSIDE_SERVICES_QUERY_INVALIDATION_H_
#define POOLSIDE_SERVICES_QUERY_INVALIDATION_H_

// The read cache's invalidation side: how each database's cache learns of
// writes by anyone (docs/cache.md), and whether its reads may use the cache.
//
// - "wal" (cache.invalidation): a WalRelay per database (wal_relay.h); the
//   replica holding the slot relays what it decodes as NOTIFYs on
//   `cache.channel`, which a listener per database (one LISTEN connection,
//   one thread) applies here: a row's change drops that row's key entries
//   and the table-level entries of its table; TRUNCATE, DDL and changes
//   without a usable key drop the table (and DDL forgets the statements'
//   plans). Messages that move the stream's state (hello, positions,
//   heartbeats) count only from the session holding the election lock
//   (checked in pg_locks); anything else on the channel may only
//   invalidate. A new stream flushes the database's entries, as does every
//   (re)subscription of the listener. A relayed change of a table that a
//   write through this replica invalidated itself, after every transaction
//   of the change had finished, is not applied again (OwnWriteCover). The applied LSN (every commit
//   before it invalidated here) answers consistency tokens; a TokenFence per database makes the
//   holder relay a position past a token at once.
// - "trigger": a statement-level trigger on each cached table sends NOTIFY
//   in the writer's transaction; the listener installs them.
// - A database whose server has no logical decoding is handled per
//   cache.walUnavailable (CheckWal, or its listener when it connects).
// - Databases without cached tables have no listener; a thread flushes them
//   when they are suspect (at start, after a lost invalidation).
//
// Every invalidation goes to the near cache, then the sidecar, then the near
// cache again (a read that began in between may have found the old entry in
// the sidecar and filled it in).
//
//   Invalidation inv(config, databases, sinks);
//   inv.CheckWal(deadline);  // before Start
//   inv.Start();
//   if (DatabaseInvalidation* s = inv.Of(db); s != nullptr && !inv.NotReady(*s)) ...
//   inv.Stop();  // before what the sinks point at goes
//
// Thread-safe. Its own threads (listeners, the flusher) block on the
// database and the sidecar; nothing here is for the queue thread except the
// state reads (Of, NotReady, ReflectedLsn, ReplicaFillFence, Ready), which
// never block.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/db/connection.h"
#include "proto/poolside/v1/config.pb.h"
#include "services/query/cache_bypass.h"
#include "services/query/cache_client.h"
#include "services/query/database.h"
#include "services/query/invalidation_state.h"
#include "services/query/lsn_waiters.h"
#include "services/query/near_cache.h"
#include "services/query/statement_plans.h"

namespace poolside::query {

class Invalidation {
 public:
  // Where invalidations go and what they count. Each outlives this (or its Stop()).
  struct Sinks {
    NearCache* near = nullptr;  // may be null
    CacheClient* client = nullptr;
    StatementPlans* plans = nullptr;  // forgets the plans of redefined tables
    // Each sidecar call's outcome (ok), for the breaker.
    std::function<void(bool)> sidecar_result;
    std::atomic<uint64_t>* notifications = nullptr;  // notifications received
    std::atomic<uint64_t>* flushes = nullptr;        // flushes the sidecar confirmed
  };

  // `databases` outlive this.
  Invalidation(const v1::QueryCacheConfig& config,
               const absl::flat_hash_map<std::string, std::unique_ptr<Database>>& databases,
               Sinks sinks);
  ~Invalidation();  // Stop()
  Invalidation(const Invalidation&) = delete;
  Invalidation& operator=(const Invalidation&) = delete;

  // "wal" mode: checks each database it can reach now; one whose wal_level is
  // not logical is handled per cache.walUnavailable: FAILED_PRECONDITION
  // naming it ("fail"), or switched to "trigger" or "off" (logged).
  // Databases it cannot reach are checked again when their listener
  // connects. Before Start().
  absl::Status CheckWal(absl::Time deadline);

  // Starts one listener per database with cached tables, and in "wal" mode
  // its WalRelay and TokenFence; and the flusher of the other databases.
  void Start();

  // Stops the listeners, the flusher, the relays (dropping their slots) and
  // the fences; then the reads waiting for a position (WaitForLsn) are told
  // it was not reached. Idempotent.
  void Stop();

  // The state of `db`'s invalidation; null for a database it does not know.
  DatabaseInvalidation* Of(const Database& db) const;
  // Why reads of the database bypass the cache now, if they do.
  std::optional<CacheBypass> NotReady(const DatabaseInvalidation& state) const {
    return state.NotReady(max_lag_);
  }
  // Whether reads of `database` may use the cache now.
  bool Ready(absl::string_view database) const;
  // The position a read of `db` that starts now on the database reflects at
  // least: the applied LSN ("wal" mode, while ready) or `min_lsn`, whichever
  // is later.
  uint64_t ReflectedLsn(const Database& db, uint64_t min_lsn) const;
  // What a replica must have replayed for a fill read from it to be stored
  // (UINT64_MAX: none may; the primary reads). `state` may be null.
  uint64_t ReplicaFillFence(const DatabaseInvalidation* state) const {
    return state == nullptr ? UINT64_MAX : state->ReplicaFillFence();
  }
  // Runs then(true) once `state` has applied `lsn` (on the listener's
  // thread, or at once), then(false) at `deadline` or on Stop(). After Stop()
  // it runs then(false) at once.
  void WaitForLsn(DatabaseInvalidation* state, uint64_t lsn, absl::Time deadline,
                  std::function<void(bool)> then);

  // Of the databases with cached tables, by name.
  std::vector<InvalidationStatus> Statuses() const;

 private:
  // What a burst of notifications asks the listener to do, applied at once.
  struct Applying;
  struct Subscription;
  enum class Subscribed {
    kYes,          // LISTENing, the tables found: flush, then receive
    kFailed,       // try again after a pause
    kModeChanged,  // the server cannot do "wal": again, in the new mode
  };

  // A database's listener thread: subscribes, flushes, receives; again
  // whenever the connection is lost or the mode changes.
  void Listen(DatabaseInvalidation* state);
  // Connects, finds the cached tables, installs the triggers (trigger mode)
  // or publishes the tables ("wal"), LISTENs.
  Subscribed Subscribe(DatabaseInvalidation* state, Subscription* sub);
  absl::Status InstallTriggers(db::Connection& conn, const std::vector<std::string>& tables);
  // "wal": notes (and logs) trigger mode's triggers left installed.
  void NoteLeftoverTriggers(DatabaseInvalidation* state, db::Connection& conn);
  // "wal": publishes the cached tables until all are, and reads which are
  // (the watched ones). False when the connection failed.
  bool RefreshPublished(DatabaseInvalidation* state, Subscription* sub);
  // Applies what arrives until the connection fails, the mode changes or
  // Stop().
  void Receive(DatabaseInvalidation* state, Subscription* sub);
  // The WAL-mode listener's work on what arrived: see Applying.
  void OnRelayed(DatabaseInvalidation* state, db::Connection& conn, const db::Notification& n,
                 Applying* a);
  void Apply(DatabaseInvalidation* state, Applying* a);
  bool HolderSession(DatabaseInvalidation* state, db::Connection& conn, int pid);
  void OnWalUnavailable(DatabaseInvalidation* state, const absl::Status& why);
  // Flushes the database's entries; true when the sidecar confirmed.
  bool FlushDatabase(DatabaseInvalidation* state, const std::string& source);

  const v1::QueryCacheConfig config_;
  const absl::Duration max_lag_;
  NearCache* const near_;
  CacheClient* const client_;
  StatementPlans* const plans_;
  const std::function<void(bool)> sidecar_result_;
  std::atomic<uint64_t>* const notifications_;
  std::atomic<uint64_t>* const flushes_;
  absl::flat_hash_map<std::string, std::unique_ptr<DatabaseInvalidation>> dbs_;
  // Reset by Stop() once the listeners stopped (the waiting reads are told).
  std::unique_ptr<LsnWaiters> waiters_ = std::make_unique<LsnWaiters>();
  absl::Notification stopping_;
  std::vector<std::thread> threads_;
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_INVALIDATION_H_
