#ifndef POOLSIDE_SERVICES_INGEST_INGEST_SERVICE_H_
#define POOLSIDE_SERVICES_INGEST_INGEST_SERVICE_H_

// gRPC adapter of the ingest service (callback API): converts requests to
// IngestEngine::Submit calls and outcomes back to responses and statuses
// (common/server/status.h). Nothing here blocks a gRPC thread: encoding runs on
// the calling thread, flushing on the engine's workers, and answers are written
// from the workers' callbacks.
//
// Streams read their next message only once the engine has taken the previous
// one into its buffer, so a full buffer stops reading (and gRPC flow control
// holds the client back). Unary Write is refused with RESOURCE_EXHAUSTED and a
// "retry-after-ms" trailing metadata entry instead.
//
// Shutdown: after IngestEngine::Drain(), every request still arriving is
// refused (UNAVAILABLE acknowledgement) while open streams are read until
// their clients half-close, so no connection is reset with acknowledgements in
// flight; FinishStreams() makes streams that begin from then on end at once
// with UNAVAILABLE. The server's shutdown deadline cancels idle streams.
//
// Authorization (common/auth): with an Authorizer, every call needs a known
// bearer token (UNAUTHENTICATED) and is admitted under its principal's limits
// (RESOURCE_EXHAUSTED with RetryInfo); each request needs the `ingest` role and
// a grant for its table (PERMISSION_DENIED: the unary call fails, a stream's
// request gets that status as its outcome); GetStats needs `admin`. A stream
// holds one concurrency slot for its lifetime.
//
// Thread-safe.

#include <atomic>
#include <string>

#include "absl/status/statusor.h"
#include "common/auth/authorizer.h"
#include "common/auth/grpc_auth.h"
#include "proto/poolside/v1/ingest.grpc.pb.h"
#include "services/ingest/ingest_engine.h"

namespace poolside::ingest {

class IngestServiceImpl final : public v1::IngestService::CallbackService {
 public:
  // `authorizer` null: no authorization (as with auth.disabled).
  // `default_database`: the database of requests that name none.
  explicit IngestServiceImpl(IngestEngine* engine, auth::Authorizer* authorizer = nullptr,
                             std::string default_database = "")
      : engine_(engine),
        authorizer_(authorizer),
        default_database_(std::move(default_database)) {}

  grpc::ServerUnaryReactor* Write(grpc::CallbackServerContext* context,
                                  const v1::WriteRequest* request,
                                  v1::WriteResponse* response) override;
  grpc::ServerReadReactor<v1::WriteRequest>* WriteStream(
      grpc::CallbackServerContext* context, v1::WriteStreamResponse* response) override;
  grpc::ServerBidiReactor<v1::ChannelRequest, v1::ChannelResponse>* Channel(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* context,
                                     const v1::GetIngestStatsRequest* request,
                                     v1::GetIngestStatsResponse* response) override;

  // New streams are ended at once (see above).
  void FinishStreams() { finishing_.store(true); }
  bool finishing() const { return finishing_.load(); }

  // Authenticates and admits a call (a CallAuth without principal when there
  // is no authorizer).
  absl::StatusOr<auth::CallAuth> Admit(const grpc::ServerContextBase& context);
  // Whether `who` may write `request`'s table.
  absl::Status AuthorizeWrite(const auth::Principal* who, const v1::WriteRequest& request) const;

 private:
  IngestEngine* engine_;
  auth::Authorizer* const authorizer_;
  const std::string default_database_;
  std::atomic<bool> finishing_{false};
};

}  // namespace poolside::ingest

#endif  // POOLSIDE_SERVICES_INGEST_INGEST_SERVICE_H_
