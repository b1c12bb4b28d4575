#ifndef POOLSIDE_COMMON_SERVER_CHANNEL_H_
#define POOLSIDE_COMMON_SERVER_CHANNEL_H_

// The one factory for poolside's client channels (CLI, the query service's
// sidecar client, tests, benchmarks): target, transport security and channel
// arguments in one place.
//
//   ChannelOptions o;
//   o.target = "query.example:50051";
//   o.tls.set_ca_file("/etc/poolside/ca.pem");     // or o.tls = PlaintextTls();
//   o.bearer_token = token;                         // optional
//   absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = CreateChannel(o);
//
// Transport security (v1::ClientTlsConfig): a "unix:" target is plaintext; any
// other target uses TLS (CA from tls.ca_file or the system's roots, optional
// client certificate for mutual TLS) unless tls.plaintext is set explicitly.
//
// Thread-safe (no shared state).

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::server {

struct ChannelOptions {
  // "host:port", "dns:///host:port", "unix:/path" ...
  std::string target;
  v1::ClientTlsConfig tls;
  // If set, every call carries "authorization: Bearer <token>" (unless the call
  // sets its own authorization metadata).
  std::string bearer_token;
  grpc::ChannelArguments args;
  // W3C trace context: each call started while a span context is current on
  // the calling thread (telemetry::ScopedSpanContext) carries `traceparent`
  // and, with tracing on, gets a CLIENT span (common/telemetry/trace_grpc.h).
  bool trace = true;
  // gRPC's retry support: the retry filter, which retries transparently a call
  // that never reached the server, and applies retry policies from a service
  // config (poolside sets none). Off saves ~14% of the client's instructions
  // per unary call (bench/results/grpc-static-2026-12-04.md): for callers with
  // a fallback of their own (the query service's sidecar client) and for load
  // generators.
  bool retries = true;
};

// A ClientTlsConfig that says plaintext explicitly (loopback, tests).
v1::ClientTlsConfig PlaintextTls();

// True for targets that are unix domain sockets ("unix:...", "unix-abstract:...").
bool IsUnixTarget(const std::string& target);

// Credentials for `tls` and `target`; INVALID_ARGUMENT naming the file when a
// configured PEM file cannot be read, or a certificate comes without its key.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentialsFor(
    const std::string& target, const v1::ClientTlsConfig& tls);

// A channel (not yet connected) to options.target.
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(ChannelOptions options);

// The metadata value for a bearer token: "Bearer <token>".
std::string BearerAuthorization(const std::string& token);

}  // namespace poolside::server

#endif  // POOLSIDE_COMMON_SERVER_CHANNEL_H_
