#include "common/telemetry/metrics_interceptor.h"

#include <future>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/telemetry/otlp_exporter.h"
#include "common/telemetry/trace.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/fixtures/otlp_receiver.h"

namespace poolside::telemetry {
namespace {

// Answers every method: "/test.Echo/Fail" with NOT_FOUND, everything else OK.
class AnyMethod : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    class Reactor : public grpc::ServerGenericBidiReactor {
     public:
      explicit Reactor(bool fail) {
        Finish(fail ? grpc::Status(grpc::StatusCode::NOT_FOUND, "no such thing")
                    : grpc::Status::OK);
      }
      void OnDone() override { delete this; }
    };
    return new Reactor(ctx->method() == "/test.Echo/Fail");
  }
};

class MetricsInterceptorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterCallbackGenericService(&service_);
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> factories;
    factories.push_back(NewServerTelemetryInterceptorFactory(&metrics_));
    builder.experimental().SetInterceptorCreators(std::move(factories));
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = std::make_unique<grpc::GenericStub>(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port_), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override { server_->Shutdown(); }

  grpc::StatusCode Call(const std::string& method) {
    grpc::ClientContext ctx;
    grpc::Slice empty("");
    grpc::ByteBuffer request(&empty, 1), response;
    std::promise<grpc::Status> done;
    stub_->UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response,
                     [&](grpc::Status s) { done.set_value(s); });
    return done.get_future().get().error_code();
  }

  MetricsRegistry metrics_{"test"};
  AnyMethod service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::GenericStub> stub_;
};

TEST_F(MetricsInterceptorTest, CountsCallsByMethodAndCode) {
  for (int i = 0; i < 3; ++i) ASSERT_EQ(Call("/test.Echo/Get"), grpc::StatusCode::OK);
  ASSERT_EQ(Call("/test.Echo/Fail"), grpc::StatusCode::NOT_FOUND);
  ASSERT_EQ(Call("/test.Echo/Fail"), grpc::StatusCode::NOT_FOUND);
  // The status is recorded before it is sent, so it is visible once the call returned.
  const std::string text = metrics_.ScrapeText();
  EXPECT_NE(text.find("poolside_grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Get\","
                      "grpc_service=\"test.Echo\",grpc_type=\"bidi_stream\"} 3\n"),
            std::string::npos)
      << text;
  EXPECT_NE(
      text.find("poolside_grpc_server_handled_total{grpc_code=\"NOT_FOUND\","
                "grpc_method=\"Fail\",grpc_service=\"test.Echo\",grpc_type=\"bidi_stream\"} 2\n"),
      std::string::npos)
      << text;
  EXPECT_NE(
      text.find("poolside_grpc_server_handling_seconds_count{grpc_code=\"OK\","
                "grpc_method=\"Get\",grpc_service=\"test.Echo\",grpc_type=\"bidi_stream\"} 3\n"),
      std::string::npos)
      << text;
  EXPECT_NE(text.find("poolside_grpc_server_handling_seconds_bucket{grpc_code=\"NOT_FOUND\","
                      "grpc_method=\"Fail\",grpc_service=\"test.Echo\",grpc_type=\"bidi_stream\","
                      "le=\"+Inf\"} 2\n"),
            std::string::npos)
      << text;

  const std::string html = metrics_.StatusPageHtml();
  EXPECT_NE(html.find("<section id=\"grpc-calls\">"), std::string::npos) << html;
  EXPECT_NE(html.find("<td>test.Echo/Get</td><td>3</td><td>0</td>"), std::string::npos) << html;
  EXPECT_NE(html.find("<td>test.Echo/Fail</td><td>2</td><td>2</td>"), std::string::npos) << html;
}

TEST_F(MetricsInterceptorTest, MethodNamesAreBounded) {
  for (int i = 0; i < 210; ++i) {
    ASSERT_EQ(Call(absl::StrCat("/test.Echo/M", i)), grpc::StatusCode::OK);
  }
  const std::string text = metrics_.ScrapeText();
  EXPECT_NE(text.find("grpc_method=\"M199\""), std::string::npos);
  EXPECT_EQ(text.find("grpc_method=\"M200\""), std::string::npos);
  EXPECT_NE(text.find("poolside_grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"other\","
                      "grpc_service=\"\",grpc_type=\"bidi_stream\"} 10\n"),
            std::string::npos)
      << text;
}

TEST_F(MetricsInterceptorTest, WithATracerEachCallAlsoGetsOneServerSpan) {
  auto receiver = testing::OtlpReceiver::Start();
  ASSERT_TRUE(receiver.ok()) << receiver.status();
  v1::TracingConfig config;
  config.set_endpoint((*receiver)->address());
  auto tracer = StartTracing(config, "unit");
  ASSERT_TRUE(tracer.ok()) << tracer.status();
  ASSERT_EQ(Call("/test.Echo/Fail"), grpc::StatusCode::NOT_FOUND);
  ASSERT_TRUE((*tracer)->Flush(absl::Seconds(20)));
  const std::vector<testing::ReceivedSpan> spans = (*receiver)->Spans();
  ASSERT_EQ(spans.size(), 1u);
  const auto& span = spans[0].span;
  EXPECT_EQ(span.name(), "test.Echo/Fail");
  EXPECT_EQ(span.kind(), opentelemetry::proto::trace::v1::Span::SPAN_KIND_SERVER);
  EXPECT_EQ(testing::Attribute(span, "rpc.service"), "test.Echo");
  EXPECT_EQ(testing::Attribute(span, "rpc.method"), "Fail");
  EXPECT_EQ(testing::Attribute(span, "rpc.grpc.status_code"), "5");
  EXPECT_NE(metrics_.ScrapeText().find("poolside_grpc_server_handled_total{grpc_code=\"NOT_FOUND\","
                                       "grpc_method=\"Fail\",grpc_service=\"test.Echo\","
                                       "grpc_type=\"bidi_stream\"} 1\n"),
            std::string::npos);
}

TEST(GrpcCodeNameTest, Names) {
  EXPECT_STREQ(GrpcCodeName(0), "OK");
  EXPECT_STREQ(GrpcCodeName(14), "UNAVAILABLE");
  EXPECT_STREQ(GrpcCodeName(16), "UNAUTHENTICATED");
  EXPECT_STREQ(GrpcCodeName(99), "UNKNOWN");
}

}  // namespace
}  // namespace poolside::telemetry
