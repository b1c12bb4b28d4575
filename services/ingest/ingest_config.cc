#include "services/ingest/ingest_config.h"

#include <algorithm>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/config/database_config.h"
#include "common/config/json_config.h"
#include "common/config/sizing.h"
#include "common/config/tls_config.h"

namespace poolside::ingest {
namespace {

#define POOLSIDE_DEFAULT(msg, field, value) \
  if ((msg)->field() == 0) (msg)->set_##field(value)

}  // namespace

absl::StatusOr<v1::IngestServiceConfig> FinalizeIngestConfig(
    v1::IngestServiceConfig c, const config::ContainerLimits& detected, std::string* sizing_note) {
  auto* server = c.mutable_server();
  if (server->listen().empty()) server->set_listen("0.0.0.0:50053");
  POOLSIDE_DEFAULT(server, drain_timeout_ms, 10000u);
  if (absl::Status s = config::ValidateServerTlsConfig(server->tls()); !s.ok()) return s;

  auto* batch = c.mutable_batch();
  POOLSIDE_DEFAULT(batch, max_rows, 50000u);
  POOLSIDE_DEFAULT(batch, max_bytes, uint64_t{4} << 20);
  POOLSIDE_DEFAULT(batch, linger_ms, 10u);
  const config::ContainerLimits limits = config::EffectiveLimits(c.server(), detected);
  const bool sized_buffer = batch->buffer_bytes() == 0;
  const bool sized_copies = batch->copy_connections() == 0;
  if (sized_buffer) {
    config::MemoryRule rule;
    rule.fraction = 0.25;
    rule.min = std::max(uint64_t{16} << 20, 2 * batch->max_bytes());
    rule.max = uint64_t{1} << 30;
    rule.without_limit = uint64_t{64} << 20;
    batch->set_buffer_bytes(config::BytesFromMemory(limits, rule));
  }
  if (sized_copies) {
    config::ThreadRule rule;
    rule.per_core = 2;
    rule.min = 2;
    rule.max = 8;
    rule.without_limit = 4;
    batch->set_copy_connections(config::ThreadsFromCpu(limits, rule));
  }
  const bool sized_request = batch->max_request_bytes() == 0;
  POOLSIDE_DEFAULT(batch, max_request_bytes,
                   std::min(batch->buffer_bytes() / 4, uint64_t{32} << 20));
  if (sizing_note != nullptr) {
    *sizing_note =
        absl::StrCat("bufferBytes ", batch->buffer_bytes() >> 20, " MiB",
                     !sized_buffer         ? " (configured)"
                     : limits.memory_bytes ? " (a quarter of the memory limit)"
                                           : " (default: no memory limit)",
                     ", maxRequestBytes ", batch->max_request_bytes() >> 20, " MiB",
                     sized_request ? " (a quarter of the buffer, at most 32 MiB)" : " (configured)",
                     ", copyConnections ", batch->copy_connections(),
                     !sized_copies ? " (configured)"
                     : limits.cpus ? " (2 per core of the CPU limit)"
                                   : " (default: no CPU limit)",
                     "; limits: ", config::DescribeLimits(limits));
  }
  POOLSIDE_DEFAULT(batch, flush_timeout_ms, 60000u);
  POOLSIDE_DEFAULT(batch, key_retention_ms, uint64_t{86400000});
  POOLSIDE_DEFAULT(batch, retry_after_ms, 100u);
  if (batch->copy_connections() > 64) {
    return absl::InvalidArgumentError("batch.copyConnections above 64");
  }
  if (batch->max_request_bytes() > batch->buffer_bytes() / 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch.maxRequestBytes (", batch->max_request_bytes(),
                     ") exceeds half of batch.bufferBytes (", batch->buffer_bytes(), ")"));
  }
  if (batch->max_request_bytes() > (uint64_t{1} << 30)) {
    return absl::InvalidArgumentError("batch.maxRequestBytes above 1 GiB");
  }
  if (batch->max_bytes() > batch->buffer_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("batch.maxBytes (", batch->max_bytes(),
                                                   ") exceeds batch.bufferBytes (",
                                                   batch->buffer_bytes(), ")"));
  }

  absl::flat_hash_set<std::string> names;
  absl::Status databases = config::FinalizeDatabases(
      c.mutable_databases(), c.mutable_default_database(),
      [&](const std::string&, v1::DatabaseConfig* db) {
        auto* pool = db->mutable_pool();
        // One connection per parallel flush, plus one for catalog reads and
        // key cleanup.
        pool->set_max_size(batch->copy_connections() + 1);
        pool->set_max_overflow(0);  // ingest's connections are sized by copy_connections
        if (!pool->has_min_idle()) pool->set_min_idle(1);
        if (pool->min_idle() > pool->max_size()) pool->set_min_idle(pool->max_size());
        config::DefaultPoolTimings(pool, 120000);
        return absl::OkStatus();
      },
      &names);
  if (!databases.ok()) return databases;
  for (int i = 0; i < c.tables_size(); ++i) {
    const v1::IngestTables& t = c.tables(i);
    if (!names.contains(t.database())) {
      return absl::InvalidArgumentError(absl::StrCat("tables[", i, "]: database \"", t.database(),
                                                     "\" is not a configured database"));
    }
    for (const std::string& name : t.tables()) {
      if (name.empty() || name.size() > 200 || name.find('\0') != std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat("tables[", i, "]: invalid table name"));
      }
    }
  }
  return c;
}

absl::StatusOr<v1::IngestServiceConfig> LoadIngestConfig(const std::string& path,
                                                         const config::ContainerLimits& limits,
                                                         std::string* sizing_note) {
  v1::IngestServiceConfig c;
  absl::Status s = config::LoadJsonConfig(path, &c);
  if (!s.ok()) return s;
  absl::StatusOr<v1::IngestServiceConfig> done =
      FinalizeIngestConfig(std::move(c), limits, sizing_note);
  if (!done.ok()) {
    return absl::Status(done.status().code(), absl::StrCat(path, ": ", done.status().message()));
  }
  return done;
}

#undef POOLSIDE_DEFAULT

}  // namespace poolside::ingest
