#ifndef POOLSIDE_COMMON_TELEMETRY_PROCESS_METRICS_H_
#define POOLSIDE_COMMON_TELEMETRY_PROCESS_METRICS_H_

// Resource usage of the current process, read from /proc at call time.
//
// Thread-safe.

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "prometheus/metric_family.h"

namespace poolside::telemetry {

struct ProcessSample {
  double resident_bytes = 0;      // VmRSS
  double virtual_bytes = 0;       // VmSize
  double cpu_seconds = 0;         // user + system
  int64_t open_fds = 0;           // entries of /proc/self/fd
  int64_t max_fds = 0;            // RLIMIT_NOFILE soft limit
  double start_time_seconds = 0;  // since the Unix epoch
  int64_t threads = 0;
};

// UNAVAILABLE when /proc cannot be read (not Linux, or /proc not mounted).
absl::StatusOr<ProcessSample> ReadProcessSample();

// Appends poolside_process_{resident_memory_bytes, virtual_memory_bytes,
// cpu_seconds_total, open_fds, max_fds, start_time_seconds, threads}; nothing
// when /proc cannot be read.
void AppendProcessMetrics(std::vector<prometheus::MetricFamily>* out);

}  // namespace poolside::telemetry

#endif  // POOLSIDE_COMMON_TELEMETRY_PROCESS_METRICS_H_
