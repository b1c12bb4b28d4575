#ifndef POOLSIDE_SERVICES_CACHE_CACHE_SERVICE_H_
#define POOLSIDE_SERVICES_CACHE_CACHE_SERVICE_H_

// gRPC adapter of the cache sidecar (proto/poolside/v1/cache.proto) over a
// CacheStore. A queue service (common/server/queue_service.h): one thread
// polls the server's completion queue and answers every call inline, since the
// store's work is a short critical section, never I/O. That thread owns the
// watches; nothing here blocks it.
//
// Request validation (INVALID_ARGUMENT, with the limit in the message):
//   - key: non-empty, at most max_key_bytes;
//   - GetMany: 1 to kMaxGetManyKeys keys;
//   - Set: ttl_ms in [1, max_ttl_ms], stale_ms at most max_ttl_ms, at most
//     max_tags tags, each non-empty and at most max_key_bytes;
//   - Invalidate: at least one tag or prefix, or flush_all; no empty tag or
//     prefix (an empty prefix would be a flush: say flush_all).
// WatchInvalidations streams every Invalidate and Delete this service
// applies, after applying it, to each watcher (see cache.proto). Events wait
// in a per-watch queue of at most kMaxQueuedEvents; a watch whose queue is
// full is ended with RESOURCE_EXHAUSTED (its watcher then drops what it holds
// and watches again). EndWatches() ends every watch, e.g. before the server
// drains, since a watch never ends on its own.
//
// A well-formed entry that does not fit (key + value above max_entry_bytes, or
// its charge above a shard's budget) is not an error: the response says
// stored=false, reason=TOO_LARGE, and the caller simply does not cache it.
//
// Threading: the handlers and the watches run on the queue thread only;
// EndWatches() is for other threads.

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "common/cache/cache_store.h"
#include "common/server/queue_service.h"
#include "proto/poolside/v1/cache.grpc.pb.h"

namespace poolside::cache {

struct CacheServiceLimits {
  uint32_t max_key_bytes = 4096;
  uint32_t max_ttl_ms = 86400000;
  uint32_t max_tags = 64;
};

class CacheServiceImpl final : public server::QueueService {
 public:
  static constexpr int kMaxGetManyKeys = 1024;
  static constexpr size_t kMaxQueuedEvents = 4096;

  CacheServiceImpl(CacheStore* store, CacheServiceLimits limits)
      : store_(store), limits_(limits) {}
  // The server must have shut down (no call left).
  ~CacheServiceImpl() override;

  grpc::Service* grpc_service() override { return &async_; }
  std::string service_name() const override { return v1::CacheService::service_full_name(); }
  void Begin(grpc::ServerCompletionQueue* cq, telemetry::ServerCallTelemetry* calls) override;

  // The calls, on the queue thread.
  absl::Status Get(const v1::CacheGetRequest& request, v1::CacheGetResponse* response);
  absl::Status GetMany(const v1::CacheGetManyRequest& request, v1::CacheGetManyResponse* response);
  absl::Status Set(const v1::CacheSetRequest& request, v1::CacheSetResponse* response);
  absl::Status Delete(const v1::CacheDeleteRequest& request, v1::CacheDeleteResponse* response);
  absl::Status Invalidate(const v1::CacheInvalidateRequest& request,
                          v1::CacheInvalidateResponse* response);
  absl::Status GetStats(const v1::CacheGetStatsRequest& request, v1::CacheStats* response);

  // Ends every open watch (status UNAVAILABLE); watches begun later are
  // refused the same way. Returns once that has happened on the queue thread,
  // so not callable from it; the server must still be running.
  void EndWatches();

 private:
  class Watch;
  // Queues `event` on every watch.
  void Publish(const v1::CacheInvalidationEvent& event);

  absl::Status CheckKey(const std::string& key) const;
  void Lookup(const std::string& key, v1::CacheGetResponse* response) const;

  CacheStore* const store_;
  const CacheServiceLimits limits_;
  v1::CacheService::AsyncService async_;
  grpc::ServerCompletionQueue* cq_ = nullptr;
  const telemetry::ServerCallTelemetry::Method* watch_method_ = nullptr;

  server::OpenCalls<Watch> watches_;
};

}  // namespace poolside::cache

#endif  // POOLSIDE_SERVICES_CACHE_CACHE_SERVICE_H_
