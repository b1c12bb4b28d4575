#include "common/server/callback_reflection.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/impl/server_builder_plugin.h"
#include "grpcpp/impl/server_initializer.h"

namespace poolside::server {

// One stream: read a request, write its answer, read the next, until the
// client half-closes (then finish OK) or the call breaks.
template <typename Api>
class CallbackReflection::Stream final
    : public grpc::ServerBidiReactor<typename Api::Request, typename Api::Response> {
 public:
  Stream(std::shared_ptr<CallbackReflection> owner, grpc::CallbackServerContext* context)
      : owner_(std::move(owner)), context_(context) {
    grpc::Status refusal;
    if (!owner_->Admit(context_, &refusal)) {
      this->Finish(refusal);
      return;
    }
    admitted_ = true;
    index_ = owner_->index();
    this->StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client is done sending, or the call broke or was cancelled
      this->Finish(context_->IsCancelled() ? grpc::Status::CANCELLED : grpc::Status::OK);
      return;
    }
    if (index_ == nullptr) index_ = owner_->index();
    response_ = index_ != nullptr ? index_->template Answer<Api>(request_, &sent_)
                                  : ReflectionIndex({}).template Answer<Api>(request_, &sent_);
    this->StartWrite(&response_);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      this->Finish(grpc::Status::CANCELLED);
      return;
    }
    this->StartRead(&request_);
  }

  void OnDone() override {
    if (admitted_) owner_->Remove(context_);
    delete this;
  }

 private:
  const std::shared_ptr<CallbackReflection> owner_;
  grpc::CallbackServerContext* const context_;
  std::shared_ptr<const ReflectionIndex> index_;
  bool admitted_ = false;
  typename Api::Request request_;
  typename Api::Response response_;
  absl::flat_hash_set<std::string> sent_;  // files sent on this stream
};

template <typename Api>
class CallbackReflection::Service final : public Api::Service::CallbackService {
 public:
  explicit Service(std::shared_ptr<CallbackReflection> owner) : owner_(std::move(owner)) {}

  grpc::ServerBidiReactor<typename Api::Request, typename Api::Response>* ServerReflectionInfo(
      grpc::CallbackServerContext* context) override {
    return new Stream<Api>(owner_, context);
  }

 private:
  const std::shared_ptr<CallbackReflection> owner_;
};

class CallbackReflection::Plugin final : public grpc::ServerBuilderPlugin {
 public:
  explicit Plugin(std::shared_ptr<CallbackReflection> owner)
      : owner_(owner),
        v1_(std::make_shared<Service<ReflectionV1>>(owner)),
        v1alpha_(std::make_shared<Service<ReflectionV1Alpha>>(owner)) {}

  std::string name() override { return "poolside_reflection"; }
  void InitServer(grpc::ServerInitializer* si) override {
    si->RegisterService(v1_);
    si->RegisterService(v1alpha_);
  }
  void Finish(grpc::ServerInitializer* si) override {
    const std::vector<std::string>* listed = si->GetServiceList();
    std::vector<std::string> services;
    for (const std::string& name : *listed) {
      // The index adds the reflection services itself.
      if (name != ReflectionV1::Service::service_full_name() &&
          name != ReflectionV1Alpha::Service::service_full_name()) {
        services.push_back(name);
      }
    }
    owner_->SetServices(std::move(services));
  }
  void ChangeArguments(const std::string& /*name*/, void* /*value*/) override {}
  bool has_sync_methods() const override { return false; }
  bool has_async_methods() const override { return false; }

 private:
  const std::shared_ptr<CallbackReflection> owner_;
  const std::shared_ptr<grpc::Service> v1_;
  const std::shared_ptr<grpc::Service> v1alpha_;
};

namespace {

class AddPlugin final : public grpc::ServerBuilderOption {
 public:
  explicit AddPlugin(std::unique_ptr<grpc::ServerBuilderPlugin> plugin)
      : plugin_(std::move(plugin)) {}
  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    if (plugin_ != nullptr) plugins->push_back(std::move(plugin_));
  }

 private:
  std::unique_ptr<grpc::ServerBuilderPlugin> plugin_;
};

}  // namespace

CallbackReflection::CallbackReflection() = default;
CallbackReflection::~CallbackReflection() = default;

std::unique_ptr<grpc::ServerBuilderOption> CallbackReflection::BuilderOption() {
  return std::make_unique<AddPlugin>(std::make_unique<Plugin>(shared_from_this()));
}

void CallbackReflection::SetServices(std::vector<std::string> services) {
  auto index = std::make_shared<const ReflectionIndex>(std::move(services));
  absl::MutexLock lock(&mu_);
  index_ = std::move(index);
}

std::shared_ptr<const ReflectionIndex> CallbackReflection::index() const {
  absl::MutexLock lock(&mu_);
  return index_;
}

bool CallbackReflection::Admit(grpc::CallbackServerContext* context, grpc::Status* refusal) {
  absl::MutexLock lock(&mu_);
  if (closed_) {
    *refusal = grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
    return false;
  }
  if (open_.size() >= kMaxStreams) {
    *refusal =
        grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                     absl::StrCat("too many reflection streams open on this server (at most ",
                                  kMaxStreams, ")"));
    return false;
  }
  open_.insert(context);
  return true;
}

void CallbackReflection::Remove(grpc::CallbackServerContext* context) {
  absl::MutexLock lock(&mu_);
  open_.erase(context);
}

void CallbackReflection::EndStreams() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
  // TryCancel only marks the call: its reactor's pending operation comes back
  // failed on a gRPC thread, which never takes mu_ while the call is open.
  for (grpc::CallbackServerContext* context : open_) context->TryCancel();
}

}  // namespace poolside::server
