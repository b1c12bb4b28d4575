#ifndef POOLSIDE_SERVICES_CACHE_CACHE_SERVICE_H_
#define POOLSIDE_SERVICES_CACHE_CACHE_SERVICE_H_

// gRPC adapter of the cache sidecar (proto/poolside/v1/cache.proto) over a
// CacheStore. Callback API; every call is answered inline from the gRPC
// thread: the store's work is a short critical section, never I/O.
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
// Thread-safe.

#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

#include "proto/poolside/v1/cache.grpc.pb.h"
#include "common/cache/cache_store.h"

namespace poolside::cache {

struct CacheServiceLimits {
  uint32_t max_key_bytes = 4096;
  uint32_t max_ttl_ms = 86400000;
  uint32_t max_tags = 64;
};

class CacheServiceImpl final : public v1::CacheService::CallbackService {
 public:
  static constexpr int kMaxGetManyKeys = 1024;
  static constexpr size_t kMaxQueuedEvents = 4096;

  CacheServiceImpl(CacheStore* store, CacheServiceLimits limits)
      : store_(store), limits_(limits) {}
  // The server must have shut down (no watch left).
  ~CacheServiceImpl() override;

  grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* context,
                                const v1::CacheGetRequest* request,
                                v1::CacheGetResponse* response) override;
  grpc::ServerUnaryReactor* GetMany(grpc::CallbackServerContext* context,
                                    const v1::CacheGetManyRequest* request,
                                    v1::CacheGetManyResponse* response) override;
  grpc::ServerUnaryReactor* Set(grpc::CallbackServerContext* context,
                                const v1::CacheSetRequest* request,
                                v1::CacheSetResponse* response) override;
  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* context,
                                   const v1::CacheDeleteRequest* request,
                                   v1::CacheDeleteResponse* response) override;
  grpc::ServerUnaryReactor* Invalidate(grpc::CallbackServerContext* context,
                                       const v1::CacheInvalidateRequest* request,
                                       v1::CacheInvalidateResponse* response) override;
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* context,
                                     const v1::CacheGetStatsRequest* request,
                                     v1::CacheStats* response) override;
  grpc::ServerWriteReactor<v1::CacheInvalidationEvent>* WatchInvalidations(
      grpc::CallbackServerContext* context, const v1::CacheWatchRequest* request) override;

  // Ends every open watch (status UNAVAILABLE); watches begun later are
  // refused the same way.
  void EndWatches();
  // Open watches (for tests and stats).
  size_t watch_count() const;

 private:
  class Watch;
  // Queues `event` on every watch.
  void Publish(const v1::CacheInvalidationEvent& event);
  void Unregister(Watch* watch);

  absl::Status CheckKey(const std::string& key) const;
  void Lookup(const std::string& key, v1::CacheGetResponse* response) const;

  CacheStore* const store_;
  const CacheServiceLimits limits_;

  mutable absl::Mutex watches_mu_;
  absl::flat_hash_set<Watch*> watches_ ABSL_GUARDED_BY(watches_mu_);
  bool watches_ended_ ABSL_GUARDED_BY(watches_mu_) = false;
};

}  // namespace poolside::cache

#endif  // POOLSIDE_SERVICES_CACHE_CACHE_SERVICE_H_
