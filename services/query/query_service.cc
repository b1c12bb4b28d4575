#include "services/query/query_service.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"

namespace poolside::query {
namespace {

using Async = v1::QueryService::AsyncService;

// Requests kept outstanding per method: calls of a method that arrive while
// all of its requests are taken wait in gRPC until the queue thread asks for
// the next one (at once, when one arrives).
constexpr int kExecuteSlots = 64;
constexpr int kStatementSlots = 16;  // ExecuteStream, ExecuteTransaction
constexpr int kAdminSlots = 2;       // statistics, CheckDatabases, index advice

std::string HolderOf(absl::string_view method, server::QueueCall* call) {
  return absl::StrCat(method, " from ", call->context().peer());
}

// The status a call gets when its caller went away before its work ran.
absl::Status EndedEarly(absl::Time deadline, absl::Time arrived) {
  if (CancelledByDeadline(deadline, arrived)) {
    return absl::DeadlineExceededError("deadline passed while waiting for a database connection");
  }
  return absl::CancelledError("call cancelled by the caller");
}

// The engine's `done` for `call`: answers it.
template <typename Call>
QueryEngine::Done AnswerOf(Call* call) {
  return [call](absl::Status status) { call->Complete(status); };
}

// Starts `call`'s work once `authorized` (otherwise answers why not):
// start(deadline) is the engine's answer to starting it. An error answers the
// call now; otherwise the work is cancelled when the caller goes away (not
// started yet: the call is answered at once; running: its statement is
// cancelled, and its `done` answers).
template <typename Call, typename Start>
void StartWork(Call* call, const absl::Status& authorized, QueryEngine* engine, Start start) {
  if (!authorized.ok()) {
    call->Complete(authorized);
    return;
  }
  const absl::Time deadline = engine->EffectiveDeadline(call->deadline());
  absl::StatusOr<std::shared_ptr<Work>> work = start(deadline);
  if (!work.ok()) {
    call->Complete(work.status());
    return;
  }
  call->OnCancel([call, deadline, work = *std::move(work)] {
    work->cancelled.store(true);
    if (work->Abandon()) call->Complete(EndedEarly(deadline, work->arrived));
  });
}

// The engine's ChunkWriter over a streaming call.
class ChunkStream final : public ChunkWriter {
 public:
  explicit ChunkStream(QueryServiceImpl::StreamCall* call) : call_(call) {}
  bool Write(std::unique_ptr<v1::ExecuteStreamResponse> chunk) override {
    return call_->Write(std::move(chunk));
  }

 private:
  QueryServiceImpl::StreamCall* const call_;
};

}  // namespace

void QueryServiceImpl::Begin(grpc::ServerCompletionQueue* cq,
                             telemetry::ServerCallTelemetry* telemetry) {
  calls_.Begin(cq, telemetry, v1::QueryService::service_full_name());
  calls_.Unary(&async_, &Async::RequestExecute, "Execute", kExecuteSlots, [this](auto* call) {
    CallAccess access;
    auto request = AuthorizeExecute(call, call->request(), &access);
    StartWork(call, request.status(), engine_, [&](absl::Time deadline) {
      return engine_->Execute(**request, deadline, HolderOf("Execute", call), call->response(),
                              AnswerOf(call), access);
    });
  });
  calls_.ServerStream(&async_, &Async::RequestExecuteStream, "ExecuteStream", kStatementSlots,
                      [this](StreamCall* call) {
                        CallAccess access;
                        auto request = AuthorizeExecute(call, call->request(), &access);
                        StartWork(call, request.status(), engine_, [&](absl::Time deadline) {
                          return engine_->ExecuteStream(
                              **request, deadline, HolderOf("ExecuteStream", call),
                              call->Keep(ChunkStream(call)), AnswerOf(call), access);
                        });
                      });
  calls_.Unary(&async_, &Async::RequestExecuteTransaction, "ExecuteTransaction", kStatementSlots,
               [this](auto* call) {
                 CallAccess access;
                 auto request = AuthorizeTransaction(call, call->request(), &access);
                 StartWork(call, request.status(), engine_, [&](absl::Time deadline) {
                   return engine_->ExecuteTransaction(**request, deadline,
                                                      HolderOf("ExecuteTransaction", call),
                                                      call->response(), AnswerOf(call), access);
                 });
               });
  calls_.Unary(
      &async_, &Async::RequestGetPoolStats, "GetPoolStats", kAdminSlots, [this](auto* call) {
        absl::Status s = AuthorizeAdmin(call, "GetPoolStats");
        call->Complete(s.ok() ? engine_->GetPoolStats(call->request(), call->response()) : s);
      });
  calls_.Unary(
      &async_, &Async::RequestGetStatementStats, "GetStatementStats", kAdminSlots,
      [this](auto* call) {
        absl::Status s = AuthorizeAdmin(call, "GetStatementStats");
        call->Complete(s.ok() ? engine_->GetStatementStats(call->request(), call->response()) : s);
      });
  // The checks write into the response, so the call always waits for them;
  // each is bounded by a short timeout and the call's deadline.
  calls_.Unary(
      &async_, &Async::RequestCheckDatabases, "CheckDatabases", kAdminSlots, [this](auto* call) {
        absl::Status s = AuthorizeAdmin(call, "CheckDatabases");
        if (s.ok()) {
          s = engine_->CheckDatabases(call->request(), engine_->EffectiveDeadline(call->deadline()),
                                      call->response(), AnswerOf(call));
        }
        if (!s.ok()) call->Complete(s);
      });
  calls_.Unary(&async_, &Async::RequestGetIndexAdvice, "GetIndexAdvice", kAdminSlots,
               [this](auto* call) {
                 CallAccess access;
                 absl::Status s =
                     AuthorizeAdminOn(call, "GetIndexAdvice", call->request().database(), &access);
                 StartWork(call, s, engine_, [&](absl::Time deadline) {
                   return engine_->GetIndexAdvice(call->request(), deadline, call->response(),
                                                  AnswerOf(call), access);
                 });
               });
  calls_.Unary(&async_, &Async::RequestCreateIndex, "CreateIndex", kAdminSlots, [this](auto* call) {
    CallAccess access;
    absl::Status s = AuthorizeAdminOn(call, "CreateIndex", call->request().database(), &access);
    StartWork(call, s, engine_, [&](absl::Time deadline) {
      return engine_->CreateIndex(call->request(), deadline, call->response(), AnswerOf(call),
                                  access);
    });
  });
}

void QueryServiceImpl::SetAccess(const auth::Principal& who, CallAccess* access) {
  access->read_only = who.read_only();
  access->ddl = who.Has(auth::kDdl);
  access->principal = &who;
}

std::string QueryServiceImpl::DatabaseOf(const std::string& requested) const {
  return requested.empty() ? engine_->config().default_database() : requested;
}

absl::StatusOr<const auth::Principal*> QueryServiceImpl::Admit(server::QueueCall* call) {
  if (authorizer_ == nullptr) return nullptr;
  absl::StatusOr<auth::CallAuth> admitted =
      auth::AuthenticateAndAdmit(*authorizer_, call->context());
  if (!admitted.ok()) return admitted.status();
  return call->Keep(*std::move(admitted))->principal;
}

absl::StatusOr<const v1::ExecuteRequest*> QueryServiceImpl::AuthorizeExecute(
    server::QueueCall* call, const v1::ExecuteRequest& request, CallAccess* access) {
  absl::StatusOr<const auth::Principal*> who = Admit(call);
  if (!who.ok()) return who.status();
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
  if (*who != nullptr) {
    if (absl::Status s = authorizer_->CheckQuery(**who, DatabaseOf(request.database()), !named);
        !s.ok()) {
      return s;
    }
    SetAccess(**who, access);
  }
  if (!named) return &request;
  absl::StatusOr<const std::string*> sql = named_->Resolve(request.named_query(), request.params());
  if (!sql.ok()) return sql.status();
  v1::ExecuteRequest* resolved = call->Keep(request);
  resolved->set_sql(**sql);
  return resolved;
}

absl::StatusOr<const v1::ExecuteTransactionRequest*> QueryServiceImpl::AuthorizeTransaction(
    server::QueueCall* call, const v1::ExecuteTransactionRequest& request, CallAccess* access) {
  absl::StatusOr<const auth::Principal*> who = Admit(call);
  if (!who.ok()) return who.status();
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
  if (*who != nullptr) {
    if (absl::Status s = authorizer_->CheckQuery(**who, DatabaseOf(request.database()), raw);
        !s.ok()) {
      return s;
    }
    SetAccess(**who, access);
  }
  if (!named) return &request;
  v1::ExecuteTransactionRequest* resolved = call->Keep(request);
  for (int i = 0; i < resolved->statements_size(); ++i) {
    v1::Statement* st = resolved->mutable_statements(i);
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
  return resolved;
}

absl::Status QueryServiceImpl::AuthorizeAdmin(server::QueueCall* call, const char* what) {
  absl::StatusOr<const auth::Principal*> who = Admit(call);
  if (!who.ok()) return who.status();
  return *who == nullptr ? absl::OkStatus() : authorizer_->CheckAdmin(**who, what);
}

absl::Status QueryServiceImpl::AuthorizeAdminOn(server::QueueCall* call, const char* what,
                                                const std::string& database, CallAccess* access) {
  absl::StatusOr<const auth::Principal*> who = Admit(call);
  if (!who.ok()) return who.status();
  if (*who == nullptr) return absl::OkStatus();
  if (absl::Status s = authorizer_->CheckAdmin(**who, what); !s.ok()) return s;
  const std::string name = DatabaseOf(database);
  if (!name.empty() && !(*who)->MayUseDatabase(name)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "principal ", (*who)->name, " may not use database \"", name.substr(0, 64), "\""));
  }
  SetAccess(**who, access);
  return absl::OkStatus();
}

}  // namespace poolside::query
