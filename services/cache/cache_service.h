#ifndef POOLSIDE_SERVICES_CACHE_CACHE_SERVICE_H_
#define POOLSIDE_SERVICES_CACHE_CACHE_SERVICE_H_

// gRPC adapter of the cache sidecar (proto/poolside/v1/cache.proto) over a
// CacheStore. A queue service (common/server/queue_service.h): one thread
// polls the server's completion queue and answers every call inline, since the
// store's work is a short critical section, never I/O (why one thread:
// docs/design.md, "Threading: one queue thread (decision record)"). That
// thread owns the watches; nothing here blocks it.
//
// Authentication (common/auth): with an Authorizer, every call needs a known
// bearer token (UNAUTHENTICATED), is admitted under its principal's limits
// (RESOURCE_EXHAUSTED) and needs the "read" role for Get, GetMany, GetStats
// and WatchInvalidations, "write" for Set, Delete and Invalidate
// (PERMISSION_DENIED). Without one every caller may do everything: the
// configuration allows that only where the transport keeps strangers out
// (services/cache/cache_config.h).
//
// Request validation (INVALID_ARGUMENT, with the limit in the message):
//   - key: non-empty, at most max_key_bytes;
//   - GetMany: 1 to kMaxGetManyKeys keys;
//   - Set: ttl_ms in [1, max_ttl_ms], stale_ms at most max_ttl_ms, at most
//     max_tags tags, each non-empty and at most max_key_bytes;
//   - Invalidate: at least one tag or prefix, or flush_all; at most
//     max_invalidate_tags tags and max_invalidate_prefixes prefixes, each
//     non-empty (an empty prefix would be a flush: say flush_all) and at most
//     max_key_bytes, together at most max_invalidate_bytes; a source of at most
//     kMaxSourceBytes.
//
// Set needs a read_generation this process handed out (in a Get, GetMany,
// GetStats or Invalidate answer, or a watch event): 0, one from an earlier
// incarnation of the sidecar, or one above the current generation is
// FAILED_PRECONDITION (the request is well-formed, but made against a state
// this sidecar never had), and nothing is stored. A read_generation that was
// handed out but is older than an invalidation covering the entry is not an
// error: stored=false, reason=INVALIDATED.
//
// WatchInvalidations streams every Invalidate and Delete this service
// applies, after applying it, to each watcher (see cache.proto). Each event
// is built once and shared by every watch's queue. A watch's queue holds at
// most kMaxQueuedEvents events and kMaxQueuedEventBytes bytes (one event is
// always let in); a watcher that falls further behind is ended with
// RESOURCE_EXHAUSTED and a message telling it to drop what it holds and watch
// again. At most kMaxWatches watches exist at once (ended ones still waiting
// for their transport included); more are ended RESOURCE_EXHAUSTED at once.
// EndWatches() ends every watch, e.g. before the server drains, since a watch
// never ends on its own.
//
// A well-formed entry that does not fit (key + value above max_entry_bytes, or
// its charge above a shard's budget) is not an error: the response says
// stored=false, reason=TOO_LARGE, and the caller simply does not cache it.
//
// Threading: the handlers and the watches run on the queue thread only
// (checked: server::QueueThread); EndWatches() is for other
// threads.

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "common/auth/authorizer.h"
#include "common/cache/cache_store.h"
#include "common/server/queue_service.h"
#include "proto/poolside/v1/cache.grpc.pb.h"

namespace poolside::cache {

struct CacheServiceLimits {
  uint32_t max_key_bytes = 4096;
  uint32_t max_ttl_ms = 86400000;
  uint32_t max_tags = 64;
  uint32_t max_invalidate_tags = 1024;
  uint32_t max_invalidate_prefixes = 64;
  uint32_t max_invalidate_bytes = 256 << 10;
};

class CacheServiceImpl final : public server::QueueService {
 public:
  static constexpr int kMaxGetManyKeys = 1024;
  static constexpr size_t kMaxQueuedEvents = 4096;
  static constexpr size_t kMaxQueuedEventBytes = size_t{4} << 20;
  static constexpr size_t kMaxWatches = 64;
  static constexpr size_t kMaxSourceBytes = 128;

  // `authorizer`: null for no authentication; else outlives the service.
  CacheServiceImpl(CacheStore* store, CacheServiceLimits limits,
                   auth::Authorizer* authorizer = nullptr)
      : store_(store), limits_(limits), authorizer_(authorizer) {}
  // The server must have shut down (no call left).
  ~CacheServiceImpl() override;

  grpc::Service* grpc_service() override { return &async_; }
  std::string service_name() const override { return v1::CacheService::service_full_name(); }
  void Begin(grpc::ServerCompletionQueue* cq, telemetry::ServerCallTelemetry* calls) override;

  // The calls, on the queue thread, after authentication.
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
  // A call of `kHandle` by a caller holding `kRole` (see the header comment).
  template <typename Request, typename Response,
            absl::Status (CacheServiceImpl::*kHandle)(const Request&, Response*), auth::Role kRole>
  absl::Status Authorized(const grpc::ServerContext& context, const Request& request,
                          Response* response);
  absl::Status Authorize(const grpc::ServerContext& context, auth::Role role) const;
  // Queues `event` on every watch.
  void Publish(const v1::CacheInvalidationEvent& event);

  absl::Status CheckKey(const std::string& key) const;
  void Lookup(const std::string& key, v1::CacheGetResponse* response) const;

  CacheStore* const store_;
  const CacheServiceLimits limits_;
  auth::Authorizer* const authorizer_;
  v1::CacheService::AsyncService async_;
  grpc::ServerCompletionQueue* cq_ = nullptr;
  const telemetry::ServerCallTelemetry::Method* watch_method_ = nullptr;

  server::OpenCalls<Watch> watches_;
  // Watches admitted and not yet deleted: the open ones and the ended ones
  // still waiting for their last write or their transport.
  size_t live_watches_ = 0;
};

}  // namespace poolside::cache

#endif  // POOLSIDE_SERVICES_CACHE_CACHE_SERVICE_H_
