#include "common/db/member_dsn.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace poolside::db {
namespace {

TEST(MembersFromDsnsTest, ReplicaEntriesOverrideTheDatabaseDsn) {
  absl::StatusOr<std::vector<MemberSpec>> members =
      MembersFromDsns("postgresql://app@db-0:5432/shop?sslmode=require",
                      {"host=db-1", "host=db-2 port=6432", "hostaddr=10.0.0.9 port=5433"});
  ASSERT_TRUE(members.ok()) << members.status();
  ASSERT_EQ(members->size(), 4u);
  EXPECT_EQ((*members)[0].id, "db-0:5432");
  EXPECT_EQ((*members)[1].id, "db-1:5432");
  EXPECT_EQ((*members)[2].id, "db-2:6432");
  EXPECT_EQ((*members)[3].id, "10.0.0.9:5433");
  for (const MemberSpec& m : *members) {
    EXPECT_TRUE(absl::StrContains(m.dsn, "dbname='shop'")) << m.dsn;
    EXPECT_TRUE(absl::StrContains(m.dsn, "user='app'")) << m.dsn;
    EXPECT_TRUE(absl::StrContains(m.dsn, "sslmode='require'")) << m.dsn;
  }
  EXPECT_FALSE(absl::StrContains((*members)[1].dsn, "db-0")) << (*members)[1].dsn;

  for (const char* bad :
       {"dbname=other", "host=x user=postgres", "host=x password=p", "host='", "host=db-0"}) {
    absl::StatusOr<std::vector<MemberSpec>> refused =
        MembersFromDsns("host=db-0 dbname=shop", {bad});
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_FALSE(absl::StrContains(refused.status().message(), "=p")) << refused.status();
  }
}

TEST(MembersFromDsnsTest, DsnForHostReplacesTheAddressOnly) {
  absl::StatusOr<std::string> dsn =
      DsnForHost("host=a hostaddr=10.0.0.1 port=1 dbname=app sslmode=verify-full", "b", 6432);
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  EXPECT_TRUE(absl::StrContains(*dsn, "host='b'")) << *dsn;
  EXPECT_TRUE(absl::StrContains(*dsn, "port='6432'")) << *dsn;
  EXPECT_TRUE(absl::StrContains(*dsn, "sslmode='verify-full'")) << *dsn;
  EXPECT_FALSE(absl::StrContains(*dsn, "10.0.0.1")) << *dsn;
  EXPECT_EQ(DsnForHost("host='", "b", 1).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace poolside::db
