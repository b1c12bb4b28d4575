#include "services/query/query_service.h"

#include <deque>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/server/status.h"
#include "common/telemetry/trace_grpc.h"

namespace poolside::query {
namespace {

absl::Time DeadlineOf(grpc::CallbackServerContext* context) {
  const auto d = context->deadline();
  if (d == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(d);
}

std::string HolderOf(absl::string_view method, grpc::CallbackServerContext* context) {
  return absl::StrCat(method, " from ", context->peer());
}

// The status a call gets when it ends before its work ran.
absl::Status EndedEarly(absl::Time deadline) {
  if (absl::Now() >= deadline) {
    return absl::DeadlineExceededError(
        "deadline passed while waiting for a database connection");
  }
  return absl::CancelledError("call cancelled by the caller");
}

// A unary call whose work runs on an engine worker.
class UnaryCall : public grpc::ServerUnaryReactor {
 public:
  explicit UnaryCall(absl::Time deadline) : deadline_(deadline) {}

  void Start(absl::StatusOr<std::shared_ptr<Work>> work) {
    if (!work.ok()) {
      Complete(work.status());
      return;
    }
    absl::MutexLock lock(&mu_);
    work_ = *std::move(work);
  }

  void Complete(const absl::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
    }
    Finish(server::ToGrpcStatus(status));
  }

  void OnCancel() override {
    std::shared_ptr<Work> work;
    {
      absl::MutexLock lock(&mu_);
      work = work_;
    }
    if (work == nullptr) return;
    work->cancelled.store(true);
    // Not started yet: answer now. Running: its statement is being cancelled and
    // done() answers.
    if (work->Abandon()) Complete(EndedEarly(deadline_));
  }

  void OnDone() override { delete this; }

 private:
  const absl::Time deadline_;
  absl::Mutex mu_;
  std::shared_ptr<Work> work_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

// Streams chunks produced on a worker thread; at most kMaxQueued chunks wait
// for the network, so a slow reader holds the worker (and the statement) back
// instead of growing memory.
class StreamCall : public grpc::ServerWriteReactor<v1::ExecuteStreamResponse>,
                   public ChunkWriter {
 public:
  static constexpr size_t kMaxQueued = 2;

  explicit StreamCall(absl::Time deadline) : deadline_(deadline) {}

  void Begin(absl::StatusOr<std::shared_ptr<Work>> work) {
    if (!work.ok()) {
      Done(work.status());
      return;
    }
    absl::MutexLock lock(&mu_);
    work_ = *std::move(work);
  }

  bool Write(std::unique_ptr<v1::ExecuteStreamResponse> chunk) override {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](StreamCall* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->mu_) {
          return c->cancelled_ || c->queue_.size() < kMaxQueued;
        },
        this));
    if (cancelled_) return false;
    queue_.push_back(std::move(chunk));
    if (!writing_) {
      writing_ = true;
      StartWrite(queue_.front().get());
    }
    return true;
  }

  // The producer's outcome: finish once the queued chunks are written.
  void Done(const absl::Status& status) {
    absl::MutexLock lock(&mu_);
    producer_done_ = true;
    final_status_ = status;
    MaybeFinishLocked();
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    queue_.pop_front();
    writing_ = false;
    if (!ok) {
      cancelled_ = true;
      queue_.clear();
    } else if (!queue_.empty()) {
      writing_ = true;
      StartWrite(queue_.front().get());
      return;
    }
    MaybeFinishLocked();
  }

  void OnCancel() override {
    std::shared_ptr<Work> work;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      work = work_;
    }
    if (work == nullptr) return;
    work->cancelled.store(true);
    if (work->Abandon()) Done(EndedEarly(deadline_));
  }

  void OnDone() override { delete this; }

 private:
  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || writing_ || !producer_done_) return;
    if (!cancelled_ && !queue_.empty()) return;
    finished_ = true;
    Finish(server::ToGrpcStatus(final_status_));
  }

  const absl::Time deadline_;
  absl::Mutex mu_;
  std::shared_ptr<Work> work_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<v1::ExecuteStreamResponse>> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool producer_done_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status final_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

grpc::ServerUnaryReactor* QueryServiceImpl::Execute(grpc::CallbackServerContext* context,
                                                    const v1::ExecuteRequest* request,
                                                    v1::ExecuteResponse* response) {
  const absl::Time deadline = engine_->EffectiveDeadline(DeadlineOf(context));
  // The engine takes the call's trace context from here into its work.
  telemetry::ScopedSpanContext trace(telemetry::ServerCallContext(context));
  auto* call = new UnaryCall(deadline);
  call->Start(engine_->Execute(*request, deadline, HolderOf("Execute", context), response,
                               [call](absl::Status s) { call->Complete(s); }));
  return call;
}

grpc::ServerWriteReactor<v1::ExecuteStreamResponse>* QueryServiceImpl::ExecuteStream(
    grpc::CallbackServerContext* context, const v1::ExecuteRequest* request) {
  const absl::Time deadline = engine_->EffectiveDeadline(DeadlineOf(context));
  // The engine takes the call's trace context from here into its work.
  telemetry::ScopedSpanContext trace(telemetry::ServerCallContext(context));
  auto* call = new StreamCall(deadline);
  call->Begin(engine_->ExecuteStream(*request, deadline, HolderOf("ExecuteStream", context), call,
                                     [call](absl::Status s) { call->Done(s); }));
  return call;
}

grpc::ServerUnaryReactor* QueryServiceImpl::ExecuteTransaction(
    grpc::CallbackServerContext* context, const v1::ExecuteTransactionRequest* request,
    v1::ExecuteTransactionResponse* response) {
  const absl::Time deadline = engine_->EffectiveDeadline(DeadlineOf(context));
  // The engine takes the call's trace context from here into its work.
  telemetry::ScopedSpanContext trace(telemetry::ServerCallContext(context));
  auto* call = new UnaryCall(deadline);
  call->Start(engine_->ExecuteTransaction(*request, deadline,
                                          HolderOf("ExecuteTransaction", context), response,
                                          [call](absl::Status s) { call->Complete(s); }));
  return call;
}

grpc::ServerUnaryReactor* QueryServiceImpl::GetPoolStats(grpc::CallbackServerContext* context,
                                                         const v1::GetPoolStatsRequest* request,
                                                         v1::GetPoolStatsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(server::ToGrpcStatus(engine_->GetPoolStats(*request, response)));
  return reactor;
}

grpc::ServerUnaryReactor* QueryServiceImpl::GetStatementStats(
    grpc::CallbackServerContext* context, const v1::GetStatementStatsRequest* request,
    v1::GetStatementStatsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(server::ToGrpcStatus(engine_->GetStatementStats(*request, response)));
  return reactor;
}

grpc::ServerUnaryReactor* QueryServiceImpl::CheckDatabases(
    grpc::CallbackServerContext* context, const v1::CheckDatabasesRequest* request,
    v1::CheckDatabasesResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  // The checks write into `response`, so the call always waits for them; each
  // is bounded by a short timeout and the call's deadline.
  const absl::Time deadline = engine_->EffectiveDeadline(DeadlineOf(context));
  absl::Status started = engine_->CheckDatabases(
      *request, deadline, response,
      [reactor](absl::Status s) { reactor->Finish(server::ToGrpcStatus(s)); });
  if (!started.ok()) reactor->Finish(server::ToGrpcStatus(started));
  return reactor;
}

}  // namespace poolside::query
