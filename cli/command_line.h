#ifndef POOLSIDE_CLI_COMMAND_LINE_H_
#define POOLSIDE_CLI_COMMAND_LINE_H_

// Argument parsing for the `poolside` CLI (see UsageText() for the grammar).
//
// Options may appear before or after the command name, as --name=value or
// --name value. For `query`, the first non-option argument is the SQL and every
// argument after it is a parameter taken literally, so "-5" or "--x" can be
// parameters; "--" also ends the options.
//
// Pure functions, thread-safe.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace poolside::cli {

// One option argument of any command: "--name=value" (or "-name=value") split
// into name and value; "--name" leaves value empty and has_value false.
struct Option {
  std::string name;
  std::string value;
  bool has_value = false;
};
Option SplitOption(absl::string_view arg);

enum class Command { kHelp, kQuery, kPools, kCheck, kStats, kAdvise };

struct Invocation {
  std::string addr = "127.0.0.1:50051";
  absl::Duration timeout = absl::Seconds(30);
  Command command = Command::kHelp;
  // query, pools, stats: the database (empty: the service's default / all).
  std::string database;
  // query
  bool stream = false;
  uint64_t max_rows = 0;
  // Execute through the cache sidecar with this ttl (0: not cached).
  uint32_t cache_ttl_ms = 0;
  std::string sql;
  std::vector<std::string> params;
  // check: databases to check (empty: all).
  std::vector<std::string> databases;
  // stats: top N by total time (0: all).
  uint32_t limit = 0;
  // advise: statements called fewer times are not considered (0: the
  // server's default); the top N statements by total time (0: the
  // server's default); create suggestion N (1-based; 0: create nothing).
  uint64_t min_calls = 0;
  uint32_t max_statements = 0;
  uint32_t apply = 0;
};

// Parses `args` (argv without the program name) on top of `defaults`.
// INVALID_ARGUMENT with a one-line reason for a usage error.
absl::StatusOr<Invocation> ParseCommandLine(const std::vector<std::string>& args,
                                            Invocation defaults = Invocation());

// The --help text.
const char* UsageText();

}  // namespace poolside::cli

#endif  // POOLSIDE_CLI_COMMAND_LINE_H_
