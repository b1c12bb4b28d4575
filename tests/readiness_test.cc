// Readiness and liveness as Kubernetes probes see them (k8s/base): the query
// and ingest services answer the standard health service NOT_SERVING for the
// server as a whole until their database pools are warm, while the
// "liveness" service is SERVING as soon as they listen. A service whose
// database is down stays not ready (while it retries) and still stops
// promptly on SIGTERM.
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/config.pb.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/postgres_cluster.h"

namespace poolside::testing {
namespace {

constexpr int kServing = 1;
constexpr int kNotServing = 2;

// grpc.health.v1.Health/Check for `service` ("" = the server as a whole):
// the serving status (1 SERVING, 2 NOT_SERVING), decoded by hand.
absl::StatusOr<int> HealthCheck(const std::shared_ptr<grpc::Channel>& channel,
                                const std::string& service) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  std::string bytes;
  if (!service.empty()) {  // HealthCheckRequest.service = 1 (string)
    bytes.push_back(0x0a);
    bytes.push_back(static_cast<char>(service.size()));
    bytes += service;
  }
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  grpc::Status status = done.get_future().get();
  if (!status.ok()) {
    return absl::UnavailableError(
        absl::StrCat("health check of \"", service, "\": ", status.error_message()));
  }
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return absl::InternalError("bad response");
  std::string out;
  for (const grpc::Slice& s : slices)
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  if (out.empty()) return 0;  // UNKNOWN
  if (out.size() != 2 || out[0] != 0x08) return absl::InternalError("unexpected encoding");
  return static_cast<int>(out[1]);
}

// Nothing listens on port 1: connections are refused at once, so warm-up
// keeps retrying for startup_retry_ms.
v1::DatabaseConfig Database(const std::string& dsn) {
  v1::DatabaseConfig db;
  db.set_name("main");
  db.set_dsn(dsn);
  db.mutable_pool()->set_min_idle(1);
  db.mutable_pool()->set_max_size(2);
  db.mutable_pool()->set_startup_retry_ms(600000);
  return db;
}
constexpr char kDownDsn[] = "host=127.0.0.1 port=1 dbname=none user=none connect_timeout=1";

struct Started {
  std::unique_ptr<testing::ServiceProcess> process;
  std::shared_ptr<grpc::Channel> channel;
};

template <typename Config>
absl::StatusOr<Started> Start(const std::string& binary, Config config) {
  auto process = testing::StartOnLoopback(binary, std::move(config));
  if (!process.ok()) return process.status();
  Started s;
  s.process = *std::move(process);
  auto channel = testing::Connect(s.process->address());
  if (!channel.ok()) return channel.status();
  s.channel = *std::move(channel);
  return s;
}

v1::QueryServiceConfig QueryConfig(const std::string& dsn) {
  v1::QueryServiceConfig config;
  *config.add_databases() = Database(dsn);
  return config;
}

v1::IngestServiceConfig IngestConfig(const std::string& dsn) {
  v1::IngestServiceConfig config;
  *config.add_databases() = Database(dsn);
  AddTables(&config, "main", {"events"});
  return config;
}

bool BecomesServing(const std::shared_ptr<grpc::Channel>& channel) {
  return testing::WaitFor(
      [&] {
        absl::StatusOr<int> h = HealthCheck(channel, "");
        return h.ok() && *h == kServing;
      },
      absl::Seconds(30));
}

class ReadinessTest : public ::testing::TestWithParam<std::string> {
 protected:
  bool is_query() const { return GetParam() == "query"; }
  std::string binary() const {
    return is_query() ? "services/query/query_server" : "services/ingest/ingest_server";
  }
  absl::StatusOr<Started> StartWith(const std::string& dsn) {
    return is_query() ? Start(binary(), QueryConfig(dsn)) : Start(binary(), IngestConfig(dsn));
  }
};

TEST_P(ReadinessTest, NotReadyWhileTheDatabaseIsDownButLiveAndStopsOnSigterm) {
  absl::StatusOr<Started> s = StartWith(kDownDsn);
  ASSERT_TRUE(s.ok()) << s.status();
  absl::StatusOr<int> liveness = HealthCheck(s->channel, "liveness");
  ASSERT_TRUE(liveness.ok()) << liveness.status();
  EXPECT_EQ(*liveness, kServing);
  absl::StatusOr<int> readiness = HealthCheck(s->channel, "");
  ASSERT_TRUE(readiness.ok()) << readiness.status();
  EXPECT_EQ(*readiness, kNotServing) << "ready although no pool connection could be made";
  absl::StatusOr<int> code = testing::Terminate(*s->process);
  ASSERT_TRUE(code.ok()) << "SIGTERM must end the warm-up retries: " << code.status();
  EXPECT_EQ(*code, 0);
}

TEST_P(ReadinessTest, ReadyOncePoolsAreWarm) {
  absl::StatusOr<Started> s = StartWith(SharedPostgres().Dsn("postgres"));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(BecomesServing(s->channel)) << "never SERVING with the database up";
  absl::StatusOr<int> liveness = HealthCheck(s->channel, "liveness");
  ASSERT_TRUE(liveness.ok()) << liveness.status();
  EXPECT_EQ(*liveness, kServing);
  absl::StatusOr<int> code = testing::Terminate(*s->process);
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
}

INSTANTIATE_TEST_SUITE_P(Services, ReadinessTest, ::testing::Values("query", "ingest"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace poolside::testing
