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

void Collect(const v1::GetIngestStatsResponse& s, std::vector<prometheus::MetricFamily>* out) {
  telemetry::AppendCounter(out, "poolside_ingest_rows_total", "Rows committed.", s.rows_written());
  telemetry::AppendCounter(
      out, "poolside_ingest_binary_rows_total",
      "Rows committed in COPY's binary format (of poolside_ingest_rows_total).",
      s.rows_written_binary());
  telemetry::AppendCounter(out, "poolside_ingest_bytes_total", "COPY data committed.",
                           s.bytes_written());
  telemetry::AppendCounter(out, "poolside_ingest_rows_rejected_total",
                           "Rows rejected (returned with a reason).", s.rows_rejected());
  prometheus::MetricFamily batches =
      telemetry::CounterFamily("poolside_ingest_batches_total", "Flush transactions by result.");
  telemetry::AddCounter(&batches, {{"result", "committed"}}, double(s.batches_written()));
  telemetry::AddCounter(&batches, {{"result", "failed"}}, double(s.batches_failed()));
  out->push_back(std::move(batches));
  prometheus::MetricFamily flushes =
      telemetry::CounterFamily("poolside_ingest_flushes_total", "Flushes by what triggered them.");
  std::map<std::string, uint64_t> reasons(s.flushes_by_reason().begin(),
                                          s.flushes_by_reason().end());
  for (const char* r : {"rows", "bytes", "linger", "drain"}) reasons.emplace(r, 0);
  for (const auto& [reason, n] : reasons) {
    telemetry::AddCounter(&flushes, {{"reason", reason}}, double(n));
  }
  out->push_back(std::move(flushes));
  telemetry::AppendCounter(out, "poolside_ingest_batches_joined_total",
                           "Sealed batches written in the transaction of an earlier batch of "
                           "their table while COPY connections were busy.",
                           s.batches_joined());
  telemetry::AppendCounter(out, "poolside_ingest_copy_statements_total",
                           "COPY statements run, including those isolating bad rows.",
                           s.copy_statements());
  telemetry::AppendCounter(out, "poolside_ingest_requests_total", "Write requests accepted.",
                           s.requests());
  telemetry::AppendCounter(out, "poolside_ingest_requests_failed_total",
                           "Accepted requests answered with an error.", s.requests_failed());
  telemetry::AppendCounter(out, "poolside_ingest_duplicate_requests_total",
                           "Requests answered from their idempotency key.", s.duplicates());
  telemetry::AppendCounter(out, "poolside_ingest_refused_total",
                           "Unary writes refused with RESOURCE_EXHAUSTED (buffer full).",
                           s.refused_full());
  telemetry::AppendCounter(out, "poolside_ingest_stream_waits_total",
                           "Times a stream waited for buffer room.", s.stream_waits());
  telemetry::AppendGauge(out, "poolside_ingest_queued_requests",
                         "Requests accepted and not yet answered.", s.queue_requests());
  telemetry::AppendGauge(out, "poolside_ingest_queued_batches", "Batches waiting for a connection.",
                         s.queue_batches());
  telemetry::AppendGauge(out, "poolside_ingest_buffer_bytes", "Encoded row bytes held now.",
                         s.buffered_bytes());
  telemetry::AppendGauge(out, "poolside_ingest_buffer_bytes_max",
                         "High-water mark of buffer_bytes.", s.buffered_bytes_max());
  telemetry::AppendGauge(out, "poolside_ingest_buffer_limit_bytes", "The bound on buffer_bytes.",
                         s.buffer_bytes_limit());
}

// Each database with a topology: its members' roles, the member flushes
// commit on, and the batches held for a primary.
void CollectTopology(const std::vector<IngestEngine::TopologyStats>& topologies,
                     std::vector<prometheus::MetricFamily>* out) {
  if (topologies.empty()) return;
  prometheus::MetricFamily role =
      telemetry::GaugeFamily("poolside_ingest_member_role",
                             "1 for the member's current role (primary, replica, unknown).");
  prometheus::MetricFamily writing = telemetry::GaugeFamily(
      "poolside_ingest_writing_member", "1 for the member the last committed flush wrote to.");
  std::vector<std::pair<std::string, db::ManagedDatabase::HoldStats>> holds;
  for (const IngestEngine::TopologyStats& t : topologies) {
    for (const db::MemberStatus& m : t.members) {
      for (db::MemberRole r :
           {db::MemberRole::kPrimary, db::MemberRole::kReplica, db::MemberRole::kUnknown}) {
        telemetry::AddGauge(
            &role, {{"database", t.database}, {"member", m.id}, {"role", db::MemberRoleName(r)}},
            m.role == r ? 1 : 0);
      }
    }
    if (!t.writing_member.empty()) {
      telemetry::AddGauge(&writing, {{"database", t.database}, {"member", t.writing_member}}, 1);
    }
    holds.emplace_back(t.database, t.held);
  }
  out->push_back(std::move(role));
  out->push_back(std::move(writing));
  telemetry::AppendHoldMetrics("poolside_ingest", "batches", "Flushes and catalog reads", holds,
                               out);
}

telemetry::StatusTable MembersTable(const std::vector<IngestEngine::TopologyStats>& topologies) {
  telemetry::StatusTable t;
  t.title = "Database members";
  t.columns = {"database", "member", "role",          "healthy", "written to",
               "held now", "held",   "held timeouts", "held p99"};
  t.empty_text = "no database has a topology";
  for (const IngestEngine::TopologyStats& s : topologies) {
    for (const db::MemberStatus& m : s.members) {
      t.rows.push_back(
          {s.database, m.id, db::MemberRoleName(m.role), m.healthy ? "yes" : "no",
           m.id == s.writing_member ? "yes" : "", telemetry::FormatCount(double(s.held.now)),
           telemetry::FormatCount(double(s.held.total)),
           telemetry::FormatCount(double(s.held.timeouts)),
           s.held.durations.count > 0 ? telemetry::FormatSeconds(s.held.durations.Percentile(0.99))
                                      : "—"});
    }
  }
  return t;
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
    CollectTopology(engine_->GetTopologyStats(), out);
    telemetry::AppendPoolMetrics(engine_->GetPoolStats(), out);
  });
  ingest_ = registry->AddStatusSection([this] {
    v1::GetIngestStatsResponse s;
    engine_->GetStats(&s);
    const double rate = rows_rate_.Sample(s.rows_written(), absl::Now());
    telemetry::StatusTable t;
    t.title = "Ingest";
    t.columns = {"rows/s",   "rows",       "bytes",  "batches", "rejected rows", "failed batches",
                 "requests", "duplicates", "queued", "buffer",  "buffer limit"};
    t.rows.push_back({absl::StrFormat("%.0f", rate),
                      telemetry::FormatCount(double(s.rows_written())),
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
  pools_ =
      registry->AddStatusSection([this] { return telemetry::PoolsTable(engine_->GetPoolStats()); });
  if (!engine_->GetTopologyStats().empty()) {
    members_ =
        registry->AddStatusSection([this] { return MembersTable(engine_->GetTopologyStats()); });
  }
}

}  // namespace poolside::ingest
