#include "common/config/tls_config.h"

#include <unistd.h>

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace poolside::config {
namespace {

absl::Status Readable(absl::string_view field, const std::string& path) {
  if (path.empty() || access(path.c_str(), R_OK) == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(field, ": cannot read ", path));
}

}  // namespace

absl::Status ValidateServerTlsConfig(const v1::TlsConfig& tls) {
  const bool has_cert = !tls.cert_file().empty() || !tls.key_file().empty();
  if (tls.plaintext()) {
    if (has_cert || !tls.client_ca_file().empty() || tls.require_client_cert()) {
      return absl::InvalidArgumentError(
          "server.tls: plaintext is true but certificate settings are given too; choose one");
    }
    return absl::OkStatus();
  }
  if (!has_cert) {
    return absl::InvalidArgumentError(
        "server.tls: no certificate configured: set server.tls.certFile and keyFile (PEM), or "
        "server.tls.plaintext: true to serve without TLS (loopback or development only)");
  }
  if (tls.cert_file().empty() || tls.key_file().empty()) {
    return absl::InvalidArgumentError("server.tls: certFile and keyFile go together");
  }
  if (tls.require_client_cert() && tls.client_ca_file().empty()) {
    return absl::InvalidArgumentError(
        "server.tls.requireClientCert needs server.tls.clientCaFile (the CA that signs client "
        "certificates)");
  }
  if (absl::Status s = Readable("server.tls.certFile", tls.cert_file()); !s.ok()) return s;
  if (absl::Status s = Readable("server.tls.keyFile", tls.key_file()); !s.ok()) return s;
  return Readable("server.tls.clientCaFile", tls.client_ca_file());
}

absl::Status ValidateClientTlsConfig(absl::string_view where, absl::string_view target,
                                     const v1::ClientTlsConfig& tls) {
  if (absl::StartsWith(target, "unix") || tls.plaintext()) return absl::OkStatus();
  if (tls.cert_file().empty() != tls.key_file().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": certFile and keyFile go together"));
  }
  if (absl::Status s = Readable(absl::StrCat(where, ".caFile"), tls.ca_file()); !s.ok()) return s;
  if (absl::Status s = Readable(absl::StrCat(where, ".certFile"), tls.cert_file()); !s.ok()) {
    return s;
  }
  return Readable(absl::StrCat(where, ".keyFile"), tls.key_file());
}

}  // namespace poolside::config
