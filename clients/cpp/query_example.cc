// The README's C++ call: one typed point select through the query service.
//
//   bazel build //clients/cpp:query_example
//   bazel-bin/clients/cpp/query_example            # against `make run`
//
// POOLSIDE_ADDR (default 127.0.0.1:50051) picks the service, POOLSIDE_TOKEN
// adds a bearer token. Prints "owner-42 3325.98" against the demo data.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "grpcpp/grpcpp.h"
#include "proto/poolside/v1/query.grpc.pb.h"

int main() {
  const char* addr = std::getenv("POOLSIDE_ADDR");
  const char* token = std::getenv("POOLSIDE_TOKEN");

  auto channel = grpc::CreateChannel(addr != nullptr ? addr : "127.0.0.1:50051",
                                     grpc::InsecureChannelCredentials());
  auto stub = poolside::v1::QueryService::NewStub(channel);

  poolside::v1::ExecuteRequest req;
  req.set_database("demo");
  req.set_sql("SELECT owner, balance FROM accounts WHERE id = $1");
  req.add_params()->set_int64_value(42);

  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  if (token != nullptr) ctx.AddMetadata("authorization", std::string("Bearer ") + token);
  poolside::v1::ExecuteResponse resp;
  grpc::Status status = stub->Execute(&ctx, req, &resp);
  if (!status.ok()) {
    // INVALID_ARGUMENT for bad SQL (SQLSTATE in the message), DEADLINE_EXCEEDED,
    // UNAVAILABLE (retry), ABORTED (retry the transaction), ...
    std::fprintf(stderr, "Execute failed: %d %s\n", status.error_code(),
                 status.error_message().c_str());
    return 1;
  }
  for (const auto& row : resp.result().rows()) {
    std::printf("%s %s\n", row.values(0).text_value().c_str(),
                row.values(1).numeric_value().c_str());
  }
  return 0;
}
