#ifndef POOLSIDE_SERVICES_INGEST_INGEST_SERVICE_H_
#define POOLSIDE_SERVICES_INGEST_INGEST_SERVICE_H_

// gRPC adapter of the ingest service (callback API): converts requests to
// IngestEngine::Submit calls and outcomes back to responses and statuses
// (common/server/status.h). Nothing here blocks a gRPC thread: parsing and
// encoding run on the calling thread, flushing on the engine's workers, and
// answers are written from the workers' callbacks.
//
// Write, WriteStream and Channel take their requests as raw bytes and parse
// them themselves (request_reader.h), row by row: a message that does not
// parse (invalid UTF-8 in a string field, broken encoding) is answered
// INVALID_ARGUMENT — the unary call's status, or the end of a stream, saying
// which message; the requests before it are answered as usual and nothing
// after it is read. (With generated types, gRPC's callback API would show
// such a message to a stream's reactor as the end of the stream.)
//
// Streams read their next message only once the engine has reserved room for
// it in its byte bound (IngestEngine::ReserveRead), so a full buffer stops
// reading (and gRPC flow control holds the client back) before the bytes
// arrive. Unary Write is refused with RESOURCE_EXHAUSTED and a
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
// holds one concurrency slot for its lifetime. Idempotency keys belong to the
// principal.
//
// Thread-safe.

#include <atomic>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "common/auth/authorizer.h"
#include "common/auth/grpc_auth.h"
#include "grpcpp/support/byte_buffer.h"
#include "proto/poolside/v1/ingest.grpc.pb.h"
#include "services/ingest/ingest_engine.h"

namespace poolside::ingest {

// Write, WriteStream and Channel read and write raw bytes; GetStats is typed.
using IngestServiceBase = v1::IngestService::WithRawCallbackMethod_Write<
    v1::IngestService::WithRawCallbackMethod_WriteStream<
        v1::IngestService::WithRawCallbackMethod_Channel<
            v1::IngestService::WithCallbackMethod_GetStats<v1::IngestService::Service>>>>;

class IngestServiceImpl final : public IngestServiceBase {
 public:
  // `authorizer` null: no authorization (as with auth.disabled).
  // `default_database`: the database of requests that name none.
  explicit IngestServiceImpl(IngestEngine* engine, auth::Authorizer* authorizer = nullptr,
                             std::string default_database = "")
      : engine_(engine), authorizer_(authorizer), default_database_(std::move(default_database)) {}

  // A WriteRequest in, a WriteResponse out.
  grpc::ServerUnaryReactor* Write(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  // WriteRequests in, a WriteStreamResponse out.
  grpc::ServerReadReactor<grpc::ByteBuffer>* WriteStream(grpc::CallbackServerContext* context,
                                                         grpc::ByteBuffer* response) override;
  // ChannelRequests in, ChannelResponses out.
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Channel(
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
  // Whether `who` may write `table` of `database` (empty: the default one).
  absl::Status AuthorizeWrite(const auth::Principal* who, const std::string& database,
                              const std::string& table) const;

 private:
  IngestEngine* engine_;
  auth::Authorizer* const authorizer_;
  const std::string default_database_;
  std::atomic<bool> finishing_{false};
};

}  // namespace poolside::ingest

#endif  // POOLSIDE_SERVICES_INGEST_INGEST_SERVICE_H_
