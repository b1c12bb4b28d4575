#ifndef POOLSIDE_COMMON_SERVER_TLS_H_
#define POOLSIDE_COMMON_SERVER_TLS_H_

// Server-side transport security from v1::TlsConfig: a certificate and key
// (optionally a client CA, optionally required: mutual TLS), or plaintext when
// the configuration says so explicitly. A configuration with neither is an
// error, so a service never serves plaintext by accident.

#include <memory>

#include "absl/status/statusor.h"
#include "grpcpp/security/server_credentials.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::server {

// Checks `tls` and reads its PEM files. INVALID_ARGUMENT with the field to fix
// (named as in the JSON configuration, under "server.tls") otherwise.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFor(
    const v1::TlsConfig& tls);

// ServerCredentialsFor(tls).status(): for --check_config and config loaders.
absl::Status ValidateServerTls(const v1::TlsConfig& tls);

// A TlsConfig that says plaintext explicitly (loopback, tests).
v1::TlsConfig PlaintextServerTls();

}  // namespace poolside::server

#endif  // POOLSIDE_COMMON_SERVER_TLS_H_
