#include "services/ingest/ingest_metrics.h"

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/telemetry/metrics_family.h"
#include "common/telemetry/metrics_pool.h"
#include "common/telemetry/status_page.h"

namespace poolside::ingest {
namespace {

using telemetry::AddCounter;
using telemetry::AppendCounter;
using telemetry::AppendGauge;
using telemetry::CounterFamily;

void Collect(const v1::GetIngestStatsResponse& s, std::vector<prometheus::MetricFamily>* out) {
  AppendCounter(out, "poolside_ingest_rows_total", "Rows committed.", s.rows_written());
  AppendCounter(out, "poolside_ingest_bytes_total", "COPY data committed.", s.bytes_written());
  AppendCounter(out, "poolside_ingest_rows_rejected_total",
                "Rows rejected (returned with a reason).", s.rows_rejected());
  prometheus::MetricFamily batches =
      CounterFamily("poolside_ingest_batches_total", "Flush transactions by result.");
  AddCounter(&batches, {{"result", "committed"}}, double(s.batches_written()));
  AddCounter(&batches, {{"result", "failed"}}, double(s.batches_failed()));
  out->push_back(std::move(batches));
  prometheus::MetricFamily flushes =
      CounterFamily("poolside_ingest_flushes_total", "Flushes by what triggered them.");
  std::map<std::string, uint64_t> reasons(s.flushes_by_reason().begin(),
                                          s.flushes_by_reason().end());
  for (const char* r : {"rows", "bytes", "linger", "drain"}) reasons.emplace(r, 0);
  for (const auto& [reason, n] : reasons) AddCounter(&flushes, {{"reason", reason}}, double(n));
  out->push_back(std::move(flushes));
  AppendCounter(out, "poolside_ingest_copy_statements_total",
                "COPY statements run, including those isolating bad rows.", s.copy_statements());
  AppendCounter(out, "poolside_ingest_requests_total", "Write requests accepted.", s.requests());
  AppendCounter(out, "poolside_ingest_requests_failed_total",
                "Accepted requests answered with an error.", s.requests_failed());
  AppendCounter(out, "poolside_ingest_duplicate_requests_total",
                "Requests answered from their idempotency key.", s.duplicates());
  AppendCounter(out, "poolside_ingest_refused_total",
                "Unary writes refused with RESOURCE_EXHAUSTED (buffer full).", s.refused_full());
  AppendCounter(out, "poolside_ingest_stream_waits_total", "Times a stream waited for buffer room.",
                s.stream_waits());
  AppendGauge(out, "poolside_ingest_queued_requests", "Requests accepted and not yet answered.",
              s.queue_requests());
  AppendGauge(out, "poolside_ingest_queued_batches", "Batches waiting for a connection.",
              s.queue_batches());
  AppendGauge(out, "poolside_ingest_buffer_bytes", "Encoded row bytes held now.",
              s.buffered_bytes());
  AppendGauge(out, "poolside_ingest_buffer_bytes_max", "High-water mark of buffer_bytes.",
              s.buffered_bytes_max());
  AppendGauge(out, "poolside_ingest_buffer_limit_bytes", "The bound on buffer_bytes.",
              s.buffer_bytes_limit());
}

}  // namespace

double RateMeter::Sample(uint64_t total, absl::Time now) {
  absl::MutexLock lock(&mu_);
  while (!samples_.empty() && now - samples_.front().first > window_) samples_.pop_front();
  double rate;
  if (!samples_.empty() && now > samples_.front().first) {
    const auto& [then, before] = samples_.front();
    rate = double(total - std::min(total, before)) / absl::ToDoubleSeconds(now - then);
  } else {
    const double up = absl::ToDoubleSeconds(now - start_);
    rate = up > 0 ? double(total) / up : 0;
  }
  samples_.emplace_back(now, total);
  return rate;
}

IngestMetrics::IngestMetrics(const IngestEngine* engine, telemetry::MetricsRegistry* registry)
    : engine_(engine), rows_rate_(absl::Now(), absl::Minutes(1)) {
  collector_ = registry->AddCollector([this](std::vector<prometheus::MetricFamily>* out) {
    v1::GetIngestStatsResponse s;
    engine_->GetStats(&s);
    rows_rate_.Sample(s.rows_written(), absl::Now());
    Collect(s, out);
    telemetry::AppendPoolMetrics(engine_->GetPoolStats(), out);
  });
  ingest_ = registry->AddStatusSection([this] {
    v1::GetIngestStatsResponse s;
    engine_->GetStats(&s);
    const double rate = rows_rate_.Sample(s.rows_written(), absl::Now());
    telemetry::StatusTable t;
    t.title = "Ingest";
    t.columns = {"rows/s", "rows", "bytes", "batches", "rejected rows", "failed batches",
                 "requests", "duplicates", "queued", "buffer", "buffer limit"};
    t.rows.push_back({absl::StrFormat("%.0f", rate), telemetry::FormatCount(double(s.rows_written())),
                      telemetry::FormatBytes(double(s.bytes_written())),
                      telemetry::FormatCount(double(s.batches_written())),
                      telemetry::FormatCount(double(s.rows_rejected())),
                      telemetry::FormatCount(double(s.batches_failed())),
                      telemetry::FormatCount(double(s.requests())),
                      telemetry::FormatCount(double(s.duplicates())),
                      telemetry::FormatCount(double(s.queue_requests())),
                      telemetry::FormatBytes(double(s.buffered_bytes())),
                      telemetry::FormatBytes(double(s.buffer_bytes_limit()))});
    return t;
  });
  pools_ = registry->AddStatusSection([this] { return telemetry::PoolsTable(engine_->GetPoolStats()); });
}

}  // namespace poolside::ingest
