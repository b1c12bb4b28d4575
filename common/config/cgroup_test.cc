#include "common/config/cgroup.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/config/fake_cgroup.h"
#include "gtest/gtest.h"

namespace poolside::config {
namespace {

TEST(CgroupTest, V2LimitsOfOwnCgroup) {
  FakeCgroup fs;
  fs.WriteV2("kubepods/pod1/c1", "536870912", "150000 100000");
  ContainerLimits l = ReadContainerLimits(fs.root() + "/fs", fs.self());
  ASSERT_TRUE(l.memory_bytes.has_value());
  EXPECT_EQ(*l.memory_bytes, 536870912u);
  ASSERT_TRUE(l.cpus.has_value());
  EXPECT_DOUBLE_EQ(*l.cpus, 1.5);
  EXPECT_EQ(l.source, absl::StrCat("cgroup v2 ", fs.root(), "/fs/kubepods/pod1/c1"));
  EXPECT_EQ(EffectiveCpuCount(l), std::min(2, EffectiveCpuCount(ContainerLimits())));
}

TEST(CgroupTest, V2MaxMeansNoLimit) {
  FakeCgroup fs;
  fs.WriteV2("", "max", "max 100000");
  ContainerLimits l = ReadContainerLimits(fs.root() + "/fs", fs.self());
  EXPECT_FALSE(l.memory_bytes.has_value());
  EXPECT_FALSE(l.cpus.has_value());
}

TEST(CgroupTest, V2NamespacedRootIsTheContainer) {
  FakeCgroup fs;
  fs.WriteV2("", "1073741824", "50000 100000");
  ContainerLimits l = ReadContainerLimits(fs.root() + "/fs", fs.self());
  EXPECT_EQ(l.memory_bytes.value_or(0), 1073741824u);
  EXPECT_DOUBLE_EQ(l.cpus.value_or(0), 0.5);
  EXPECT_EQ(EffectiveCpuCount(l), 1);
}

TEST(CgroupTest, V2TightestAncestorWins) {
  FakeCgroup fs;
  fs.WriteV2("pod/c1", "max", "max 100000");
  fs.Write("fs/pod/memory.max", "1000000\n");
  fs.Write("fs/pod/cpu.max", "200000 100000\n");
  ContainerLimits l = ReadContainerLimits(fs.root() + "/fs", fs.self());
  EXPECT_EQ(l.memory_bytes.value_or(0), 1000000u);
  EXPECT_DOUBLE_EQ(l.cpus.value_or(0), 2.0);
}

TEST(CgroupTest, V2PathMissingUnderRootFallsBackToRoot) {
  FakeCgroup fs;
  fs.Write("fs/cgroup.controllers", "memory\n");
  fs.Write("fs/memory.max", "4096\n");
  fs.Write("self_cgroup", "0::/host/view/of/me\n");
  EXPECT_EQ(ReadContainerLimits(fs.root() + "/fs", fs.self()).memory_bytes.value_or(0), 4096u);
}

TEST(CgroupTest, V1Limits) {
  FakeCgroup fs;
  fs.WriteV1("docker/abc", "cpu,cpuacct", "268435456", "250000");
  fs.Write("fs/memory/memory.limit_in_bytes", "9223372036854771712\n");
  // Other hierarchies' lines, and the unified one's, are passed over.
  fs.Write("self_cgroup",
           "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n");
  ContainerLimits l = ReadContainerLimits(fs.root() + "/fs", fs.self());
  EXPECT_EQ(l.source, "cgroup v1");
  EXPECT_EQ(l.memory_bytes.value_or(0), 268435456u);
  EXPECT_DOUBLE_EQ(l.cpus.value_or(0), 2.5);
}

TEST(CgroupTest, V1UnlimitedValues) {
  FakeCgroup fs;
  fs.WriteV1("", "cpu", "9223372036854771712", "-1");
  ContainerLimits l = ReadContainerLimits(fs.root() + "/fs", fs.self());
  EXPECT_FALSE(l.memory_bytes.has_value());
  EXPECT_FALSE(l.cpus.has_value());
  EXPECT_EQ(l.source, "cgroup v1");
}

TEST(CgroupTest, NoCgroupFilesMeansNoLimits) {
  FakeCgroup fs;
  ContainerLimits l = ReadContainerLimits(fs.root() + "/absent", fs.self());
  EXPECT_FALSE(l.memory_bytes.has_value());
  EXPECT_FALSE(l.cpus.has_value());
  EXPECT_EQ(l.source, "none");
  EXPECT_GE(EffectiveCpuCount(l), 1);
}

TEST(CgroupTest, ThisMachineDoesNotCrash) {
  ContainerLimits l = ReadContainerLimits();
  if (l.memory_bytes) {
    EXPECT_GT(*l.memory_bytes, 0u);
  }
  EXPECT_GE(EffectiveCpuCount(l), 1);
}

}  // namespace
}  // namespace poolside::config
