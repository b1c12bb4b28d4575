#include "services/cache/cache_service.h"

#include <algorithm>
#include <deque>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "common/telemetry/log.h"

namespace poolside::cache {
namespace {

using Async = v1::CacheService::AsyncService;
template <typename Request, typename Response, auto kRequestMethod, auto kHandle>
using Call =
    server::UnaryQueueCall<CacheServiceImpl, Async, Request, Response, kRequestMethod, kHandle>;

// Requests outstanding per method: the hot ones get enough that calls arriving
// together rarely wait for a request to be posted.
constexpr int kHotSlots = 32;
constexpr int kSlots = 4;

uint32_t ClampMs(absl::Duration d) {
  const int64_t ms = absl::ToInt64Milliseconds(d);
  return static_cast<uint32_t>(std::clamp<int64_t>(ms, 0, UINT32_MAX));
}

v1::CacheSetResponse::Reason ReasonOf(CacheStore::SetResult r) {
  switch (r) {
    case CacheStore::SetResult::kStored:
      return v1::CacheSetResponse::STORED;
    case CacheStore::SetResult::kInvalidated:
      return v1::CacheSetResponse::INVALIDATED;
    case CacheStore::SetResult::kTooLarge:
      return v1::CacheSetResponse::TOO_LARGE;
    case CacheStore::SetResult::kNotAdmitted:
      return v1::CacheSetResponse::NOT_ADMITTED;
  }
  return v1::CacheSetResponse::REASON_UNSPECIFIED;
}

}  // namespace

// One WatchInvalidations stream, on the queue thread. Events go out one write
// at a time from queue_; Finish is called once, when no write is outstanding.
class CacheServiceImpl::Watch final
    : public server::QueueStreamCall<Watch, grpc::ServerAsyncWriter<v1::CacheInvalidationEvent>> {
 public:
  // Requests one watch call; when it arrives, requests the next.
  static void Post(CacheServiceImpl* service) { new Watch(service); }

  // Queues `event`; a full queue ends the watch instead.
  void Push(const v1::CacheInvalidationEvent& event) {
    if (ending_) return;
    if (queue_.size() >= kMaxQueuedEvents) {
      End(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                       "watcher too slow: invalidation events were dropped"));
      return;
    }
    queue_.push_back(event);
    if (!busy()) WriteFront();
  }

  void Stop(grpc::Status status) {
    if (!ending_) End(std::move(status));
  }

  // No more events for this watch: it leaves the service's set, and only the
  // event being written is kept (a stuck watcher's queue would otherwise stay
  // full until its transport drains).
  void Forget() {
    service_->watches_.Remove(this);
    if (!busy()) {
      queue_.clear();
    } else if (queue_.size() > 1) {
      queue_.resize(1);
    }
  }

 private:
  friend QueueStreamCall;

  explicit Watch(CacheServiceImpl* service) : service_(service) {
    service_->async_.RequestWatchInvalidations(&context_, &request_, &stream_, service_->cq_,
                                               service_->cq_, &requested_);
  }
  ~Watch() = default;

  void OnRequested(bool ok) {
    if (!Arrived(ok, service_->watch_method_)) return;
    Post(service_);
    if (service_->watches_.Admit(this) != server::OpenCalls<Watch>::Admission::kAdmitted) {
      End(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the cache sidecar is shutting down"));
      return;
    }
    v1::CacheInvalidationEvent subscribed;
    subscribed.set_subscribed(true);
    Push(subscribed);
  }

  void OnWritten(bool ok) {
    Returned();
    queue_.pop_front();
    if (!ok) {  // the stream is broken: the caller is gone
      Broke();
    } else if (ending_) {
      Finish(status_);
    } else if (!queue_.empty()) {
      WriteFront();
    }
    MaybeDelete();
  }

  void WriteFront() { stream_.Write(queue_.front(), Start(&written_)); }

  // Marks the watch ending; finishes it now unless a write is outstanding
  // (then OnWritten does).
  void End(grpc::Status status) {
    ending_ = true;
    status_ = std::move(status);
    Forget();
    if (!busy()) Finish(status_);
  }

  CacheServiceImpl* const service_;
  v1::CacheWatchRequest request_;
  server::QueueStep<Watch, &Watch::OnRequested> requested_{this};
  server::QueueStep<Watch, &Watch::OnWritten> written_{this};

  std::deque<v1::CacheInvalidationEvent> queue_;
  bool ending_ = false;
  grpc::Status status_;
};

CacheServiceImpl::~CacheServiceImpl() = default;

void CacheServiceImpl::Begin(grpc::ServerCompletionQueue* cq,
                             telemetry::ServerCallTelemetry* calls) {
  cq_ = cq;
  using server::QueueMethod;
  const auto* get = QueueMethod<v1::CacheService>(calls, "Get");
  const auto* get_many = QueueMethod<v1::CacheService>(calls, "GetMany");
  const auto* set = QueueMethod<v1::CacheService>(calls, "Set");
  const auto* del = QueueMethod<v1::CacheService>(calls, "Delete");
  const auto* invalidate = QueueMethod<v1::CacheService>(calls, "Invalidate");
  const auto* stats = QueueMethod<v1::CacheService>(calls, "GetStats");
  watch_method_ = QueueMethod<v1::CacheService>(
      calls, "WatchInvalidations", grpc::experimental::ServerRpcInfo::Type::SERVER_STREAMING);
  for (int i = 0; i < kHotSlots; ++i) {
    Call<v1::CacheGetRequest, v1::CacheGetResponse, &Async::RequestGet,
         &CacheServiceImpl::Get>::Post(this, &async_, cq, get);
    Call<v1::CacheGetManyRequest, v1::CacheGetManyResponse, &Async::RequestGetMany,
         &CacheServiceImpl::GetMany>::Post(this, &async_, cq, get_many);
    Call<v1::CacheSetRequest, v1::CacheSetResponse, &Async::RequestSet,
         &CacheServiceImpl::Set>::Post(this, &async_, cq, set);
  }
  for (int i = 0; i < kSlots; ++i) {
    Call<v1::CacheDeleteRequest, v1::CacheDeleteResponse, &Async::RequestDelete,
         &CacheServiceImpl::Delete>::Post(this, &async_, cq, del);
    Call<v1::CacheInvalidateRequest, v1::CacheInvalidateResponse, &Async::RequestInvalidate,
         &CacheServiceImpl::Invalidate>::Post(this, &async_, cq, invalidate);
    Call<v1::CacheGetStatsRequest, v1::CacheStats, &Async::RequestGetStats,
         &CacheServiceImpl::GetStats>::Post(this, &async_, cq, stats);
    Watch::Post(this);
  }
}

void CacheServiceImpl::Publish(const v1::CacheInvalidationEvent& event) {
  watches_.ForEach([&event](Watch* watch) { watch->Push(event); });
}

void CacheServiceImpl::EndWatches() {
  if (cq_ == nullptr) return;  // never served
  absl::Notification ended;
  server::RunOnQueue(cq_, [this, &ended] {
    watches_.Close([](Watch* watch) {
      watch->Stop(
          grpc::Status(grpc::StatusCode::UNAVAILABLE, "the cache sidecar is shutting down"));
    });
    ended.Notify();
  });
  ended.WaitForNotification();
}

absl::Status CacheServiceImpl::CheckKey(const std::string& key) const {
  if (key.empty()) return absl::InvalidArgumentError("key must not be empty");
  if (key.size() > limits_.max_key_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("key is ", key.size(),
                                                   " bytes; the limit is maxKeyBytes = ",
                                                   limits_.max_key_bytes));
  }
  return absl::OkStatus();
}

void CacheServiceImpl::Lookup(const std::string& key, v1::CacheGetResponse* response) const {
  CacheStore::GetResult r = store_->Get(key);
  response->set_generation(r.generation);
  switch (r.outcome) {
    case CacheStore::Outcome::kHit:
      response->set_outcome(v1::CacheGetResponse::HIT);
      break;
    case CacheStore::Outcome::kStale:
      response->set_outcome(v1::CacheGetResponse::STALE);
      break;
    case CacheStore::Outcome::kMiss:
      response->set_outcome(v1::CacheGetResponse::MISS);
      break;
  }
  if (r.value != nullptr) {
    response->set_value(*r.value);
    response->set_remaining_ms(ClampMs(r.remaining));
  }
}

absl::Status CacheServiceImpl::Get(const v1::CacheGetRequest& request,
                                   v1::CacheGetResponse* response) {
  if (absl::Status s = CheckKey(request.key()); !s.ok()) return s;
  Lookup(request.key(), response);
  return absl::OkStatus();
}

absl::Status CacheServiceImpl::GetMany(const v1::CacheGetManyRequest& request,
                                       v1::CacheGetManyResponse* response) {
  if (request.keys_size() == 0 || request.keys_size() > kMaxGetManyKeys) {
    return absl::InvalidArgumentError(
        absl::StrCat("GetMany takes 1 to ", kMaxGetManyKeys, " keys; got ", request.keys_size()));
  }
  for (int i = 0; i < request.keys_size(); ++i) {
    if (absl::Status s = CheckKey(request.keys(i)); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("keys[", i, "]: ", s.message()));
    }
  }
  response->mutable_results()->Reserve(request.keys_size());
  for (const std::string& key : request.keys()) Lookup(key, response->add_results());
  return absl::OkStatus();
}

absl::Status CacheServiceImpl::Set(const v1::CacheSetRequest& request,
                                   v1::CacheSetResponse* response) {
  if (absl::Status s = CheckKey(request.key()); !s.ok()) return s;
  if (request.ttl_ms() == 0 || request.ttl_ms() > limits_.max_ttl_ms) {
    return absl::InvalidArgumentError(absl::StrCat("ttl_ms must be between 1 and maxTtlMs = ",
                                                   limits_.max_ttl_ms, ", got ", request.ttl_ms()));
  }
  if (request.stale_ms() > limits_.max_ttl_ms) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stale_ms must be at most maxTtlMs = ", limits_.max_ttl_ms, ", got ", request.stale_ms()));
  }
  if (request.tags_size() > static_cast<int>(limits_.max_tags)) {
    return absl::InvalidArgumentError(
        absl::StrCat(request.tags_size(), " tags; the limit is maxTags = ", limits_.max_tags));
  }
  for (const std::string& tag : request.tags()) {
    if (tag.empty() || tag.size() > limits_.max_key_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("tags must be 1 to maxKeyBytes = ", limits_.max_key_bytes,
                       " bytes; got one of ", tag.size()));
    }
  }
  CacheStore::SetResult r =
      store_->Set(request.key(), request.value(), absl::Milliseconds(request.ttl_ms()),
                  absl::Milliseconds(request.stale_ms()),
                  std::vector<std::string>(request.tags().begin(), request.tags().end()),
                  request.read_generation());
  response->set_stored(r == CacheStore::SetResult::kStored);
  response->set_reason(ReasonOf(r));
  return absl::OkStatus();
}

absl::Status CacheServiceImpl::Delete(const v1::CacheDeleteRequest& request,
                                      v1::CacheDeleteResponse* response) {
  if (absl::Status s = CheckKey(request.key()); !s.ok()) return s;
  response->set_deleted(store_->Delete(request.key()));
  v1::CacheInvalidationEvent event;
  event.set_deleted_key(request.key());
  Publish(event);
  return absl::OkStatus();
}

absl::Status CacheServiceImpl::Invalidate(const v1::CacheInvalidateRequest& request,
                                          v1::CacheInvalidateResponse* response) {
  if (request.tags().empty() && request.prefixes().empty() && !request.flush_all()) {
    return absl::InvalidArgumentError("Invalidate needs tags, prefixes, or flush_all = true");
  }
  for (const std::string& tag : request.tags()) {
    if (tag.empty()) return absl::InvalidArgumentError("empty tag");
  }
  for (const std::string& prefix : request.prefixes()) {
    if (prefix.empty()) {
      return absl::InvalidArgumentError("empty prefix (it would match every key: use flush_all)");
    }
  }
  std::vector<std::string> tags(request.tags().begin(), request.tags().end());
  std::vector<std::string> prefixes(request.prefixes().begin(), request.prefixes().end());
  CacheStore::InvalidateResult r = store_->Invalidate(tags, prefixes, request.flush_all());
  response->set_removed(r.removed);
  response->set_generation(r.generation);
  v1::CacheInvalidationEvent event;
  *event.mutable_tags() = request.tags();
  *event.mutable_prefixes() = request.prefixes();
  event.set_flush_all(request.flush_all());
  event.set_generation(r.generation);
  event.set_source(request.source());
  Publish(event);
  const telemetry::LogLevel level =
      request.flush_all() ? telemetry::LogLevel::kInfo : telemetry::LogLevel::kDebug;
  if (telemetry::LogEnabled(level)) {
    telemetry::Log(level, "invalidate",
                   {{"source", request.source()},
                    {"tags", absl::StrJoin(tags, ",")},
                    {"prefixes", absl::StrJoin(prefixes, ",")},
                    {"flush_all", request.flush_all() ? "true" : "false"},
                    {"removed", absl::StrCat(r.removed)},
                    {"generation", absl::StrCat(r.generation)}});
  }
  return absl::OkStatus();
}

absl::Status CacheServiceImpl::GetStats(const v1::CacheGetStatsRequest& /*request*/,
                                        v1::CacheStats* response) {
  const CacheStoreStats s = store_->Stats();
  response->set_entries(s.entries);
  response->set_bytes(s.bytes);
  response->set_capacity_bytes(s.capacity_bytes);
  response->set_hits(s.hits);
  response->set_stale_hits(s.stale_hits);
  response->set_misses(s.misses);
  response->set_sets(s.sets);
  response->set_sets_rejected(s.sets_rejected);
  response->set_evictions(s.evictions);
  response->set_expirations(s.expirations);
  response->set_invalidations(s.invalidations);
  response->set_invalidated_entries(s.invalidated_entries);
  response->set_hit_ratio(s.hit_ratio());
  response->set_generation(s.generation);
  response->set_shards(s.shards);
  response->set_watches(static_cast<uint32_t>(watches_.size()));
  return absl::OkStatus();
}

}  // namespace poolside::cache
