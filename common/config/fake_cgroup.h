#ifndef POOLSIDE_COMMON_CONFIG_FAKE_CGROUP_H_
#define POOLSIDE_COMMON_CONFIG_FAKE_CGROUP_H_

// For tests of ReadContainerLimits and what is sized from it: a fake cgroup
// tree (cgroup v2 or v1 files) in a fresh temporary directory ($TEST_TMPDIR
// under Bazel), left for Bazel to clean up.
//
//   FakeCgroup fake;
//   fake.Write("self_cgroup", "0::/pod\n");
//   fake.Write("pod/memory.max", "1073741824\n");
//   ContainerLimits limits = ReadContainerLimits(fake.root(), fake.self());

#include <stdlib.h>
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <string>

namespace poolside::config {

class FakeCgroup {
 public:
  FakeCgroup() {
    const char* tmp = std::getenv("TEST_TMPDIR");
    std::string templ = std::string(tmp != nullptr ? tmp : "/tmp") + "/cgroupXXXXXX";
    root_ = mkdtemp(templ.data());
  }

  // The temporary directory.
  const std::string& root() const { return root_; }
  // A cgroup mount below it, for trees that need a sibling of the mount.
  std::string fs() const { return root_ + "/fs"; }
  // The stand-in for /proc/self/cgroup.
  std::string self() const { return root_ + "/self_cgroup"; }

  // Writes `content` to the file `rel` (relative to root()), creating its
  // directories.
  void Write(const std::string& rel, const std::string& content) {
    const std::string path = root_ + "/" + rel;
    for (size_t i = root_.size() + 1; i < path.size(); ++i) {
      if (path[i] == '/') mkdir(path.substr(0, i).c_str(), 0755);
    }
    std::ofstream(path) << content;
  }

  // A cgroup v2 mount at fs() with both controllers, and this process in
  // `cgroup` below it ("" for the mount's root, as in a cgroup namespace),
  // whose memory.max and cpu.max hold the given values ("max" for none).
  void WriteV2(const std::string& cgroup, const std::string& memory_max,
               const std::string& cpu_max) {
    const std::string dir = cgroup.empty() ? "fs/" : "fs/" + cgroup + "/";
    Write("fs/cgroup.controllers", "cpu memory\n");
    Write(dir + "memory.max", memory_max + "\n");
    Write(dir + "cpu.max", cpu_max + "\n");
    Write("self_cgroup", "0::/" + cgroup + "\n");
  }

  // cgroup v1 hierarchies at fs(): "memory", and `cpu_controllers` (such as
  // "cpu,cpuacct") with a 100 ms period, with this process in `cgroup` ("" for
  // the root) in both, whose memory limit and CPU quota hold the given values.
  void WriteV1(const std::string& cgroup, const std::string& cpu_controllers,
               const std::string& memory_limit, const std::string& cpu_quota) {
    const std::string dir = cgroup.empty() ? "/" : "/" + cgroup + "/";
    Write("fs/memory" + dir + "memory.limit_in_bytes", memory_limit + "\n");
    Write("fs/" + cpu_controllers + dir + "cpu.cfs_quota_us", cpu_quota + "\n");
    Write("fs/" + cpu_controllers + dir + "cpu.cfs_period_us", "100000\n");
    Write("self_cgroup", "4:memory:/" + cgroup + "\n2:" + cpu_controllers + ":/" + cgroup + "\n");
  }

 private:
  std::string root_;
};

}  // namespace poolside::config

#endif  // POOLSIDE_COMMON_CONFIG_FAKE_CGROUP_H_
