#include "common/sync/bounded_executor.h"

#include <algorithm>
#include <system_error>
#include <utility>

namespace poolside::sync {

BoundedExecutor::BoundedExecutor(int max_threads, size_t max_queued)
    : max_threads_(std::max(1, max_threads)), max_queued_(max_queued) {}

BoundedExecutor::~BoundedExecutor() { Shutdown(); }

absl::Status BoundedExecutor::Submit(std::function<void()> task) {
  MutexLock lock(&mu_);
  if (stopping_) return absl::FailedPreconditionError("the executor is shutting down");
  if (pending_ >= static_cast<size_t>(max_threads_) + max_queued_) {
    return absl::ResourceExhaustedError("too much work queued; retry later");
  }
  queue_.push_back(std::move(task));
  ++pending_;
  // A thread counts as idle until it takes a task off the queue, so more
  // queued tasks than idle threads means none is free for this one.
  if (queue_.size() <= static_cast<size_t>(idle_)) {
    work_.Signal();
    return absl::OkStatus();
  }
  if (threads_.size() < static_cast<size_t>(max_threads_)) {
    try {
      threads_.emplace_back([this] { Loop(); });
      ++live_;
    } catch (const std::system_error&) {
      if (threads_.empty()) {
        queue_.pop_back();
        --pending_;
        return absl::ResourceExhaustedError("cannot start a thread; retry later");
      }
      // The threads there are run it after their current tasks.
    }
  }
  return absl::OkStatus();
}

void BoundedExecutor::Loop() {
  MutexLock lock(&mu_);
  while (true) {
    while (queue_.empty() && !stopping_) {
      ++idle_;
      work_.Wait(&mu_);
      --idle_;
    }
    if (queue_.empty()) break;  // stopping, and nothing is left to run
    std::function<void()> task = std::move(queue_.front());
    queue_.pop_front();
    lock.Unlock();
    task();
    task = nullptr;  // what it holds goes before the task counts as finished
    lock.Lock();
    --pending_;
  }
  --live_;
  finished_.SignalAll();
}

void BoundedExecutor::Shutdown() {
  std::vector<std::thread> threads;
  {
    MutexLock lock(&mu_);
    stopping_ = true;
    work_.SignalAll();
    threads.swap(threads_);
  }
  for (std::thread& t : threads) t.join();
  MutexLock lock(&mu_);
  while (live_ > 0) finished_.Wait(&mu_);
}

size_t BoundedExecutor::pending() const {
  MutexLock lock(&mu_);
  return pending_;
}

}  // namespace poolside::sync
