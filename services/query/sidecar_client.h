#ifndef POOLSIDE_SERVICES_QUERY_SIDECAR_CLIENT_H_
#define POOLSIDE_SERVICES_QUERY_SIDECAR_CLIENT_H_

// CacheClient over gRPC to the cache sidecar (poolside.v1.CacheService), with
// the callback API: no thread waits on the sidecar. Each Get/Set is bounded by
// `call_timeout`.

#include <memory>
#include <string>

#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "absl/status/statusor.h"
#include "proto/poolside/v1/cache.grpc.pb.h"
#include "proto/poolside/v1/config.pb.h"
#include "services/query/cache_client.h"

namespace poolside::query {

class SidecarClient : public CacheClient {
 public:
  // `target`: "unix:/path" or "host:port" (TLS per `tls`, see common/server/channel.h).
  // INVALID_ARGUMENT when the TLS files cannot be read.
  static absl::StatusOr<std::unique_ptr<SidecarClient>> Create(const std::string& target,
                                                               const v1::ClientTlsConfig& tls,
                                                               absl::Duration call_timeout);
  SidecarClient(std::shared_ptr<grpc::Channel> channel, absl::Duration call_timeout);

  void Get(const std::string& key,
           std::function<void(absl::StatusOr<CacheLookup>)> done) override;
  void Set(CacheFill fill, std::function<void(absl::StatusOr<bool>)> done) override;
  void Invalidate(std::vector<std::string> tags, bool flush_all, std::string source,
                  absl::Duration timeout, std::function<void(absl::Status)> done) override;

 private:
  const absl::Duration call_timeout_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::CacheService::Stub> stub_;
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_SIDECAR_CLIENT_H_
