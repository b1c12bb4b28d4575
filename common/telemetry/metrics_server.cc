#include "common/telemetry/metrics_server.h"

#include <arpa/inet.h>
#include <civetweb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/telemetry/log.h"

namespace poolside::telemetry {
namespace {

// civetweb's "listening_ports" wants a numeric host: "127.0.0.1:9451",
// "[::1]:9451", or a bare port for every interface.
absl::StatusOr<std::string> CivetPorts(absl::string_view listen) {
  const size_t colon = listen.rfind(':');
  if (colon == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("metrics listen address \"", listen,
                                                   "\" is not host:port (e.g. 0.0.0.0:9451)"));
  }
  absl::string_view host = listen.substr(0, colon);
  const absl::string_view port_text = listen.substr(colon + 1);
  int port = -1;
  if (!absl::SimpleAtoi(port_text, &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics listen address \"", listen, "\": port must be 0..65535"));
  }
  if (host == "localhost") host = "127.0.0.1";
  if (host.empty() || host == "*") return absl::StrCat(port);
  if (host == "[::]") return absl::StrCat("[::]:", port);
  const bool ipv6 = absl::StartsWith(host, "[") && absl::EndsWith(host, "]");
  const bool ipv4 =
      !host.empty() && host.find_first_not_of("0123456789.") == absl::string_view::npos;
  if (!ipv4 && !ipv6) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics listen address \"", listen,
        "\": the host must be an IP address (e.g. 0.0.0.0, 127.0.0.1, [::1]) or localhost"));
  }
  return absl::StrCat(host, ":", port);
}

// The address a connection of our own reaches the listener on.
std::string WakeHost(absl::string_view listen) {
  absl::string_view host = listen.substr(0, listen.rfind(':'));
  if (host.empty() || host == "*" || host == "0.0.0.0" || host == "localhost") return "127.0.0.1";
  if (host == "[::]") return "::1";
  if (absl::StartsWith(host, "[")) return std::string(host.substr(1, host.size() - 2));
  return std::string(host);
}

// Opens and closes a TCP connection to host:port (IPv4 or IPv6 literal).
void Poke(const std::string& host, int port) {
  sockaddr_in v4{};
  sockaddr_in6 v6{};
  const sockaddr* addr;
  socklen_t len;
  if (inet_pton(AF_INET, host.c_str(), &v4.sin_addr) == 1) {
    v4.sin_family = AF_INET;
    v4.sin_port = htons(static_cast<uint16_t>(port));
    addr = reinterpret_cast<const sockaddr*>(&v4);
    len = sizeof(v4);
  } else if (inet_pton(AF_INET6, host.c_str(), &v6.sin6_addr) == 1) {
    v6.sin6_family = AF_INET6;
    v6.sin6_port = htons(static_cast<uint16_t>(port));
    addr = reinterpret_cast<const sockaddr*>(&v6);
    len = sizeof(v6);
  } else {
    return;
  }
  const int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  (void)connect(fd, addr, len);
  close(fd);
}

void Reply(mg_connection* conn, const char* mime, const std::string& body, bool head) {
  mg_send_http_ok(conn, mime, static_cast<long long>(body.size()));
  if (!head) mg_write(conn, body.data(), body.size());
}

}  // namespace

absl::Status ValidateMetricsConfig(const v1::MetricsConfig& config) {
  if (config.listen().empty()) return absl::OkStatus();
  absl::StatusOr<std::string> ports = CivetPorts(config.listen());
  if (!ports.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("server.telemetry.metrics.listen: ", ports.status().message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const v1::MetricsConfig& config,
                                                                    MetricsRegistry* registry) {
  if (config.listen().empty()) return std::unique_ptr<MetricsServer>();
  return Start(config.listen(), config.port_file(), registry);
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& listen,
                                                                    const std::string& port_file,
                                                                    MetricsRegistry* registry) {
  absl::StatusOr<std::string> ports = CivetPorts(listen);
  if (!ports.ok()) return ports.status();
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  server->registry_ = registry;
  server->wake_host_ = WakeHost(listen);
  mg_init_library(0);
  // Few threads (scrapes are rare and cheap), no keep-alive, no file serving
  // (no document_root).
  const char* options[] = {"listening_ports",    ports->c_str(), "num_threads", "2",
                           "request_timeout_ms", "10000",        nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof(callbacks));
  mg_init_data init{};
  init.callbacks = &callbacks;
  init.user_data = server.get();
  init.configuration_options = options;
  unsigned code = 0;
  char text[256] = "";
  mg_error_data error{&code, text, sizeof(text)};
  server->context_ = mg_start2(&init, &error);
  if (server->context_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", listen, ": ",
                                               text[0] ? text : "civetweb failed to start"));
  }
  mg_set_request_handler(server->context_, "/", &MetricsServer::Handle, server.get());
  mg_server_port bound[4];
  const int n = mg_get_server_ports(server->context_, 4, bound);
  if (n < 1)
    return absl::InternalError(absl::StrCat("metrics server on ", listen, " reports no port"));
  server->port_ = bound[0].port;
  if (!port_file.empty()) {
    const std::string tmp = port_file + ".tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << server->port_ << "\n";
      if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", tmp));
    }
    if (std::rename(tmp.c_str(), port_file.c_str()) != 0) {
      return absl::PermissionDeniedError(absl::StrCat("cannot rename ", tmp, " to ", port_file));
    }
  }
  LogInfo("metrics serving", {{"listen", listen}, {"port", absl::StrCat(server->port_)}});
  return server;
}

MetricsServer::~MetricsServer() {
  if (context_ == nullptr) return;
  // civetweb's listener thread sees mg_stop()'s flag only when its poll()
  // returns, which without traffic takes up to 2 s: connections of our own
  // wake it, so a service's shutdown is not held up.
  std::atomic<bool> stopped{false};
  std::thread stopper([&] {
    mg_stop(context_);
    stopped.store(true);
  });
  for (int i = 0; i < 200 && !stopped.load(); ++i) {
    Poke(wake_host_, port_);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  stopper.join();
}

int MetricsServer::Handle(mg_connection* conn, void* self) {
  const MetricsServer* server = static_cast<const MetricsServer*>(self);
  const mg_request_info* info = mg_get_request_info(conn);
  const absl::string_view method = info->request_method ? info->request_method : "";
  const absl::string_view uri = info->local_uri ? info->local_uri : "";
  const bool head = method == "HEAD";
  if (method != "GET" && !head) {
    mg_send_http_error(conn, 405, "%s", "only GET and HEAD are served here\n");
    return 405;
  }
  if (uri == "/metrics") {
    Reply(conn, "text/plain; version=0.0.4; charset=utf-8", server->registry_->ScrapeText(), head);
    return 200;
  }
  if (uri == "/" || uri == "/index.html") {
    Reply(conn, "text/html; charset=utf-8", server->registry_->StatusPageHtml(), head);
    return 200;
  }
  mg_send_http_error(conn, 404, "%s", "not found: try /metrics or /\n");
  return 404;
}

}  // namespace poolside::telemetry
