#ifndef POOLSIDE_SERVICES_QUERY_IN_FLIGHT_H_
#define POOLSIDE_SERVICES_QUERY_IN_FLIGHT_H_

// Counts asynchronous work that calls back into its owner (a database
// statement, a sidecar call, a wait for a WAL position), so that the owner's
// destructor can wait until none is left before its members go:
//
//   client->Get(key, [this, token = in_flight_.Begin()](...) mutable {
//     const InFlight::Token held = std::move(token);  // counted until this returns
//     ...
//   });
//   Owner::~Owner() { /* stop what starts work */ in_flight_.WaitIdle(); }
//
// A token counts from Begin() until it is destroyed; a move hands its count
// over, a copy counts once more (callbacks stored in std::function must be
// copyable). A callback that runs once moves its token into a local, as
// above, so that the count ends when the callback returns, not when whoever
// ran it lets go of it.
//
// Thread-safe, without locks: one atomic counter.

#include <atomic>
#include <utility>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace poolside::query {

class InFlight {
 public:
  class Token {
   public:
    Token() = default;
    Token(const Token& other) : count_(other.count_) {
      if (count_ != nullptr) count_->fetch_add(1);
    }
    Token(Token&& other) noexcept : count_(std::exchange(other.count_, nullptr)) {}
    Token& operator=(Token other) noexcept {
      std::swap(count_, other.count_);
      return *this;
    }
    ~Token() {
      if (count_ != nullptr) count_->fetch_sub(1);
    }
    // False for a default-constructed or moved-from token.
    explicit operator bool() const { return count_ != nullptr; }

   private:
    friend class InFlight;
    explicit Token(std::atomic<int>* count) : count_(count) { count_->fetch_add(1); }
    std::atomic<int>* count_ = nullptr;
  };

  InFlight() = default;
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;

  Token Begin() { return Token(&count_); }
  int count() const { return count_.load(); }
  // Returns once no token is left (polling: only destructors wait here).
  void WaitIdle() const {
    while (count_.load() > 0) absl::SleepFor(absl::Milliseconds(2));
  }

 private:
  std::atomic<int> count_{0};
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_IN_FLIGHT_H_
