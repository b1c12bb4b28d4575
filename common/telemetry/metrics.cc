#include "common/telemetry/metrics.h"

#include <algorithm>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/telemetry/process_metrics.h"
#include "prometheus/text_serializer.h"

namespace poolside::telemetry {

MetricsRegistry::MetricsRegistry(std::string service)
    : service_(std::move(service)),
      started_(absl::Now()),
      registry_(std::make_shared<prometheus::Registry>()) {}

MetricsRegistry::~MetricsRegistry() = default;

MetricsRegistry::Registration& MetricsRegistry::Registration::operator=(
    Registration&& other) noexcept {
  if (this != &other) {
    Reset();
    registry_ = std::exchange(other.registry_, nullptr);
    id_ = std::exchange(other.id_, 0);
  }
  return *this;
}

void MetricsRegistry::Registration::Reset() {
  if (registry_ != nullptr) registry_->Remove(id_);
  registry_ = nullptr;
  id_ = 0;
}

MetricsRegistry::Registration MetricsRegistry::AddCollector(Collector collector) {
  sync::MutexLock lock(&mu_);
  const uint64_t id = next_id_++;
  collectors_.emplace(id, std::move(collector));
  return Registration(this, id);
}

MetricsRegistry::Registration MetricsRegistry::AddStatusSection(StatusSection section) {
  sync::MutexLock lock(&mu_);
  const uint64_t id = next_id_++;
  sections_.emplace(id, std::move(section));
  return Registration(this, id);
}

void MetricsRegistry::Remove(uint64_t id) {
  sync::MutexLock lock(&mu_);
  collectors_.erase(id);
  sections_.erase(id);
}

std::vector<prometheus::MetricFamily> MetricsRegistry::Collect() const {
  std::vector<prometheus::MetricFamily> all = registry_->Collect();
  {
    sync::MutexLock lock(&mu_);
    for (const auto& [id, collector] : collectors_) collector(&all);
  }
  AppendProcessMetrics(&all);
  // One family per name: two sources may contribute samples (with different
  // labels) to the same series name.
  std::stable_sort(all.begin(), all.end(),
                   [](const auto& a, const auto& b) { return a.name < b.name; });
  std::vector<prometheus::MetricFamily> merged;
  for (prometheus::MetricFamily& f : all) {
    if (!merged.empty() && merged.back().name == f.name && merged.back().type == f.type) {
      for (auto& m : f.metric) merged.back().metric.push_back(std::move(m));
    } else {
      merged.push_back(std::move(f));
    }
  }
  return merged;
}

std::string MetricsRegistry::ScrapeText() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, Collect());
  return out.str();
}

std::string MetricsRegistry::StatusPageHtml() const {
  StatusHeader header;
  header.service = service_;
  header.facts.emplace_back("uptime", FormatSeconds(absl::ToDoubleSeconds(absl::Now() - started_)));
  if (absl::StatusOr<ProcessSample> p = ReadProcessSample(); p.ok()) {
    header.facts.emplace_back("memory (RSS)", FormatBytes(p->resident_bytes));
    header.facts.emplace_back("CPU", FormatSeconds(p->cpu_seconds));
    header.facts.emplace_back("threads", absl::StrCat(p->threads));
    header.facts.emplace_back("open fds", p->max_fds > 0
                                              ? absl::StrCat(p->open_fds, " / ", p->max_fds)
                                              : absl::StrCat(p->open_fds));
  }
  std::vector<StatusTable> tables;
  {
    sync::MutexLock lock(&mu_);
    for (const auto& [id, section] : sections_) tables.push_back(section());
  }
  return RenderStatusPage(header, tables);
}

}  // namespace poolside::telemetry
