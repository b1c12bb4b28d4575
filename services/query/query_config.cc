#include "services/query/query_config.h"

#include <algorithm>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/config/database_config.h"
#include "common/config/json_config.h"
#include "common/config/tls_config.h"

namespace poolside::query {
namespace {

// Sets a scalar field that was left at 0 to its documented default.
#define POOLSIDE_DEFAULT(msg, field, value) \
  if ((msg)->field() == 0) (msg)->set_##field(value)

}  // namespace

absl::StatusOr<v1::QueryServiceConfig> FinalizeQueryConfig(v1::QueryServiceConfig c) {
  auto* server = c.mutable_server();
  if (server->listen().empty()) server->set_listen("0.0.0.0:50051");
  POOLSIDE_DEFAULT(server, drain_timeout_ms, 10000u);
  if (absl::Status s = config::ValidateServerTlsConfig(server->tls()); !s.ok()) return s;

  auto* limits = c.mutable_limits();
  POOLSIDE_DEFAULT(limits, max_rows, 100000);
  POOLSIDE_DEFAULT(limits, max_bytes, uint64_t{64} << 20);
  POOLSIDE_DEFAULT(limits, max_sql_bytes, 64u << 10);
  POOLSIDE_DEFAULT(limits, max_params, 10000u);
  POOLSIDE_DEFAULT(limits, max_statements, 1000u);
  POOLSIDE_DEFAULT(limits, max_timeout_ms, 300000u);
  POOLSIDE_DEFAULT(limits, default_timeout_ms, std::min(30000u, limits->max_timeout_ms()));
  POOLSIDE_DEFAULT(limits, stream_chunk_rows, 1000u);
  POOLSIDE_DEFAULT(limits, check_concurrency, 32u);
  POOLSIDE_DEFAULT(limits, max_request_bytes, 4u << 20);
  if (limits->default_timeout_ms() > limits->max_timeout_ms()) {
    return absl::InvalidArgumentError(
        absl::StrCat("limits.defaultTimeoutMs (", limits->default_timeout_ms(),
                     ") exceeds limits.maxTimeoutMs (", limits->max_timeout_ms(), ")"));
  }

  absl::flat_hash_set<std::string> names;
  absl::Status databases = config::FinalizeDatabases(
      c.mutable_databases(), c.mutable_default_database(),
      [](const std::string& where, v1::DatabaseConfig* db) {
        POOLSIDE_DEFAULT(db, statement_cache_size, 100u);
        auto* pool = db->mutable_pool();
        POOLSIDE_DEFAULT(pool, max_size, 10u);
        if (!pool->has_min_idle()) pool->set_min_idle(std::min(1u, pool->max_size()));
        config::DefaultPoolTimings(pool, 60000);
        POOLSIDE_DEFAULT(pool, max_pipeline_depth, 64u);
        POOLSIDE_DEFAULT(pool, max_queue, 10000u);
        if (pool->min_idle() > pool->max_size()) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": pool.minIdle (", pool->min_idle(), ") exceeds pool.maxSize (",
                           pool->max_size(), ")"));
        }
        if (pool->max_size() > 1000) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": pool.maxSize above 1000"));
        }
        if (pool->max_overflow() > 1000) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": pool.maxOverflow above 1000"));
        }
        return absl::OkStatus();
      },
      &names);
  if (!databases.ok()) return databases;
  if (c.has_cache()) {
    v1::QueryCacheConfig* cache = c.mutable_cache();
    if (cache->target().empty()) {
      return absl::InvalidArgumentError(
          "cache.target is required when cache is configured, e.g. "
          "\"unix:/run/poolside/cache.sock\" "
          "or \"127.0.0.1:50052\"");
    }
    if (absl::Status s =
            config::ValidateClientTlsConfig("cache.tls", cache->target(), cache->tls());
        !s.ok()) {
      return s;
    }
    POOLSIDE_DEFAULT(cache, call_timeout_ms, 50u);
    POOLSIDE_DEFAULT(cache, max_value_bytes, 1u << 20);
    POOLSIDE_DEFAULT(cache, failure_threshold, 3u);
    POOLSIDE_DEFAULT(cache, retry_after_ms, 1000u);
    POOLSIDE_DEFAULT(cache, keepalive_ms, 5000u);
    if (cache->keepalive_ms() < 1000 || cache->keepalive_ms() > 3600000) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cache.keepaliveMs: between 1000 and 3600000 (got ", cache->keepalive_ms(), ")"));
    }
    if (cache->channel().empty()) cache->set_channel("poolside_invalidate");
    v1::NearCacheConfig* near = cache->mutable_near();
    if (!near->has_capacity_bytes()) near->set_capacity_bytes(uint64_t{64} << 20);
    POOLSIDE_DEFAULT(near, max_ttl_ms, 10000u);
    POOLSIDE_DEFAULT(near, shards, 16u);
    if (near->shards() > 256) {
      return absl::InvalidArgumentError("cache.near.shards: at most 256");
    }
    if (near->capacity_bytes() != 0 && near->capacity_bytes() / near->shards() < (64u << 10)) {
      return absl::InvalidArgumentError(
          absl::StrCat("cache.near.capacityBytes: at least 64 KiB per shard (", near->shards(),
                       " shards), or 0 to turn the near cache off"));
    }
    if (cache->channel().size() > 63) {
      return absl::InvalidArgumentError(
          "cache.channel: at most 63 bytes (a PostgreSQL identifier)");
    }
    if (cache->invalidation().empty()) cache->set_invalidation("wal");
    if (cache->invalidation() != "wal" && cache->invalidation() != "trigger") {
      return absl::InvalidArgumentError(
          absl::StrCat("cache.invalidation: \"wal\" (logical decoding) or \"trigger\" (got \"",
                       cache->invalidation().substr(0, 32), "\")"));
    }
    if (cache->wal_unavailable().empty()) cache->set_wal_unavailable("fail");
    if (cache->wal_unavailable() != "fail" && cache->wal_unavailable() != "trigger" &&
        cache->wal_unavailable() != "bypass") {
      return absl::InvalidArgumentError(
          absl::StrCat("cache.walUnavailable: \"fail\", \"trigger\" or \"bypass\" (got \"",
                       cache->wal_unavailable().substr(0, 32), "\")"));
    }
    v1::WalInvalidationConfig* wal = cache->mutable_wal();
    if (wal->publication().empty()) wal->set_publication("poolside_cache");
    if (wal->publication().size() > 63) {
      return absl::InvalidArgumentError(
          "cache.wal.publication: at most 63 bytes (a PostgreSQL identifier)");
    }
    POOLSIDE_DEFAULT(wal, batch_ms, 2u);
    POOLSIDE_DEFAULT(wal, heartbeat_ms, 200u);
    POOLSIDE_DEFAULT(wal, max_lag_ms, 1000u);
    if (!wal->has_token_wait_ms()) wal->set_token_wait_ms(100);
    POOLSIDE_DEFAULT(wal, election_retry_ms, 1000u);
    POOLSIDE_DEFAULT(wal, max_rows_per_table, 256u);
    if (wal->batch_ms() > 1000 || wal->heartbeat_ms() > 60000 || wal->token_wait_ms() > 60000 ||
        wal->election_retry_ms() > 60000 || wal->max_lag_ms() > 3600000) {
      return absl::InvalidArgumentError(
          "cache.wal: batchMs at most 1000; heartbeatMs, tokenWaitMs and electionRetryMs at "
          "most 60000; maxLagMs at most 3600000");
    }
    if (wal->max_lag_ms() < 2 * wal->heartbeat_ms()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cache.wal.maxLagMs (", wal->max_lag_ms(), ") must be at least twice heartbeatMs (",
          wal->heartbeat_ms(), "): a replica would bypass the cache between heartbeats"));
    }
    absl::flat_hash_set<std::string> seen;
    for (int i = 0; i < cache->tables_size(); ++i) {
      const v1::CachedTables& t = cache->tables(i);
      const std::string where = absl::StrCat("cache.tables[", i, "]");
      if (!names.contains(t.database())) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": database \"", t.database(), "\" is not a configured database"));
      }
      if (!seen.insert(t.database()).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": database \"", t.database(), "\" is listed twice"));
      }
      if (t.tables().empty()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": tables is empty"));
      }
      for (const std::string& table : t.tables()) {
        if (table.empty() || table.size() > 127 ||
            table.find_first_of("\"';\\ \t\n") != std::string::npos) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": \"", table.substr(0, 64),
                           "\" is not a table name (use name or schema.name, unquoted)"));
        }
      }
    }
  }
  return c;
}

absl::StatusOr<v1::QueryServiceConfig> LoadQueryConfig(const std::string& path) {
  v1::QueryServiceConfig c;
  absl::Status s = config::LoadJsonConfig(path, &c);
  if (!s.ok()) return s;
  absl::StatusOr<v1::QueryServiceConfig> done = FinalizeQueryConfig(std::move(c));
  if (!done.ok()) {
    return absl::Status(done.status().code(), absl::StrCat(path, ": ", done.status().message()));
  }
  return done;
}

#undef POOLSIDE_DEFAULT

}  // namespace poolside::query
