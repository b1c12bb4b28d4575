#ifndef POOLSIDE_COMMON_DB_TOPOLOGY_H_
#define POOLSIDE_COMMON_DB_TOPOLOGY_H_

// The members of one database (a primary and its streaming replicas) as last
// observed, and where a call should go: the routing half of replica support.
// It runs no SQL; a TopologyMonitor (topology_monitor.h) probes the members and
// reports here, and tests report by hand with a SimulatedClock.
//
//   Topology topology("app", {.max_lag = absl::Seconds(5)}, Clock::Real());
//   topology.SetMembers({{"pg1", dsn1}, {"pg2", dsn2}});
//   topology.Record("pg1", MemberSample{.in_recovery = false, .lsn = ...});
//   absl::StatusOr<Topology::Route> route = topology.Pick(/*read=*/true, min_lsn);
//   // run the call on route->dsn(); the route counts as outstanding until
//   // it is destroyed.
//
// Lag is measured here, from the probes: a replica's byte lag is the primary's
// last sampled WAL position minus the replica's replay position; its time lag
// is, at the replica's last sample, how long before the primary had first had
// WAL the replica had still not replayed (from a bounded history of primary
// samples), so an idle primary shows no lag and a paused replica's lag grows
// with the clock (probe by probe), not with the write rate. Between its probes
// a replica keeps its last verdict: lag and bans change only in Record.
// A replica whose lag exceeds max_lag or max_lag_bytes is banned; it is let
// back once both are within half their bound (so a replica hovering at the
// bound does not flap). A member whose last probe failed, or whose last
// successful probe is older than max_sample_age, is unhealthy.
//
// The primary is the member that is not in recovery; with a hint (Patroni's
// leader) it must also be the hinted member. Zero or several writable members
// mean no primary: writes fail with UNAVAILABLE rather than guess (two
// writable members are a split brain until the HA manager settles it).
//
// Thread-safe: every method may be called from any thread; Pick is cheap (one
// mutex, no I/O).

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/clock/clock.h"
#include "common/db/pgoutput_decoder.h"

namespace poolside::db {

struct TopologyOptions {
  // Lag bounds past which a replica gets no reads.
  absl::Duration max_lag = absl::Seconds(5);
  uint64_t max_lag_bytes = 64 << 20;
  // A member not successfully probed for this long is unhealthy.
  absl::Duration max_sample_age = absl::Seconds(3);
  // No healthy replica for a read: false sends it to the primary, true fails
  // it with UNAVAILABLE. Only applies when the database has replicas at all.
  bool fail_without_replica = false;
  // Primary WAL samples kept for the time lag (older ones are dropped; a
  // replica behind all of them has at least the oldest one's age as lag).
  size_t max_history = 4096;
};

// What one probe of a member found.
struct MemberSample {
  bool in_recovery = false;
  // A primary's current WAL position; a replica's replay position.
  Lsn lsn = 0;
  // A primary's timeline; the one a replica's WAL receiver streams. 0:
  // unknown (no receiver, or not visible to the probe's role).
  uint32_t timeline = 0;
};

enum class MemberRole { kUnknown, kPrimary, kReplica };
const char* MemberRoleName(MemberRole role);

// A member as configured or discovered.
struct MemberSpec {
  // Stable identity (Patroni's member name, or the DSN's host:port).
  std::string id;
  std::string dsn;
};

// One member's state, for status pages, metrics and tests.
struct MemberStatus {
  std::string id;
  MemberRole role = MemberRole::kUnknown;
  bool healthy = false;
  bool banned = false;
  Lsn lsn = 0;
  uint32_t timeline = 0;  // MemberSample::timeline
  uint64_t lag_bytes = 0;
  absl::Duration lag = absl::ZeroDuration();
  int64_t outstanding = 0;
  // Calls routed to it so far.
  uint64_t routed = 0;
  // Times it was banned for lag.
  uint64_t bans = 0;
  absl::Time last_sample = absl::InfinitePast();
  // The last probe's failure; OK after a successful probe.
  absl::Status last_error;
};

class Topology {
 private:
  struct Member;

 public:
  // A call's destination. Counts as outstanding on its member until destroyed.
  class Route {
   public:
    Route(Route&& other) noexcept
        : member_(std::move(other.member_)), primary_(other.primary_), lsn_(other.lsn_) {}
    Route& operator=(Route&& other) noexcept;
    ~Route();
    const std::string& id() const;
    const std::string& dsn() const;
    bool primary() const { return primary_; }
    // The member's replay (or WAL) position when it was picked.
    Lsn lsn() const { return lsn_; }

   private:
    friend class Topology;
    Route(std::shared_ptr<Member> member, bool primary, Lsn lsn);
    std::shared_ptr<Member> member_;
    bool primary_ = false;
    Lsn lsn_ = 0;
  };

  // `database` names it in messages. `clock` must outlive the topology.
  Topology(std::string database, TopologyOptions options, Clock* clock);
  ~Topology();
  Topology(const Topology&) = delete;
  Topology& operator=(const Topology&) = delete;

  // Replaces the member set. Members keep their state across calls by id
  // (a changed DSN resets it); removed members stop getting calls, and routes
  // already handed out stay valid. Empty ids or duplicates: INVALID_ARGUMENT,
  // nothing changed.
  absl::Status SetMembers(std::vector<MemberSpec> members);
  // The member the HA manager names as leader ("" for none): only it may be
  // the primary.
  void SetLeaderHint(std::string id);

  // A probe's outcome for member `id` (ignored if it is no longer a member).
  // `marks_before`: suspect_marks() read before the probe started; a probe
  // started before the member was last marked suspect does not clear the
  // mark (its answer may predate what the call met). The default: a probe
  // started now.
  void Record(const std::string& id, const absl::StatusOr<MemberSample>& sample,
              uint64_t marks_before = kProbeStartedNow);
  static constexpr uint64_t kProbeStartedNow = UINT64_MAX;
  // Runs `listener` after every Record() of a member, on the recording
  // thread and outside the topology's lock (it may call any method); it must
  // not block. Replaces the previous one; null: none.
  void SetRecordListener(std::function<void()> listener);

  // Where a call goes. Writes (read = false) and forced-primary calls: the
  // primary, or UNAVAILABLE when none is known. Reads: the healthy, unbanned
  // replica with the fewest outstanding calls among those whose replay
  // position is at least `min_lsn` (ties taken in turn); none: the primary,
  // or UNAVAILABLE if the options say so and no replica is healthy.
  // Members in `exclude` (a read tried again after failing there) are passed
  // over as if unhealthy; an excluded primary (one the read failed on, maybe
  // as a replica promoted since): UNAVAILABLE, naming it.
  absl::StatusOr<Route> Pick(bool read, Lsn min_lsn = 0,
                             absl::Span<const std::string> exclude = {});

  // A call found member `id` unreachable (its connection failed, or a new
  // one could not be made): it is suspect, with `error` as its last error,
  // until a probe started after this call records it, so that other calls
  // stop going there before the monitor's next probe notices.
  //  - A replica (last probed in recovery) is unhealthy meanwhile: reads
  //    pass it over.
  //  - The primary: there is no primary meanwhile (the generation moves,
  //    Pick(false) is UNAVAILABLE saying why, failover holds wait), and no
  //    other member is named primary on its account (one failed connection
  //    must not start a failover); its next probe names it again (under
  //    another generation, which releases the holds) or loses it.
  //  - A member accepting writes that is not the primary (no primary: two
  //    writable members) and ids no longer members are left to the probes.
  // Runs the record listener when it marked one. Returns whether it did.
  bool MarkSuspect(const std::string& id, const absl::Status& error);

  // MarkSuspect() calls that marked a member so far; see Record().
  uint64_t suspect_marks() const;

  // The primary's id ("" if none) and a counter that moves every time the
  // primary changes (including to none), for callers holding writes across a
  // switchover.
  std::string primary() const;
  // The primary's DSN, for work that must run on it outside routed calls
  // (sessions of its own); UNAVAILABLE, naming why, exactly when Pick(false)
  // would be. Counts nothing as outstanding.
  absl::StatusOr<std::string> PrimaryDsn() const;
  uint64_t primary_generation() const;
  // Blocks until primary_generation() differs from `seen` or `timeout`
  // passes (real time); returns the current generation.
  uint64_t AwaitPrimaryChange(uint64_t seen, absl::Duration timeout) const;
  // While no primary is known: when the last one was lost (or when the
  // topology was made, if it never had one), by the topology's clock; the
  // start of a failover buffer's window. InfiniteFuture while one is known.
  absl::Time primary_lost_at() const;

  // All members, in SetMembers order.
  std::vector<MemberStatus> Snapshot() const;
  const std::string& database() const { return database_; }

 private:
  struct PrimarySample {
    absl::Time at;
    Lsn lsn;
  };

  // Record's work; false if `id` is not a member.
  bool RecordLocked(const std::string& id, const absl::StatusOr<MemberSample>& sample,
                    uint64_t marks_before) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ResolvePrimaryLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EvaluateLagLocked(Member& member) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool HealthyLocked(const Member& member, absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status NoPrimaryErrorLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string database_;
  const TopologyOptions options_;
  Clock* const clock_;

  mutable absl::Mutex mu_;
  std::vector<std::shared_ptr<Member>> members_ ABSL_GUARDED_BY(mu_);
  std::string leader_hint_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<Member> primary_ ABSL_GUARDED_BY(mu_);
  // Why there is no primary, when there is none.
  std::string no_primary_reason_ ABSL_GUARDED_BY(mu_);
  uint64_t primary_generation_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time primary_lost_at_ ABSL_GUARDED_BY(mu_);
  std::deque<PrimarySample> history_ ABSL_GUARDED_BY(mu_);
  size_t next_turn_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t suspect_marks_ ABSL_GUARDED_BY(mu_) = 0;
  std::function<void()> listener_ ABSL_GUARDED_BY(mu_);
};

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_TOPOLOGY_H_
