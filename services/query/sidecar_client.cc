#include "services/query/sidecar_client.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/server/channel.h"
#include "common/server/queue_service.h"
#include "common/server/queue_thread.h"

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

grpc::Status Closed() { return grpc::Status(grpc::StatusCode::UNAVAILABLE, "client closed"); }

// cache.tokenEnv / cache.tokenFile; empty when neither is set.
absl::StatusOr<std::string> ReadToken(const v1::QueryCacheConfig& config) {
  if (!config.token_env().empty() && !config.token_file().empty()) {
    return absl::InvalidArgumentError("cache: set tokenEnv or tokenFile, not both");
  }
  std::string token;
  if (!config.token_env().empty()) {
    const char* value = std::getenv(config.token_env().c_str());
    if (value == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("cache.tokenEnv: environment variable ", config.token_env(), " is not set"));
    }
    token = value;
  } else if (!config.token_file().empty()) {
    std::ifstream in(config.token_file());
    std::ostringstream text;
    if (in) text << in.rdbuf();
    if (!in) {
      return absl::InvalidArgumentError(
          absl::StrCat("cache.tokenFile: cannot read ", config.token_file()));
    }
    token = text.str();
  } else {
    return std::string();
  }
  token = std::string(absl::StripAsciiWhitespace(token));
  if (token.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        config.token_env().empty() ? "cache.tokenFile " : "cache.tokenEnv ",
        config.token_env().empty() ? config.token_file() : config.token_env(), " is empty"));
  }
  return token;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SidecarClient>> SidecarClient::Create(
    const v1::QueryCacheConfig& config) {
  absl::StatusOr<std::string> token = ReadToken(config);
  if (!token.ok()) return token.status();
  return Create(config.target(), config.tls(), absl::Milliseconds(config.call_timeout_ms()),
                absl::Milliseconds(config.keepalive_ms()), *token);
}

absl::StatusOr<std::unique_ptr<SidecarClient>> SidecarClient::Create(
    const std::string& target, const v1::ClientTlsConfig& tls, absl::Duration call_timeout,
    absl::Duration keepalive, const std::string& bearer_token) {
  server::ChannelOptions options;
  options.target = target;
  options.tls = tls;
  options.bearer_token = bearer_token;
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
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      server::CreateChannel(std::move(options));
  if (!channel.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("cache.tls: ", channel.status().message()));
  }
  return std::make_unique<SidecarClient>(*std::move(channel), call_timeout);
}

SidecarClient::SidecarClient(std::shared_ptr<grpc::Channel> channel, absl::Duration call_timeout)
    : call_timeout_(call_timeout),
      channel_(std::move(channel)),
      stub_(v1::CacheService::NewStub(channel_)),
      own_cq_(std::make_unique<grpc::CompletionQueue>()),
      own_thread_(std::make_unique<server::QueueThread>(own_cq_.get())),
      cq_(own_cq_.get()) {}

SidecarClient::~SidecarClient() {
  Close();
  if (own_cq_ != nullptr) {
    // Every call has ended: nothing is left on the queue to drain.
    own_cq_->Shutdown();
    own_thread_->Join();
  }
}

void SidecarClient::UseQueue(grpc::CompletionQueue* cq) {
  if (own_cq_ == nullptr) return;
  // It waits for the calls on the own queue, and for `cq` to take the watch.
  server::QueueThread::AssertNotOn(own_cq_.get());
  server::QueueThread::AssertNotOn(cq);
  {
    absl::MutexLock lock(&mu_);
    cq_ = cq;
    on_own_queue_ = false;
  }
  {
    // Would never end by itself: the watch loop watches again, on `cq`.
    absl::MutexLock lock(&watch_mu_);
    if (stream_open_ && stream_on_own_queue_) cancel_stream_ = true;
  }
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](int* calls) { return *calls == 0; }, &own_queue_calls_));
  }
  own_cq_->Shutdown();
  own_thread_->Join();
  own_thread_.reset();
  own_cq_.reset();
}

void SidecarClient::Close() {
  {
    absl::MutexLock lock(&mu_);
    server::QueueThread::AssertNotOn(cq_);  // the calls it waits for end there
    closed_ = true;
  }
  StopWatching();
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](int* calls) { return *calls == 0; }, &calls_));
}

bool SidecarClient::BeginCall(grpc::CompletionQueue** cq, bool* on_own_queue) {
  absl::MutexLock lock(&mu_);
  if (closed_) return false;
  *cq = cq_;
  *on_own_queue = on_own_queue_;
  ++calls_;
  if (*on_own_queue) ++own_queue_calls_;
  return true;
}

void SidecarClient::EndCall(bool on_own_queue) {
  absl::MutexLock lock(&mu_);
  --calls_;
  if (on_own_queue) --own_queue_calls_;
}

template <typename Request, typename Response>
struct SidecarClient::Call final : public server::QueueTag {
  Call(SidecarClient* client, grpc::CompletionQueue* cq, bool on_own_queue)
      : client(client), cq(cq), on_own_queue(on_own_queue) {}

  // `prepared`: the stub's PrepareAsync<Method>(&context, request, cq).
  void Start(std::unique_ptr<grpc::ClientAsyncResponseReader<Response>> prepared) {
    reader = std::move(prepared);
    reader->StartCall();
    reader->Finish(&response, &status, this);
  }

  // A client's Finish always completes, with ok; `status` says how it went.
  void Proceed(bool /*ok*/) override {
    server::QueueThread::AssertOn(cq);
    then(*this);
    SidecarClient* const owner = client;
    const bool own = on_own_queue;
    delete this;  // the context first: Close() waits for it
    owner->EndCall(own);
  }

  SidecarClient* const client;
  grpc::CompletionQueue* const cq;
  const bool on_own_queue;
  grpc::ClientContext context;
  Request request;
  Response response;
  grpc::Status status;
  std::unique_ptr<grpc::ClientAsyncResponseReader<Response>> reader;
  std::function<void(Call&)> then;
};

template <typename Request, typename Response>
SidecarClient::Call<Request, Response>* SidecarClient::NewCall(absl::Duration timeout) {
  grpc::CompletionQueue* cq;
  bool on_own_queue;
  if (!BeginCall(&cq, &on_own_queue)) return nullptr;
  auto* call = new Call<Request, Response>(this, cq, on_own_queue);
  SetTimeout(call->context, timeout);
  return call;
}

// Reads until the stream ends, on the queue thread; the watcher thread owns
// it and frees it once StreamEnded() said so.
class SidecarClient::WatchStream {
 public:
  WatchStream(SidecarClient* client,
              const std::function<void(const CacheInvalidationEvent&)>* on_event)
      : client_(client), on_event_(on_event) {}

  void Start(v1::CacheService::Stub* stub, grpc::CompletionQueue* cq) {
    reader_ = stub->PrepareAsyncWatchInvalidations(&context_, request_, cq);
    reader_->StartCall(&started_);
  }
  // Any thread; also before Start() (gRPC then cancels the call as it starts).
  void Cancel() { context_.TryCancel(); }
  // After StreamEnded().
  bool subscribed() const { return subscribed_; }

 private:
  void OnStarted(bool ok) {
    if (ok) {
      reader_->Read(&event_, &read_);
    } else {
      reader_->Finish(&status_, &finished_);
    }
  }

  void OnRead(bool ok) {
    if (!ok) {  // the stream ended
      reader_->Finish(&status_, &finished_);
      return;
    }
    CacheInvalidationEvent event;
    bool pass_on = true;
    if (event_.subscribed()) {
      pass_on = !subscribed_;
      subscribed_ = true;
      event.kind = CacheInvalidationEvent::kSubscribed;
    } else if (!subscribed_) {
      pass_on = false;  // not a watch this client understands
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
    if (pass_on) (*on_event_)(event);
    event_.Clear();
    reader_->Read(&event_, &read_);
  }

  void OnFinished(bool /*ok*/) {
    // Why it ended changes nothing: watch again. The near cache must stop
    // serving first.
    if (subscribed_) {
      CacheInvalidationEvent broken;
      broken.kind = CacheInvalidationEvent::kBroken;
      (*on_event_)(broken);
    }
    client_->StreamEnded();  // last: the watcher thread may free this stream now
  }

  SidecarClient* const client_;
  const std::function<void(const CacheInvalidationEvent&)>* const on_event_;
  grpc::ClientContext context_;
  v1::CacheWatchRequest request_;
  std::unique_ptr<grpc::ClientAsyncReader<v1::CacheInvalidationEvent>> reader_;
  v1::CacheInvalidationEvent event_;
  grpc::Status status_;
  bool subscribed_ = false;  // only touched by the steps, one at a time
  server::QueueStep<WatchStream, &WatchStream::OnStarted> started_{this};
  server::QueueStep<WatchStream, &WatchStream::OnRead> read_{this};
  server::QueueStep<WatchStream, &WatchStream::OnFinished> finished_{this};
};

bool SidecarClient::Watch(std::function<void(const CacheInvalidationEvent&)> on_event) {
  absl::MutexLock lock(&watch_mu_);
  if (watcher_.joinable() || stop_watching_) return false;
  watcher_ = std::thread([this, on_event = std::move(on_event)] { WatchLoop(on_event); });
  return true;
}

void SidecarClient::StopWatching() {
  {
    // The watch's stream ends on the queue thread.
    absl::MutexLock lock(&mu_);
    server::QueueThread::AssertNotOn(cq_);
  }
  std::thread watcher;
  {
    absl::MutexLock lock(&watch_mu_);
    stop_watching_ = true;
    cancel_stream_ = true;
    watcher.swap(watcher_);
  }
  // The watcher returns once its open stream has ended.
  if (watcher.joinable()) watcher.join();
}

void SidecarClient::StreamEnded() {
  absl::MutexLock lock(&watch_mu_);
  stream_open_ = false;
}

void SidecarClient::WatchLoop(std::function<void(const CacheInvalidationEvent&)> on_event) {
  absl::Duration backoff = absl::Milliseconds(100);
  while (true) {
    grpc::CompletionQueue* cq;
    bool on_own_queue;
    {
      absl::MutexLock lock(&watch_mu_);
      if (stop_watching_ || !BeginCall(&cq, &on_own_queue)) return;
      stream_open_ = true;
      stream_on_own_queue_ = on_own_queue;
      cancel_stream_ = false;
    }
    auto stream = std::make_unique<WatchStream>(this, &on_event);
    stream->Start(stub_.get(), cq);
    bool cancel;
    {
      absl::MutexLock lock(&watch_mu_);
      watch_mu_.Await(absl::Condition(this, &SidecarClient::StreamEndedOrCancelled));
      cancel = stream_open_;
    }
    if (cancel) {
      // Outside watch_mu_: the queue thread takes it to report the end.
      stream->Cancel();
      absl::MutexLock lock(&watch_mu_);
      watch_mu_.Await(absl::Condition(
          +[](bool* open) { return !*open; }, &stream_open_));
    }
    const bool subscribed = stream->subscribed();
    stream.reset();
    EndCall(on_own_queue);
    if (subscribed) backoff = absl::Milliseconds(100);
    {
      absl::MutexLock lock(&watch_mu_);
      watch_mu_.AwaitWithTimeout(absl::Condition(&stop_watching_), backoff);
    }
    backoff = std::min(backoff * 2, absl::Seconds(1));
  }
}

void SidecarClient::Get(const std::string& key,
                        std::function<void(absl::StatusOr<CacheLookup>)> done) {
  std::vector<PendingGet> batch;
  {
    absl::MutexLock lock(&mu_);
    if (!closed_) {
      queued_.push_back(PendingGet{key, std::move(done), telemetry::CurrentSpanContext()});
      if (get_calls_in_flight_ >= kMaxGetCallsInFlight) return;  // the next call takes it
      ++get_calls_in_flight_;
      TakeQueued(&batch);
    }
  }
  if (batch.empty()) {
    done(FromGrpc(Closed()));
    return;
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
    using GetCall = Call<v1::CacheGetRequest, v1::CacheGetResponse>;
    GetCall* call = NewCall<v1::CacheGetRequest, v1::CacheGetResponse>(call_timeout_);
    if (call == nullptr) {
      GetsDone(std::move(batch), Closed(), {});
      return;
    }
    call->request.set_key(batch[0].key);
    call->then = [this, batch = std::move(batch)](GetCall& c) mutable {
      GetsDone(std::move(batch), c.status, {&c.response});
    };
    call->Start(stub_->PrepareAsyncGet(&call->context, call->request, call->cq));
    return;
  }
  using GetManyCall = Call<v1::CacheGetManyRequest, v1::CacheGetManyResponse>;
  GetManyCall* call = NewCall<v1::CacheGetManyRequest, v1::CacheGetManyResponse>(call_timeout_);
  if (call == nullptr) {
    GetsDone(std::move(batch), Closed(), {});
    return;
  }
  for (const PendingGet& g : batch) call->request.add_keys(g.key);
  call->then = [this, batch = std::move(batch)](GetManyCall& c) mutable {
    grpc::Status s = c.status;
    std::vector<v1::CacheGetResponse*> results;
    if (s.ok() && c.response.results_size() != static_cast<int>(batch.size())) {
      s = grpc::Status(grpc::StatusCode::INTERNAL,
                       absl::StrCat("GetMany answered ", c.response.results_size(), " of ",
                                    batch.size(), " keys"));
    }
    if (s.ok()) {
      for (auto& r : *c.response.mutable_results()) results.push_back(&r);
    }
    GetsDone(std::move(batch), s, std::move(results));
  };
  call->Start(stub_->PrepareAsyncGetMany(&call->context, call->request, call->cq));
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
  // Once closed, this answers `next` at once (and frees the slot in turn).
  if (!next.empty()) SendGets(std::move(next));
  for (size_t i = 0; i < batch.size(); ++i) {
    if (!status.ok()) {
      batch[i].done(FromGrpc(status));
      continue;
    }
    v1::CacheGetResponse& r = *results[i];
    CacheLookup out;
    switch (r.outcome()) {
      case v1::CacheGetResponse::HIT:
        out.outcome = CacheLookup::kHit;
        break;
      case v1::CacheGetResponse::STALE:
        out.outcome = CacheLookup::kStale;
        break;
      default:
        out.outcome = CacheLookup::kMiss;
        break;
    }
    out.value = std::move(*r.mutable_value());
    out.generation = r.generation();
    out.remaining = absl::Milliseconds(r.remaining_ms());
    batch[i].done(std::move(out));
  }
}

void SidecarClient::Set(CacheFill fill, std::function<void(absl::StatusOr<bool>)> done) {
  using SetCall = Call<v1::CacheSetRequest, v1::CacheSetResponse>;
  SetCall* call = NewCall<v1::CacheSetRequest, v1::CacheSetResponse>(call_timeout_);
  if (call == nullptr) {
    done(FromGrpc(Closed()));
    return;
  }
  call->request.set_key(std::move(fill.key));
  call->request.set_value(std::move(fill.value));
  call->request.set_ttl_ms(
      static_cast<uint32_t>(std::max<int64_t>(1, absl::ToInt64Milliseconds(fill.ttl))));
  call->request.set_stale_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(fill.stale)));
  for (std::string& tag : fill.tags) call->request.add_tags(std::move(tag));
  call->request.set_read_generation(fill.read_generation);
  call->then = [done = std::move(done)](SetCall& c) {
    if (c.status.ok()) {
      done(c.response.stored());
    } else if (c.status.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
      done(false);  // a generation the sidecar did not hand out: refused
    } else {
      done(FromGrpc(c.status));
    }
  };
  call->Start(stub_->PrepareAsyncSet(&call->context, call->request, call->cq));
}

void SidecarClient::Invalidate(std::vector<std::string> tags, bool flush_all, std::string source,
                               absl::Duration timeout, std::function<void(absl::Status)> done) {
  // The tags in runs of at most kMaxTagsPerInvalidate tags and
  // kMaxBytesPerInvalidate bytes; flush_all travels with the first.
  std::vector<std::vector<std::string>> chunks(1);
  size_t chunk_bytes = 0;
  for (std::string& tag : tags) {
    if (!chunks.back().empty() && (chunks.back().size() >= kMaxTagsPerInvalidate ||
                                   chunk_bytes + tag.size() > kMaxBytesPerInvalidate)) {
      chunks.emplace_back();
      chunk_bytes = 0;
    }
    chunk_bytes += tag.size();
    chunks.back().push_back(std::move(tag));
  }
  // Answers `done` once every call has: with the first failure, if any.
  struct Pending {
    absl::Mutex mu;
    size_t left ABSL_GUARDED_BY(mu);
    absl::Status status ABSL_GUARDED_BY(mu);
    std::function<void(absl::Status)> done;
  };
  auto pending = std::make_shared<Pending>();
  {
    absl::MutexLock lock(&pending->mu);
    pending->left = chunks.size();
  }
  pending->done = std::move(done);
  auto answer = [pending](absl::Status s) {
    absl::Status first;
    {
      absl::MutexLock lock(&pending->mu);
      if (pending->status.ok()) pending->status = std::move(s);
      if (--pending->left > 0) return;
      first = pending->status;
    }
    pending->done(std::move(first));
  };
  using InvalidateCall = Call<v1::CacheInvalidateRequest, v1::CacheInvalidateResponse>;
  for (size_t i = 0; i < chunks.size(); ++i) {
    InvalidateCall* call =
        NewCall<v1::CacheInvalidateRequest, v1::CacheInvalidateResponse>(timeout);
    if (call == nullptr) {
      answer(FromGrpc(Closed()));
      continue;
    }
    for (std::string& tag : chunks[i]) call->request.add_tags(std::move(tag));
    call->request.set_flush_all(flush_all && i == 0);
    call->request.set_source(source);
    call->then = [answer](InvalidateCall& c) { answer(FromGrpc(c.status)); };
    call->Start(stub_->PrepareAsyncInvalidate(&call->context, call->request, call->cq));
  }
}

}  // namespace poolside::query
