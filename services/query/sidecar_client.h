#ifndef POOLSIDE_SERVICES_QUERY_SIDECAR_CLIENT_H_
#define POOLSIDE_SERVICES_QUERY_SIDECAR_CLIENT_H_

// CacheClient over gRPC to the cache sidecar (poolside.v1.CacheService), with
// gRPC's async API on one completion queue: no thread waits on the sidecar.
// Each Get/Set is bounded by `call_timeout`, each Invalidate by its own
// timeout.
//
// Every call's completion is delivered to a completion queue whose every tag
// is a server::QueueTag, and runs on the one thread that polls it: at first
// the client's own queue and thread; after UseQueue(), a queue another thread
// polls (query_server's server queue). Not the callback API: any use of it in
// a process starts gRPC's polling threads, which would take work away from
// the server's one queue thread (docs/design.md, "Threading: one queue
// thread (decision record)").
//
// Gets are batched without waiting: at most kMaxGetCallsInFlight lookup
// calls are out at once; Gets arriving while they are all out queue, and the
// next call to leave carries every queued key (GetMany). Under light load each
// Get is its own call; under heavy load one call carries many, which is what
// keeps a cache hit cheaper than the database query it replaces.
//
// Set: a fill the sidecar refuses because its read_generation is not one the
// sidecar handed out (FAILED_PRECONDITION: e.g. the sidecar restarted between
// the Get and the Set) answers OK(false), like any other refused fill.
//
// Invalidate sends its tags in calls of at most kMaxTagsPerInvalidate tags and
// kMaxBytesPerInvalidate bytes (the sidecar's default per-request bounds),
// and answers once every call has: OK only if all were.
//
// With a bearer token (the sidecar's auth principals), every call and the
// watch carry it.
//
// Watch() keeps one WatchInvalidations stream open, read on the queue, and
// watches again 100 ms to 1 s after a stream ends or cannot start, whatever
// ended it (e.g. RESOURCE_EXHAUSTED: this client fell behind and the sidecar
// dropped events for it): `on_event` gets kBroken at the end and kSubscribed
// once watching again, and its owner drops what it kept meanwhile (the near
// cache stops serving at kBroken and empties itself at kSubscribed). A thread of
// its own only waits (on a mutex, never on gRPC) for a stream to end and for
// the backoff, and starts the next stream.
//
// Threading: Get/Set/Invalidate may be called from any thread, also from a
// done callback. Done callbacks and `on_event` run on the queue thread (after
// Close(): inline), must not block, and are not blocked on by this client.
// UseQueue, Close, StopWatching and the destructor wait, so they must not be
// called from the queue thread (checked: server::QueueThread),
// and need the queue to be polled meanwhile.
//
// Lifetime (query_server): Create, UseQueue(server queue), Watch, ...,
// Close() before the server's queue is shut down, destroy.

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/server/queue_thread.h"
#include "common/telemetry/trace_context.h"
#include "grpcpp/grpcpp.h"
#include "proto/poolside/v1/cache.grpc.pb.h"
#include "proto/poolside/v1/config.pb.h"
#include "services/query/cache_client.h"

namespace poolside::query {

class SidecarClient : public CacheClient {
 public:
  static constexpr int kMaxGetCallsInFlight = 4;
  static constexpr int kMaxKeysPerCall = 256;
  static constexpr size_t kMaxTagsPerInvalidate = 1024;
  static constexpr size_t kMaxBytesPerInvalidate = 256 << 10;

  // `target`: "unix:/path" or "host:port" (TLS per `tls`, see common/server/channel.h).
  // While a call (the watch) is open, the connection is pinged after
  // `keepalive` without traffic and dropped when a ping goes unanswered for
  // `keepalive` (the sidecar must accept pings that often: common/server does).
  // `bearer_token`: sent with every call when not empty. INVALID_ARGUMENT when
  // the TLS files cannot be read.
  static absl::StatusOr<std::unique_ptr<SidecarClient>> Create(
      const std::string& target, const v1::ClientTlsConfig& tls, absl::Duration call_timeout,
      absl::Duration keepalive, const std::string& bearer_token = "");
  // The same from the query service's (validated) cache configuration: target,
  // tls, callTimeoutMs, keepaliveMs, and the token from tokenEnv or tokenFile
  // (INVALID_ARGUMENT naming the setting when it cannot be read or is empty).
  static absl::StatusOr<std::unique_ptr<SidecarClient>> Create(const v1::QueryCacheConfig& config);
  // Starts the client's own completion queue and the thread polling it.
  SidecarClient(std::shared_ptr<grpc::Channel> channel, absl::Duration call_timeout);
  // Close(), then stops the own queue's thread if UseQueue() did not.
  ~SidecarClient() override;

  // From now on every call, and the watch, starts on `cq`, which another
  // thread polls, handing every tag to server::QueueTag::Proceed. Waits until
  // every call started on the own queue has ended, then stops the own queue
  // and its thread. Call at most once, before Watch() (a watch already open
  // on the own queue is ended and watched again on `cq`). Calls made
  // meanwhile go to whichever queue is current when they start.
  void UseQueue(grpc::CompletionQueue* cq);

  // Stops watching, then waits until every call has ended and freed its
  // ClientContext; the queue must still be polled. Afterwards Get/Set/
  // Invalidate answer UNAVAILABLE inline without touching gRPC, and Watch()
  // returns false. Idempotent.
  //
  // Why wait: each call's tag points into this client, and a queue is only
  // drained once its calls have come back (the watch never does by itself).
  // A context also holds the channel; freed while this client still holds it,
  // it never drops the channel's last reference on the queue thread (on a
  // callback thread that freed the thread's completion queue under it in
  // gRPC 1.51, grpc/grpc#32584).
  void Close();

  void Get(const std::string& key, std::function<void(absl::StatusOr<CacheLookup>)> done) override;
  void Set(CacheFill fill, std::function<void(absl::StatusOr<bool>)> done) override;
  void Invalidate(std::vector<std::string> tags, bool flush_all, std::string source,
                  absl::Duration timeout, std::function<void(absl::Status)> done) override;
  bool Watch(std::function<void(const CacheInvalidationEvent&)> on_event) override;
  // Ends the watch and waits for its stream to end (the queue must be
  // polled); `on_event` is not called once this returned. Safe before and
  // after Close().
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
  // After a lookup call finished (or could not start): sends what queued
  // meanwhile (or frees the call's slot), then answers `batch` with
  // `results` (or `status`).
  void GetsDone(std::vector<PendingGet> batch, const grpc::Status& status,
                std::vector<v1::CacheGetResponse*> results);

  // Every call is counted from before it starts until its context is freed.
  // BeginCall: false once closed; else counts the call and names its queue.
  bool BeginCall(grpc::CompletionQueue** cq, bool* on_own_queue);
  void EndCall(bool on_own_queue);
  // A unary call: its tag, finished on the queue thread.
  template <typename Request, typename Response>
  struct Call;
  // Null once closed.
  template <typename Request, typename Response>
  Call<Request, Response>* NewCall(absl::Duration timeout);

  const absl::Duration call_timeout_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::CacheService::Stub> stub_;
  // Until UseQueue(); only it and the destructor touch these.
  std::unique_ptr<grpc::CompletionQueue> own_cq_;
  std::unique_ptr<server::QueueThread> own_thread_;

  absl::Mutex mu_;
  grpc::CompletionQueue* cq_ ABSL_GUARDED_BY(mu_);  // where calls start
  bool on_own_queue_ ABSL_GUARDED_BY(mu_) = true;   // cq_ is own_cq_
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<PendingGet> queued_ ABSL_GUARDED_BY(mu_);
  int get_calls_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  int calls_ ABSL_GUARDED_BY(mu_) = 0;
  int own_queue_calls_ ABSL_GUARDED_BY(mu_) = 0;  // of calls_, those on own_cq_

  // One WatchInvalidations stream, read on the queue.
  class WatchStream;
  void WatchLoop(std::function<void(const CacheInvalidationEvent&)> on_event);
  // The open stream has ended (on the queue thread; its last step).
  void StreamEnded();
  bool StreamEndedOrCancelled() const ABSL_SHARED_LOCKS_REQUIRED(watch_mu_) {
    return !stream_open_ || cancel_stream_;
  }

  // Never held across a gRPC call: the queue thread takes it in StreamEnded().
  // Taken before mu_ when both are.
  absl::Mutex watch_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  bool stop_watching_ ABSL_GUARDED_BY(watch_mu_) = false;
  bool stream_open_ ABSL_GUARDED_BY(watch_mu_) = false;
  bool stream_on_own_queue_ ABSL_GUARDED_BY(watch_mu_) = false;
  // The watcher thread cancels the open stream (it owns it).
  bool cancel_stream_ ABSL_GUARDED_BY(watch_mu_) = false;
  std::thread watcher_ ABSL_GUARDED_BY(watch_mu_);
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_SIDECAR_CLIENT_H_
