#include "services/ingest/ingest_service.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/server/reactor_lock.h"
#include "common/server/status.h"
#include "common/telemetry/trace_grpc.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "services/ingest/request_reader.h"

namespace poolside::ingest {
namespace {

constexpr size_t kMaxStreamRejected = 1000;
// The least a stream reserves for its next message once it has sent one.
constexpr size_t kMinReadReservation = 64 << 10;
// A Channel stops reading while more acknowledgements than this wait to be
// sent (its client is not reading them), and reads on once they drain: the
// client's own backlog is bounded, not the server's memory taken for it.
constexpr size_t kMaxUnsentAckBytes = 1 << 20;

grpc::Status ShutdownStatus() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                      "the ingest service is shutting down; every request acknowledged "
                      "before this was committed, resend the rest");
}

// The bytes of a received message, in one piece.
std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::string out;
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return out;
  size_t size = 0;
  for (const grpc::Slice& s : slices) size += s.size();
  out.reserve(size);
  for (const grpc::Slice& s : slices) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out;
}

grpc::ByteBuffer Serialize(const google::protobuf::MessageLite& message) {
  grpc::Slice slice(message.SerializeAsString());
  return grpc::ByteBuffer(&slice, 1);
}

// Shared mechanics of the two streaming calls, which read raw messages and
// parse them here (request_reader.h). With generated message types, gRPC's
// callback API parses each message into the reactor's buffer and reports a
// parse failure (say, invalid UTF-8 in a string field) as the read's `ok`
// being false (CallOpRecvMessage::FinishOp in grpcpp/impl/call_op_set.h):
// OnReadDone(false), exactly like the end of the stream, so the call would
// end OK with that request and all later ones silently unprocessed. Parsed
// here, such a message ends the stream with INVALID_ARGUMENT naming it.
//
// Before each read the stream reserves room in the engine's bound
// (IngestEngine::ReserveRead): twice the largest request size for its first
// message, then twice its largest message so far (at least 64 KiB, at most
// twice the largest request size). So a full buffer stops every stream's
// reading before their bytes arrive.
//
// Callbacks outstanding from the engine (a reservation being waited for, a
// request's outcome) and messages being processed keep the call alive
// (Finish waits for them), so no callback ever touches a deleted reactor.
template <typename Base>
class StreamBase : public Base {
 public:
  // The call's server span (set by the handler): each request submitted
  // from this stream carries it.
  telemetry::SpanContext trace;

  StreamBase(IngestServiceImpl* service, IngestEngine* engine, auth::CallAuth auth)
      : service_(service), engine_(engine), auth_(std::move(auth)) {}

  void OnCancel() override {
    bool withdraw;
    {
      absl::MutexLock lock(&mu_);  // never finishes
      cancelled_ = true;
      withdraw = waiting_room_;
    }
    // A reservation still queued is withdrawn; one being granted is given
    // back by RoomGranted().
    WithdrawIfQueued(withdraw ? ticket_.load() : 0);
  }

  void OnDone() override { delete this; }

 protected:
  // The reactor's lock: a Finish decided under it is made after it is released.
  using Lock = server::ReactorLock<StreamBase>;
  using OnResult = std::function<void(const absl::StatusOr<v1::WriteResponse>&)>;

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
    {
      absl::MutexLock lock(&mu_);  // never finishes
      ++outstanding_;
    }
    RequestRead();
    Lock lock(this, &mu_);
    --outstanding_;
    MaybeFinishLocked(lock);
  }

  // Called by the subclass's OnReadDone with its read buffer.
  void ReadDone(bool ok, grpc::ByteBuffer* buffer) {
    const uint64_t ticket = ticket_.load();
    uint64_t index = 0;
    bool take;
    {
      absl::MutexLock lock(&mu_);  // never finishes
      reading_ = false;
      if (!ok) read_done_ = true;
      take = ok && MayReadLocked();
      if (take) {
        ++outstanding_;  // until processed
        index = messages_++;
        largest_message_ = std::max(largest_message_, buffer->Length());
      }
    }
    if (!take) {
      buffer->Clear();
      engine_->ReleaseRead(ticket);
      Lock lock(this, &mu_);
      MaybeFinishLocked(lock);
      return;
    }
    if (buffer->Length() > engine_->max_request_bytes()) {
      // Refused unparsed (and without a copy); the stream goes on.
      engine_->ReleaseRead(ticket);
      Oversized(buffer, index);
      buffer->Clear();
    } else {
      std::string message = Flatten(*buffer);
      buffer->Clear();
      Process(std::move(message), ticket, index);
    }
    RequestRead();
    Lock lock(this, &mu_);
    --outstanding_;
    MaybeFinishLocked(lock);
  }

  // Handles message `index` of the stream, which arrived on `ticket`.
  virtual void Process(std::string message, uint64_t ticket, uint64_t index) = 0;
  // Answers message `index`, larger than batch.max_request_bytes.
  virtual void Oversized(grpc::ByteBuffer* buffer, uint64_t index) = 0;
  virtual void StartReading() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) = 0;
  virtual bool WritesIdleLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return true; }
  // Whether the next read waits (ResumeReading() then reads).
  virtual bool ReadPausedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return false; }

  // Reads on after a pause (ReadPausedLocked), if the stream paused and may
  // read. `lock` is released to reserve room and read, then taken again.
  void ResumeReadingLocked(Lock& lock) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!read_paused_ || ReadPausedLocked() || !MayReadLocked()) return;
    read_paused_ = false;
    ++outstanding_;  // keeps the call while mu_ is released
    mu_.Unlock();
    RequestRead();
    mu_.Lock();
    --outstanding_;
  }
  virtual grpc::Status FinalStatusLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) = 0;

  // Submits one write; `on_result` runs under mu_ with its outcome. A
  // malformed write ends the stream instead (`where` names it).
  void SubmitWrite(SerializedWrite write, uint64_t ticket, std::string where, OnResult on_result) {
    absl::StatusOr<RequestHeader> header = ReadRequestHeader(write.bytes());
    absl::Status refused = header.status();
    if (header.ok()) {
      refused = service_->AuthorizeWrite(auth_.principal, header->database, header->table);
    }
    if (!refused.ok()) {
      engine_->ReleaseRead(ticket);
      absl::MutexLock lock(&mu_);  // never finishes (the message is outstanding)
      Outcome(where, on_result, refused);
      return;
    }
    {
      absl::MutexLock lock(&mu_);  // never finishes
      ++outstanding_;
    }
    telemetry::ScopedSpanContext scope(trace);  // the engine keeps it with the request
    absl::Status s = engine_->Submit(std::move(write), auth_.principal, ticket,
                                     [this, where, on_result](absl::StatusOr<v1::WriteResponse> r) {
                                       Lock lock(this, &mu_);
                                       --outstanding_;
                                       Outcome(where, on_result, r);
                                       MaybeFinishLocked(lock);
                                     });
    if (!s.ok()) {
      absl::MutexLock lock(&mu_);  // never finishes (the message is outstanding)
      --outstanding_;
      Outcome(where, on_result, s);
    }
  }

  // Ends the stream over a malformed message: stop reading, finish with
  // INVALID_ARGUMENT once the requests before it are answered.
  void MalformedLocked(const std::string& where, const absl::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    stop_reading_ = true;
    if (malformed_.ok()) {
      malformed_ = absl::InvalidArgumentError(absl::StrCat(where, ": ", status.message()));
    }
  }

  bool MayReadLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !finished_ && !read_done_ && !cancelled_ && !refused_ && !stop_reading_;
  }

  // Finishes (after `lock` is released) once nothing is outstanding.
  void MaybeFinishLocked(Lock& lock) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || outstanding_ > 0 || waiting_room_ || !WritesIdleLocked()) return;
    // Reading on: the end of the stream finishes it. (A read still pending
    // when the stream stops ends with OnReadDone(false) after Finish.)
    if (MayReadLocked()) return;
    finished_ = true;
    if (cancelled_) {
      lock.FinishAfterUnlock(grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled"));
    } else if (refused_) {
      lock.FinishAfterUnlock(ShutdownStatus());
    } else {
      lock.FinishAfterUnlock(FinalStatusLocked());
    }
  }

  IngestServiceImpl* const service_;
  IngestEngine* const engine_;
  const auth::CallAuth auth_;  // its permit is released with the call
  absl::Mutex mu_;
  // The reservation of the read in progress or being waited for.
  std::atomic<uint64_t> ticket_{0};
  size_t largest_message_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t messages_ ABSL_GUARDED_BY(mu_) = 0;  // read so far
  // Engine callbacks to come, and messages being processed.
  int outstanding_ ABSL_GUARDED_BY(mu_) = 0;
  bool waiting_room_ ABSL_GUARDED_BY(mu_) = false;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool read_done_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_reading_ ABSL_GUARDED_BY(mu_) = false;
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;  // ReadPausedLocked stopped the reads
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool refused_ ABSL_GUARDED_BY(mu_) = false;  // began after FinishStreams()
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status malformed_ ABSL_GUARDED_BY(mu_);

 private:
  void Outcome(const std::string& where, const OnResult& on_result,
               const absl::StatusOr<v1::WriteResponse>& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!r.ok() && IsMalformed(r.status())) {
      MalformedLocked(where, r.status());
    } else {
      on_result(r);
    }
  }

  // Reserves room for the next message and reads it once reserved. Called
  // with the call kept alive (outstanding_) and mu_ not held.
  void RequestRead() {
    size_t bytes;
    {
      absl::MutexLock lock(&mu_);  // never finishes
      if (!MayReadLocked() || waiting_room_ || reading_) return;
      if (ReadPausedLocked()) {
        read_paused_ = true;
        return;
      }
      waiting_room_ = true;
      const size_t largest = engine_->max_request_bytes();
      bytes = 2 * (largest_message_ == 0
                       ? largest
                       : std::min(largest, std::max(kMinReadReservation, 2 * largest_message_)));
    }
    bool now = false;
    const uint64_t ticket = engine_->ReserveRead(
        bytes, [this](uint64_t t) { RoomGranted(t); }, &now);
    if (now) {
      RoomGranted(ticket);
      return;
    }
    ticket_.store(ticket);
    // Cancelled while the ticket was being taken: OnCancel could not name it.
    bool cancelled;
    {
      absl::MutexLock lock(&mu_);  // never finishes
      cancelled = cancelled_;
    }
    if (cancelled) WithdrawIfQueued(ticket);
  }

  // The reservation is granted: read, unless the stream ended meanwhile.
  void RoomGranted(uint64_t ticket) {
    ticket_.store(ticket);
    {
      absl::MutexLock lock(&mu_);  // never finishes
      if (MayReadLocked()) {
        waiting_room_ = false;
        reading_ = true;
        StartReading();
        return;
      }
    }
    engine_->ReleaseRead(ticket);
    Lock lock(this, &mu_);
    waiting_room_ = false;
    MaybeFinishLocked(lock);
  }

  void WithdrawIfQueued(uint64_t ticket) {
    if (ticket != 0 && engine_->ReleaseRead(ticket)) {
      Lock lock(this, &mu_);
      waiting_room_ = false;
      MaybeFinishLocked(lock);
      return;
    }
    Lock lock(this, &mu_);
    MaybeFinishLocked(lock);
  }
};

class ChannelCall final
    : public StreamBase<grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>> {
 public:
  ChannelCall(IngestServiceImpl* service, IngestEngine* engine, auth::CallAuth auth)
      : StreamBase(service, engine, std::move(auth)) {}

  void Start() { Begin(); }

  void OnReadDone(bool ok) override { ReadDone(ok, &request_); }

  void OnWriteDone(bool ok) override {
    Lock lock(this, &mu_);
    ack_bytes_ -= acks_.front().Length();
    acks_.pop_front();
    writing_ = false;
    if (!ok) {
      cancelled_ = true;
      acks_.clear();
      ack_bytes_ = 0;
    } else if (!acks_.empty()) {
      writing_ = true;
      StartWrite(&acks_.front());
    }
    ResumeReadingLocked(lock);
    MaybeFinishLocked(lock);
  }

 private:
  void Process(std::string message, uint64_t ticket, uint64_t index) override {
    absl::StatusOr<ChannelParts> parts = ReadChannelRequest(std::move(message));
    if (!parts.ok()) {
      engine_->ReleaseRead(ticket);
      absl::MutexLock lock(&mu_);  // never finishes (the message is outstanding)
      MalformedLocked(absl::StrCat("message ", index, " of this stream"), parts.status());
      return;
    }
    const uint64_t sequence = parts->sequence;
    SubmitWrite(std::move(parts->write), ticket,
                absl::StrCat("message ", index, " of this stream (sequence ", sequence, ")"),
                [this, sequence](const absl::StatusOr<v1::WriteResponse>& r)
                    ABSL_NO_THREAD_SAFETY_ANALYSIS { Ack(sequence, r); });
  }

  void Oversized(grpc::ByteBuffer* buffer, uint64_t index) override {
    grpc::ProtoBufferReader reader(buffer);
    absl::StatusOr<uint64_t> sequence = ReadChannelSequence(&reader);
    absl::MutexLock lock(&mu_);  // never finishes (the message is outstanding)
    if (!sequence.ok()) {
      MalformedLocked(absl::StrCat("message ", index, " of this stream"), sequence.status());
      return;
    }
    Ack(*sequence, engine_->RequestTooLarge(buffer->Length()));
  }

  void StartReading() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { StartRead(&request_); }
  bool WritesIdleLocked() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !writing_ && acks_.empty();
  }
  bool ReadPausedLocked() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return ack_bytes_ > kMaxUnsentAckBytes;
  }
  grpc::Status FinalStatusLocked() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (malformed_.ok()) return grpc::Status::OK;
    return server::ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat(malformed_.message(), ". The stream ends here: ", acked_,
                     " request(s) were acknowledged; a request without an acknowledgement was not "
                     "written (resend it, fixed)")));
  }

  void Ack(uint64_t sequence, const absl::StatusOr<v1::WriteResponse>& r)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (cancelled_ || finished_) return;
    v1::ChannelResponse ack;
    ack.set_sequence(sequence);
    if (r.ok()) {
      *ack.mutable_result() = *r;
    } else {
      const grpc::Status g = server::ToGrpcStatus(r.status());
      ack.set_code(g.error_code());
      ack.set_message(g.error_message());
    }
    ++acked_;
    acks_.push_back(Serialize(ack));
    ack_bytes_ += acks_.back().Length();
    if (!writing_) {
      writing_ = true;
      StartWrite(&acks_.front());
    }
  }

  grpc::ByteBuffer request_;  // the read in progress (one at a time)
  std::deque<grpc::ByteBuffer> acks_ ABSL_GUARDED_BY(mu_);
  size_t ack_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // of acks_
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t acked_ ABSL_GUARDED_BY(mu_) = 0;
};

class WriteStreamCall final : public StreamBase<grpc::ServerReadReactor<grpc::ByteBuffer>> {
 public:
  WriteStreamCall(IngestServiceImpl* service, IngestEngine* engine, auth::CallAuth auth,
                  grpc::ByteBuffer* response)
      : StreamBase(service, engine, std::move(auth)), response_(response) {}

  void Start() { Begin(); }

  void OnReadDone(bool ok) override { ReadDone(ok, &request_); }

 private:
  void Process(std::string message, uint64_t ticket, uint64_t index) override {
    SerializedWrite write;
    write.size = message.size();
    write.buffer = std::move(message);
    SubmitWrite(std::move(write), ticket, absl::StrCat("request ", index),
                [this, index](const absl::StatusOr<v1::WriteResponse>& r)
                    ABSL_NO_THREAD_SAFETY_ANALYSIS { Record(index, r); });
  }

  void Oversized(grpc::ByteBuffer* buffer, uint64_t index) override {
    absl::MutexLock lock(&mu_);  // never finishes (the message is outstanding)
    Record(index, engine_->RequestTooLarge(buffer->Length()));
  }

  void StartReading() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { StartRead(&request_); }
  grpc::Status FinalStatusLocked() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!malformed_.ok()) {
      return server::ToGrpcStatus(absl::InvalidArgumentError(
          absl::StrCat(malformed_.message(), ". The stream ends here: ", summary_.requests(),
                       " request(s) were answered before it (", summary_.rows_written(),
                       " rows written); nothing after it was read")));
    }
    if (!error_.ok()) return server::ToGrpcStatus(error_);
    *response_ = Serialize(summary_);
    return grpc::Status::OK;
  }

  void Record(uint64_t index, const absl::StatusOr<v1::WriteResponse>& r)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    summary_.set_requests(summary_.requests() + 1);
    if (!r.ok()) {
      // The first failure ends the call; stop reading more.
      if (error_.ok()) {
        error_ = absl::Status(r.status().code(),
                              absl::StrCat("request ", index, ": ", r.status().message()));
      }
      stop_reading_ = true;
      return;
    }
    summary_.set_rows_written(summary_.rows_written() + r->rows_written());
    summary_.set_commit_lsn(std::max(summary_.commit_lsn(), r->commit_lsn()));
    summary_.set_rows_rejected(summary_.rows_rejected() + r->rejected_size());
    if (r->duplicate()) summary_.set_duplicates(summary_.duplicates() + 1);
    for (const v1::RowError& e : r->rejected()) {
      if (static_cast<size_t>(summary_.rejected_size()) >= kMaxStreamRejected) break;
      auto* out = summary_.add_rejected();
      out->set_request_index(index);
      *out->mutable_error() = e;
    }
  }

  grpc::ByteBuffer* const response_;
  grpc::ByteBuffer request_;  // the read in progress (one at a time)
  v1::WriteStreamResponse summary_ ABSL_GUARDED_BY(mu_);
  absl::Status error_ ABSL_GUARDED_BY(mu_);
};

// A streaming call refused before it began (authentication, limits).
template <typename Base>
class RefusedCall final : public Base {
 public:
  explicit RefusedCall(const absl::Status& status) { this->Finish(server::ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

// Gives a stream call its server span's context and starts it.
template <typename Call>
Call* Started(grpc::CallbackServerContext* context, Call* call) {
  call->trace = telemetry::ServerCallContext(context);
  call->Start();
  return call;
}

}  // namespace

absl::StatusOr<auth::CallAuth> IngestServiceImpl::Admit(const grpc::ServerContextBase& context) {
  if (authorizer_ == nullptr) return auth::CallAuth();
  return auth::AuthenticateAndAdmit(*authorizer_, context);
}

absl::Status IngestServiceImpl::AuthorizeWrite(const auth::Principal* who,
                                               const std::string& database,
                                               const std::string& table) const {
  if (authorizer_ == nullptr || who == nullptr) return absl::OkStatus();
  return authorizer_->CheckIngest(*who, database.empty() ? default_database_ : database, table);
}

grpc::ServerUnaryReactor* IngestServiceImpl::Write(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* request,
                                                   grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<auth::CallAuth> call_auth = Admit(*context);
  if (!call_auth.ok()) {
    reactor->Finish(server::ToGrpcStatus(call_auth.status()));
    return reactor;
  }
  if (request->Length() > engine_->max_request_bytes()) {
    reactor->Finish(server::ToGrpcStatus(engine_->RequestTooLarge(request->Length())));
    return reactor;
  }
  SerializedWrite write;
  write.buffer = Flatten(*request);
  write.size = write.buffer.size();
  absl::StatusOr<RequestHeader> header = ReadRequestHeader(write.bytes());
  absl::Status refused = header.status();
  if (header.ok()) {
    refused = AuthorizeWrite(call_auth->principal, header->database, header->table);
  }
  if (!refused.ok()) {
    reactor->Finish(server::ToGrpcStatus(refused));
    return reactor;
  }
  auto held = std::make_shared<auth::CallAuth>(*std::move(call_auth));
  telemetry::ScopedSpanContext trace(telemetry::ServerCallContext(context));
  absl::Status s = engine_->Submit(std::move(write), held->principal, /*ticket=*/0,
                                   [reactor, response, held](absl::StatusOr<v1::WriteResponse> r) {
                                     if (!r.ok()) {
                                       reactor->Finish(server::ToGrpcStatus(r.status()));
                                       return;
                                     }
                                     *response = Serialize(*r);
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

grpc::ServerReadReactor<grpc::ByteBuffer>* IngestServiceImpl::WriteStream(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  absl::StatusOr<auth::CallAuth> call_auth = Admit(*context);
  if (!call_auth.ok()) {
    return new RefusedCall<grpc::ServerReadReactor<grpc::ByteBuffer>>(call_auth.status());
  }
  return Started(context, new WriteStreamCall(this, engine_, *std::move(call_auth), response));
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* IngestServiceImpl::Channel(
    grpc::CallbackServerContext* context) {
  absl::StatusOr<auth::CallAuth> call_auth = Admit(*context);
  if (!call_auth.ok()) {
    return new RefusedCall<grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>>(
        call_auth.status());
  }
  return Started(context, new ChannelCall(this, engine_, *std::move(call_auth)));
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
