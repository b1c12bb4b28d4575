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
// Thread-safe.

#include <atomic>

#include "proto/poolside/v1/ingest.grpc.pb.h"
#include "services/ingest/ingest_engine.h"

namespace poolside::ingest {

class IngestServiceImpl final : public v1::IngestService::CallbackService {
 public:
  explicit IngestServiceImpl(IngestEngine* engine) : engine_(engine) {}

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

 private:
  IngestEngine* engine_;
  std::atomic<bool> finishing_{false};
};

}  // namespace poolside::ingest

#endif  // POOLSIDE_SERVICES_INGEST_INGEST_SERVICE_H_
