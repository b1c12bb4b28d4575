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
  EXPECT_EQ(c->batch().max_rows(), 10000u);
  EXPECT_EQ(c->batch().linger_ms(), 10u);
  EXPECT_EQ(c->batch().buffer_bytes(), uint64_t{64} << 20);
  EXPECT_EQ(c->batch().copy_connections(), 4u);
  EXPECT_EQ(c->databases(0).pool().max_size(), 5u);
  EXPECT_EQ(c->batch().key_retention_ms(), 86400000u);
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
