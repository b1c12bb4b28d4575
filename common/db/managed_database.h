#ifndef POOLSIDE_COMMON_DB_MANAGED_DATABASE_H_
#define POOLSIDE_COMMON_DB_MANAGED_DATABASE_H_

// One configured database as a service runs it: its connection pools, one
// per (database role, member), made on first use with that role's
// configuration (config::RoleDatabaseConfig); with a topology
// (DatabaseConfig.topology) the Topology its monitor keeps current and the
// failover holds that wait for a primary; warm-up; pool statistics. A
// service puts its own work on top (ingest writes batches through
// PrimaryPool(), query routes calls to MemberPool()s); DatabaseSet
// (database_set.h) runs every configured database.
//
// Pools. Role "" is the DSN's own user; every new connection's session role
// is checked (OpenChecked: never a privileged one by accident).
//  - Pool(role): the database's own pool for `role`, tied to no member. It
//    connects to the configured DSN; with a topology, each new connection
//    goes to the primary of the moment (PrimaryDsn), UNAVAILABLE while none
//    is known.
//  - MemberPool(role, member, dsn): a member's (a topology Route's id and
//    DSN). One whose DSN changed is replaced; whoever holds the old one may
//    finish with it.
//  - PrimaryPool(role): where `role`'s writes go now: Pool(role) without a
//    topology, else the primary's MemberPool. With `writer_only`, a role
//    keeps no pool on a former primary: the one found there is closed (no new
//    leases; leases out keep it alive) and dropped.
// Pools are shared: hold the pointer as long as any lease taken from it.
//
// Failover holds (with a topology). A caller that found no primary, or whose
// primary could not be reached, waits until the probes name a primary under
// a new generation (a primary marked suspect, MarkSuspect, is named again
// under a new one by its next good probe): for up to topology.failoverBufferMs from the moment the
// primary was lost (from now while one is known: that loss starts here), at
// most topology.failoverBufferCalls callers and failoverBufferBytes at once.
// HoldForPrimary calls back on the database's hold thread; WaitForPrimary
// blocks. EndHolds() (or Stop()) ends every hold, unsuccessfully.
//
//   ManagedDatabase db(config, {.application = "poolside-ingest"});
//   db.StartMonitor();                      // with a topology
//   db.WarmUp();                            // e.g. on a warm-up thread
//   absl::StatusOr<ManagedDatabase::PoolRef> p = db.PrimaryPool(role);
//   ... p->pool->Acquire(deadline) ...
//   ManagedDatabase::FailoverHold hold;    // its primary went away:
//   if (db.WaitForPrimary(p->generation, &hold)) { /* pick again */ }
//   db.Stop();
//
// Thread-safe.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/db/connection.h"
#include "common/db/topology.h"
#include "common/db/topology_monitor.h"
#include "common/pool/pool.h"
#include "common/telemetry/histogram.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::db {

using ConnectionPool = pool::Pool<Connection>;

struct ManagedDatabaseOptions {
  // Connections' application_name is "<application>/<database>".
  std::string application = "poolside";
  // Connections keep up to DatabaseConfig.statement_cache_size prepared
  // statements (else the Connection default).
  bool statement_cache = false;
  // A connection that cannot be made says which server (host:port/dbname) it
  // was for.
  bool name_server_in_errors = false;
  // With a topology: pools only on the primary (see PrimaryPool).
  bool writer_only = false;
};

class ManagedDatabase {
 public:
  // A pool and the member it connects to ("" without a topology), picked
  // when the topology's primary generation was `generation`.
  struct PoolRef {
    std::shared_ptr<ConnectionPool> pool;
    std::string member;
    uint64_t generation = 0;
  };
  // One caller's failover window across its WaitForPrimary calls: unset
  // until it is first held.
  struct FailoverHold {
    absl::Time until = absl::InfinitePast();
  };
  struct HoldStats {
    uint64_t total = 0;     // callers held so far
    uint64_t timeouts = 0;  // holds that ended without a new primary (not abandoned ones)
    size_t now = 0;         // held now
    // Each hold's time, from HoldForPrimary to its release: run, timed out or
    // ended. A WaitForPrimary caller held again counts again (as in
    // `timeouts`, not in `total`).
    telemetry::Histogram::Snapshot durations;
  };
  // A pool and its name in statistics: "<database>[/<role>][@<member>]".
  struct NamedPool {
    std::string name;
    std::string role;
    std::string member;
    std::shared_ptr<ConnectionPool> pool;
  };

  // `config` went through config::FinalizeDatabase. A role whose
  // configuration cannot be read now (its password file went away) is not
  // configured: HasRole() is false.
  ManagedDatabase(v1::DatabaseConfig config, ManagedDatabaseOptions options);
  ~ManagedDatabase();  // Stop()
  ManagedDatabase(const ManagedDatabase&) = delete;
  ManagedDatabase& operator=(const ManagedDatabase&) = delete;

  const v1::DatabaseConfig& config() const { return config_; }
  const std::string& name() const { return config_.name(); }
  // Null without a topology.
  Topology* topology() const { return topology_.get(); }

  // Whether database role `role` is configured ("" always is).
  bool HasRole(const std::string& role) const;
  // The login user of `role`'s connections ("" for the DSN's own when it
  // names none).
  std::string LoginUser(const std::string& role) const;
  // Each configured role's login user, once each.
  std::vector<std::string> RoleLoginUsers() const;
  // The configuration of `role`'s pool at `dsn` (a DSN of the database's own
  // user: the configured one or a member's). FAILED_PRECONDITION for a role
  // not configured.
  absl::StatusOr<v1::DatabaseConfig> PoolConfig(const std::string& role,
                                                const std::string& dsn) const;
  // Where sessions of `role` outside the pools connect: the configured DSN,
  // or the current primary's (UNAVAILABLE, naming why, while none is known).
  absl::StatusOr<std::string> PrimaryDsn(const std::string& role) const;

  // Runs `listener` after every probe the topology records, after this
  // database's own bookkeeping, on the probe's thread; it must not block.
  // Null: none.
  void SetRecordListener(std::function<void()> listener);
  // Starts the topology's monitor (OK at once without a topology).
  // INVALID_ARGUMENT for members or endpoints that do not parse.
  absl::Status StartMonitor();
  // Ends every failover hold now (then(false)); later ones fail at once.
  void EndHolds();
  bool holds_ended() const;
  // EndHolds(), stops the monitor, closes every pool (a warm-up retrying
  // ends); pools asked for later are UNAVAILABLE. Idempotent.
  void Stop();

  // See the header comment. UNAVAILABLE once stopped; FAILED_PRECONDITION
  // for a role not configured.
  absl::StatusOr<std::shared_ptr<ConnectionPool>> Pool(const std::string& role);
  absl::StatusOr<std::shared_ptr<ConnectionPool>> MemberPool(const std::string& role,
                                                             const std::string& member,
                                                             const std::string& dsn);
  // With a topology, also UNAVAILABLE (Topology::Pick's) while no primary is
  // known.
  absl::StatusOr<PoolRef> PrimaryPool(const std::string& role);
  // The pools made so far (not those replaced), by name.
  std::vector<NamedPool> Pools() const;
  // Pool::Maintain() on each.
  void Maintain();

  // Warms the primary's pool of the DSN's user (PrimaryPool("")) up to
  // min_idle, retrying for pool.startup_retry_ms while the database is not
  // up; with a topology, first waits as long for a primary to be named.
  // Logs the outcome. Ends early on Stop().
  absl::Status WarmUp();

  // A call found member `member` unreachable (its connection failed or
  // none could be made): Topology::MarkSuspect, and when that marked the
  // primary, its probe runs at once (TopologyMonitor::ProbeSoon), so that
  // the calls held meanwhile wait for one probe's round trip when the
  // primary is fine. False (nothing marked) without a topology.
  bool MarkSuspect(const std::string& member, const absl::Status& error);

  // Failover holds; see the header comment. The primary's generation as a
  // caller saw it.
  uint64_t primary_generation() const;
  absl::Duration failover_buffer() const { return failover_buffer_; }
  // Holds a caller of `bytes` until a primary is known under another
  // generation than `generation`: then(true) on the hold thread. then(false)
  // when the window (or `deadline`) passes first or holds end. UNAVAILABLE
  // (nothing held) without a topology or once holds ended;
  // RESOURCE_EXHAUSTED when holding it would pass failoverBufferCalls or
  // failoverBufferBytes. `count`: counted in HoldStats::total.
  // `abandoned` (may be null): true once the caller went away; the hold
  // then ends (then(false), not counted as a timeout) at the next
  // WakeHolds() or other change, so it no longer takes room in the buffer.
  // Called under the holds' lock: it must be cheap and not block.
  absl::Status HoldForPrimary(uint64_t generation, size_t bytes, absl::Time deadline,
                              std::function<void(bool)> then, bool count = true,
                              std::function<bool()> abandoned = nullptr);
  // A held caller went away: its hold ends now (see HoldForPrimary).
  void WakeHolds();
  // Blocks as HoldForPrimary would, within `hold`'s window (opened on its
  // first call, counted once). True: a primary is known under another
  // generation than `generation`. False when the window closes first, holds
  // end, there is no window (no topology, failoverBufferMs 0) or no room.
  bool WaitForPrimary(uint64_t generation, FailoverHold* hold);
  HoldStats hold_stats() const;

 private:
  struct Held {
    uint64_t generation;
    size_t bytes;
    absl::Time since;
    absl::Time until;
    std::function<void(bool)> then;
    std::function<bool()> abandoned;
  };
  struct Entry {
    std::string dsn;
    std::shared_ptr<ConnectionPool> pool;
  };
  using Key = std::pair<std::string, std::string>;  // (role, member)

  std::shared_ptr<ConnectionPool> MakePool(const v1::DatabaseConfig& c, const std::string& role,
                                           const std::string& member);
  absl::StatusOr<std::shared_ptr<ConnectionPool>> MemberPoolLocked(const std::string& role,
                                                                   const std::string& member,
                                                                   const std::string& dsn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(pools_mu_);
  absl::Status Closed() const;
  void OnRecord();
  void HoldLoop();
  // Waits until a primary is named or `until` passes or holds end.
  bool AwaitAnyPrimary(absl::Time until);
  // Where a failover window opened now starts: when the primary was lost
  // (not before the monitor started), or now while one is known.
  absl::Time WindowStartLocked(absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(hold_mu_);

  const v1::DatabaseConfig config_;
  const ManagedDatabaseOptions options_;
  const absl::Duration failover_buffer_;
  const size_t max_held_calls_;
  const uint64_t max_held_bytes_;
  // Each configured role's configuration at the configured DSN.
  absl::flat_hash_map<std::string, v1::DatabaseConfig> role_configs_;
  // Shared with the pools that follow the primary (Pool() with a topology).
  std::shared_ptr<Topology> topology_;

  mutable absl::Mutex pools_mu_;
  absl::flat_hash_map<Key, Entry> pools_ ABSL_GUARDED_BY(pools_mu_);
  bool closed_ ABSL_GUARDED_BY(pools_mu_) = false;

  mutable absl::Mutex hold_mu_;
  absl::CondVar hold_changed_;
  std::vector<Held> held_ ABSL_GUARDED_BY(hold_mu_);
  size_t held_bytes_ ABSL_GUARDED_BY(hold_mu_) = 0;
  // Observed under hold_mu_, so that a HoldStats sees the holds ended and
  // their time together.
  telemetry::Histogram held_durations_;
  bool holds_ended_ ABSL_GUARDED_BY(hold_mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(hold_mu_) = false;
  absl::Time monitor_started_ ABSL_GUARDED_BY(hold_mu_) = absl::InfinitePast();
  std::atomic<uint64_t> held_total_{0}, held_timeouts_{0};
  std::thread hold_thread_;

  absl::Mutex listener_mu_;
  std::function<void()> listener_ ABSL_GUARDED_BY(listener_mu_);

  // Last, so that it stops (and its probes stop calling in) first.
  std::unique_ptr<TopologyMonitor> monitor_;
};

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_MANAGED_DATABASE_H_
