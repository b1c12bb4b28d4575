#include "common/config/sizing.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "common/config/fake_cgroup.h"
#include "gtest/gtest.h"

namespace poolside::config {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;

ThreadRule CopyWorkers() {
  ThreadRule rule;
  rule.per_core = 2;
  rule.min = 2;
  rule.max = 8;
  rule.without_limit = 4;
  return rule;
}

MemoryRule QuarterOfMemory() {
  MemoryRule rule;
  rule.fraction = 0.25;
  rule.min = 16 * kMiB;
  rule.max = 1024 * kMiB;
  rule.without_limit = 64 * kMiB;
  return rule;
}

TEST(SizingTest, FromCgroupV2Limits) {
  FakeCgroup fake;
  fake.WriteV2("kubepods/pod/c", "1073741824", "150000 100000");
  const ContainerLimits limits =
      EffectiveLimits(v1::ServerConfig(), ReadContainerLimits(fake.fs(), fake.self()));
  EXPECT_EQ(ThreadsFromCpu(limits, CopyWorkers()), 4u);  // 1.5 cores -> 2 -> x2
  EXPECT_EQ(BytesFromMemory(limits, QuarterOfMemory()), 256 * kMiB);
  EXPECT_EQ(DescribeLimits(limits),
            "cpu 1.5, memory 1024 MiB (cgroup v2 " + fake.fs() + "/kubepods/pod/c)");
}

TEST(SizingTest, FromCgroupV1Limits) {
  FakeCgroup fake;
  fake.WriteV1("kubepods/c", "cpu,cpuacct", "268435456", "50000");
  const ContainerLimits limits =
      EffectiveLimits(v1::ServerConfig(), ReadContainerLimits(fake.fs(), fake.self()));
  EXPECT_EQ(ThreadsFromCpu(limits, CopyWorkers()), 2u);  // half a core -> 1 -> x2
  EXPECT_EQ(BytesFromMemory(limits, QuarterOfMemory()), 64 * kMiB);
  EXPECT_EQ(limits.source, "cgroup v1");
}

TEST(SizingTest, UnlimitedCgroupUsesTheFallbacks) {
  FakeCgroup fake;
  fake.WriteV2("", "max", "max 100000");
  const ContainerLimits limits =
      EffectiveLimits(v1::ServerConfig(), ReadContainerLimits(fake.fs(), fake.self()));
  EXPECT_EQ(ThreadsFromCpu(limits, CopyWorkers()), 4u);
  EXPECT_EQ(BytesFromMemory(limits, QuarterOfMemory()), 64 * kMiB);
  EXPECT_EQ(DescribeLimits(limits),
            "cpu unlimited, memory unlimited (cgroup v2 " + fake.fs() + ")");
}

TEST(SizingTest, ClampsToTheRule) {
  ContainerLimits big;
  big.cpus = 32;
  big.memory_bytes = uint64_t{64} << 30;
  EXPECT_EQ(ThreadsFromCpu(big, CopyWorkers()), 8u);
  EXPECT_EQ(BytesFromMemory(big, QuarterOfMemory()), 1024 * kMiB);
  ContainerLimits tiny;
  tiny.cpus = 0.1;
  tiny.memory_bytes = 32 * kMiB;
  EXPECT_EQ(ThreadsFromCpu(tiny, CopyWorkers()), 2u);
  EXPECT_EQ(BytesFromMemory(tiny, QuarterOfMemory()), 16 * kMiB);
}

TEST(SizingTest, ConfigurationOverridesTheCgroup) {
  FakeCgroup fake;
  fake.WriteV2("", "1073741824", "400000 100000");
  v1::ServerConfig server;
  server.set_cpu_limit(1);
  const ContainerLimits cpu_only =
      EffectiveLimits(server, ReadContainerLimits(fake.fs(), fake.self()));
  EXPECT_EQ(ThreadsFromCpu(cpu_only, CopyWorkers()), 2u);
  EXPECT_EQ(BytesFromMemory(cpu_only, QuarterOfMemory()), 256 * kMiB)
      << "memory still from the cgroup";
  EXPECT_EQ(cpu_only.source, "server.cpuLimit over cgroup v2 " + fake.fs());

  server.set_memory_limit_bytes(128 * kMiB);
  const ContainerLimits both = EffectiveLimits(server, ContainerLimits());
  EXPECT_EQ(BytesFromMemory(both, QuarterOfMemory()), 32 * kMiB);
  EXPECT_EQ(both.source, "server.cpuLimit and server.memoryLimitBytes");
}

}  // namespace
}  // namespace poolside::config
