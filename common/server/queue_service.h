#ifndef POOLSIDE_COMMON_SERVER_QUEUE_SERVICE_H_
#define POOLSIDE_COMMON_SERVER_QUEUE_SERVICE_H_

// Services served by ONE thread: gRPC's async API, one completion queue, one
// thread that polls it and runs every call's handler inline.
//
// Why a second model next to the callback API (which ingest uses): gRPC
// 1.51's callback server always polls with at least two threads
// (clamp(cores / 2, 2, 16)), and on a 2-core host those threads hand the
// poller role to each other at every wake-up. For calls that are mostly a
// short in-memory step (a sidecar Get, a cached read through query) that
// hand-off is most of the cost: the same Get handler served by one queue
// thread ran 1.5x the calls with a p99 of 0.3-0.4 ms instead of 2.2-2.5 ms at
// 32 callers (bench/results/get-threading-models-*.md), and Execute hits 1.4x
// with a p99 of ~0.7 ms instead of ~4 ms
// (bench/results/execute-threading-models-*.md). A queue service's handlers
// must therefore never block: there is no other thread to serve calls
// meanwhile (query hands database work to its workers, which answer their
// calls from their own threads). A client in the same process must use the
// async API on the same queue too (Server::queue()).
//
// A server (common/server/server.h) has either callback services or queue
// services, not both: a single callback method brings the callback API's
// polling threads back (and with them the hand-offs), and so would a
// synchronous one; for the same reason a queue server serves grpc.health.v1
// (Check and Watch) and gRPC reflection (queue_reflection.h) itself on its
// queue.
//
// Threading: Begin() runs on the thread that starts the server, before the
// queue thread polls; every QueueTag::Proceed runs on the queue thread. State
// that only calls touch needs no lock; other threads reach it with
// RunOnQueue().

#include <functional>
#include <limits>
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
#include "absl/synchronization/mutex.h"
#include "common/server/status.h"
#include "common/telemetry/metrics_interceptor.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"

namespace poolside::server {

// What a queue operation's tag points to: Proceed(ok) runs on the queue
// thread when the operation completes (ok as gRPC reports it).
class QueueTag {
 public:
  virtual void Proceed(bool ok) = 0;

 protected:
  ~QueueTag() = default;
};

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
// - at most one operation (read, write or finish) in flight, started with
//   Start(tag) and marked back by Returned() in Call's step;
// - Finish(status), once, recording the call's telemetry (a call whose stream
//   broke or that the client cancelled gets none: it counts as CANCELLED);
// - deletion once the done notification and the last operation are back
//   (MaybeDelete(), which each of Call's steps ends with).
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
    busy_ = true;
    return tag;
  }
  // The operation started with Start() came back.
  void Returned() { busy_ = false; }
  bool busy() const { return busy_; }

  // The stream is broken (a write failed, the client cancelled): nothing more
  // is sent on it.
  void Broke() {
    broken_ = true;
    self()->Forget();
  }
  bool broken() const { return broken_; }

  // Ends the call with `status`, once; not on a broken stream. Only when no
  // other operation is in flight.
  void Finish(const grpc::Status& status) {
    if (finish_sent_ || broken_) return;
    finish_sent_ = true;
    record_.End(status);
    stream_.Finish(status, Start(&finished_));
  }
  bool finish_sent() const { return finish_sent_; }

  void MaybeDelete() {
    if (!done_called_ || busy_) return;
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
  bool busy_ = false;
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

// Polls `cq` on the calling thread, running each tag's Proceed (every tag on
// it must be a QueueTag), until the queue is shut down and drained.
void PollQueue(grpc::CompletionQueue* cq);

// Runs `fn` on the queue thread of `cq`, soon. The queue must not be shut
// down yet (Server shuts it down after the drain, see server.h).
void RunOnQueue(grpc::CompletionQueue* cq, std::function<void()> fn);

// One requested call of a unary method, answered inline by a handler of
// `Owner`: absl::Status (Owner::*kHandle)(const Request&, Response*), or, for
// a handler that reads the call's metadata (e.g. to authenticate it),
// absl::Status (Owner::*kHandle)(const grpc::ServerContext&, const Request&,
// Response*). Once a
// call arrives, another is requested in its place, so the method keeps as
// many requests outstanding as Begin() started. Each call records itself
// under `method` (QueueMethod(); null: not recorded).
//
//   using GetCall = UnaryQueueCall<Impl, v1::Foo::AsyncService, GetRequest,
//                                  GetResponse, &v1::Foo::AsyncService::RequestGet,
//                                  &Impl::Get>;
//   auto* get = QueueMethod<v1::Foo>(calls, "Get");
//   for (int i = 0; i < 8; ++i) GetCall::Post(this, &async_, cq, get);
template <typename Owner, typename AsyncService, typename Request, typename Response,
          auto kRequestMethod, auto kHandle>
class UnaryQueueCall final : public QueueTag {
 public:
  static void Post(Owner* owner, AsyncService* service, grpc::ServerCompletionQueue* cq,
                   const telemetry::ServerCallTelemetry::Method* method = nullptr) {
    new UnaryQueueCall(owner, service, cq, method);
  }

  void Proceed(bool ok) override {
    // !ok before the answer: the server is shutting down; after it: the
    // answer could not be sent (the caller is gone). Either way, done.
    if (!ok || answered_) {
      delete this;
      return;
    }
    Post(owner_, service_, cq_, method_);
    answered_ = true;
    record_.Begin(method_, &context_);
    absl::Status status;
    if constexpr (std::is_invocable_v<decltype(kHandle), Owner*, const grpc::ServerContext&,
                                      const Request&, Response*>) {
      status = (owner_->*kHandle)(context_, request_, &response_);
    } else {
      status = (owner_->*kHandle)(request_, &response_);
    }
    if (status.ok()) {
      record_.End(grpc::Status::OK);
      writer_.Finish(response_, grpc::Status::OK, this);
    } else {
      const grpc::Status error = ToGrpcStatus(status);
      record_.End(error);
      writer_.FinishWithError(error, this);
    }
  }

 private:
  UnaryQueueCall(Owner* owner, AsyncService* service, grpc::ServerCompletionQueue* cq,
                 const telemetry::ServerCallTelemetry::Method* method)
      : owner_(owner), service_(service), cq_(cq), method_(method), writer_(&context_) {
    (service_->*kRequestMethod)(&context_, &request_, &writer_, cq_, cq_, this);
  }
  ~UnaryQueueCall() = default;

  Owner* const owner_;
  AsyncService* const service_;
  grpc::ServerCompletionQueue* const cq_;
  const telemetry::ServerCallTelemetry::Method* const method_;
  grpc::ServerContext context_;
  Request request_;
  Response response_;
  grpc::ServerAsyncResponseWriter<Response> writer_;
  telemetry::ServerCallRecord record_;
  bool answered_ = false;
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
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, bool> serving_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  // Set by Begin(); null before (no watch can exist then).
  grpc::ServerCompletionQueue* cq_ ABSL_GUARDED_BY(mu_) = nullptr;
  const telemetry::ServerCallTelemetry::Method* watch_method_ = nullptr;
  OpenCalls<Watch> watches_{kMaxWatches};
};

}  // namespace poolside::server

#endif  // POOLSIDE_COMMON_SERVER_QUEUE_SERVICE_H_
