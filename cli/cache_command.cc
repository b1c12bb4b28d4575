#include "cli/cache_command.h"

#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/command_line.h"
#include "cli/table.h"
#include "proto/poolside/v1/cache.grpc.pb.h"

namespace poolside::cli {
namespace {

std::string Bytes(uint64_t b) {
  if (b >= (uint64_t{1} << 30)) return absl::StrFormat("%.1f GiB", b / double(uint64_t{1} << 30));
  if (b >= (1u << 20)) return absl::StrFormat("%.1f MiB", b / double(1u << 20));
  if (b >= (1u << 10)) return absl::StrFormat("%.1f KiB", b / 1024.0);
  return absl::StrCat(b, " B");
}

int Fail(const std::string& addr, const grpc::Status& status) {
  std::fprintf(stderr, "error: cache sidecar at %s: code %d: %s\n", addr.c_str(),
               static_cast<int>(status.error_code()), status.error_message().c_str());
  return kExitError;
}

std::unique_ptr<grpc::ClientContext> Context(const CacheInvocation& inv) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + inv.timeout));
  return ctx;
}

int Stats(v1::CacheService::Stub* stub, const CacheInvocation& inv) {
  v1::CacheStats s;
  grpc::Status status = stub->GetStats(Context(inv).get(), v1::CacheGetStatsRequest(), &s);
  if (!status.ok()) return Fail(inv.addr, status);
  TextTable table({"stat", "value"});
  auto row = [&table](const std::string& name, const std::string& value) {
    table.AddRow({name, value}, {false, true});
  };
  row("entries", absl::StrCat(s.entries()));
  row("bytes", absl::StrCat(s.bytes(), " (", Bytes(s.bytes()), ")"));
  row("capacity_bytes", absl::StrCat(s.capacity_bytes(), " (", Bytes(s.capacity_bytes()), ")"));
  row("used",
      absl::StrFormat("%.1f%%", s.capacity_bytes() ? 100.0 * s.bytes() / s.capacity_bytes() : 0));
  row("hits", absl::StrCat(s.hits()));
  row("stale_hits", absl::StrCat(s.stale_hits()));
  row("misses", absl::StrCat(s.misses()));
  row("hit_ratio", absl::StrFormat("%.4f", s.hit_ratio()));
  row("sets", absl::StrCat(s.sets()));
  row("sets_rejected", absl::StrCat(s.sets_rejected()));
  row("evictions", absl::StrCat(s.evictions()));
  row("expirations", absl::StrCat(s.expirations()));
  row("invalidations", absl::StrCat(s.invalidations()));
  row("invalidated_entries", absl::StrCat(s.invalidated_entries()));
  row("generation", absl::StrCat(s.generation()));
  row("shards", absl::StrCat(s.shards()));
  row("watches", absl::StrCat(s.watches()));
  std::fputs(table.Render().c_str(), stdout);
  return kExitOk;
}

int Invalidate(v1::CacheService::Stub* stub, const CacheInvocation& inv) {
  v1::CacheInvalidateRequest req;
  for (const auto& t : inv.tags) req.add_tags(t);
  for (const auto& p : inv.prefixes) req.add_prefixes(p);
  req.set_flush_all(inv.all);
  req.set_source("cli");
  v1::CacheInvalidateResponse resp;
  grpc::Status status = stub->Invalidate(Context(inv).get(), req, &resp);
  if (!status.ok()) return Fail(inv.addr, status);
  std::printf("removed %llu entries (generation %llu)\n",
              static_cast<unsigned long long>(resp.removed()),
              static_cast<unsigned long long>(resp.generation()));
  return kExitOk;
}

}  // namespace

const char* CacheUsageText() {
  return R"(usage:
  poolside cache stats [--cache=ADDR]
  poolside cache invalidate --tag=T [--tag=T2 ...] [--prefix=P ...] [--cache=ADDR]
  poolside cache invalidate --all [--cache=ADDR]

options:
  --cache=ADDR        the cache sidecar: host:port or unix:/path/to/socket
                      (default 127.0.0.1:50052, or $POOLSIDE_CACHE_ADDR)
  --timeout=DURATION  per call (default 10s)
  --tag=T             invalidate entries tagged T (repeatable)
  --prefix=P          invalidate entries whose key starts with P (repeatable)
  --all               invalidate everything
)";
}

absl::StatusOr<CacheInvocation> ParseCacheCommand(const std::vector<std::string>& args,
                                                  CacheInvocation inv) {
  bool have_action = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "-h" || arg == "--help" || arg == "help") {
      inv.action = CacheInvocation::Action::kHelp;
      return inv;
    }
    if (!absl::StartsWith(arg, "--")) {
      if (have_action) {
        return absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", arg, "\""));
      }
      if (arg == "stats") {
        inv.action = CacheInvocation::Action::kStats;
      } else if (arg == "invalidate") {
        inv.action = CacheInvocation::Action::kInvalidate;
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("unknown cache command \"", arg, "\" (expected stats or invalidate)"));
      }
      have_action = true;
      continue;
    }
    auto [name, value, has_value] = SplitOption(arg);
    if (name == "all") {
      if (has_value) return absl::InvalidArgumentError("--all takes no value");
      inv.all = true;
      continue;
    }
    if (name != "cache" && name != "tag" && name != "prefix" && name != "timeout") {
      return absl::InvalidArgumentError(absl::StrCat("unknown option --", name));
    }
    if (!has_value) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      }
      value = args[++i];
    }
    if (name == "cache") {
      inv.addr = value;
    } else if (name == "timeout") {
      if (!absl::ParseDuration(value, &inv.timeout) || inv.timeout <= absl::ZeroDuration()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--timeout: not a positive duration: \"", value, "\" (e.g. 5s)"));
      }
    } else if (value.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " must not be empty"));
    } else if (name == "tag") {
      inv.tags.push_back(value);
    } else {
      inv.prefixes.push_back(value);
    }
  }
  if (!have_action) return absl::InvalidArgumentError("expected stats or invalidate");
  const bool targets = !inv.tags.empty() || !inv.prefixes.empty();
  if (inv.action == CacheInvocation::Action::kInvalidate && !targets && !inv.all) {
    return absl::InvalidArgumentError("invalidate needs --tag, --prefix or --all");
  }
  if (inv.action == CacheInvocation::Action::kStats && (targets || inv.all)) {
    return absl::InvalidArgumentError("--tag, --prefix and --all belong to invalidate");
  }
  return inv;
}

int RunCacheCommand(const std::vector<std::string>& args, const ConnectionOptions& connection) {
  CacheInvocation defaults;
  if (const char* addr = std::getenv("POOLSIDE_CACHE_ADDR"); addr && *addr) defaults.addr = addr;
  absl::StatusOr<CacheInvocation> inv = ParseCacheCommand(args, defaults);
  if (!inv.ok()) {
    std::fprintf(stderr, "error: %s\n\n%s", std::string(inv.status().message()).c_str(),
                 CacheUsageText());
    return kExitError;
  }
  if (inv->action == CacheInvocation::Action::kHelp) {
    std::fputs(CacheUsageText(), stdout);
    return kExitOk;
  }
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = OpenChannel(inv->addr, connection);
  if (!channel.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(channel.status().message()).c_str());
    return kExitError;
  }
  auto stub = v1::CacheService::NewStub(*channel);
  return inv->action == CacheInvocation::Action::kStats ? Stats(stub.get(), *inv)
                                                        : Invalidate(stub.get(), *inv);
}

}  // namespace poolside::cli
