#ifndef POOLSIDE_COMMON_CONFIG_TLS_CONFIG_H_
#define POOLSIDE_COMMON_CONFIG_TLS_CONFIG_H_

// Validation of the TLS sections of a configuration, for the config loaders
// (so --check_config reports them) and for common/server/tls. No gRPC here.

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::config {

// server.tls: a certificate and key, or plaintext explicitly (not both);
// requireClientCert needs clientCaFile; every named file is readable.
// INVALID_ARGUMENT naming the field otherwise.
absl::Status ValidateServerTlsConfig(const v1::TlsConfig& tls);

// A client's TLS section (`where`, e.g. "cache.tls") for `target`: certFile and
// keyFile together, named files readable. A "unix:" target ignores it.
absl::Status ValidateClientTlsConfig(absl::string_view where, absl::string_view target,
                                     const v1::ClientTlsConfig& tls);

}  // namespace poolside::config

#endif  // POOLSIDE_COMMON_CONFIG_TLS_CONFIG_H_
