#include "services/query/replicas.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "common/db/error.h"

namespace poolside::query {

const char* ReadRetryReasonName(ReadRetryReason reason) {
  switch (reason) {
    case ReadRetryReason::kServerShutdown:
      return "server_shutdown";
    case ReadRetryReason::kConnectFailed:
      return "connect_failed";
    case ReadRetryReason::kConnectionLost:
      return "connection_lost";
    case ReadRetryReason::kMemberUnhealthy:
      return "member_unhealthy";
    case ReadRetryReason::kNone:
      break;
  }
  return "";
}

ReadRetryReason ReplicaReadRetry(const absl::Status& status, const ReadAttempt& attempt) {
  if (!attempt.on_replica || !attempt.plain_read || attempt.cancelled || attempt.past_deadline ||
      attempt.stopping || attempt.retries >= kMaxReplicaReadRetries) {
    return ReadRetryReason::kNone;
  }
  // Every lost or refused connection is UNAVAILABLE (common/db/error.h);
  // so are a few server verdicts that say nothing of the member's health
  // (53300 too many connections): only the connection's own failures count.
  if (status.code() != absl::StatusCode::kUnavailable) return ReadRetryReason::kNone;
  if (!attempt.connection_failed && !attempt.abandoned) return ReadRetryReason::kNone;
  const std::string sqlstate = db::SqlStateOf(status);
  if (sqlstate == "57P01" || sqlstate == "57P02" || sqlstate == "57P03") {
    return ReadRetryReason::kServerShutdown;
  }
  if (!sqlstate.empty() && !absl::StartsWith(sqlstate, "08")) return ReadRetryReason::kNone;
  if (attempt.abandoned) return ReadRetryReason::kMemberUnhealthy;
  return attempt.no_connection ? ReadRetryReason::kConnectFailed : ReadRetryReason::kConnectionLost;
}

Replicas::Replicas(db::ManagedDatabase* database)
    : database_(database),
      token_wait_(absl::Milliseconds(database->config().topology().token_wait_ms())),
      probe_timeout_(absl::Milliseconds(database->config().topology().probe_timeout_ms())),
      waiters_(std::make_unique<LsnWaiters>()) {
  database_->SetRecordListener([this] { OnRecord(); });
}

Replicas::~Replicas() { Stop(); }

void Replicas::Stop() {
  stopped_.store(true, std::memory_order_release);
  database_->SetRecordListener(nullptr);
  {
    absl::MutexLock lock(&watchers_mu_);
    watchers_.clear();
  }
  std::unique_ptr<LsnWaiters> waiters;
  {
    absl::MutexLock lock(&waiters_mu_);
    waiters = std::move(waiters_);
  }
  // Outside the lock: the waiting reads' then(false) routes them now.
  waiters.reset();
}

void Replicas::WatchUnhealthy(const void* key,
                              std::function<void(const std::vector<std::string>&)> watcher) {
  absl::MutexLock lock(&watchers_mu_);
  if (stopped()) return;
  for (auto& [k, w] : watchers_) {
    if (k == key) {
      w = std::move(watcher);
      return;
    }
  }
  watchers_.emplace_back(key, std::move(watcher));
}

void Replicas::UnwatchUnhealthy(const void* key) {
  absl::MutexLock lock(&watchers_mu_);
  watchers_.erase(std::remove_if(watchers_.begin(), watchers_.end(),
                                 [key](const auto& w) { return w.first == key; }),
                  watchers_.end());
}

void Replicas::OnRecord() {
  uint64_t replayed = 0;
  int routable = 0;
  std::vector<std::string> unhealthy;
  const std::vector<db::MemberStatus> members = topology().Snapshot();
  for (const db::MemberStatus& m : members) {
    if (!m.healthy && m.role != db::MemberRole::kPrimary) unhealthy.push_back(m.id);
  }
  if (!unhealthy.empty()) {
    absl::MutexLock lock(&watchers_mu_);
    for (auto& [key, watcher] : watchers_) watcher(unhealthy);
  }
  for (const db::MemberStatus& m : members) {
    if (m.role != db::MemberRole::kReplica || !m.healthy || m.banned) continue;
    ++routable;
    replayed = std::max<uint64_t>(replayed, m.lsn);
  }
  routable_.store(routable);
  // A replica that stops being routable takes its position along: a read
  // waiting for it must not be woken by a position nobody can serve.
  replayed_.store(replayed);
  absl::ReaderMutexLock lock(&waiters_mu_);
  if (waiters_ != nullptr) waiters_->Advance(&replayed_);
}

bool Replicas::WorthWaiting(uint64_t lsn) const {
  return lsn != UINT64_MAX && routable_.load() > 0 && replayed_.load() < lsn;
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
    for (const db::MemberStatus& m : topology().Snapshot()) {
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
