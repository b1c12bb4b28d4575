// JSON log lines carry the current span's trace_id and span_id.

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "common/telemetry/log.h"
#include "common/telemetry/trace_context.h"
#include "gtest/gtest.h"

namespace poolside::telemetry {
namespace {

// What Log() writes to stderr while `fn` runs.
template <typename Fn>
std::string CaptureStderr(Fn fn) {
  char path[] = "/tmp/trace_log_test.XXXXXX";
  const int fd = mkstemp(path);
  EXPECT_GE(fd, 0);
  const int saved = dup(STDERR_FILENO);
  dup2(fd, STDERR_FILENO);
  fn();
  dup2(saved, STDERR_FILENO);
  close(saved);
  close(fd);
  std::ifstream in(path);
  std::stringstream out;
  out << in.rdbuf();
  unlink(path);
  return out.str();
}

TEST(TraceLogTest, LinesInsideASpanCarryItsIds) {
  const std::string inside = CaptureStderr([] {
    ScopedSpanContext scope(
        *ParseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    LogInfo("inside", {{"k", "v"}});
  });
  EXPECT_NE(inside.find("\"message\":\"inside\",\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\","
                        "\"span_id\":\"00f067aa0ba902b7\",\"k\":\"v\"}"),
            std::string::npos)
      << inside;
  const std::string outside = CaptureStderr([] { LogInfo("outside"); });
  EXPECT_NE(outside.find("\"message\":\"outside\"}"), std::string::npos) << outside;
  EXPECT_EQ(outside.find("trace_id"), std::string::npos) << outside;
}

}  // namespace
}  // namespace poolside::telemetry
