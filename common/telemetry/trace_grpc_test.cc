// The tracing interceptors on a real gRPC server and channel over loopback:
// the server span continues the client's traceparent, the handler sees its
// server span, and a call made from inside the handler continues the trace.

#include "common/telemetry/trace_grpc.h"

#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "common/telemetry/otlp_exporter.h"
#include "common/telemetry/trace.h"
#include "common/telemetry/trace_context.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/fixtures/otlp_receiver.h"

namespace poolside::telemetry {
namespace {

using ::poolside::testing::Attribute;
using ::poolside::testing::Hex;
using ::poolside::testing::ReceivedSpan;
namespace collector = opentelemetry::proto::collector::trace::v1;

// Any service will do; this one records the span context its handler saw.
class Echo final : public collector::TraceService::CallbackService {
 public:
  grpc::ServerUnaryReactor* Export(grpc::CallbackServerContext* context,
                                   const collector::ExportTraceServiceRequest*,
                                   collector::ExportTraceServiceResponse*) override {
    absl::MutexLock lock(&mu);
    seen.push_back(ServerCallContext(context));
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(fail ? grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "no")
                         : grpc::Status::OK);
    return reactor;
  }
  absl::Mutex mu;
  std::vector<SpanContext> seen;
  bool fail = false;
};

class TraceGrpcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto receiver = testing::OtlpReceiver::Start();
    ASSERT_TRUE(receiver.ok()) << receiver.status();
    receiver_ = *std::move(receiver);
    v1::TracingConfig config;
    config.set_endpoint(receiver_->address());
    auto tracer = StartTracing(config, "unit");
    ASSERT_TRUE(tracer.ok()) << tracer.status();
    tracer_ = *std::move(tracer);

    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&echo_);
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> s;
    s.push_back(NewServerTracingInterceptorFactory());
    builder.experimental().SetInterceptorCreators(std::move(s));
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> c;
    c.push_back(NewClientTracingInterceptorFactory());
    channel_ = grpc::experimental::CreateCustomChannelWithInterceptors(
        "127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials(),
        grpc::ChannelArguments(), std::move(c));
    stub_ = collector::TraceService::NewStub(channel_);
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
    tracer_.reset();
  }

  grpc::Status Call(grpc::ClientContext* context) {
    collector::ExportTraceServiceRequest request;
    collector::ExportTraceServiceResponse response;
    return stub_->Export(context, request, &response);
  }

  std::vector<ReceivedSpan> SpansNamed(const std::string& name) {
    std::vector<ReceivedSpan> out;
    for (const ReceivedSpan& s : receiver_->Spans()) {
      if (s.span.name() == name) out.push_back(s);
    }
    return out;
  }

  static constexpr char kMethod[] = "opentelemetry.proto.collector.trace.v1.TraceService/Export";
  std::unique_ptr<testing::OtlpReceiver> receiver_;
  std::unique_ptr<Tracer> tracer_;
  Echo echo_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<collector::TraceService::Stub> stub_;
};

TEST_F(TraceGrpcTest, ClientSpanParentsServerSpanUnderTheCurrentContext) {
  Span root = StartSpan("caller", SpanKind::kInternal, SpanContext());
  {
    ScopedSpanContext scope(root.context());
    grpc::ClientContext context;
    ASSERT_TRUE(Call(&context).ok());
  }
  root.End();
  ASSERT_TRUE(tracer_->Flush(absl::Seconds(20)));
  const auto spans = SpansNamed(kMethod);
  ASSERT_EQ(spans.size(), 2u);  // client and server
  const auto& client =
      spans[0].span.kind() == opentelemetry::proto::trace::v1::Span::SPAN_KIND_CLIENT
          ? spans[0].span
          : spans[1].span;
  const auto& server =
      spans[0].span.kind() == opentelemetry::proto::trace::v1::Span::SPAN_KIND_SERVER
          ? spans[0].span
          : spans[1].span;
  EXPECT_EQ(Hex(client.trace_id()), root.context().TraceIdHex());
  EXPECT_EQ(Hex(client.parent_span_id()), root.context().SpanIdHex());
  EXPECT_EQ(Hex(server.trace_id()), root.context().TraceIdHex());
  EXPECT_EQ(server.parent_span_id(), client.span_id());
  EXPECT_EQ(Attribute(server, "rpc.system"), "grpc");
  EXPECT_EQ(Attribute(server, "rpc.service"),
            "opentelemetry.proto.collector.trace.v1.TraceService");
  EXPECT_EQ(Attribute(server, "rpc.method"), "Export");
  EXPECT_EQ(Attribute(server, "rpc.grpc.status_code"), "0");
  EXPECT_EQ(Attribute(client, "rpc.grpc.status_code"), "0");
  // The handler saw the server span as its context.
  absl::MutexLock lock(&echo_.mu);
  ASSERT_EQ(echo_.seen.size(), 1u);
  EXPECT_EQ(echo_.seen[0].SpanIdHex(), Hex(server.span_id()));
}

TEST_F(TraceGrpcTest, AnExplicitTraceparentIsHonouredAndErrorsAreRecorded) {
  echo_.fail = true;
  grpc::ClientContext context;
  context.AddMetadata("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
  EXPECT_EQ(Call(&context).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  ASSERT_TRUE(tracer_->Flush(absl::Seconds(20)));
  const auto spans = SpansNamed(kMethod);
  ASSERT_EQ(spans.size(), 2u);
  for (const ReceivedSpan& s : spans) {
    EXPECT_EQ(Hex(s.span.trace_id()), "0af7651916cd43dd8448eb211c80319c");
    EXPECT_EQ(Attribute(s.span, "rpc.grpc.status_code"), "9");
    EXPECT_EQ(s.span.status().code(), opentelemetry::proto::trace::v1::Status::STATUS_CODE_ERROR);
  }
}

TEST_F(TraceGrpcTest, WithoutAParentEachCallStartsItsOwnTrace) {
  for (int i = 0; i < 2; ++i) {
    grpc::ClientContext context;
    ASSERT_TRUE(Call(&context).ok());
  }
  ASSERT_TRUE(tracer_->Flush(absl::Seconds(20)));
  const auto spans = SpansNamed(kMethod);
  ASSERT_EQ(spans.size(), 4u);
  std::set<std::string> traces;
  for (const ReceivedSpan& s : spans) traces.insert(s.span.trace_id());
  EXPECT_EQ(traces.size(), 2u);
}

TEST_F(TraceGrpcTest, WithoutATracerTheHandlerStillSeesTheCallersContext) {
  tracer_.reset();  // tracing off: the server factory adds no interceptor
  grpc::ClientContext context;
  context.AddMetadata("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
  context.AddMetadata("tracestate", "k=v");
  ASSERT_TRUE(Call(&context).ok());
  absl::MutexLock lock(&echo_.mu);
  ASSERT_EQ(echo_.seen.size(), 1u);
  EXPECT_EQ(echo_.seen[0].TraceIdHex(), "0af7651916cd43dd8448eb211c80319c");
  EXPECT_EQ(echo_.seen[0].SpanIdHex(), "b7ad6b7169203331");
  EXPECT_EQ(echo_.seen[0].trace_state, "k=v");
}

TEST_F(TraceGrpcTest, WithoutATracerACallPassesTheCurrentContextOnOrNothing) {
  tracer_.reset();  // tracing off: the client factory adds an interceptor only to pass a context on
  std::optional<SpanContext> current =
      ParseTraceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "");
  ASSERT_TRUE(current.has_value());
  {
    ScopedSpanContext scope(*current);
    grpc::ClientContext context;
    ASSERT_TRUE(Call(&context).ok());
  }
  grpc::ClientContext without;
  ASSERT_TRUE(Call(&without).ok());
  absl::MutexLock lock(&echo_.mu);
  ASSERT_EQ(echo_.seen.size(), 2u);
  EXPECT_EQ(echo_.seen[0].TraceIdHex(), "0af7651916cd43dd8448eb211c80319c");
  EXPECT_EQ(echo_.seen[0].SpanIdHex(), "b7ad6b7169203331");
  EXPECT_FALSE(echo_.seen[1].valid());
}

}  // namespace
}  // namespace poolside::telemetry
