#ifndef POOLSIDE_SERVICES_QUERY_QUERY_SERVICE_H_
#define POOLSIDE_SERVICES_QUERY_QUERY_SERVICE_H_

// gRPC adapter of the query service: converts calls to QueryEngine calls and
// statuses back (common/server/status.h). A queue service
// (common/server/queue_service.h): one thread receives every call, runs what
// is answered in memory (a near-cache hit, pool statistics, a refusal) inline
// and hands database work to the engine's workers, which send their answer
// themselves. Nothing here blocks that thread. A call cancelled or past its
// deadline while queued is answered at once; one already running has its
// backend query cancelled and answers when it stops.
//
// Why not the callback API like ingest: a cached read is almost only gRPC
// work, and gRPC 1.51's callback API polls with two threads that hand every
// wake-up to each other on small hosts; on one queue thread the same hits ran
// ~1.4x the calls with a p99 of ~0.7 ms instead of ~4 ms
// (bench/results/execute-threading-models-2026-12-05.md).
//
// Authorization (common/auth), before anything else runs (no cache lookup
// either): an unknown or missing bearer token is UNAUTHENTICATED; a call over
// its principal's rate or concurrency limit is RESOURCE_EXHAUSTED with a
// google.rpc.RetryInfo; statements need `read` or `write` and the database,
// raw SQL also `sql` (else named queries only); pool and statement statistics
// and CheckDatabases need `admin` (PERMISSION_DENIED otherwise);
// GetIndexAdvice and CreateIndex need `admin` and the database, and run
// under the principal's database role. Principals
// without `write` run in read-only transactions (CallAccess).

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/auth/authorizer.h"
#include "common/auth/grpc_auth.h"
#include "common/server/queue_service.h"
#include "proto/poolside/v1/query.grpc.pb.h"
#include "services/query/named_queries.h"
#include "services/query/query_engine.h"

namespace poolside::query {

class QueryServiceImpl final : public server::QueueService {
 public:
  // `authorizer` null: no authorization (as with auth.disabled). `named`
  // null: no named queries.
  explicit QueryServiceImpl(QueryEngine* engine, auth::Authorizer* authorizer = nullptr,
                            const NamedQueries* named = nullptr)
      : engine_(engine), authorizer_(authorizer), named_(named) {}

  grpc::Service* grpc_service() override { return &async_; }
  std::string service_name() const override { return v1::QueryService::service_full_name(); }
  void Begin(grpc::ServerCompletionQueue* cq, telemetry::ServerCallTelemetry* calls) override;

  // Waits until every call that arrived has ended (its answer sent or its
  // caller gone, and its statement finished). After the server's shutdown
  // and before its queue's: work finishing later would answer on a queue
  // that no longer exists.
  void WaitForCalls();

  // The calls' steps (query_service.cc); each runs on the queue thread when
  // its call arrives.
  class Call;
  template <typename Request, typename Response>
  class UnaryCall;
  class StreamCall;
  void Execute(UnaryCall<v1::ExecuteRequest, v1::ExecuteResponse>* call);
  void ExecuteStream(StreamCall* call);
  void ExecuteTransaction(
      UnaryCall<v1::ExecuteTransactionRequest, v1::ExecuteTransactionResponse>* call);
  void GetPoolStats(UnaryCall<v1::GetPoolStatsRequest, v1::GetPoolStatsResponse>* call);
  void GetStatementStats(
      UnaryCall<v1::GetStatementStatsRequest, v1::GetStatementStatsResponse>* call);
  void CheckDatabases(UnaryCall<v1::CheckDatabasesRequest, v1::CheckDatabasesResponse>* call);
  void GetIndexAdvice(UnaryCall<v1::GetIndexAdviceRequest, v1::GetIndexAdviceResponse>* call);
  void CreateIndex(UnaryCall<v1::CreateIndexRequest, v1::CreateIndexResponse>* call);

 private:
  // Authenticates, admits and authorizes a call. For statements, also resolves
  // named queries: *resolved is then a copy of the request with their SQL.
  absl::Status AuthorizeExecute(const grpc::ServerContext& context,
                                const v1::ExecuteRequest& request, auth::CallAuth* call_auth,
                                CallAccess* access, std::unique_ptr<v1::ExecuteRequest>* resolved);
  absl::Status AuthorizeTransaction(const grpc::ServerContext& context,
                                    const v1::ExecuteTransactionRequest& request,
                                    auth::CallAuth* call_auth, CallAccess* access,
                                    std::unique_ptr<v1::ExecuteTransactionRequest>* resolved);
  absl::Status AuthorizeAdmin(const grpc::ServerContext& context, const char* what,
                              auth::CallAuth* call_auth);
  // `admin` and the database; the call's access (database role).
  absl::Status AuthorizeAdminOn(const grpc::ServerContext& context, const char* what,
                                const std::string& database, auth::CallAuth* call_auth,
                                CallAccess* access);
  std::string DatabaseOf(const std::string& requested) const;
  // The call's access from its principal (read-only, ddl, database role).
  static void SetAccess(const auth::Principal& who, CallAccess* access);

  QueryEngine* engine_;
  auth::Authorizer* const authorizer_;
  const NamedQueries* const named_;
  v1::QueryService::AsyncService async_;
  grpc::ServerCompletionQueue* cq_ = nullptr;
  const telemetry::ServerCallTelemetry::Method* stream_method_ = nullptr;

  // Calls from their arrival until they are deleted.
  absl::Mutex calls_mu_;
  int calls_ ABSL_GUARDED_BY(calls_mu_) = 0;
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_QUERY_SERVICE_H_
