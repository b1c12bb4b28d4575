#ifndef POOLSIDE_CLI_CACHE_COMMAND_H_
#define POOLSIDE_CLI_CACHE_COMMAND_H_

// `poolside cache ...`: talks to a cache sidecar (services/cache).
//
//   poolside cache stats [--cache=ADDR] [--timeout=DURATION]
//   poolside cache invalidate (--tag=T | --prefix=P)... [--cache=ADDR]
//   poolside cache invalidate --all [--cache=ADDR]
//
// ADDR is a gRPC target: "host:port" or "unix:/path/to/socket"; default
// $POOLSIDE_CACHE_ADDR, else 127.0.0.1:50052. Options take "--name=value" or
// "--name value"; --tag and --prefix repeat.
//
// Thread-compatible.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cli/connection.h"

namespace poolside::cli {

inline constexpr char kDefaultCacheAddr[] = "127.0.0.1:50052";

struct CacheInvocation {
  enum class Action { kHelp, kStats, kInvalidate };
  Action action = Action::kHelp;
  std::string addr = kDefaultCacheAddr;
  absl::Duration timeout = absl::Seconds(10);
  std::vector<std::string> tags;
  std::vector<std::string> prefixes;
  bool all = false;
};

// `args` are the arguments after "cache". INVALID_ARGUMENT for usage errors.
absl::StatusOr<CacheInvocation> ParseCacheCommand(const std::vector<std::string>& args,
                                                  CacheInvocation defaults = CacheInvocation());

const char* CacheUsageText();

// Runs `poolside cache ARGS...`; returns the process exit code (0 ok, 2 error).
int RunCacheCommand(const std::vector<std::string>& args, const ConnectionOptions& connection);

}  // namespace poolside::cli

#endif  // POOLSIDE_CLI_CACHE_COMMAND_H_
