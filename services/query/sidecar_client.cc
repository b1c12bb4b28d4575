#include "services/query/sidecar_client.h"

#include <algorithm>
#include <chrono>
#include <iterator>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/server/channel.h"

namespace poolside::query {
namespace {

void SetTimeout(grpc::ClientContext& context, absl::Duration timeout) {
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::microseconds(absl::ToInt64Microseconds(timeout)));
}

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat("cache sidecar: ", s.error_message()));
}

}  // namespace

absl::StatusOr<std::unique_ptr<SidecarClient>> SidecarClient::Create(const std::string& target,
                                                                     const v1::ClientTlsConfig& tls,
                                                                     absl::Duration call_timeout,
                                                                     absl::Duration keepalive) {
  server::ChannelOptions options;
  options.target = target;
  options.tls = tls;
  // Reconnect quickly after the sidecar restarts.
  options.args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  options.args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // A sidecar that stops answering (stopped, hung, or a TCP peer gone without
  // a reset) would otherwise keep the watch stream open, and the near cache
  // serving, forever: ping the connection after `keepalive` of silence and
  // drop it when a ping is not answered within `keepalive`. The watch is
  // usually a quiet stream, so pings must not wait for data frames.
  const int keepalive_ms = static_cast<int>(absl::ToInt64Milliseconds(keepalive));
  options.args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, keepalive_ms);
  options.args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, keepalive_ms);
  options.args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  options.args.SetMaxReceiveMessageSize(64 << 20);
  options.args.SetMaxSendMessageSize(64 << 20);
  // A failed call falls back to the database (BYPASS); gRPC's own retries
  // would only add their cost to every call.
  options.retries = false;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = server::CreateChannel(std::move(options));
  if (!channel.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cache.tls: ", channel.status().message()));
  }
  return std::make_unique<SidecarClient>(*std::move(channel), call_timeout);
}

SidecarClient::SidecarClient(std::shared_ptr<grpc::Channel> channel, absl::Duration call_timeout)
    : call_timeout_(call_timeout),
      channel_(std::move(channel)),
      stub_(v1::CacheService::NewStub(channel_)) {}

template <typename Request, typename Response>
struct SidecarClient::Call {
  grpc::ClientContext context;
  Request request;
  Response response;
};

template <typename Request, typename Response>
SidecarClient::Call<Request, Response>* SidecarClient::NewCall(absl::Duration timeout) {
  {
    absl::MutexLock lock(&mu_);
    ++calls_;
  }
  auto* call = new Call<Request, Response>();
  SetTimeout(call->context, timeout);
  return call;
}

template <typename Request, typename Response>
void SidecarClient::EndCall(Call<Request, Response>* call) {
  delete call;
  absl::MutexLock lock(&mu_);
  --calls_;
}

SidecarClient::~SidecarClient() {
  StopWatching();
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](int* calls) { return *calls == 0; }, &calls_));
}

bool SidecarClient::Watch(std::function<void(const CacheInvalidationEvent&)> on_event) {
  absl::MutexLock lock(&watch_mu_);
  if (watcher_.joinable() || stop_watching_.HasBeenNotified()) return false;
  watcher_ = std::thread([this, on_event = std::move(on_event)] { WatchLoop(on_event); });
  return true;
}

void SidecarClient::StopWatching() {
  std::thread watcher;
  {
    absl::MutexLock lock(&watch_mu_);
    if (!stop_watching_.HasBeenNotified()) stop_watching_.Notify();
    if (watch_context_ != nullptr) watch_context_->TryCancel();
    watcher.swap(watcher_);
  }
  if (watcher.joinable()) watcher.join();
}

// One WatchInvalidations stream: reads until it ends, then notifies `done`.
class SidecarClient::WatchReactor : public grpc::ClientReadReactor<v1::CacheInvalidationEvent> {
 public:
  explicit WatchReactor(const std::function<void(const CacheInvalidationEvent&)>* on_event)
      : on_event_(on_event) {}

  void Start(v1::CacheService::Stub* stub) {
    stub->async()->WatchInvalidations(&context, &request_, this);
    StartRead(&event_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // the stream ended: OnDone follows
    CacheInvalidationEvent event;
    if (event_.subscribed()) {
      if (subscribed_) return StartRead(&event_);
      subscribed_ = true;
      event.kind = CacheInvalidationEvent::kSubscribed;
    } else if (!subscribed_) {
      return StartRead(&event_);  // not a watch this client understands
    } else if (!event_.deleted_key().empty()) {
      event.kind = CacheInvalidationEvent::kDelete;
      event.key = std::move(*event_.mutable_deleted_key());
    } else {
      event.kind = CacheInvalidationEvent::kInvalidate;
      event.tags.assign(event_.tags().begin(), event_.tags().end());
      event.prefixes.assign(event_.prefixes().begin(), event_.prefixes().end());
      event.flush_all = event_.flush_all();
      event.generation = event_.generation();
    }
    (*on_event_)(event);
    event_.Clear();
    StartRead(&event_);
  }

  void OnDone(const grpc::Status&) override {
    // Why it ended changes nothing: watch again. The near cache must stop
    // serving first.
    if (subscribed_) {
      CacheInvalidationEvent broken;
      broken.kind = CacheInvalidationEvent::kBroken;
      (*on_event_)(broken);
    }
    done.Notify();
  }

  bool subscribed() const { return subscribed_; }

  grpc::ClientContext context;
  absl::Notification done;

 private:
  const std::function<void(const CacheInvalidationEvent&)>* on_event_;
  v1::CacheWatchRequest request_;
  v1::CacheInvalidationEvent event_;
  bool subscribed_ = false;  // only touched by the stream's callbacks, one at a time
};

void SidecarClient::WatchLoop(std::function<void(const CacheInvalidationEvent&)> on_event) {
  absl::Duration backoff = absl::Milliseconds(100);
  while (!stop_watching_.HasBeenNotified()) {
    WatchReactor watch(&on_event);
    {
      absl::MutexLock lock(&watch_mu_);
      if (stop_watching_.HasBeenNotified()) break;
      watch_context_ = &watch.context;
    }
    watch.Start(stub_.get());
    watch.done.WaitForNotification();
    {
      absl::MutexLock lock(&watch_mu_);
      watch_context_ = nullptr;
    }
    if (watch.subscribed()) backoff = absl::Milliseconds(100);
    stop_watching_.WaitForNotificationWithTimeout(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(1));
  }
}

void SidecarClient::Get(const std::string& key,
                        std::function<void(absl::StatusOr<CacheLookup>)> done) {
  std::vector<PendingGet> batch;
  {
    absl::MutexLock lock(&mu_);
    queued_.push_back(PendingGet{key, std::move(done), telemetry::CurrentSpanContext()});
    if (get_calls_in_flight_ >= kMaxGetCallsInFlight) return;  // the next call takes it
    ++get_calls_in_flight_;
    TakeQueued(&batch);
  }
  SendGets(std::move(batch));
}

void SidecarClient::TakeQueued(std::vector<PendingGet>* batch) {
  const size_t n = std::min<size_t>(queued_.size(), kMaxKeysPerCall);
  batch->reserve(n);
  std::move(queued_.begin(), queued_.begin() + n, std::back_inserter(*batch));
  queued_.erase(queued_.begin(), queued_.begin() + n);
}

void SidecarClient::SendGets(std::vector<PendingGet> batch) {
  // The call's traceparent (common/server/channel.h) comes from here.
  telemetry::ScopedSpanContext trace(batch.front().trace);
  if (batch.size() == 1) {
    auto* call = NewCall<v1::CacheGetRequest, v1::CacheGetResponse>(call_timeout_);
    call->request.set_key(batch[0].key);
    stub_->async()->Get(&call->context, &call->request, &call->response,
                        [this, call, batch = std::move(batch)](grpc::Status s) mutable {
                          GetsDone(std::move(batch), s, {&call->response});
                          EndCall(call);
                        });
    return;
  }
  auto* call = NewCall<v1::CacheGetManyRequest, v1::CacheGetManyResponse>(call_timeout_);
  for (const PendingGet& g : batch) call->request.add_keys(g.key);
  stub_->async()->GetMany(
      &call->context, &call->request, &call->response,
      [this, call, batch = std::move(batch)](grpc::Status s) mutable {
        std::vector<v1::CacheGetResponse*> results;
        if (s.ok() && call->response.results_size() != static_cast<int>(batch.size())) {
          s = grpc::Status(grpc::StatusCode::INTERNAL,
                           absl::StrCat("GetMany answered ", call->response.results_size(),
                                        " of ", batch.size(), " keys"));
        }
        if (s.ok()) {
          for (auto& r : *call->response.mutable_results()) results.push_back(&r);
        }
        GetsDone(std::move(batch), s, std::move(results));
        EndCall(call);
      });
}

void SidecarClient::GetsDone(std::vector<PendingGet> batch, const grpc::Status& status,
                             std::vector<v1::CacheGetResponse*> results) {
  std::vector<PendingGet> next;
  {
    absl::MutexLock lock(&mu_);
    if (queued_.empty()) {
      --get_calls_in_flight_;
    } else {
      TakeQueued(&next);  // keeps this call's slot
    }
  }
  if (!next.empty()) SendGets(std::move(next));
  for (size_t i = 0; i < batch.size(); ++i) {
    if (!status.ok()) {
      batch[i].done(FromGrpc(status));
      continue;
    }
    v1::CacheGetResponse& r = *results[i];
    CacheLookup out;
    switch (r.outcome()) {
      case v1::CacheGetResponse::HIT: out.outcome = CacheLookup::kHit; break;
      case v1::CacheGetResponse::STALE: out.outcome = CacheLookup::kStale; break;
      default: out.outcome = CacheLookup::kMiss; break;
    }
    out.value = std::move(*r.mutable_value());
    out.generation = r.generation();
    out.remaining = absl::Milliseconds(r.remaining_ms());
    batch[i].done(std::move(out));
  }
}

void SidecarClient::Set(CacheFill fill, std::function<void(absl::StatusOr<bool>)> done) {
  auto* call = NewCall<v1::CacheSetRequest, v1::CacheSetResponse>(call_timeout_);
  call->request.set_key(std::move(fill.key));
  call->request.set_value(std::move(fill.value));
  call->request.set_ttl_ms(static_cast<uint32_t>(
      std::max<int64_t>(1, absl::ToInt64Milliseconds(fill.ttl))));
  call->request.set_stale_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(fill.stale)));
  for (std::string& tag : fill.tags) call->request.add_tags(std::move(tag));
  call->request.set_read_generation(fill.read_generation);
  stub_->async()->Set(&call->context, &call->request, &call->response,
                      [this, call, done = std::move(done)](grpc::Status s) {
                        if (s.ok()) {
                          done(call->response.stored());
                        } else {
                          done(FromGrpc(s));
                        }
                        EndCall(call);
                      });
}

void SidecarClient::Invalidate(std::vector<std::string> tags, bool flush_all, std::string source,
                               absl::Duration timeout, std::function<void(absl::Status)> done) {
  auto* call = NewCall<v1::CacheInvalidateRequest, v1::CacheInvalidateResponse>(timeout);
  for (std::string& tag : tags) call->request.add_tags(std::move(tag));
  call->request.set_flush_all(flush_all);
  call->request.set_source(std::move(source));
  stub_->async()->Invalidate(&call->context, &call->request, &call->response,
                             [this, call, done = std::move(done)](grpc::Status s) {
                               done(FromGrpc(s));
                               EndCall(call);
                             });
}

}  // namespace poolside::query
