#include "services/query/query_config.h"

#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/config/json_config.h"
#include "gtest/gtest.h"

namespace poolside::query {
namespace {

absl::StatusOr<v1::QueryServiceConfig> Finalize(absl::string_view json) {
  v1::QueryServiceConfig c;
  absl::Status s = config::ParseJsonConfig(json, &c);
  if (!s.ok()) return s;
  // These tests are about other sections: say plaintext unless the JSON sets server.tls.
  if (!c.server().has_tls()) c.mutable_server()->mutable_tls()->set_plaintext(true);
  return FinalizeQueryConfig(c);
}

TEST(QueryConfigTest, TlsOrExplicitPlaintextIsRequired) {
  v1::QueryServiceConfig c;
  ASSERT_TRUE(
      config::ParseJsonConfig(R"({"databases": [{"name": "a", "dsn": "dbname=a"}]})", &c).ok());
  absl::StatusOr<v1::QueryServiceConfig> f = FinalizeQueryConfig(c);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(f.status().message().find("server.tls.plaintext"), std::string::npos) << f.status();
}

TEST(QueryConfigTest, SidecarOverTcpNeedsReadableTlsFiles) {
  auto c = Finalize(R"({"databases": [{"name": "a", "dsn": "dbname=a"}],
                        "cache": {"target": "127.0.0.1:50052", "tls": {"caFile": "/nonexistent/ca.pem"}}})");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("cache.tls.caFile"), std::string::npos) << c.status();
  EXPECT_TRUE(Finalize(R"({"databases": [{"name": "a", "dsn": "dbname=a"}],
                           "cache": {"target": "unix:/run/c.sock"}})")
                  .ok());
}

TEST(QueryConfigTest, FillsDocumentedDefaults) {
  auto c = Finalize(R"({"databases": [{"name": "main", "dsn": "dbname=main"}]})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->server().listen(), "0.0.0.0:50051");
  EXPECT_EQ(c->server().drain_timeout_ms(), 10000u);
  EXPECT_EQ(c->limits().max_rows(), 100000u);
  EXPECT_EQ(c->limits().max_bytes(), 64u << 20);
  EXPECT_EQ(c->default_database(), "main");
  const auto& pool = c->databases(0).pool();
  EXPECT_EQ(pool.min_idle(), 1u);
  EXPECT_EQ(pool.max_size(), 10u);
  EXPECT_EQ(pool.max_pipeline_depth(), 64u);
  EXPECT_EQ(c->databases(0).statement_cache_size(), 100u);
}

TEST(QueryConfigTest, NearCacheDefaultsZeroTurnsItOffUnknownKeysAreErrors) {
  auto c = Finalize(R"({"databases": [{"name": "a", "dsn": "dbname=a"}],
                        "cache": {"target": "unix:/run/c.sock"}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->cache().near().capacity_bytes(), uint64_t{64} << 20);
  EXPECT_EQ(c->cache().near().max_ttl_ms(), 10000u);
  EXPECT_EQ(c->cache().near().shards(), 16u);
  EXPECT_EQ(c->cache().keepalive_ms(), 5000u);
  c = Finalize(R"({"databases": [{"name": "a", "dsn": "dbname=a"}],
                   "cache": {"target": "unix:/run/c.sock", "near": {"capacityBytes": 0}}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->cache().near().has_capacity_bytes());
  EXPECT_EQ(c->cache().near().capacity_bytes(), 0u);
  c = Finalize(R"({"databases": [{"name": "a", "dsn": "dbname=a"}],
                   "cache": {"target": "unix:/run/c.sock",
                             "near": {"capacityBytes": "1048576", "maxTtlMs": 500, "shards": 4}}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->cache().near().capacity_bytes(), 1u << 20);
  EXPECT_EQ(c->cache().near().max_ttl_ms(), 500u);
  EXPECT_FALSE(Finalize(R"({"databases": [{"name": "a", "dsn": "dbname=a"}],
                            "cache": {"target": "unix:/run/c.sock", "near": {"capacity": 1}}})")
                   .ok());
  EXPECT_FALSE(Finalize(R"({"databases": [{"name": "a", "dsn": "dbname=a"}],
                            "cache": {"target": "unix:/run/c.sock", "near": {"shards": 1000}}})")
                   .ok());
  EXPECT_FALSE(Finalize(R"({"databases": [{"name": "a", "dsn": "dbname=a"}],
                            "cache": {"target": "unix:/run/c.sock", "near": {"capacityBytes": 100}}})")
                   .ok());
  c = Finalize(R"({"databases": [{"name": "a", "dsn": "dbname=a"}],
                   "cache": {"target": "unix:/run/c.sock", "keepaliveMs": 999}})");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("cache.keepaliveMs"), absl::string_view::npos) << c.status();
}

TEST(QueryConfigTest, CacheInvalidationModeDefaultsToWalAndIsValidated) {
  auto c = Finalize(R"({"databases": [{"name": "a", "dsn": "dbname=a"}],
                        "cache": {"target": "unix:/run/c.sock"}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->cache().invalidation(), "wal");
  EXPECT_EQ(c->cache().wal_unavailable(), "fail");
  EXPECT_EQ(c->cache().wal().publication(), "poolside_cache");
  EXPECT_EQ(c->cache().wal().batch_ms(), 2u);
  EXPECT_EQ(c->cache().wal().heartbeat_ms(), 200u);
  EXPECT_EQ(c->cache().wal().max_lag_ms(), 1000u);
  EXPECT_EQ(c->cache().wal().token_wait_ms(), 100u);
  EXPECT_EQ(c->cache().wal().election_retry_ms(), 1000u);
  EXPECT_EQ(c->cache().wal().max_rows_per_table(), 256u);
  c = Finalize(R"({"databases": [{"name": "a", "dsn": "dbname=a"}],
                   "cache": {"target": "unix:/run/c.sock", "invalidation": "trigger",
                             "walUnavailable": "bypass", "wal": {"tokenWaitMs": 0}}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->cache().invalidation(), "trigger");
  EXPECT_EQ(c->cache().wal_unavailable(), "bypass");
  EXPECT_EQ(c->cache().wal().token_wait_ms(), 0u) << "an explicit 0 turns waiting off";
  for (
      const char* bad :
      {R"("invalidation": "WAL")", R"("invalidation": "notify")", R"("walUnavailable": "ignore")",
       R"("wal": {"publication": "a_publication_name_longer_than_sixty_three_bytes_is_no_postgresql_identifier"})",
       R"("wal": {"heartbeatMs": 600, "maxLagMs": 1000})", R"("wal": {"batchMs": 5000})"}) {
    c = Finalize(absl::StrCat(R"({"databases": [{"name": "a", "dsn": "dbname=a"}],
                                  "cache": {"target": "unix:/run/c.sock", )",
                              bad, "}}"));
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(c.status().message().find("cache."), absl::string_view::npos) << c.status();
  }
}

TEST(QueryConfigTest, ExplicitZeroMinIdleIsKept) {
  auto c = Finalize(R"({"databases": [{"name": "a", "dsn": "dbname=a", "pool": {"minIdle": 0}}]})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->databases(0).pool().min_idle(), 0u);
}

TEST(QueryConfigTest, RejectsWhatCannotWork) {
  EXPECT_EQ(Finalize(R"({})").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Finalize(R"({"databases": [{"name": "a", "dsn": "dbname=a"},
                                       {"name": "a", "dsn": "dbname=b"}]})")
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Finalize(R"({"databases": [{"name": "bad name", "dsn": "dbname=a"}]})").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Finalize(R"({"databases": [{"name": "a"}]})").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Finalize(R"({"databases": [{"name": "a", "dsn": "host='x"}]})").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Finalize(R"({"databases": [{"name": "a", "dsn": "dbname=a",
                                        "pool": {"minIdle": 5, "maxSize": 2}}]})")
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Finalize(R"({"defaultDatabase": "zzz",
                         "databases": [{"name": "a", "dsn": "dbname=a"}]})")
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(QueryConfigTest, SeveralDatabasesNeedNoDefault) {
  auto c = Finalize(R"({"databases": [{"name": "a", "dsn": "dbname=a"},
                                      {"name": "b", "dsn": "dbname=b"}]})");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->default_database(), "");
}

TEST(QueryConfigTest, DsnFromEnvironmentIsResolvedAndErrorsHideIt) {
  setenv("POOLSIDE_QUERY_TEST_DSN", "host=db.internal port=6432 dbname=app password=hunter2", 1);
  auto c = Finalize(R"({"databases": [{"name": "a", "dsnEnv": "POOLSIDE_QUERY_TEST_DSN"}]})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->databases(0).dsn(), "host=db.internal port=6432 dbname=app password=hunter2");
  EXPECT_EQ(DescribeDsn(c->databases(0).dsn()), "db.internal:6432/app");

  auto bad = Finalize(R"({"databases": [{"name": "a", "dsn": "dbname=a password=hunter2",
                                          "pool": {"minIdle": 9, "maxSize": 1}}]})");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message().find("hunter2"), std::string::npos);
}

TEST(QueryConfigTest, LoadNamesTheFile) {
  const std::string path = std::string(getenv("TEST_TMPDIR")) + "/q.json";
  std::ofstream(path)
      << R"({"databases": [{"name": "a", "dsn": "dbname=a", "pool": {"maxSzie": 3}}]})";
  auto c = LoadQueryConfig(path);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find(path), std::string::npos);
  EXPECT_NE(c.status().message().find("maxSzie"), std::string::npos) << c.status();
}

}  // namespace
}  // namespace poolside::query
