#ifndef POOLSIDE_COMMON_TELEMETRY_METRICS_H_
#define POOLSIDE_COMMON_TELEMETRY_METRICS_H_

// The metrics registry of one service process, on prometheus-cpp.
//
// Two kinds of series live here:
//  - first-hand ones kept by prometheus-cpp metrics (e.g. the gRPC interceptor's
//    call counters), created through registry();
//  - series read at scrape time from statistics the code keeps anyway (pool
//    stats, statement stats, cache store stats, ingest stats): a Collector
//    callback turns them into MetricFamily values on each scrape, so there is
//    no second copy of any counter.
// The same registry carries the status page's sections (status_page.h): each is
// a callback rendering a table at request time.
//
//   MetricsRegistry metrics("query");
//   MetricsRegistry::Registration r = metrics.AddCollector(
//       [&](std::vector<prometheus::MetricFamily>* out) {
//         prometheus::MetricFamily f = GaugeFamily("poolside_foo_bytes", "Foo.");
//         AddGauge(&f, {{"database", "app"}}, foo.bytes());
//         out->push_back(std::move(f));
//       });
//   std::string text = metrics.ScrapeText();   // Prometheus text format 0.0.4
//
// Names follow Prometheus conventions: "poolside_" prefix, base units
// (_seconds, _bytes), counters end in _total.
//
// Thread-safe. Callbacks run one scrape at a time, under the registry's lock;
// they must not call back into the registry. A Registration's destructor waits
// for a running scrape, so what a callback uses may be destroyed right after.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "common/sync/mutex.h"
#include "common/telemetry/metrics_family.h"
#include "common/telemetry/status_page.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"

namespace poolside::telemetry {

class MetricsRegistry {
 public:
  using Collector = std::function<void(std::vector<prometheus::MetricFamily>*)>;
  using StatusSection = std::function<StatusTable()>;

  // `service` names the process on the status page ("query", "cache", ...).
  // Process metrics (RSS, CPU, open fds, start time) are always included.
  explicit MetricsRegistry(std::string service);
  ~MetricsRegistry();
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // Removes its callback when destroyed (waiting for a scrape in progress).
  class Registration {
   public:
    Registration() = default;
    Registration(Registration&& other) noexcept { *this = std::move(other); }
    Registration& operator=(Registration&& other) noexcept;
    ~Registration() { Reset(); }
    void Reset();

   private:
    friend class MetricsRegistry;
    Registration(MetricsRegistry* registry, uint64_t id) : registry_(registry), id_(id) {}
    MetricsRegistry* registry_ = nullptr;
    uint64_t id_ = 0;
  };

  // For metrics kept by prometheus-cpp itself (counters, histograms).
  prometheus::Registry& registry() { return *registry_; }

  [[nodiscard]] Registration AddCollector(Collector collector);
  // Sections appear on the status page in the order they were added.
  [[nodiscard]] Registration AddStatusSection(StatusSection section);

  // Every family: prometheus-cpp's, then the collectors', sorted by name, with
  // families of the same name merged.
  std::vector<prometheus::MetricFamily> Collect() const;
  // Collect() in Prometheus' text exposition format.
  std::string ScrapeText() const;
  // The HTML status page.
  std::string StatusPageHtml() const;

  const std::string& service() const { return service_; }

 private:
  void Remove(uint64_t id);

  const std::string service_;
  const absl::Time started_;
  std::shared_ptr<prometheus::Registry> registry_;
  // sync::Mutex: TSan must see this lock (common/sync/mutex.h).
  mutable sync::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, Collector> collectors_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, StatusSection> sections_ ABSL_GUARDED_BY(mu_);
};

}  // namespace poolside::telemetry

#endif  // POOLSIDE_COMMON_TELEMETRY_METRICS_H_
