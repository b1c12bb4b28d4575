#include "common/telemetry/process_metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace poolside::telemetry {
namespace {

TEST(ProcessMetricsTest, SampleDescribesThisProcess) {
  absl::StatusOr<ProcessSample> s = ReadProcessSample();
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_GT(s->resident_bytes, 1 << 20);
  EXPECT_GE(s->virtual_bytes, s->resident_bytes);
  EXPECT_GE(s->cpu_seconds, 0);
  EXPECT_GE(s->threads, 1);
  EXPECT_GE(s->open_fds, 3);  // stdin, stdout, stderr at least
  EXPECT_GT(s->max_fds, s->open_fds);
  const double now = static_cast<double>(std::time(nullptr));
  EXPECT_LE(s->start_time_seconds, now + 1);
  EXPECT_GT(s->start_time_seconds, now - 24 * 3600);
}

TEST(ProcessMetricsTest, OpenFdsFollowsDescriptors) {
  const int64_t before = ReadProcessSample()->open_fds;
  std::vector<int> fds;
  for (int i = 0; i < 5; ++i) fds.push_back(open("/dev/null", O_RDONLY | O_CLOEXEC));
  EXPECT_EQ(ReadProcessSample()->open_fds, before + 5);
  for (int fd : fds) close(fd);
  EXPECT_EQ(ReadProcessSample()->open_fds, before);
}

TEST(ProcessMetricsTest, Families) {
  std::vector<prometheus::MetricFamily> out;
  AppendProcessMetrics(&out);
  std::vector<std::string> names;
  for (const auto& f : out) names.push_back(f.name);
  for (const char* want : {"poolside_process_cpu_seconds_total",
                           "poolside_process_resident_memory_bytes", "poolside_process_open_fds",
                           "poolside_process_max_fds", "poolside_process_start_time_seconds"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want;
  }
}

}  // namespace
}  // namespace poolside::telemetry
