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

 private:
  std::string root_;
};

}  // namespace poolside::config

#endif  // POOLSIDE_COMMON_CONFIG_FAKE_CGROUP_H_
