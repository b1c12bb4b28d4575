#ifndef POOLSIDE_TESTS_OBSERVED_SERVICES_H_
#define POOLSIDE_TESTS_OBSERVED_SERVICES_H_

// What the tests of poolside's metrics and dashboards (metrics_test,
// prometheus_test) observe: query with its cache sidecar, as in production,
// each with its metrics endpoint, over a database of the shared PostgreSQL.

#include <functional>
#include <memory>
#include <string>

#include "proto/poolside/v1/config.pb.h"
#include "tests/fixtures/service_process.h"

namespace poolside::testing {

// Creates `database` with the tables these tests use: items (ids 1 and 2,
// named "one" and "two") and events (id, note). A failure fails the test.
void CreateObservedSchema(const std::string& database);

struct CachedQuery {
  std::unique_ptr<ServiceProcess> cache;
  int cache_metrics_port = 0;
  std::unique_ptr<ServiceProcess> query;
  int query_metrics_port = 0;
};

// A cache sidecar (16 MiB, also on the unix socket `socket`) and a query
// service over `database` that caches its table `items` through it (pool of
// 2, authentication off), both started by StartWithMetrics; `tune` changes
// the query configuration before it starts. A process that did not start is
// null (and fails the test).
CachedQuery StartCachedQuery(const std::string& database, const std::string& socket,
                             const std::function<void(v1::QueryServiceConfig*)>& tune);

}  // namespace poolside::testing

#endif  // POOLSIDE_TESTS_OBSERVED_SERVICES_H_
