#include "common/telemetry/metrics.h"

#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"

namespace poolside::telemetry {
namespace {

bool Contains(const std::string& text, const std::string& what) {
  return text.find(what) != std::string::npos;
}

TEST(MetricsRegistryTest, CollectorsAreReadAtScrapeTime) {
  MetricsRegistry metrics("test");
  uint64_t rows = 3;
  MetricsRegistry::Registration r = metrics.AddCollector([&](auto* out) {
    prometheus::MetricFamily f = CounterFamily("poolside_test_rows_total", "Rows.");
    AddCounter(&f, {{"table", "events"}}, static_cast<double>(rows));
    out->push_back(std::move(f));
  });
  EXPECT_TRUE(Contains(metrics.ScrapeText(), "poolside_test_rows_total{table=\"events\"} 3\n"));
  rows = 10;
  EXPECT_TRUE(Contains(metrics.ScrapeText(), "poolside_test_rows_total{table=\"events\"} 10\n"));
  r.Reset();
  EXPECT_FALSE(Contains(metrics.ScrapeText(), "poolside_test_rows_total"));
}

TEST(MetricsRegistryTest, PrometheusMetricsProcessMetricsAndMergedFamilies) {
  MetricsRegistry metrics("test");
  prometheus::BuildCounter()
      .Name("poolside_test_calls_total")
      .Help("Calls.")
      .Register(metrics.registry())
      .Add({{"method", "Get"}})
      .Increment(2);
  auto add = [](std::string db, double v) {
    return [db, v](std::vector<prometheus::MetricFamily>* out) {
      prometheus::MetricFamily f = GaugeFamily("poolside_test_size", "Size.");
      AddGauge(&f, {{"database", db}}, v);
      out->push_back(std::move(f));
    };
  };
  auto r1 = metrics.AddCollector(add("a", 1));
  auto r2 = metrics.AddCollector(add("b", 2));
  const std::string text = metrics.ScrapeText();
  EXPECT_TRUE(Contains(text, "poolside_test_calls_total{method=\"Get\"} 2\n")) << text;
  EXPECT_TRUE(Contains(text,
                       "# TYPE poolside_test_size gauge\n"
                       "poolside_test_size{database=\"a\"} 1\n"
                       "poolside_test_size{database=\"b\"} 2\n"))
      << text;
  EXPECT_TRUE(Contains(text, "poolside_process_resident_memory_bytes ")) << text;
  // One HELP/TYPE block per name.
  size_t n = 0;
  for (size_t at = 0; (at = text.find("# TYPE poolside_test_size ", at)) != std::string::npos; ++at)
    ++n;
  EXPECT_EQ(n, 1u);
}

TEST(MetricsRegistryTest, StatusSectionsInOrder) {
  MetricsRegistry metrics("query");
  auto a = metrics.AddStatusSection([] { return StatusTable{"Pools", {"database"}, {{"app"}}}; });
  auto b = metrics.AddStatusSection([] { return StatusTable{"Cache", {"hits"}, {{"7"}}}; });
  const std::string html = metrics.StatusPageHtml();
  EXPECT_TRUE(Contains(html, "<title>poolside query</title>"));
  EXPECT_TRUE(Contains(html, "uptime: <b>"));
  EXPECT_TRUE(Contains(html, "memory (RSS): <b>"));
  ASSERT_TRUE(Contains(html, "id=\"pools\""));
  ASSERT_TRUE(Contains(html, "id=\"cache\""));
  EXPECT_LT(html.find("id=\"pools\""), html.find("id=\"cache\""));
  a.Reset();
  EXPECT_FALSE(Contains(metrics.StatusPageHtml(), "id=\"pools\""));
}

TEST(MetricsRegistryTest, RegistrationMovesAndOutlivesNothing) {
  MetricsRegistry metrics("test");
  MetricsRegistry::Registration outer;
  {
    MetricsRegistry::Registration inner = metrics.AddCollector([](auto* out) {
      out->push_back(GaugeFamily("poolside_test_moved", "Moved."));
      AddGauge(&out->back(), {}, 1);
    });
    outer = std::move(inner);
  }
  EXPECT_TRUE(Contains(metrics.ScrapeText(), "poolside_test_moved 1"));
  outer = MetricsRegistry::Registration();
  EXPECT_FALSE(Contains(metrics.ScrapeText(), "poolside_test_moved"));
}

// Scrapes racing registrations coming and going (run under ThreadSanitizer by
// make test).
TEST(MetricsRegistryTest, ConcurrentScrapesAndRegistrations) {
  MetricsRegistry metrics("test");
  std::atomic<bool> stop{false};
  std::thread scraper([&] {
    while (!stop.load()) {
      (void)metrics.ScrapeText();
      (void)metrics.StatusPageHtml();
    }
  });
  for (int i = 0; i < 200; ++i) {
    auto value = std::make_unique<int>(i);
    MetricsRegistry::Registration r = metrics.AddCollector([v = value.get()](auto* out) {
      out->push_back(GaugeFamily("poolside_test_value", "Value."));
      AddGauge(&out->back(), {}, *v);
    });
    MetricsRegistry::Registration s = metrics.AddStatusSection([v = value.get()] {
      return StatusTable{"Value", {"v"}, {{std::to_string(*v)}}};
    });
    r.Reset();
    s.Reset();
    value.reset();  // safe: no callback can be running any more
  }
  stop = true;
  scraper.join();
}

}  // namespace
}  // namespace poolside::telemetry
