#ifndef POOLSIDE_COMMON_POOL_POOL_H_
#define POOLSIDE_COMMON_POOL_POOL_H_

// Pool<T>: the one generic object pool of poolside; every database connection
// in the suite is leased from one.
//
// A pool owns up to `max_size` objects made by a user-supplied factory, and
// up to `max_overflow` more while every one of those is busy. Callers lease an
// object with Acquire() and give it back by destroying (or calling Release()
// on) the returned Lease:
//
//   PoolOptions options;
//   options.name = "orders";
//   options.max_size = 8;
//   Pool<Conn> pool(options,
//                   [] { return Conn::Open(dsn); },        // Factory
//                   [](Conn& c) { return c.Ping(); });      // Validator
//   pool.WarmUp(absl::Seconds(10)).IgnoreError();
//   pool.StartMaintenance(absl::Seconds(5));
//   absl::StatusOr<Pool<Conn>::Lease> lease =
//       pool.Acquire(absl::Now() + absl::Seconds(1), "trace-1234 GetOrder");
//   if (!lease.ok()) return lease.status();
//   (*lease)->Query(...);      // on a connection error: lease->MarkBroken();
//
// Behaviour:
//  - Waiters are served strictly first-come first-served: a returned object or
//    a freed slot is handed to the oldest waiter, so newcomers cannot overtake.
//  - Idle objects are handed out most-recently-used first, so surplus objects
//    age out through `idle_timeout`.
//  - Before an object is handed out it is recycled if older than
//    `max_lifetime`, and pre-pinged with the Validator if it was idle for at
//    least `validate_after_idle`; a failing object is destroyed (counted as
//    broken) and another one is taken or created within the same deadline.
//  - On return an object is destroyed if marked broken or older than
//    `max_lifetime`, otherwise it goes to the oldest waiter or back to idle.
//  - Overflow (SQLAlchemy's max_overflow): when nothing is idle and max_size
//    objects exist, Acquire() creates one more, up to max_size +
//    max_overflow. Objects are not told apart: whenever an object would become
//    idle while more than max_size exist, it is destroyed instead (counted as
//    closed), so overflow objects serve bursts and never sit idle. One
//    returned while someone waits goes to the waiter, as any other. A steady
//    load above max_size therefore pays a connect per use: raise max_size.
//  - Maintain() (run by StartMaintenance()'s thread, or by tests directly)
//    reaps idle objects, reports leaked leases once each and tops idle back up
//    to `min_idle`.
//
// Errors from Acquire(): DEADLINE_EXCEEDED when min(deadline, now +
// acquire_timeout) passes; the factory's own status when creating a new object
// fails (the slot is freed for the next waiter); CANCELLED while the pool is
// being destroyed.
//
// Invariants: at most `max_size + max_overflow` objects exist at any time,
// counting idle ones, leased ones and ones being created or destroyed; while
// any object is idle at most `max_size` exist; an object is held by at most
// one lease; a broken object is never handed out again.
//
// Threading: all methods of Pool and Lease are thread-safe. The Factory,
// Validator and Destroyer run on the calling thread WITHOUT the pool's lock
// held, so they may block (connect, ping, close) and may call Stats(); they
// must not call Acquire() on the same pool. Time is read from the injected
// Clock; with a SimulatedClock, waiting Acquire() calls notice clock changes
// within a few milliseconds of real time.
//
// Lifetime: every Lease must be returned before the Pool is destroyed (checked
// with assert() in debug builds, logged as an error otherwise). The destructor
// stops maintenance, fails current waiters with CANCELLED, waits for
// in-progress Acquire()/WarmUp()/Maintain() calls to finish and destroys the
// idle objects. A moved-from or default-constructed Lease is empty.

#include <algorithm>
#include <atomic>
#include <cassert>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/clock/clock.h"
#include "common/sync/mutex.h"
#include "common/telemetry/histogram.h"
#include "common/telemetry/log.h"

namespace poolside::pool {

struct PoolOptions {
  std::string name;  // for logs
  // Warm-up target and floor for idle reaping. Clamped to max_size.
  size_t min_idle = 1;
  // Objects kept (idle or leased). 0 is treated as 1.
  size_t max_size = 10;
  // Objects created beyond max_size while all are busy; destroyed when
  // returned unless a waiter takes them (never idle).
  size_t max_overflow = 0;
  // Acquire() waits until min(deadline, now + acquire_timeout).
  absl::Duration acquire_timeout = absl::Seconds(5);
  // Objects idle at least this long are pre-pinged before being handed out:
  // short, so that one the other end closed while it sat idle (a server
  // restart, an idle-connection killer) is replaced before a caller gets it.
  absl::Duration validate_after_idle = absl::Seconds(1);
  // Objects at least this old are recycled (on return, before hand-out, and
  // when idle during Maintain()).
  absl::Duration max_lifetime = absl::Minutes(30);
  // Idle objects above min_idle are closed after being idle this long.
  absl::Duration idle_timeout = absl::Minutes(10);
  // A lease held at least this long is logged once (LogWarning) and counted.
  absl::Duration leak_threshold = absl::Minutes(1);
};

struct PoolStats {
  size_t size = 0;  // idle + in_use + being created or destroyed
  size_t idle = 0;
  size_t in_use = 0;   // outstanding leases
  size_t waiters = 0;  // Acquire() calls queued for an object
  size_t min_idle = 0;
  size_t max_size = 0;
  size_t max_overflow = 0;
  // Objects alive above max_size (leased, or being created or destroyed:
  // never idle).
  size_t overflow_in_use = 0;
  uint64_t acquired = 0;          // successful Acquire() calls
  uint64_t timeouts = 0;          // Acquire() calls that returned DEADLINE_EXCEEDED
  uint64_t created = 0;           // successful factory calls
  uint64_t overflow_created = 0;  // ... of which above max_size
  uint64_t closed = 0;            // objects destroyed, for any reason
  uint64_t recycled = 0;          // ... of which past max_lifetime
  uint64_t broken = 0;            // ... of which marked broken or failing the pre-ping
  uint64_t leaks = 0;             // leases reported past leak_threshold
  uint64_t create_failures = 0;   // failed factory calls
  // Seconds from Acquire() to a successful lease (per the pool's Clock).
  telemetry::Histogram::Snapshot acquire_wait;
};

template <typename T>
class Pool {
 public:
  // May block (connects). Called without the pool lock held. Returning OK with
  // a null pointer is treated as an INTERNAL error. `abandon`: an Acquire()'s
  // flags; the factory gives up once one is raised (empty for WarmUp() and
  // Maintain()). Not the Acquire's deadline: an object made for one caller
  // serves the next ones too, and callers with short deadlines would
  // otherwise never let a slow connect finish.
  using Abandon = absl::Span<const std::atomic<bool>* const>;
  using Factory = std::function<absl::StatusOr<std::unique_ptr<T>>(Abandon abandon)>;
  // Pre-ping; false means broken. May be null (objects are never pre-pinged).
  using Validator = std::function<bool(T&)>;
  // Closes an object; may be null (the object is just deleted). Called without
  // the lock held.
  using Destroyer = std::function<void(std::unique_ptr<T>)>;

  // Move-only RAII handle on one leased object. Returns the object to the pool
  // in its destructor or in Release(). A Lease is used by one thread at a time.
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& other) noexcept { *this = std::move(other); }
    Lease& operator=(Lease&& other) noexcept;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { Release(); }

    T* get() const { return object_.get(); }
    T& operator*() const { return *object_; }
    T* operator->() const { return object_.get(); }
    explicit operator bool() const { return object_ != nullptr; }

    // On return the object is destroyed, never handed out again, and counted
    // as broken.
    void MarkBroken() { broken_ = true; }
    // Returns the object now; the lease becomes empty. No-op if empty.
    void Release();
    // Who holds the lease (e.g. trace id and method); shown in leak logs.
    void SetHolder(std::string holder);
    absl::Time acquired_at() const { return acquired_at_; }

   private:
    friend class Pool;
    Lease(Pool* pool, std::unique_ptr<T> object, uint64_t id, absl::Time created_at,
          absl::Time acquired_at)
        : pool_(pool),
          object_(std::move(object)),
          id_(id),
          created_at_(created_at),
          acquired_at_(acquired_at) {}

    Pool* pool_ = nullptr;
    std::unique_ptr<T> object_;
    uint64_t id_ = 0;
    absl::Time created_at_;
    absl::Time acquired_at_;
    bool broken_ = false;
  };

  Pool(PoolOptions options, Factory factory, Validator validator = nullptr,
       Destroyer destroyer = nullptr, Clock* clock = Clock::Real());
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  // See "Lifetime" above: outstanding leases must not outlive the pool.
  ~Pool();

  // Leases an object, waiting until min(deadline, now + acquire_timeout).
  // `holder` is shown in leak logs (see Lease::SetHolder).
  // An object it creates is given up when one of `abandon` is raised
  // (Factory).
  absl::StatusOr<Lease> Acquire(absl::Time deadline, std::string holder = "", Abandon abandon = {});

  // Creates objects until min_idle are idle (or the pool is full). Failed
  // creations are retried with exponential backoff (50ms, x2, capped at 2s)
  // until `retry_for` has passed, by the Clock or by the time spent backing
  // off, whichever says so first. Returns OK once min_idle objects are idle or
  // no more can be created because the pool is full, else the last factory
  // error (CANCELLED if the pool is being destroyed).
  absl::Status WarmUp(absl::Duration retry_for = absl::ZeroDuration());

  // Starts shutting down: waiters and later Acquire() calls get CANCELLED and
  // a WarmUp() in progress stops retrying. Leases out are still returned
  // normally (their objects are destroyed). Idempotent; the destructor calls it.
  void Close();

  // Housekeeping: closes idle objects past max_lifetime (recycled) and, above
  // min_idle, past idle_timeout; logs and counts leases past leak_threshold
  // once each; tops idle back up to min_idle (best effort: stops at the first
  // factory failure, no retries).
  void Maintain();
  // Runs Maintain() every `interval` (real time) on a background thread until
  // the pool is destroyed. Only the first call has an effect.
  void StartMaintenance(absl::Duration interval);

  PoolStats Stats() const;
  const PoolOptions& options() const { return options_; }

 private:
  struct Entry {
    std::unique_ptr<T> object;
    absl::Time created_at;
    absl::Time last_used;  // when it became idle
  };

  // What an acquirer obtains: an object (entry.object set), or else a slot
  // reserved in size_ to create one in.
  struct Grant {
    Entry entry;
  };

  struct Waiter {
    sync::CondVar cv;
    bool done = false;  // granted or cancelled; no longer in waiters_
    bool cancelled = false;
    Grant grant;
  };

  struct LeaseRecord {
    std::string holder;
    absl::Time acquired_at;
    bool leak_reported = false;
  };

  enum class DestroyReason { kIdle, kRecycled, kBroken, kShutdown, kOverflow };

  // Every occupied slot (size_) is released through one of these.
  void FreeSlotLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Hands a healthy object to the oldest waiter, or makes it idle; returns it
  // instead when it would be idle while more than max_size objects exist
  // (the caller destroys it with DestroyReason::kOverflow).
  [[nodiscard]] std::unique_ptr<T> PutBackLocked(Entry entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // max_size + max_overflow.
  size_t LimitLocked() const { return options_.max_size + options_.max_overflow; }
  // Takes an idle object or reserves a slot, else queues and waits.
  absl::Status ObtainLocked(absl::Time deadline, Grant* grant) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Lease MakeLeaseLocked(Entry entry, std::string holder, absl::Time started)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::unique_ptr<T>> CreateObject(Abandon abandon = {});
  // Destroys without the lock, then frees the slot and counts it.
  void DestroyAndFreeSlot(std::unique_ptr<T> object, DestroyReason reason) ABSL_LOCKS_EXCLUDED(mu_);
  void DestroyObject(std::unique_ptr<T> object) ABSL_LOCKS_EXCLUDED(mu_);
  void CountClosedLocked(DestroyReason reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Return(uint64_t id, std::unique_ptr<T> object, absl::Time created_at, bool broken)
      ABSL_LOCKS_EXCLUDED(mu_);
  void SetHolder(uint64_t id, std::string holder) ABSL_LOCKS_EXCLUDED(mu_);
  // Registers an in-progress public call; false if shutting down.
  bool BeginOpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EndOp() ABSL_LOCKS_EXCLUDED(mu_);

  const PoolOptions options_;
  const Factory factory_;
  const Validator validator_;
  const Destroyer destroyer_;
  Clock* const clock_;
  telemetry::Histogram acquire_wait_;

  // sync::Mutex: TSan must see this lock (common/sync/mutex.h).
  mutable sync::Mutex mu_;
  // active_ops_ reached 0, stopping, or a creation for idle (topping_up_) ended.
  sync::CondVar ops_done_cv_;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  size_t active_ops_ ABSL_GUARDED_BY(mu_) = 0;
  size_t size_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<Entry> idle_ ABSL_GUARDED_BY(mu_);       // back = most recently used
  std::deque<Waiter*> waiters_ ABSL_GUARDED_BY(mu_);  // front = oldest
  absl::flat_hash_map<uint64_t, LeaseRecord> leases_ ABSL_GUARDED_BY(mu_);
  uint64_t next_lease_id_ ABSL_GUARDED_BY(mu_) = 1;
  size_t topping_up_ ABSL_GUARDED_BY(mu_) = 0;  // creations for idle in flight
  // Only the uint64_t counters are kept here; Stats() fills in the rest.
  PoolStats counters_ ABSL_GUARDED_BY(mu_);

  std::thread maintenance_thread_;  // started once, under mu_
  bool maintenance_started_ ABSL_GUARDED_BY(mu_) = false;
};

// ---------------------------------------------------------------------------
// Implementation.

template <typename T>
typename Pool<T>::Lease& Pool<T>::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    Release();
    pool_ = std::exchange(other.pool_, nullptr);
    object_ = std::move(other.object_);
    id_ = std::exchange(other.id_, 0);
    created_at_ = other.created_at_;
    acquired_at_ = other.acquired_at_;
    broken_ = std::exchange(other.broken_, false);
  }
  return *this;
}

template <typename T>
void Pool<T>::Lease::Release() {
  if (pool_ == nullptr) return;
  Pool* pool = std::exchange(pool_, nullptr);
  pool->Return(id_, std::move(object_), created_at_, broken_);
  broken_ = false;
}

template <typename T>
void Pool<T>::Lease::SetHolder(std::string holder) {
  if (pool_ != nullptr) pool_->SetHolder(id_, std::move(holder));
}

namespace internal {

inline PoolOptions Sanitize(PoolOptions o) {
  if (o.max_size == 0) {
    telemetry::LogWarning("pool max_size 0 raised to 1", {{"pool", o.name}});
    o.max_size = 1;
  }
  if (o.min_idle > o.max_size) {
    telemetry::LogWarning("pool min_idle lowered to max_size",
                          {{"pool", o.name},
                           {"min_idle", absl::StrCat(o.min_idle)},
                           {"max_size", absl::StrCat(o.max_size)}});
    o.min_idle = o.max_size;
  }
  return o;
}

// A bounded std::chrono timeout: waiting callers re-check their deadline after
// it, and steady_clock::now() + an infinite duration would overflow.
inline std::chrono::nanoseconds WaitSlice(absl::Duration d) {
  return absl::ToChronoNanoseconds(std::clamp(d, absl::ZeroDuration(), absl::Minutes(1)));
}

}  // namespace internal

template <typename T>
Pool<T>::Pool(PoolOptions options, Factory factory, Validator validator, Destroyer destroyer,
              Clock* clock)
    : options_(internal::Sanitize(std::move(options))),
      factory_(std::move(factory)),
      validator_(std::move(validator)),
      destroyer_(std::move(destroyer)),
      clock_(clock != nullptr ? clock : Clock::Real()) {}

template <typename T>
void Pool<T>::Close() {
  sync::MutexLock lock(&mu_);
  shutting_down_ = true;
  for (Waiter* w : waiters_) {
    w->done = true;
    w->cancelled = true;
    w->cv.Signal();
  }
  waiters_.clear();
  ops_done_cv_.SignalAll();  // wakes the maintenance thread and WarmUp()
}

template <typename T>
Pool<T>::~Pool() {
  std::vector<Entry> idle;
  size_t outstanding = 0;
  Close();
  if (maintenance_thread_.joinable()) maintenance_thread_.join();
  {
    sync::MutexLock lock(&mu_);
    while (active_ops_ != 0) ops_done_cv_.Wait(&mu_);
    for (Entry& e : idle_) idle.push_back(std::move(e));
    idle_.clear();
    outstanding = leases_.size();
  }
  for (Entry& e : idle) {
    DestroyAndFreeSlot(std::move(e.object), DestroyReason::kShutdown);
  }
  if (outstanding != 0) {
    telemetry::LogError("pool destroyed with outstanding leases",
                        {{"pool", options_.name}, {"outstanding", absl::StrCat(outstanding)}});
  }
  assert(outstanding == 0 && "Pool destroyed while leases are outstanding");
}

template <typename T>
bool Pool<T>::BeginOpLocked() {
  if (shutting_down_) return false;
  ++active_ops_;
  return true;
}

template <typename T>
void Pool<T>::EndOp() {
  sync::MutexLock lock(&mu_);
  if (--active_ops_ == 0 && shutting_down_) ops_done_cv_.SignalAll();
}

template <typename T>
void Pool<T>::FreeSlotLocked() {
  --size_;
  if (!waiters_.empty() && size_ < LimitLocked() && !shutting_down_) {
    Waiter* w = waiters_.front();
    waiters_.pop_front();
    ++size_;  // w->grant.entry stays empty: create in this slot
    w->done = true;
    w->cv.Signal();
  }
}

template <typename T>
std::unique_ptr<T> Pool<T>::PutBackLocked(Entry entry) {
  if (!waiters_.empty()) {
    Waiter* w = waiters_.front();
    waiters_.pop_front();
    w->grant.entry = std::move(entry);
    w->done = true;
    w->cv.Signal();
    return nullptr;
  }
  if (size_ > options_.max_size) return std::move(entry.object);
  idle_.push_back(std::move(entry));
  return nullptr;
}

template <typename T>
void Pool<T>::CountClosedLocked(DestroyReason reason) {
  ++counters_.closed;
  if (reason == DestroyReason::kRecycled) ++counters_.recycled;
  if (reason == DestroyReason::kBroken) ++counters_.broken;
}

template <typename T>
void Pool<T>::DestroyObject(std::unique_ptr<T> object) {
  if (destroyer_) {
    destroyer_(std::move(object));
  } else {
    object.reset();
  }
}

template <typename T>
void Pool<T>::DestroyAndFreeSlot(std::unique_ptr<T> object, DestroyReason reason) {
  DestroyObject(std::move(object));
  sync::MutexLock lock(&mu_);
  CountClosedLocked(reason);
  FreeSlotLocked();
}

template <typename T>
absl::StatusOr<std::unique_ptr<T>> Pool<T>::CreateObject(Abandon abandon) {
  absl::StatusOr<std::unique_ptr<T>> made = factory_(abandon);
  if (made.ok() && *made == nullptr) {
    made = absl::InternalError(
        absl::StrCat("pool ", options_.name, ": factory returned a null object"));
  }
  if (!made.ok()) {
    telemetry::LogWarning("pool failed to create an object",
                          {{"pool", options_.name}, {"status", made.status().ToString()}});
  }
  return made;
}

template <typename T>
absl::Status Pool<T>::ObtainLocked(absl::Time deadline, Grant* grant) {
  if (waiters_.empty()) {
    if (!idle_.empty()) {
      grant->entry = std::move(idle_.back());
      idle_.pop_back();
      return absl::OkStatus();
    }
    if (size_ < LimitLocked()) {
      ++size_;
      return absl::OkStatus();
    }
  }
  Waiter w;
  waiters_.push_back(&w);
  const bool real_clock = clock_ == Clock::Real();
  while (!w.done) {
    const absl::Duration left = deadline - clock_->Now();
    if (left <= absl::ZeroDuration()) {
      waiters_.erase(std::find(waiters_.begin(), waiters_.end(), &w));
      ++counters_.timeouts;
      return absl::DeadlineExceededError(
          absl::StrCat("pool ", options_.name, ": no object available before the deadline"));
    }
    // Another clock may jump without notifying us: poll it.
    const absl::Duration wait = real_clock ? left : std::min(left, absl::Milliseconds(5));
    w.cv.WaitFor(&mu_, internal::WaitSlice(wait));
  }
  if (w.cancelled) {
    return absl::CancelledError(absl::StrCat("pool ", options_.name, " is shutting down"));
  }
  *grant = std::move(w.grant);
  return absl::OkStatus();
}

template <typename T>
typename Pool<T>::Lease Pool<T>::MakeLeaseLocked(Entry entry, std::string holder,
                                                 absl::Time started) {
  const absl::Time now = clock_->Now();
  const uint64_t id = next_lease_id_++;
  leases_[id] = LeaseRecord{std::move(holder), now, false};
  ++counters_.acquired;
  acquire_wait_.Observe(now - started);
  return Lease(this, std::move(entry.object), id, entry.created_at, now);
}

template <typename T>
absl::StatusOr<typename Pool<T>::Lease> Pool<T>::Acquire(absl::Time deadline, std::string holder,
                                                         Abandon abandon) {
  const absl::Time started = clock_->Now();
  deadline = std::min(deadline, started + options_.acquire_timeout);
  const absl::Status cancelled =
      absl::CancelledError(absl::StrCat("pool ", options_.name, " is shutting down"));

  Grant grant;
  {
    sync::MutexLock lock(&mu_);
    if (!BeginOpLocked()) return cancelled;
    absl::Status s = ObtainLocked(deadline, &grant);
    if (!s.ok()) {
      lock.Unlock();
      EndOp();
      return s;
    }
  }
  // From here on we own one slot: grant.entry's object, or one to create.
  while (true) {
    if (grant.entry.object != nullptr) {
      Entry entry = std::move(grant.entry);
      grant.entry = Entry{};
      const absl::Time now = clock_->Now();
      std::optional<DestroyReason> bad;
      if (now - entry.created_at >= options_.max_lifetime) {
        bad = DestroyReason::kRecycled;
      } else if (validator_ && now - entry.last_used >= options_.validate_after_idle &&
                 !validator_(*entry.object)) {
        bad = DestroyReason::kBroken;
      }
      if (!bad.has_value()) {
        sync::MutexLock lock(&mu_);
        if (!shutting_down_) {
          Lease lease = MakeLeaseLocked(std::move(entry), std::move(holder), started);
          lock.Unlock();
          EndOp();
          return lease;
        }
        bad = DestroyReason::kShutdown;
      }
      DestroyObject(std::move(entry.object));
      sync::MutexLock lock(&mu_);
      CountClosedLocked(*bad);
      if (shutting_down_) {
        FreeSlotLocked();
        lock.Unlock();
        EndOp();
        return cancelled;
      }
      if (clock_->Now() >= deadline) {
        FreeSlotLocked();
        ++counters_.timeouts;
        lock.Unlock();
        EndOp();
        return absl::DeadlineExceededError(absl::StrCat(
            "pool ", options_.name, ": no healthy object available before the deadline"));
      }
      // Try another idle object, else create one in the slot we still own.
      if (!idle_.empty()) {
        grant.entry = std::move(idle_.back());
        idle_.pop_back();
        FreeSlotLocked();
      }
      continue;
    }

    absl::StatusOr<std::unique_ptr<T>> made = CreateObject(abandon);
    sync::MutexLock lock(&mu_);
    if (!made.ok()) {
      ++counters_.create_failures;
      FreeSlotLocked();
      lock.Unlock();
      EndOp();
      return made.status();
    }
    ++counters_.created;
    if (size_ > options_.max_size) ++counters_.overflow_created;
    if (shutting_down_) {
      lock.Unlock();
      DestroyAndFreeSlot(std::move(*made), DestroyReason::kShutdown);
      EndOp();
      return cancelled;
    }
    const absl::Time now = clock_->Now();
    Lease lease = MakeLeaseLocked(Entry{std::move(*made), now, now}, std::move(holder), started);
    lock.Unlock();
    EndOp();
    return lease;
  }
}

template <typename T>
void Pool<T>::Return(uint64_t id, std::unique_ptr<T> object, absl::Time created_at, bool broken) {
  std::optional<DestroyReason> reason;
  {
    sync::MutexLock lock(&mu_);
    leases_.erase(id);
    const absl::Time now = clock_->Now();
    if (broken) {
      reason = DestroyReason::kBroken;
    } else if (now - created_at >= options_.max_lifetime) {
      reason = DestroyReason::kRecycled;
    } else if (shutting_down_) {
      reason = DestroyReason::kShutdown;
    } else {
      object = PutBackLocked(Entry{std::move(object), created_at, now});
      if (object == nullptr) return;
      reason = DestroyReason::kOverflow;
    }
  }
  DestroyAndFreeSlot(std::move(object), *reason);
}

template <typename T>
void Pool<T>::SetHolder(uint64_t id, std::string holder) {
  sync::MutexLock lock(&mu_);
  auto it = leases_.find(id);
  if (it != leases_.end()) it->second.holder = std::move(holder);
}

template <typename T>
absl::Status Pool<T>::WarmUp(absl::Duration retry_for) {
  const absl::Time started = clock_->Now();
  absl::Duration backoff = absl::Milliseconds(50);
  absl::Duration slept = absl::ZeroDuration();
  {
    sync::MutexLock lock(&mu_);
    if (!BeginOpLocked()) {
      return absl::CancelledError(absl::StrCat("pool ", options_.name, " is shutting down"));
    }
  }
  absl::Status result = absl::OkStatus();
  while (true) {
    {
      sync::MutexLock lock(&mu_);
      if (shutting_down_) {
        result = absl::CancelledError(absl::StrCat("pool ", options_.name, " is shutting down"));
        break;
      }
      if (idle_.size() >= options_.min_idle || size_ >= options_.max_size) {
        result = absl::OkStatus();
        break;
      }
      if (idle_.size() + topping_up_ >= options_.min_idle) {
        // Creations in flight (Maintain() topping up, another WarmUp()) will
        // make min_idle: wait for them rather than add a surplus object, and
        // look again (one may fail or go to a waiter instead of idle).
        ops_done_cv_.Wait(&mu_);
        continue;
      }
      ++size_;
      ++topping_up_;
    }
    absl::StatusOr<std::unique_ptr<T>> made = CreateObject();
    sync::MutexLock lock(&mu_);
    --topping_up_;
    ops_done_cv_.SignalAll();  // a WarmUp() may be waiting for this creation
    if (made.ok()) {
      ++counters_.created;
      const absl::Time now = clock_->Now();
      if (std::unique_ptr<T> surplus = PutBackLocked(Entry{std::move(*made), now, now})) {
        lock.Unlock();
        DestroyAndFreeSlot(std::move(surplus), DestroyReason::kOverflow);
      }
      continue;
    }
    ++counters_.create_failures;
    FreeSlotLocked();
    result = made.status();
    const absl::Duration elapsed = std::max(clock_->Now() - started, slept);
    if (elapsed + backoff > retry_for) break;
    // Sleeps in real time, but wakes early when the pool starts shutting down.
    const auto wake_at = std::chrono::steady_clock::now() + internal::WaitSlice(backoff);
    while (!shutting_down_ && ops_done_cv_.WaitUntil(&mu_, wake_at)) continue;
    slept += backoff;
    backoff = std::min(backoff * 2, absl::Seconds(2));
  }
  EndOp();
  if (result.ok()) {
    telemetry::LogDebug("pool warmed up", {{"pool", options_.name}});
  }
  return result;
}

template <typename T>
void Pool<T>::Maintain() {
  struct Leak {
    std::string holder;
    absl::Duration held;
    uint64_t id;
  };
  std::vector<std::pair<std::unique_ptr<T>, DestroyReason>> doomed;
  std::vector<Leak> leaks;
  size_t to_create = 0;
  {
    sync::MutexLock lock(&mu_);
    if (!BeginOpLocked()) return;
    const absl::Time now = clock_->Now();
    // Past max_lifetime: recycled regardless of min_idle.
    for (auto it = idle_.begin(); it != idle_.end();) {
      if (now - it->created_at >= options_.max_lifetime) {
        doomed.emplace_back(std::move(it->object), DestroyReason::kRecycled);
        it = idle_.erase(it);
      } else {
        ++it;
      }
    }
    // The front is the least recently used, so idle times decrease along idle_.
    while (idle_.size() > options_.min_idle &&
           now - idle_.front().last_used >= options_.idle_timeout) {
      doomed.emplace_back(std::move(idle_.front().object), DestroyReason::kIdle);
      idle_.pop_front();
    }
    for (auto& [id, record] : leases_) {
      if (!record.leak_reported && now - record.acquired_at >= options_.leak_threshold) {
        record.leak_reported = true;
        ++counters_.leaks;
        leaks.push_back(Leak{record.holder, now - record.acquired_at, id});
      }
    }
  }
  for (const Leak& leak : leaks) {
    telemetry::LogWarning("pool lease held past leak threshold",
                          {{"pool", options_.name},
                           {"holder", leak.holder},
                           {"held", absl::FormatDuration(leak.held)},
                           {"lease", absl::StrCat(leak.id)}});
  }
  for (auto& [object, reason] : doomed) {
    DestroyAndFreeSlot(std::move(object), reason);
  }

  {
    sync::MutexLock lock(&mu_);
    // Slots freed above went to waiters first; top up only what is left.
    const size_t have = idle_.size() + topping_up_;
    if (!shutting_down_ && waiters_.empty() && have < options_.min_idle &&
        size_ < options_.max_size) {
      to_create = std::min(options_.min_idle - have, options_.max_size - size_);
      size_ += to_create;
      topping_up_ += to_create;
    }
  }
  for (size_t i = 0; i < to_create; ++i) {
    absl::StatusOr<std::unique_ptr<T>> made = CreateObject();
    sync::MutexLock lock(&mu_);
    --topping_up_;
    ops_done_cv_.SignalAll();  // a WarmUp() may be waiting for this creation
    if (!made.ok()) {
      ++counters_.create_failures;
      // Give back this slot and every one not yet used.
      const size_t unused = to_create - i - 1;
      topping_up_ -= unused;
      for (size_t j = 0; j <= unused; ++j) FreeSlotLocked();
      break;
    }
    ++counters_.created;
    const absl::Time now = clock_->Now();
    if (shutting_down_) {
      // The destructor waits for us; it destroys what is idle afterwards.
      idle_.push_back(Entry{std::move(*made), now, now});
    } else if (std::unique_ptr<T> surplus = PutBackLocked(Entry{std::move(*made), now, now})) {
      lock.Unlock();
      DestroyAndFreeSlot(std::move(surplus), DestroyReason::kOverflow);
    }
  }
  EndOp();
}

template <typename T>
void Pool<T>::StartMaintenance(absl::Duration interval) {
  sync::MutexLock lock(&mu_);
  if (maintenance_started_ || shutting_down_) return;
  maintenance_started_ = true;
  const auto period =
      absl::ToChronoNanoseconds(std::clamp(interval, absl::Milliseconds(1), absl::Hours(24)));
  maintenance_thread_ = std::thread([this, period] {
    while (true) {
      {
        sync::MutexLock lock(&mu_);
        const auto wake_at = std::chrono::steady_clock::now() + period;
        while (!shutting_down_ && ops_done_cv_.WaitUntil(&mu_, wake_at)) continue;
        if (shutting_down_) return;
      }
      Maintain();
    }
  });
}

template <typename T>
PoolStats Pool<T>::Stats() const {
  PoolStats s;
  {
    sync::MutexLock lock(&mu_);
    s = counters_;
    s.size = size_;
    s.idle = idle_.size();
    s.in_use = leases_.size();
    s.waiters = waiters_.size();
    s.overflow_in_use = size_ > options_.max_size ? size_ - options_.max_size : 0;
  }
  s.min_idle = options_.min_idle;
  s.max_size = options_.max_size;
  s.max_overflow = options_.max_overflow;
  s.acquire_wait = acquire_wait_.Take();
  return s;
}

}  // namespace poolside::pool

#endif  // POOLSIDE_COMMON_POOL_POOL_H_
