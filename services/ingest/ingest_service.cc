#include "services/ingest/ingest_service.h"

#include <deque>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/server/reactor_lock.h"
#include "common/server/status.h"
#include "common/telemetry/trace_grpc.h"
#include "google/protobuf/arena.h"

namespace poolside::ingest {
namespace {

constexpr size_t kMaxStreamRejected = 1000;

// A message read from a stream, in an arena of its own: parsing a request of
// thousands of values allocates from the arena instead of malloc, and the
// whole message is freed at once after the engine has encoded it.
template <typename T>
class ArenaMessage {
 public:
  ArenaMessage()
      : arena_(std::make_unique<google::protobuf::Arena>(Options())),
        message_(google::protobuf::Arena::CreateMessage<T>(arena_.get())) {}
  T* get() { return message_; }

 private:
  static google::protobuf::ArenaOptions Options() {
    google::protobuf::ArenaOptions o;
    o.start_block_size = 64 << 10;
    o.max_block_size = 1 << 20;
    return o;
  }
  std::unique_ptr<google::protobuf::Arena> arena_;
  T* message_;
};

grpc::Status ShutdownStatus() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                      "the ingest service is shutting down; every request acknowledged "
                      "before this was committed, resend the rest");
}

// Shared mechanics of the two streaming calls: requests are submitted one at
// a time; the next is read once the engine took the previous one in.
// Callbacks outstanding from the engine keep the call alive (Finish waits for
// them), so no callback ever touches a deleted reactor.
template <typename Base>
class StreamBase : public Base {
 public:
  // The call's server span (set by the handler): each request submitted
  // from this stream carries it.
  telemetry::SpanContext trace;

  StreamBase(IngestServiceImpl* service, IngestEngine* engine, auth::CallAuth auth)
      : service_(service), engine_(engine), auth_(std::move(auth)) {}

  void OnCancel() override {
    Lock lock(this, &mu_);
    cancelled_ = true;
    MaybeFinishLocked(lock);
  }

  void OnDone() override { delete this; }

 protected:
  // The reactor's lock: a Finish decided under it is made after it is released.
  using Lock = server::ReactorLock<StreamBase>;

  // Begins reading, unless the service is already finishing streams. (At
  // shutdown, streams already open keep reading until their clients
  // half-close, their requests refused by the engine: ending them while the
  // client still sends would make the kernel reset the connection and could
  // lose acknowledgements already written. The server's shutdown deadline
  // cancels clients that never half-close.)
  void Begin() {
    if (service_->finishing()) {
      Lock lock(this, &mu_);
      refused_ = true;
      MaybeFinishLocked(lock);
      return;
    }
    absl::MutexLock lock(&mu_);  // never finishes
    ReadNextLocked();
  }

  // Submits the request just read. `on_result` runs with the outcome.
  void Submit(const v1::WriteRequest& request,
              std::function<void(const absl::StatusOr<v1::WriteResponse>&)> on_result) {
    if (absl::Status denied = service_->AuthorizeWrite(auth_.principal, request); !denied.ok()) {
      Lock lock(this, &mu_);
      on_result(denied);
      ReadNextLocked();
      MaybeFinishLocked(lock);
      return;
    }
    {
      absl::MutexLock lock(&mu_);  // never finishes
      outstanding_ += 2;
    }
    telemetry::ScopedSpanContext scope(trace);  // the engine keeps it with the request
    absl::Status s = engine_->Submit(
        request, IngestEngine::Admission::kWaitForRoom,
        [this] {
          Lock lock(this, &mu_);
          --outstanding_;
          ReadNextLocked();
          MaybeFinishLocked(lock);
        },
        [this, on_result](absl::StatusOr<v1::WriteResponse> r) {
          Lock lock(this, &mu_);
          --outstanding_;
          on_result(r);
          MaybeFinishLocked(lock);
        });
    if (!s.ok()) {
      Lock lock(this, &mu_);
      outstanding_ -= 2;
      on_result(s);
      ReadNextLocked();
      MaybeFinishLocked(lock);
    }
  }

  void ReadNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || read_done_ || cancelled_ || refused_ || stop_reading_) return;
    StartReading();
  }

  // Marks the end of reading after OnReadDone(false).
  void ReadsEnded() {
    Lock lock(this, &mu_);
    read_done_ = true;
    MaybeFinishLocked(lock);
  }

  // Finishes (after `lock` is released) once nothing is outstanding.
  void MaybeFinishLocked(Lock& lock) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || outstanding_ > 0 || !WritesIdleLocked()) return;
    if (!read_done_ && !cancelled_ && !refused_ && !stop_reading_) return;
    finished_ = true;
    if (cancelled_) {
      lock.FinishAfterUnlock(grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled"));
    } else if (refused_) {
      lock.FinishAfterUnlock(ShutdownStatus());
    } else {
      lock.FinishAfterUnlock(FinalStatusLocked());
    }
  }

  virtual void StartReading() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) = 0;
  virtual bool WritesIdleLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return true; }
  virtual grpc::Status FinalStatusLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) = 0;

  IngestServiceImpl* const service_;
  IngestEngine* const engine_;
  const auth::CallAuth auth_;  // its permit is released with the call
  absl::Mutex mu_;
  int outstanding_ ABSL_GUARDED_BY(mu_) = 0;
  bool read_done_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_reading_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool refused_ ABSL_GUARDED_BY(mu_) = false;  // began after FinishStreams()
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

class ChannelCall final
    : public StreamBase<grpc::ServerBidiReactor<v1::ChannelRequest, v1::ChannelResponse>> {
 public:
  ChannelCall(IngestServiceImpl* service, IngestEngine* engine, auth::CallAuth auth)
      : StreamBase(service, engine, std::move(auth)) {
    Begin();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      ReadsEnded();
      return;
    }
    // The next read goes into a fresh message; this one lives until the
    // engine has taken its rows.
    std::unique_ptr<ArenaMessage<v1::ChannelRequest>> current;
    {
      absl::MutexLock lock(&mu_);  // never finishes
      current = std::exchange(request_, std::make_unique<ArenaMessage<v1::ChannelRequest>>());
    }
    const uint64_t sequence = current->get()->sequence();
    Submit(current->get()->write(), [this, sequence](const absl::StatusOr<v1::WriteResponse>& r)
                                 ABSL_NO_THREAD_SAFETY_ANALYSIS { Ack(sequence, r); });
  }

  void OnWriteDone(bool ok) override {
    Lock lock(this, &mu_);
    acks_.pop_front();
    writing_ = false;
    if (!ok) {
      cancelled_ = true;
      acks_.clear();
    } else if (!acks_.empty()) {
      writing_ = true;
      StartWrite(&acks_.front());
      return;
    }
    MaybeFinishLocked(lock);
  }

 private:
  void StartReading() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    StartRead(request_->get());
  }
  bool WritesIdleLocked() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !writing_ && acks_.empty();
  }
  grpc::Status FinalStatusLocked() override { return grpc::Status::OK; }

  void Ack(uint64_t sequence, const absl::StatusOr<v1::WriteResponse>& r)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (cancelled_ || finished_) return;
    v1::ChannelResponse& ack = acks_.emplace_back();
    ack.set_sequence(sequence);
    if (r.ok()) {
      *ack.mutable_result() = *r;
    } else {
      const grpc::Status g = server::ToGrpcStatus(r.status());
      ack.set_code(g.error_code());
      ack.set_message(g.error_message());
    }
    if (!writing_) {
      writing_ = true;
      StartWrite(&acks_.front());
    }
  }

  std::unique_ptr<ArenaMessage<v1::ChannelRequest>> request_ ABSL_GUARDED_BY(mu_) =
      std::make_unique<ArenaMessage<v1::ChannelRequest>>();
  std::deque<v1::ChannelResponse> acks_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
};

class WriteStreamCall final : public StreamBase<grpc::ServerReadReactor<v1::WriteRequest>> {
 public:
  WriteStreamCall(IngestServiceImpl* service, IngestEngine* engine, auth::CallAuth auth,
                  v1::WriteStreamResponse* response)
      : StreamBase(service, engine, std::move(auth)), response_(response) {
    Begin();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      ReadsEnded();
      return;
    }
    std::unique_ptr<ArenaMessage<v1::WriteRequest>> current;
    {
      absl::MutexLock lock(&mu_);
      current = std::exchange(request_, std::make_unique<ArenaMessage<v1::WriteRequest>>());
    }
    const uint64_t index = next_index_++;
    Submit(*current->get(), [this, index](const absl::StatusOr<v1::WriteResponse>& r)
                         ABSL_NO_THREAD_SAFETY_ANALYSIS { Record(index, r); });
  }

 private:
  void StartReading() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    StartRead(request_->get());
  }
  grpc::Status FinalStatusLocked() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!error_.ok()) return server::ToGrpcStatus(error_);
    return grpc::Status::OK;
  }

  void Record(uint64_t index, const absl::StatusOr<v1::WriteResponse>& r)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    response_->set_requests(response_->requests() + 1);
    if (!r.ok()) {
      // The first failure ends the call; stop reading more.
      if (error_.ok()) {
        error_ = absl::Status(r.status().code(),
                              absl::StrCat("request ", index, ": ", r.status().message()));
      }
      stop_reading_ = true;
      return;
    }
    response_->set_rows_written(response_->rows_written() + r->rows_written());
    response_->set_rows_rejected(response_->rows_rejected() + r->rejected_size());
    if (r->duplicate()) response_->set_duplicates(response_->duplicates() + 1);
    for (const v1::RowError& e : r->rejected()) {
      if (static_cast<size_t>(response_->rejected_size()) >= kMaxStreamRejected) break;
      auto* out = response_->add_rejected();
      out->set_request_index(index);
      *out->mutable_error() = e;
    }
  }

  v1::WriteStreamResponse* const response_;
  std::unique_ptr<ArenaMessage<v1::WriteRequest>> request_ ABSL_GUARDED_BY(mu_) =
      std::make_unique<ArenaMessage<v1::WriteRequest>>();
  uint64_t next_index_ = 0;  // only touched in OnReadDone (one at a time)
  absl::Status error_ ABSL_GUARDED_BY(mu_);
};

// A streaming call refused before it began (authentication, limits).
template <typename Base>
class RefusedCall final : public Base {
 public:
  explicit RefusedCall(const absl::Status& status) { this->Finish(server::ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

// Gives a stream call its server span's context.
template <typename Call>
Call* Traced(grpc::CallbackServerContext* context, Call* call) {
  call->trace = telemetry::ServerCallContext(context);
  return call;
}

}  // namespace

absl::StatusOr<auth::CallAuth> IngestServiceImpl::Admit(const grpc::ServerContextBase& context) {
  if (authorizer_ == nullptr) return auth::CallAuth();
  return auth::AuthenticateAndAdmit(*authorizer_, context);
}

absl::Status IngestServiceImpl::AuthorizeWrite(const auth::Principal* who,
                                               const v1::WriteRequest& request) const {
  if (authorizer_ == nullptr || who == nullptr) return absl::OkStatus();
  return authorizer_->CheckIngest(
      *who, request.database().empty() ? default_database_ : request.database(), request.table());
}

grpc::ServerUnaryReactor* IngestServiceImpl::Write(grpc::CallbackServerContext* context,
                                                   const v1::WriteRequest* request,
                                                   v1::WriteResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<auth::CallAuth> call_auth = Admit(*context);
  if (!call_auth.ok()) {
    reactor->Finish(server::ToGrpcStatus(call_auth.status()));
    return reactor;
  }
  if (absl::Status denied = AuthorizeWrite(call_auth->principal, *request); !denied.ok()) {
    reactor->Finish(server::ToGrpcStatus(denied));
    return reactor;
  }
  auto held = std::make_shared<auth::CallAuth>(*std::move(call_auth));
  telemetry::ScopedSpanContext trace(telemetry::ServerCallContext(context));
  absl::Status s = engine_->Submit(
      *request, IngestEngine::Admission::kRefuseWhenFull, [] {},
      [reactor, response, held](absl::StatusOr<v1::WriteResponse> r) {
        if (!r.ok()) {
          reactor->Finish(server::ToGrpcStatus(r.status()));
          return;
        }
        *response = *std::move(r);
        reactor->Finish(grpc::Status::OK);
      });
  if (!s.ok()) {
    const absl::Duration retry = RetryAfterOf(s);
    if (retry > absl::ZeroDuration()) {
      context->AddTrailingMetadata("retry-after-ms",
                                   absl::StrCat(absl::ToInt64Milliseconds(retry)));
    }
    reactor->Finish(server::ToGrpcStatus(s));
  }
  return reactor;
}

grpc::ServerReadReactor<v1::WriteRequest>* IngestServiceImpl::WriteStream(
    grpc::CallbackServerContext* context, v1::WriteStreamResponse* response) {
  absl::StatusOr<auth::CallAuth> call_auth = Admit(*context);
  if (!call_auth.ok()) {
    return new RefusedCall<grpc::ServerReadReactor<v1::WriteRequest>>(call_auth.status());
  }
  return Traced(context, new WriteStreamCall(this, engine_, *std::move(call_auth), response));
}

grpc::ServerBidiReactor<v1::ChannelRequest, v1::ChannelResponse>* IngestServiceImpl::Channel(
    grpc::CallbackServerContext* context) {
  absl::StatusOr<auth::CallAuth> call_auth = Admit(*context);
  if (!call_auth.ok()) {
    return new RefusedCall<grpc::ServerBidiReactor<v1::ChannelRequest, v1::ChannelResponse>>(
        call_auth.status());
  }
  return Traced(context, new ChannelCall(this, engine_, *std::move(call_auth)));
}

grpc::ServerUnaryReactor* IngestServiceImpl::GetStats(grpc::CallbackServerContext* context,
                                                      const v1::GetIngestStatsRequest* request,
                                                      v1::GetIngestStatsResponse* response) {
  (void)request;
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<auth::CallAuth> call_auth = Admit(*context);
  absl::Status may = call_auth.status();
  if (may.ok() && call_auth->principal != nullptr) {
    may = authorizer_->CheckAdmin(*call_auth->principal, "GetStats");
  }
  if (!may.ok()) {
    reactor->Finish(server::ToGrpcStatus(may));
    return reactor;
  }
  engine_->GetStats(response);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace poolside::ingest
