#ifndef POOLSIDE_COMMON_SERVER_SERVICE_FLAGS_H_
#define POOLSIDE_COMMON_SERVER_SERVICE_FLAGS_H_

// The command line every poolside service binary shares:
//   <binary> --config=FILE [--check_config] [--listen=HOST:PORT] [--log_level=LEVEL]
// A binary may define more flags of its own.

#include <optional>
#include <string>

#include "absl/status/status.h"

namespace poolside::server {

struct ServiceFlags {
  std::string config;  // --config, required
  bool check_config = false;
  std::string listen;  // overrides server.listen when set
};

// Parses argv, names the service in the logs, sets the log level and turns
// Abseil's Mutex deadlock detection off unless --mutex_deadlock_detection. Prints
// a usage error to stderr and returns nullopt (exit with 2) when --log_level
// is invalid or --config is missing; `config_help` says where the
// configuration is documented, e.g. "docs/configuration.md".
std::optional<ServiceFlags> ParseServiceFlags(int argc, char** argv, const char* service,
                                              const char* usage, const char* config_help);

// Logs "invalid configuration" with `status`'s message and returns the exit
// code a service then exits with (2).
int InvalidConfiguration(const absl::Status& status);

}  // namespace poolside::server

#endif  // POOLSIDE_COMMON_SERVER_SERVICE_FLAGS_H_
