#include "common/server/queue_service.h"

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace poolside::server {
namespace {

namespace health = grpc::health::v1;

using CheckCall =
    UnaryQueueCall<QueueHealthService, health::Health::AsyncService, health::HealthCheckRequest,
                   health::HealthCheckResponse, &health::Health::AsyncService::RequestCheck,
                   &QueueHealthService::Check>;

}  // namespace

QueueCall::QueueCall(QueueCalls* calls, bool watch_cancel)
    : calls_(calls), watch_cancel_(watch_cancel) {
  // Before the call is requested: the notification then comes back for every
  // call that starts.
  if (watch_cancel) context_.AsyncNotifyWhenDone(&done_);
}

absl::Time QueueCall::deadline() const {
  const auto deadline = context_.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(deadline);
}

void QueueCall::Arrive(const telemetry::ServerCallTelemetry::Method* method) {
  arrived_ = true;
  if (calls_ != nullptr) calls_->Arrived();
  record_.Begin(method, &context_);
  sync::MutexLock lock(&mu_);
  refs_ = watch_cancel_ ? 2 : 1;
}

void QueueCall::Release() {
  bool last;
  {
    sync::MutexLock lock(&mu_);
    last = --refs_ == 0;
  }
  if (!last) return;
  // Counted out only once deleted, so that nothing of the call outlives a
  // WaitForCalls() that returned.
  QueueCalls* const counted = arrived_ ? calls_ : nullptr;
  delete this;
  if (counted != nullptr) counted->Left();
}

grpc::Status QueueCall::Ending(const absl::Status& status) {
  grpc::Status ending = status.ok() ? grpc::Status::OK : ToGrpcStatus(status);
  record_.End(ending);
  return ending;
}

void QueueCall::OnDone(bool /*ok*/) {
  if (context_.IsCancelled()) {
    bool unanswered;
    {
      sync::MutexLock lock(&mu_);
      CallerGoneLocked();
      unanswered = !answered_;
    }
    // Outside mu_: the cancel function may answer the call.
    if (unanswered && cancel_) cancel_();
  }
  Release();
}

void QueueCalls::Begin(grpc::ServerCompletionQueue* cq, telemetry::ServerCallTelemetry* telemetry,
                       absl::string_view service_full_name) {
  cq_ = cq;
  telemetry_ = telemetry;
  service_ = std::string(service_full_name);
}

int QueueCalls::live() const {
  sync::MutexLock lock(&mu_);
  return live_;
}

bool QueueCalls::WaitForCalls(absl::Duration timeout) {
  QueueThread::AssertNotOn(cq_);  // the calls end on the queue thread
  const absl::Time deadline = absl::Now() + timeout;
  sync::MutexLock lock(&mu_);
  while (live_ > 0) {
    if (deadline == absl::InfiniteFuture()) {
      left_.Wait(&mu_);
    } else if (!left_.WaitUntil(&mu_, absl::ToChronoTime(deadline)) && live_ > 0) {
      return false;
    }
  }
  return true;
}

void QueueCalls::Arrived() {
  sync::MutexLock lock(&mu_);
  ++live_;
}

void QueueCalls::Left() {
  sync::MutexLock lock(&mu_);
  if (--live_ == 0) left_.SignalAll();
}

// One Watch call, on the queue thread throughout. It holds at most one write
// at a time and sends only the latest status.
class QueueHealthService::Watch final
    : public QueueStreamCall<Watch, grpc::ServerAsyncWriter<health::HealthCheckResponse>> {
 public:
  // Requests one watch call; when it arrives, requests the next.
  static void Post(QueueHealthService* service) { new Watch(service); }

  // Sends the watched status if it is not the one sent last; an ending watch
  // finishes once its last status is written.
  void Send() {
    if (busy() || finish_sent() || broken()) return;
    const health::HealthCheckResponse::ServingStatus status =
        service_->WatchedStatus(request_.service());
    if (!sent_any_ || status != sent_.status()) {
      sent_any_ = true;
      sent_.set_status(status);
      stream_.Write(sent_, Start(&written_));
    } else if (ending_) {
      Finish(status_);
    }
  }

  // Ends the watch with `status`, after its latest status when `last_status`
  // (otherwise at once).
  void End(grpc::Status status, bool last_status) {
    if (ending_) return;
    ending_ = true;
    last_status_ = last_status;
    status_ = std::move(status);
    Forget();
    if (last_status) {
      Send();
    } else if (!busy()) {
      Finish(status_);
    }
  }

  void Forget() { service_->watches_.Remove(this); }

 private:
  friend QueueStreamCall;

  explicit Watch(QueueHealthService* service) : service_(service) {
    grpc::ServerCompletionQueue* cq;
    {
      sync::MutexLock lock(&service_->mu_);
      cq = service_->cq_;
    }
    service_->async_.RequestWatch(&context_, &request_, &stream_, cq, cq, &requested_);
  }
  ~Watch() = default;

  void OnRequested(bool ok) {
    if (!Arrived(ok, service_->watch_method_)) return;
    Post(service_);
    switch (service_->watches_.Admit(this)) {
      case OpenCalls<Watch>::Admission::kClosed:
        End(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"),
            /*last_status=*/true);
        return;
      case OpenCalls<Watch>::Admission::kFull:
        End(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                         absl::StrCat("too many health watches open on this server (at most ",
                                      kMaxWatches, "); use Check, or fewer watching channels")),
            /*last_status=*/false);
        return;
      case OpenCalls<Watch>::Admission::kAdmitted:
        Send();
        return;
    }
  }

  void OnWritten(bool ok) {
    Returned();
    if (!ok) {  // the stream is broken: the caller is gone
      Broke();
    } else if (ending_ && !last_status_) {
      Finish(status_);
    } else {
      Send();
    }
    MaybeDelete();
  }

  QueueHealthService* const service_;
  health::HealthCheckRequest request_;
  QueueStep<Watch, &Watch::OnRequested> requested_{this};
  QueueStep<Watch, &Watch::OnWritten> written_{this};

  health::HealthCheckResponse sent_;  // also the message being written
  bool sent_any_ = false;
  bool ending_ = false;
  bool last_status_ = false;  // an ending watch sends its latest status first
  grpc::Status status_;
};

QueueHealthService::QueueHealthService() { serving_[""] = true; }

std::string QueueHealthService::service_name() const { return health::Health::service_full_name(); }

void QueueHealthService::Begin(grpc::ServerCompletionQueue* cq,
                               telemetry::ServerCallTelemetry* calls) {
  {
    sync::MutexLock lock(&mu_);
    cq_ = cq;
  }
  const auto* check = QueueMethod<health::Health>(calls, "Check");
  watch_method_ = QueueMethod<health::Health>(
      calls, "Watch", grpc::experimental::ServerRpcInfo::Type::SERVER_STREAMING);
  for (int i = 0; i < 2; ++i) {
    CheckCall::Post(this, &async_, cq, check);
    Watch::Post(this);
  }
}

void QueueHealthService::SetServingStatus(const std::string& service_name, bool serving) {
  sync::MutexLock lock(&mu_);
  if (shut_down_) return;
  auto [it, added] = serving_.try_emplace(service_name, serving);
  if (!added && it->second == serving) return;
  it->second = serving;
  PublishSoonLocked();
}

void QueueHealthService::SetServingStatus(bool serving) {
  sync::MutexLock lock(&mu_);
  if (shut_down_) return;
  for (auto& [name, status] : serving_) status = serving;
  PublishSoonLocked();
}

void QueueHealthService::Shutdown() {
  sync::MutexLock lock(&mu_);
  if (shut_down_) return;
  for (auto& [name, status] : serving_) status = false;
  shut_down_ = true;
  PublishSoonLocked();
}

void QueueHealthService::EndWatches() {
  sync::MutexLock lock(&mu_);
  if (cq_ == nullptr) return;
  RunOnQueue(cq_, [this] {
    watches_.Close([](Watch* watch) {
      watch->End(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"),
                 /*last_status=*/true);
    });
  });
}

void QueueHealthService::PublishSoonLocked() {
  // Under mu_: Shutdown() is the last to get here, and Server shuts the queue
  // down only after it.
  if (cq_ != nullptr) RunOnQueue(cq_, [this] { Publish(); });
}

void QueueHealthService::Publish() {
  watches_.ForEach([](Watch* watch) { watch->Send(); });
}

health::HealthCheckResponse::ServingStatus QueueHealthService::WatchedStatus(
    const std::string& name) {
  sync::MutexLock lock(&mu_);
  auto it = serving_.find(name);
  if (it == serving_.end()) return health::HealthCheckResponse::SERVICE_UNKNOWN;
  return it->second ? health::HealthCheckResponse::SERVING
                    : health::HealthCheckResponse::NOT_SERVING;
}

absl::Status QueueHealthService::Check(const health::HealthCheckRequest& request,
                                       health::HealthCheckResponse* response) {
  sync::MutexLock lock(&mu_);
  auto it = serving_.find(request.service());
  if (it == serving_.end()) {
    return absl::NotFoundError(
        absl::StrCat("no health status for service \"", request.service().substr(0, 200), "\""));
  }
  response->set_status(it->second ? health::HealthCheckResponse::SERVING
                                  : health::HealthCheckResponse::NOT_SERVING);
  return absl::OkStatus();
}

}  // namespace poolside::server
