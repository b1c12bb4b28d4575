#ifndef POOLSIDE_CLI_CONNECTION_H_
#define POOLSIDE_CLI_CONNECTION_H_

// Connection options every `poolside` command shares: the bearer token and
// transport security. They are taken out of the arguments before a command
// parses the rest, so every command accepts them anywhere:
//
//   --token=T        bearer token (default $POOLSIDE_TOKEN); --token_file=F reads it
//                    from a file ($POOLSIDE_TOKEN_FILE)
//   --tls            TLS with the system's trusted roots
//   --tls_ca=F       TLS, server certificate verified against this PEM CA
//                    ($POOLSIDE_TLS_CA)
//   --tls_cert=F --tls_key=F   client certificate (mutual TLS)
//   --tls_server_name=N        name expected in the server's certificate
//
// Without --tls or a CA the CLI connects in plaintext (the devstack's loopback
// ports); a "unix:" address is always plaintext.
//
// Pure functions apart from reading the environment and the token file.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::cli {

struct ConnectionOptions {
  std::string token;
  v1::ClientTlsConfig tls;
};

// Removes the connection options from `args` (both --name=value and --name
// value forms, up to a "--") and returns them, with the environment's defaults
// under them. INVALID_ARGUMENT for a missing value or an unreadable token file.
absl::StatusOr<ConnectionOptions> TakeConnectionOptions(std::vector<std::string>& args);

// A channel to `addr` with `options` (common/server/channel.h).
absl::StatusOr<std::shared_ptr<grpc::Channel>> OpenChannel(const std::string& addr,
                                                           const ConnectionOptions& options);

// Usage lines describing the options above.
const char* ConnectionUsageText();

// Exit statuses every command shares: success; the command ran and reports a
// failure (an unhealthy database, rejected rows); an error (bad arguments, a
// failed call).
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitError = 2;

}  // namespace poolside::cli

#endif  // POOLSIDE_CLI_CONNECTION_H_
