#include "services/query/replicas.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/clock/clock.h"
#include "common/config/database_config.h"
#include "common/db/topology_config.h"

namespace poolside::query {
bool Replicas::Configured(const v1::DatabaseConfig& config) {
  return db::TopologyConfigured(config);
}

Replicas::Replicas(const v1::DatabaseConfig& config)
    : config_(config),
      token_wait_(absl::Milliseconds(config.topology().token_wait_ms())),
      probe_timeout_(absl::Milliseconds(config.topology().probe_timeout_ms())),
      failover_buffer_(absl::Milliseconds(config.topology().failover_buffer_ms())),
      max_held_calls_(config.topology().failover_buffer_calls()),
      max_held_bytes_(config.topology().failover_buffer_bytes()),
      topology_(config.name(), db::TopologyOptionsFor(config.topology()), Clock::Real()),
      monitor_(&topology_, db::MonitorOptionsFor(config.topology())),
      waiters_(std::make_unique<LsnWaiters>()) {
  topology_.SetRecordListener([this] { OnRecord(); });
}

Replicas::~Replicas() { Stop(); }

absl::Status Replicas::Start(absl::Duration wait_for_primary) {
  if (absl::Status started = db::StartTopologyMonitor(config_, &monitor_); !started.ok()) {
    return started;
  }
  {
    absl::MutexLock lock(&buffer_mu_);
    lost_at_ = absl::Now();
    buffer_started_ = true;
  }
  buffer_thread_ = std::thread([this] { BufferLoop(); });
  db::AwaitPrimary(topology_, wait_for_primary);
  return absl::OkStatus();
}

void Replicas::Stop() {
  monitor_.Stop();
  topology_.SetRecordListener(nullptr);
  std::unique_ptr<LsnWaiters> waiters;
  {
    absl::MutexLock lock(&waiters_mu_);
    waiters = std::move(waiters_);
  }
  // Outside the lock: the waiting reads' then(false) routes them now.
  waiters.reset();
  {
    absl::MutexLock lock(&buffer_mu_);
    buffer_stopping_ = true;
    buffer_changed_.SignalAll();
  }
  if (buffer_thread_.joinable()) buffer_thread_.join();
}

absl::Status Replicas::HoldForPrimary(uint64_t generation, size_t bytes, absl::Time deadline,
                                      std::function<void(bool)> then) {
  absl::MutexLock lock(&buffer_mu_);
  if (buffer_stopping_ || !buffer_started_) {
    return absl::UnavailableError(
        absl::StrCat("database ", config_.name(),
                     ": no primary is known, and calls cannot be held for one now"));
  }
  if (held_.size() >= max_held_calls_ || held_bytes_ + bytes > max_held_bytes_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("database ", config_.name(), " has no primary now and ", held_.size(),
                     " calls (", held_bytes_, " bytes) are held for one already; this call of ",
                     bytes, " bytes would pass topology.failoverBufferCalls (", max_held_calls_,
                     ") or failoverBufferBytes (", max_held_bytes_, "); retry with backoff"));
  }
  const absl::Time now = absl::Now();
  // With no primary known, the window runs from the moment it was lost; with
  // one known (its connection could not be had, or it refused a write as read
  // only before the probes saw it demoted), from now: that loss starts here.
  const absl::Time lost = had_primary_ || lost_at_ == absl::InfinitePast() ? now : lost_at_;
  held_.push_back(
      Held{generation, bytes, now, std::min(deadline, lost + failover_buffer_), std::move(then)});
  held_bytes_ += bytes;
  held_total_.fetch_add(1, std::memory_order_relaxed);
  buffer_changed_.SignalAll();
  return absl::OkStatus();
}

size_t Replicas::held_now() const {
  absl::MutexLock lock(&buffer_mu_);
  return held_.size();
}

double Replicas::held_seconds() const {
  absl::MutexLock lock(&buffer_mu_);
  return held_seconds_;
}

void Replicas::BufferLoop() {
  absl::MutexLock lock(&buffer_mu_);
  while (true) {
    const absl::Time now = absl::Now();
    const bool stopping = buffer_stopping_;
    const bool known = !stopping && !topology_.primary().empty();
    const uint64_t generation = topology_.primary_generation();
    std::vector<Held> release;
    std::vector<bool> outcome;
    absl::Time next = absl::InfiniteFuture();
    for (size_t i = 0; i < held_.size();) {
      Held& h = held_[i];
      const bool ready = known && h.generation != generation;
      if (stopping || ready || now >= h.until) {
        outcome.push_back(ready);
        held_bytes_ -= h.bytes;
        held_seconds_ += absl::ToDoubleSeconds(now - h.since);
        release.push_back(std::move(h));
        held_[i] = std::move(held_.back());
        held_.pop_back();
      } else {
        next = std::min(next, h.until);
        ++i;
      }
    }
    if (!release.empty()) {
      buffer_mu_.Unlock();
      for (size_t i = 0; i < release.size(); ++i) {
        if (!outcome[i]) held_timeouts_.fetch_add(1, std::memory_order_relaxed);
        release[i].then(outcome[i]);
      }
      buffer_mu_.Lock();
      continue;
    }
    if (stopping) return;
    // Woken by a probe that changed the primary (OnRecord), a new held
    // call, or the earliest window's end.
    buffer_changed_.WaitWithDeadline(&buffer_mu_, next);
  }
}

absl::StatusOr<v1::DatabaseConfig> Replicas::MemberConfig(const std::string& member_dsn,
                                                          const std::string& role) const {
  v1::DatabaseConfig c = config_;
  c.set_dsn(member_dsn);
  if (role.empty()) return c;
  for (const v1::DatabaseRole& r : config_.roles()) {
    if (r.name() == role) return config::RoleDatabaseConfig(c, r);
  }
  return absl::FailedPreconditionError(
      absl::StrCat("database ", config_.name(), " configures no role \"", role, "\""));
}

absl::StatusOr<std::string> Replicas::PrimaryDsn(const std::string& role) const {
  absl::StatusOr<std::string> dsn = topology_.PrimaryDsn();
  if (!dsn.ok() || role.empty()) return dsn;
  absl::StatusOr<v1::DatabaseConfig> c = MemberConfig(*dsn, role);
  if (!c.ok()) return c.status();
  return c->dsn();
}

void Replicas::OnRecord() {
  uint64_t replayed = 0;
  int routable = 0;
  for (const db::MemberStatus& m : topology_.Snapshot()) {
    if (m.role != db::MemberRole::kReplica || !m.healthy || m.banned) continue;
    ++routable;
    replayed = std::max<uint64_t>(replayed, m.lsn);
  }
  routable_.store(routable);
  {
    absl::MutexLock lock(&buffer_mu_);
    const bool has_primary = !topology_.primary().empty();
    if (had_primary_ && !has_primary) lost_at_ = absl::Now();
    had_primary_ = has_primary;
    if (!held_.empty()) buffer_changed_.SignalAll();
  }
  // A replica that stops being routable takes its position along: a read
  // waiting for it must not be woken by a position nobody can serve.
  replayed_.store(replayed);
  absl::ReaderMutexLock lock(&waiters_mu_);
  if (waiters_ != nullptr) waiters_->Advance(&replayed_);
}

bool Replicas::WorthWaiting(uint64_t lsn) const {
  return routable_.load() > 0 && replayed_.load() < lsn;
}

void Replicas::AwaitReplay(uint64_t lsn, absl::Time deadline, std::function<void(bool)> then) {
  token_waits_.fetch_add(1, std::memory_order_relaxed);
  auto counted = [this, then = std::move(then)](bool reached) {
    if (reached) token_waits_reached_.fetch_add(1, std::memory_order_relaxed);
    then(reached);
  };
  {
    absl::ReaderMutexLock lock(&waiters_mu_);
    if (waiters_ != nullptr) {
      waiters_->Wait(&replayed_, lsn, deadline, std::move(counted));
      return;
    }
  }
  counted(false);
}

void Replicas::NoteWrite(uint64_t commit_lsn) {
  absl::MutexLock lock(&fence_mu_);
  if (commit_lsn != 0) {
    write_fence_ = std::max(write_fence_, commit_lsn);
  } else {
    unknown_write_ = absl::Now();
  }
}

uint64_t Replicas::WriteFence() {
  absl::MutexLock lock(&fence_mu_);
  if (unknown_write_ != absl::InfinitePast()) {
    // A probe that answered more than a probe timeout after the write was
    // noted was sent after it: the primary's position it found is past the
    // write's commit.
    for (const db::MemberStatus& m : topology_.Snapshot()) {
      if (m.role == db::MemberRole::kPrimary && m.healthy &&
          m.last_sample > unknown_write_ + probe_timeout_) {
        write_fence_ = std::max<uint64_t>(write_fence_, m.lsn);
        unknown_write_ = absl::InfinitePast();
      }
    }
    if (unknown_write_ != absl::InfinitePast()) return UINT64_MAX;
  }
  return write_fence_;
}

}  // namespace poolside::query
