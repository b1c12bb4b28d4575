#include "common/server/service_flags.h"

#include <cstdio>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "common/server/mutex_mode.h"
#include "common/telemetry/log.h"

ABSL_FLAG(std::string, config, "", "Path to the JSON configuration (see config.proto).");
ABSL_FLAG(bool, check_config, false, "Validate the configuration and exit.");
ABSL_FLAG(std::string, listen, "", "Overrides server.listen (host:port).");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error.");

namespace poolside::server {

std::optional<ServiceFlags> ParseServiceFlags(int argc, char** argv, const char* service,
                                              const char* usage, const char* config_help) {
  absl::SetProgramUsageMessage(usage);
  absl::ParseCommandLine(argc, argv);
  telemetry::SetLogService(service);
  telemetry::LogLevel level;
  if (!telemetry::ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    std::fprintf(stderr, "--log_level must be debug, info, warning or error\n");
    return std::nullopt;
  }
  telemetry::SetMinLogLevel(level);
  ApplyMutexDeadlockDetectionFlag();
  ServiceFlags flags;
  flags.config = absl::GetFlag(FLAGS_config);
  flags.check_config = absl::GetFlag(FLAGS_check_config);
  flags.listen = absl::GetFlag(FLAGS_listen);
  if (flags.config.empty()) {
    std::fprintf(stderr, "--config=FILE is required (see %s)\n", config_help);
    return std::nullopt;
  }
  return flags;
}

int InvalidConfiguration(const absl::Status& status) {
  telemetry::LogError("invalid configuration", {{"error", std::string(status.message())}});
  return 2;
}

}  // namespace poolside::server
