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

using Async = v1::QueryService::AsyncService;

// Requests kept outstanding per method: calls of a method that arrive while
// all of its requests are taken wait in gRPC until the queue thread asks for
// the next one (at once, when one arrives).
constexpr int kExecuteSlots = 64;
constexpr int kStatementSlots = 16;  // ExecuteStream, ExecuteTransaction
constexpr int kAdminSlots = 2;       // statistics, CheckDatabases

absl::Time DeadlineOf(const grpc::ServerContext& context) {
  const auto d = context.deadline();
  if (d == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(d);
}

std::string HolderOf(absl::string_view method, const grpc::ServerContext& context) {
  return absl::StrCat(method, " from ", context.peer());
}

// The status a call gets when it ends before its work ran.
absl::Status EndedEarly(absl::Time deadline) {
  if (CancelledByDeadline(deadline)) {
    return absl::DeadlineExceededError(
        "deadline passed while waiting for a database connection");
  }
  return absl::CancelledError("call cancelled by the caller");
}

}  // namespace

// What every call has: its context, the caller's permit, a resolved request,
// and its lifetime. Once a call has arrived it holds two references, one for
// gRPC's "done" notification and one for its answer (released when Finish
// came back), plus one per write in progress; every release happens on the
// queue thread, and the last one deletes the call. Its answer (Finish) and
// writes may be started from any thread (the engine's workers answer their
// own calls): each is started once, after the call's own state says so under
// its mutex, and nothing touches the call after starting its Finish.
class QueryServiceImpl::Call {
 public:
  grpc::ServerContext context;
  // Kept until the call is done: the caller's permit and a resolved request.
  auth::CallAuth call_auth;
  std::unique_ptr<google::protobuf::Message> owned_request;
  absl::Time deadline = absl::InfiniteFuture();

  virtual ~Call() {
    if (!arrived_) return;
    absl::MutexLock lock(&service_->calls_mu_);
    --service_->calls_;
  }

 protected:
  explicit Call(QueryServiceImpl* service) : service_(service) {
    // Before the request: the done tag then comes back for every call that starts.
    context.AsyncNotifyWhenDone(&done_tag_);
  }

  // The call of `method` arrived (queue thread): record and count it, and
  // take its two references.
  void Arrived(const telemetry::ServerCallTelemetry::Method* method) {
    arrived_ = true;
    record_.Begin(method, &context);
    {
      absl::MutexLock lock(&service_->calls_mu_);
      ++service_->calls_;
    }
    absl::MutexLock lock(&mu_);
    refs_ = 2;
  }

  void AddRef() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { ++refs_; }
  // Queue thread only.
  void Release() {
    bool last;
    {
      absl::MutexLock lock(&mu_);
      last = --refs_ == 0;
    }
    if (last) delete this;
  }

  // The caller went away (cancelled, deadline, server shutdown) before the call ended.
  virtual void Cancelled() = 0;

  QueryServiceImpl* const service_;
  // The call's metrics and span: begun when it arrives, ended just before
  // its Finish (a call that never gets one counts as CANCELLED).
  telemetry::ServerCallRecord record_;
  absl::Mutex mu_;
  // The engine's work answering this call, to stop it when the caller goes.
  std::shared_ptr<Work> work_ ABSL_GUARDED_BY(mu_);

 private:
  void OnDone(bool /*ok*/) {
    if (context.IsCancelled()) Cancelled();
    Release();
  }

  server::QueueStep<Call, &Call::OnDone> done_tag_{this};
  bool arrived_ = false;
  int refs_ ABSL_GUARDED_BY(mu_) = 0;
};

// A unary call: its method's handler starts it on the queue thread, and it is
// answered once, with Complete(), from any thread.
template <typename Request, typename Response>
class QueryServiceImpl::UnaryCall final : public Call {
 public:
  using RequestMethod = void (Async::*)(grpc::ServerContext*, Request*,
                                        grpc::ServerAsyncResponseWriter<Response>*,
                                        grpc::CompletionQueue*, grpc::ServerCompletionQueue*,
                                        void*);
  using Handler = void (QueryServiceImpl::*)(UnaryCall*);

  static void Post(QueryServiceImpl* service, RequestMethod request, Handler handler,
                   const telemetry::ServerCallTelemetry::Method* method) {
    new UnaryCall(service, request, handler, method);
  }

  Request request;
  Response response;

  // The engine's answer to starting the call: an error answers it now.
  void Start(absl::StatusOr<std::shared_ptr<Work>> work) {
    if (!work.ok()) {
      Complete(work.status());
      return;
    }
    absl::MutexLock lock(&mu_);
    work_ = *std::move(work);
  }

  // Answers the call (the first time; later answers are ignored).
  void Complete(const absl::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
    }
    if (status.ok()) {
      record_.End(grpc::Status::OK);
      writer_.Finish(response, grpc::Status::OK, &finished_tag_);
    } else {
      const grpc::Status error = server::ToGrpcStatus(status);
      record_.End(error);
      writer_.FinishWithError(error, &finished_tag_);
    }
  }

 private:
  UnaryCall(QueryServiceImpl* service, RequestMethod request_method, Handler handler,
            const telemetry::ServerCallTelemetry::Method* method)
      : Call(service),
        request_method_(request_method),
        handler_(handler),
        method_(method),
        writer_(&context) {
    (service->async_.*request_method_)(&context, &request, &writer_, service->cq_, service->cq_,
                                       &requested_tag_);
  }

  void OnRequested(bool ok) {
    if (!ok) {  // shutting down: the call never started, no done tag follows
      delete this;
      return;
    }
    Post(service_, request_method_, handler_, method_);
    Arrived(method_);
    (service_->*handler_)(this);
  }

  void OnFinished(bool /*ok*/) { Release(); }

  void Cancelled() override {
    std::shared_ptr<Work> work;
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      work = work_;
    }
    if (work == nullptr) return;
    work->cancelled.store(true);
    // Not started yet: answer now. Running: its statement is being cancelled and
    // done() answers.
    if (work->Abandon()) Complete(EndedEarly(deadline));
  }

  const RequestMethod request_method_;
  const Handler handler_;
  const telemetry::ServerCallTelemetry::Method* const method_;
  grpc::ServerAsyncResponseWriter<Response> writer_;
  server::QueueStep<UnaryCall, &UnaryCall::OnRequested> requested_tag_{this};
  server::QueueStep<UnaryCall, &UnaryCall::OnFinished> finished_tag_{this};
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

// Streams chunks produced on a worker thread; at most kMaxQueued chunks wait
// for the network, so a slow reader holds the worker (and the statement) back
// instead of growing memory.
class QueryServiceImpl::StreamCall final : public Call, public ChunkWriter {
 public:
  static constexpr size_t kMaxQueued = 2;

  static void Post(QueryServiceImpl* service) { new StreamCall(service); }

  v1::ExecuteRequest request;

  void Begin(absl::StatusOr<std::shared_ptr<Work>> work) {
    if (!work.ok()) {
      Done(work.status());
      return;
    }
    absl::MutexLock lock(&mu_);
    work_ = *std::move(work);
  }

  bool Write(std::unique_ptr<v1::ExecuteStreamResponse> chunk) override {
    v1::ExecuteStreamResponse* write = nullptr;
    {
      absl::MutexLock lock(&mu_);  // never finishes: the producer is not done
      mu_.Await(absl::Condition(
          +[](StreamCall* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->mu_) {
            return c->cancelled_ || c->queue_.size() < kMaxQueued;
          },
          this));
      if (cancelled_) return false;
      queue_.push_back(std::move(chunk));
      if (!writing_) write = StartWriteLocked();
    }
    if (write != nullptr) writer_.Write(*write, &written_tag_);
    return true;
  }

  // The producer's outcome: finish once the queued chunks are written.
  void Done(const absl::Status& status) {
    grpc::Status finish;
    {
      absl::MutexLock lock(&mu_);
      producer_done_ = true;
      final_status_ = status;
      if (!FinishNowLocked(&finish)) return;
    }
    record_.End(finish);
    writer_.Finish(finish, &finished_tag_);
  }

 private:
  explicit StreamCall(QueryServiceImpl* service) : Call(service), writer_(&context) {
    service->async_.RequestExecuteStream(&context, &request, &writer_, service->cq_, service->cq_,
                                         &requested_tag_);
  }

  void OnRequested(bool ok) {
    if (!ok) {  // shutting down: the call never started, no done tag follows
      delete this;
      return;
    }
    Post(service_);
    Arrived(service_->stream_method_);
    service_->ExecuteStream(this);
  }

  void OnWritten(bool ok) {
    v1::ExecuteStreamResponse* write = nullptr;
    grpc::Status finish;
    bool finish_now = false;
    {
      absl::MutexLock lock(&mu_);
      queue_.pop_front();
      writing_ = false;
      if (!ok) {
        cancelled_ = true;
        queue_.clear();
      }
      if (!queue_.empty()) {
        write = StartWriteLocked();
      } else {
        finish_now = FinishNowLocked(&finish);
      }
    }
    if (write != nullptr) writer_.Write(*write, &written_tag_);
    if (finish_now) {
      record_.End(finish);
      writer_.Finish(finish, &finished_tag_);
    }
    Release();  // this write's
  }

  void OnFinished(bool /*ok*/) { Release(); }

  void Cancelled() override {
    std::shared_ptr<Work> work;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      work = work_;
    }
    if (work == nullptr) return;
    work->cancelled.store(true);
    if (work->Abandon()) Done(EndedEarly(deadline));
  }

  // The chunk to write next; the write holds a reference until OnWritten.
  v1::ExecuteStreamResponse* StartWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    writing_ = true;
    AddRef();
    return queue_.front().get();
  }

  bool FinishNowLocked(grpc::Status* status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || writing_ || !producer_done_) return false;
    if (!cancelled_ && !queue_.empty()) return false;
    finished_ = true;
    *status = server::ToGrpcStatus(final_status_);
    return true;
  }

  grpc::ServerAsyncWriter<v1::ExecuteStreamResponse> writer_;
  server::QueueStep<StreamCall, &StreamCall::OnRequested> requested_tag_{this};
  server::QueueStep<StreamCall, &StreamCall::OnWritten> written_tag_{this};
  server::QueueStep<StreamCall, &StreamCall::OnFinished> finished_tag_{this};
  std::deque<std::unique_ptr<v1::ExecuteStreamResponse>> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool producer_done_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status final_status_ ABSL_GUARDED_BY(mu_);
};

void QueryServiceImpl::Begin(grpc::ServerCompletionQueue* cq,
                             telemetry::ServerCallTelemetry* calls) {
  cq_ = cq;
  using server::QueueMethod;
  stream_method_ = QueueMethod<v1::QueryService>(
      calls, "ExecuteStream", grpc::experimental::ServerRpcInfo::Type::SERVER_STREAMING);
  const auto* execute = QueueMethod<v1::QueryService>(calls, "Execute");
  const auto* transaction = QueueMethod<v1::QueryService>(calls, "ExecuteTransaction");
  const auto* pool_stats = QueueMethod<v1::QueryService>(calls, "GetPoolStats");
  const auto* statement_stats = QueueMethod<v1::QueryService>(calls, "GetStatementStats");
  const auto* check = QueueMethod<v1::QueryService>(calls, "CheckDatabases");
  const auto* advice = QueueMethod<v1::QueryService>(calls, "GetIndexAdvice");
  const auto* create_index = QueueMethod<v1::QueryService>(calls, "CreateIndex");
  for (int i = 0; i < kExecuteSlots; ++i) {
    UnaryCall<v1::ExecuteRequest, v1::ExecuteResponse>::Post(this, &Async::RequestExecute,
                                                             &QueryServiceImpl::Execute, execute);
  }
  for (int i = 0; i < kStatementSlots; ++i) {
    StreamCall::Post(this);
    UnaryCall<v1::ExecuteTransactionRequest, v1::ExecuteTransactionResponse>::Post(
        this, &Async::RequestExecuteTransaction, &QueryServiceImpl::ExecuteTransaction,
        transaction);
  }
  for (int i = 0; i < kAdminSlots; ++i) {
    UnaryCall<v1::GetPoolStatsRequest, v1::GetPoolStatsResponse>::Post(
        this, &Async::RequestGetPoolStats, &QueryServiceImpl::GetPoolStats, pool_stats);
    UnaryCall<v1::GetStatementStatsRequest, v1::GetStatementStatsResponse>::Post(
        this, &Async::RequestGetStatementStats, &QueryServiceImpl::GetStatementStats,
        statement_stats);
    UnaryCall<v1::CheckDatabasesRequest, v1::CheckDatabasesResponse>::Post(
        this, &Async::RequestCheckDatabases, &QueryServiceImpl::CheckDatabases, check);
    UnaryCall<v1::GetIndexAdviceRequest, v1::GetIndexAdviceResponse>::Post(
        this, &Async::RequestGetIndexAdvice, &QueryServiceImpl::GetIndexAdvice, advice);
    UnaryCall<v1::CreateIndexRequest, v1::CreateIndexResponse>::Post(
        this, &Async::RequestCreateIndex, &QueryServiceImpl::CreateIndex, create_index);
  }
}

void QueryServiceImpl::WaitForCalls() {
  absl::MutexLock lock(&calls_mu_);
  calls_mu_.Await(absl::Condition(
      +[](int* calls) { return *calls == 0; }, &calls_));
}

void QueryServiceImpl::Execute(UnaryCall<v1::ExecuteRequest, v1::ExecuteResponse>* call) {
  call->deadline = engine_->EffectiveDeadline(DeadlineOf(call->context));
  // The engine takes the call's trace context from here into its work.
  telemetry::ScopedSpanContext trace(telemetry::ServerCallContext(&call->context));
  CallAccess access;
  const v1::ExecuteRequest* request = &call->request;
  std::unique_ptr<v1::ExecuteRequest> resolved;
  if (absl::Status s =
          AuthorizeExecute(call->context, *request, &call->call_auth, &access, &resolved);
      !s.ok()) {
    call->Complete(s);
    return;
  }
  if (resolved != nullptr) request = resolved.get();
  call->owned_request = std::move(resolved);
  call->Start(engine_->Execute(
      *request, call->deadline, HolderOf("Execute", call->context), &call->response,
      [call](absl::Status s) { call->Complete(s); }, access));
}

void QueryServiceImpl::ExecuteStream(StreamCall* call) {
  call->deadline = engine_->EffectiveDeadline(DeadlineOf(call->context));
  // The engine takes the call's trace context from here into its work.
  telemetry::ScopedSpanContext trace(telemetry::ServerCallContext(&call->context));
  CallAccess access;
  const v1::ExecuteRequest* request = &call->request;
  std::unique_ptr<v1::ExecuteRequest> resolved;
  if (absl::Status s =
          AuthorizeExecute(call->context, *request, &call->call_auth, &access, &resolved);
      !s.ok()) {
    call->Begin(s);
    return;
  }
  if (resolved != nullptr) request = resolved.get();
  call->owned_request = std::move(resolved);
  call->Begin(engine_->ExecuteStream(
      *request, call->deadline, HolderOf("ExecuteStream", call->context), call,
      [call](absl::Status s) { call->Done(s); }, access));
}

void QueryServiceImpl::ExecuteTransaction(
    UnaryCall<v1::ExecuteTransactionRequest, v1::ExecuteTransactionResponse>* call) {
  call->deadline = engine_->EffectiveDeadline(DeadlineOf(call->context));
  // The engine takes the call's trace context from here into its work.
  telemetry::ScopedSpanContext trace(telemetry::ServerCallContext(&call->context));
  CallAccess access;
  const v1::ExecuteTransactionRequest* request = &call->request;
  std::unique_ptr<v1::ExecuteTransactionRequest> resolved;
  if (absl::Status s =
          AuthorizeTransaction(call->context, *request, &call->call_auth, &access, &resolved);
      !s.ok()) {
    call->Complete(s);
    return;
  }
  if (resolved != nullptr) request = resolved.get();
  call->owned_request = std::move(resolved);
  call->Start(engine_->ExecuteTransaction(
      *request, call->deadline, HolderOf("ExecuteTransaction", call->context), &call->response,
      [call](absl::Status s) { call->Complete(s); }, access));
}

void QueryServiceImpl::GetPoolStats(
    UnaryCall<v1::GetPoolStatsRequest, v1::GetPoolStatsResponse>* call) {
  absl::Status s = AuthorizeAdmin(call->context, "GetPoolStats", &call->call_auth);
  call->Complete(s.ok() ? engine_->GetPoolStats(call->request, &call->response) : s);
}

void QueryServiceImpl::GetStatementStats(
    UnaryCall<v1::GetStatementStatsRequest, v1::GetStatementStatsResponse>* call) {
  absl::Status s = AuthorizeAdmin(call->context, "GetStatementStats", &call->call_auth);
  call->Complete(s.ok() ? engine_->GetStatementStats(call->request, &call->response) : s);
}

void QueryServiceImpl::CheckDatabases(
    UnaryCall<v1::CheckDatabasesRequest, v1::CheckDatabasesResponse>* call) {
  if (absl::Status s = AuthorizeAdmin(call->context, "CheckDatabases", &call->call_auth); !s.ok()) {
    call->Complete(s);
    return;
  }
  // The checks write into the response, so the call always waits for them;
  // each is bounded by a short timeout and the call's deadline.
  call->deadline = engine_->EffectiveDeadline(DeadlineOf(call->context));
  absl::Status started = engine_->CheckDatabases(call->request, call->deadline, &call->response,
                                                 [call](absl::Status s) { call->Complete(s); });
  if (!started.ok()) call->Complete(started);
}

void QueryServiceImpl::GetIndexAdvice(
    UnaryCall<v1::GetIndexAdviceRequest, v1::GetIndexAdviceResponse>* call) {
  CallAccess access;
  if (absl::Status s = AuthorizeAdminOn(call->context, "GetIndexAdvice", call->request.database(),
                                        &call->call_auth, &access);
      !s.ok()) {
    call->Complete(s);
    return;
  }
  call->deadline = engine_->EffectiveDeadline(DeadlineOf(call->context));
  call->Start(engine_->GetIndexAdvice(call->request, call->deadline, &call->response,
                                      [call](absl::Status s) { call->Complete(s); }, access));
}

void QueryServiceImpl::CreateIndex(
    UnaryCall<v1::CreateIndexRequest, v1::CreateIndexResponse>* call) {
  CallAccess access;
  if (absl::Status s = AuthorizeAdminOn(call->context, "CreateIndex", call->request.database(),
                                        &call->call_auth, &access);
      !s.ok()) {
    call->Complete(s);
    return;
  }
  call->deadline = engine_->EffectiveDeadline(DeadlineOf(call->context));
  call->Start(engine_->CreateIndex(call->request, call->deadline, &call->response,
                                   [call](absl::Status s) { call->Complete(s); }, access));
}

void QueryServiceImpl::SetAccess(const auth::Principal& who, CallAccess* access) {
  access->read_only = who.read_only();
  access->ddl = who.Has(auth::kDdl);
  access->principal = &who;
}

std::string QueryServiceImpl::DatabaseOf(const std::string& requested) const {
  return requested.empty() ? engine_->config().default_database() : requested;
}

absl::Status QueryServiceImpl::AuthorizeExecute(const grpc::ServerContext& context,
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
    SetAccess(*call_auth->principal, access);
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
    const grpc::ServerContext& context, const v1::ExecuteTransactionRequest& request,
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
    SetAccess(*call_auth->principal, access);
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

absl::Status QueryServiceImpl::AuthorizeAdmin(const grpc::ServerContext& context, const char* what,
                                              auth::CallAuth* call_auth) {
  if (authorizer_ == nullptr) return absl::OkStatus();
  absl::StatusOr<auth::CallAuth> a = auth::AuthenticateAndAdmit(*authorizer_, context);
  if (!a.ok()) return a.status();
  *call_auth = *std::move(a);
  return authorizer_->CheckAdmin(*call_auth->principal, what);
}

absl::Status QueryServiceImpl::AuthorizeAdminOn(const grpc::ServerContext& context,
                                                const char* what, const std::string& database,
                                                auth::CallAuth* call_auth, CallAccess* access) {
  if (absl::Status s = AuthorizeAdmin(context, what, call_auth); !s.ok()) return s;
  if (call_auth->principal == nullptr) return absl::OkStatus();
  const std::string name = DatabaseOf(database);
  if (!name.empty() && !call_auth->principal->MayUseDatabase(name)) {
    return absl::PermissionDeniedError(absl::StrCat("principal ", call_auth->principal->name,
                                                    " may not use database \"",
                                                    name.substr(0, 64), "\""));
  }
  SetAccess(*call_auth->principal, access);
  return absl::OkStatus();
}

}  // namespace poolside::query
