#include "common/server/tls.h"

#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/config/tls_config.h"

namespace poolside::server {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* field) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat("server.tls.", field, ": cannot read ", path));
  }
  std::ostringstream out;
  out << in.rdbuf();
  if (out.str().find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("server.tls.", field, ": ", path, " holds no PEM data"));
  }
  return out.str();
}

}  // namespace

v1::TlsConfig PlaintextServerTls() {
  v1::TlsConfig tls;
  tls.set_plaintext(true);
  return tls;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFor(
    const v1::TlsConfig& tls) {
  if (absl::Status s = config::ValidateServerTlsConfig(tls); !s.ok()) return s;
  if (tls.plaintext()) return grpc::InsecureServerCredentials();
  absl::StatusOr<std::string> cert = ReadPem(tls.cert_file(), "certFile");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadPem(tls.key_file(), "keyFile");
  if (!key.ok()) return key.status();
  grpc_ssl_client_certificate_request_type request = GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
  std::string ca;
  if (!tls.client_ca_file().empty()) {
    absl::StatusOr<std::string> read = ReadPem(tls.client_ca_file(), "clientCaFile");
    if (!read.ok()) return read.status();
    ca = *std::move(read);
    request = tls.require_client_cert() ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                        : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  grpc::SslServerCredentialsOptions options(request);
  options.pem_root_certs = ca;
  options.pem_key_cert_pairs.push_back({*std::move(key), *std::move(cert)});
  return grpc::SslServerCredentials(options);
}

absl::Status ValidateServerTls(const v1::TlsConfig& tls) {
  return ServerCredentialsFor(tls).status();
}

}  // namespace poolside::server
