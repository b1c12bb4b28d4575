#include "services/query/query_service.h"

#include <deque>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/server/reactor_lock.h"
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
  if (CancelledByDeadline(deadline)) {
    return absl::DeadlineExceededError(
        "deadline passed while waiting for a database connection");
  }
  return absl::CancelledError("call cancelled by the caller");
}

// A unary call whose work runs on an engine worker.
class UnaryCall : public grpc::ServerUnaryReactor {
 public:
  explicit UnaryCall(absl::Time deadline) : deadline_(deadline) {}

  // Kept until the call is done: the caller's permit and a resolved request.
  auth::CallAuth call_auth;
  std::unique_ptr<google::protobuf::Message> owned_request;

  void Start(absl::StatusOr<std::shared_ptr<Work>> work) {
    if (!work.ok()) {
      Complete(work.status());
      return;
    }
    absl::MutexLock lock(&mu_);
    work_ = *std::move(work);
  }

  void Complete(const absl::Status& status) {
    server::ReactorLock<UnaryCall> lock(this, &mu_);
    if (finished_) return;
    finished_ = true;
    lock.FinishAfterUnlock(server::ToGrpcStatus(status));
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

  // OnCancel and OnDone are short and never block, so gRPC may run them on the
  // thread that completes the call: OnDone, for one, then runs on the worker
  // right inside Complete's Finish. Otherwise gRPC 1.51 hands every call's
  // OnDone to its executor thread, a thread hop per call (at 32 callers a
  // cached read took ~40 us of query_server CPU with it, ~24 us without; an
  // uncached one ~64 and ~49 us). Safe because nothing touches the call after
  // Finish: Complete finishes after unlocking (ReactorLock), its callers
  // (Work::done, OnCancel) return right after it, and gRPC holds a reference
  // of its own while OnCancel runs. The hook is gRPC's own (DefaultReactor
  // overrides it the same way), marked "not API": a gRPC without it fails to
  // compile here (`override`) rather than silently changing behaviour.
  bool InternalInlineable() override { return true; }

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

  // Kept until the call is done: the caller's permit and a resolved request.
  auth::CallAuth call_auth;
  std::unique_ptr<google::protobuf::Message> owned_request;

  void Begin(absl::StatusOr<std::shared_ptr<Work>> work) {
    if (!work.ok()) {
      Done(work.status());
      return;
    }
    absl::MutexLock lock(&mu_);
    work_ = *std::move(work);
  }

  bool Write(std::unique_ptr<v1::ExecuteStreamResponse> chunk) override {
    absl::MutexLock lock(&mu_);  // never finishes: the producer is not done
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
    Lock lock(this, &mu_);
    producer_done_ = true;
    final_status_ = status;
    MaybeFinishLocked(lock);
  }

  void OnWriteDone(bool ok) override {
    Lock lock(this, &mu_);
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
    MaybeFinishLocked(lock);
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
  using Lock = server::ReactorLock<StreamCall>;

  void MaybeFinishLocked(Lock& lock) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || writing_ || !producer_done_) return;
    if (!cancelled_ && !queue_.empty()) return;
    finished_ = true;
    lock.FinishAfterUnlock(server::ToGrpcStatus(final_status_));
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
  CallAccess access;
  std::unique_ptr<v1::ExecuteRequest> resolved;
  if (absl::Status s = AuthorizeExecute(*context, *request, &call->call_auth, &access, &resolved);
      !s.ok()) {
    call->Start(s);
    return call;
  }
  if (resolved != nullptr) request = resolved.get();
  call->owned_request = std::move(resolved);
  call->Start(engine_->Execute(*request, deadline, HolderOf("Execute", context), response,
                               [call](absl::Status s) { call->Complete(s); }, access));
  return call;
}

grpc::ServerWriteReactor<v1::ExecuteStreamResponse>* QueryServiceImpl::ExecuteStream(
    grpc::CallbackServerContext* context, const v1::ExecuteRequest* request) {
  const absl::Time deadline = engine_->EffectiveDeadline(DeadlineOf(context));
  // The engine takes the call's trace context from here into its work.
  telemetry::ScopedSpanContext trace(telemetry::ServerCallContext(context));
  auto* call = new StreamCall(deadline);
  CallAccess access;
  std::unique_ptr<v1::ExecuteRequest> resolved;
  if (absl::Status s = AuthorizeExecute(*context, *request, &call->call_auth, &access, &resolved);
      !s.ok()) {
    call->Begin(s);
    return call;
  }
  if (resolved != nullptr) request = resolved.get();
  call->owned_request = std::move(resolved);
  call->Begin(engine_->ExecuteStream(*request, deadline, HolderOf("ExecuteStream", context), call,
                                     [call](absl::Status s) { call->Done(s); }, access));
  return call;
}

grpc::ServerUnaryReactor* QueryServiceImpl::ExecuteTransaction(
    grpc::CallbackServerContext* context, const v1::ExecuteTransactionRequest* request,
    v1::ExecuteTransactionResponse* response) {
  const absl::Time deadline = engine_->EffectiveDeadline(DeadlineOf(context));
  // The engine takes the call's trace context from here into its work.
  telemetry::ScopedSpanContext trace(telemetry::ServerCallContext(context));
  auto* call = new UnaryCall(deadline);
  CallAccess access;
  std::unique_ptr<v1::ExecuteTransactionRequest> resolved;
  if (absl::Status s =
          AuthorizeTransaction(*context, *request, &call->call_auth, &access, &resolved);
      !s.ok()) {
    call->Start(s);
    return call;
  }
  if (resolved != nullptr) request = resolved.get();
  call->owned_request = std::move(resolved);
  call->Start(engine_->ExecuteTransaction(*request, deadline,
                                          HolderOf("ExecuteTransaction", context), response,
                                          [call](absl::Status s) { call->Complete(s); }, access));
  return call;
}

grpc::ServerUnaryReactor* QueryServiceImpl::GetPoolStats(grpc::CallbackServerContext* context,
                                                         const v1::GetPoolStatsRequest* request,
                                                         v1::GetPoolStatsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auth::CallAuth call_auth;
  absl::Status s = AuthorizeAdmin(*context, "GetPoolStats", &call_auth);
  reactor->Finish(server::ToGrpcStatus(s.ok() ? engine_->GetPoolStats(*request, response) : s));
  return reactor;
}

grpc::ServerUnaryReactor* QueryServiceImpl::GetStatementStats(
    grpc::CallbackServerContext* context, const v1::GetStatementStatsRequest* request,
    v1::GetStatementStatsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auth::CallAuth call_auth;
  absl::Status s = AuthorizeAdmin(*context, "GetStatementStats", &call_auth);
  reactor->Finish(
      server::ToGrpcStatus(s.ok() ? engine_->GetStatementStats(*request, response) : s));
  return reactor;
}

grpc::ServerUnaryReactor* QueryServiceImpl::CheckDatabases(
    grpc::CallbackServerContext* context, const v1::CheckDatabasesRequest* request,
    v1::CheckDatabasesResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto call_auth = std::make_shared<auth::CallAuth>();
  if (absl::Status s = AuthorizeAdmin(*context, "CheckDatabases", call_auth.get()); !s.ok()) {
    reactor->Finish(server::ToGrpcStatus(s));
    return reactor;
  }
  // The checks write into `response`, so the call always waits for them; each
  // is bounded by a short timeout and the call's deadline.
  const absl::Time deadline = engine_->EffectiveDeadline(DeadlineOf(context));
  absl::Status started = engine_->CheckDatabases(
      *request, deadline, response,
      [reactor, call_auth](absl::Status s) { reactor->Finish(server::ToGrpcStatus(s)); });
  if (!started.ok()) reactor->Finish(server::ToGrpcStatus(started));
  return reactor;
}

std::string QueryServiceImpl::DatabaseOf(const std::string& requested) const {
  return requested.empty() ? engine_->config().default_database() : requested;
}

absl::Status QueryServiceImpl::AuthorizeExecute(const grpc::CallbackServerContext& context,
                                                const v1::ExecuteRequest& request,
                                                auth::CallAuth* call_auth, CallAccess* access,
                                                std::unique_ptr<v1::ExecuteRequest>* resolved) {
  if (authorizer_ != nullptr) {
    absl::StatusOr<auth::CallAuth> a = auth::AuthenticateAndAdmit(*authorizer_, context);
    if (!a.ok()) return a.status();
    *call_auth = *std::move(a);
  }
  const bool named = !request.named_query().empty();
  if (named) {
    if (!request.sql().empty()) {
      return absl::InvalidArgumentError("give either sql or named_query, not both");
    }
    if (named_ == nullptr) {
      return absl::NotFoundError(absl::StrCat("unknown named query \"",
                                              request.named_query().substr(0, 64),
                                              "\" (no named queries are configured)"));
    }
  }
  if (call_auth->principal != nullptr) {
    if (absl::Status s =
            authorizer_->CheckQuery(*call_auth->principal, DatabaseOf(request.database()), !named);
        !s.ok()) {
      return s;
    }
    access->read_only = call_auth->principal->read_only();
  }
  if (named) {
    absl::StatusOr<const std::string*> sql = named_->Resolve(request.named_query(), request.params());
    if (!sql.ok()) return sql.status();
    *resolved = std::make_unique<v1::ExecuteRequest>(request);
    (*resolved)->set_sql(**sql);
  }
  return absl::OkStatus();
}

absl::Status QueryServiceImpl::AuthorizeTransaction(
    const grpc::CallbackServerContext& context, const v1::ExecuteTransactionRequest& request,
    auth::CallAuth* call_auth, CallAccess* access,
    std::unique_ptr<v1::ExecuteTransactionRequest>* resolved) {
  if (authorizer_ != nullptr) {
    absl::StatusOr<auth::CallAuth> a = auth::AuthenticateAndAdmit(*authorizer_, context);
    if (!a.ok()) return a.status();
    *call_auth = *std::move(a);
  }
  bool raw = false, named = false;
  for (const v1::Statement& st : request.statements()) {
    if (st.named_query().empty()) {
      raw = true;
    } else {
      named = true;
      if (!st.sql().empty()) {
        return absl::InvalidArgumentError("a statement gives either sql or named_query, not both");
      }
    }
  }
  if (call_auth->principal != nullptr) {
    if (absl::Status s =
            authorizer_->CheckQuery(*call_auth->principal, DatabaseOf(request.database()), raw);
        !s.ok()) {
      return s;
    }
    access->read_only = call_auth->principal->read_only();
  }
  if (!named) return absl::OkStatus();
  *resolved = std::make_unique<v1::ExecuteTransactionRequest>(request);
  for (int i = 0; i < (*resolved)->statements_size(); ++i) {
    v1::Statement* st = (*resolved)->mutable_statements(i);
    if (st->named_query().empty()) continue;
    if (named_ == nullptr) {
      return absl::NotFoundError(absl::StrCat("statement ", i + 1, ": unknown named query \"",
                                              st->named_query().substr(0, 64), "\""));
    }
    absl::StatusOr<const std::string*> sql = named_->Resolve(st->named_query(), st->params());
    if (!sql.ok()) {
      return absl::Status(sql.status().code(),
                          absl::StrCat("statement ", i + 1, ": ", sql.status().message()));
    }
    st->set_sql(**sql);
  }
  return absl::OkStatus();
}

absl::Status QueryServiceImpl::AuthorizeAdmin(const grpc::CallbackServerContext& context,
                                              const char* what, auth::CallAuth* call_auth) {
  if (authorizer_ == nullptr) return absl::OkStatus();
  absl::StatusOr<auth::CallAuth> a = auth::AuthenticateAndAdmit(*authorizer_, context);
  if (!a.ok()) return a.status();
  *call_auth = *std::move(a);
  return authorizer_->CheckAdmin(*call_auth->principal, what);
}

}  // namespace poolside::query
