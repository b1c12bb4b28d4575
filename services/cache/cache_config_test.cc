#include "services/cache/cache_config.h"

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
  EXPECT_EQ(c->server().listen(), "0.0.0.0:50052");
  EXPECT_EQ(c->server().drain_timeout_ms(), 10000u);
  EXPECT_EQ(c->capacity_bytes(), kDefaultCapacityBytes);
  EXPECT_DOUBLE_EQ(c->memory_fraction(), 0.5);
  EXPECT_EQ(c->shards(), 16u);
  EXPECT_EQ(c->max_entry_bytes(), 4u << 20);
  EXPECT_EQ(c->max_key_bytes(), 4096u);
  EXPECT_EQ(c->max_ttl_ms(), 86400000u);
  EXPECT_EQ(c->max_tags(), 64u);
  EXPECT_EQ(c->reap_interval_ms(), 1000u);
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

TEST(CacheConfigTest, LoadNamesTheFile) {
  auto c = LoadCacheConfig("/nonexistent/cache.json", {});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace poolside::cache
