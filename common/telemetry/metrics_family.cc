#include "common/telemetry/metrics_family.h"

#include <algorithm>
#include <limits>

namespace poolside::telemetry {
namespace {

prometheus::MetricFamily Family(std::string name, std::string help, prometheus::MetricType type) {
  prometheus::MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  return f;
}

prometheus::ClientMetric& NewSample(prometheus::MetricFamily* family, const MetricLabels& labels) {
  prometheus::ClientMetric& m = family->metric.emplace_back();
  m.label.reserve(labels.size());
  for (const auto& [name, value] : labels) m.label.push_back({name, value});
  return m;
}

}  // namespace

std::vector<double> RequestLatencyBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
          0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30,    60};
}

prometheus::MetricFamily CounterFamily(std::string name, std::string help) {
  return Family(std::move(name), std::move(help), prometheus::MetricType::Counter);
}
prometheus::MetricFamily GaugeFamily(std::string name, std::string help) {
  return Family(std::move(name), std::move(help), prometheus::MetricType::Gauge);
}
prometheus::MetricFamily HistogramFamily(std::string name, std::string help) {
  return Family(std::move(name), std::move(help), prometheus::MetricType::Histogram);
}

void AddCounter(prometheus::MetricFamily* family, const MetricLabels& labels, double value) {
  NewSample(family, labels).counter.value = value;
}

void AddGauge(prometheus::MetricFamily* family, const MetricLabels& labels, double value) {
  NewSample(family, labels).gauge.value = value;
}

void AppendCounter(std::vector<prometheus::MetricFamily>* out, std::string name, std::string help,
                   double value) {
  out->push_back(CounterFamily(std::move(name), std::move(help)));
  AddCounter(&out->back(), {}, value);
}

void AppendGauge(std::vector<prometheus::MetricFamily>* out, std::string name, std::string help,
                 double value) {
  out->push_back(GaugeFamily(std::move(name), std::move(help)));
  AddGauge(&out->back(), {}, value);
}

void AddHistogram(prometheus::MetricFamily* family, const MetricLabels& labels,
                  const Histogram::Snapshot& snapshot) {
  prometheus::ClientMetric::Histogram& h = NewSample(family, labels).histogram;
  h.sample_count = snapshot.count;
  h.sample_sum = snapshot.sum;
  h.bucket.reserve(snapshot.bounds.size() + 1);
  for (size_t i = 0; i < snapshot.bounds.size(); ++i) {
    const uint64_t c = i < snapshot.cumulative_counts.size() ? snapshot.cumulative_counts[i] : 0;
    h.bucket.push_back({c, snapshot.bounds[i]});
  }
  h.bucket.push_back({snapshot.count, std::numeric_limits<double>::infinity()});
}

bool MergeSnapshot(const Histogram::Snapshot& from, Histogram::Snapshot* into) {
  if (into->bounds.empty() && into->count == 0) {
    *into = from;
    return true;
  }
  if (from.bounds != into->bounds ||
      from.cumulative_counts.size() != into->cumulative_counts.size()) {
    return false;
  }
  for (size_t i = 0; i < from.cumulative_counts.size(); ++i) {
    into->cumulative_counts[i] += from.cumulative_counts[i];
  }
  into->count += from.count;
  into->sum += from.sum;
  into->max = std::max(into->max, from.max);
  return true;
}

}  // namespace poolside::telemetry
