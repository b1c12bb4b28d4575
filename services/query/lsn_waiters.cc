#include "services/query/lsn_waiters.h"

#include <pthread.h>

#include <utility>

namespace poolside::query {

LsnWaiters::LsnWaiters() {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "cache:lsnwait");
    Run();
  });
}

LsnWaiters::~LsnWaiters() {
  std::vector<std::shared_ptr<Waiter>> left;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    wake_.Signal();
    for (auto& [key, w] : by_deadline_) left.push_back(std::move(w));
    by_deadline_.clear();
    by_lsn_.clear();
  }
  thread_.join();
  for (auto& w : left) w->then(false);
}

void LsnWaiters::Wait(const std::atomic<uint64_t>* applied, uint64_t lsn, absl::Time deadline,
                      std::function<void(bool)> then) {
  auto w = std::make_shared<Waiter>();
  w->applied = applied;
  w->lsn = lsn;
  w->deadline = deadline;
  w->then = std::move(then);
  {
    absl::MutexLock lock(&mu_);
    // Registered first, then checked: an Advance() after the check finds it.
    if (!stopping_ && applied->load(std::memory_order_acquire) < lsn && absl::Now() < deadline) {
      w->id = next_id_++;
      by_lsn_.emplace(std::make_tuple(static_cast<const void*>(applied), lsn, w->id), w);
      const bool earliest = by_deadline_.empty() || deadline < by_deadline_.begin()->first.first;
      by_deadline_.emplace(std::make_pair(deadline, w->id), w);
      if (earliest) wake_.Signal();
      return;
    }
  }
  w->then(applied->load(std::memory_order_acquire) >= lsn);
}

void LsnWaiters::Advance(const std::atomic<uint64_t>* applied) {
  const uint64_t now_at = applied->load(std::memory_order_acquire);
  std::vector<std::shared_ptr<Waiter>> ready;
  {
    absl::MutexLock lock(&mu_);
    auto it = by_lsn_.lower_bound(std::make_tuple(static_cast<const void*>(applied), 0, 0));
    while (it != by_lsn_.end() && std::get<0>(it->first) == applied &&
           std::get<1>(it->first) <= now_at) {
      by_deadline_.erase(std::make_pair(it->second->deadline, it->second->id));
      ready.push_back(std::move(it->second));
      it = by_lsn_.erase(it);
    }
  }
  for (auto& w : ready) w->then(true);
}

size_t LsnWaiters::waiting() const {
  absl::MutexLock lock(&mu_);
  return by_deadline_.size();
}

void LsnWaiters::Run() {
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    const absl::Time now = absl::Now();
    std::vector<std::shared_ptr<Waiter>> expired;
    while (!by_deadline_.empty() && by_deadline_.begin()->first.first <= now) {
      std::shared_ptr<Waiter> w = std::move(by_deadline_.begin()->second);
      by_deadline_.erase(by_deadline_.begin());
      by_lsn_.erase(std::make_tuple(static_cast<const void*>(w->applied), w->lsn, w->id));
      expired.push_back(std::move(w));
    }
    if (!expired.empty()) {
      mu_.Unlock();
      for (auto& w : expired) w->then(false);
      mu_.Lock();
      continue;
    }
    // Signalled by a new earliest deadline and by the destructor.
    wake_.WaitWithDeadline(
        &mu_, by_deadline_.empty() ? absl::InfiniteFuture() : by_deadline_.begin()->first.first);
  }
}

}  // namespace poolside::query
