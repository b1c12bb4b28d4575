#ifndef POOLSIDE_COMMON_TELEMETRY_METRICS_FAMILY_H_
#define POOLSIDE_COMMON_TELEMETRY_METRICS_FAMILY_H_

// Helpers that build prometheus-cpp MetricFamily values at scrape time from
// statistics kept elsewhere (see metrics.h), and the latency bucket layout the
// services share.
//
//   prometheus::MetricFamily f = CounterFamily("poolside_x_total", "Xs done.");
//   AddCounter(&f, {{"database", "app"}}, stats.x);
//
// Pure functions; thread-safe.

#include <string>
#include <utility>
#include <vector>

#include "common/telemetry/histogram.h"
#include "prometheus/metric_family.h"

namespace poolside::telemetry {

using MetricLabels = std::vector<std::pair<std::string, std::string>>;

// Bucket upper bounds (seconds) for gRPC call latencies:
// 100 µs .. 60 s in 1-2.5-5 steps.
std::vector<double> RequestLatencyBuckets();

// Empty families of each type.
prometheus::MetricFamily CounterFamily(std::string name, std::string help);
prometheus::MetricFamily GaugeFamily(std::string name, std::string help);
prometheus::MetricFamily HistogramFamily(std::string name, std::string help);

// Append a family holding one unlabelled sample to `out`.
void AppendCounter(std::vector<prometheus::MetricFamily>* out, std::string name, std::string help,
                   double value);
void AppendGauge(std::vector<prometheus::MetricFamily>* out, std::string name, std::string help,
                 double value);

// Append one sample to a family of the matching type.
void AddCounter(prometheus::MetricFamily* family, const MetricLabels& labels, double value);
void AddGauge(prometheus::MetricFamily* family, const MetricLabels& labels, double value);
// From a telemetry::Histogram snapshot (cumulative counts, last one +Inf).
void AddHistogram(prometheus::MetricFamily* family, const MetricLabels& labels,
                  const Histogram::Snapshot& snapshot);

// Adds `from` into `into` (an empty `into` takes from's bounds). Both must have
// the same bounds, as every Histogram with DefaultLatencyBounds() has; false
// (and `into` unchanged) otherwise.
bool MergeSnapshot(const Histogram::Snapshot& from, Histogram::Snapshot* into);

}  // namespace poolside::telemetry

#endif  // POOLSIDE_COMMON_TELEMETRY_METRICS_FAMILY_H_
