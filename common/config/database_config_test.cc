#include "common/config/database_config.h"

#include <cstdlib>
#include <fstream>
#include <functional>

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

TEST(FinalizeTopologyTest, DefaultsWithoutReplicas) {
  v1::DatabaseConfig db = Db("host=db-0 dbname=app user=owner");
  absl::flat_hash_set<std::string> names;
  ASSERT_TRUE(FinalizeDatabase("databases[0]", &db, &names).ok());
  const v1::TopologyConfig& t = db.topology();
  EXPECT_EQ(t.replicas_size(), 0);
  EXPECT_EQ(t.max_lag_ms(), 5000u);
  EXPECT_EQ(t.max_lag_bytes(), 64u << 20);
  EXPECT_EQ(t.no_replica(), "primary");
  EXPECT_EQ(t.failover_buffer_ms(), 10000u);
  EXPECT_EQ(t.failover_buffer_calls(), 4096u);
  EXPECT_EQ(t.failover_buffer_bytes(), 64u << 20);
  EXPECT_EQ(t.probe_interval_ms(), 250u);
  EXPECT_EQ(t.probe_timeout_ms(), 1000u);
}

TEST(FinalizeTopologyTest, KeepsValidSettings) {
  v1::DatabaseConfig db = Db("postgresql://owner@db-0/app");
  db.mutable_topology()->add_replicas("host=db-1");
  db.mutable_topology()->add_replicas("host=db-2 port=6432 sslmode=require");
  db.mutable_topology()->set_max_lag_ms(1000);
  db.mutable_topology()->set_no_replica("fail");
  db.mutable_topology()->set_failover_buffer_ms(0);
  db.mutable_topology()->set_failover_buffer_calls(1);
  db.mutable_topology()->set_failover_buffer_bytes(1 << 20);
  absl::flat_hash_set<std::string> names;
  absl::Status s = FinalizeDatabase("databases[0]", &db, &names);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(db.topology().max_lag_ms(), 1000u);
  EXPECT_EQ(db.topology().no_replica(), "fail");
  EXPECT_EQ(db.topology().failover_buffer_ms(), 0u) << "0 is kept: fail at once";
  EXPECT_EQ(db.topology().failover_buffer_calls(), 1u);
  EXPECT_EQ(db.topology().failover_buffer_bytes(), 1u << 20);

  v1::DatabaseConfig patroni = Db("host=db-0 dbname=app");
  patroni.set_name("p");
  patroni.mutable_topology()->add_patroni_endpoints("http://10.0.0.5:8008");
  patroni.mutable_topology()->add_patroni_endpoints("http://patroni-api:8008/");
  s = FinalizeDatabase("databases[1]", &patroni, &names);
  EXPECT_TRUE(s.ok()) << s;
}

TEST(FinalizeTopologyTest, RefusesBadSettingsNamingThemWithoutSecrets) {
  struct Case {
    std::function<void(v1::TopologyConfig*)> set;
    std::string expect;
  };
  const Case cases[] = {
      {[](v1::TopologyConfig* t) { t->add_replicas("host=db-1 password=hunter2"); },
       "replicas[0] sets password"},
      {[](v1::TopologyConfig* t) { t->add_replicas("host=db-1 dbname=other"); }, "sets dbname"},
      {[](v1::TopologyConfig* t) { t->add_replicas("host=db-1 user=postgres"); }, "sets user"},
      {[](v1::TopologyConfig* t) { t->add_replicas("sslmode=require"); }, "host or port"},
      {[](v1::TopologyConfig* t) { t->add_replicas("host='db-1"); }, "replicas[0]"},
      {[](v1::TopologyConfig* t) { t->add_replicas("host=db-0"); }, "already a member"},
      {[](v1::TopologyConfig* t) {
         t->add_replicas("host=db-1");
         t->add_patroni_endpoints("http://p:8008");
       },
       "not both"},
      {[](v1::TopologyConfig* t) { t->add_patroni_endpoints("https://p:8008"); },
       "patroniEndpoints[0]"},
      {[](v1::TopologyConfig* t) { t->add_patroni_endpoints("http://p"); }, "patroniEndpoints[0]"},
      {[](v1::TopologyConfig* t) { t->set_no_replica("replica"); }, "noReplica"},
      {[](v1::TopologyConfig* t) { t->set_max_lag_ms(300); }, "twice probeIntervalMs"},
      {[](v1::TopologyConfig* t) { t->set_probe_interval_ms(5); }, "probeIntervalMs"},
      {[](v1::TopologyConfig* t) { t->set_probe_timeout_ms(100000); }, "probeTimeoutMs"},
      {[](v1::TopologyConfig* t) { t->set_failover_buffer_ms(200000); }, "failoverBufferMs"},
      {[](v1::TopologyConfig* t) { t->set_failover_buffer_calls(1000001); },
       "failoverBufferCalls must be at most 1000000"},
      {[](v1::TopologyConfig* t) { t->set_failover_buffer_bytes(1048575); },
       "failoverBufferBytes must be 1048576 (1 MiB) to"},
      {[](v1::TopologyConfig* t) { t->set_failover_buffer_bytes((16ull << 30) + 1); },
       "failoverBufferBytes must be 1048576"},
  };
  for (const Case& c : cases) {
    v1::DatabaseConfig db = Db("host=db-0 dbname=app password=ownersecret");
    c.set(db.mutable_topology());
    absl::flat_hash_set<std::string> names;
    absl::Status s = FinalizeDatabase("databases[0] (app)", &db, &names);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.expect;
    EXPECT_NE(s.message().find(c.expect), absl::string_view::npos) << s;
    EXPECT_NE(s.message().find("databases[0] (app) topology"), absl::string_view::npos) << s;
    EXPECT_EQ(s.message().find("hunter2"), absl::string_view::npos) << s;
    EXPECT_EQ(s.message().find("ownersecret"), absl::string_view::npos) << s;
  }
}

}  // namespace
}  // namespace poolside::config
