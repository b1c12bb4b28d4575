#ifndef POOLSIDE_SERVICES_QUERY_QUERY_SERVICE_H_
#define POOLSIDE_SERVICES_QUERY_QUERY_SERVICE_H_

// gRPC adapter of the query service: converts calls to QueryEngine calls and
// statuses back (common/server/status.h). Uses the callback API; nothing here
// blocks a gRPC thread — database work runs on the engine's workers. A call
// cancelled or past its deadline while queued is answered at once; one already
// running has its backend query cancelled and answers when it stops.
//
// Authorization (common/auth), before anything else runs (no cache lookup
// either): an unknown or missing bearer token is UNAUTHENTICATED; a call over
// its principal's rate or concurrency limit is RESOURCE_EXHAUSTED with a
// google.rpc.RetryInfo; statements need `read` or `write` and the database,
// raw SQL also `sql` (else named queries only); pool and statement statistics
// and CheckDatabases need `admin` (PERMISSION_DENIED otherwise). Principals
// without `write` run in read-only transactions (CallAccess).

#include <memory>
#include <string>

#include "common/auth/authorizer.h"
#include "common/auth/grpc_auth.h"
#include "proto/poolside/v1/query.grpc.pb.h"
#include "services/query/named_queries.h"
#include "services/query/query_engine.h"

namespace poolside::query {

class QueryServiceImpl final : public v1::QueryService::CallbackService {
 public:
  // `authorizer` null: no authorization (as with auth.disabled). `named`
  // null: no named queries.
  explicit QueryServiceImpl(QueryEngine* engine, auth::Authorizer* authorizer = nullptr,
                            const NamedQueries* named = nullptr)
      : engine_(engine), authorizer_(authorizer), named_(named) {}

  grpc::ServerUnaryReactor* Execute(grpc::CallbackServerContext* context,
                                    const v1::ExecuteRequest* request,
                                    v1::ExecuteResponse* response) override;
  grpc::ServerWriteReactor<v1::ExecuteStreamResponse>* ExecuteStream(
      grpc::CallbackServerContext* context, const v1::ExecuteRequest* request) override;
  grpc::ServerUnaryReactor* ExecuteTransaction(grpc::CallbackServerContext* context,
                                               const v1::ExecuteTransactionRequest* request,
                                               v1::ExecuteTransactionResponse* response) override;
  grpc::ServerUnaryReactor* GetPoolStats(grpc::CallbackServerContext* context,
                                         const v1::GetPoolStatsRequest* request,
                                         v1::GetPoolStatsResponse* response) override;
  grpc::ServerUnaryReactor* GetStatementStats(grpc::CallbackServerContext* context,
                                              const v1::GetStatementStatsRequest* request,
                                              v1::GetStatementStatsResponse* response) override;
  grpc::ServerUnaryReactor* CheckDatabases(grpc::CallbackServerContext* context,
                                           const v1::CheckDatabasesRequest* request,
                                           v1::CheckDatabasesResponse* response) override;

 private:
  // Authenticates, admits and authorizes a call. For statements, also resolves
  // named queries: *resolved is then a copy of the request with their SQL.
  absl::Status AuthorizeExecute(const grpc::CallbackServerContext& context,
                                const v1::ExecuteRequest& request, auth::CallAuth* call_auth,
                                CallAccess* access,
                                std::unique_ptr<v1::ExecuteRequest>* resolved);
  absl::Status AuthorizeTransaction(const grpc::CallbackServerContext& context,
                                    const v1::ExecuteTransactionRequest& request,
                                    auth::CallAuth* call_auth, CallAccess* access,
                                    std::unique_ptr<v1::ExecuteTransactionRequest>* resolved);
  absl::Status AuthorizeAdmin(const grpc::CallbackServerContext& context, const char* what,
                              auth::CallAuth* call_auth);
  std::string DatabaseOf(const std::string& requested) const;

  QueryEngine* engine_;
  auth::Authorizer* const authorizer_;
  const NamedQueries* const named_;
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_QUERY_SERVICE_H_
