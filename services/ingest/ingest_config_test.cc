#include "services/ingest/ingest_config.h"

#include "common/config/json_config.h"
#include "gtest/gtest.h"

namespace poolside::ingest {
namespace {

absl::StatusOr<v1::IngestServiceConfig> Parse(const std::string& json) {
  v1::IngestServiceConfig c;
  absl::Status s = config::ParseJsonConfig(json, &c);
  if (!s.ok()) return s;
  // These tests are about other sections: say plaintext unless the JSON sets server.tls.
  if (!c.server().has_tls()) c.mutable_server()->mutable_tls()->set_plaintext(true);
  return FinalizeIngestConfig(std::move(c));
}

TEST(IngestConfigTest, FillsDefaults) {
  auto c = Parse(R"({"databases": [{"name": "app", "dsn": "host=h dbname=app"}],
                     "tables": [{"database": "app", "tables": ["events"]}]})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->server().listen(), "0.0.0.0:50053");
  EXPECT_EQ(c->default_database(), "app");
  EXPECT_EQ(c->batch().max_rows(), 50000u);
  EXPECT_EQ(c->batch().linger_ms(), 10u);
  EXPECT_EQ(c->batch().buffer_bytes(), uint64_t{64} << 20);
  EXPECT_EQ(c->batch().max_request_bytes(), uint64_t{16} << 20);
  EXPECT_EQ(c->batch().copy_connections(), 4u);
  EXPECT_EQ(c->databases(0).pool().max_size(), 5u);
  EXPECT_EQ(c->batch().key_retention_ms(), 86400000u);
}

absl::StatusOr<v1::IngestServiceConfig> ParseWithLimits(const std::string& json,
                                                        const config::ContainerLimits& limits,
                                                        std::string* note) {
  v1::IngestServiceConfig c;
  absl::Status s = config::ParseJsonConfig(json, &c);
  if (!s.ok()) return s;
  if (!c.server().has_tls()) c.mutable_server()->mutable_tls()->set_plaintext(true);
  return FinalizeIngestConfig(std::move(c), limits, note);
}

constexpr char kOneTable[] = R"({"databases": [{"name": "app", "dsn": "host=h dbname=app"}],
                                 "tables": [{"database": "app", "tables": ["events"]}]})";

TEST(IngestConfigTest, SizedFromTheContainerLimits) {
  config::ContainerLimits limits;
  limits.memory_bytes = uint64_t{1} << 30;
  limits.cpus = 2;
  limits.source = "cgroup v2 /sys/fs/cgroup";
  std::string note;
  auto c = ParseWithLimits(kOneTable, limits, &note);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->batch().buffer_bytes(), uint64_t{256} << 20);  // a quarter
  EXPECT_EQ(c->batch().copy_connections(), 4u);               // 2 per core
  EXPECT_EQ(c->databases(0).pool().max_size(), 5u);
  EXPECT_EQ(note,
            "bufferBytes 256 MiB (a quarter of the memory limit), maxRequestBytes 32 MiB (a "
            "quarter of the buffer, at most 32 MiB), copyConnections 4 (2 per core of the CPU "
            "limit); limits: cpu 2, memory 1024 MiB (cgroup v2 /sys/fs/cgroup)");
  EXPECT_EQ(c->batch().max_request_bytes(), uint64_t{32} << 20);

  limits.cpus = 0.5;
  limits.memory_bytes = uint64_t{32} << 20;
  c = ParseWithLimits(kOneTable, limits, &note);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->batch().buffer_bytes(), uint64_t{16} << 20) << "at least 16 MiB";
  EXPECT_EQ(c->batch().copy_connections(), 2u);
  EXPECT_EQ(c->batch().max_request_bytes(), uint64_t{4} << 20);
}

TEST(IngestConfigTest, MaxRequestBytesFitsTheBuffer) {
  auto c = ParseWithLimits(R"({"databases": [{"name": "app", "dsn": "host=h dbname=app"}],
                               "batch": {"bufferBytes": "33554432"},
                               "auth": {"disabled": true}})",
                           config::ContainerLimits(), nullptr);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->batch().max_request_bytes(), uint64_t{8} << 20);  // a quarter of 32 MiB
  // A stream reserves up to twice it in the buffer: at most half the buffer.
  c = ParseWithLimits(R"({"databases": [{"name": "app", "dsn": "host=h dbname=app"}],
                          "batch": {"bufferBytes": "33554432", "maxRequestBytes": "20000000"},
                          "auth": {"disabled": true}})",
                      config::ContainerLimits(), nullptr);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("maxRequestBytes"), absl::string_view::npos) << c.status();
}

TEST(IngestConfigTest, ConfigurationOverridesSizing) {
  config::ContainerLimits limits;
  limits.memory_bytes = uint64_t{1} << 30;
  limits.cpus = 2;
  std::string note;
  // server.memoryLimitBytes replaces the cgroup's limit; explicit batch sizes win.
  auto c = ParseWithLimits(R"({"server": {"memoryLimitBytes": "268435456", "cpuLimit": 4},
                               "databases": [{"name": "app", "dsn": "host=h dbname=app"}],
                               "batch": {"copyConnections": 3}})",
                           limits, &note);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->batch().buffer_bytes(), uint64_t{64} << 20);
  EXPECT_EQ(c->batch().copy_connections(), 3u);
  EXPECT_NE(note.find("server.cpuLimit and server.memoryLimitBytes"), std::string::npos) << note;
}

TEST(IngestConfigTest, RejectsMistakes) {
  EXPECT_FALSE(Parse(R"({"databases": []})").ok());
  EXPECT_FALSE(Parse(R"({"databases": [{"name": "a", "dsn": "x=1"}]})").ok());
  EXPECT_FALSE(Parse(R"({"databases": [{"name": "a", "dsn": "dbname=a"}],
                         "tables": [{"database": "b", "tables": ["t"]}]})")
                   .ok());
  EXPECT_FALSE(Parse(R"({"databases": [{"name": "a", "dsn": "dbname=a"}],
                         "batch": {"maxBytes": 100, "bufferBytes": 10}})")
                   .ok());
  EXPECT_FALSE(Parse(R"({"databases": [{"name": "a", "dsn": "dbname=a"}], "tablez": []})").ok());
}

}  // namespace
}  // namespace poolside::ingest
