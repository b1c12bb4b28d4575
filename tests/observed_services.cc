#include "tests/observed_services.h"

#include <unistd.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/values.h"
#include "tests/fixtures/wait_for.h"

namespace poolside::testing {

void CreateObservedSchema(const std::string& database) {
  ASSERT_TRUE(
      SharedPostgres()
          .CreateDatabase(database,
                          "CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, name text);"
                          "INSERT INTO items VALUES (1, 'one'), (2, 'two') "
                          "ON CONFLICT DO NOTHING;"
                          "CREATE TABLE IF NOT EXISTS events (id bigint NOT NULL, note text)")
          .ok());
}

v1::WriteRequest EventsWrite(const std::string& database, int64_t first_id, int count,
                             const std::string& note) {
  return IdRowsWrite(database, "events", first_id, count, "note", Text(note));
}

v1::ExecuteRequest ExecuteOn(const std::string& database, const std::string& sql,
                             int cache_ttl_ms) {
  v1::ExecuteRequest request;
  request.set_database(database);
  request.set_sql(sql);
  if (cache_ttl_ms != 0) request.mutable_cache()->set_ttl_ms(cache_ttl_ms);
  return request;
}

bool WaitForCachedReads(v1::QueryService::Stub& stub, const std::string& database) {
  const v1::ExecuteRequest probe = ExecuteOn(database, "SELECT name FROM items WHERE id = 2", 1);
  return WaitFor(
      [&] {
        v1::ExecuteResponse response;
        return CallExecute(stub, probe, &response).ok() && response.cache() != v1::BYPASS;
      },
      absl::Seconds(30));
}

CachedQuery StartCachedQuery(const std::string& database,
                             const std::function<void(v1::QueryServiceConfig*)>& tune) {
  const std::string socket = absl::StrCat("/tmp/poolside-", database, "-", getpid(), ".sock");
  CachedQuery out;
  v1::CacheServiceConfig cache_config;
  cache_config.set_unix_socket(socket);
  cache_config.set_capacity_bytes(16 << 20);
  std::tie(out.cache, out.cache_metrics_port) =
      StartWithMetrics("services/cache/cache_server", cache_config, "cache_server");
  EXPECT_NE(out.cache, nullptr);
  if (out.cache == nullptr) return out;

  v1::QueryServiceConfig config;
  v1::DatabaseConfig* db = AddDatabase(&config, database, SharedPostgres().Dsn(database));
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

std::pair<std::unique_ptr<ServiceProcess>, int> StartObservedIngest(const std::string& database) {
  v1::IngestServiceConfig config;
  AddDatabase(&config, database, SharedPostgres().Dsn(database));
  AddTables(&config, database, {"events"});
  config.mutable_batch()->set_linger_ms(5);
  config.mutable_auth()->set_disabled(true);
  auto started = StartWithMetrics("services/ingest/ingest_server", config, "ingest_server");
  EXPECT_NE(started.first, nullptr);
  return started;
}

}  // namespace poolside::testing
