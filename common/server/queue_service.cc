#include "common/server/queue_service.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/alarm.h"

namespace poolside::server {
namespace {

// An alarm due at once: its tag comes back on the queue thread.
class QueueTask final : public QueueTag {
 public:
  QueueTask(grpc::CompletionQueue* cq, std::function<void()> fn) : fn_(std::move(fn)) {
    alarm_.Set(cq, gpr_time_0(GPR_CLOCK_MONOTONIC), this);
  }
  void Proceed(bool /*ok*/) override {
    fn_();
    delete this;
  }

 private:
  ~QueueTask() = default;
  grpc::Alarm alarm_;
  std::function<void()> fn_;
};

namespace health = grpc::health::v1;

using CheckCall =
    UnaryQueueCall<QueueHealthService, health::Health::AsyncService, health::HealthCheckRequest,
                   health::HealthCheckResponse, &health::Health::AsyncService::RequestCheck,
                   &QueueHealthService::Check>;

}  // namespace

void PollQueue(grpc::CompletionQueue* cq) {
  void* tag = nullptr;
  bool ok = false;
  while (cq->Next(&tag, &ok)) static_cast<QueueTag*>(tag)->Proceed(ok);
}

void RunOnQueue(grpc::CompletionQueue* cq, std::function<void()> fn) {
  new QueueTask(cq, std::move(fn));
}

QueueHealthService::QueueHealthService() { serving_[""] = true; }

void QueueHealthService::Begin(grpc::ServerCompletionQueue* cq,
                               telemetry::ServerCallTelemetry* calls) {
  const auto* check = QueueMethod<grpc::health::v1::Health>(calls, "Check");
  for (int i = 0; i < 2; ++i) CheckCall::Post(this, &async_, cq, check);
}

void QueueHealthService::SetServingStatus(const std::string& service_name, bool serving) {
  absl::MutexLock lock(&mu_);
  if (!shut_down_) serving_[service_name] = serving;
}

void QueueHealthService::SetServingStatus(bool serving) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  for (auto& [name, status] : serving_) status = serving;
}

void QueueHealthService::Shutdown() {
  absl::MutexLock lock(&mu_);
  for (auto& [name, status] : serving_) status = false;
  shut_down_ = true;
}

absl::Status QueueHealthService::Check(const health::HealthCheckRequest& request,
                                       health::HealthCheckResponse* response) {
  absl::MutexLock lock(&mu_);
  auto it = serving_.find(request.service());
  if (it == serving_.end()) {
    return absl::NotFoundError(absl::StrCat("no health status for service \"",
                                            request.service().substr(0, 200), "\""));
  }
  response->set_status(it->second ? health::HealthCheckResponse::SERVING
                                  : health::HealthCheckResponse::NOT_SERVING);
  return absl::OkStatus();
}

}  // namespace poolside::server
