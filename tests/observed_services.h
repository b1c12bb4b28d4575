#ifndef POOLSIDE_TESTS_OBSERVED_SERVICES_H_
#define POOLSIDE_TESTS_OBSERVED_SERVICES_H_

// What the tests of poolside's metrics, dashboards and traces (metrics_test,
// prometheus_test, tracing_test) observe: query with its cache sidecar, as in
// production, and ingest, each with its metrics endpoint, over a database of
// the shared PostgreSQL.

#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "grpcpp/support/status.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/ingest.pb.h"
#include "proto/poolside/v1/query.grpc.pb.h"
#include "tests/fixtures/service_process.h"

namespace poolside::testing {

// Creates `database` with the tables these tests use, unless they exist:
// items (ids 1 and 2, named "one" and "two") and events (id, note). A failure
// fails the test.
void CreateObservedSchema(const std::string& database);

// A write of `count` rows into the table events of `database`: ids from
// `first_id` up, each with the note `note`.
v1::WriteRequest EventsWrite(const std::string& database, int64_t first_id, int count,
                             const std::string& note);

// A request for `sql` on `database`, read through the cache (entries living
// `cache_ttl_ms`) unless that is 0.
v1::ExecuteRequest ExecuteOn(const std::string& database, const std::string& sql,
                             int cache_ttl_ms = 0);

// Waits (30 s at most) until a cached read of items in `database` through
// `stub` goes through the cache: until the query service's invalidation
// listener has subscribed, cached reads bypass it. The probe's entry lives
// 1 ms. False if it never did.
bool WaitForCachedReads(v1::QueryService::Stub& stub, const std::string& database);

// A suite of these tests, over the database `kDatabase`, whose schema it
// creates once: `using MetricsTest = ObservedServicesTest<kDb>;`.
template <const char* kDatabase>
class ObservedServicesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { CreateObservedSchema(kDatabase); }
};

struct CachedQuery {
  std::unique_ptr<ServiceProcess> cache;
  int cache_metrics_port = 0;
  std::unique_ptr<ServiceProcess> query;
  int query_metrics_port = 0;
};

// A cache sidecar (16 MiB, also on a unix socket of its own) and a query
// service over `database` that caches its table `items` through it (pool of
// 2, authentication off), both started by StartWithMetrics; `tune` changes
// the query configuration before it starts. A process that did not start is
// null (and fails the test).
CachedQuery StartCachedQuery(const std::string& database,
                             const std::function<void(v1::QueryServiceConfig*)>& tune);

// An ingest service that writes the table `events` of `database` (5 ms
// linger, authentication off), started by StartWithMetrics: the process (null
// if it did not start, which fails the test) and its metrics port.
std::pair<std::unique_ptr<ServiceProcess>, int> StartObservedIngest(const std::string& database);

}  // namespace poolside::testing

#endif  // POOLSIDE_TESTS_OBSERVED_SERVICES_H_
