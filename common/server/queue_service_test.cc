#include "common/server/queue_service.h"

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/server/server.h"
#include "common/telemetry/metrics.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"
#include "proto/poolside/v1/cache.grpc.pb.h"

namespace poolside::server {
namespace {

namespace v1 = poolside::v1;
namespace health = grpc::health::v1;
using Async = v1::CacheService::AsyncService;

// A queue service on the cache proto: Get echoes the key and records the
// thread it ran on; Set always fails; the other methods are requested so that
// none is left waiting, and answer OK.
class EchoService final : public QueueService {
 public:
  grpc::Service* grpc_service() override { return &async_; }
  void Begin(grpc::ServerCompletionQueue* cq, telemetry::ServerCallTelemetry* calls) override {
    cq_ = cq;
    const auto* get = QueueMethod<v1::CacheService>(calls, "Get");
    const auto* set = QueueMethod<v1::CacheService>(calls, "Set");
    for (int i = 0; i < 4; ++i) {
      Call<v1::CacheGetRequest, v1::CacheGetResponse, &Async::RequestGet, &EchoService::Get>::Post(
          this, &async_, cq, get);
      Call<v1::CacheSetRequest, v1::CacheSetResponse, &Async::RequestSet, &EchoService::Set>::Post(
          this, &async_, cq, set);
      Call<v1::CacheGetManyRequest, v1::CacheGetManyResponse, &Async::RequestGetMany,
           &EchoService::Ok<v1::CacheGetManyRequest, v1::CacheGetManyResponse>>::Post(this,
                                                                                      &async_, cq);
      Call<v1::CacheDeleteRequest, v1::CacheDeleteResponse, &Async::RequestDelete,
           &EchoService::Ok<v1::CacheDeleteRequest, v1::CacheDeleteResponse>>::Post(this, &async_,
                                                                                    cq);
      Call<v1::CacheInvalidateRequest, v1::CacheInvalidateResponse, &Async::RequestInvalidate,
           &EchoService::Ok<v1::CacheInvalidateRequest, v1::CacheInvalidateResponse>>::Post(
          this, &async_, cq);
      Call<v1::CacheGetStatsRequest, v1::CacheStats, &Async::RequestGetStats,
           &EchoService::Ok<v1::CacheGetStatsRequest, v1::CacheStats>>::Post(this, &async_, cq);
    }
    // WatchInvalidations is never requested: these tests do not call it.
  }

  absl::Status Get(const v1::CacheGetRequest& request, v1::CacheGetResponse* response) {
    {
      absl::MutexLock lock(&mu_);
      threads_.insert(std::this_thread::get_id());
    }
    response->set_value(request.key());
    return absl::OkStatus();
  }
  absl::Status Set(const v1::CacheSetRequest& request, v1::CacheSetResponse* /*response*/) {
    return absl::FailedPreconditionError(absl::StrCat("no room for ", request.key()));
  }
  template <typename Request, typename Response>
  absl::Status Ok(const Request& /*request*/, Response* /*response*/) {
    return absl::OkStatus();
  }

  absl::flat_hash_set<std::thread::id> threads() {
    absl::MutexLock lock(&mu_);
    return threads_;
  }
  grpc::ServerCompletionQueue* cq() const { return cq_; }

 private:
  template <typename Request, typename Response, auto kRequestMethod, auto kHandle>
  using Call = UnaryQueueCall<EchoService, Async, Request, Response, kRequestMethod, kHandle>;

  Async async_;
  grpc::ServerCompletionQueue* cq_ = nullptr;
  absl::Mutex mu_;
  absl::flat_hash_set<std::thread::id> threads_ ABSL_GUARDED_BY(mu_);
};

ServerOptions Options(QueueService* service) {
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.tls.set_plaintext(true);
  options.queue_services = {service};
  options.drain_timeout = absl::Seconds(5);
  return options;
}

std::shared_ptr<grpc::Channel> Connect(const Server& server, int index = 0) {
  grpc::ChannelArguments args;
  args.SetInt("poolside.test.channel", index);  // a connection of its own
  return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", server.port()),
                                   grpc::InsecureChannelCredentials(), args);
}

template <typename Context>
void SetDeadline(Context* ctx) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
}

TEST(QueueServiceTest, EveryCallIsServedByTheOneQueueThread) {
  EchoService service;
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(Options(&service));
  ASSERT_TRUE(server.ok()) << server.status();
  constexpr int kThreads = 6;
  constexpr int kCalls = 200;
  std::vector<std::thread> callers;
  std::vector<int> failures(kThreads, 0);
  for (int t = 0; t < kThreads; ++t) {
    callers.emplace_back([&, t] {
      auto stub = v1::CacheService::NewStub(Connect(**server, t));
      for (int i = 0; i < kCalls; ++i) {
        grpc::ClientContext ctx;
        SetDeadline(&ctx);
        v1::CacheGetRequest request;
        request.set_key(absl::StrCat("k", t, "-", i));
        v1::CacheGetResponse response;
        grpc::Status s = stub->Get(&ctx, request, &response);
        if (!s.ok() || response.value() != request.key()) ++failures[t];
      }
    });
  }
  for (std::thread& t : callers) t.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(failures[t], 0) << "caller " << t;
  const absl::flat_hash_set<std::thread::id> threads = service.threads();
  EXPECT_EQ(threads.size(), 1u);
  EXPECT_FALSE(threads.contains(std::this_thread::get_id()));

  // RunOnQueue runs on that same thread.
  absl::Notification ran;
  std::thread::id ran_on;
  RunOnQueue(service.cq(), [&] {
    ran_on = std::this_thread::get_id();
    ran.Notify();
  });
  ASSERT_TRUE(ran.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_TRUE(threads.contains(ran_on));
}

TEST(QueueServiceTest, AHandlersErrorReachesTheCaller) {
  EchoService service;
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(Options(&service));
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::CacheService::NewStub(Connect(**server));
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::CacheSetRequest request;
  request.set_key("big");
  v1::CacheSetResponse response;
  grpc::Status s = stub->Set(&ctx, request, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(s.error_message(), "no room for big");
}

TEST(QueueServiceTest, CallsRecordTheirMetricsWithoutAnInterceptor) {
  telemetry::MetricsRegistry registry("test");
  telemetry::ServerCallTelemetry calls(&registry);
  EchoService service;
  ServerOptions options = Options(&service);
  options.call_telemetry = &calls;
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(std::move(options));
  ASSERT_TRUE(server.ok()) << server.status();
  std::shared_ptr<grpc::Channel> channel = Connect(**server);
  auto stub = v1::CacheService::NewStub(channel);
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::CacheGetRequest request;
    request.set_key("k");
    v1::CacheGetResponse response;
    ASSERT_TRUE(stub->Get(&ctx, request, &response).ok());
  }
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::CacheSetResponse response;
    ASSERT_EQ(stub->Set(&ctx, v1::CacheSetRequest(), &response).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
  }
  {
    auto health_stub = health::Health::NewStub(channel);
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    health::HealthCheckResponse response;
    ASSERT_TRUE(health_stub->Check(&ctx, health::HealthCheckRequest(), &response).ok());
  }
  // Recorded before the status is sent: visible once the calls returned.
  const std::string text = registry.ScrapeText();
  for (const char* series :
       {"poolside_grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Get\","
        "grpc_service=\"poolside.v1.CacheService\",grpc_type=\"unary\"} 3\n",
        "poolside_grpc_server_handled_total{grpc_code=\"FAILED_PRECONDITION\",grpc_method=\"Set\","
        "grpc_service=\"poolside.v1.CacheService\",grpc_type=\"unary\"} 1\n",
        "poolside_grpc_server_handling_seconds_count{grpc_code=\"OK\",grpc_method=\"Get\","
        "grpc_service=\"poolside.v1.CacheService\",grpc_type=\"unary\"} 3\n",
        "poolside_grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Check\","
        "grpc_service=\"grpc.health.v1.Health\",grpc_type=\"unary\"} 1\n"}) {
    EXPECT_NE(text.find(series), std::string::npos) << series << "\n" << text;
  }
  // Methods this service leaves unrecorded (null handle) have no series.
  EXPECT_EQ(text.find("grpc_method=\"Delete\""), std::string::npos);
}

TEST(QueueServiceTest, CallTelemetryIsRefusedForACallbackServer) {
  telemetry::MetricsRegistry registry("test");
  telemetry::ServerCallTelemetry calls(&registry);
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.tls.set_plaintext(true);
  options.call_telemetry = &calls;
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(std::move(options));
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument) << server.status();
}

grpc::Status Check(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                   health::HealthCheckResponse* response) {
  auto stub = health::Health::NewStub(channel);
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  health::HealthCheckRequest request;
  request.set_service(service);
  return stub->Check(&ctx, request, response);
}

TEST(QueueServiceTest, HealthIsCheckedOnTheQueueAndReadinessFollowsTheServer) {
  EchoService service;
  ServerOptions options = Options(&service);
  options.serving_at_start = false;
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(std::move(options));
  ASSERT_TRUE(server.ok()) << server.status();
  std::shared_ptr<grpc::Channel> channel = Connect(**server);

  health::HealthCheckResponse response;
  grpc::Status s = Check(channel, "", &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(response.status(), health::HealthCheckResponse::NOT_SERVING);
  s = Check(channel, "liveness", &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(response.status(), health::HealthCheckResponse::SERVING);
  s = Check(channel, "no.such.Service", &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);

  (*server)->MarkServingCallback()();
  s = Check(channel, "", &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(response.status(), health::HealthCheckResponse::SERVING);

  // Methods nobody serves here: health Watch, reflection, an unknown one.
  grpc::GenericStub generic(channel);
  for (const char* method :
       {"/grpc.health.v1.Health/Watch", "/grpc.reflection.v1alpha.ServerReflection/"
                                        "ServerReflectionInfo",
        "/poolside.v1.CacheService/Nope"}) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    grpc::Slice empty("");
    grpc::ByteBuffer request(&empty, 1);
    grpc::ByteBuffer reply;
    absl::Notification done;
    grpc::Status status;
    generic.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &reply,
                      [&](grpc::Status st) {
                        status = std::move(st);
                        done.Notify();
                      });
    done.WaitForNotification();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED) << method;
  }
}

TEST(QueueServiceTest, ShutdownDrainsAndStopsTheQueueThread) {
  EchoService service;
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(Options(&service));
  ASSERT_TRUE(server.ok()) << server.status();
  std::shared_ptr<grpc::Channel> channel = Connect(**server);
  auto stub = v1::CacheService::NewStub(channel);
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::CacheGetRequest request;
  request.set_key("before");
  v1::CacheGetResponse response;
  ASSERT_TRUE(stub->Get(&ctx, request, &response).ok());
  (*server)->Shutdown();  // returns once the queue thread has drained and ended
  grpc::ClientContext after;
  after.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  EXPECT_FALSE(stub->Get(&after, request, &response).ok());
}

TEST(QueueServiceTest, CallbackAndQueueServicesDoNotMix) {
  EchoService service;
  v1::CacheService::CallbackService callback;
  ServerOptions options = Options(&service);
  options.services = {&callback};
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(std::move(options));
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace poolside::server
