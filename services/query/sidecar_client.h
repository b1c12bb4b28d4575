#ifndef POOLSIDE_SERVICES_QUERY_SIDECAR_CLIENT_H_
#define POOLSIDE_SERVICES_QUERY_SIDECAR_CLIENT_H_

// CacheClient over gRPC to the cache sidecar (poolside.v1.CacheService), with
// the callback API: no thread waits on the sidecar. Each Get/Set is bounded by
// `call_timeout`.
//
// Gets are batched without waiting: at most kMaxGetCallsInFlight lookups
// calls are out at once; Gets arriving while they are all out queue, and the
// next call to leave carries every queued key (GetMany). Under light load each
// Get is its own call; under heavy load one call carries many, which is what
// keeps a cache hit cheaper than the database query it replaces.
//
// Watch() keeps one WatchInvalidations stream open, read with the callback API
// (events are handed to `on_event` on gRPC's threads, which must not block), and
// watches again 100 ms to 1 s after a stream ends or cannot start; a thread of
// its own only waits for a stream to end and the backoff. (A blocking reader
// would make that thread poll the process's gRPC file descriptors too, ~8% of
// query_server's CPU under load.)

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"

#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "absl/status/statusor.h"
#include "proto/poolside/v1/cache.grpc.pb.h"
#include "proto/poolside/v1/config.pb.h"
#include "common/telemetry/trace_context.h"
#include "services/query/cache_client.h"

namespace poolside::query {

class SidecarClient : public CacheClient {
 public:
  static constexpr int kMaxGetCallsInFlight = 4;
  static constexpr int kMaxKeysPerCall = 256;

  // `target`: "unix:/path" or "host:port" (TLS per `tls`, see common/server/channel.h).
  // While a call (the watch) is open, the connection is pinged after
  // `keepalive` without traffic and dropped when a ping goes unanswered for
  // `keepalive` (the sidecar must accept pings that often: common/server does).
  // INVALID_ARGUMENT when the TLS files cannot be read.
  static absl::StatusOr<std::unique_ptr<SidecarClient>> Create(const std::string& target,
                                                               const v1::ClientTlsConfig& tls,
                                                               absl::Duration call_timeout,
                                                               absl::Duration keepalive);
  SidecarClient(std::shared_ptr<grpc::Channel> channel, absl::Duration call_timeout);
  // Stops watching and waits until every call has ended and freed its
  // ClientContext (so not callable from one of this client's callbacks). A
  // context holds the channel: freed on a gRPC callback thread after this
  // client let go of the channel, it would drop the last reference there, and
  // gRPC 1.51 then frees that thread's completion queue under it
  // (grpc/grpc#32584).
  ~SidecarClient() override;

  void Get(const std::string& key,
           std::function<void(absl::StatusOr<CacheLookup>)> done) override;
  void Set(CacheFill fill, std::function<void(absl::StatusOr<bool>)> done) override;
  void Invalidate(std::vector<std::string> tags, bool flush_all, std::string source,
                  absl::Duration timeout, std::function<void(absl::Status)> done) override;
  bool Watch(std::function<void(const CacheInvalidationEvent&)> on_event) override;
  void StopWatching() override;

 private:
  struct PendingGet {
    std::string key;
    std::function<void(absl::StatusOr<CacheLookup>)> done;
    // The caller's span context: a call carrying several Gets (it may leave
    // from another thread) continues the first one's trace.
    telemetry::SpanContext trace;
  };
  // Moves up to kMaxKeysPerCall queued Gets into `batch`.
  void TakeQueued(std::vector<PendingGet>* batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SendGets(std::vector<PendingGet> batch);
  // After a lookup call finished: sends what queued meanwhile (or frees the
  // call's slot), then answers `batch` with `results` (or `status`).
  void GetsDone(std::vector<PendingGet> batch, const grpc::Status& status,
                std::vector<v1::CacheGetResponse*> results);

  // Every call is counted from before it starts until its context is freed.
  template <typename Request, typename Response>
  struct Call;
  template <typename Request, typename Response>
  Call<Request, Response>* NewCall(absl::Duration timeout);
  template <typename Request, typename Response>
  void EndCall(Call<Request, Response>* call);

  const absl::Duration call_timeout_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::CacheService::Stub> stub_;

  class WatchReactor;
  void WatchLoop(std::function<void(const CacheInvalidationEvent&)> on_event);

  absl::Mutex mu_;
  std::vector<PendingGet> queued_ ABSL_GUARDED_BY(mu_);
  int get_calls_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  int calls_ ABSL_GUARDED_BY(mu_) = 0;

  absl::Mutex watch_mu_;
  // The open watch's context, to cancel it.
  grpc::ClientContext* watch_context_ ABSL_GUARDED_BY(watch_mu_) = nullptr;
  absl::Notification stop_watching_;
  std::thread watcher_;
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_SIDECAR_CLIENT_H_
