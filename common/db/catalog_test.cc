#include "common/db/catalog.h"

#include <memory>

#include "gtest/gtest.h"
#include "tests/fixtures/postgres_cluster.h"

namespace poolside::db {
namespace {

class CatalogTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto pg = testing::PostgresCluster::Start();
    ASSERT_TRUE(pg.ok()) << pg.status();
    pg_ = pg->release();
    ASSERT_TRUE(pg_->CreateDatabase("app",
                                    "CREATE TABLE accounts (id int PRIMARY KEY);"
                                    "CREATE VIEW account_view AS SELECT * FROM accounts;"
                                    "CREATE FUNCTION public.lower_plus(text) RETURNS text "
                                    "LANGUAGE sql IMMUTABLE AS 'SELECT lower($1)';"
                                    "CREATE FUNCTION public.abs(text) RETURNS text "
                                    "LANGUAGE sql VOLATILE AS 'SELECT $1';"
                                    "CREATE ROLE plain LOGIN;"
                                    "CREATE ROLE reader LOGIN;"
                                    "ALTER ROLE reader SET default_transaction_read_only = on;"
                                    "CREATE ROLE signaller LOGIN;"
                                    "GRANT pg_signal_backend TO signaller;"
                                    "CREATE ROLE filer LOGIN;"
                                    "CREATE ROLE middle NOLOGIN;"
                                    "GRANT pg_read_server_files TO middle;"
                                    "GRANT middle TO filer;"
                                    "CREATE ROLE bypasser LOGIN BYPASSRLS;")
                    .ok());
  }
  static void TearDownTestSuite() {
    delete pg_;
    pg_ = nullptr;
  }

  static std::unique_ptr<Connection> Connect(const std::string& user) {
    ConnectionOptions o;
    o.dsn = pg_->Dsn("app") + " user=" + user;
    auto c = Connection::Open(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  static absl::Time Deadline() { return absl::Now() + absl::Seconds(10); }

  // The session role of a connection logged in as `user`.
  static absl::StatusOr<SessionRole> RoleOf(const std::string& user) {
    std::unique_ptr<Connection> c = Connect(user);
    if (c == nullptr) return absl::UnavailableError("cannot connect as " + user);
    return ReadSessionRole(*c, Deadline());
  }

  static testing::PostgresCluster* pg_;
};

testing::PostgresCluster* CatalogTest::pg_ = nullptr;

TEST_F(CatalogTest, SuperuserIsPrivilegedAndRefusedUnlessAllowed) {
  absl::StatusOr<SessionRole> role = RoleOf("postgres");
  ASSERT_TRUE(role.ok()) << role.status();
  EXPECT_EQ(role->user, "postgres");
  EXPECT_TRUE(role->superuser);
  EXPECT_TRUE(role->privileged());
  absl::Status refused = CheckSessionRole(*role, "app", /*allow_privileged=*/false);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("\"postgres\" is superuser"), std::string::npos)
      << refused.message();
  EXPECT_NE(refused.message().find("allowPrivilegedRole"), std::string::npos);
  EXPECT_TRUE(CheckSessionRole(*role, "app", /*allow_privileged=*/true).ok());
}

TEST_F(CatalogTest, MembershipsOfPrivilegedRolesCountDirectlyAndThroughOtherRoles) {
  absl::StatusOr<SessionRole> s = RoleOf("signaller");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE(s->superuser);
  EXPECT_EQ(s->privileged_memberships, std::vector<std::string>{"pg_signal_backend"});
  EXPECT_EQ(CheckSessionRole(*s, "app", false).code(), absl::StatusCode::kFailedPrecondition);

  absl::StatusOr<SessionRole> f = RoleOf("filer");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->privileged_memberships, std::vector<std::string>{"pg_read_server_files"});
}

// Row-level security does not apply to a BYPASSRLS role: neither an
// application's policies nor the one between ingest logins' idempotency keys.
TEST_F(CatalogTest, BypassRlsIsPrivileged) {
  absl::StatusOr<SessionRole> role = RoleOf("bypasser");
  ASSERT_TRUE(role.ok()) << role.status();
  EXPECT_TRUE(role->bypass_rls);
  EXPECT_FALSE(role->superuser);
  EXPECT_TRUE(role->privileged());
  absl::Status refused = CheckSessionRole(*role, "app", /*allow_privileged=*/false);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("BYPASSRLS"), std::string::npos) << refused;
  EXPECT_NE(refused.message().find("bypasser"), std::string::npos) << refused;
  EXPECT_TRUE(CheckSessionRole(*role, "app", /*allow_privileged=*/true).ok());
}

TEST_F(CatalogTest, PlainAndReadOnlyRolesPass) {
  absl::StatusOr<SessionRole> p = RoleOf("plain");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_FALSE(p->privileged());
  EXPECT_FALSE(p->read_only_by_default);
  EXPECT_TRUE(CheckSessionRole(*p, "app", false).ok());

  auto reader = Connect("reader");
  ASSERT_NE(reader, nullptr);
  absl::StatusOr<SessionRole> r = ReadSessionRole(*reader, Deadline());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->read_only_by_default);
  // The connection is left idle and usable.
  EXPECT_TRUE(reader->Ping(Deadline()));
}

TEST_F(CatalogTest, OnlyBuiltinNonVolatileFunctionsAndPlainTablesAreSafe) {
  auto c = Connect("plain");
  ASSERT_NE(c, nullptr);
  absl::StatusOr<BuiltinCatalog> cat = BuiltinCatalog::Load(*c, Deadline());
  ASSERT_TRUE(cat.ok()) << cat.status();
  using V = std::vector<std::string>;
  EXPECT_TRUE(cat->AllSafe(V{"lower", "pg_catalog.upper", "now"}, V{"=", "+", "pg_catalog.||"},
                           V{"accounts", "public.accounts", "pg_catalog.pg_class"}));
  EXPECT_TRUE(cat->AllSafe({}, {}, {}));
  // Volatile built-ins: they change state or differ per call.
  EXPECT_FALSE(cat->AllSafe(V{"set_config"}, {}, {}));
  EXPECT_FALSE(cat->AllSafe(V{"pg_catalog.nextval"}, {}, {}));
  EXPECT_FALSE(cat->AllSafe(V{"pg_advisory_xact_lock"}, {}, {}));
  EXPECT_FALSE(cat->AllSafe(V{"random"}, {}, {}));
  // Not built in, or qualified with another schema.
  EXPECT_FALSE(cat->AllSafe(V{"lower_plus"}, {}, {}));
  EXPECT_FALSE(cat->AllSafe(V{"public.lower"}, {}, {}));
  // abs() is built in, but public.abs(text) is a volatile overload a
  // search_path could pick.
  EXPECT_FALSE(cat->AllSafe(V{"abs"}, {}, {}));
  EXPECT_FALSE(cat->AllSafe(V{"no_such_function"}, {}, {}));
  // Views (and so the catalog's own views) may run anything.
  EXPECT_FALSE(cat->AllSafe({}, {}, V{"account_view"}));
  EXPECT_FALSE(cat->AllSafe({}, {}, V{"public.account_view"}));
  EXPECT_FALSE(cat->AllSafe({}, {}, V{"pg_stat_activity"}));
  EXPECT_FALSE(cat->AllSafe({}, V{"pg_temp.="}, {}));
}

}  // namespace
}  // namespace poolside::db
