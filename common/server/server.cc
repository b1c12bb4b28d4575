#include "common/server/server.h"

#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/server/tls.h"
#include "common/telemetry/log.h"
#include "grpcpp/ext/health_check_service_server_builder_option.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/resource_quota.h"

namespace poolside::server {
namespace {

// Drops the builder's plugins: any registered process-wide would bring
// synchronous services, whose polling threads a queue server must not have.
class NoPlugins final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->clear();
  }
};

sigset_t TerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

}  // namespace

void BlockTerminationSignals() {
  const sigset_t set = TerminationSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int WaitForTerminationSignal() {
  const sigset_t set = TerminationSignals();
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(ServerOptions options) {
  const bool queue = !options.queue_services.empty();
  if (queue && !options.services.empty()) {
    return absl::InvalidArgumentError(
        "a server has callback services or queue services, not both "
        "(common/server/queue_service.h)");
  }
  if (!queue && options.call_telemetry != nullptr) {
    return absl::InvalidArgumentError(
        "call_telemetry records a queue server's calls; a callback server's are "
        "recorded by an interceptor (ServiceMetrics::NewServerInterceptorFactory)");
  }
  if (!queue) grpc::EnableDefaultHealthCheckService(true);
  std::unique_ptr<Server> s(new Server());
  s->options_ = std::move(options);
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> tcp_credentials =
      ServerCredentialsFor(s->options_.tls);
  if (!tcp_credentials.ok()) return tcp_credentials.status();
  auto credentials_for = [&](const std::string& address) {
    return absl::StartsWith(address, "unix") ? grpc::InsecureServerCredentials() : *tcp_credentials;
  };
  grpc::ServerBuilder builder;
  builder.AddListeningPort(s->options_.listen, credentials_for(s->options_.listen), &s->port_);
  std::vector<int> extra_ports(s->options_.extra_listen.size(), 0);
  for (size_t i = 0; i < extra_ports.size(); ++i) {
    builder.AddListeningPort(s->options_.extra_listen[i],
                             credentials_for(s->options_.extra_listen[i]), &extra_ports[i]);
  }
  // Clients may check a quiet connection with keepalive pings as often as
  // every second (the query service's sidecar client does, to notice a hung
  // sidecar); gRPC's default would answer pings more frequent than every 5
  // minutes with GOAWAY "too_many_pings".
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
  builder.SetMaxReceiveMessageSize(s->options_.max_receive_message_bytes);
  builder.SetMaxSendMessageSize(s->options_.max_send_message_bytes);
  if (s->options_.fixed_stream_window_bytes > 0) {
    builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES,
                               s->options_.fixed_stream_window_bytes);
  }
  if (s->options_.grpc_memory_bytes > 0) {
    grpc::ResourceQuota quota("poolside");
    quota.Resize(static_cast<size_t>(s->options_.grpc_memory_bytes));
    builder.SetResourceQuota(quota);
  }
  for (grpc::Service* service : s->options_.services) builder.RegisterService(service);
  if (queue) {
    s->queue_health_ = std::make_unique<QueueHealthService>();
    s->options_.queue_services.push_back(s->queue_health_.get());
    std::vector<std::string> names;
    for (QueueService* service : s->options_.queue_services) {
      names.push_back(service->service_name());
    }
    s->reflection_index_ = std::make_unique<ReflectionIndex>(std::move(names));
    s->queue_reflection_ =
        std::make_unique<QueueReflectionService<ReflectionV1>>(s->reflection_index_.get());
    s->queue_reflection_v1alpha_ =
        std::make_unique<QueueReflectionService<ReflectionV1Alpha>>(s->reflection_index_.get());
    s->options_.queue_services.push_back(s->queue_reflection_.get());
    s->options_.queue_services.push_back(s->queue_reflection_v1alpha_.get());
    builder.SetOption(std::make_unique<grpc::HealthCheckServiceServerBuilderOption>(nullptr));
    builder.SetOption(std::make_unique<NoPlugins>());
    for (QueueService* service : s->options_.queue_services) {
      builder.RegisterService(service->grpc_service());
    }
    s->cq_ = builder.AddCompletionQueue();
  } else {
    s->callback_reflection_ = std::make_shared<CallbackReflection>();
    builder.SetOption(s->callback_reflection_->BuilderOption());
  }
  if (!s->options_.interceptors.empty()) {
    builder.experimental().SetInterceptorCreators(std::move(s->options_.interceptors));
    s->options_.interceptors.clear();
  }
  s->server_ = builder.BuildAndStart();
  if (queue && s->server_ != nullptr) {
    // At once, so that every way out of here (the returns below, ~Server)
    // finds a queue being polled, which its shutdown drains.
    for (QueueService* service : s->options_.queue_services)
      service->Begin(s->cq_.get(), s->options_.call_telemetry);
    s->queue_thread_ = std::make_unique<QueueThread>(s->cq_.get());
  }
  if (s->server_ == nullptr || s->port_ == 0) {
    // gRPC builds no server when any one address fails, without saying which.
    std::vector<std::string> addresses = {s->options_.listen};
    if (s->server_ == nullptr) {
      addresses.insert(addresses.end(), s->options_.extra_listen.begin(),
                       s->options_.extra_listen.end());
    }
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", absl::StrJoin(addresses, " or "),
        " (address in use, not an address of this host, or a socket directory missing?)"));
  }
  for (size_t i = 0; i < extra_ports.size(); ++i) {
    if (extra_ports[i] == 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen on ", s->options_.extra_listen[i]));
    }
  }
  s->health_ = queue ? s->queue_health_.get() : s->server_->GetHealthCheckService();
  if (s->health_ != nullptr) {
    s->health_->SetServingStatus("liveness", true);
    if (!s->options_.serving_at_start) s->health_->SetServingStatus("", false);
    absl::MutexLock lock(&s->readiness_->mu);
    s->readiness_->health = s->health_;
  }
  if (!s->options_.port_file.empty()) {
    // Written atomically so a reader never sees a partial number.
    const std::string tmp = s->options_.port_file + ".tmp";
    {
      std::ofstream out(tmp);
      out << s->port_ << "\n";
      if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp));
    }
    if (std::rename(tmp.c_str(), s->options_.port_file.c_str()) != 0) {
      return absl::InternalError(absl::StrCat("cannot write ", s->options_.port_file));
    }
  }
  telemetry::LogInfo("serving", {{"listen", s->options_.listen},
                                 {"tls", s->options_.tls.plaintext()             ? "off (plaintext)"
                                         : s->options_.tls.require_client_cert() ? "mutual"
                                                                                 : "on"},
                                 {"port", absl::StrCat(s->port_)},
                                 {"also", absl::StrJoin(s->options_.extra_listen, ",")}});
  return s;
}

Server::~Server() { Shutdown(); }

std::function<void()> Server::MarkServingCallback() {
  return [readiness = readiness_] {
    absl::MutexLock lock(&readiness->mu);
    if (readiness->health == nullptr) return;
    readiness->health->SetServingStatus("", true);
    telemetry::LogInfo("ready");
  };
}

int Server::WaitForTermination() {
  const int sig = WaitForTerminationSignal();
  telemetry::LogInfo("shutting down",
                     {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"},
                      {"drain_timeout", absl::FormatDuration(options_.drain_timeout)}});
  Shutdown();
  return sig;
}

void Server::Shutdown() {
  QueueThread::AssertNotOn(cq_.get());  // it waits for the calls on the queue
  if (shut_down_ || server_ == nullptr) return;
  shut_down_ = true;
  {
    absl::MutexLock lock(&readiness_->mu);
    readiness_->health = nullptr;
  }
  if (health_ != nullptr) health_->SetServingStatus(false);
  // Health watches see NOT_SERVING and end, and reflection streams end,
  // rather than hold the drain.
  if (queue_health_ != nullptr) queue_health_->EndWatches();
  if (queue_reflection_ != nullptr) queue_reflection_->EndStreams();
  if (queue_reflection_v1alpha_ != nullptr) queue_reflection_v1alpha_->EndStreams();
  if (callback_reflection_ != nullptr) callback_reflection_->EndStreams();
  if (options_.before_drain) options_.before_drain();
  const auto deadline =
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(absl::ToInt64Milliseconds(options_.drain_timeout));
  server_->Shutdown(deadline);
  server_->Wait();
  if (queue_health_ != nullptr) queue_health_->Shutdown();
  if (cq_ != nullptr && options_.before_queue_shutdown) options_.before_queue_shutdown();
  if (cq_ != nullptr) {
    // After the server's shutdown, as gRPC requires; Next() returns false once
    // every outstanding tag has come back.
    cq_->Shutdown();
    if (queue_thread_ != nullptr) queue_thread_->Join();
  }
  telemetry::LogInfo("stopped");
}

}  // namespace poolside::server
