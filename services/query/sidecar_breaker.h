#ifndef POOLSIDE_SERVICES_QUERY_SIDECAR_BREAKER_H_
#define POOLSIDE_SERVICES_QUERY_SIDECAR_BREAKER_H_

// The read cache's circuit breaker for its sidecar: after `failure_threshold`
// calls in a row failed (an error or a timeout), the sidecar is skipped for
// `retry_after`, and reads run on the database meanwhile (the sidecar being
// down, slow or restarted never fails a call). The first call after that
// tries it again; it takes another `failure_threshold` failures to skip it
// again.
//
//   if (!breaker.Usable()) return RunOnTheDatabase();
//   client->Get(key, [&](absl::StatusOr<CacheLookup> r) { breaker.Record(r.ok()); ... });
//
// Thread-safe.

#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"

namespace poolside::query {

class SidecarBreaker {
 public:
  struct Options {
    uint32_t failure_threshold = 3;  // 0 counts as 1
    absl::Duration retry_after = absl::Seconds(1);
    std::string target;  // named in the log line when it opens
  };

  // `clock` outlives this.
  explicit SidecarBreaker(Options options, const Clock* clock = Clock::Real());
  SidecarBreaker(const SidecarBreaker&) = delete;
  SidecarBreaker& operator=(const SidecarBreaker&) = delete;

  // Whether calls go to the sidecar now.
  bool Usable() const;
  // The outcome of a call to the sidecar.
  void Record(bool ok);

 private:
  const Options options_;
  const Clock* const clock_;
  mutable absl::Mutex mu_;
  uint32_t consecutive_failures_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time skip_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_SIDECAR_BREAKER_H_
