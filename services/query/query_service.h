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
// Why one queue thread rather than ingest's callback API: docs/design.md,
// "Threading: one queue thread (decision record)".
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

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/auth/authorizer.h"
#include "common/auth/grpc_auth.h"
#include "common/server/queue_service.h"
#include "proto/poolside/v1/query.grpc.pb.h"
#include "services/query/named_queries.h"
#include "services/query/query_engine.h"

namespace poolside::query {

// A table of handlers over the call layer (common/server/queue_service.h):
// each method's handler authorizes the call and starts the engine's work,
// which answers the call from its worker; a call whose caller goes away
// cancels its work.
class QueryServiceImpl final : public server::QueueService {
 public:
  using StreamCall = server::QueueWriterCall<v1::ExecuteRequest, v1::ExecuteStreamResponse>;

  // `authorizer` null: no authorization (as with auth.disabled). `named`
  // null: no named queries.
  explicit QueryServiceImpl(QueryEngine* engine, auth::Authorizer* authorizer = nullptr,
                            const NamedQueries* named = nullptr)
      : engine_(engine), authorizer_(authorizer), named_(named) {}

  grpc::Service* grpc_service() override { return &async_; }
  std::string service_name() const override { return v1::QueryService::service_full_name(); }
  void Begin(grpc::ServerCompletionQueue* cq, telemetry::ServerCallTelemetry* telemetry) override;

  // Waits until every call that arrived has ended (its answer sent or its
  // caller gone, and its statement finished). After the server's shutdown
  // and before its queue's: work finishing later would answer on a queue
  // that no longer exists.
  void WaitForCalls() { calls_.WaitForCalls(); }

 private:
  // Authenticates and admits the call's caller (null without an authorizer);
  // the call keeps its permit.
  absl::StatusOr<const auth::Principal*> Admit(server::QueueCall* call);
  // Admits and authorizes a statement call and resolves its named queries:
  // the request to run (`request`, or a copy with their SQL, kept by the call).
  absl::StatusOr<const v1::ExecuteRequest*> AuthorizeExecute(server::QueueCall* call,
                                                             const v1::ExecuteRequest& request,
                                                             CallAccess* access);
  absl::StatusOr<const v1::ExecuteTransactionRequest*> AuthorizeTransaction(
      server::QueueCall* call, const v1::ExecuteTransactionRequest& request, CallAccess* access);
  // `admin`.
  absl::Status AuthorizeAdmin(server::QueueCall* call, const char* what);
  // `admin` and the database; the call's access (database role).
  absl::Status AuthorizeAdminOn(server::QueueCall* call, const char* what,
                                const std::string& database, CallAccess* access);
  std::string DatabaseOf(const std::string& requested) const;
  // The call's access from its principal (read-only, ddl, database role).
  static void SetAccess(const auth::Principal& who, CallAccess* access);

  QueryEngine* engine_;
  auth::Authorizer* const authorizer_;
  const NamedQueries* const named_;
  v1::QueryService::AsyncService async_;
  server::QueueCalls calls_;
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_QUERY_SERVICE_H_
