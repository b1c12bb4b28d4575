#include "common/db/topology.h"

#include <algorithm>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace poolside::db {

// Guarded by the owning Topology's mutex, except the atomics (routes update
// them without it).
struct Topology::Member {
  Member(std::string id_in, std::string dsn_in) : id(std::move(id_in)), dsn(std::move(dsn_in)) {}

  const std::string id;
  const std::string dsn;
  std::atomic<int64_t> outstanding{0};
  std::atomic<uint64_t> routed{0};

  bool last_ok = false;
  absl::Status last_error = absl::UnavailableError("not probed yet");
  absl::Time last_sample = absl::InfinitePast();  // last successful probe
  bool in_recovery = false;
  Lsn lsn = 0;
  uint32_t timeline = 0;
  bool banned = false;
  uint64_t bans = 0;
  uint64_t lag_bytes = 0;
  absl::Duration lag = absl::ZeroDuration();
  // Marked by a call (MarkSuspect) and not probed since: unhealthy.
  bool suspect = false;
  // The topology's suspect_marks_ when it was last marked.
  uint64_t suspect_mark = 0;
};

const char* MemberRoleName(MemberRole role) {
  switch (role) {
    case MemberRole::kPrimary:
      return "primary";
    case MemberRole::kReplica:
      return "replica";
    case MemberRole::kUnknown:
      break;
  }
  return "unknown";
}

Topology::Route::Route(std::shared_ptr<Member> member, bool primary, Lsn lsn)
    : member_(std::move(member)), primary_(primary), lsn_(lsn) {
  member_->outstanding.fetch_add(1, std::memory_order_relaxed);
  member_->routed.fetch_add(1, std::memory_order_relaxed);
}

Topology::Route& Topology::Route::operator=(Route&& other) noexcept {
  if (this != &other) {
    if (member_ != nullptr) member_->outstanding.fetch_sub(1, std::memory_order_relaxed);
    member_ = std::move(other.member_);
    primary_ = other.primary_;
    lsn_ = other.lsn_;
  }
  return *this;
}

Topology::Route::~Route() {
  if (member_ != nullptr) member_->outstanding.fetch_sub(1, std::memory_order_relaxed);
}

const std::string& Topology::Route::id() const { return member_->id; }
const std::string& Topology::Route::dsn() const { return member_->dsn; }

Topology::Topology(std::string database, TopologyOptions options, Clock* clock)
    : database_(std::move(database)),
      options_(options),
      clock_(clock),
      primary_lost_at_(clock->Now()) {}

Topology::~Topology() = default;

absl::Status Topology::SetMembers(std::vector<MemberSpec> members) {
  absl::flat_hash_set<std::string> ids;
  for (const MemberSpec& spec : members) {
    if (spec.id.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("database ", database_, ": empty member id"));
    }
    if (!ids.insert(spec.id).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("database ", database_, ": duplicate member ", spec.id));
    }
  }
  absl::MutexLock lock(&mu_);
  std::vector<std::shared_ptr<Member>> next;
  next.reserve(members.size());
  for (MemberSpec& spec : members) {
    std::shared_ptr<Member> kept;
    for (const std::shared_ptr<Member>& m : members_) {
      if (m->id == spec.id && m->dsn == spec.dsn) kept = m;
    }
    next.push_back(
        kept != nullptr ? kept : std::make_shared<Member>(std::move(spec.id), std::move(spec.dsn)));
  }
  members_ = std::move(next);
  ResolvePrimaryLocked();
  return absl::OkStatus();
}

void Topology::SetLeaderHint(std::string id) {
  absl::MutexLock lock(&mu_);
  leader_hint_ = std::move(id);
  ResolvePrimaryLocked();
}

void Topology::Record(const std::string& id, const absl::StatusOr<MemberSample>& sample,
                      uint64_t marks_before) {
  std::function<void()> listener;
  {
    absl::MutexLock lock(&mu_);
    if (!RecordLocked(id, sample, marks_before)) return;
    listener = listener_;
  }
  if (listener) listener();
}

void Topology::SetRecordListener(std::function<void()> listener) {
  absl::MutexLock lock(&mu_);
  listener_ = std::move(listener);
}

bool Topology::RecordLocked(const std::string& id, const absl::StatusOr<MemberSample>& sample,
                            uint64_t marks_before) {
  const absl::Time now = clock_->Now();
  std::shared_ptr<Member> member;
  for (const std::shared_ptr<Member>& m : members_) {
    if (m->id == id) member = m;
  }
  if (member == nullptr) return false;
  // Only a probe that started after the mark speaks for the member since.
  const bool clears_mark = marks_before >= member->suspect_mark;
  if (clears_mark) member->suspect = false;
  if (!sample.ok()) {
    member->last_ok = false;
    member->last_error = sample.status();
  } else {
    member->last_ok = true;
    if (clears_mark) member->last_error = absl::OkStatus();
    member->last_sample = now;
    member->in_recovery = sample->in_recovery;
    member->lsn = sample->lsn;
    member->timeline = sample->timeline;
  }
  ResolvePrimaryLocked();
  if (sample.ok() && member == primary_) {
    // A primary behind the history (a new primary after a failover that lost
    // WAL) starts a new history.
    if (!history_.empty() && history_.back().lsn > member->lsn) history_.clear();
    history_.push_back({now, member->lsn});
    // Samples older than needed to tell a replica is past twice the bound
    // only tell how far past it is.
    const absl::Time horizon = now - 2 * options_.max_lag - options_.max_sample_age;
    while (history_.size() > 1 &&
           (history_.size() > options_.max_history || history_[1].at < horizon)) {
      history_.pop_front();
    }
  }
  for (const std::shared_ptr<Member>& m : members_) {
    if (m != primary_ && m->last_ok && m->in_recovery) EvaluateLagLocked(*m);
  }
  return true;
}

void Topology::EvaluateLagLocked(Member& member) {
  Lsn reference = history_.empty() ? 0 : history_.back().lsn;
  // Without a primary sample, a replica behind another is behind by as much.
  for (const std::shared_ptr<Member>& m : members_) {
    if (m->last_ok && m->in_recovery) reference = std::max(reference, m->lsn);
  }
  member.lag_bytes = reference > member.lsn ? reference - member.lsn : 0;
  member.lag = absl::ZeroDuration();
  if (!history_.empty() && history_.back().lsn > member.lsn) {
    // The first sample at which the primary had WAL the member lacks, as of
    // the member's own sample: between its probes the member's replay is
    // unknown, not stopped (counting the clock since would ban a replica
    // that keeps up whenever a probe is late; a member whose probes stop is
    // unhealthy past max_sample_age instead).
    auto first =
        std::upper_bound(history_.begin(), history_.end(), member.lsn,
                         [](Lsn lsn, const PrimarySample& sample) { return lsn < sample.lsn; });
    member.lag = std::max(absl::ZeroDuration(), member.last_sample - first->at);
  }
  // A replica on another timeline than the primary's is not on its history:
  // after a failover it may have replayed past the promoted member's WAL
  // (rows the new primary never had, positions that pass its tokens without
  // its writes) until it follows the new timeline, if it ever can.
  const bool other_timeline = primary_ != nullptr && primary_->timeline != 0 &&
                              member.timeline != 0 && member.timeline != primary_->timeline;
  const bool over =
      other_timeline || member.lag > options_.max_lag || member.lag_bytes > options_.max_lag_bytes;
  const bool within_half = !other_timeline && member.lag <= options_.max_lag / 2 &&
                           member.lag_bytes <= options_.max_lag_bytes / 2;
  if (!member.banned && over) {
    member.banned = true;
    ++member.bans;
  } else if (member.banned && within_half) {
    member.banned = false;
  }
}

bool Topology::HealthyLocked(const Member& member, absl::Time now) const {
  return member.last_ok && !member.suspect && now - member.last_sample <= options_.max_sample_age;
}

void Topology::ResolvePrimaryLocked() {
  const absl::Time now = clock_->Now();
  std::vector<std::shared_ptr<Member>> writable;
  for (const std::shared_ptr<Member>& m : members_) {
    if (HealthyLocked(*m, now) && !m->in_recovery) writable.push_back(m);
  }
  std::shared_ptr<Member> chosen;
  std::string reason;
  std::shared_ptr<Member> suspect;
  for (const std::shared_ptr<Member>& m : members_) {
    if (m->suspect && m->last_ok && !m->in_recovery) suspect = m;
  }
  if (suspect != nullptr) {
    // The primary, marked (or a marked replica found promoted by a probe
    // older than the mark): none until its next probe, whoever else
    // accepts writes.
    reason = absl::StrCat(
        "a call lost its connection to ", suspect->id,
        ", which accepts writes (waiting for its next probe): ", suspect->last_error.message());
  } else if (!leader_hint_.empty()) {
    for (const std::shared_ptr<Member>& m : writable) {
      if (m->id == leader_hint_) chosen = m;
    }
    if (chosen == nullptr) {
      reason = absl::StrCat("the leader ", leader_hint_, " is not known to accept writes yet");
    }
  } else if (writable.size() == 1) {
    chosen = writable[0];
  } else if (writable.empty()) {
    reason = "no member is known to accept writes";
  } else {
    std::vector<std::string> ids;
    for (const std::shared_ptr<Member>& m : writable) ids.push_back(m->id);
    reason = absl::StrCat("members ", absl::StrJoin(ids, ", "),
                          " all accept writes (more than one primary)");
  }
  if (chosen != primary_) {
    if (chosen == nullptr) primary_lost_at_ = now;
    primary_ = std::move(chosen);
    ++primary_generation_;
  }
  no_primary_reason_ = std::move(reason);
}

absl::Status Topology::NoPrimaryErrorLocked() const {
  return absl::UnavailableError(
      absl::StrCat("database ", database_, " has no primary now: ",
                   no_primary_reason_.empty() ? "it is not responding" : no_primary_reason_));
}

absl::StatusOr<Topology::Route> Topology::Pick(bool read, Lsn min_lsn,
                                               absl::Span<const std::string> exclude) {
  auto excluded = [exclude](const Member& m) {
    return std::find(exclude.begin(), exclude.end(), m.id) != exclude.end();
  };
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  const bool primary_ok = primary_ != nullptr && HealthyLocked(*primary_, now);
  if (read) {
    const size_t n = members_.size();
    Member* best = nullptr;
    size_t best_index = 0;
    int64_t best_outstanding = 0;
    bool any_replica = false;
    bool any_healthy_replica = false;
    for (size_t k = 0; k < n; ++k) {
      const size_t i = (next_turn_ + k) % n;
      Member& m = *members_[i];
      if (members_[i] == primary_) continue;
      any_replica = true;
      // Lag and bans change only with samples (Record evaluates them).
      if (!HealthyLocked(m, now) || !m.in_recovery || excluded(m) || m.banned) continue;
      any_healthy_replica = true;
      if (m.lsn < min_lsn) continue;
      const int64_t outstanding = m.outstanding.load(std::memory_order_relaxed);
      if (best == nullptr || outstanding < best_outstanding) {
        best = &m;
        best_index = i;
        best_outstanding = outstanding;
      }
    }
    if (best != nullptr) {
      next_turn_ = best_index + 1;
      return Route(members_[best_index], false, best->lsn);
    }
    if (any_replica && !any_healthy_replica && options_.fail_without_replica) {
      return absl::UnavailableError(
          absl::StrCat("database ", database_,
                       ": no replica is healthy and within the lag bound, and reads are "
                       "configured not to fall back to the primary (noReplica: fail)"));
    }
  }
  if (!primary_ok) return NoPrimaryErrorLocked();
  if (excluded(*primary_)) {
    // Excluded as a member the call failed on, maybe as a replica that was
    // promoted since: it is not run there again either way.
    return absl::UnavailableError(
        absl::StrCat("database ", database_, ": this call already failed on ", primary_->id,
                     ", the primary now, and no other member can take it"));
  }
  return Route(primary_, true, primary_->lsn);
}

bool Topology::MarkSuspect(const std::string& id, const absl::Status& error) {
  std::function<void()> listener;
  {
    absl::MutexLock lock(&mu_);
    std::shared_ptr<Member> member;
    for (const std::shared_ptr<Member>& m : members_) {
      if (m->id == id) member = m;
    }
    if (member == nullptr) return false;
    const bool primary = member == primary_;
    // A writable member that is not the primary takes part in naming one
    // (two writable members: none), which stays the probes' call.
    if (!primary && !member->in_recovery) return false;
    member->suspect = true;
    member->suspect_mark = ++suspect_marks_;
    member->last_error = error.ok() ? absl::UnavailableError("a call could not reach it") : error;
    if (primary) ResolvePrimaryLocked();
    listener = listener_;
  }
  if (listener) listener();
  return true;
}

uint64_t Topology::suspect_marks() const {
  absl::MutexLock lock(&mu_);
  return suspect_marks_;
}

std::string Topology::primary() const {
  absl::MutexLock lock(&mu_);
  return primary_ == nullptr ? "" : primary_->id;
}

absl::StatusOr<std::string> Topology::PrimaryDsn() const {
  absl::MutexLock lock(&mu_);
  if (primary_ == nullptr || !HealthyLocked(*primary_, clock_->Now())) {
    return NoPrimaryErrorLocked();
  }
  return primary_->dsn;
}

uint64_t Topology::primary_generation() const {
  absl::MutexLock lock(&mu_);
  return primary_generation_;
}

uint64_t Topology::AwaitPrimaryChange(uint64_t seen, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto changed = [this, seen]()
                     ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return primary_generation_ != seen; };
  mu_.AwaitWithTimeout(absl::Condition(&changed), timeout);
  return primary_generation_;
}

absl::Time Topology::primary_lost_at() const {
  absl::MutexLock lock(&mu_);
  return primary_ == nullptr ? primary_lost_at_ : absl::InfiniteFuture();
}

std::vector<MemberStatus> Topology::Snapshot() const {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  std::vector<MemberStatus> out;
  out.reserve(members_.size());
  for (const std::shared_ptr<Member>& m : members_) {
    MemberStatus s;
    s.id = m->id;
    s.healthy = HealthyLocked(*m, now);
    if (m == primary_) {
      s.role = MemberRole::kPrimary;
    } else if (m->last_ok && m->in_recovery) {
      s.role = MemberRole::kReplica;
    }
    s.banned = m->banned;
    s.lsn = m->lsn;
    s.timeline = m->timeline;
    s.lag_bytes = s.role == MemberRole::kReplica ? m->lag_bytes : 0;
    s.lag = s.role == MemberRole::kReplica ? m->lag : absl::ZeroDuration();
    s.outstanding = m->outstanding.load(std::memory_order_relaxed);
    s.routed = m->routed.load(std::memory_order_relaxed);
    s.bans = m->bans;
    s.last_sample = m->last_sample;
    s.last_error = m->last_error;
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace poolside::db
