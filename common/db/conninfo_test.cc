#include "common/db/conninfo.h"

#include "gtest/gtest.h"

namespace poolside::db {
namespace {

TEST(ConninfoTest, KeywordValueAndUriReadAlikeAndWriteBackQuoted) {
  for (const char* dsn : {"host=db.example port=5433 dbname=app user=owner password='it\\'s'",
                          "postgresql://owner:it%27s@db.example:5433/app"}) {
    absl::StatusOr<Conninfo> c = Conninfo::Parse(dsn);
    ASSERT_TRUE(c.ok()) << c.status();
    ASSERT_NE(c->Get("host"), nullptr) << dsn;
    EXPECT_EQ(*c->Get("host"), "db.example");
    EXPECT_EQ(*c->Get("password"), "it's");
    c->Set("user", "app_read");
    c->Erase("password");
    c->SetDefault("application_name", "poolside");
    c->SetDefault("port", "1");  // the DSN's own wins
    const std::string out = c->ToString();
    EXPECT_NE(out.find("user='app_read'"), std::string::npos) << out;
    EXPECT_EQ(out.find("owner"), std::string::npos) << out;
    EXPECT_EQ(out.find("password"), std::string::npos) << out;
    EXPECT_NE(out.find("port='5433'"), std::string::npos) << out;
    EXPECT_NE(out.find("application_name='poolside'"), std::string::npos) << out;
    // What it writes reads back the same.
    absl::StatusOr<Conninfo> again = Conninfo::Parse(out);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->ToString(), out);
  }
}

TEST(ConninfoTest, QuotesAndBadDsns) {
  EXPECT_EQ(QuoteConninfoValue("a'b\\c d"), "'a\\'b\\\\c d'");
  absl::StatusOr<Conninfo> bad = Conninfo::Parse("host=x secret=hunter2 =");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message().find("hunter2"), std::string::npos) << bad.status();
  EXPECT_FALSE(Conninfo::Parse("postgresql://[::1").ok());
}

}  // namespace
}  // namespace poolside::db
