#include "common/db/patroni_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/db/socket_wait.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace poolside::db {
namespace {

// Host names and IPv4/IPv6 addresses only: a value that becomes part of a DSN.
bool PlainHost(absl::string_view host) {
  if (host.empty() || host.size() > 253) return false;
  for (char c : host) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != ':' &&
        c != '_') {
      return false;
    }
  }
  return true;
}

absl::StatusOr<int> ParsePort(absl::string_view text) {
  int port = 0;
  if (!absl::SimpleAtoi(text, &port) || port < 1 || port > 65535) {
    return absl::InvalidArgumentError("port must be 1-65535");
  }
  return port;
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

std::string StringField(const google::protobuf::Struct& s, const std::string& key) {
  auto it = s.fields().find(key);
  if (it == s.fields().end() || !it->second.has_string_value()) return "";
  return it->second.string_value();
}

}  // namespace

absl::StatusOr<HttpEndpoint> ParseHttpEndpoint(absl::string_view url) {
  absl::string_view rest = url;
  if (!absl::ConsumePrefix(&rest, "http://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("Patroni URL must start with http:// (https is not supported): ", url));
  }
  absl::ConsumeSuffix(&rest, "/");
  const size_t colon = rest.rfind(':');
  if (colon == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("Patroni URL needs host:port: ", url));
  }
  HttpEndpoint out;
  out.host = std::string(rest.substr(0, colon));
  if (absl::StartsWith(out.host, "[") && absl::EndsWith(out.host, "]")) {
    out.host = out.host.substr(1, out.host.size() - 2);
  }
  if (!PlainHost(out.host)) {
    return absl::InvalidArgumentError(absl::StrCat("Patroni URL has a bad host: ", url));
  }
  absl::StatusOr<int> port = ParsePort(rest.substr(colon + 1));
  if (!port.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("Patroni URL has a bad port: ", url));
  }
  out.port = *port;
  return out;
}

absl::StatusOr<PatroniClusterView> ParsePatroniCluster(absl::string_view json) {
  google::protobuf::Struct root;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  if (!google::protobuf::util::JsonStringToMessage(std::string(json), &root, options).ok()) {
    return absl::InvalidArgumentError("Patroni /cluster: not a JSON object");
  }
  auto members = root.fields().find("members");
  if (members == root.fields().end() || !members->second.has_list_value()) {
    return absl::InvalidArgumentError("Patroni /cluster: no members array");
  }
  const auto& list = members->second.list_value().values();
  if (static_cast<size_t>(list.size()) > kMaxPatroniMembers) {
    return absl::InvalidArgumentError(
        absl::StrCat("Patroni /cluster: more than ", kMaxPatroniMembers, " members"));
  }
  PatroniClusterView view;
  absl::flat_hash_set<std::string> names;
  for (int i = 0; i < list.size(); ++i) {
    const std::string at = absl::StrCat("Patroni /cluster: member ", i);
    if (!list[i].has_struct_value()) return absl::InvalidArgumentError(at + " is not an object");
    const google::protobuf::Struct& m = list[i].struct_value();
    PatroniMember member;
    member.name = StringField(m, "name");
    member.role = StringField(m, "role");
    member.state = StringField(m, "state");
    member.host = StringField(m, "host");
    if (member.name.empty() || member.name.size() > 128) {
      return absl::InvalidArgumentError(at + " has no usable name");
    }
    if (!PlainHost(member.host)) {
      return absl::InvalidArgumentError(absl::StrCat(at, " (", member.name, ") has a bad host"));
    }
    auto port = m.fields().find("port");
    const double p = port == m.fields().end() ? 0 : port->second.number_value();
    if (!(p >= 1 && p <= 65535 && std::floor(p) == p)) {
      return absl::InvalidArgumentError(absl::StrCat(at, " (", member.name, ") has a bad port"));
    }
    member.port = static_cast<int>(p);
    if (!names.insert(member.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(at, ": duplicate name ", member.name));
    }
    if (member.role == "leader") {
      if (!view.leader.empty()) {
        return absl::InvalidArgumentError("Patroni /cluster: more than one leader");
      }
      view.leader = member.name;
    }
    view.members.push_back(std::move(member));
  }
  return view;
}

absl::StatusOr<std::string> HttpGet(const HttpEndpoint& endpoint, absl::string_view path,
                                    absl::Time deadline, size_t max_bytes) {
  const std::string where = absl::StrCat("http://", endpoint.host, ":", endpoint.port, path);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port = absl::StrCat(endpoint.port);
  // Name lookup is blocking; configured endpoints are addresses or names the
  // resolver answers quickly (Kubernetes services, /etc/hosts).
  if (int rc = getaddrinfo(endpoint.host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return absl::UnavailableError(absl::StrCat(where, ": ", gai_strerror(rc)));
  }
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> addresses(found, freeaddrinfo);
  Fd fd(socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (fd.get() < 0) return absl::UnavailableError(absl::StrCat("socket: ", strerror(errno)));
  if (connect(fd.get(), found->ai_addr, found->ai_addrlen) != 0 && errno != EINPROGRESS) {
    return absl::UnavailableError(absl::StrCat(where, ": connect: ", strerror(errno)));
  }
  absl::StatusOr<bool> ready = WaitForSocket(fd.get(), POLLOUT, deadline);
  if (!ready.ok()) return ready.status();
  if (!*ready) return absl::DeadlineExceededError(absl::StrCat(where, ": connect timed out"));
  int error = 0;
  socklen_t len = sizeof(error);
  getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &error, &len);
  if (error != 0) {
    return absl::UnavailableError(absl::StrCat(where, ": connect: ", strerror(error)));
  }

  const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", endpoint.host, ":",
                                           endpoint.port, "\r\nAccept: application/json\r\n\r\n");
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t n = send(fd.get(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += n;
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
      return absl::UnavailableError(absl::StrCat(where, ": send: ", strerror(errno)));
    }
    ready = WaitForSocket(fd.get(), POLLOUT, deadline);
    if (!ready.ok()) return ready.status();
    if (!*ready) return absl::DeadlineExceededError(absl::StrCat(where, ": send timed out"));
  }

  // HTTP/1.0: the answer ends when the server closes the connection.
  std::string reply;
  const size_t limit = max_bytes + 16 * 1024;  // room for the headers
  char buf[16384];
  for (;;) {
    const ssize_t n = recv(fd.get(), buf, sizeof(buf), 0);
    if (n > 0) {
      reply.append(buf, n);
      if (reply.size() > limit) {
        return absl::ResourceExhaustedError(
            absl::StrCat(where, ": answer larger than ", max_bytes, " bytes"));
      }
      continue;
    }
    if (n == 0) break;
    if (errno != EAGAIN && errno != EINTR) {
      return absl::UnavailableError(absl::StrCat(where, ": recv: ", strerror(errno)));
    }
    ready = WaitForSocket(fd.get(), POLLIN, deadline);
    if (!ready.ok()) return ready.status();
    if (!*ready) return absl::DeadlineExceededError(absl::StrCat(where, ": answer timed out"));
  }

  const size_t header_end = reply.find("\r\n\r\n");
  if (!absl::StartsWith(reply, "HTTP/1.") || header_end == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": the answer is not HTTP"));
  }
  std::vector<absl::string_view> status_line =
      absl::StrSplit(absl::string_view(reply).substr(0, reply.find("\r\n")), ' ');
  int status = 0;
  if (status_line.size() < 2 || !absl::SimpleAtoi(status_line[1], &status)) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": bad HTTP status line"));
  }
  const std::string headers = absl::AsciiStrToLower(reply.substr(0, header_end));
  if (absl::StrContains(headers, "transfer-encoding: chunked")) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": chunked answers are not supported"));
  }
  if (status != 200) {
    return absl::UnavailableError(absl::StrCat(where, ": HTTP ", status));
  }
  std::string body = reply.substr(header_end + 4);
  if (body.size() > max_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat(where, ": answer larger than ", max_bytes, " bytes"));
  }
  return body;
}

absl::StatusOr<PatroniClusterView> FetchPatroniCluster(absl::string_view url, absl::Time deadline) {
  absl::StatusOr<HttpEndpoint> endpoint = ParseHttpEndpoint(url);
  if (!endpoint.ok()) return endpoint.status();
  absl::StatusOr<std::string> body = HttpGet(*endpoint, "/cluster", deadline);
  if (!body.ok()) return body.status();
  return ParsePatroniCluster(*body);
}

}  // namespace poolside::db
