#include "cli/cache_command.h"

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"

namespace poolside::cli {
namespace {

using Action = CacheInvocation::Action;

TEST(CacheCommandTest, Stats) {
  auto inv = ParseCacheCommand({"stats"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->action, Action::kStats);
  EXPECT_EQ(inv->addr, kDefaultCacheAddr);
  inv = ParseCacheCommand({"--cache", "unix:/run/poolside/cache.sock", "stats", "--timeout=2s"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->addr, "unix:/run/poolside/cache.sock");
  EXPECT_EQ(inv->timeout, absl::Seconds(2));
}

TEST(CacheCommandTest, Invalidate) {
  auto inv = ParseCacheCommand({"invalidate", "--tag=orders", "--tag", "users", "--prefix=db1/"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->action, Action::kInvalidate);
  EXPECT_EQ(inv->tags, (std::vector<std::string>{"orders", "users"}));
  EXPECT_EQ(inv->prefixes, (std::vector<std::string>{"db1/"}));
  EXPECT_FALSE(inv->all);
  inv = ParseCacheCommand({"invalidate", "--all", "--cache=127.0.0.1:6000"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_TRUE(inv->all);
  EXPECT_EQ(inv->addr, "127.0.0.1:6000");
}

TEST(CacheCommandTest, UsageErrors) {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {},
           {"frobnicate"},
           {"invalidate"},
           {"invalidate", "--tag"},
           {"invalidate", "--tag="},
           {"invalidate", "--color=red", "--all"},
           {"stats", "--all"},
           {"stats", "--timeout=soon"},
           {"stats", "extra"},
       }) {
    auto inv = ParseCacheCommand(args);
    EXPECT_FALSE(inv.ok()) << absl::StrJoin(args, " ");
    EXPECT_EQ(inv.status().code(), absl::StatusCode::kInvalidArgument);
  }
  auto help = ParseCacheCommand({"--help"});
  ASSERT_TRUE(help.ok());
  EXPECT_EQ(help->action, Action::kHelp);
}

}  // namespace
}  // namespace poolside::cli
