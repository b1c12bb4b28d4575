#include "common/server/channel.h"

#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/telemetry/trace_grpc.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/support/client_interceptor.h"

namespace poolside::server {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read ", what, " file ", path));
  std::ostringstream out;
  out << in.rdbuf();
  if (out.str().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " file ", path, " is empty"));
  }
  return out.str();
}

// Adds the bearer token to every call's initial metadata.
class BearerTokenInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit BearerTokenInterceptor(const std::string* value) : value_(value) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      std::multimap<std::string, std::string>* md = methods->GetSendInitialMetadata();
      if (md->find("authorization") == md->end()) md->emplace("authorization", *value_);
    }
    methods->Proceed();
  }

 private:
  const std::string* value_;
};

class BearerTokenFactory : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerTokenFactory(std::string value) : value_(std::move(value)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new BearerTokenInterceptor(&value_);
  }

 private:
  const std::string value_;  // outlives every call: the channel owns this factory
};

}  // namespace

v1::ClientTlsConfig PlaintextTls() {
  v1::ClientTlsConfig tls;
  tls.set_plaintext(true);
  return tls;
}

bool IsUnixTarget(const std::string& target) { return absl::StartsWith(target, "unix"); }

std::string BearerAuthorization(const std::string& token) { return absl::StrCat("Bearer ", token); }

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentialsFor(
    const std::string& target, const v1::ClientTlsConfig& tls) {
  if (tls.plaintext() || IsUnixTarget(target)) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  if (!tls.ca_file().empty()) {
    absl::StatusOr<std::string> ca = ReadPem(tls.ca_file(), "CA");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *std::move(ca);
  }
  if (tls.cert_file().empty() != tls.key_file().empty()) {
    return absl::InvalidArgumentError(
        "a client certificate needs both certFile and keyFile (PEM files)");
  }
  if (!tls.cert_file().empty()) {
    absl::StatusOr<std::string> cert = ReadPem(tls.cert_file(), "client certificate");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPem(tls.key_file(), "client key");
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *std::move(cert);
    ssl.pem_private_key = *std::move(key);
  }
  return grpc::SslCredentials(ssl);
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(ChannelOptions options) {
  if (options.target.empty()) return absl::InvalidArgumentError("no target address to connect to");
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds =
      ChannelCredentialsFor(options.target, options.tls);
  if (!creds.ok()) return creds.status();
  if (!options.tls.plaintext() && !options.tls.server_name().empty()) {
    options.args.SetSslTargetNameOverride(options.tls.server_name());
  }
  if (!options.retries) options.args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  if (options.trace) interceptors.push_back(telemetry::NewClientTracingInterceptorFactory());
  if (!options.bearer_token.empty()) {
    interceptors.push_back(
        std::make_unique<BearerTokenFactory>(BearerAuthorization(options.bearer_token)));
  }
  if (interceptors.empty()) {
    return grpc::CreateCustomChannel(options.target, *creds, options.args);
  }
  return grpc::experimental::CreateCustomChannelWithInterceptors(
      options.target, *creds, options.args, std::move(interceptors));
}

}  // namespace poolside::server
