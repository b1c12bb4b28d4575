#ifndef POOLSIDE_SERVICES_QUERY_REPLICAS_H_
#define POOLSIDE_SERVICES_QUERY_REPLICAS_H_

// The streaming replicas of one configured database, for the query service:
// what routing needs beyond its db::ManagedDatabase (common/db/
// managed_database.h: the Topology its monitor keeps current, the member
// pools, failover holds):
//
// - read-your-writes: a read whose min_lsn no routable replica has replayed
//   yet may wait (up to topology.tokenWaitMs) for one to catch up, watched
//   through the probes' samples (AwaitReplay);
// - the fence for cache fills read from a replica: every write that went
//   through this service to the primary raises it to its commit position
//   (NoteWrite), so a fill never reads from a replica what a write through
//   this service has just invalidated (WriteFence);
// - failover buffering, the database's holds as query counts them: a call
//   for the primary while none is known (a switchover or failover under
//   way), or whose primary connection could not be had, is held
//   (HoldForPrimary) until a primary is named anew, for up to
//   topology.failoverBufferMs from the moment the primary was lost, bounded
//   in count and bytes.
//
// Databases route their calls with it (database.h); one Replicas serves the
// pools of every database role of its database.
//
//   db::ManagedDatabase* managed = set.Find(name);  // with a topology
//   auto replicas = std::make_shared<Replicas>(managed);
//   ... replicas->topology().Pick(...) ...
//   replicas->Stop();  // before the databases routing with it go
//   managed->Stop();   // ends held calls
//
// Thread-safe.

#include <atomic>
#include <cstdint>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/db/managed_database.h"
#include "common/db/topology.h"
#include "proto/poolside/v1/config.pb.h"
#include "services/query/lsn_waiters.h"

namespace poolside::query {

// Why a read that failed on a replica runs again on another member, as the
// reason label of poolside_query_read_retries_total.
enum class ReadRetryReason {
  kNone,
  // The server ended the session: admin shutdown, crash shutdown, or the
  // session terminated (SQLSTATE 57P01, 57P02, 57P03).
  kServerShutdown,
  // No connection to the member could be had (it refused, or died with
  // the pool's connections).
  kConnectFailed,
  // The connection failed under the statement (closed by the server, reset,
  // class 08).
  kConnectionLost,
  // The probes (or another call) found the member unhealthy while the read
  // waited on it: routing gave its connection up (database.h).
  kMemberUnhealthy,
};
inline constexpr ReadRetryReason kReadRetryReasons[] = {
    ReadRetryReason::kServerShutdown, ReadRetryReason::kConnectFailed,
    ReadRetryReason::kConnectionLost, ReadRetryReason::kMemberUnhealthy};
// "server_shutdown", "connect_failed", "connection_lost", "member_unhealthy";
// "" for kNone.
const char* ReadRetryReasonName(ReadRetryReason reason);

// How often one read runs again on other members, each time on one not yet
// tried.
inline constexpr int kMaxReplicaReadRetries = 2;

// What routing knows of a read attempt that just failed.
struct ReadAttempt {
  // It was routed to a replica (reads that fell back to the primary are
  // held for a new primary instead, see database.h).
  bool on_replica = false;
  // A single read statement of the caller's that routing may send to a
  // replica: not a transaction of the caller's, nothing that may write.
  bool plain_read = false;
  // Its connection failed under it, or no connection could be had (the
  // worker saw it): an UNAVAILABLE status from anything else (the service
  // shutting down, a closed pool) says nothing of the member.
  bool connection_failed = false;
  // No connection to the member could be had for it.
  bool no_connection = false;
  // Routing gave it up because its member was found unhealthy.
  bool abandoned = false;
  bool cancelled = false;
  bool past_deadline = false;
  // Routing stopped (the service is shutting down).
  bool stopping = false;
  // Times it already ran again elsewhere.
  int retries = 0;
};

// Whether a read that failed with `status` may run again on another member,
// and why; kNone for anything else: an SQL error (syntax, permission, 25006,
// a cancelled statement...), a read that is not plain, on the primary, out
// of time or of retries. The caller must still check that no row reached its
// caller (the result can be rewound), and does that last.
ReadRetryReason ReplicaReadRetry(const absl::Status& status, const ReadAttempt& attempt);

class Replicas {
 public:
  // `database` has a topology and outlives this.
  explicit Replicas(db::ManagedDatabase* database);
  ~Replicas();  // Stop()
  Replicas(const Replicas&) = delete;
  Replicas& operator=(const Replicas&) = delete;

  // Stops following the probes; reads waiting in AwaitReplay get
  // `then(false)` now, and later ones at once. Held calls end when the
  // database stops (db::ManagedDatabase::Stop).
  void Stop();

  db::ManagedDatabase& database() { return *database_; }
  db::Topology& topology() { return *database_->topology(); }
  const v1::DatabaseConfig& config() const { return database_->config(); }

  // The DSN of the current primary for database role `role` ("" for the
  // DSN's user), for sessions that must run there outside routed calls;
  // UNAVAILABLE, naming why, while no primary is known.
  absl::StatusOr<std::string> PrimaryDsn(const std::string& role) const {
    return database_->PrimaryDsn(role);
  }

  // How long a read waits for a replica to replay its min_lsn.
  absl::Duration token_wait() const { return token_wait_; }
  // Whether waiting for `lsn` can help: some replica is routable (healthy,
  // not banned) as last probed and none of those has replayed `lsn` yet.
  // Never for UINT64_MAX, which no replica reaches (a cache fill's fence
  // while a write's position is unknown: it reads the primary at once).
  bool WorthWaiting(uint64_t lsn) const;
  // Runs then(true) once a routable replica's sampled replay position
  // reaches `lsn` (on a probe thread, or at once on this one), then(false)
  // when `deadline` passes first or the probes stop. Exactly once; `then`
  // must not block.
  void AwaitReplay(uint64_t lsn, absl::Time deadline, std::function<void(bool)> then);

  // A write ran on the primary and may have committed: at `commit_lsn`, or
  // (0) at a position not known.
  void NoteWrite(uint64_t commit_lsn);
  // The position every write noted so far is at or before: what a replica
  // must have replayed for a cache fill read from it to be stored. While a
  // write of unknown position is noted and no probe of the primary has
  // been taken since, UINT64_MAX (fills read the primary).
  uint64_t WriteFence();

  // Failover buffering (db::ManagedDatabase::HoldForPrimary). The
  // primary's generation as a held call saw it.
  uint64_t primary_generation() const { return database_->primary_generation(); }
  absl::Duration failover_buffer() const { return database_->failover_buffer(); }
  // Holds a call of `bytes` until a primary is known under another
  // generation than `generation`: then(true) on the buffer's thread. When
  // the window passes first (failoverBufferMs after the primary was lost,
  // or `deadline`), or the database stops: then(false). RESOURCE_EXHAUSTED
  // (nothing held) when holding it would pass topology.failoverBufferCalls
  // or topology.failoverBufferBytes; UNAVAILABLE once stopped.
  // `abandoned`: true once the call's caller went away (it leaves the
  // buffer at the next WakeHolds(), without counting as a timeout).
  absl::Status HoldForPrimary(uint64_t generation, size_t bytes, absl::Time deadline,
                              std::function<void(bool)> then,
                              std::function<bool()> abandoned = nullptr) {
    return database_->HoldForPrimary(generation, bytes, deadline, std::move(then), true,
                                     std::move(abandoned));
  }
  // Calls held so far, those that timed out, held now, and the time held
  // calls waited (summed, and each hold's in a histogram), as of one moment.
  db::ManagedDatabase::HoldStats hold_stats() const { return database_->hold_stats(); }
  uint64_t held_total() const { return database_->hold_stats().total; }
  uint64_t held_timeouts() const { return database_->hold_stats().timeouts; }
  size_t held_now() const { return database_->hold_stats().now; }

  // A call failed on `member` with `error`, a failure of its connection: a
  // replica's reads go elsewhere, and calls for the primary are held, until
  // its next probe (db::ManagedDatabase::MarkSuspect).
  void MarkSuspect(const std::string& member, const absl::Status& error) {
    database_->MarkSuspect(member, error);
  }
  // A read that failed on a replica for `reason` was sent to another member.
  void CountReadRetry(ReadRetryReason reason) {
    read_retries_[static_cast<int>(reason)].fetch_add(1, std::memory_order_relaxed);
  }
  uint64_t read_retries(ReadRetryReason reason) const {
    return read_retries_[static_cast<int>(reason)].load(std::memory_order_relaxed);
  }
  // Stop() was called: routing runs nothing again.
  bool stopped() const { return stopped_.load(std::memory_order_acquire); }

  // Runs `watcher` with the ids of the members that are not the primary
  // and not healthy now (failed or late probes, MarkSuspect), after every
  // record of a probe while there is one, on the recording thread; it must
  // not block. One watcher per `key` (a Database routing with this); none
  // is running once UnwatchUnhealthy(key) or Stop() returned.
  void WatchUnhealthy(const void* key,
                      std::function<void(const std::vector<std::string>&)> watcher);
  void UnwatchUnhealthy(const void* key);

  // Reads that waited for a replica, and of them those that got one.
  uint64_t token_waits() const { return token_waits_.load(std::memory_order_relaxed); }
  uint64_t token_waits_reached() const {
    return token_waits_reached_.load(std::memory_order_relaxed);
  }

 private:
  void OnRecord();

  db::ManagedDatabase* const database_;
  const absl::Duration token_wait_;
  const absl::Duration probe_timeout_;
  // The highest sampled replay position of a routable replica, and how many
  // replicas are routable (healthy, not banned), as of the last probe.
  std::atomic<uint64_t> replayed_{0};
  std::atomic<int> routable_{0};
  std::atomic<uint64_t> token_waits_{0}, token_waits_reached_{0};
  // By ReadRetryReason (kNone's slot unused).
  std::atomic<uint64_t> read_retries_[std::size(kReadRetryReasons) + 1] = {};
  std::atomic<bool> stopped_{false};

  // Held shared by AwaitReplay, exclusively by Stop (which resets waiters_).
  absl::Mutex waiters_mu_;
  std::unique_ptr<LsnWaiters> waiters_ ABSL_GUARDED_BY(waiters_mu_);

  // Held while the watchers run, so Unwatch waits for them.
  absl::Mutex watchers_mu_;
  std::vector<std::pair<const void*, std::function<void(const std::vector<std::string>&)>>>
      watchers_ ABSL_GUARDED_BY(watchers_mu_);

  absl::Mutex fence_mu_;
  uint64_t write_fence_ ABSL_GUARDED_BY(fence_mu_) = 0;
  // The last write of unknown position not yet covered by a primary probe.
  absl::Time unknown_write_ ABSL_GUARDED_BY(fence_mu_) = absl::InfinitePast();
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_REPLICAS_H_
