// Traces across the real query_server, cache_server and ingest_server
// binaries on a real PostgreSQL, exported to an in-process OTLP receiver:
// a cache miss is one trace through query and cache with correct parent/child
// links; the client's traceparent is honoured; an ingest flush links to the
// requests it carried; and a collector that is down or slow costs no call
// while the dropped-span count rises.

#include <atomic>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/cache.grpc.pb.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/ingest.grpc.pb.h"
#include "proto/poolside/v1/query.grpc.pb.h"
#include "tests/fixtures/otlp_receiver.h"
#include "tests/fixtures/pg_session.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/service_process.h"
#include "tests/fixtures/subprocess.h"
#include "tests/observed_services.h"

namespace poolside::testing {
namespace {

using OtlpSpan = opentelemetry::proto::trace::v1::Span;

constexpr char kDb[] = "tracing";

void TraceTo(v1::ServerConfig* server, const std::string& endpoint) {
  v1::TracingConfig* t = server->mutable_telemetry()->mutable_tracing();
  t->set_endpoint(endpoint);
  t->set_batch_interval_ms(20);
}

// A fresh W3C trace id / span id, as a client of poolside would make.
std::string RandomHex(size_t bytes) {
  static std::atomic<uint64_t> counter{static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()))};
  std::string out;
  while (out.size() < 2 * bytes) {
    uint64_t v = counter.fetch_add(0x9e3779b97f4a7c15ULL) * 0xbf58476d1ce4e5b9ULL;
    out += absl::StrCat(absl::Hex(v, absl::kZeroPad16));
  }
  return out.substr(0, 2 * bytes);
}

struct ClientTrace {
  std::string trace_id = RandomHex(16);
  std::string span_id = RandomHex(8);
  std::string traceparent() const { return absl::StrCat("00-", trace_id, "-", span_id, "-01"); }
};

std::vector<ReceivedSpan> InTrace(const std::vector<ReceivedSpan>& all, const std::string& trace) {
  std::vector<ReceivedSpan> out;
  for (const ReceivedSpan& s : all) {
    if (Hex(s.span.trace_id()) == trace) out.push_back(s);
  }
  return out;
}

// The spans of `spans` named `name` from `service`.
std::vector<OtlpSpan> Named(const std::vector<ReceivedSpan>& spans, const std::string& service,
                            const std::string& name) {
  std::vector<OtlpSpan> out;
  for (const ReceivedSpan& s : spans) {
    if (s.service == service && s.span.name() == name) out.push_back(s.span);
  }
  return out;
}

std::string Describe(const std::vector<ReceivedSpan>& spans) {
  std::string out;
  for (const ReceivedSpan& s : spans) {
    absl::StrAppend(&out, "\n  ", s.service, " ", s.span.name(), " id=", Hex(s.span.span_id()),
                    " parent=", Hex(s.span.parent_span_id()));
  }
  return out;
}

class TracingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto receiver = OtlpReceiver::Start();
    ASSERT_TRUE(receiver.ok()) << receiver.status();
    receiver_ = receiver->release();
    testing::PostgresCluster& pg = SharedPostgres();
    CreateObservedSchema(kDb);
    if (::testing::Test::HasFatalFailure()) return;

    // The cache sidecar, on a unix socket.
    socket_ = absl::StrCat("/tmp/poolside-tracing-", getpid(), ".sock");
    auto c = StartSidecar(socket_, 16 << 20, [&](v1::CacheServiceConfig* cache) {
      TraceTo(cache->mutable_server(), receiver_->address());
    });
    ASSERT_TRUE(c.ok()) << c.status();
    cache_ = c->release();

    v1::QueryServiceConfig query = QueryConfig(receiver_->address());
    v1::QueryCacheConfig* qc = query.mutable_cache();
    qc->set_target(absl::StrCat("unix:", socket_));
    qc->set_call_timeout_ms(2000);
    AddTables(qc, kDb, {"items"});
    auto q = StartWithStub<v1::QueryService>("services/query/query_server", query);
    ASSERT_TRUE(q.ok()) << q.status();
    query_ = q->process.release();
    query_stub_ = q->stub.release();

    v1::IngestServiceConfig ingest;
    AddDatabase(&ingest, kDb, pg.Dsn(kDb));
    AddTables(&ingest, kDb, {"events"});
    ingest.mutable_batch()->set_linger_ms(200);
    ingest.mutable_auth()->set_disabled(true);
    TraceTo(ingest.mutable_server(), receiver_->address());
    auto i = StartWithStub<v1::IngestService>("services/ingest/ingest_server", ingest);
    ASSERT_TRUE(i.ok()) << i.status();
    ingest_ = i->process.release();
    ingest_stub_ = i->stub.release();
  }

  static void TearDownTestSuite() {
    delete query_stub_;
    delete ingest_stub_;
    delete query_;
    delete ingest_;
    delete cache_;
    delete receiver_;
  }

  static v1::QueryServiceConfig QueryConfig(const std::string& endpoint) {
    v1::QueryServiceConfig config;
    v1::DatabaseConfig* db = AddDatabase(&config, kDb, SharedPostgres().Dsn(kDb));
    db->mutable_pool()->set_max_size(2);
    config.mutable_auth()->set_disabled(true);
    TraceTo(config.mutable_server(), endpoint);
    return config;
  }

  static OtlpReceiver* receiver_;
  static std::string socket_;
  static ServiceProcess* cache_;
  static ServiceProcess* query_;
  static ServiceProcess* ingest_;
  static v1::QueryService::Stub* query_stub_;
  static v1::IngestService::Stub* ingest_stub_;
};

OtlpReceiver* TracingTest::receiver_ = nullptr;
std::string TracingTest::socket_;
ServiceProcess* TracingTest::cache_ = nullptr;
ServiceProcess* TracingTest::query_ = nullptr;
ServiceProcess* TracingTest::ingest_ = nullptr;
v1::QueryService::Stub* TracingTest::query_stub_ = nullptr;
v1::IngestService::Stub* TracingTest::ingest_stub_ = nullptr;

TEST_F(TracingTest, ACacheMissIsOneTraceThroughQueryAndCacheUnderTheClientsSpan) {
  // A text parameter that must never show up in a span.
  constexpr char kSecret[] = "param-value-not-for-traces";
  v1::ExecuteRequest read;
  read.set_database(kDb);
  read.set_sql("SELECT id, name FROM items WHERE name <> $1 ORDER BY id");
  read.add_params()->set_text_value(kSecret);
  read.mutable_cache()->set_ttl_ms(60000);
  // Until the invalidation listener has subscribed, reads bypass the cache;
  // each attempt is a trace of its own.
  ClientTrace client;
  v1::ExecuteResponse response;
  ASSERT_TRUE(WaitFor(
      [&] {
        client = ClientTrace();
        response.Clear();
        grpc::Status s = CallExecute(*query_stub_, read, &response, client.traceparent());
        return s.ok() && response.cache() == v1::MISS;
      },
      absl::Seconds(30)));
  ASSERT_EQ(response.result().rows_size(), 2);

  // The two services export independently: wait until every span is in.
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"poolside-query", "poolside.v1.QueryService/Execute"},
      {"poolside-query", "cache.lookup"},
      {"poolside-query", "poolside.v1.CacheService/Get"},
      {"poolside-cache", "poolside.v1.CacheService/Get"},
      {"poolside-query", "pool.acquire"},
      {"poolside-query", "SELECT items"},
      {"poolside-query", "cache.fill"},
      {"poolside-query", "poolside.v1.CacheService/Set"},
      {"poolside-cache", "poolside.v1.CacheService/Set"},
  };
  ASSERT_TRUE(receiver_->WaitFor(
      [&](const std::vector<ReceivedSpan>& all) {
        const std::vector<ReceivedSpan> mine = InTrace(all, client.trace_id);
        for (const auto& [service, name] : expected) {
          if (Named(mine, service, name).empty()) return false;
        }
        return true;
      },
      absl::Seconds(30)))
      << Describe(InTrace(receiver_->Spans(), client.trace_id));
  const std::vector<ReceivedSpan> spans = InTrace(receiver_->Spans(), client.trace_id);
  SCOPED_TRACE(Describe(spans));

  // query's server span: the client's span is its parent.
  auto server = Named(spans, "poolside-query", "poolside.v1.QueryService/Execute");
  ASSERT_EQ(server.size(), 1u);
  EXPECT_EQ(Hex(server[0].parent_span_id()), client.span_id);
  EXPECT_EQ(server[0].kind(), OtlpSpan::SPAN_KIND_SERVER);
  EXPECT_EQ(Attribute(server[0], "rpc.system"), "grpc");
  EXPECT_EQ(Attribute(server[0], "rpc.service"), "poolside.v1.QueryService");
  EXPECT_EQ(Attribute(server[0], "rpc.method"), "Execute");
  EXPECT_EQ(Attribute(server[0], "rpc.grpc.status_code"), "0");
  EXPECT_EQ(Attribute(server[0], "network.peer.address"), "127.0.0.1");
  EXPECT_EQ(Attribute(server[0], "network.transport"), "tcp");
  EXPECT_NE(Attribute(server[0], "network.peer.port"), "");
  EXPECT_EQ(Attribute(server[0], "error.type"), "");
  const std::string server_id = server[0].span_id();

  // cache.lookup under it, with the outcome; the sidecar Get below that, and
  // the sidecar's own server span below the client span.
  auto lookup = Named(spans, "poolside-query", "cache.lookup");
  ASSERT_EQ(lookup.size(), 1u);
  EXPECT_EQ(lookup[0].parent_span_id(), server_id);
  EXPECT_EQ(Attribute(lookup[0], "poolside.cache.outcome"), "miss");
  auto get_client = Named(spans, "poolside-query", "poolside.v1.CacheService/Get");
  ASSERT_EQ(get_client.size(), 1u);
  EXPECT_EQ(get_client[0].kind(), OtlpSpan::SPAN_KIND_CLIENT);
  EXPECT_EQ(get_client[0].parent_span_id(), lookup[0].span_id());
  EXPECT_EQ(Attribute(get_client[0], "rpc.method"), "Get");
  EXPECT_EQ(Attribute(get_client[0], "network.transport"), "unix");
  EXPECT_EQ(Attribute(get_client[0], "server.address"), socket_);
  auto get_server = Named(spans, "poolside-cache", "poolside.v1.CacheService/Get");
  ASSERT_EQ(get_server.size(), 1u);
  EXPECT_EQ(get_server[0].kind(), OtlpSpan::SPAN_KIND_SERVER);
  EXPECT_EQ(get_server[0].parent_span_id(), get_client[0].span_id());

  // The pool wait and the statement, children of the call.
  auto acquire = Named(spans, "poolside-query", "pool.acquire");
  ASSERT_FALSE(acquire.empty());
  for (const auto& a : acquire) {
    EXPECT_EQ(a.parent_span_id(), server_id);
    EXPECT_NE(Attribute(a, "poolside.pool.wait_seconds"), "");
  }
  auto select = Named(spans, "poolside-query", "SELECT items");
  ASSERT_EQ(select.size(), 1u);
  EXPECT_EQ(select[0].parent_span_id(), server_id);
  EXPECT_EQ(select[0].kind(), OtlpSpan::SPAN_KIND_CLIENT);
  // OpenTelemetry's stable database conventions.
  EXPECT_EQ(Attribute(select[0], "db.system.name"), "postgresql");
  EXPECT_EQ(Attribute(select[0], "db.namespace"), kDb);
  EXPECT_EQ(Attribute(select[0], "db.query.text"), read.sql());
  EXPECT_EQ(Attribute(select[0], "db.query.summary"), "SELECT items");
  EXPECT_EQ(Attribute(select[0], "db.operation.name"), "SELECT");
  EXPECT_EQ(Attribute(select[0], "db.collection.name"), "items");
  EXPECT_EQ(Attribute(select[0], "server.address"), "127.0.0.1");
  EXPECT_EQ(Attribute(select[0], "server.port"), absl::StrCat(SharedPostgres().port()));
  EXPECT_EQ(Attribute(select[0], "db.response.status_code"), "");

  // The fill and its sidecar call.
  auto fill = Named(spans, "poolside-query", "cache.fill");
  ASSERT_EQ(fill.size(), 1u);
  EXPECT_EQ(fill[0].parent_span_id(), server_id);
  auto set_client = Named(spans, "poolside-query", "poolside.v1.CacheService/Set");
  ASSERT_EQ(set_client.size(), 1u);
  EXPECT_EQ(set_client[0].parent_span_id(), fill[0].span_id());
  auto set_server = Named(spans, "poolside-cache", "poolside.v1.CacheService/Set");
  EXPECT_EQ(set_server[0].parent_span_id(), set_client[0].span_id());

  // Parameter values never leave the process; the attributes the
  // conventions replaced are gone from the RPC, pool and statement spans.
  for (const ReceivedSpan& s : spans) {
    for (const auto& kv : s.span.attributes()) {
      EXPECT_EQ(kv.value().string_value().find(kSecret), std::string::npos)
          << s.span.name() << " " << kv.key();
    }
    for (const char* old :
         {"db.statement", "db.name", "db.system", "net.peer.name", "net.peer.port"}) {
      EXPECT_EQ(Attribute(s.span, old), "") << s.span.name() << " " << old;
    }
  }

  // The resource says who produced the spans.
  bool saw_query_resource = false;
  for (const auto& attrs : receiver_->Resources()) {
    std::map<std::string, std::string> m(attrs.begin(), attrs.end());
    if (m["service.name"] != "poolside-query") continue;
    saw_query_resource = true;
    EXPECT_FALSE(m["service.version"].empty());
    EXPECT_FALSE(m["host.name"].empty());
  }
  EXPECT_TRUE(saw_query_resource);

  // The same read again is a hit: the lookup says so, and no statement runs.
  ClientTrace again;
  response.Clear();
  ASSERT_TRUE(CallExecute(*query_stub_, read, &response, again.traceparent()).ok());
  EXPECT_EQ(response.cache(), v1::HIT);
  ASSERT_TRUE(receiver_->WaitFor(
      [&](const std::vector<ReceivedSpan>& all) {
        return !Named(InTrace(all, again.trace_id), "poolside-query",
                      "poolside.v1.QueryService/Execute")
                    .empty();
      },
      absl::Seconds(30)));
  const auto hit = InTrace(receiver_->Spans(), again.trace_id);
  auto hit_lookup = Named(hit, "poolside-query", "cache.lookup");
  ASSERT_EQ(hit_lookup.size(), 1u);
  EXPECT_EQ(Attribute(hit_lookup[0], "poolside.cache.outcome"), "hit");
  EXPECT_TRUE(Named(hit, "poolside-query", "SELECT items").empty()) << Describe(hit);
}

TEST_F(TracingTest, ACallWithoutTraceparentStartsATraceAndAnUnsampledOneRecordsNothing) {
  v1::ExecuteRequest read;
  read.set_database(kDb);
  read.set_sql("SELECT count(*) FROM items WHERE id > $1");
  read.add_params()->set_int64_value(0);
  v1::ExecuteResponse response;
  ASSERT_TRUE(CallExecute(*query_stub_, read, &response).ok());
  ASSERT_TRUE(receiver_->WaitFor(
      [&](const std::vector<ReceivedSpan>& all) {
        for (const ReceivedSpan& s : all) {
          if (Attribute(s.span, "db.query.text") == read.sql()) return true;
        }
        return false;
      },
      absl::Seconds(30)));
  std::string trace;
  for (const ReceivedSpan& s : receiver_->Spans()) {
    if (Attribute(s.span, "db.query.text") == read.sql()) trace = Hex(s.span.trace_id());
  }
  auto server = Named(InTrace(receiver_->Spans(), trace), "poolside-query",
                      "poolside.v1.QueryService/Execute");
  ASSERT_EQ(server.size(), 1u);
  EXPECT_TRUE(server[0].parent_span_id().empty());  // a root span

  // The client's sampled flag 0: the services follow it and record nothing.
  ClientTrace quiet;
  ASSERT_TRUE(CallExecute(*query_stub_, read, &response,
                          absl::StrCat("00-", quiet.trace_id, "-", quiet.span_id, "-00"))
                  .ok());
  // A sampled call made after it: once its spans are in, the unsampled call's
  // would be too (one exporter, in order).
  ClientTrace marker;
  ASSERT_TRUE(CallExecute(*query_stub_, read, &response, marker.traceparent()).ok());
  ASSERT_TRUE(receiver_->WaitFor(
      [&](const std::vector<ReceivedSpan>& all) { return !InTrace(all, marker.trace_id).empty(); },
      absl::Seconds(30)));
  EXPECT_TRUE(InTrace(receiver_->Spans(), quiet.trace_id).empty());
}

TEST_F(TracingTest, AFailedStatementCarriesItsSqlstateAndNoLiteral) {
  constexpr char kLiteral[] = "literal-not-for-traces";
  v1::ExecuteRequest bad;
  bad.set_database(kDb);
  bad.set_sql(absl::StrCat("SELECT id / 0 FROM items WHERE name <> '", kLiteral, "'"));
  ClientTrace client;
  v1::ExecuteResponse response;
  EXPECT_EQ(CallExecute(*query_stub_, bad, &response, client.traceparent()).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_TRUE(receiver_->WaitFor(
      [&](const std::vector<ReceivedSpan>& all) {
        const auto mine = InTrace(all, client.trace_id);
        return !Named(mine, "poolside-query", "SELECT items").empty() &&
               !Named(mine, "poolside-query", "poolside.v1.QueryService/Execute").empty();
      },
      absl::Seconds(30)));
  const auto mine = InTrace(receiver_->Spans(), client.trace_id);
  SCOPED_TRACE(Describe(mine));
  auto select = Named(mine, "poolside-query", "SELECT items");
  ASSERT_EQ(select.size(), 1u);
  EXPECT_EQ(Attribute(select[0], "db.response.status_code"), "22012");  // division_by_zero
  EXPECT_EQ(Attribute(select[0], "error.type"), "22012");
  const std::string text = Attribute(select[0], "db.query.text");
  EXPECT_NE(text.find("FROM items"), std::string::npos) << text;
  EXPECT_NE(text.find("$1"), std::string::npos) << text;
  for (const ReceivedSpan& s : mine) {
    for (const auto& kv : s.span.attributes()) {
      EXPECT_EQ(kv.value().string_value().find(kLiteral), std::string::npos)
          << s.span.name() << " " << kv.key();
    }
  }
  auto server = Named(mine, "poolside-query", "poolside.v1.QueryService/Execute");
  ASSERT_EQ(server.size(), 1u);
  EXPECT_EQ(Attribute(server[0], "rpc.grpc.status_code"), "3");
  EXPECT_EQ(Attribute(server[0], "error.type"), "INVALID_ARGUMENT");
}

TEST_F(TracingTest, AnIngestFlushLinksToTheRequestsItCarried) {
  constexpr int kRequests = 3;
  std::vector<ClientTrace> clients(kRequests);
  std::vector<std::thread> threads;
  std::vector<grpc::Status> statuses(kRequests);
  for (int r = 0; r < kRequests; ++r) {
    threads.emplace_back([&, r] {
      const v1::WriteRequest w = EventsWrite(kDb, r * 100, 5, absl::StrCat("request ", r));
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
      ctx.AddMetadata("traceparent", clients[r].traceparent());
      v1::WriteResponse response;
      statuses[r] = ingest_stub_->Write(&ctx, w, &response);
    });
  }
  for (auto& t : threads) t.join();
  for (const grpc::Status& s : statuses) ASSERT_TRUE(s.ok()) << s.error_message();

  // Each request's server span (under its client's span)...
  std::map<std::string, std::string> request_span;  // trace id -> server span id
  ASSERT_TRUE(receiver_->WaitFor(
      [&](const std::vector<ReceivedSpan>& all) {
        for (const ClientTrace& c : clients) {
          if (Named(InTrace(all, c.trace_id), "poolside-ingest", "poolside.v1.IngestService/Write")
                  .empty()) {
            return false;
          }
        }
        return true;
      },
      absl::Seconds(30)));
  for (const ClientTrace& c : clients) {
    auto server = Named(InTrace(receiver_->Spans(), c.trace_id), "poolside-ingest",
                        "poolside.v1.IngestService/Write");
    ASSERT_EQ(server.size(), 1u);
    EXPECT_EQ(Hex(server[0].parent_span_id()), c.span_id);
    request_span[c.trace_id] = Hex(server[0].span_id());
  }
  // ... is linked from the flush that wrote its rows.
  auto linked = [&](const std::vector<ReceivedSpan>& all, const std::string& trace) {
    for (const ReceivedSpan& s : all) {
      if (s.span.name() != "ingest.flush") continue;
      for (const auto& l : s.span.links()) {
        if (Hex(l.trace_id()) == trace && Hex(l.span_id()) == request_span[trace]) return &s;
      }
    }
    return static_cast<const ReceivedSpan*>(nullptr);
  };
  ASSERT_TRUE(receiver_->WaitFor(
      [&](const std::vector<ReceivedSpan>& all) {
        for (const ClientTrace& c : clients) {
          if (linked(all, c.trace_id) == nullptr) return false;
        }
        return true;
      },
      absl::Seconds(30)));
  const std::vector<ReceivedSpan> all = receiver_->Spans();
  int64_t rows = 0;
  std::set<std::string> flushes;
  for (const ClientTrace& c : clients) {
    const ReceivedSpan* flush = linked(all, c.trace_id);
    ASSERT_NE(flush, nullptr);
    EXPECT_EQ(flush->service, "poolside-ingest");
    EXPECT_EQ(Attribute(flush->span, "poolside.ingest.requests"),
              absl::StrCat(flush->span.links_size()));
    EXPECT_NE(Attribute(flush->span, "poolside.ingest.reason"), "");
    EXPECT_NE(Attribute(flush->span, "poolside.ingest.bytes"), "");
    if (flushes.insert(flush->span.span_id()).second) {
      int64_t n = 0;
      ASSERT_TRUE(absl::SimpleAtoi(Attribute(flush->span, "poolside.ingest.rows"), &n));
      rows += n;
      // Its COPY is a child span in the flush's own trace.
      bool copy = false;
      for (const ReceivedSpan& s : all) {
        if (s.span.parent_span_id() == flush->span.span_id() &&
            absl::StartsWith(Attribute(s.span, "db.query.text"), "COPY ")) {
          copy = true;
          EXPECT_EQ(Attribute(s.span, "db.operation.name"), "COPY");
          EXPECT_EQ(Attribute(s.span, "db.query.summary"), s.span.name());
          EXPECT_EQ(Attribute(s.span, "db.collection.name"), "events");
          EXPECT_EQ(Attribute(s.span, "poolside.copy.rows"),
                    Attribute(flush->span, "poolside.ingest.rows"));
        }
      }
      EXPECT_TRUE(copy) << "no COPY span under the flush";
    }
  }
  EXPECT_EQ(rows, 5 * kRequests);
}

TEST_F(TracingTest, AnIdenticalConcurrentMissWaitsOnTheFirstOnesQuery) {
  // A session of the test's own holds an advisory lock the statement needs, so
  // the first caller's query waits until both callers have missed.
  PgSession holder(SharedPostgres().Dsn(kDb));
  ASSERT_TRUE(holder.ok());
  auto exec = [&](const char* sql) { return holder.Exec(sql).empty(); };
  v1::ExecuteRequest read;
  read.set_database(kDb);
  read.set_sql(
      "SELECT i.name FROM items i, (SELECT pg_advisory_xact_lock_shared(4242)) l WHERE i.id = $1");
  read.mutable_cache()->set_ttl_ms(60000);
  // The statement's tables are learned first (another key, lock free), so the
  // callers below only wait on the cache.
  read.add_params()->set_int64_value(-1);
  v1::ExecuteResponse learned;
  ASSERT_TRUE(CallExecute(*query_stub_, read, &learned).ok());
  // An existing row: the join evaluates the lock (the row with id -1 above
  // does not exist, so learning took no lock).
  read.mutable_params(0)->set_int64_value(1);
  ASSERT_TRUE(exec("SELECT pg_advisory_lock(4242)"));
  auto cache_channel = Connect(cache_->address());
  ASSERT_TRUE(cache_channel.ok()) << cache_channel.status();
  auto cache_stub = v1::CacheService::NewStub(*cache_channel);
  auto misses = [&]() -> uint64_t {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::CacheStats stats;
    return cache_stub->GetStats(&ctx, v1::CacheGetStatsRequest(), &stats).ok() ? stats.misses() : 0;
  };
  const uint64_t misses_before = misses();

  ClientTrace callers[2];
  grpc::Status statuses[2];
  v1::ExecuteResponse responses[2];
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      statuses[i] = CallExecute(*query_stub_, read, &responses[i], callers[i].traceparent());
    });
  }
  EXPECT_TRUE(WaitFor([&] { return misses() >= misses_before + 2; }, absl::Seconds(30)))
      << "both callers did not reach the cache";
  EXPECT_TRUE(exec("SELECT pg_advisory_unlock(4242)"));
  for (auto& t : threads) t.join();
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << statuses[i].error_message();
    EXPECT_EQ(responses[i].cache(), v1::MISS);
  }

  // One trace ran the statement; the other waited for it.
  auto spans_of = [&](int i) { return InTrace(receiver_->Spans(), callers[i].trace_id); };
  ASSERT_TRUE(receiver_->WaitFor(
      [&](const std::vector<ReceivedSpan>& all) {
        int statements = 0, waits = 0;
        for (const ClientTrace& c : callers) {
          const auto mine = InTrace(all, c.trace_id);
          if (Named(mine, "poolside-query", "poolside.v1.QueryService/Execute").empty())
            return false;
          statements += Named(mine, "poolside-query", "SELECT items").size();
          waits += Named(mine, "poolside-query", "cache.singleflight.wait").size();
        }
        return statements == 1 && waits == 1;
      },
      absl::Seconds(30)))
      << Describe(spans_of(0)) << Describe(spans_of(1)) << [&] {
           std::string out = "\nall waits:";
           for (const ReceivedSpan& s : receiver_->Spans()) {
             if (s.span.name() == "cache.singleflight.wait") {
               absl::StrAppend(&out, " trace=", Hex(s.span.trace_id()),
                               " parent=", Hex(s.span.parent_span_id()));
             }
           }
           return out;
         }();
  for (int i = 0; i < 2; ++i) {
    const auto mine = spans_of(i);
    auto server = Named(mine, "poolside-query", "poolside.v1.QueryService/Execute");
    ASSERT_EQ(server.size(), 1u);
    for (const auto& wait : Named(mine, "poolside-query", "cache.singleflight.wait")) {
      EXPECT_EQ(wait.parent_span_id(), server[0].span_id());
      EXPECT_TRUE(Named(mine, "poolside-query", "SELECT items").empty()) << Describe(mine);
    }
  }
}

TEST_F(TracingTest, TheCliContinuesTheCallersTraceAndExportsItsOwnSpan) {
  ClientTrace caller;
  auto run = RunCommand({"env", absl::StrCat("TRACEPARENT=", caller.traceparent()),
                         absl::StrCat("OTEL_EXPORTER_OTLP_ENDPOINT=http://", receiver_->address()),
                         RunfilePath("cli/poolside"), absl::StrCat("--addr=", query_->address()),
                         "query", "SELECT name FROM items WHERE id = $1", "2"});
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_EQ(run->exit_code, 0) << run->output;
  EXPECT_NE(run->output.find(absl::StrCat("trace_id: ", caller.trace_id)), std::string::npos)
      << run->output;
  // The CLI flushed its span before exiting; the query's may still be on its way.
  ASSERT_TRUE(receiver_->WaitFor(
      [&](const std::vector<ReceivedSpan>& all) {
        const auto mine = InTrace(all, caller.trace_id);
        return !Named(mine, "poolside-cli", "poolside query").empty() &&
               !Named(mine, "poolside-query", "poolside.v1.QueryService/Execute").empty();
      },
      absl::Seconds(30)))
      << Describe(InTrace(receiver_->Spans(), caller.trace_id));
  const auto spans = InTrace(receiver_->Spans(), caller.trace_id);
  SCOPED_TRACE(Describe(spans));
  auto cli = Named(spans, "poolside-cli", "poolside query");
  ASSERT_EQ(cli.size(), 1u);
  EXPECT_EQ(Hex(cli[0].parent_span_id()), caller.span_id);
  auto client = Named(spans, "poolside-cli", "poolside.v1.QueryService/Execute");
  ASSERT_EQ(client.size(), 1u);
  EXPECT_EQ(client[0].parent_span_id(), cli[0].span_id());
  auto server = Named(spans, "poolside-query", "poolside.v1.QueryService/Execute");
  ASSERT_EQ(server.size(), 1u);
  EXPECT_EQ(server[0].parent_span_id(), client[0].span_id());
}

// The value of "spans_dropped" in the service's latest "tracing stats" log
// line, or -1 if none was logged yet.
int64_t DroppedSpansLogged(const ServiceProcess& process) {
  std::ifstream in(process.log_path());
  std::string line;
  int64_t dropped = -1;
  while (std::getline(in, line)) {
    if (line.find("\"message\":\"tracing stats\"") == std::string::npos) continue;
    const std::string key = "\"spans_dropped\":\"";
    const size_t at = line.find(key);
    if (at == std::string::npos) continue;
    const size_t end = line.find('"', at + key.size());
    int64_t n = 0;
    if (absl::SimpleAtoi(line.substr(at + key.size(), end - at - key.size()), &n)) dropped = n;
  }
  return dropped;
}

class CollectorTroubleTest : public TracingTest {
 protected:
  // A query server (no cache) exporting to `endpoint` with a small queue.
  static std::unique_ptr<ServiceProcess> StartQuery(const std::string& endpoint) {
    v1::QueryServiceConfig config = QueryConfig(endpoint);
    v1::TracingConfig* t = config.mutable_server()->mutable_telemetry()->mutable_tracing();
    t->set_max_queue_size(8);
    t->set_max_batch_size(4);
    // A slow collector holds each export this long before it counts as failed.
    t->set_export_timeout_ms(300);
    t->set_stats_log_interval_ms(50);
    auto p = StartOnLoopback("services/query/query_server", config);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? *std::move(p) : nullptr;
  }

  static void CallsSucceedAndDropsAreCounted(ServiceProcess& query) {
    auto channel = Connect(query.address());
    ASSERT_TRUE(channel.ok()) << channel.status();
    auto stub = v1::QueryService::NewStub(*channel);
    v1::ExecuteRequest read;
    read.set_database(kDb);
    read.set_sql("SELECT name FROM items WHERE id = $1");
    read.add_params()->set_int64_value(1);
    // Each call makes 3+ spans; 8 fit in the queue.
    for (int i = 0; i < 40; ++i) {
      v1::ExecuteResponse response;
      grpc::Status s = CallExecute(*stub, read, &response, ClientTrace().traceparent());
      ASSERT_TRUE(s.ok()) << s.error_message();
      ASSERT_EQ(response.result().rows(0).values(0).text_value(), "one");
    }
    EXPECT_TRUE(WaitFor([&] { return DroppedSpansLogged(query) > 0; }, absl::Seconds(30)))
        << query.LogTail();
  }
};

TEST_F(CollectorTroubleTest, CollectorDownCallsSucceedAndSpansAreDroppedAndCounted) {
  std::string dead;
  {
    auto r = OtlpReceiver::Start();
    ASSERT_TRUE(r.ok()) << r.status();
    dead = (*r)->address();
  }  // nothing listens there any more
  std::unique_ptr<ServiceProcess> query = StartQuery(dead);
  ASSERT_NE(query, nullptr);
  CallsSucceedAndDropsAreCounted(*query);
}

TEST_F(CollectorTroubleTest, CollectorSlowCallsSucceedAndSpansAreDroppedAndCounted) {
  auto slow = OtlpReceiver::Start();
  ASSERT_TRUE(slow.ok()) << slow.status();
  (*slow)->Hold();  // accepts Export calls and never answers them
  std::unique_ptr<ServiceProcess> query = StartQuery((*slow)->address());
  ASSERT_NE(query, nullptr);
  CallsSucceedAndDropsAreCounted(*query);
  EXPECT_GE((*slow)->export_calls(), 1);
}

TEST_F(TracingTest, AStatementAnalyzedOnTheWorkerCarriesTheSameLabels) {
  // Longer than the queue thread parses and never seen: analyzed on the
  // database worker, where its span's labels are made too.
  const std::string literal = absl::StrCat("deferred-", RandomHex(8), std::string(5000, 'x'));
  ClientTrace client;
  v1::ExecuteResponse response;
  grpc::Status s = [&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
    ctx.AddMetadata("traceparent", client.traceparent());
    v1::ExecuteTransactionRequest tx;
    tx.set_database(kDb);
    tx.add_statements()->set_sql(
        absl::StrCat("SELECT count(*) FROM items WHERE name <> '", literal, "'"));
    v1::ExecuteTransactionResponse tx_response;
    return query_stub_->ExecuteTransaction(&ctx, tx, &tx_response);
  }();
  ASSERT_TRUE(s.ok()) << s.error_message();
  v1::ExecuteRequest single;
  single.set_database(kDb);
  single.set_sql(absl::StrCat("SELECT id FROM items WHERE name = '", literal, "-2'"));
  ASSERT_TRUE(CallExecute(*query_stub_, single, &response, client.traceparent()).ok());
  EXPECT_EQ(response.result().rows_size(), 0);
  ASSERT_TRUE(receiver_->WaitFor(
      [&](const std::vector<ReceivedSpan>& all) {
        return Named(InTrace(all, client.trace_id), "poolside-query", "SELECT items").size() == 2;
      },
      absl::Seconds(30)))
      << Describe(InTrace(receiver_->Spans(), client.trace_id));
  for (const OtlpSpan& span :
       Named(InTrace(receiver_->Spans(), client.trace_id), "poolside-query", "SELECT items")) {
    EXPECT_EQ(Attribute(span, "db.operation.name"), "SELECT");
    EXPECT_EQ(Attribute(span, "db.collection.name"), "items");
    const std::string text = Attribute(span, "db.query.text");
    EXPECT_NE(text.find("$1"), std::string::npos) << text;
    EXPECT_EQ(text.find("deferred-"), std::string::npos) << text.substr(0, 200);
  }
}

// A write made outside poolside reaches the replicas from the WAL (relayed by
// the decoder's holder) or, in trigger mode, by a trigger's NOTIFY: either way
// its invalidation is a trace of its own.
TEST_F(TracingTest, AnInvalidationOfAWriteFromOutsideIsATraceOfItsOwn) {
  // Reads use the cache once the invalidation listener has subscribed.
  v1::ExecuteRequest read;
  read.set_database(kDb);
  read.set_sql("SELECT name FROM items WHERE id = 2");
  read.mutable_cache()->set_ttl_ms(60000);
  ASSERT_TRUE(WaitFor(
      [&] {
        v1::ExecuteResponse response;
        grpc::Status s = CallExecute(*query_stub_, read, &response);
        return s.ok() && response.cache() != v1::BYPASS;
      },
      absl::Seconds(30)));
  auto notify_spans = [](const std::vector<ReceivedSpan>& all) {
    std::vector<ReceivedSpan> out;
    for (const ReceivedSpan& s : all) {
      const std::string source = Attribute(s.span, "poolside.cache.source");
      if (s.service == "poolside-query" && s.span.name() == "cache.invalidate" &&
          (source == "wal" || source == "notify")) {
        out.push_back(s);
      }
    }
    return out;
  };
  const size_t before = notify_spans(receiver_->Spans()).size();

  // A write poolside did not make (the data stays as it was).
  ASSERT_TRUE(SharedPostgres().Exec(kDb, "UPDATE items SET name = name WHERE id = 2").ok());
  ASSERT_TRUE(receiver_->WaitFor(
      [&](const std::vector<ReceivedSpan>& all) {
        const auto notified = notify_spans(all);
        if (notified.size() <= before) return false;
        const auto trace = InTrace(all, Hex(notified.back().span.trace_id()));
        return !Named(trace, "poolside-cache", "poolside.v1.CacheService/Invalidate").empty();
      },
      absl::Seconds(30)))
      << Describe(notify_spans(receiver_->Spans()));
  const ReceivedSpan notified = notify_spans(receiver_->Spans()).back();
  EXPECT_TRUE(notified.span.parent_span_id().empty());
  EXPECT_EQ(notified.span.links_size(), 0);
  EXPECT_EQ(Attribute(notified.span, "db.namespace"), kDb);
  EXPECT_EQ(Attribute(notified.span, "poolside.cache.outcome"), "invalidated");
  // Its trace holds it and the sidecar's call under it, nothing else.
  const auto trace = InTrace(receiver_->Spans(), Hex(notified.span.trace_id()));
  for (const ReceivedSpan& s : trace) {
    if (s.span.span_id() == notified.span.span_id()) continue;
    EXPECT_TRUE(absl::StrContains(s.span.name(), "Invalidate")) << Describe(trace);
  }
  auto server = Named(trace, "poolside-cache", "poolside.v1.CacheService/Invalidate");
  ASSERT_EQ(server.size(), 1u) << Describe(trace);
  EXPECT_FALSE(server[0].parent_span_id().empty());
  // The row is as it was, and reads see it.
  v1::ExecuteResponse response;
  ASSERT_TRUE(CallExecute(*query_stub_, read, &response).ok());
  ASSERT_EQ(response.result().rows_size(), 1);
}

}  // namespace
}  // namespace poolside::testing
