#include "common/telemetry/histogram.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace poolside::telemetry {
namespace {

constexpr double kFirstBound = 50e-6;
constexpr double kLastBound = 60.0;
constexpr int kDefaultBuckets = 30;

double RoundToSignificant(double v, int digits) {
  const double scale = std::pow(10.0, digits - 1 - std::floor(std::log10(v)));
  return std::round(v * scale) / scale;
}

std::vector<double> Normalize(std::vector<double> bounds) {
  bounds.erase(std::remove_if(bounds.begin(), bounds.end(), [](double b) { return std::isnan(b); }),
               bounds.end());
  std::sort(bounds.begin(), bounds.end());
  bounds.erase(std::unique(bounds.begin(), bounds.end()), bounds.end());
  return bounds;
}

}  // namespace

std::vector<double> Histogram::DefaultLatencyBounds() {
  std::vector<double> bounds;
  bounds.reserve(kDefaultBuckets);
  const double ratio = std::pow(kLastBound / kFirstBound, 1.0 / (kDefaultBuckets - 1));
  for (int i = 0; i < kDefaultBuckets; ++i) {
    bounds.push_back(RoundToSignificant(kFirstBound * std::pow(ratio, i), 3));
  }
  return bounds;
}

Histogram::Histogram(std::vector<double> bounds_seconds)
    : bounds_(Normalize(std::move(bounds_seconds))), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double seconds) {
  if (std::isnan(seconds)) return;
  if (seconds < 0) seconds = 0;
  // First bound >= value: a value equal to a bound belongs to that bucket.
  const size_t bucket = std::lower_bound(bounds_.begin(), bounds_.end(), seconds) - bounds_.begin();
  sync::MutexLock lock(&mu_);
  ++counts_[bucket];
  ++count_;
  sum_ += seconds;
  max_ = std::max(max_, seconds);
}

void Histogram::Observe(absl::Duration d) { Observe(absl::ToDoubleSeconds(d)); }

Histogram::Snapshot Histogram::Take() const {
  Snapshot s;
  s.bounds = bounds_;
  s.cumulative_counts.resize(bounds_.size() + 1);
  sync::MutexLock lock(&mu_);
  uint64_t running = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    running += counts_[i];
    s.cumulative_counts[i] = running;
  }
  s.count = count_;
  s.sum = sum_;
  s.max = max_;
  return s;
}

double Histogram::Snapshot::Percentile(double q) const {
  if (count == 0 || cumulative_counts.empty()) return 0;
  q = std::clamp(q, 0.0, 1.0);
  const double rank = q * static_cast<double>(count);
  // The first non-empty bucket whose cumulative count reaches the rank.
  size_t i = 0;
  while (i + 1 < cumulative_counts.size() &&
         (cumulative_counts[i] == 0 || static_cast<double>(cumulative_counts[i]) < rank)) {
    ++i;
  }
  const uint64_t below = i == 0 ? 0 : cumulative_counts[i - 1];
  const uint64_t in_bucket = cumulative_counts[i] - below;
  const double lower = i == 0 ? 0.0 : std::min(bounds[i - 1], max);
  const double upper = i < bounds.size() ? std::min(bounds[i], max) : max;
  if (in_bucket == 0) return upper;
  const double fraction = std::clamp((rank - static_cast<double>(below)) / in_bucket, 0.0, 1.0);
  return std::min(lower + (upper - lower) * fraction, max);
}

}  // namespace poolside::telemetry
