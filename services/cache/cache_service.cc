#include "services/cache/cache_service.h"

#include <algorithm>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "common/auth/grpc_auth.h"
#include "common/server/queue_thread.h"
#include "common/server/status.h"
#include "common/telemetry/log.h"

namespace poolside::cache {
namespace {

using Async = v1::CacheService::AsyncService;
template <typename Request, typename Response, auto kRequestMethod, auto kHandle>
using Call =
    server::UnaryQueueCall<CacheServiceImpl, Async, Request, Response, kRequestMethod, kHandle>;
using SharedEvent = std::shared_ptr<const v1::CacheInvalidationEvent>;

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
    case CacheStore::SetResult::kUnknownGeneration:
      break;  // an error, not a reason (Set)
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

  // Queues `event` (`bytes` serialized); a watch too far behind ends instead.
  void Push(SharedEvent event, size_t bytes) {
    if (ending_) return;
    if (!queue_.empty() &&
        (queue_.size() >= kMaxQueuedEvents || queued_bytes_ + bytes > kMaxQueuedEventBytes)) {
      End(grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          absl::StrCat("watcher too slow: ", queue_.size(), " events (", queued_bytes_,
                       " bytes) were waiting for it (at most ", kMaxQueuedEvents, " events and ",
                       kMaxQueuedEventBytes,
                       " bytes wait per watch), and later events were dropped: drop everything "
                       "taken from this sidecar and watch again")));
      return;
    }
    queued_bytes_ += bytes;
    queue_.push_back({std::move(event), bytes});
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
    const size_t keep = busy() ? std::min<size_t>(queue_.size(), 1) : 0;
    queue_.resize(keep);
    queued_bytes_ = keep == 0 ? 0 : queue_.front().bytes;
  }

 private:
  friend QueueStreamCall;
  struct Queued {
    SharedEvent event;
    size_t bytes = 0;
  };

  explicit Watch(CacheServiceImpl* service) : service_(service) {
    service_->async_.RequestWatchInvalidations(&context_, &request_, &stream_, service_->cq_,
                                               service_->cq_, &requested_);
  }
  ~Watch() {
    if (counted_) --service_->live_watches_;
  }

  void OnRequested(bool ok) {
    if (!Arrived(ok, service_->watch_method_)) return;
    Post(service_);
    if (absl::Status s = service_->Authorize(context_, auth::kRead); !s.ok()) {
      End(server::ToGrpcStatus(s));
      return;
    }
    if (service_->live_watches_ >= kMaxWatches) {
      End(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                       absl::StrCat("this cache sidecar has ", service_->live_watches_,
                                    " watches, the most it keeps; try again later")));
      return;
    }
    if (service_->watches_.Admit(this) != server::OpenCalls<Watch>::Admission::kAdmitted) {
      End(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the cache sidecar is shutting down"));
      return;
    }
    counted_ = true;
    ++service_->live_watches_;
    auto subscribed = std::make_shared<v1::CacheInvalidationEvent>();
    subscribed->set_subscribed(true);
    const size_t bytes = subscribed->ByteSizeLong();
    Push(std::move(subscribed), bytes);
  }

  void OnWritten(bool ok) {
    Returned();
    if (!queue_.empty()) {
      queued_bytes_ -= queue_.front().bytes;
      queue_.pop_front();
    }
    if (!ok) {  // the stream is broken: the caller is gone
      Broke();
    } else if (ending_) {
      Finish(status_);
    } else if (!queue_.empty()) {
      WriteFront();
    }
    MaybeDelete();
  }

  // gRPC serializes the event here: the queue may drop it once the write is back.
  void WriteFront() { stream_.Write(*queue_.front().event, Start(&written_)); }

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

  std::deque<Queued> queue_;  // the front is being written while busy()
  size_t queued_bytes_ = 0;
  bool ending_ = false;
  bool counted_ = false;  // in live_watches_
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
  using Self = CacheServiceImpl;
  for (int i = 0; i < kHotSlots; ++i) {
    Call<v1::CacheGetRequest, v1::CacheGetResponse, &Async::RequestGet,
         &Self::Authorized<v1::CacheGetRequest, v1::CacheGetResponse, &Self::Get,
                           auth::kRead>>::Post(this, &async_, cq, get);
    Call<v1::CacheGetManyRequest, v1::CacheGetManyResponse, &Async::RequestGetMany,
         &Self::Authorized<v1::CacheGetManyRequest, v1::CacheGetManyResponse, &Self::GetMany,
                           auth::kRead>>::Post(this, &async_, cq, get_many);
    Call<v1::CacheSetRequest, v1::CacheSetResponse, &Async::RequestSet,
         &Self::Authorized<v1::CacheSetRequest, v1::CacheSetResponse, &Self::Set,
                           auth::kWrite>>::Post(this, &async_, cq, set);
  }
  for (int i = 0; i < kSlots; ++i) {
    Call<v1::CacheDeleteRequest, v1::CacheDeleteResponse, &Async::RequestDelete,
         &Self::Authorized<v1::CacheDeleteRequest, v1::CacheDeleteResponse, &Self::Delete,
                           auth::kWrite>>::Post(this, &async_, cq, del);
    Call<v1::CacheInvalidateRequest, v1::CacheInvalidateResponse, &Async::RequestInvalidate,
         &Self::Authorized<v1::CacheInvalidateRequest, v1::CacheInvalidateResponse,
                           &Self::Invalidate, auth::kWrite>>::Post(this, &async_, cq, invalidate);
    Call<v1::CacheGetStatsRequest, v1::CacheStats, &Async::RequestGetStats,
         &Self::Authorized<v1::CacheGetStatsRequest, v1::CacheStats, &Self::GetStats,
                           auth::kRead>>::Post(this, &async_, cq, stats);
    Watch::Post(this);
  }
}

template <typename Request, typename Response,
          absl::Status (CacheServiceImpl::*kHandle)(const Request&, Response*), auth::Role kRole>
absl::Status CacheServiceImpl::Authorized(const grpc::ServerContext& context,
                                          const Request& request, Response* response) {
  if (absl::Status s = Authorize(context, kRole); !s.ok()) return s;
  return (this->*kHandle)(request, response);
}

absl::Status CacheServiceImpl::Authorize(const grpc::ServerContext& context,
                                         auth::Role role) const {
  if (authorizer_ == nullptr) return absl::OkStatus();
  // The permit (a concurrency slot) is let go when this returns: every call
  // but a watch is answered inline, and a watch's life is bounded by
  // kMaxWatches instead.
  absl::StatusOr<auth::CallAuth> who = auth::AuthenticateAndAdmit(*authorizer_, context);
  if (!who.ok()) return who.status();
  if (!who->principal->Has(role)) {
    return absl::PermissionDeniedError(
        absl::StrCat("principal \"", who->principal->name, "\" lacks the \"",
                     role == auth::kWrite ? "write" : "read",
                     "\" role this call needs on the cache sidecar (read: Get, GetMany, GetStats, "
                     "WatchInvalidations; write: Set, Delete, Invalidate)"));
  }
  return absl::OkStatus();
}

void CacheServiceImpl::Publish(const v1::CacheInvalidationEvent& event) {
  server::QueueThread::AssertOn(cq_);  // watches_ is the queue thread's
  if (watches_.size() == 0) return;
  auto shared = std::make_shared<const v1::CacheInvalidationEvent>(event);
  const size_t bytes = shared->ByteSizeLong();
  watches_.ForEach([&shared, bytes](Watch* watch) { watch->Push(shared, bytes); });
}

void CacheServiceImpl::EndWatches() {
  if (cq_ == nullptr) return;             // never served
  server::QueueThread::AssertNotOn(cq_);  // it waits for the queue thread
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
    return absl::InvalidArgumentError(absl::StrCat(
        "key is ", key.size(), " bytes; the limit is maxKeyBytes = ", limits_.max_key_bytes));
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
  server::QueueThread::AssertOn(cq_);
  if (absl::Status s = CheckKey(request.key()); !s.ok()) return s;
  Lookup(request.key(), response);
  return absl::OkStatus();
}

absl::Status CacheServiceImpl::GetMany(const v1::CacheGetManyRequest& request,
                                       v1::CacheGetManyResponse* response) {
  server::QueueThread::AssertOn(cq_);
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
  server::QueueThread::AssertOn(cq_);
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
  const uint64_t g = request.read_generation();
  CacheStore::SetResult r =
      store_->Set(request.key(), request.value(), absl::Milliseconds(request.ttl_ms()),
                  absl::Milliseconds(request.stale_ms()),
                  std::vector<std::string>(request.tags().begin(), request.tags().end()), g);
  if (r == CacheStore::SetResult::kUnknownGeneration && g == 0) {
    return absl::FailedPreconditionError(
        "read_generation is 0: a Set must carry the generation this sidecar gave before the "
        "value was read (the Get or GetMany that missed; GetStats for a value read now)");
  }
  if (r == CacheStore::SetResult::kUnknownGeneration) {
    return absl::FailedPreconditionError(
        absl::StrCat("read_generation ", g, " was not handed out by this cache sidecar (its ",
                     "generations run from ", store_->first_generation(), " to ",
                     store_->generation(), " now; a restarted sidecar starts afresh): look ",
                     "the key up again, then read the value"));
  }
  response->set_stored(r == CacheStore::SetResult::kStored);
  response->set_reason(ReasonOf(r));
  return absl::OkStatus();
}

absl::Status CacheServiceImpl::Delete(const v1::CacheDeleteRequest& request,
                                      v1::CacheDeleteResponse* response) {
  server::QueueThread::AssertOn(cq_);
  if (absl::Status s = CheckKey(request.key()); !s.ok()) return s;
  response->set_deleted(store_->Delete(request.key()));
  v1::CacheInvalidationEvent event;
  event.set_deleted_key(request.key());
  Publish(event);
  return absl::OkStatus();
}

absl::Status CacheServiceImpl::Invalidate(const v1::CacheInvalidateRequest& request,
                                          v1::CacheInvalidateResponse* response) {
  server::QueueThread::AssertOn(cq_);
  if (request.tags().empty() && request.prefixes().empty() && !request.flush_all()) {
    return absl::InvalidArgumentError("Invalidate needs tags, prefixes, or flush_all = true");
  }
  if (request.tags_size() > static_cast<int>(limits_.max_invalidate_tags)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Invalidate has ", request.tags_size(), " tags; the limit is maxInvalidateTags = ",
        limits_.max_invalidate_tags, " (send several requests)"));
  }
  if (request.prefixes_size() > static_cast<int>(limits_.max_invalidate_prefixes)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Invalidate has ", request.prefixes_size(),
        " prefixes; the limit is maxInvalidatePrefixes = ", limits_.max_invalidate_prefixes,
        " (send several requests)"));
  }
  if (request.source().size() > kMaxSourceBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("source is ", request.source().size(), " bytes; at most ", kMaxSourceBytes));
  }
  uint64_t bytes = 0;
  for (const std::string& tag : request.tags()) {
    if (tag.empty()) return absl::InvalidArgumentError("empty tag");
    if (tag.size() > limits_.max_key_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("a tag of ", tag.size(),
                       " bytes; tags are at most maxKeyBytes = ", limits_.max_key_bytes));
    }
    bytes += tag.size();
  }
  for (const std::string& prefix : request.prefixes()) {
    if (prefix.empty()) {
      return absl::InvalidArgumentError("empty prefix (it would match every key: use flush_all)");
    }
    if (prefix.size() > limits_.max_key_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("a prefix of ", prefix.size(),
                                                     " bytes; prefixes are at most maxKeyBytes = ",
                                                     limits_.max_key_bytes, " (no key is longer)"));
    }
    bytes += prefix.size();
  }
  if (bytes > limits_.max_invalidate_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Invalidate's tags and prefixes are ", bytes, " bytes; the limit is maxInvalidateBytes = ",
        limits_.max_invalidate_bytes, " (send several requests)"));
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
  server::QueueThread::AssertOn(cq_);
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
