#include "cli/command_line.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace poolside::cli {
namespace {

absl::Status Usage(absl::string_view why) { return absl::InvalidArgumentError(std::string(why)); }

bool CommandFromName(absl::string_view name, Command* command) {
  if (name == "query") {
    *command = Command::kQuery;
  } else if (name == "pools") {
    *command = Command::kPools;
  } else if (name == "check") {
    *command = Command::kCheck;
  } else if (name == "stats") {
    *command = Command::kStats;
  } else if (name == "advise") {
    *command = Command::kAdvise;
  } else if (name == "help") {
    *command = Command::kHelp;
  } else {
    return false;
  }
  return true;
}

}  // namespace

Option SplitOption(absl::string_view arg) {
  Option opt;
  arg.remove_prefix(arg.size() > 1 && arg[1] == '-' ? 2 : 1);
  size_t eq = arg.find('=');
  if (eq == absl::string_view::npos) {
    opt.name = std::string(arg);
  } else {
    opt.name = std::string(arg.substr(0, eq));
    opt.value = std::string(arg.substr(eq + 1));
    opt.has_value = true;
  }
  return opt;
}

absl::StatusOr<Invocation> ParseCommandLine(const std::vector<std::string>& args,
                                            Invocation defaults) {
  Invocation inv = std::move(defaults);
  bool have_command = false;
  bool options_done = false;
  bool help = false;
  std::vector<std::string> positional;

  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    // Everything after the SQL of `query` is a parameter, verbatim.
    bool sql_seen = have_command && inv.command == Command::kQuery && !positional.empty();
    if (options_done || sql_seen || arg.size() < 2 || arg[0] != '-') {
      if (!have_command) {
        if (!CommandFromName(arg, &inv.command)) {
          return Usage(absl::StrCat("unknown command \"", arg, "\" (try --help)"));
        }
        have_command = true;
      } else {
        positional.push_back(arg);
      }
      continue;
    }
    if (arg == "--") {
      options_done = true;
      continue;
    }
    Option opt = SplitOption(arg);
    auto take_value = [&]() -> absl::StatusOr<std::string> {
      if (opt.has_value) return opt.value;
      if (i + 1 >= args.size()) {
        return Usage(absl::StrCat("--", opt.name, " needs a value"));
      }
      return args[++i];
    };
    auto command_is = [&](std::initializer_list<Command> allowed) {
      if (!have_command) return false;
      for (Command c : allowed) {
        if (inv.command == c) return true;
      }
      return false;
    };
    if (opt.name == "help" || opt.name == "h") {
      help = true;
    } else if (opt.name == "addr") {
      absl::StatusOr<std::string> v = take_value();
      if (!v.ok()) return v.status();
      inv.addr = *v;
    } else if (opt.name == "timeout") {
      absl::StatusOr<std::string> v = take_value();
      if (!v.ok()) return v.status();
      absl::Duration d;
      if (!absl::ParseDuration(*v, &d) || d <= absl::ZeroDuration()) {
        return Usage(
            absl::StrCat("--timeout: \"", *v, "\" is not a positive duration (e.g. 30s, 500ms)"));
      }
      inv.timeout = d;
    } else if (opt.name == "db" &&
               command_is({Command::kQuery, Command::kPools, Command::kStats, Command::kAdvise})) {
      absl::StatusOr<std::string> v = take_value();
      if (!v.ok()) return v.status();
      inv.database = *v;
    } else if (opt.name == "stream" && command_is({Command::kQuery}) && !opt.has_value) {
      inv.stream = true;
    } else if (opt.name == "max_rows" && command_is({Command::kQuery})) {
      absl::StatusOr<std::string> v = take_value();
      if (!v.ok()) return v.status();
      if (!absl::SimpleAtoi(*v, &inv.max_rows)) {
        return Usage(absl::StrCat("--max_rows: \"", *v, "\" is not a number"));
      }
    } else if (opt.name == "cache_ttl_ms" && command_is({Command::kQuery})) {
      absl::StatusOr<std::string> v = take_value();
      if (!v.ok()) return v.status();
      if (!absl::SimpleAtoi(*v, &inv.cache_ttl_ms)) {
        return Usage(absl::StrCat("--cache_ttl_ms: \"", *v, "\" is not a number"));
      }
    } else if (opt.name == "limit" && command_is({Command::kStats})) {
      absl::StatusOr<std::string> v = take_value();
      if (!v.ok()) return v.status();
      if (!absl::SimpleAtoi(*v, &inv.limit)) {
        return Usage(absl::StrCat("--limit: \"", *v, "\" is not a number"));
      }
    } else if ((opt.name == "min-calls" || opt.name == "min_calls") &&
               command_is({Command::kAdvise})) {
      absl::StatusOr<std::string> v = take_value();
      if (!v.ok()) return v.status();
      if (!absl::SimpleAtoi(*v, &inv.min_calls)) {
        return Usage(absl::StrCat("--min-calls: \"", *v, "\" is not a number"));
      }
    } else if ((opt.name == "max-statements" || opt.name == "max_statements") &&
               command_is({Command::kAdvise})) {
      absl::StatusOr<std::string> v = take_value();
      if (!v.ok()) return v.status();
      if (!absl::SimpleAtoi(*v, &inv.max_statements)) {
        return Usage(absl::StrCat("--max-statements: \"", *v, "\" is not a number"));
      }
    } else if (opt.name == "apply" && command_is({Command::kAdvise})) {
      absl::StatusOr<std::string> v = take_value();
      if (!v.ok()) return v.status();
      if (!absl::SimpleAtoi(*v, &inv.apply) || inv.apply == 0) {
        return Usage(absl::StrCat(
            "--apply: \"", *v, "\" is not a suggestion number (1, 2, ... as `advise` lists them)"));
      }
    } else {
      return Usage(absl::StrCat("unknown option \"", arg, "\"",
                                have_command ? " for this command" : "", " (try --help)"));
    }
  }

  if (help || !have_command) {
    inv.command = Command::kHelp;
    return inv;
  }
  switch (inv.command) {
    case Command::kQuery:
      if (positional.empty()) return Usage("query: missing SQL");
      inv.sql = positional[0];
      inv.params.assign(positional.begin() + 1, positional.end());
      break;
    case Command::kCheck:
      inv.databases = positional;
      break;
    case Command::kPools:
    case Command::kStats:
    case Command::kAdvise:
    case Command::kHelp:
      if (!positional.empty()) {
        return Usage(absl::StrCat("unexpected argument \"", positional[0], "\""));
      }
      break;
  }
  return inv;
}

const char* UsageText() {
  return R"USAGE(poolside — command-line client for the poolside query service

Usage:
  poolside [--addr=HOST:PORT] [--timeout=DURATION] COMMAND ...

Commands:
  query [--db NAME] [--stream] [--max_rows N] [--cache_ttl_ms N] SQL [PARAM ...]
        Runs one statement and prints the result as a table, then "(N rows)"
        or the command tag. --stream uses ExecuteStream and prints rows as they
        arrive (column widths are fixed by the first chunk).
  pools [--db NAME]     Connection pool statistics per database.
  check [NAME ...]      Health-checks databases (default: all); exit code 1 if
                        any is unhealthy.
  stats [--db NAME] [--limit N]
                        Per-statement statistics, top N by total time.
  advise [--db NAME] [--min-calls N] [--max-statements N]
                        Index advice: for the statements with the most total
                        time, indexes the planner would use and how much cost
                        they save, each measured with a hypothetical index
                        (HypoPG; creates nothing). Admin only.
  advise [--db NAME] --apply N
                        Creates suggestion N of the advice (CREATE INDEX
                        CONCURRENTLY; give large tables a long --timeout).
  ingest --table T [--addr=HOST:PORT] FILE.csv ...
                        Writes CSV rows through the ingest service (default
                        port 50053); `poolside ingest --help` for its options.
  cache stats | cache invalidate --tag T ... [--cache=HOST:PORT]
                        The cache sidecar's statistics, or invalidation by tag
                        or key prefix; `poolside cache --help`.
  help                  This text.

Global options:
  --addr=HOST:PORT   the query service (default 127.0.0.1:50051, or $POOLSIDE_ADDR;
                     "unix:/path" for a unix socket)
  --timeout=DURATION deadline of each call (default 30s; e.g. 500ms, 2m)
  --help             this text

Parameters ($1, $2, ... in order) are typed by their text:
  null -> NULL    true/false -> bool    42, -7 -> int64
  1.5, 2e3 -> numeric (exact)           anything else -> text
or by an explicit prefix:
  int:5  double:1.5  num:1.50  text:42  bool:true  null:
  bytes:00ff (hex)  json:{"a":1}  ts:2024-01-01T00:00:00Z
An unknown prefix is plain text ("http://x"); "text:int:5" is the text "int:5".

Output: NULL as NULL, bytes as \x hex, timestamps in RFC 3339 (UTC), control
characters in text escaped (\n, \t).

Exit status: 0 success; 1 `check` found an unhealthy database;
2 error (printed to stderr as "error: CODE: message").

Examples:
  poolside query "SELECT abalance FROM pgbench_accounts WHERE aid = $1" 42
  poolside query --db demo "INSERT INTO t(name, at) VALUES ($1, $2)" text:7 ts:2024-05-01T12:00:00Z
  poolside --addr=10.0.0.5:50051 check
)USAGE";
}

}  // namespace poolside::cli
