#include "services/cache/cache_config.h"

#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/config/json_config.h"
#include "gtest/gtest.h"

namespace poolside::cache {
namespace {

absl::StatusOr<v1::CacheServiceConfig> Finalize(const std::string& json,
                                                config::ContainerLimits limits = {},
                                                std::string* note = nullptr) {
  v1::CacheServiceConfig c;
  absl::Status s = config::ParseJsonConfig(json, &c);
  if (!s.ok()) return s;
  // These tests are about other sections: say plaintext unless the JSON sets server.tls.
  if (!c.server().has_tls()) c.mutable_server()->mutable_tls()->set_plaintext(true);
  return FinalizeCacheConfig(c, limits, note);
}

TEST(CacheConfigTest, DefaultsWithoutContainerLimit) {
  std::string note;
  auto c = Finalize("{}", {}, &note);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->server().listen(), "127.0.0.1:50052");
  EXPECT_EQ(c->server().drain_timeout_ms(), 10000u);
  EXPECT_EQ(c->capacity_bytes(), kDefaultCapacityBytes);
  EXPECT_DOUBLE_EQ(c->memory_fraction(), 0.5);
  EXPECT_EQ(c->shards(), 16u);
  EXPECT_EQ(c->max_entry_bytes(), 4u << 20);
  EXPECT_EQ(c->max_key_bytes(), 4096u);
  EXPECT_EQ(c->max_ttl_ms(), 86400000u);
  EXPECT_EQ(c->max_tags(), 64u);
  EXPECT_EQ(c->reap_interval_ms(), 1000u);
  EXPECT_EQ(c->max_invalidate_tags(), 1024u);
  EXPECT_EQ(c->max_invalidate_prefixes(), 64u);
  EXPECT_EQ(c->max_invalidate_bytes(), 256u << 10);
  EXPECT_TRUE(c->admission());
  EXPECT_TRUE(absl::StrContains(note, "default")) << note;
  CacheStoreOptions o = StoreOptionsFromConfig(*c);
  EXPECT_EQ(o.capacity_bytes, kDefaultCapacityBytes);
  EXPECT_EQ(o.reap_interval, absl::Seconds(1));
}

TEST(CacheConfigTest, CapacityFromCgroupLimit) {
  config::ContainerLimits limits;
  limits.memory_bytes = uint64_t{1} << 30;
  limits.source = "cgroup v2 /sys/fs/cgroup";
  std::string note;
  auto c = Finalize(R"({"memoryFraction": 0.25, "admission": false})", limits, &note);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->capacity_bytes(), uint64_t{256} << 20);
  EXPECT_FALSE(c->admission());
  EXPECT_TRUE(absl::StrContains(note, "cgroup v2")) << note;
}

TEST(CacheConfigTest, MemoryLimitFromConfigurationOverridesTheCgroup) {
  config::ContainerLimits limits;
  limits.memory_bytes = uint64_t{1} << 30;
  limits.source = "cgroup v2 /sys/fs/cgroup";
  std::string note;
  auto c = Finalize(R"({"server": {"memoryLimitBytes": "134217728"}})", limits, &note);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->capacity_bytes(), uint64_t{64} << 20);  // memoryFraction 0.5 of 128 MiB
  EXPECT_TRUE(absl::StrContains(note, "server.memoryLimitBytes over cgroup v2")) << note;
}

TEST(CacheConfigTest, ExplicitCapacityWinsAndShardsRoundUp) {
  config::ContainerLimits limits;
  limits.memory_bytes = uint64_t{1} << 30;
  auto c = Finalize(R"({"capacityBytes": "67108864", "shards": 5,
                        "unixSocket": "unix:/tmp/c.sock"})",
                    limits);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->capacity_bytes(), uint64_t{64} << 20);
  EXPECT_EQ(c->shards(), 8u);
  EXPECT_EQ(c->unix_socket(), "/tmp/c.sock");
  // A unix socket and no server.listen: no TCP listener at all.
  EXPECT_EQ(c->server().listen(), "");
}

TEST(CacheConfigTest, Rejections) {
  struct Case {
    const char* json;
    const char* message;
  };
  config::ContainerLimits limits;
  limits.memory_bytes = uint64_t{512} << 20;
  for (const Case& t : {
           Case{R"({"memoryFraction": 1.5})", "memoryFraction"},
           Case{R"({"shards": 4096})", "shards"},
           Case{R"({"capacityBytes": "1048576", "shards": 64})", "per shard"},
           Case{R"({"capacityBytes": "1073741824"})", "container memory limit"},
           Case{R"({"maxKeyBytes": 10, "maxEntryBytes": 5})", "maxKeyBytes"},
           Case{R"({"maxEntryBytes": 100000000})", "maxEntryBytes"},
           Case{R"({"unixSocket": "relative.sock"})", "absolute"},
           Case{R"({"maxInvalidateTags": 100001})", "maxInvalidateTags"},
           Case{R"({"maxInvalidatePrefixes": 1025})", "maxInvalidatePrefixes"},
           Case{R"({"maxInvalidateBytes": 100})", "maxInvalidateBytes"},
           Case{R"({"maxInvalidateBytes": 16777217})", "maxInvalidateBytes"},
           Case{R"({"unknownKey": 1})", "unknownKey"},
       }) {
    auto c = Finalize(t.json, limits);
    ASSERT_FALSE(c.ok()) << t.json;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << t.json;
    EXPECT_TRUE(absl::StrContains(c.status().message(), t.message))
        << t.json << " -> " << c.status();
  }
  auto long_path = Finalize(absl::StrCat(R"({"unixSocket": "/)", std::string(200, 'x'), R"("})"));
  ASSERT_FALSE(long_path.ok());
  EXPECT_TRUE(absl::StrContains(long_path.status().message(), "longer than"));
}

TEST(CacheConfigTest, LoopbackAddresses) {
  for (const char* a : {"127.0.0.1:50052", "127.0.0.1:0", "127.8.9.10:1", "localhost:50052",
                        "[::1]:50052", "[::ffff:127.0.0.1]:5"}) {
    EXPECT_TRUE(IsLoopbackAddress(a)) << a;
  }
  for (const char* a : {"0.0.0.0:50052", "[::]:50052", ":50052", "10.0.0.7:50052", "128.0.0.1:1",
                        "cache.example:50052", "127.0.0.1", "[::1", "", "localhost.example:1",
                        "ipv4:127.0.0.1:5", "[::ffff:10.0.0.1]:5"}) {
    EXPECT_FALSE(IsLoopbackAddress(a)) << a;
  }
  EXPECT_TRUE(IsUnixAddress("unix:/run/poolside/cache.sock"));
  EXPECT_TRUE(IsUnixAddress("unix-abstract:cache"));
  EXPECT_FALSE(IsUnixAddress("127.0.0.1:1"));
}

// Nobody outside the host reaches an unauthenticated sidecar: a TCP address
// other than loopback needs principals or mutual TLS.
TEST(CacheConfigTest, NonLoopbackTcpNeedsAuthentication) {
  for (const char* json : {
           R"({"server": {"listen": "0.0.0.0:50052"}})",
           R"({"server": {"listen": "[::]:50052"}, "unixSocket": "/tmp/c.sock"})",
           R"({"server": {"listen": "10.1.2.3:50052"}, "auth": {"disabled": true}})",
       }) {
    auto c = Finalize(json);
    ASSERT_FALSE(c.ok()) << json;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << json;
    EXPECT_TRUE(absl::StrContains(c.status().message(), "is not a loopback address")) << c.status();
    EXPECT_TRUE(absl::StrContains(c.status().message(), "auth.principalsFile")) << c.status();
    EXPECT_TRUE(absl::StrContains(c.status().message(), "requireClientCert")) << c.status();
  }
  for (const char* json : {
           R"({"server": {"listen": "127.0.0.1:50052"}})",
           R"({"server": {"listen": "0.0.0.0:50052"}, "auth": {"principalsEnv": "P"}})",
           R"({"server": {"listen": "0.0.0.0:50052"}, "auth": {"principalsFile": "/p.json"}})",
           R"({"server": {"listen": "0.0.0.0:50052"},
               "auth": {"principals": [{"name": "q", "tokenSha256": "00", "roles": ["read"]}]}})",
           R"({"unixSocket": "/tmp/c.sock"})",
       }) {
    auto c = Finalize(json);
    EXPECT_TRUE(c.ok()) << json << " -> " << c.status();
  }
}

TEST(CacheConfigTest, MutualTlsAuthenticatesButTlsAloneDoesNot) {
  const std::string dir = ::testing::TempDir();
  for (const char* name : {"/cert.pem", "/key.pem", "/ca.pem"}) {
    std::ofstream(dir + name) << "placeholder";  // readable is all the loader checks
  }
  const std::string tls =
      absl::StrCat(R"("certFile": ")", dir, R"(/cert.pem", "keyFile": ")", dir, R"(/key.pem")");
  auto mutual = Finalize(absl::StrCat(R"({"server": {"listen": "0.0.0.0:1", "tls": {)", tls,
                                      R"(, "clientCaFile": ")", dir,
                                      R"(/ca.pem", "requireClientCert": true}}})"));
  EXPECT_TRUE(mutual.ok()) << mutual.status();
  auto one_way =
      Finalize(absl::StrCat(R"({"server": {"listen": "0.0.0.0:1", "tls": {)", tls, "}}}"));
  ASSERT_FALSE(one_way.ok());
  EXPECT_TRUE(absl::StrContains(one_way.status().message(), "not a loopback address"))
      << one_way.status();
  auto optional_client_cert =
      Finalize(absl::StrCat(R"({"server": {"listen": "0.0.0.0:1", "tls": {)", tls,
                            R"(, "clientCaFile": ")", dir, R"(/ca.pem"}}})"));
  EXPECT_FALSE(optional_client_cert.ok());
}

// Without a TCP listener server.tls is not needed; given, it is still checked.
TEST(CacheConfigTest, UnixOnlyNeedsNoTls) {
  v1::CacheServiceConfig c;
  c.set_unix_socket("/tmp/c.sock");
  auto done = FinalizeCacheConfig(c, {});
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->server().listen(), "");
  c.mutable_server()->mutable_tls()->set_cert_file("/nonexistent/cert.pem");
  c.mutable_server()->mutable_tls()->set_key_file("/nonexistent/key.pem");
  EXPECT_FALSE(FinalizeCacheConfig(c, {}).ok());
  v1::CacheServiceConfig tcp;
  tcp.mutable_server()->set_listen("127.0.0.1:0");
  auto refused = FinalizeCacheConfig(tcp, {});
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "server.tls")) << refused.status();
}

TEST(CacheConfigTest, LoadNamesTheFile) {
  auto c = LoadCacheConfig("/nonexistent/cache.json", {});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace poolside::cache
