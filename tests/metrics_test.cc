// /metrics and the status page of the real query_server, cache_server and
// ingest_server binaries after a real workload on a real PostgreSQL: the
// series exist and their values are what the workload did (cache hits counted
// equal hits returned, rows ingested equal rows sent, calls by method and
// code), slow statements are logged as JSON with their trace id, and the status
// page renders in headless Chromium.

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/cache.grpc.pb.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/ingest.grpc.pb.h"
#include "proto/poolside/v1/query.grpc.pb.h"
#include "tests/fixtures/files.h"
#include "tests/fixtures/http_get.h"
#include "tests/fixtures/otlp_receiver.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/subprocess.h"
#include "tests/observed_services.h"

namespace poolside::testing {
namespace {

constexpr char kDb[] = "mt";
constexpr char kChromium[] = "/usr/bin/chromium";

// One sample of a Prometheus text exposition.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Parses the text format (label values here never hold '"', ',' or '\\').
std::vector<Sample> ParseMetrics(const std::string& text) {
  std::vector<Sample> out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    Sample s;
    const size_t brace = line.find('{');
    const size_t space = line.rfind(' ');
    if (space == absl::string_view::npos) continue;
    if (brace != absl::string_view::npos && brace < space) {
      s.name = std::string(line.substr(0, brace));
      const size_t close = line.find('}', brace);
      for (absl::string_view kv :
           absl::StrSplit(line.substr(brace + 1, close - brace - 1), ',', absl::SkipEmpty())) {
        const size_t eq = kv.find('=');
        s.labels[std::string(kv.substr(0, eq))] =
            std::string(absl::StripSuffix(absl::StripPrefix(kv.substr(eq + 1), "\""), "\""));
      }
    } else {
      s.name = std::string(line.substr(0, space));
    }
    if (!absl::SimpleAtod(line.substr(space + 1), &s.value)) continue;
    out.push_back(std::move(s));
  }
  return out;
}

class Metrics {
 public:
  explicit Metrics(const std::string& text) : text_(text), samples_(ParseMetrics(text)) {}

  // Sum of the samples named `name` whose labels include `labels`; -1 when
  // there is none.
  double Get(const std::string& name, const std::map<std::string, std::string>& labels = {}) const {
    double sum = 0;
    bool found = false;
    for (const Sample& s : samples_) {
      if (s.name != name) continue;
      bool match = true;
      for (const auto& [k, v] : labels) {
        auto it = s.labels.find(k);
        if (it == s.labels.end() || it->second != v) match = false;
      }
      if (!match) continue;
      sum += s.value;
      found = true;
    }
    return found ? sum : -1;
  }
  const std::string& text() const { return text_; }

 private:
  std::string text_;
  std::vector<Sample> samples_;
};

Metrics Scrape(int port) {
  absl::StatusOr<testing::HttpResponse> r = HttpGet("127.0.0.1", port, "/metrics");
  EXPECT_TRUE(r.ok()) << r.status();
  if (!r.ok()) return Metrics("");
  EXPECT_EQ(r->status, 200);
  return Metrics(r->body);
}

// The status page as Chromium's DOM after it loaded and rendered the page.
absl::StatusOr<std::string> RenderInChromium(int port) {
  struct stat st;
  if (stat(kChromium, &st) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(kChromium, " is missing: install Debian's chromium (make deps)"));
  }
  const std::string profile = NewStem("chromium-profile");
  const std::string dom = profile + ".html";
  const std::string command = absl::StrCat(
      kChromium,
      " --headless --no-sandbox --disable-gpu --disable-quic --no-first-run"
      " --disable-background-networking --disable-component-update --disable-sync"
      " --disable-dev-shm-usage --user-data-dir=",
      profile, " --dump-dom http://127.0.0.1:", port, "/ > ", dom, " 2> ", profile, ".log");
  const int rc = std::system(command.c_str());
  if (rc != 0) {
    return absl::InternalError(
        absl::StrCat("chromium exited with ", rc, ": ",
                     ReadFile(profile + ".log").value_or("").substr(0, 2000)));
  }
  return ReadFile(dom).value_or("");
}

using MetricsTest = ObservedServicesTest<kDb>;

TEST_F(MetricsTest, QueryAndCacheSeriesMatchTheWorkload) {
  auto [cache, cache_port, query, query_port] =
      StartCachedQuery(kDb, [](v1::QueryServiceConfig* config) {
        config->mutable_server()->mutable_telemetry()->mutable_log()->set_slow_statement_ms(200);
      });
  ASSERT_NE(cache, nullptr);
  ASSERT_GT(cache_port, 0);
  ASSERT_NE(query, nullptr);
  ASSERT_GT(query_port, 0);
  auto channel = Connect(query->address());
  ASSERT_TRUE(channel.ok()) << channel.status();
  auto stub = v1::QueryService::NewStub(*channel);

  // The workload. Cached reads wait for the invalidation listener: until it has
  // subscribed, reads bypass the cache.
  int ok_calls = 0, invalid_calls = 0, hits = 0, misses = 0, bypass = 0;
  auto execute = [&](const std::string& sql, bool cached,
                     const std::string& traceparent = "") -> grpc::Status {
    v1::ExecuteResponse response;
    grpc::Status s =
        CallExecute(*stub, ExecuteOn(kDb, sql, cached ? 60000 : 0), &response, traceparent);
    if (s.ok()) {
      ++ok_calls;
      if (response.cache() == v1::HIT) ++hits;
      if (response.cache() == v1::MISS) ++misses;
      if (cached && response.cache() == v1::BYPASS) ++bypass;
    } else if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
      ++invalid_calls;
    }
    return s;
  };
  ASSERT_TRUE(WaitForCachedReads(*stub, kDb));
  // The probe calls above count in the totals: read them back as a baseline.
  const Metrics before = Scrape(query_port);
  const double base_ok = before.Get("poolside_grpc_server_handled_total",
                                    {{"grpc_method", "Execute"}, {"grpc_code", "OK"}});
  const double base_hits = before.Get("poolside_query_cache_requests_total", {{"outcome", "hit"}});
  const double base_misses =
      before.Get("poolside_query_cache_requests_total", {{"outcome", "miss"}});
  const double base_near_hits = before.Get("poolside_query_cache_near_hits_total");
  const double base_statements = before.Get("poolside_statements_total", {{"database", kDb}});
  const Metrics cache_before = Scrape(cache_port);
  const double base_sidecar_hits =
      cache_before.Get("poolside_cache_lookups_total", {{"outcome", "hit"}});
  const double base_sidecar_misses =
      cache_before.Get("poolside_cache_lookups_total", {{"outcome", "miss"}});
  ASSERT_GE(base_ok, 1);

  for (int i = 0; i < 4; ++i)
    ASSERT_TRUE(execute("SELECT name FROM items WHERE id = 1", true).ok());
  const double invalidations_before = Scrape(cache_port).Get("poolside_cache_invalidations_total");
  ASSERT_TRUE(execute("UPDATE items SET name = 'uno' WHERE id = 1", false).ok());
  // The write invalidates twice: through this replica before its reply, and
  // again when its NOTIFY arrives. Wait for the second, so that it cannot drop
  // the entry the reads below fill (which would turn a hit into a miss).
  ASSERT_TRUE(testing::WaitFor(
      [&, cache_port = cache_port] {
        return Scrape(cache_port).Get("poolside_cache_invalidations_total") >=
               invalidations_before + 2;
      },
      absl::Seconds(20)));
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(execute("SELECT name FROM items WHERE id = 1", true).ok());
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(execute(absl::StrCat("SELECT ", i), false).ok());
  EXPECT_EQ(execute("SELECT * FROM no_such_table", false).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  const std::string trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
  ASSERT_TRUE(
      execute("SELECT pg_sleep(0.3)", false, absl::StrCat("00-", trace_id, "-00f067aa0ba902b7-01"))
          .ok());
  EXPECT_EQ(bypass, 0);
  EXPECT_EQ(hits, 5);    // 3 before the write, 2 after
  EXPECT_EQ(misses, 2);  // the first read, and the first after the write
  const int statements = ok_calls + invalid_calls;

  const Metrics m = Scrape(query_port);
  SCOPED_TRACE(m.text());
  // Calls by method and code.
  EXPECT_EQ(
      m.Get("poolside_grpc_server_handled_total", {{"grpc_service", "poolside.v1.QueryService"},
                                                   {"grpc_method", "Execute"},
                                                   {"grpc_type", "unary"},
                                                   {"grpc_code", "OK"}}) -
          base_ok,
      ok_calls);
  EXPECT_EQ(m.Get("poolside_grpc_server_handled_total",
                  {{"grpc_method", "Execute"}, {"grpc_code", "INVALID_ARGUMENT"}}),
            invalid_calls);
  EXPECT_EQ(
      m.Get("poolside_grpc_server_handling_seconds_count", {{"grpc_method", "Execute"}}) - base_ok,
      ok_calls + invalid_calls);
  EXPECT_EQ(m.Get("poolside_grpc_server_handling_seconds_bucket",
                  {{"grpc_method", "Execute"}, {"le", "+Inf"}}) -
                base_ok,
            ok_calls + invalid_calls);
  // Cache outcomes as the query side counted them == what the calls returned.
  EXPECT_EQ(m.Get("poolside_query_cache_requests_total", {{"outcome", "hit"}}) - base_hits, hits);
  EXPECT_EQ(m.Get("poolside_query_cache_requests_total", {{"outcome", "miss"}}) - base_misses,
            misses);
  EXPECT_GE(m.Get("poolside_query_cache_invalidations_total", {{"source", "write"}}), 1);
  EXPECT_GE(m.Get("poolside_query_cache_invalidations_total", {{"source", "flush"}}), 1);
  EXPECT_GE(m.Get("poolside_query_cache_fills_total"), misses);
  // Statements: every call that reached the engine, one error, one slow one.
  EXPECT_EQ(m.Get("poolside_statements_total", {{"database", kDb}}) - base_statements, statements);
  EXPECT_EQ(m.Get("poolside_statement_errors_total", {{"database", kDb}}), invalid_calls);
  EXPECT_EQ(m.Get("poolside_statement_duration_seconds_count", {{"database", kDb}}),
            m.Get("poolside_statements_total", {{"database", kDb}}));
  // pg_sleep(0.3) is in no bucket at or below 0.25 s.
  EXPECT_GE(m.Get("poolside_statement_duration_seconds_sum", {{"database", kDb}}), 0.3);
  // Pools.
  EXPECT_GE(m.Get("poolside_pool_size", {{"database", kDb}}), 1);
  EXPECT_EQ(m.Get("poolside_pool_max_size", {{"database", kDb}}), 2);
  EXPECT_GE(m.Get("poolside_pool_idle", {{"database", kDb}}), 0);
  EXPECT_GE(m.Get("poolside_pool_in_use", {{"database", kDb}}), 0);
  EXPECT_EQ(m.Get("poolside_pool_waiters", {{"database", kDb}}), 0);
  EXPECT_GE(m.Get("poolside_pool_acquire_wait_seconds_count", {{"database", kDb}}), 1);
  EXPECT_GE(m.Get("poolside_query_pipelined_statements_total", {{"database", kDb}}), 1);
  // Process and span exporter.
  EXPECT_GT(m.Get("poolside_process_resident_memory_bytes"), 1 << 20);
  EXPECT_GT(m.Get("poolside_process_open_fds"), 3);
  EXPECT_GE(m.Get("poolside_process_cpu_seconds_total"), 0);
  EXPECT_EQ(m.Get("poolside_trace_spans_dropped_total", {{"reason", "queue_full"}}), 0);
  EXPECT_GE(m.Get("poolside_trace_spans_exported_total"), 0);

  // The sidecar's own counts agree with what the query side returned.
  const Metrics c = Scrape(cache_port);
  {
    SCOPED_TRACE(c.text());
    // Hits the near cache answered never reached the sidecar.
    const double near_hits = m.Get("poolside_query_cache_near_hits_total") - base_near_hits;
    EXPECT_GE(near_hits, 0);
    EXPECT_EQ(c.Get("poolside_cache_lookups_total", {{"outcome", "hit"}}) - base_sidecar_hits,
              hits - near_hits);
    EXPECT_EQ(c.Get("poolside_cache_lookups_total", {{"outcome", "miss"}}) - base_sidecar_misses,
              misses);
    EXPECT_GE(c.Get("poolside_cache_invalidation_targets_total", {{"kind", "tag"}}), 1);
    EXPECT_GE(c.Get("poolside_cache_entries"), 1);
    EXPECT_GT(c.Get("poolside_cache_bytes"), 0);
    EXPECT_EQ(c.Get("poolside_cache_capacity_bytes"), 16 << 20);
    EXPECT_GE(c.Get("poolside_cache_evictions_total"), 0);
    EXPECT_EQ(
        c.Get("poolside_grpc_server_handled_total", {{"grpc_service", "poolside.v1.CacheService"},
                                                     {"grpc_method", "Get"},
                                                     {"grpc_code", "OK"}}),
        c.Get("poolside_cache_lookups_total"));
  }

  // The slow statement was logged once, as JSON, with the caller's trace id.
  std::string slow_line;
  for (absl::string_view line : absl::StrSplit(ReadFile(query->log_path()).value_or(""), '\n')) {
    if (absl::StrContains(line, "\"message\":\"slow statement\"")) {
      EXPECT_TRUE(slow_line.empty()) << "second slow statement: " << line;
      slow_line = std::string(line);
    }
  }
  ASSERT_FALSE(slow_line.empty()) << query->LogTail();
  EXPECT_TRUE(absl::StartsWith(slow_line, "{") && absl::EndsWith(slow_line, "}")) << slow_line;
  EXPECT_TRUE(absl::StrContains(slow_line, "\"statement\":\"SELECT pg_sleep($1)\"")) << slow_line;
  EXPECT_TRUE(absl::StrContains(slow_line, absl::StrCat("\"database\":\"", kDb, "\"")))
      << slow_line;
  EXPECT_TRUE(absl::StrContains(slow_line, absl::StrCat("\"trace_id\":\"", trace_id, "\"")))
      << slow_line;

  // The status page, rendered by Chromium.
  absl::StatusOr<std::string> dom = RenderInChromium(query_port);
  ASSERT_TRUE(dom.ok()) << dom.status();
  EXPECT_TRUE(absl::StrContains(*dom, "<title>poolside query</title>")) << *dom;
  for (const char* id : {"pools", "read-cache", "slowest-statements", "grpc-calls"}) {
    EXPECT_TRUE(absl::StrContains(*dom, absl::StrCat("<section id=\"", id, "\">"))) << id;
  }
  EXPECT_TRUE(absl::StrContains(*dom, "SELECT pg_sleep($1)")) << *dom;
  EXPECT_TRUE(absl::StrContains(*dom, "poolside.v1.QueryService/Execute")) << *dom;
  EXPECT_TRUE(absl::StrContains(*dom, absl::StrCat("<td>", kDb, "</td>"))) << *dom;
  absl::StatusOr<std::string> cache_dom = RenderInChromium(cache_port);
  ASSERT_TRUE(cache_dom.ok()) << cache_dom.status();
  EXPECT_TRUE(absl::StrContains(*cache_dom, "<section id=\"cache\">")) << *cache_dom;

  EXPECT_EQ(testing::Terminate(*query).value_or(-1), 0);
  EXPECT_EQ(testing::Terminate(*cache).value_or(-1), 0);
}

TEST_F(MetricsTest, IngestSeriesMatchTheRowsSent) {
  auto [ingest, port] = StartObservedIngest(kDb);
  ASSERT_NE(ingest, nullptr);
  ASSERT_GT(port, 0);
  auto channel = Connect(ingest->address());
  ASSERT_TRUE(channel.ok()) << channel.status();
  auto stub = v1::IngestService::NewStub(*channel);

  uint64_t rows_sent = 0, rejected = 0;
  int requests = 0;
  for (int n : {10, 20, 5}) {
    v1::WriteRequest request = EventsWrite(kDb, 0, n, "metrics");
    if (n == 5) {  // NULL into the NOT NULL id: rejected, the others commit
      v1::Row* bad = request.add_rows();
      bad->add_values()->set_null_value(v1::NULL_VALUE);
      bad->add_values()->set_text_value("bad");
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
    v1::WriteResponse response;
    grpc::Status s = stub->Write(&ctx, request, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ++requests;
    rows_sent += n;
    EXPECT_EQ(response.rows_written(), static_cast<uint64_t>(n));
    rejected += response.rejected_size();
  }
  EXPECT_EQ(rejected, 1u);

  const Metrics m = Scrape(port);
  SCOPED_TRACE(m.text());
  EXPECT_EQ(m.Get("poolside_ingest_rows_total"), rows_sent);
  EXPECT_EQ(m.Get("poolside_ingest_rows_rejected_total"), rejected);
  EXPECT_EQ(m.Get("poolside_ingest_requests_total"), requests);
  EXPECT_GT(m.Get("poolside_ingest_bytes_total"), 0);
  const double committed = m.Get("poolside_ingest_batches_total", {{"result", "committed"}});
  EXPECT_GE(committed, 1);
  EXPECT_LE(committed, requests);
  EXPECT_EQ(m.Get("poolside_ingest_batches_total", {{"result", "failed"}}), 0);
  // One request at a time: no sealed batch waits for a connection, so none
  // is joined to another and every flush is a transaction of its own.
  EXPECT_EQ(m.Get("poolside_ingest_batches_joined_total"), 0);
  EXPECT_EQ(m.Get("poolside_ingest_flushes_total"), committed);
  EXPECT_GE(m.Get("poolside_ingest_flushes_total", {{"reason", "linger"}}), 1);
  EXPECT_EQ(m.Get("poolside_ingest_buffer_bytes"), 0);
  EXPECT_GT(m.Get("poolside_ingest_buffer_limit_bytes"), 0);
  EXPECT_EQ(
      m.Get("poolside_grpc_server_handled_total", {{"grpc_service", "poolside.v1.IngestService"},
                                                   {"grpc_method", "Write"},
                                                   {"grpc_code", "OK"}}),
      requests);
  EXPECT_GE(m.Get("poolside_pool_size", {{"database", kDb}}), 1);
  EXPECT_GE(m.Get("poolside_pool_acquired_total", {{"database", kDb}}), 1);
  EXPECT_EQ(SharedPostgres().QueryValue(kDb, "SELECT count(*) FROM events").value_or("?"),
            absl::StrCat(rows_sent));

  absl::StatusOr<std::string> dom = RenderInChromium(port);
  ASSERT_TRUE(dom.ok()) << dom.status();
  EXPECT_TRUE(absl::StrContains(*dom, "<title>poolside ingest</title>")) << *dom;
  EXPECT_TRUE(absl::StrContains(*dom, "<section id=\"ingest\">")) << *dom;
  EXPECT_TRUE(absl::StrContains(*dom, "<th>rows/s</th>")) << *dom;
  EXPECT_TRUE(absl::StrContains(*dom, "<section id=\"pools\">")) << *dom;
  EXPECT_EQ(testing::Terminate(*ingest).value_or(-1), 0);
}

TEST_F(MetricsTest, SpanExporterSeriesCountSentAndDroppedSpans) {
  auto receiver = testing::OtlpReceiver::Start();
  ASSERT_TRUE(receiver.ok()) << receiver.status();
  v1::CacheServiceConfig config;
  config.set_capacity_bytes(1 << 20);
  v1::TracingConfig* tracing = config.mutable_server()->mutable_telemetry()->mutable_tracing();
  tracing->set_endpoint((*receiver)->address());
  tracing->set_batch_interval_ms(50);
  tracing->set_export_timeout_ms(500);
  auto [cache, port] = StartWithMetrics("services/cache/cache_server", config, "cache_server");
  ASSERT_NE(cache, nullptr);
  auto channel = Connect(cache->address());
  ASSERT_TRUE(channel.ok()) << channel.status();
  auto stub = v1::CacheService::NewStub(*channel);
  auto get = [&] {
    v1::CacheGetRequest request;
    request.set_key("k");
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    v1::CacheGetResponse response;
    return stub->Get(&ctx, request, &response).ok();
  };
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(get());
  // Every span the collector received is counted as exported once acknowledged.
  ASSERT_TRUE(
      (*receiver)->WaitFor([](const auto& spans) { return spans.size() >= 5; }, absl::Seconds(20)));
  double exported = -1;
  ASSERT_TRUE(testing::WaitFor(
      [&, port = port] {
        exported = Scrape(port).Get("poolside_trace_spans_exported_total");
        return exported == static_cast<double>((*receiver)->Spans().size());
      },
      absl::Seconds(20)))
      << exported << " exported, " << (*receiver)->Spans().size() << " received";
  EXPECT_EQ(Scrape(port).Get("poolside_trace_spans_dropped_total"), 0);

  // The collector goes away: calls still succeed, and their spans are counted
  // as dropped once their export fails.
  receiver->reset();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(get());
  double dropped = -1;
  EXPECT_TRUE(testing::WaitFor(
      [&, port = port] {
        dropped =
            Scrape(port).Get("poolside_trace_spans_dropped_total", {{"reason", "export_failed"}});
        return dropped >= 5;
      },
      absl::Seconds(30)))
      << dropped;
  const Metrics m = Scrape(port);
  EXPECT_EQ(m.Get("poolside_trace_spans_exported_total"), exported);
  EXPECT_GE(m.Get("poolside_trace_export_failures_total"), 1);
  EXPECT_EQ(testing::Terminate(*cache).value_or(-1), 0);
}

TEST_F(MetricsTest, TakenMetricsPortFailsTheStartWithAClearMessage) {
  v1::CacheServiceConfig first;
  first.set_capacity_bytes(1 << 20);
  auto [cache, port] = StartWithMetrics("services/cache/cache_server", first, "cache_server");
  ASSERT_NE(cache, nullptr);
  v1::CacheServiceConfig second;
  second.set_capacity_bytes(1 << 20);
  const std::string stem = NewStem("cache_server");
  second.mutable_server()->set_listen("127.0.0.1:0");
  second.mutable_server()->mutable_tls()->set_plaintext(true);
  second.mutable_server()->set_port_file(stem + ".port");
  second.mutable_server()->mutable_telemetry()->mutable_metrics()->set_listen(
      absl::StrCat("127.0.0.1:", port));
  auto p = StartConfigured("services/cache/cache_server", second, stem + ".port", stem, {},
                           absl::Seconds(10));
  ASSERT_FALSE(p.ok());
  EXPECT_TRUE(absl::StrContains(p.status().message(), "cannot serve metrics")) << p.status();
  EXPECT_TRUE(absl::StrContains(p.status().message(), absl::StrCat("127.0.0.1:", port)))
      << p.status();
  EXPECT_EQ(testing::Terminate(*cache).value_or(-1), 0);
}

}  // namespace
}  // namespace poolside::testing
