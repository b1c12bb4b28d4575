#include "common/telemetry/status_page.h"

#include "gtest/gtest.h"

namespace poolside::telemetry {
namespace {

TEST(StatusPageTest, EscapesEveryText) {
  EXPECT_EQ(HtmlEscape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
  StatusTable t;
  t.title = "Slowest <statements>";
  t.columns = {"statement", "calls"};
  t.rows = {{"SELECT * FROM t WHERE a < $1 AND b = '<script>'", "3"}};
  t.code_first_column = true;
  const std::string html = RenderStatusPage({"query", {{"uptime", "<1s"}}}, {t});
  EXPECT_EQ(html.find("<script>"), std::string::npos);
  EXPECT_NE(html.find("<td class=\"sql\">SELECT * FROM t WHERE a &lt; $1 AND b = "
                      "&#39;&lt;script&gt;&#39;</td>"),
            std::string::npos);
  EXPECT_NE(html.find("<section id=\"slowest-statements\"><h2>Slowest &lt;statements&gt;</h2>"),
            std::string::npos);
  EXPECT_NE(html.find("uptime: <b>&lt;1s</b>"), std::string::npos);
  EXPECT_NE(html.find("<title>poolside query</title>"), std::string::npos);
}

TEST(StatusPageTest, TablesInOrderAndEmptyText) {
  StatusTable pools{"Pools", {"database", "size"}, {{"app", "4"}, {"reports", "1"}}};
  StatusTable cache{"Cache", {"hits"}, {}, "no cache configured"};
  const std::string html = RenderStatusPage({"query", {}}, {pools, cache});
  const size_t p = html.find("id=\"pools\"");
  const size_t c = html.find("id=\"cache\"");
  ASSERT_NE(p, std::string::npos);
  ASSERT_NE(c, std::string::npos);
  EXPECT_LT(p, c);
  EXPECT_NE(html.find("<th>database</th><th>size</th>"), std::string::npos);
  EXPECT_NE(html.find("<tr><td>app</td><td>4</td></tr><tr><td>reports</td><td>1</td></tr>"),
            std::string::npos);
  EXPECT_NE(html.find("<p class=\"empty\">no cache configured</p>"), std::string::npos);
  EXPECT_NE(html.find("<a href=\"metrics\">/metrics</a>"), std::string::npos);
}

TEST(StatusPageTest, Formats) {
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(3.0 * 1024 * 1024 * 1024), "3.0 GiB");
  EXPECT_EQ(FormatSeconds(0.0000425), "42 µs");
  EXPECT_EQ(FormatSeconds(0.0123), "12.3 ms");
  EXPECT_EQ(FormatSeconds(2.5), "2.50 s");
  EXPECT_EQ(FormatSeconds(192), "3m12s");
  EXPECT_EQ(FormatSeconds(7500), "2h05m");
  EXPECT_EQ(FormatCount(42), "42");
  EXPECT_EQ(FormatCount(12345), "12.3k");
  EXPECT_EQ(FormatCount(2500000), "2.5M");
  EXPECT_EQ(FormatRatio(7, 8), "87.5%");
  EXPECT_EQ(FormatRatio(0, 0), "-");
}

}  // namespace
}  // namespace poolside::telemetry
