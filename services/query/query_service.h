#ifndef POOLSIDE_SERVICES_QUERY_QUERY_SERVICE_H_
#define POOLSIDE_SERVICES_QUERY_QUERY_SERVICE_H_

// gRPC adapter of the query service: converts calls to QueryEngine calls and
// statuses back (common/server/status.h). Uses the callback API; nothing here
// blocks a gRPC thread — database work runs on the engine's workers. A call
// cancelled or past its deadline while queued is answered at once; one already
// running has its backend query cancelled and answers when it stops.

#include "proto/poolside/v1/query.grpc.pb.h"
#include "services/query/query_engine.h"

namespace poolside::query {

class QueryServiceImpl final : public v1::QueryService::CallbackService {
 public:
  explicit QueryServiceImpl(QueryEngine* engine) : engine_(engine) {}

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
  QueryEngine* engine_;
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_QUERY_SERVICE_H_
