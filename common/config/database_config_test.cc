#include "common/config/database_config.h"

#include <cstdlib>
#include <fstream>

#include "gtest/gtest.h"

namespace poolside::config {
namespace {

v1::DatabaseConfig Db(const std::string& dsn) {
  v1::DatabaseConfig db;
  db.set_name("app");
  db.set_dsn(dsn);
  db.mutable_pool()->set_max_size(10);
  db.mutable_pool()->set_min_idle(2);
  db.mutable_pool()->set_acquire_timeout_ms(5000);
  return db;
}

TEST(RoleDatabaseConfigTest, LogsInAsTheRoleWithItsPasswordAndLazyPool) {
  const std::string file = std::string(std::getenv("TEST_TMPDIR")) + "/pw";
  std::ofstream(file) << "s3cr'et\n";
  v1::DatabaseConfig db = Db("postgresql://owner:ownerpw@db.example:5433/app?sslmode=require");
  v1::DatabaseRole* role = db.add_roles();
  role->set_name("app_read");
  role->set_password_file(file);
  role->mutable_pool()->set_max_size(3);
  absl::flat_hash_set<std::string> names;
  ASSERT_TRUE(FinalizeDatabase("databases[0]", &db, &names).ok());

  absl::StatusOr<v1::DatabaseConfig> c = RoleDatabaseConfig(db, db.roles(0));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->name(), "app");
  EXPECT_TRUE(c->roles().empty());
  EXPECT_EQ(c->pool().max_size(), 3u);
  EXPECT_EQ(c->pool().min_idle(), 0u);  // made and warmed on first use
  EXPECT_EQ(c->pool().acquire_timeout_ms(), 5000u);
  // The owner's credentials are gone; the role's are there, quoted.
  EXPECT_EQ(c->dsn().find("owner"), std::string::npos) << c->dsn();
  EXPECT_NE(c->dsn().find("user='app_read'"), std::string::npos) << c->dsn();
  EXPECT_NE(c->dsn().find("password='s3cr\\'et'"), std::string::npos) << c->dsn();
  EXPECT_NE(c->dsn().find("sslmode='require'"), std::string::npos) << c->dsn();
  EXPECT_NE(c->dsn().find("host='db.example'"), std::string::npos) << c->dsn();
}

TEST(RoleDatabaseConfigTest, UserOverridesTheNameAndBadRolesAreNamed) {
  v1::DatabaseConfig db = Db("host=127.0.0.1 dbname=app user=owner");
  v1::DatabaseRole* role = db.add_roles();
  role->set_name("readers");
  role->set_user("app_read");
  absl::StatusOr<v1::DatabaseConfig> c = RoleDatabaseConfig(db, *role);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(c->dsn().find("user='app_read'"), std::string::npos);

  for (const auto& [setup, mentions] :
       std::vector<std::pair<std::function<void(v1::DatabaseConfig*)>, std::string>>{
           {[](v1::DatabaseConfig* d) { d->add_roles()->set_name("bad name"); }, "name must"},
           {[](v1::DatabaseConfig* d) {
              d->add_roles()->set_name("a");
              d->add_roles()->set_name("a");
            },
            "duplicate role"},
           {[](v1::DatabaseConfig* d) {
              auto* r = d->add_roles();
              r->set_name("a");
              r->set_password_file("/nonexistent/pw");
            },
            "password"},
           {[](v1::DatabaseConfig* d) {
              auto* r = d->add_roles();
              r->set_name("a");
              r->set_password_file("/x");
              r->set_password_env("X");
            },
            "at most one"}}) {
    v1::DatabaseConfig d = Db("host=127.0.0.1 dbname=app");
    setup(&d);
    absl::flat_hash_set<std::string> names;
    absl::Status s = FinalizeDatabase("databases[0]", &d, &names);
    EXPECT_FALSE(s.ok()) << mentions;  // INVALID_ARGUMENT, NOT_FOUND for a missing file
    EXPECT_NE(s.message().find(mentions), std::string::npos) << s;
  }
}

}  // namespace
}  // namespace poolside::config
