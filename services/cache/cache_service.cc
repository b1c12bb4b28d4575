#include "services/cache/cache_service.h"

#include <algorithm>
#include <deque>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/server/reactor_lock.h"
#include "common/server/status.h"
#include "common/telemetry/log.h"

namespace poolside::cache {
namespace {

grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(server::ToGrpcStatus(status));
  return reactor;
}

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

// One WatchInvalidations stream. Writes go out one at a time from queue_;
// Finish is called once, when no write is outstanding.
class CacheServiceImpl::Watch : public grpc::ServerWriteReactor<v1::CacheInvalidationEvent> {
 public:
  explicit Watch(CacheServiceImpl* service) : service_(service) {}

  // Queues `event`; a full queue ends the watch instead.
  void Push(const v1::CacheInvalidationEvent& event) {
    const v1::CacheInvalidationEvent* write = nullptr;
    {
      Lock lock(this, &mu_);
      if (ending_) return;
      if (queue_.size() >= kMaxQueuedEvents) {
        End(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                         "watcher too slow: invalidation events were dropped"),
            lock);
      } else {
        queue_.push_back(event);
        if (!writing_) {
          writing_ = true;
          write = &queue_.front();
        }
      }
    }
    if (write != nullptr) StartWrite(write);  // no Finish before its OnWriteDone
  }

  void Stop(grpc::Status status) {
    Lock lock(this, &mu_);
    if (ending_) return;
    End(std::move(status), lock);
  }

  void OnWriteDone(bool ok) override {
    const v1::CacheInvalidationEvent* write = nullptr;
    {
      Lock lock(this, &mu_);
      queue_.pop_front();
      writing_ = false;
      if (!ok && !ending_) {
        End(grpc::Status(grpc::StatusCode::UNAVAILABLE, "watch stream broken"), lock);
      } else if (ending_) {
        if (!finished_) lock.FinishAfterUnlock(status_);
        finished_ = true;
      } else if (!queue_.empty()) {
        writing_ = true;
        write = &queue_.front();
      }
    }
    if (write != nullptr) StartWrite(write);
  }

  void OnCancel() override { Stop(grpc::Status::CANCELLED); }

  void OnDone() override {
    service_->Unregister(this);
    delete this;
  }

 private:
  using Lock = server::ReactorLock<Watch>;

  // Marks the watch ending; finishes it once `lock` is released unless a write
  // is outstanding (then its OnWriteDone does).
  void End(grpc::Status status, Lock& lock) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ending_ = true;
    status_ = std::move(status);
    if (!writing_) {
      finished_ = true;
      lock.FinishAfterUnlock(status_);
    }
  }

  CacheServiceImpl* const service_;
  absl::Mutex mu_;
  std::deque<v1::CacheInvalidationEvent> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool ending_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};

CacheServiceImpl::~CacheServiceImpl() { EndWatches(); }

grpc::ServerWriteReactor<v1::CacheInvalidationEvent>* CacheServiceImpl::WatchInvalidations(
    grpc::CallbackServerContext* /*context*/, const v1::CacheWatchRequest* /*request*/) {
  auto* watch = new Watch(this);
  v1::CacheInvalidationEvent subscribed;
  subscribed.set_subscribed(true);
  absl::MutexLock lock(&watches_mu_);
  if (watches_ended_) {
    watch->Stop(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the cache sidecar is shutting down"));
    return watch;
  }
  watches_.insert(watch);
  // Under watches_mu_: no event published after registration can overtake it.
  watch->Push(subscribed);
  return watch;
}

void CacheServiceImpl::Publish(const v1::CacheInvalidationEvent& event) {
  absl::MutexLock lock(&watches_mu_);
  for (Watch* watch : watches_) watch->Push(event);
}

void CacheServiceImpl::Unregister(Watch* watch) {
  absl::MutexLock lock(&watches_mu_);
  watches_.erase(watch);
}

void CacheServiceImpl::EndWatches() {
  absl::MutexLock lock(&watches_mu_);
  watches_ended_ = true;
  for (Watch* watch : watches_) {
    watch->Stop(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the cache sidecar is shutting down"));
  }
}

size_t CacheServiceImpl::watch_count() const {
  absl::MutexLock lock(&watches_mu_);
  return watches_.size();
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

grpc::ServerUnaryReactor* CacheServiceImpl::Get(grpc::CallbackServerContext* context,
                                                const v1::CacheGetRequest* request,
                                                v1::CacheGetResponse* response) {
  if (absl::Status s = CheckKey(request->key()); !s.ok()) return Answer(context, s);
  Lookup(request->key(), response);
  return Answer(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* CacheServiceImpl::GetMany(grpc::CallbackServerContext* context,
                                                    const v1::CacheGetManyRequest* request,
                                                    v1::CacheGetManyResponse* response) {
  if (request->keys_size() == 0 || request->keys_size() > kMaxGetManyKeys) {
    return Answer(context, absl::InvalidArgumentError(absl::StrCat(
                               "GetMany takes 1 to ", kMaxGetManyKeys, " keys; got ",
                               request->keys_size())));
  }
  for (int i = 0; i < request->keys_size(); ++i) {
    if (absl::Status s = CheckKey(request->keys(i)); !s.ok()) {
      return Answer(context, absl::InvalidArgumentError(
                                 absl::StrCat("keys[", i, "]: ", s.message())));
    }
  }
  response->mutable_results()->Reserve(request->keys_size());
  for (const std::string& key : request->keys()) Lookup(key, response->add_results());
  return Answer(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* CacheServiceImpl::Set(grpc::CallbackServerContext* context,
                                                const v1::CacheSetRequest* request,
                                                v1::CacheSetResponse* response) {
  if (absl::Status s = CheckKey(request->key()); !s.ok()) return Answer(context, s);
  if (request->ttl_ms() == 0 || request->ttl_ms() > limits_.max_ttl_ms) {
    return Answer(context, absl::InvalidArgumentError(absl::StrCat(
                               "ttl_ms must be between 1 and maxTtlMs = ", limits_.max_ttl_ms,
                               ", got ", request->ttl_ms())));
  }
  if (request->stale_ms() > limits_.max_ttl_ms) {
    return Answer(context, absl::InvalidArgumentError(absl::StrCat(
                               "stale_ms must be at most maxTtlMs = ", limits_.max_ttl_ms,
                               ", got ", request->stale_ms())));
  }
  if (request->tags_size() > static_cast<int>(limits_.max_tags)) {
    return Answer(context, absl::InvalidArgumentError(absl::StrCat(
                               request->tags_size(), " tags; the limit is maxTags = ",
                               limits_.max_tags)));
  }
  for (const std::string& tag : request->tags()) {
    if (tag.empty() || tag.size() > limits_.max_key_bytes) {
      return Answer(context, absl::InvalidArgumentError(absl::StrCat(
                                 "tags must be 1 to maxKeyBytes = ", limits_.max_key_bytes,
                                 " bytes; got one of ", tag.size())));
    }
  }
  CacheStore::SetResult r = store_->Set(
      request->key(), request->value(), absl::Milliseconds(request->ttl_ms()),
      absl::Milliseconds(request->stale_ms()),
      std::vector<std::string>(request->tags().begin(), request->tags().end()),
      request->read_generation());
  response->set_stored(r == CacheStore::SetResult::kStored);
  response->set_reason(ReasonOf(r));
  return Answer(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* CacheServiceImpl::Delete(grpc::CallbackServerContext* context,
                                                   const v1::CacheDeleteRequest* request,
                                                   v1::CacheDeleteResponse* response) {
  if (absl::Status s = CheckKey(request->key()); !s.ok()) return Answer(context, s);
  response->set_deleted(store_->Delete(request->key()));
  v1::CacheInvalidationEvent event;
  event.set_deleted_key(request->key());
  Publish(event);
  return Answer(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* CacheServiceImpl::Invalidate(grpc::CallbackServerContext* context,
                                                       const v1::CacheInvalidateRequest* request,
                                                       v1::CacheInvalidateResponse* response) {
  if (request->tags().empty() && request->prefixes().empty() && !request->flush_all()) {
    return Answer(context, absl::InvalidArgumentError(
                               "Invalidate needs tags, prefixes, or flush_all = true"));
  }
  for (const std::string& tag : request->tags()) {
    if (tag.empty()) return Answer(context, absl::InvalidArgumentError("empty tag"));
  }
  for (const std::string& prefix : request->prefixes()) {
    if (prefix.empty()) {
      return Answer(context, absl::InvalidArgumentError(
                                 "empty prefix (it would match every key: use flush_all)"));
    }
  }
  std::vector<std::string> tags(request->tags().begin(), request->tags().end());
  std::vector<std::string> prefixes(request->prefixes().begin(), request->prefixes().end());
  CacheStore::InvalidateResult r = store_->Invalidate(tags, prefixes, request->flush_all());
  response->set_removed(r.removed);
  response->set_generation(r.generation);
  v1::CacheInvalidationEvent event;
  *event.mutable_tags() = request->tags();
  *event.mutable_prefixes() = request->prefixes();
  event.set_flush_all(request->flush_all());
  event.set_generation(r.generation);
  event.set_source(request->source());
  Publish(event);
  const telemetry::LogLevel level =
      request->flush_all() ? telemetry::LogLevel::kInfo : telemetry::LogLevel::kDebug;
  if (telemetry::LogEnabled(level)) {
    telemetry::Log(level, "invalidate",
                   {{"source", request->source()},
                    {"tags", absl::StrJoin(tags, ",")},
                    {"prefixes", absl::StrJoin(prefixes, ",")},
                    {"flush_all", request->flush_all() ? "true" : "false"},
                    {"removed", absl::StrCat(r.removed)},
                    {"generation", absl::StrCat(r.generation)}});
  }
  return Answer(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* CacheServiceImpl::GetStats(grpc::CallbackServerContext* context,
                                                     const v1::CacheGetStatsRequest* /*request*/,
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
  return Answer(context, absl::OkStatus());
}

}  // namespace poolside::cache
