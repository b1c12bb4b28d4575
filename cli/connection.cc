#include "cli/connection.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/server/channel.h"

namespace poolside::cli {
namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

absl::StatusOr<std::string> ReadToken(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read token file ", path));
  std::ostringstream out;
  out << in.rdbuf();
  std::string token(absl::StripAsciiWhitespace(out.str()));
  if (token.empty())
    return absl::InvalidArgumentError(absl::StrCat("token file ", path, " is empty"));
  return token;
}

}  // namespace

absl::StatusOr<ConnectionOptions> TakeConnectionOptions(std::vector<std::string>& args) {
  ConnectionOptions o;
  o.token = Env("POOLSIDE_TOKEN");
  std::string token_file = Env("POOLSIDE_TOKEN_FILE");
  o.tls.set_ca_file(Env("POOLSIDE_TLS_CA"));
  bool tls = false;
  std::vector<std::string> rest;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      rest.insert(rest.end(), args.begin() + i, args.end());
      break;
    }
    if (a == "--tls") {
      tls = true;
      continue;
    }
    struct Option {
      const char* name;
      std::string* value;
    };
    std::string ca, cert, key, server_name, token, file;
    const Option options[] = {{"--token", &token}, {"--token_file", &file},
                              {"--tls_ca", &ca},   {"--tls_cert", &cert},
                              {"--tls_key", &key}, {"--tls_server_name", &server_name}};
    bool taken = false;
    for (const Option& opt : options) {
      std::string value;
      if (absl::StartsWith(a, absl::StrCat(opt.name, "="))) {
        value = a.substr(std::string(opt.name).size() + 1);
      } else if (a == opt.name) {
        if (i + 1 >= args.size()) {
          return absl::InvalidArgumentError(absl::StrCat(opt.name, " needs a value"));
        }
        value = args[++i];
      } else {
        continue;
      }
      if (value.empty()) return absl::InvalidArgumentError(absl::StrCat(opt.name, " is empty"));
      *opt.value = value;
      taken = true;
      break;
    }
    if (!taken) {
      rest.push_back(a);
      continue;
    }
    if (!token.empty()) o.token = token;
    if (!file.empty()) token_file = file;
    if (!ca.empty()) o.tls.set_ca_file(ca);
    if (!cert.empty()) o.tls.set_cert_file(cert);
    if (!key.empty()) o.tls.set_key_file(key);
    if (!server_name.empty()) o.tls.set_server_name(server_name);
  }
  args = std::move(rest);
  if (o.token.empty() && !token_file.empty()) {
    absl::StatusOr<std::string> t = ReadToken(token_file);
    if (!t.ok()) return t.status();
    o.token = *std::move(t);
  }
  const bool any_tls =
      tls || !o.tls.ca_file().empty() || !o.tls.cert_file().empty() || !o.tls.server_name().empty();
  if (!any_tls) o.tls = server::PlaintextTls();
  return o;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> OpenChannel(const std::string& addr,
                                                           const ConnectionOptions& options) {
  server::ChannelOptions c;
  c.target = addr;
  c.tls = options.tls;
  c.bearer_token = options.token;
  return server::CreateChannel(std::move(c));
}

const char* ConnectionUsageText() {
  return R"(Connection options (every command):
  --token=T            bearer token (or $POOLSIDE_TOKEN); --token_file=F reads it from F
                       (or $POOLSIDE_TOKEN_FILE)
  --tls                use TLS, verifying the server against the system's roots
  --tls_ca=F           use TLS, verifying the server against this PEM CA (or $POOLSIDE_TLS_CA)
  --tls_cert=F --tls_key=F   client certificate and key (mutual TLS)
  --tls_server_name=N  name expected in the server certificate
  Without --tls or a CA the connection is plaintext (the devstack's loopback ports).
)";
}

}  // namespace poolside::cli
