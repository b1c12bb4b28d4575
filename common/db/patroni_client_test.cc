#include "common/db/patroni_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/fixtures/loopback_port.h"

namespace poolside::db {
namespace {

constexpr char kCluster[] = R"({
  "members": [
    {"name": "pg1", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:8008/patroni",
     "host": "127.0.0.1", "port": 5432, "timeline": 3},
    {"name": "pg2", "role": "replica", "state": "streaming", "host": "db-2.example", "port": 5433,
     "timeline": 3, "lag": 0},
    {"name": "pg3", "role": "sync_standby", "state": "running", "host": "::1", "port": 5434}
  ],
  "scope": "poolside-test", "extra": {"ignored": true}
})";

TEST(PatroniClientTest, ParsesTheClusterAnswer) {
  absl::StatusOr<PatroniClusterView> view = ParsePatroniCluster(kCluster);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->leader, "pg1");
  ASSERT_EQ(view->members.size(), 3u);
  EXPECT_EQ(view->members[1].name, "pg2");
  EXPECT_EQ(view->members[1].role, "replica");
  EXPECT_EQ(view->members[1].state, "streaming");
  EXPECT_EQ(view->members[1].host, "db-2.example");
  EXPECT_EQ(view->members[1].port, 5433);
  EXPECT_EQ(view->members[2].host, "::1");

  // During a failover there may be no leader.
  absl::StatusOr<PatroniClusterView> leaderless = ParsePatroniCluster(
      R"({"members": [{"name": "a", "role": "replica", "host": "h", "port": 1}]})");
  ASSERT_TRUE(leaderless.ok()) << leaderless.status();
  EXPECT_EQ(leaderless->leader, "");
}

TEST(PatroniClientTest, RefusesMalformedAndHostileAnswers) {
  const std::string cases[] = {
      "",
      "not json",
      "[]",
      R"({"members": 5})",
      R"({"members": [5]})",
      R"({"members": [{"role": "leader", "host": "h", "port": 1}]})",
      R"({"members": [{"name": "a", "port": 1}]})",
      R"({"members": [{"name": "a", "host": "h", "port": 0}]})",
      R"({"members": [{"name": "a", "host": "h", "port": 70000}]})",
      R"({"members": [{"name": "a", "host": "h", "port": 5.5}]})",
      R"({"members": [{"name": "a", "host": "h", "port": "5432"}]})",
      // A host that would smuggle settings into the member's DSN.
      R"({"members": [{"name": "a", "host": "h' password='x", "port": 1}]})",
      R"({"members": [{"name": "a", "host": "h dbname=other", "port": 1}]})",
      R"({"members": [{"name": "a", "host": "h", "port": 1}, {"name": "a", "host": "i", "port": 2}]})",
      R"({"members": [{"name": "a", "role": "leader", "host": "h", "port": 1},
                      {"name": "b", "role": "leader", "host": "i", "port": 2}]})",
  };
  for (const std::string& json : cases) {
    EXPECT_EQ(ParsePatroniCluster(json).status().code(), absl::StatusCode::kInvalidArgument)
        << json;
  }
  std::string many = R"({"members": [)";
  for (int i = 0; i < 65; ++i) {
    absl::StrAppend(&many, i ? "," : "", R"({"name": "m)", i, R"(", "host": "h", "port": 1})");
  }
  many += "]}";
  EXPECT_EQ(ParsePatroniCluster(many).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PatroniClientTest, ParsesEndpoints) {
  absl::StatusOr<HttpEndpoint> e = ParseHttpEndpoint("http://10.0.0.5:8008/");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->host, "10.0.0.5");
  EXPECT_EQ(e->port, 8008);
  e = ParseHttpEndpoint("http://[::1]:8008");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->host, "::1");
  for (const char* bad : {"https://h:8008", "h:8008", "http://h", "http://h:0", "http://h:x",
                          "http://:8008", "http://h h:1"}) {
    EXPECT_EQ(ParseHttpEndpoint(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

// A one-connection-at-a-time HTTP server that answers with `reply` (or, if
// `stall`, reads the request and never answers).
class CannedServer {
 public:
  explicit CannedServer(std::string reply, bool stall = false)
      : reply_(std::move(reply)), stall_(stall) {
    fd_ = testing::BindLoopback(&port_);
    EXPECT_GE(fd_, 0);
    EXPECT_EQ(listen(fd_, 4), 0);
    thread_ = std::thread([this] { Serve(); });
  }
  ~CannedServer() {
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    thread_.join();
  }
  HttpEndpoint endpoint() const { return {"127.0.0.1", port_}; }
  std::string request() const { return request_; }

 private:
  void Serve() {
    const int conn = accept(fd_, nullptr, nullptr);
    if (conn < 0) return;
    char buf[4096];
    const ssize_t n = recv(conn, buf, sizeof(buf), 0);
    if (n > 0) request_.assign(buf, n);
    if (stall_) {
      // Held open until the client gives up and closes.
      while (recv(conn, buf, sizeof(buf), 0) > 0) {
      }
    } else {
      for (size_t sent = 0; sent < reply_.size();) {
        const ssize_t w = send(conn, reply_.data() + sent, reply_.size() - sent, MSG_NOSIGNAL);
        if (w <= 0) break;
        sent += w;
      }
    }
    close(conn);
  }

  std::string reply_;
  bool stall_;
  int fd_ = -1;
  int port_ = 0;
  std::string request_;
  std::thread thread_;
};

TEST(PatroniClientTest, HttpGetReadsA200Body) {
  CannedServer server(
      absl::StrCat("HTTP/1.0 200 OK\r\nServer: BaseHTTP/0.6 Python/3.11.2\r\nContent-Type: "
                   "application/json\r\n\r\n",
                   kCluster));
  absl::StatusOr<std::string> body =
      HttpGet(server.endpoint(), "/cluster", absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ(*body, kCluster);
  EXPECT_TRUE(absl::StartsWith(server.request(), "GET /cluster HTTP/1.0\r\n")) << server.request();
}

TEST(PatroniClientTest, HttpGetFailures) {
  {
    CannedServer server("HTTP/1.0 503 Service Unavailable\r\n\r\n{}");
    absl::Status s =
        HttpGet(server.endpoint(), "/primary", absl::Now() + absl::Seconds(10)).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "503")) << s;
  }
  {
    CannedServer server("SSH-2.0-OpenSSH_9.2\r\n");
    EXPECT_EQ(
        HttpGet(server.endpoint(), "/cluster", absl::Now() + absl::Seconds(10)).status().code(),
        absl::StatusCode::kInvalidArgument);
  }
  {
    CannedServer server(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    EXPECT_EQ(
        HttpGet(server.endpoint(), "/cluster", absl::Now() + absl::Seconds(10)).status().code(),
        absl::StatusCode::kInvalidArgument);
  }
  {
    CannedServer server(absl::StrCat("HTTP/1.0 200 OK\r\n\r\n", std::string(200000, 'x')));
    EXPECT_EQ(HttpGet(server.endpoint(), "/cluster", absl::Now() + absl::Seconds(10), 100000)
                  .status()
                  .code(),
              absl::StatusCode::kResourceExhausted);
  }
  {
    CannedServer server("", /*stall=*/true);
    const absl::Time start = absl::Now();
    absl::Status s =
        HttpGet(server.endpoint(), "/cluster", absl::Now() + absl::Milliseconds(300)).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
    EXPECT_LT(absl::Now() - start, absl::Seconds(20)) << "bounded by the deadline";
  }
  // Nothing listening.
  HttpEndpoint closed;
  {
    CannedServer server("");
    closed = server.endpoint();
  }
  EXPECT_EQ(HttpGet(closed, "/cluster", absl::Now() + absl::Seconds(10)).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(
      FetchPatroniCluster("https://127.0.0.1:1", absl::Now() + absl::Seconds(1)).status().code(),
      absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace poolside::db
