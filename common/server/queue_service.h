#ifndef POOLSIDE_COMMON_SERVER_QUEUE_SERVICE_H_
#define POOLSIDE_COMMON_SERVER_QUEUE_SERVICE_H_

// Services served by ONE thread: gRPC's async API, one completion queue, one
// thread that polls it (queue_thread.h) and runs every call's handler inline.
// Why query and the sidecar are served this way, with the measurements:
// docs/design.md, "Threading: one queue thread (decision record)".
//
// A queue service's handlers must therefore never block: there is no other
// thread to serve calls meanwhile (query hands database work to its workers,
// which answer their calls from their own threads). A client in the same
// process must use the async API on the same queue too (Server::queue()).
//
// A server (common/server/server.h) has either callback services or queue
// services, not both: a callback method, or a synchronous one, would bring
// gRPC's own polling threads back. For the same reason a queue server serves
// grpc.health.v1 (Check and Watch) and gRPC reflection (queue_reflection.h)
// itself on its queue.
//
// Threading: Begin() runs on the thread that starts the server, before the
// queue thread polls; every QueueTag::Proceed runs on the queue thread. State
// that only calls touch needs no lock (QueueThread::AssertOn says so in
// code); other threads reach it with RunOnQueue().

#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/server/queue_thread.h"
#include "common/server/status.h"
#include "common/sync/mutex.h"
#include "common/telemetry/metrics_interceptor.h"
#include "common/telemetry/trace_context.h"
#include "common/telemetry/trace_grpc.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"

namespace poolside::server {

// A tag that runs one step of an object on the queue thread, for objects
// with several operations in flight (a call's request, writes, finish and
// done notification each need a tag of their own):
//
//   QueueStep<Watch, &Watch::OnWritten> written_{this};
//   writer_.Write(event, &written_);   // later: this->OnWritten(ok)
template <typename T, void (T::*kStep)(bool)>
class QueueStep final : public QueueTag {
 public:
  explicit QueueStep(T* owner) : owner_(owner) {}
  void Proceed(bool ok) override { (owner_->*kStep)(ok); }

 private:
  T* const owner_;
};

// What the streaming calls served on a queue share, for `Call`, which derives
// from it, on a `Stream` (grpc::ServerAsyncWriter<...>,
// grpc::ServerAsyncReaderWriter<...>):
// - gRPC's done notification, asked for before Call requests the call, so that
//   it comes back for every call that starts (not for one that never starts:
//   Arrived() deletes that one);
// - the operations in flight, each started with Start(tag) and marked back by
//   Returned() in Call's step: one at a time (read, write or finish), except
//   that a Finish may join a read in flight, as gRPC allows (to end a stream
//   whose client sends nothing; the read then comes back not ok);
// - Finish(status), once, recording the call's telemetry (a call whose stream
//   broke or that the client cancelled gets none: it counts as CANCELLED);
// - deletion once the done notification and every operation are back
//   (MaybeDelete(), which each of Call's steps ends with).
// To end an open call from the server, Finish it rather than TryCancel() its
// context: a status sent by Finish always reaches the client, while a
// server-side cancel of the last stream on a connection that gRPC's drain has
// already told to go away (GOAWAY) can close the connection before the
// cancel's status is written, and the client then sees UNAVAILABLE "Socket
// closed" instead.
// Call::Forget() takes the call out of whatever its service keeps to reach it:
// called when the stream breaks and before deletion, possibly more than once.
// Call makes QueueStreamCall a friend if its destructor is private.
template <typename Call, typename Stream>
class QueueStreamCall {
 public:
  QueueStreamCall(const QueueStreamCall&) = delete;
  QueueStreamCall& operator=(const QueueStreamCall&) = delete;

 protected:
  QueueStreamCall() : stream_(&context_) { context_.AsyncNotifyWhenDone(&done_); }
  ~QueueStreamCall() = default;

  // The first thing Call's request step does: false when the request came
  // back not ok (shutting down: the call never started and no done
  // notification follows), and then the call is deleted; otherwise the call's
  // telemetry (`method`) begins.
  bool Arrived(bool ok, const telemetry::ServerCallTelemetry::Method* method) {
    if (!ok) {
      delete self();
      return false;
    }
    record_.Begin(method, &context_);
    return true;
  }

  // `tag`, with an operation marked in flight: stream_.Write(m, Start(&written_)).
  QueueTag* Start(QueueTag* tag) {
    ++in_flight_;
    return tag;
  }
  // An operation started with Start() came back.
  void Returned() { --in_flight_; }
  bool busy() const { return in_flight_ > 0; }

  // The stream is broken (a write failed, the client cancelled): nothing more
  // is sent on it.
  void Broke() {
    broken_ = true;
    self()->Forget();
  }
  bool broken() const { return broken_; }

  // Ends the call with `status`, once; not on a broken stream. Only when no
  // other operation is in flight, or only a read.
  void Finish(const grpc::Status& status) {
    if (finish_sent_ || broken_) return;
    finish_sent_ = true;
    record_.End(status);
    stream_.Finish(status, Start(&finished_));
  }
  bool finish_sent() const { return finish_sent_; }

  void MaybeDelete() {
    if (!done_called_ || busy()) return;
    self()->Forget();
    delete self();
  }

  grpc::ServerContext context_;
  Stream stream_;
  telemetry::ServerCallRecord record_;

 private:
  Call* self() { return static_cast<Call*>(this); }

  void OnFinished(bool /*ok*/) {
    Returned();
    MaybeDelete();
  }

  void OnDone(bool /*ok*/) {
    done_called_ = true;
    if (context_.IsCancelled()) Broke();
    MaybeDelete();
  }

  QueueStep<QueueStreamCall, &QueueStreamCall::OnFinished> finished_{this};
  QueueStep<QueueStreamCall, &QueueStreamCall::OnDone> done_{this};
  int in_flight_ = 0;  // operations started and not yet back
  bool broken_ = false;
  bool finish_sent_ = false;
  bool done_called_ = false;
};

// The open streaming calls of one kind that a queue service reaches from
// outside the call (to publish to them, to end them when the drain starts).
// Queue thread only. Once closed it admits no call; at most `max` are open.
template <typename Call>
class OpenCalls {
 public:
  enum class Admission { kAdmitted, kClosed, kFull };

  explicit OpenCalls(size_t max = std::numeric_limits<size_t>::max()) : max_(max) {}

  Admission Admit(Call* call) {
    if (closed_) return Admission::kClosed;
    if (calls_.size() >= max_) return Admission::kFull;
    calls_.insert(call);
    return Admission::kAdmitted;
  }
  void Remove(Call* call) { calls_.erase(call); }
  size_t size() const { return calls_.size(); }

  // Runs fn(call) on each open call; fn may remove it.
  template <typename Fn>
  void ForEach(Fn fn) const {
    const std::vector<Call*> open(calls_.begin(), calls_.end());
    for (Call* call : open) fn(call);
  }

  // Admits no more calls, then runs fn(call) on each open one (to end it).
  template <typename Fn>
  void Close(Fn fn) {
    closed_ = true;
    ForEach(std::move(fn));
  }

 private:
  const size_t max_;
  absl::flat_hash_set<Call*> calls_;
  bool closed_ = false;
};

class QueueService {
 public:
  virtual ~QueueService() = default;
  // The generated AsyncService to register; every method of it must be
  // requested in Begin() (a method never requested leaves its calls waiting).
  virtual grpc::Service* grpc_service() = 0;
  // Its full name ("poolside.v1.CacheService"), as reflection lists it.
  virtual std::string service_name() const = 0;
  // Requests the first calls on `cq`, the server's one completion queue.
  // `calls` (ServerOptions::call_telemetry; null: none) is where the calls
  // record their metrics and spans: no interceptor sees a queue server's calls.
  virtual void Begin(grpc::ServerCompletionQueue* cq, telemetry::ServerCallTelemetry* calls) = 0;
};

// The telemetry handle of method `name` of the generated `GrpcService`
// (v1::CacheService, ...), or null when `calls` is.
template <typename GrpcService>
const telemetry::ServerCallTelemetry::Method* QueueMethod(
    telemetry::ServerCallTelemetry* calls, absl::string_view name,
    grpc::experimental::ServerRpcInfo::Type type = grpc::experimental::ServerRpcInfo::Type::UNARY) {
  if (calls == nullptr) return nullptr;
  return calls->AddMethod(absl::StrCat("/", GrpcService::service_full_name(), "/", name), type);
}

// The call layer: calls whose handler runs on the queue thread when the call
// arrives and whose answer may come later, from any thread (a database
// worker). Each call records its metrics and span (QueueMethod()) from its
// arrival to its answer, runs its handler inside the call's span context (so
// work started there joins the trace), converts the handler's absl::Status
// once (status.h) and is answered once: later answers are ignored. A call
// whose caller goes away (cancels, its deadline passes, the server shuts
// down) before it is answered runs the function given to OnCancel(), on the
// queue thread: that is how the work answering it is stopped.
//
// A service keeps one QueueCalls, serves its methods from Begin() as a table
// of handlers, and waits for its calls before the queue shuts down
// (ServerOptions::before_queue_shutdown):
//
//   calls_.Begin(cq, telemetry, v1::Foo::service_full_name());
//   calls_.Unary(&async_, &Async::RequestGet, "Get", /*slots=*/8,
//                [this](QueueUnaryCall<GetRequest, GetResponse>* call) {
//                  Job* job = core_->Get(call->request(), call->response(),
//                                        [call](absl::Status s) { call->Complete(s); });
//                  call->OnCancel([call, job] {
//                    if (job->Cancel()) call->Complete(absl::CancelledError("cancelled"));
//                  });
//                });
//
// Lifetime: a call lives until its answer, its done notification and its
// writes are back, all on the queue thread; so the handler and the cancel
// function may use the call throughout (and answer it more than once: the
// first answer counts), while another thread may use it only until it
// answers it: nothing of a call (its request, response, what it keeps) may
// be touched after that. Where both the work and the cancel function may
// answer, the core decides which one does (query: Work::Abandon()).

class QueueCalls;

// What a call's method gives each of its calls. Shared by the calls of a
// method (the last one deletes it).
template <typename Request, typename Stream, typename Call>
struct QueueCallMethod {
  // Counts the method's calls (null: not counted).
  QueueCalls* calls = nullptr;
  // Whether calls watch for their caller going away (OnCancel): costs one more
  // queue event per call, so a method whose handlers answer inline does not.
  bool watch_cancel = false;
  const telemetry::ServerCallTelemetry::Method* telemetry = nullptr;
  // Requests one call: the generated Request<Method>(context, request,
  // stream, cq, cq, tag).
  std::function<void(grpc::ServerContext*, Request*, Stream*, void* tag)> request;
  // Runs on the queue thread when a call arrived.
  std::function<void(Call*)> handle;
};

// What every call of the layer has; see the derived calls below.
class QueueCall {
 public:
  QueueCall(const QueueCall&) = delete;
  QueueCall& operator=(const QueueCall&) = delete;

  grpc::ServerContext& context() { return context_; }
  // The caller's deadline (InfiniteFuture when it set none).
  absl::Time deadline() const;

  // Keeps `value` (e.g. the caller's admission permit, a rewritten request)
  // until the call is deleted, and returns where it is kept. Queue thread.
  template <typename T>
  T* Keep(T value) {
    auto kept = std::make_shared<T>(std::move(value));
    T* where = kept.get();
    kept_.push_back(std::move(kept));
    return where;
  }

  // `cancel` runs once, on the queue thread, if the caller goes away before
  // the call is answered; it stops the work that answers the call and, when
  // that work will not answer it any more, answers it. Queue thread (the
  // handler); replaces an earlier one. Never runs for methods that do not
  // watch for cancellation (UnaryQueueCall).
  void OnCancel(std::function<void()> cancel) { cancel_ = std::move(cancel); }

 protected:
  QueueCall(QueueCalls* calls, bool watch_cancel);
  virtual ~QueueCall() = default;

  // The call arrived (queue thread): counted, recorded under `method`,
  // holding one reference for its answer (and one for its done notification).
  void Arrive(const telemetry::ServerCallTelemetry::Method* method);
  // A requested `call` of `method` came back (`ok`): deleted when it never
  // started (shutting down: no done notification follows); otherwise the next
  // one is requested, and `call` arrives and runs its handler inside its span
  // context.
  template <typename Call, typename Method>
  static void Start(Call* call, bool ok, const std::shared_ptr<const Method>& method) {
    if (!ok) {
      delete call;
      return;
    }
    Call::Post(method);
    call->Arrive(method->telemetry);
    telemetry::ScopedSpanContext trace(telemetry::ServerCallContext(&call->context_));
    method->handle(call);
  }
  void AddRefLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { ++refs_; }
  // Drops a reference; the last deletes the call. Queue thread.
  void Release();
  // The status the call ends with, recorded.
  grpc::Status Ending(const absl::Status& status);
  // The caller went away; stop what would send more (under mu_).
  virtual void CallerGoneLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {}

  grpc::ServerContext context_;
  // sync::Mutex: TSan must see this lock (common/sync/mutex.h).
  sync::Mutex mu_;
  // The call's answer was given (Complete() called).
  bool answered_ ABSL_GUARDED_BY(mu_) = false;

 private:
  void OnDone(bool ok);

  QueueCalls* const calls_;
  const bool watch_cancel_;
  telemetry::ServerCallRecord record_;
  QueueStep<QueueCall, &QueueCall::OnDone> done_{this};
  bool arrived_ = false;
  int refs_ ABSL_GUARDED_BY(mu_) = 0;
  std::function<void()> cancel_;
  std::vector<std::shared_ptr<void>> kept_;
};

// A unary call: answered once with Complete(), from any thread.
template <typename Request, typename Response>
class QueueUnaryCall final : public QueueCall {
 public:
  using Method =
      QueueCallMethod<Request, grpc::ServerAsyncResponseWriter<Response>, QueueUnaryCall>;

  // Requests one call of `method`; when it arrives, the next.
  static void Post(std::shared_ptr<const Method> method) { new QueueUnaryCall(std::move(method)); }

  const Request& request() const { return request_; }
  Response* response() { return &response_; }

  // Answers the call: response() when `status` is ok, else the status alone.
  // The first answer counts; any thread.
  void Complete(const absl::Status& status) {
    {
      sync::MutexLock lock(&mu_);
      if (answered_) return;
      answered_ = true;
    }
    const grpc::Status answer = Ending(status);
    if (answer.ok()) {
      writer_.Finish(response_, answer, HandOff(&finished_));
    } else {
      writer_.FinishWithError(answer, HandOff(&finished_));
    }
  }

 private:
  explicit QueueUnaryCall(std::shared_ptr<const Method> method)
      : QueueCall(method->calls, method->watch_cancel),
        method_(std::move(method)),
        writer_(&context_) {
    method_->request(&context_, &request_, &writer_, &requested_);
  }

  void OnRequested(bool ok) { Start(this, ok, method_); }
  void OnFinished(bool /*ok*/) { Release(); }

  const std::shared_ptr<const Method> method_;
  Request request_;
  Response response_;
  grpc::ServerAsyncResponseWriter<Response> writer_;
  QueueStep<QueueUnaryCall, &QueueUnaryCall::OnRequested> requested_{this};
  QueueStep<QueueUnaryCall, &QueueUnaryCall::OnFinished> finished_{this};
};

// A server-streaming call: messages written with Write() from a producer's
// thread, one at a time on the wire; at most kMaxQueued wait for the network,
// so a slow reader holds the producer (and whatever it reads from) back
// instead of growing memory. Complete() ends it once the queued messages are
// written.
template <typename Request, typename Response>
class QueueWriterCall final : public QueueCall {
 public:
  static constexpr size_t kMaxQueued = 2;
  using Method = QueueCallMethod<Request, grpc::ServerAsyncWriter<Response>, QueueWriterCall>;

  static void Post(std::shared_ptr<const Method> method) { new QueueWriterCall(std::move(method)); }

  const Request& request() const { return request_; }

  // Sends `message` after the ones before it; blocks while kMaxQueued wait.
  // False once the caller is gone or the call answered (nothing more is
  // sent). Not on the queue thread (it would wait for itself).
  bool Write(std::unique_ptr<Response> message) {
    Response* write = nullptr;
    {
      sync::MutexLock lock(&mu_);
      while (!gone_ && !answered_ && queue_.size() >= kMaxQueued) changed_.Wait(&mu_);
      if (gone_ || answered_) return false;
      queue_.push_back(std::move(message));
      if (!writing_) write = StartWriteLocked();
    }
    if (write != nullptr) stream_.Write(*write, HandOff(&written_));
    return true;
  }

  // Ends the call with `status` once the queued messages are written (at once
  // when the caller is gone). The first answer counts; any thread.
  void Complete(const absl::Status& status) {
    absl::Status finish;
    {
      sync::MutexLock lock(&mu_);
      if (answered_) return;
      answered_ = true;
      changed_.SignalAll();  // a Write() waiting for room returns false
      final_ = status;
      if (!FinishNowLocked(&finish)) return;
    }
    stream_.Finish(Ending(finish), HandOff(&finished_));
  }

 private:
  explicit QueueWriterCall(std::shared_ptr<const Method> method)
      : QueueCall(method->calls, method->watch_cancel),
        method_(std::move(method)),
        stream_(&context_) {
    method_->request(&context_, &request_, &stream_, &requested_);
  }

  void OnRequested(bool ok) { Start(this, ok, method_); }

  void OnWritten(bool ok) {
    Response* write = nullptr;
    absl::Status finish;
    bool finish_now = false;
    {
      sync::MutexLock lock(&mu_);
      queue_.pop_front();
      writing_ = false;
      if (!ok) {  // the stream is broken: the caller is gone
        gone_ = true;
        queue_.clear();
      }
      changed_.SignalAll();  // room for a waiting Write(), or it returns false
      if (!queue_.empty()) {
        write = StartWriteLocked();
      } else {
        finish_now = FinishNowLocked(&finish);
      }
    }
    if (write != nullptr) stream_.Write(*write, &written_);
    if (finish_now) stream_.Finish(Ending(finish), &finished_);
    Release();  // this write's
  }

  void OnFinished(bool /*ok*/) { Release(); }

  void CallerGoneLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) override {
    gone_ = true;
    changed_.SignalAll();
  }

  // The message to write next; the write holds a reference until OnWritten.
  Response* StartWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    writing_ = true;
    AddRefLocked();
    return queue_.front().get();
  }

  // Whether to finish now (once): answered, no write out, nothing more to
  // write (or nobody to write it to).
  bool FinishNowLocked(absl::Status* status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finish_sent_ || writing_ || !answered_) return false;
    if (!gone_ && !queue_.empty()) return false;
    finish_sent_ = true;
    *status = final_;
    return true;
  }

  const std::shared_ptr<const Method> method_;
  Request request_;
  grpc::ServerAsyncWriter<Response> stream_;
  QueueStep<QueueWriterCall, &QueueWriterCall::OnRequested> requested_{this};
  QueueStep<QueueWriterCall, &QueueWriterCall::OnWritten> written_{this};
  QueueStep<QueueWriterCall, &QueueWriterCall::OnFinished> finished_{this};
  sync::CondVar changed_;  // gone_, answered_ or the size of queue_ changed
  std::deque<std::unique_ptr<Response>> queue_ ABSL_GUARDED_BY(mu_);  // front: being written
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool gone_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_sent_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status final_ ABSL_GUARDED_BY(mu_);
};

// The generated Request<Method> of an async service whose calls stream
// through `Stream` (ServerAsyncResponseWriter<Response>, ServerAsyncWriter<..>).
template <typename Class, typename Request, typename Stream>
using QueueRequestFn = void (Class::*)(grpc::ServerContext*, Request*, Stream*,
                                       grpc::CompletionQueue*, grpc::ServerCompletionQueue*, void*);

// The calls of one queue service: serves its methods (each call watches for
// its caller going away) and counts its calls until they are deleted.
// Begin(), Unary() and ServerStream() run in the service's Begin();
// WaitForCalls() from any thread.
class QueueCalls {
 public:
  QueueCalls() = default;
  QueueCalls(const QueueCalls&) = delete;
  QueueCalls& operator=(const QueueCalls&) = delete;

  // The arguments of QueueService::Begin(), and the generated service's full
  // name ("poolside.v1.QueryService") under which calls are recorded.
  void Begin(grpc::ServerCompletionQueue* cq, telemetry::ServerCallTelemetry* telemetry,
             absl::string_view service_full_name);

  // Serves unary method `name` (requested through `request` of `service`)
  // with `slots` requests outstanding: each call that arrives runs
  // handle(QueueUnaryCall<Request, Response>*) on the queue thread.
  template <typename AsyncService, typename Class, typename Request, typename Response,
            typename Handle>
  void Unary(AsyncService* service,
             QueueRequestFn<Class, Request, grpc::ServerAsyncResponseWriter<Response>> request,
             absl::string_view name, int slots, Handle handle) {
    Serve<QueueUnaryCall<Request, Response>>(service, request, name,
                                             grpc::experimental::ServerRpcInfo::Type::UNARY, slots,
                                             std::move(handle));
  }

  // Likewise for server-streaming method `name`: QueueWriterCall<Request, Response>.
  template <typename AsyncService, typename Class, typename Request, typename Response,
            typename Handle>
  void ServerStream(AsyncService* service,
                    QueueRequestFn<Class, Request, grpc::ServerAsyncWriter<Response>> request,
                    absl::string_view name, int slots, Handle handle) {
    Serve<QueueWriterCall<Request, Response>>(
        service, request, name, grpc::experimental::ServerRpcInfo::Type::SERVER_STREAMING, slots,
        std::move(handle));
  }

  // Calls that arrived and are not deleted yet.
  int live() const;
  // Waits until every call that arrived has been deleted (answered, its
  // caller's done notification back), or `timeout` passed: false then. After
  // the server's shutdown, before its queue's, while the queue is polled:
  // calls answered later would answer on a queue that no longer exists.
  bool WaitForCalls(absl::Duration timeout = absl::InfiniteDuration());

 private:
  friend class QueueCall;

  template <typename Call, typename AsyncService, typename Class, typename Request, typename Stream,
            typename Handle>
  void Serve(AsyncService* service, QueueRequestFn<Class, Request, Stream> request,
             absl::string_view name, grpc::experimental::ServerRpcInfo::Type type, int slots,
             Handle handle) {
    auto method = std::make_shared<typename Call::Method>();
    method->calls = this;
    method->watch_cancel = true;
    method->telemetry = telemetry_ == nullptr
                            ? nullptr
                            : telemetry_->AddMethod(absl::StrCat("/", service_, "/", name), type);
    Class* target = service;
    grpc::ServerCompletionQueue* cq = cq_;
    method->request = [target, request, cq](grpc::ServerContext* context, Request* message,
                                            Stream* stream, void* tag) {
      (target->*request)(context, message, stream, cq, cq, tag);
    };
    method->handle = std::move(handle);
    for (int i = 0; i < slots; ++i) Call::Post(method);
  }

  void Arrived();
  void Left();

  grpc::ServerCompletionQueue* cq_ = nullptr;
  telemetry::ServerCallTelemetry* telemetry_ = nullptr;
  std::string service_;
  mutable sync::Mutex mu_;
  sync::CondVar left_;  // live_ reached 0
  int live_ ABSL_GUARDED_BY(mu_) = 0;
};

// A unary method answered inline, by a handler of `Owner`: absl::Status
// (Owner::*kHandle)(const Request&, Response*), or, for a handler that reads
// the call's metadata (e.g. to authenticate it), absl::Status
// (Owner::*kHandle)(const grpc::ServerContext&, const Request&, Response*).
// A QueueUnaryCall that does not watch for cancellation and is not counted.
// Post() requests one call; once a call arrives, another is requested in its
// place, so the method keeps as many requests outstanding as Begin() started.
// Each call records itself under `method` (QueueMethod(); null: not recorded).
//
//   using GetCall = UnaryQueueCall<Impl, v1::Foo::AsyncService, GetRequest,
//                                  GetResponse, &v1::Foo::AsyncService::RequestGet,
//                                  &Impl::Get>;
//   auto* get = QueueMethod<v1::Foo>(calls, "Get");
//   for (int i = 0; i < 8; ++i) GetCall::Post(this, &async_, cq, get);
template <typename Owner, typename AsyncService, typename Request, typename Response,
          auto kRequestMethod, auto kHandle>
class UnaryQueueCall final {
 public:
  using Call = QueueUnaryCall<Request, Response>;

  static void Post(Owner* owner, AsyncService* service, grpc::ServerCompletionQueue* cq,
                   const telemetry::ServerCallTelemetry::Method* method = nullptr) {
    auto m = std::make_shared<typename Call::Method>();
    m->telemetry = method;
    m->request = [service, cq](grpc::ServerContext* context, Request* request,
                               grpc::ServerAsyncResponseWriter<Response>* writer, void* tag) {
      (service->*kRequestMethod)(context, request, writer, cq, cq, tag);
    };
    m->handle = [owner](Call* call) {
      if constexpr (std::is_invocable_v<decltype(kHandle), Owner*, const grpc::ServerContext&,
                                        const Request&, Response*>) {
        call->Complete((owner->*kHandle)(call->context(), call->request(), call->response()));
      } else {
        call->Complete((owner->*kHandle)(call->request(), call->response()));
      }
    };
    Call::Post(std::move(m));
  }
};

// grpc.health.v1.Health (Check and Watch) served on a queue server's queue,
// and the HealthCheckServiceInterface through which Server sets its statuses
// (as gRPC's default health service does for callback servers): "" (the server
// as a whole) starts SERVING; a name never set is NOT_FOUND to Check and
// SERVICE_UNKNOWN to Watch; after Shutdown() every name is NOT_SERVING for
// good. SetServingStatus is thread-safe.
//
// A Watch gets the current status at once and then every change (a status
// that flips and flips back between two writes is sent once, as the latest),
// the way gRPC's client-side health checking expects. EndWatches() (Server
// calls it when its drain starts) sends each watch its last status and ends
// it UNAVAILABLE, so that a watch never holds the drain; at most kMaxWatches
// are open at once, further ones end RESOURCE_EXHAUSTED.
class QueueHealthService final : public QueueService, public grpc::HealthCheckServiceInterface {
 public:
  static constexpr size_t kMaxWatches = 1024;

  QueueHealthService();

  grpc::Service* grpc_service() override { return &async_; }
  std::string service_name() const override;
  void Begin(grpc::ServerCompletionQueue* cq, telemetry::ServerCallTelemetry* calls) override;

  void SetServingStatus(const std::string& service_name, bool serving) override;
  void SetServingStatus(bool serving) override;
  void Shutdown() override;
  // Ends every watch, and every watch that arrives later (any thread; before
  // the queue shuts down).
  void EndWatches();

  absl::Status Check(const grpc::health::v1::HealthCheckRequest& request,
                     grpc::health::v1::HealthCheckResponse* response);

 private:
  class Watch;

  grpc::health::v1::HealthCheckResponse::ServingStatus WatchedStatus(const std::string& name);
  // Has every watch send its service's status if it changed (queue thread).
  void Publish();
  void PublishSoonLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  grpc::health::v1::Health::AsyncService async_;
  sync::Mutex mu_;
  absl::flat_hash_map<std::string, bool> serving_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  // Set by Begin(); null before (no watch can exist then).
  grpc::ServerCompletionQueue* cq_ ABSL_GUARDED_BY(mu_) = nullptr;
  const telemetry::ServerCallTelemetry::Method* watch_method_ = nullptr;
  OpenCalls<Watch> watches_{kMaxWatches};
};

}  // namespace poolside::server

#endif  // POOLSIDE_COMMON_SERVER_QUEUE_SERVICE_H_
