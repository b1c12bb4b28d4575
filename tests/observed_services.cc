#include "tests/observed_services.h"

#include <utility>

#include "gtest/gtest.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/postgres_cluster.h"

namespace poolside::testing {

void CreateObservedSchema(const std::string& database) {
  PostgresCluster& pg = SharedPostgres();
  ASSERT_TRUE(pg.CreateDatabase(database).ok());
  ASSERT_TRUE(pg.Exec(database,
                      "CREATE TABLE items (id int PRIMARY KEY, name text);"
                      "INSERT INTO items VALUES (1, 'one'), (2, 'two');"
                      "CREATE TABLE events (id bigint NOT NULL, note text)")
                  .ok());
}

CachedQuery StartCachedQuery(const std::string& database, const std::string& socket,
                             const std::function<void(v1::QueryServiceConfig*)>& tune) {
  CachedQuery out;
  v1::CacheServiceConfig cache_config;
  cache_config.set_unix_socket(socket);
  cache_config.set_capacity_bytes(16 << 20);
  std::tie(out.cache, out.cache_metrics_port) =
      StartWithMetrics("services/cache/cache_server", cache_config, "cache_server");
  EXPECT_NE(out.cache, nullptr);
  if (out.cache == nullptr) return out;

  v1::QueryServiceConfig config;
  v1::DatabaseConfig* db = config.add_databases();
  db->set_name(database);
  db->set_dsn(SharedPostgres().Dsn(database));
  db->mutable_pool()->set_max_size(2);
  config.mutable_cache()->set_target("unix:" + socket);
  config.mutable_cache()->set_call_timeout_ms(2000);
  v1::CachedTables* tables = config.mutable_cache()->add_tables();
  tables->set_database(database);
  tables->add_tables("items");
  config.mutable_auth()->set_disabled(true);
  tune(&config);
  std::tie(out.query, out.query_metrics_port) =
      StartWithMetrics("services/query/query_server", config, "query_server");
  EXPECT_NE(out.query, nullptr);
  return out;
}

}  // namespace poolside::testing
