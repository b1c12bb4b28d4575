#include "common/server/queue_service.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/server/server.h"
#include "common/sync/mutex.h"
#include "common/telemetry/metrics.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/descriptor_database.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"
#include "proto/grpc/reflection/v1/reflection.grpc.pb.h"
#include "proto/grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "proto/poolside/v1/cache.grpc.pb.h"
#include "proto/poolside/v1/query.grpc.pb.h"

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
// Under ThreadSanitizer, the suppressions of what TSan cannot see inside
// Debian's uninstrumented gRPC (the file says which, and why). Named here, not
// in the test's env: .bazelrc's --test_env=TSAN_OPTIONS replaces a rule's env,
// while TSAN_OPTIONS overrides these defaults flag by flag. The path is
// relative to where `bazel test` runs the test (its runfiles), as it is to
// the workspace root.
extern "C" const char* __tsan_default_options() {
  return "suppressions=common/server/tsan_suppressions.txt";
}
#endif
#endif

namespace poolside::server {
namespace {

namespace v1 = poolside::v1;
namespace health = grpc::health::v1;
namespace reflection = grpc::reflection::v1alpha;
using Async = v1::CacheService::AsyncService;

// absl::Notification on sync::Mutex, which ThreadSanitizer sees (Debian's
// Abseil is not built with it: common/sync/mutex.h).
class Notice {
 public:
  void Notify() {
    sync::MutexLock lock(&mu_);
    notified_ = true;
    cv_.SignalAll();
  }
  // False if `timeout` passed first.
  bool WaitFor(std::chrono::seconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    sync::MutexLock lock(&mu_);
    while (!notified_ && std::chrono::steady_clock::now() < deadline) {
      cv_.WaitUntil(&mu_, deadline);
    }
    return notified_;
  }
  void Wait() {
    sync::MutexLock lock(&mu_);
    while (!notified_) cv_.Wait(&mu_);
  }

 private:
  sync::Mutex mu_;
  sync::CondVar cv_;
  bool notified_ ABSL_GUARDED_BY(mu_) = false;
};

// A queue service on the cache proto: Get echoes the key and records the
// thread it ran on; Set always fails; the other methods are requested so that
// none is left waiting, and answer OK.
class EchoService final : public QueueService {
 public:
  grpc::Service* grpc_service() override { return &async_; }
  std::string service_name() const override { return v1::CacheService::service_full_name(); }
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
           &EchoService::Ok<v1::CacheGetManyRequest, v1::CacheGetManyResponse>>::Post(this, &async_,
                                                                                      cq);
      Call<v1::CacheDeleteRequest, v1::CacheDeleteResponse, &Async::RequestDelete,
           &EchoService::Ok<v1::CacheDeleteRequest, v1::CacheDeleteResponse>>::Post(this, &async_,
                                                                                    cq);
      Call<v1::CacheInvalidateRequest, v1::CacheInvalidateResponse, &Async::RequestInvalidate,
           &EchoService::Ok<v1::CacheInvalidateRequest, v1::CacheInvalidateResponse>>::Post(this,
                                                                                            &async_,
                                                                                            cq);
      Call<v1::CacheGetStatsRequest, v1::CacheStats, &Async::RequestGetStats,
           &EchoService::Ok<v1::CacheGetStatsRequest, v1::CacheStats>>::Post(this, &async_, cq);
    }
    // WatchInvalidations is never requested: these tests do not call it.
  }

  absl::Status Get(const v1::CacheGetRequest& request, v1::CacheGetResponse* response) {
    {
      sync::MutexLock lock(&mu_);
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
    sync::MutexLock lock(&mu_);
    return threads_;
  }
  grpc::ServerCompletionQueue* cq() const { return cq_; }

 private:
  template <typename Request, typename Response, auto kRequestMethod, auto kHandle>
  using Call = UnaryQueueCall<EchoService, Async, Request, Response, kRequestMethod, kHandle>;

  Async async_;
  grpc::ServerCompletionQueue* cq_ = nullptr;
  sync::Mutex mu_;
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
  std::vector<std::string> first_failure(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    callers.emplace_back([&, t] {
      auto stub = v1::CacheService::NewStub(Connect(**server, t));
      for (int i = 0; i < kCalls; ++i) {
        grpc::ClientContext ctx;
        SetDeadline(&ctx);
        // About once in a hundred runs one of the six channels' first connect
        // fails ("failed to connect to all addresses ... No such file or
        // directory") and, without this, every call in its reconnect backoff
        // fails at once; the test is about the serving thread, not connecting.
        ctx.set_wait_for_ready(true);
        v1::CacheGetRequest request;
        request.set_key(absl::StrCat("k", t, "-", i));
        v1::CacheGetResponse response;
        grpc::Status s = stub->Get(&ctx, request, &response);
        if (!s.ok() || response.value() != request.key()) {
          if (failures[t]++ == 0) {
            first_failure[t] = absl::StrCat("call ", i, ": code ", s.error_code(), " ",
                                            s.error_message(), " value ", response.value());
          }
        }
      }
    });
  }
  for (std::thread& t : callers) t.join();
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(failures[t], 0) << "caller " << t << ", first failure: " << first_failure[t];
  }
  const absl::flat_hash_set<std::thread::id> threads = service.threads();
  EXPECT_EQ(threads.size(), 1u);
  EXPECT_FALSE(threads.contains(std::this_thread::get_id()));

  // RunOnQueue runs on that same thread.
  Notice ran;
  std::thread::id ran_on;
  RunOnQueue(service.cq(), [&] {
    ran_on = std::this_thread::get_id();
    ran.Notify();
  });
  ASSERT_TRUE(ran.WaitFor(std::chrono::seconds(10)));
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

  // A method nobody serves here.
  grpc::GenericStub generic(channel);
  for (const char* method : {"/poolside.v1.CacheService/Nope"}) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    grpc::Slice empty("");
    grpc::ByteBuffer request(&empty, 1);
    grpc::ByteBuffer reply;
    Notice done;
    grpc::Status status;
    generic.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &reply, [&](grpc::Status st) {
      status = std::move(st);
      done.Notify();
    });
    done.Wait();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED) << method;
  }
}

// One health watch, read from this thread.
struct HealthWatch {
  HealthWatch(health::Health::Stub* stub, const std::string& service) {
    // Far beyond the test's length: a watch still open when it passes (one
    // that held the drain) ends DEADLINE_EXCEEDED, not as asserted.
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(50));
    health::HealthCheckRequest request;
    request.set_service(service);
    reader = stub->Watch(&ctx, request);
  }
  // The next status sent, or UNKNOWN once the watch has ended.
  health::HealthCheckResponse::ServingStatus Next() {
    health::HealthCheckResponse response;
    if (!reader->Read(&response)) return health::HealthCheckResponse::UNKNOWN;
    EXPECT_NE(response.status(), health::HealthCheckResponse::UNKNOWN);
    return response.status();
  }
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReader<health::HealthCheckResponse>> reader;
};

TEST(QueueServiceTest, HealthWatchesSeeEveryChangeAndEndWhenTheDrainStarts) {
  EchoService service;
  ServerOptions options = Options(&service);
  options.serving_at_start = false;
  options.drain_timeout = absl::Seconds(100);  // longer than the watches' deadline
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(std::move(options));
  ASSERT_TRUE(server.ok()) << server.status();
  std::shared_ptr<grpc::Channel> channel = Connect(**server);
  auto stub = health::Health::NewStub(channel);
  using Status = health::HealthCheckResponse;

  HealthWatch whole(stub.get(), "");
  EXPECT_EQ(whole.Next(), Status::NOT_SERVING);  // the current status, at once
  HealthWatch liveness(stub.get(), "liveness");
  EXPECT_EQ(liveness.Next(), Status::SERVING);
  // A name nobody set: SERVICE_UNKNOWN, and the watch stays open.
  HealthWatch unknown(stub.get(), "poolside.v1.NoSuchService");
  EXPECT_EQ(unknown.Next(), Status::SERVICE_UNKNOWN);
  HealthWatch cancelled(stub.get(), "");
  EXPECT_EQ(cancelled.Next(), Status::NOT_SERVING);

  (*server)->MarkServingCallback()();
  EXPECT_EQ(whole.Next(), Status::SERVING);
  EXPECT_EQ(cancelled.Next(), Status::SERVING);
  cancelled.ctx.TryCancel();
  EXPECT_EQ(cancelled.Next(), Status::UNKNOWN);
  EXPECT_EQ(cancelled.reader->Finish().error_code(), grpc::StatusCode::CANCELLED);

  // The drain: each watch gets its last status and ends UNAVAILABLE, so
  // Shutdown does not wait out the drain timeout for them.
  std::thread stop([&] { (*server)->Shutdown(); });
  EXPECT_EQ(whole.Next(), Status::NOT_SERVING);
  EXPECT_EQ(liveness.Next(), Status::NOT_SERVING);
  for (HealthWatch* watch : {&whole, &liveness, &unknown}) {
    EXPECT_EQ(watch->Next(), Status::UNKNOWN);
    grpc::Status end = watch->reader->Finish();
    EXPECT_EQ(end.error_code(), grpc::StatusCode::UNAVAILABLE) << end.error_message();
  }
  stop.join();
}

// The names a listing (of either version) gives, sorted.
template <typename Response>
std::vector<std::string> Listed(const Response& listing) {
  std::vector<std::string> names;
  for (const auto& listed : listing.list_services_response().service()) {
    names.push_back(listed.name());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// A reflection stream of either version, asked one request at a time.
template <typename Request, typename Response, typename Stub>
struct ReflectionStreamOf {
  explicit ReflectionStreamOf(Stub* stub) {
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(50));
    stream = stub->ServerReflectionInfo(&ctx);
  }
  Response Ask(const Request& request) {
    Response response;
    EXPECT_TRUE(stream->Write(request));
    EXPECT_TRUE(stream->Read(&response));
    EXPECT_EQ(response.original_request().SerializeAsString(), request.SerializeAsString());
    return response;
  }
  // Asks for the list of services; returns their names, sorted.
  std::vector<std::string> ListServices() {
    Request list;
    list.set_list_services("*");
    return Listed(Ask(list));
  }
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReaderWriter<Request, Response>> stream;
};
using ReflectionStream =
    ReflectionStreamOf<reflection::ServerReflectionRequest, reflection::ServerReflectionResponse,
                       reflection::ServerReflection::Stub>;
using ReflectionV1Stream = ReflectionStreamOf<grpc::reflection::v1::ServerReflectionRequest,
                                              grpc::reflection::v1::ServerReflectionResponse,
                                              grpc::reflection::v1::ServerReflection::Stub>;

// What reflection lists on a server of the cache service, sorted.
const std::vector<std::string>& CacheServerServices() {
  static const std::vector<std::string> kServices = {
      "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection", "poolside.v1.CacheService"};
  return kServices;
}

// A server with a reflection stream of each version open on it.
class ReflectionTest : public ::testing::Test {
 protected:
  // Starts the server with a drain longer than the streams' deadline (so only
  // the drain's start can end a stream left open) and opens the streams.
  void Start(ServerOptions options) {
    options.drain_timeout = absl::Seconds(100);
    absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(std::move(options));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    channel_ = Connect(*server_);
    stub_ = reflection::ServerReflection::NewStub(channel_);
    v1_stub_ = grpc::reflection::v1::ServerReflection::NewStub(channel_);
    s_ = std::make_unique<ReflectionStream>(stub_.get());
    s1_ = std::make_unique<ReflectionV1Stream>(v1_stub_.get());
  }

  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<reflection::ServerReflection::Stub> stub_;
  std::unique_ptr<grpc::reflection::v1::ServerReflection::Stub> v1_stub_;
  std::unique_ptr<ReflectionStream> s_;     // version v1alpha
  std::unique_ptr<ReflectionV1Stream> s1_;  // version v1
};

TEST_F(ReflectionTest, ListsTheServicesAndDescribesThemCompletely) {
  EchoService service;
  ASSERT_NO_FATAL_FAILURE(Start(Options(&service)));
  ReflectionStream& s = *s_;
  ReflectionV1Stream& s1 = *s1_;
  EXPECT_EQ(s.ListServices(), CacheServerServices());
  // Version 1 answers the same, from the same index.
  EXPECT_EQ(s1.ListServices(), CacheServerServices());
  grpc::reflection::v1::ServerReflectionRequest symbol1;
  symbol1.set_file_containing_symbol("poolside.v1.CacheService.Get");
  const auto file1 = s1.Ask(symbol1);
  ASSERT_GE(file1.file_descriptor_response().file_descriptor_proto_size(), 1);
  google::protobuf::FileDescriptorProto first1;
  ASSERT_TRUE(first1.ParseFromString(file1.file_descriptor_response().file_descriptor_proto(0)));
  EXPECT_EQ(first1.package(), "poolside.v1");
  symbol1.set_file_containing_symbol("poolside.v1.NoSuchService");
  EXPECT_EQ(s1.Ask(symbol1).error_response().error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(s1.stream->WritesDone());
  EXPECT_TRUE(s1.stream->Finish().ok());

  // The files sent for a service build a pool of their own that has all of
  // it: nothing it depends on is missing.
  google::protobuf::SimpleDescriptorDatabase received;
  auto receive = [&](const reflection::ServerReflectionResponse& response) {
    EXPECT_FALSE(response.has_error_response()) << response.error_response().error_message();
    for (const std::string& bytes : response.file_descriptor_response().file_descriptor_proto()) {
      google::protobuf::FileDescriptorProto file;
      EXPECT_TRUE(file.ParseFromString(bytes));
      received.Add(file);
    }
    return response.file_descriptor_response().file_descriptor_proto_size();
  };
  reflection::ServerReflectionRequest symbol;
  symbol.set_file_containing_symbol("poolside.v1.CacheService");
  EXPECT_GE(receive(s.Ask(symbol)), 1);
  google::protobuf::DescriptorPool pool(&received);
  const google::protobuf::ServiceDescriptor* described =
      pool.FindServiceByName("poolside.v1.CacheService");
  ASSERT_NE(described, nullptr);
  EXPECT_NE(described->FindMethodByName("Get"), nullptr);
  EXPECT_NE(pool.FindMessageTypeByName("poolside.v1.CacheGetRequest"), nullptr);

  // The same file by name, and a message in it: the file itself comes again
  // (clients read the first file as the answer).
  reflection::ServerReflectionRequest by_name;
  by_name.set_file_by_filename(described->file()->name());
  reflection::ServerReflectionResponse again = s.Ask(by_name);
  ASSERT_GE(again.file_descriptor_response().file_descriptor_proto_size(), 1);
  google::protobuf::FileDescriptorProto first;
  ASSERT_TRUE(first.ParseFromString(again.file_descriptor_response().file_descriptor_proto(0)));
  EXPECT_EQ(first.name(), described->file()->name());
  symbol.set_file_containing_symbol("poolside.v1.CacheGetRequest");
  EXPECT_GE(receive(s.Ask(symbol)), 1);
  symbol.set_file_containing_symbol("grpc.health.v1.Health.Watch");
  EXPECT_GE(receive(s.Ask(symbol)), 1);

  // What does not exist gets an error in the stream, which stays open.
  symbol.set_file_containing_symbol("poolside.v1.NoSuchService");
  reflection::ServerReflectionResponse missing = s.Ask(symbol);
  EXPECT_EQ(missing.error_response().error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(s.Ask(reflection::ServerReflectionRequest()).error_response().error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  reflection::ServerReflectionRequest extensions;
  extensions.set_all_extension_numbers_of_type("poolside.v1.CacheGetRequest");
  EXPECT_EQ(s.Ask(extensions).all_extension_numbers_response().base_type_name(),
            "poolside.v1.CacheGetRequest");

  // A stream the client closes ends OK; one left open ends when the drain starts.
  ReflectionStream closed(stub_.get());
  EXPECT_EQ(closed.ListServices(), CacheServerServices());
  EXPECT_TRUE(closed.stream->WritesDone());
  grpc::Status end = closed.stream->Finish();
  EXPECT_TRUE(end.ok()) << end.error_message();
  std::thread stop([&] { server_->Shutdown(); });
  reflection::ServerReflectionResponse none;
  EXPECT_FALSE(s.stream->Read(&none));
  end = s.stream->Finish();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::CANCELLED) << end.error_message();
  stop.join();
}

// The drain ends a stream on the queue thread, which may run late (a loaded
// machine): by then gRPC has told the client to go away, and the stream is
// the last on its connection, whose closing must not overtake the stream's
// status. The queue thread is held until the client has the server's GOAWAY.
TEST_F(ReflectionTest, AStreamLeftOpenGetsItsStatusWhenTheQueueThreadIsLate) {
  EchoService service;
  ASSERT_NO_FATAL_FAILURE(Start(Options(&service)));
  EXPECT_EQ(s_->ListServices(), CacheServerServices());
  EXPECT_EQ(s1_->ListServices(), CacheServerServices());
  EXPECT_TRUE(s1_->stream->WritesDone());
  EXPECT_TRUE(s1_->stream->Finish().ok());
  ASSERT_EQ(channel_->GetState(false), GRPC_CHANNEL_READY);
  Notice held, release;
  RunOnQueue(server_->queue(), [&] {
    held.Notify();
    release.Wait();
  });
  held.Wait();
  std::thread stop([&] { server_->Shutdown(); });
  EXPECT_TRUE(channel_->WaitForStateChange(
      GRPC_CHANNEL_READY, std::chrono::system_clock::now() + std::chrono::seconds(20)));
  release.Notify();
  reflection::ServerReflectionResponse none;
  EXPECT_FALSE(s_->stream->Read(&none));
  const grpc::Status end = s_->stream->Finish();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::CANCELLED) << end.error_message();
  stop.join();
  // The drain finished: nothing is served any more.
  EXPECT_EQ(ReflectionStream(stub_.get()).stream->Finish().error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

// A callback server (ingest's kind) serves both versions from the same index,
// through its own streams.
class CallbackCacheService final : public v1::CacheService::CallbackService {};

TEST_F(ReflectionTest, ACallbackServerServesBothVersions) {
  CallbackCacheService cache;
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.tls.set_plaintext(true);
  options.services = {&cache};
  ASSERT_NO_FATAL_FAILURE(Start(std::move(options)));
  ReflectionStream& s = *s_;
  ReflectionV1Stream& s1 = *s1_;
  EXPECT_EQ(s.ListServices(), CacheServerServices());
  EXPECT_EQ(s1.ListServices(), CacheServerServices());
  grpc::reflection::v1::ServerReflectionRequest nothing;
  EXPECT_EQ(s1.Ask(nothing).error_response().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // Left open: the drain ends it (below) instead of waiting for it.
  ReflectionV1Stream idle(v1_stub_.get());
  EXPECT_EQ(idle.ListServices(), CacheServerServices());
  reflection::ServerReflectionRequest symbol;
  symbol.set_file_containing_symbol("grpc.reflection.v1alpha.ServerReflection");
  const reflection::ServerReflectionResponse file = s.Ask(symbol);
  ASSERT_EQ(file.file_descriptor_response().file_descriptor_proto_size(), 1)
      << file.ShortDebugString();
  google::protobuf::FileDescriptorProto proto;
  ASSERT_TRUE(proto.ParseFromString(file.file_descriptor_response().file_descriptor_proto(0)));
  EXPECT_EQ(proto.name(), "grpc/reflection/v1alpha/reflection.proto");
  EXPECT_TRUE(s.stream->WritesDone());
  grpc::Status end = s.stream->Finish();
  EXPECT_TRUE(end.ok()) << end.error_message();
  EXPECT_TRUE(s1.stream->WritesDone());
  EXPECT_TRUE(s1.stream->Finish().ok());
  std::thread stop([&] { server_->Shutdown(); });
  grpc::reflection::v1::ServerReflectionResponse none;
  EXPECT_FALSE(idle.stream->Read(&none));
  // CANCELLED by the drain's start, not DEADLINE_EXCEEDED at the stream's
  // 50 s deadline (the drain timeout is 100 s).
  EXPECT_EQ(idle.stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  stop.join();
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

// The call layer (QueueCalls) against a core that answers from threads of its
// own, the way query's engine does: each call's work is a Job that a worker
// claims, or that the call's cancel function abandons (then the cancel
// function answers the call), arbitrated under the core's lock.
using QAsync = v1::QueryService::AsyncService;

struct Job {
  enum State { kQueued, kRunning, kAbandoned };
  State state = kQueued;
  bool cancelled = false;      // the cancel function ran (the core saw it)
  bool released = false;       // the test let a held job answer
  bool worker_done = false;    // its worker thread has finished with it
  bool write_refused = false;  // a streaming worker's Write() returned false
  int written = 0;
};

// A queue service on the query proto. Execute's request.sql picks what the
// handler does: "inline" answers at once (commit_lsn = max_rows), "twice"
// answers twice inline, "fail" answers FAILED_PRECONDITION; "worker" answers
// from a worker thread at once, "racing" too but without taking the service's
// lock first (its cancel function only notes the cancellation), so that the
// worker and the queue thread meet only in the call layer, where
// ThreadSanitizer checks them; "late" likewise, once its cancel function has
// run (seen through a relaxed atomic, which orders nothing for TSan); "hold"
// from a worker that waits until
// released or cancelled, "queued" from a worker that starts only once
// released (cancelling first abandons it). ExecuteStream: "stream" writes
// max_rows messages (rows_affected 0, 1, ...) from a worker and ends OK, or
// FAILED_PRECONDITION when database is "fail"; "endless" writes until Write
// refuses.
class WorkerService final : public QueueService {
 public:
  using Unary = QueueUnaryCall<v1::ExecuteRequest, v1::ExecuteResponse>;
  using Stream = QueueWriterCall<v1::ExecuteRequest, v1::ExecuteStreamResponse>;

  // After the server stopped: every call has ended, so every worker ends.
  ~WorkerService() override {
    std::vector<std::thread> threads;
    {
      sync::MutexLock lock(&mu_);
      threads.swap(threads_);
    }
    for (std::thread& thread : threads) thread.join();
  }

  grpc::Service* grpc_service() override { return &async_; }
  std::string service_name() const override { return v1::QueryService::service_full_name(); }
  void Begin(grpc::ServerCompletionQueue* cq, telemetry::ServerCallTelemetry* telemetry) override {
    calls_.Begin(cq, telemetry, v1::QueryService::service_full_name());
    calls_.Unary(&async_, &QAsync::RequestExecute, "Execute", 8,
                 [this](Unary* call) { Execute(call); });
    calls_.ServerStream(&async_, &QAsync::RequestExecuteStream, "ExecuteStream", 4,
                        [this](Stream* call) { ExecuteStream(call); });
  }

  QueueCalls& calls() { return calls_; }

  // Waits (bounded) until `n` jobs satisfy `pred`.
  bool AwaitJobs(int n, bool (*pred)(const Job&)) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    sync::MutexLock lock(&mu_);
    while (std::count_if(jobs_.begin(), jobs_.end(),
                         [pred](const std::shared_ptr<Job>& job) { return pred(*job); }) < n) {
      if (!changed_.WaitUntil(&mu_, deadline) && std::chrono::steady_clock::now() >= deadline) {
        return false;
      }
    }
    return true;
  }
  void ReleaseAll() {
    sync::MutexLock lock(&mu_);
    for (auto& job : jobs_) job->released = true;
    changed_.SignalAll();
  }
  std::vector<Job> Jobs() {
    sync::MutexLock lock(&mu_);
    std::vector<Job> jobs;
    for (const auto& job : jobs_) jobs.push_back(*job);
    return jobs;
  }

 private:
  std::shared_ptr<Job> NewJob() {
    sync::MutexLock lock(&mu_);
    jobs_.push_back(std::make_shared<Job>());
    changed_.SignalAll();
    return jobs_.back();
  }
  bool Claim(Job* job) {
    sync::MutexLock lock(&mu_);
    if (job->state != Job::kQueued) return false;
    job->state = Job::kRunning;
    changed_.SignalAll();
    return true;
  }
  // The cancel function of a call answered by `job`.
  template <typename Call>
  std::function<void()> CancelOf(Call* call, std::shared_ptr<Job> job) {
    return [this, call, job] {
      bool abandoned;
      {
        sync::MutexLock lock(&mu_);
        job->cancelled = true;
        abandoned = job->state == Job::kQueued;
        if (abandoned) job->state = Job::kAbandoned;
        changed_.SignalAll();
      }
      if (abandoned) call->Complete(absl::CancelledError("call cancelled by the caller"));
    };
  }
  void Spawn(std::shared_ptr<Job> job, std::function<void()> work) {
    sync::MutexLock lock(&mu_);
    threads_.emplace_back([this, job, work = std::move(work)] {
      work();
      sync::MutexLock lock(&mu_);
      job->worker_done = true;
      changed_.SignalAll();
    });
  }
  // Waits (bounded) until the test releases `job` or its call is cancelled or
  // abandoned it; true when released.
  bool Hold(Job* job) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    sync::MutexLock lock(&mu_);
    while (!job->released && !job->cancelled && job->state != Job::kAbandoned &&
           std::chrono::steady_clock::now() < deadline) {
      changed_.WaitUntil(&mu_, deadline);
    }
    return job->released && !job->cancelled;
  }

  void Execute(Unary* call) {
    const std::string mode = call->request().sql();
    const uint64_t n = call->request().max_rows();
    if (mode == "inline" || mode == "twice") {
      call->response()->set_commit_lsn(n);
      call->Complete(absl::OkStatus());
      if (mode == "twice") call->Complete(absl::InternalError("a second answer"));
      return;
    }
    if (mode == "fail") {
      call->Complete(absl::FailedPreconditionError(absl::StrCat("refused ", n)));
      return;
    }
    std::shared_ptr<Job> job = NewJob();
    if (mode == "racing") {
      call->OnCancel([this, job] {
        sync::MutexLock lock(&mu_);
        job->cancelled = true;
        changed_.SignalAll();
      });
      Spawn(job, [call, n] {
        call->response()->set_commit_lsn(n);
        call->Complete(absl::OkStatus());
      });
      return;
    }
    if (mode == "late") {
      auto cancel_ran = std::make_shared<std::atomic<bool>>(false);
      call->OnCancel([cancel_ran] { cancel_ran->store(true, std::memory_order_relaxed); });
      Spawn(job, [call, n, cancel_ran] {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
        while (!cancel_ran->load(std::memory_order_relaxed) &&
               std::chrono::steady_clock::now() < deadline) {
          std::this_thread::yield();
        }
        call->response()->set_commit_lsn(n);
        call->Complete(absl::OkStatus());
      });
      return;
    }
    call->OnCancel(CancelOf(call, job));
    Spawn(job, [this, call, job = job.get(), mode, n] {
      if (mode == "queued" && !Hold(job)) return;  // abandoned: the call is answered
      if (!Claim(job)) return;
      if (mode == "hold" && !Hold(job)) {
        call->Complete(absl::CancelledError("work cancelled"));
        return;
      }
      call->response()->set_commit_lsn(n);
      call->Complete(absl::OkStatus());
    });
  }

  void ExecuteStream(Stream* call) {
    const std::string mode = call->request().sql();
    const uint64_t n = call->request().max_rows();
    const bool fail = call->request().database() == "fail";
    std::shared_ptr<Job> job = NewJob();
    call->OnCancel(CancelOf(call, job));
    Spawn(job, [this, call, job = job.get(), mode, n, fail] {
      if (!Claim(job)) return;
      for (uint64_t i = 0; mode == "endless" || i < n; ++i) {
        auto message = std::make_unique<v1::ExecuteStreamResponse>();
        message->set_rows_affected(static_cast<int64_t>(i));
        message->set_command_tag(std::string(256, 'x'));
        if (!call->Write(std::move(message))) {
          sync::MutexLock lock(&mu_);
          job->write_refused = true;
          changed_.SignalAll();
          break;
        }
        sync::MutexLock lock(&mu_);
        ++job->written;
        changed_.SignalAll();
      }
      call->Complete(fail ? absl::FailedPreconditionError(absl::StrCat("failed after ", n))
                          : absl::OkStatus());
    });
  }

  QAsync async_;
  QueueCalls calls_;
  sync::Mutex mu_;
  sync::CondVar changed_;  // a job changed (AwaitJobs, Hold)
  std::vector<std::shared_ptr<Job>> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
};

// A WorkerService on a server whose shutdown waits for its calls (as query's
// main does), cancelling what its drain leaves after 100 ms.
class QueueCallsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options = Options(&service_);
    options.drain_timeout = absl::Milliseconds(100);
    options.before_queue_shutdown = [this] { service_.calls().WaitForCalls(); };
    absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(std::move(options));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = v1::QueryService::NewStub(Connect(*server_));
  }

  WorkerService service_;
  std::unique_ptr<Server> server_;
  std::unique_ptr<v1::QueryService::Stub> stub_;
};

v1::ExecuteRequest Request(const std::string& mode, uint64_t n = 0) {
  v1::ExecuteRequest request;
  request.set_sql(mode);
  request.set_max_rows(n);
  return request;
}

bool Running(const Job& job) { return job.state == Job::kRunning; }
bool Queued(const Job& job) { return job.state == Job::kQueued; }
bool CancelledWhileRunning(const Job& job) {
  return job.cancelled && job.state == Job::kRunning && job.worker_done;
}

TEST_F(QueueCallsTest, ACallIsAnsweredOnceFromTheQueueThreadOrAWorker) {
  for (const std::string mode : {"inline", "twice", "worker", "fail"}) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::ExecuteResponse response;
    const grpc::Status status = stub_->Execute(&ctx, Request(mode, 7), &response);
    if (mode == "fail") {
      EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
      EXPECT_EQ(status.error_message(), "refused 7");
    } else {
      EXPECT_TRUE(status.ok()) << mode << ": " << status.error_message();
      EXPECT_EQ(response.commit_lsn(), 7u) << mode;
    }
  }
  EXPECT_TRUE(service_.calls().WaitForCalls(absl::Seconds(10)));
  EXPECT_EQ(service_.calls().live(), 0);
  EXPECT_TRUE(service_.AwaitJobs(
      1, +[](const Job& j) { return j.worker_done; }));
}

TEST_F(QueueCallsTest, ACallerCancellingCancelsItsRunningWork) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::ExecuteResponse response;
  grpc::Status status;
  std::thread caller([&] { status = stub_->Execute(&ctx, Request("hold"), &response); });
  ASSERT_TRUE(service_.AwaitJobs(1, Running));
  ctx.TryCancel();
  caller.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  // The core saw the cancellation and its worker answered (ignored by then).
  EXPECT_TRUE(service_.AwaitJobs(1, CancelledWhileRunning));
  EXPECT_TRUE(service_.calls().WaitForCalls(absl::Seconds(10)));
}

TEST_F(QueueCallsTest, ACancelledCallsQueuedWorkIsAbandonedAndNeverRuns) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::ExecuteResponse response;
  grpc::Status status;
  std::thread caller([&] { status = stub_->Execute(&ctx, Request("queued", 3), &response); });
  ASSERT_TRUE(service_.AwaitJobs(1, Queued));
  ctx.TryCancel();
  caller.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(service_.AwaitJobs(
      1, +[](const Job& j) { return j.state == Job::kAbandoned; }));
  // The cancel function answered the call: it is gone although its work never ran.
  EXPECT_TRUE(service_.calls().WaitForCalls(absl::Seconds(10)));
  service_.ReleaseAll();
  ASSERT_TRUE(service_.AwaitJobs(
      1, +[](const Job& j) { return j.worker_done; }));
  EXPECT_EQ(service_.Jobs()[0].state, Job::kAbandoned);
}

TEST_F(QueueCallsTest, ADeadlinePassingWhileTheCoreWorksCancelsTheWork) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  ctx.set_wait_for_ready(true);
  v1::ExecuteResponse response;
  const grpc::Status status = stub_->Execute(&ctx, Request("hold"), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(service_.AwaitJobs(1, CancelledWhileRunning));
  EXPECT_TRUE(service_.calls().WaitForCalls(absl::Seconds(10)));
  EXPECT_FALSE(service_.Jobs()[0].released);
}

TEST_F(QueueCallsTest, AStreamFromAWorkerArrivesInOrderAndEndsWithTheWorkersStatus) {
  for (const std::string database : {"", "fail"}) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::ExecuteRequest request = Request("stream", 50);
    request.set_database(database);
    auto reader = stub_->ExecuteStream(&ctx, request);
    v1::ExecuteStreamResponse message;
    int64_t next = 0;
    while (reader->Read(&message)) {
      EXPECT_EQ(message.rows_affected(), next);
      ++next;
    }
    EXPECT_EQ(next, 50);
    const grpc::Status status = reader->Finish();
    if (database == "fail") {
      EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
      EXPECT_EQ(status.error_message(), "failed after 50");
    } else {
      EXPECT_TRUE(status.ok()) << status.error_message();
    }
  }
  EXPECT_TRUE(service_.calls().WaitForCalls(absl::Seconds(10)));
}

TEST_F(QueueCallsTest, ACallerCancellingMidStreamStopsTheProducer) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  auto reader = stub_->ExecuteStream(&ctx, Request("endless"));
  v1::ExecuteStreamResponse message;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(reader->Read(&message));
    EXPECT_EQ(message.rows_affected(), i);
  }
  ctx.TryCancel();
  while (reader->Read(&message)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // The producer's Write() refused, the core saw the cancellation, and the
  // call is gone.
  EXPECT_TRUE(service_.AwaitJobs(
      1, +[](const Job& j) { return j.write_refused && j.cancelled && j.worker_done; }));
  EXPECT_TRUE(service_.calls().WaitForCalls(absl::Seconds(10)));
}

TEST_F(QueueCallsTest, ShutdownWithCallsInFlightCancelsTheirWorkWithoutHanging) {
  constexpr int kHeld = 3;
  std::vector<grpc::Status> statuses(kHeld + 2);
  std::vector<std::thread> callers;
  for (int i = 0; i < kHeld + 1; ++i) {
    callers.emplace_back([&, i] {
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      v1::ExecuteResponse response;
      statuses[i] = stub_->Execute(&ctx, Request(i < kHeld ? "hold" : "queued"), &response);
    });
  }
  // A stream whose reader stops reading: its producer ends up waiting in Write().
  grpc::ClientContext stream_ctx;
  SetDeadline(&stream_ctx);
  auto reader = stub_->ExecuteStream(&stream_ctx, Request("endless"));
  v1::ExecuteStreamResponse message;
  ASSERT_TRUE(reader->Read(&message));
  ASSERT_TRUE(service_.AwaitJobs(kHeld + 1, Running));
  ASSERT_TRUE(service_.AwaitJobs(1, Queued));

  server_->Shutdown();  // returns once every call has ended and the queue is gone
  EXPECT_EQ(service_.calls().live(), 0);
  for (std::thread& caller : callers) caller.join();
  while (reader->Read(&message)) {
  }
  statuses[kHeld + 1] = reader->Finish();
  for (const grpc::Status& status : statuses) EXPECT_FALSE(status.ok());
  const std::vector<Job> jobs = service_.Jobs();
  ASSERT_EQ(jobs.size(), static_cast<size_t>(kHeld + 2));
  for (const Job& job : jobs) {
    EXPECT_TRUE(job.cancelled);
    EXPECT_FALSE(job.released);
  }
  EXPECT_TRUE(service_.AwaitJobs(
      1, +[](const Job& j) { return j.state == Job::kAbandoned; }));
  EXPECT_TRUE(service_.AwaitJobs(
      1, +[](const Job& j) { return j.write_refused; }));
}

// A worker answering after its caller cancelled (after the call's cancel
// function ran, on the queue thread): the late answer is ignored, the caller
// sees CANCELLED, and the call is deleted once. Nothing of the test's orders
// the two threads, so under ThreadSanitizer this checks that the call layer
// does (the answer's check-and-set under the call's lock).
TEST_F(QueueCallsTest, AWorkersAnswerAfterTheCancellationIsIgnored) {
  constexpr int kCalls = 20;
  for (int i = 0; i < kCalls; ++i) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::ExecuteResponse response;
    grpc::Status status;
    std::thread caller([&] { status = stub_->Execute(&ctx, Request("late", i), &response); });
    ASSERT_TRUE(service_.AwaitJobs(i + 1, Queued));
    ctx.TryCancel();
    caller.join();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED) << i;
  }
  EXPECT_TRUE(service_.AwaitJobs(
      kCalls, +[](const Job& j) { return j.worker_done; }));
  EXPECT_TRUE(service_.calls().WaitForCalls(absl::Seconds(10)));
  EXPECT_EQ(service_.calls().live(), 0);
}

// Answers given from workers' threads racing their callers' cancellations
// (every other call is cancelled as its worker answers it): each call ends
// once, with its answer or CANCELLED, and none is left behind. Under
// ThreadSanitizer ("racing" takes no lock of the test's) it also checks that
// the answer and the cancellation meet only under the call's lock.
TEST_F(QueueCallsTest, AnswersRacingCancellationsLeaveNoCallBehind) {
  constexpr int kCalls = 200;
  grpc::CompletionQueue cq;
  struct Pending {
    grpc::ClientContext ctx;
    v1::ExecuteResponse response;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::ExecuteResponse>> reader;
  };
  std::vector<Pending> pending(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    SetDeadline(&pending[i].ctx);
    pending[i].reader = stub_->AsyncExecute(&pending[i].ctx, Request("racing", i), &cq);
    pending[i].reader->Finish(&pending[i].response, &pending[i].status, &pending[i]);
    // Every other call is cancelled while its worker answers it.
    if (i % 2 == 1) pending[i - 1].ctx.TryCancel();
  }
  for (int i = 0; i < kCalls; ++i) {
    void* tag = nullptr;
    bool ok = false;
    ASSERT_TRUE(cq.Next(&tag, &ok));
  }
  int answered = 0;
  for (int i = 0; i < kCalls; ++i) {
    const grpc::Status& status = pending[i].status;
    if (status.ok()) {
      EXPECT_EQ(pending[i].response.commit_lsn(), static_cast<uint64_t>(i));
      ++answered;
    } else {
      EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED) << status.error_message();
      EXPECT_EQ(i % 2, 0) << "only the cancelled calls fail";
    }
  }
  EXPECT_GE(answered, kCalls / 2);
  EXPECT_TRUE(service_.calls().WaitForCalls(absl::Seconds(10)));
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
}

// The same race on streams: each caller cancels after its first message,
// while the worker is still writing the rest (Write() waiting for room) or
// already ending the call from its thread. Whichever reaches the call first
// (the cancellation for about one stream in ten under TSan), the stream ends
// once, its producer stops, and the call is deleted.
TEST_F(QueueCallsTest, StreamsEndingRacingCancellationsLeaveNoCallBehind) {
  constexpr int kStreams = 100;
  for (int i = 0; i < kStreams; ++i) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    auto reader = stub_->ExecuteStream(&ctx, Request("stream", 1 + i % 3));
    v1::ExecuteStreamResponse message;
    ASSERT_TRUE(reader->Read(&message)) << i;
    ctx.TryCancel();
    while (reader->Read(&message)) {
    }
    const grpc::Status status = reader->Finish();
    EXPECT_TRUE(status.ok() || status.error_code() == grpc::StatusCode::CANCELLED)
        << status.error_code() << " " << status.error_message();
  }
  EXPECT_TRUE(service_.calls().WaitForCalls(absl::Seconds(10)));
  EXPECT_EQ(service_.calls().live(), 0);
  EXPECT_TRUE(service_.AwaitJobs(
      kStreams, +[](const Job& j) { return j.worker_done; }));
  int cancelled_first = 0;
  for (const Job& job : service_.Jobs()) cancelled_first += job.cancelled;
  RecordProperty("cancelled_before_the_answer", cancelled_first);
}

// An answer a worker gives during the drain (Shutdown() began, the server
// sent GOAWAY and waits for the calls in flight) reaches its caller, and the
// queue outlives it.
TEST(QueueCallsShutdownTest, AWorkersAnswerDuringTheDrainReachesItsCaller) {
  WorkerService service;
  ServerOptions options = Options(&service);
  options.drain_timeout = absl::Seconds(20);  // ends as soon as the call has
  options.before_queue_shutdown = [&service] { service.calls().WaitForCalls(); };
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(std::move(options));
  ASSERT_TRUE(server.ok()) << server.status();
  std::shared_ptr<grpc::Channel> channel = Connect(**server);
  auto stub = v1::QueryService::NewStub(channel);
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::ExecuteResponse response;
  grpc::Status status;
  std::thread caller([&] { status = stub->Execute(&ctx, Request("hold", 9), &response); });
  ASSERT_TRUE(service.AwaitJobs(1, Running));
  ASSERT_EQ(channel->GetState(false), GRPC_CHANNEL_READY);
  std::thread stop([&] { (*server)->Shutdown(); });
  // The drain began: its GOAWAY took the channel out of READY.
  EXPECT_TRUE(channel->WaitForStateChange(
      GRPC_CHANNEL_READY, std::chrono::system_clock::now() + std::chrono::seconds(20)));
  service.ReleaseAll();  // the held worker answers now, from its thread
  caller.join();
  stop.join();
  EXPECT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  EXPECT_EQ(response.commit_lsn(), 9u);
  EXPECT_EQ(service.calls().live(), 0);
  const std::vector<Job> jobs = service.Jobs();
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_FALSE(jobs[0].cancelled);
}

}  // namespace
}  // namespace poolside::server
