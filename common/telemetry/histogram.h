#ifndef POOLSIDE_COMMON_TELEMETRY_HISTOGRAM_H_
#define POOLSIDE_COMMON_TELEMETRY_HISTOGRAM_H_

// A fixed-bucket latency histogram in seconds, in the shape Prometheus exports:
// each bucket counts observations <= its upper bound, and a final +Inf bucket
// catches the rest. `Take()` returns cumulative counts plus count, sum and max,
// and `Snapshot::Percentile()` estimates quantiles the way Prometheus'
// histogram_quantile() does (linear interpolation inside a bucket).
//
// Usage:
//   Histogram h;                       // DefaultLatencyBounds()
//   h.Observe(absl::Milliseconds(3));
//   double p99 = h.Take().Percentile(0.99);
//
// Thread-safe: Observe() and Take() may be called concurrently from any thread;
// Take() returns a consistent snapshot.

#include <cstdint>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "common/sync/mutex.h"

namespace poolside::telemetry {

class Histogram {
 public:
  // 30 exponentially spaced upper bounds from 50 µs to 60 s (ratio ~1.62),
  // rounded to three significant digits. Ascending.
  static std::vector<double> DefaultLatencyBounds();

  // `bounds_seconds` are bucket upper bounds; they are sorted and
  // de-duplicated.
  explicit Histogram(std::vector<double> bounds_seconds = DefaultLatencyBounds());

  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  // Records one observation. NaN is ignored; negative values count as 0.
  void Observe(double seconds);
  void Observe(absl::Duration d);

  struct Snapshot {
    std::vector<double> bounds;
    // bounds.size() + 1 entries; entry i counts observations <= bounds[i], the
    // last (+Inf) entry equals `count`.
    std::vector<uint64_t> cumulative_counts;
    uint64_t count = 0;
    double sum = 0;
    double max = 0;

    // Estimated q-quantile (q clamped to [0, 1]): finds the bucket holding
    // rank q * count and interpolates linearly between its lower and upper
    // bound (the +Inf bucket's upper bound is `max`). Never exceeds `max`;
    // 0 when empty.
    double Percentile(double q) const;
  };

  Snapshot Take() const;

 private:
  const std::vector<double> bounds_;
  // sync::Mutex: TSan must see this lock (common/sync/mutex.h).
  mutable sync::Mutex mu_;
  std::vector<uint64_t> counts_ ABSL_GUARDED_BY(mu_);  // per bucket, not cumulative
  uint64_t count_ ABSL_GUARDED_BY(mu_) = 0;
  double sum_ ABSL_GUARDED_BY(mu_) = 0;
  double max_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace poolside::telemetry

#endif  // POOLSIDE_COMMON_TELEMETRY_HISTOGRAM_H_
