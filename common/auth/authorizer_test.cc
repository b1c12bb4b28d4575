#include "common/auth/authorizer.h"

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_join.h"
#include "common/auth/token_hash.h"
#include "common/clock/clock.h"
#include "common/config/json_config.h"
#include "gtest/gtest.h"

namespace poolside::auth {
namespace {

v1::AuthConfig Config(const std::string& json) {
  v1::AuthConfig c;
  absl::Status s = config::ParseJsonConfig(json, &c);
  EXPECT_TRUE(s.ok()) << s;
  return c;
}

std::string Principal(const std::string& name, const std::string& token, const std::string& roles,
                      const std::string& extra = "") {
  return "{\"name\": \"" + name + "\", \"tokenSha256\": \"" + Sha256Hex(token) +
         "\", \"roles\": [" + roles + "]" + extra + "}";
}

std::string Bearer(const std::string& token) { return "Bearer " + token; }

// An authorizer of these principals (Principal() objects) and nothing else.
absl::StatusOr<std::unique_ptr<Authorizer>> Of(const std::vector<std::string>& principals,
                                               Clock* clock = Clock::Real()) {
  const v1::AuthConfig config =
      Config("{\"principals\": [" + absl::StrJoin(principals, ", ") + "]}");
  return Authorizer::Create(config, clock);
}

class AuthorizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto a = Authorizer::Create(
        Config(
            "{\"principals\": [" +
            Principal("reader", "tok-reader", "\"read\"", ", \"databases\": [\"app\"]") + ", " +
            Principal("analyst", "tok-analyst", "\"read\", \"sql\"",
                      ", \"databases\": [\"app\", \"reports\"]") +
            ", " +
            Principal("writer", "tok-writer", "\"read\", \"write\", \"sql\"",
                      ", \"databases\": [\"*\"]") +
            ", " +
            Principal("loader", "tok-loader", "\"ingest\"",
                      ", \"ingestTables\": [{\"database\": \"app\", \"tables\": [\"events\"]}]") +
            ", " + Principal("ops", "tok-ops", "\"admin\"") + "]}"),
        &clock_);
    ASSERT_TRUE(a.ok()) << a.status();
    auth_ = *std::move(a);
  }

  const auth::Principal& Who(const std::string& token) {
    const std::string header = Bearer(token);
    absl::StatusOr<const auth::Principal*> p = auth_->Authenticate(&header);
    EXPECT_TRUE(p.ok()) << p.status();
    return **p;
  }

  SimulatedClock clock_;
  std::unique_ptr<Authorizer> auth_;
};

TEST_F(AuthorizerTest, UnknownMissingOrMalformedTokensAreUnauthenticated) {
  EXPECT_EQ(auth_->Authenticate(nullptr).status().code(), absl::StatusCode::kUnauthenticated);
  for (const std::string& bad :
       std::vector<std::string>{"", "tok-reader", "Basic dG9rOnB3", "Bearer ", "Bearer tok-nobody",
                                "Bearer " + std::string(5000, 'x')}) {
    absl::StatusOr<const auth::Principal*> p = auth_->Authenticate(&bad);
    EXPECT_EQ(p.status().code(), absl::StatusCode::kUnauthenticated) << bad;
    EXPECT_EQ(p.status().message().find("tok-"), std::string::npos) << p.status();
  }
  EXPECT_EQ(Who("tok-reader").name, "reader");
  const std::string lower = "bearer tok-ops";
  EXPECT_TRUE(auth_->Authenticate(&lower).ok());
}

TEST_F(AuthorizerTest, RolesAndGrants) {
  const auto& reader = Who("tok-reader");
  EXPECT_TRUE(reader.read_only());
  EXPECT_TRUE(auth_->CheckQuery(reader, "app", /*raw_sql=*/false).ok());
  EXPECT_EQ(auth_->CheckQuery(reader, "app", true).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(auth_->CheckQuery(reader, "reports", false).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(auth_->CheckAdmin(reader, "GetPoolStats").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(auth_->CheckIngest(reader, "app", "events").code(),
            absl::StatusCode::kPermissionDenied);

  const auto& analyst = Who("tok-analyst");
  EXPECT_TRUE(analyst.read_only());
  EXPECT_TRUE(auth_->CheckQuery(analyst, "reports", true).ok());

  const auto& writer = Who("tok-writer");
  EXPECT_FALSE(writer.read_only());
  EXPECT_TRUE(auth_->CheckQuery(writer, "anything", true).ok());

  const auto& loader = Who("tok-loader");
  EXPECT_TRUE(auth_->CheckIngest(loader, "app", "events").ok());
  EXPECT_EQ(auth_->CheckIngest(loader, "app", "accounts").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(auth_->CheckQuery(loader, "app", false).code(), absl::StatusCode::kPermissionDenied);

  const auto& ops = Who("tok-ops");
  EXPECT_TRUE(auth_->CheckAdmin(ops, "GetPoolStats").ok());
  absl::Status denied = auth_->CheckQuery(ops, "app", false);
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(denied.message().find("\"ops\""), std::string::npos) << denied;
}

TEST(AuthorizerConfigTest, DisabledMustBeExplicitAndBadEntriesAreNamed) {
  absl::StatusOr<std::unique_ptr<Authorizer>> none = Authorizer::Create(Config("{}"));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(none.status().message().find("auth.disabled"), std::string::npos);

  absl::StatusOr<std::unique_ptr<Authorizer>> off =
      Authorizer::Create(Config(R"({"disabled": true})"));
  ASSERT_TRUE(off.ok());
  EXPECT_FALSE((*off)->enabled());
  absl::StatusOr<const auth::Principal*> anyone = (*off)->Authenticate(nullptr);
  ASSERT_TRUE(anyone.ok());
  EXPECT_TRUE((*off)->CheckQuery(**anyone, "x", true).ok());
  EXPECT_TRUE((*off)->CheckIngest(**anyone, "x", "t").ok());

  const std::string hash = Sha256Hex("t");
  for (const auto& [json, mentions] : std::vector<std::pair<std::string, std::string>>{
           {R"({"principals": [{"name": "a", "tokenSha256": "abc", "roles": ["read"]}]})",
            "tokenSha256"},
           {R"({"principals": [{"name": "a", "tokenSha256": ")" + hash +
                R"(", "roles": ["root"]}]})",
            "unknown role"},
           {R"({"principals": [{"name": "a", "tokenSha256": ")" + hash + R"("}]})", "no roles"},
           {R"({"principals": [{"name": "a b", "tokenSha256": ")" + hash +
                R"(", "roles": ["read"]}]})",
            "letters"},
           {R"({"principals": [{"name": "a", "tokenSha256": ")" + hash +
                R"(", "roles": ["read"]}, {"name": "b", "tokenSha256": ")" + hash +
                R"(", "roles": ["read"]}]})",
            "another principal"},
           {R"({"disabled": true, "principals": [{"name": "a", "tokenSha256": ")" + hash +
                R"(", "roles": ["read"]}]})",
            "choose one"},
           {R"({"principalsFile": "/nonexistent/principals.json"})", "cannot read"},
           {R"({"principalsEnv": "POOLSIDE_AUTH_TEST_UNSET"})", "not set"},
       }) {
    absl::StatusOr<std::unique_ptr<Authorizer>> a = Authorizer::Create(Config(json));
    EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument) << json;
    EXPECT_NE(a.status().message().find(mentions), std::string::npos) << a.status();
    EXPECT_EQ(a.status().message().find(hash), std::string::npos) << a.status();
  }
}

TEST(AuthorizerConfigTest, PrincipalsFromFileAndEnvironment) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/principals.json";
  std::ofstream(path) << "{\"principals\": [" << Principal("filed", "tok-file", "\"read\"") << "]}";
  setenv("POOLSIDE_AUTH_TEST_PRINCIPALS",
         ("{\"principals\": [" + Principal("env", "tok-env", "\"admin\"") + "]}").c_str(), 1);
  absl::StatusOr<std::unique_ptr<Authorizer>> a =
      Authorizer::Create(Config("{\"principalsFile\": \"" + path +
                                "\", \"principalsEnv\": \"POOLSIDE_AUTH_TEST_PRINCIPALS\"}"));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ((*a)->size(), 2u);
  const std::string file_token = Bearer("tok-file"), env_token = Bearer("tok-env");
  EXPECT_EQ((*(*a)->Authenticate(&file_token))->name, "filed");
  EXPECT_EQ((*(*a)->Authenticate(&env_token))->name, "env");
}

TEST(AuthorizerLimitsTest, TokenBucketPerPrincipalWithRetryDelay) {
  SimulatedClock clock;
  absl::StatusOr<std::unique_ptr<Authorizer>> a =
      Of({Principal("noisy", "tok-noisy", "\"read\"",
                    ", \"limits\": {\"requestsPerSecond\": 2, \"burst\": 3}"),
          Principal("calm", "tok-calm", "\"read\"")},
         &clock);
  ASSERT_TRUE(a.ok()) << a.status();
  const std::string noisy_h = Bearer("tok-noisy"), calm_h = Bearer("tok-calm");
  const auth::Principal& noisy = **(*a)->Authenticate(&noisy_h);
  const auth::Principal& calm = **(*a)->Authenticate(&calm_h);
  absl::Duration retry;
  for (int i = 0; i < 3; ++i) EXPECT_TRUE((*a)->Admit(noisy, &retry).ok()) << i;
  absl::StatusOr<Authorizer::Permit> over = (*a)->Admit(noisy, &retry);
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(retry, absl::Milliseconds(500));
  for (int i = 0; i < 100; ++i) EXPECT_TRUE((*a)->Admit(calm, &retry).ok());
  clock.Advance(absl::Milliseconds(500));
  EXPECT_TRUE((*a)->Admit(noisy, &retry).ok());
  EXPECT_FALSE((*a)->Admit(noisy, &retry).ok());
}

TEST(AuthorizerLimitsTest, ConcurrencySlotsAreReleasedWithThePermit) {
  absl::StatusOr<std::unique_ptr<Authorizer>> a =
      Authorizer::Create(Config("{\"defaultLimits\": {\"maxConcurrent\": 2}, \"principals\": [" +
                                Principal("p", "tok-p", "\"read\"") + "]}"));
  ASSERT_TRUE(a.ok()) << a.status();
  const std::string h = Bearer("tok-p");
  const auth::Principal& p = **(*a)->Authenticate(&h);
  absl::Duration retry;
  absl::StatusOr<Authorizer::Permit> one = (*a)->Admit(p, &retry);
  absl::StatusOr<Authorizer::Permit> two = (*a)->Admit(p, &retry);
  ASSERT_TRUE(one.ok() && two.ok());
  EXPECT_EQ((*a)->Admit(p, &retry).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_GT(retry, absl::ZeroDuration());
  *one = Authorizer::Permit();  // released
  EXPECT_TRUE((*a)->Admit(p, &retry).ok());
}

TEST(AuthorizerLimitsTest, ConcurrentAdmissionsKeepBothLimits) {
  SimulatedClock clock;  // frozen: exactly `burst` calls fit the bucket
  absl::StatusOr<std::unique_ptr<Authorizer>> a =
      Of({Principal("p", "tok-p", "\"read\"",
                    ", \"limits\": {\"requestsPerSecond\": 1, \"burst\": 100, "
                    "\"maxConcurrent\": 4}")},
         &clock);
  ASSERT_TRUE(a.ok()) << a.status();
  const std::string h = Bearer("tok-p");
  const auth::Principal& p = **(*a)->Authenticate(&h);
  std::atomic<int> admitted{0}, in_flight{0}, max_in_flight{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 100; ++i) {
        absl::Duration retry;
        absl::StatusOr<Authorizer::Permit> permit = (*a)->Admit(p, &retry);
        if (!permit.ok()) continue;
        admitted.fetch_add(1);
        const int now = in_flight.fetch_add(1) + 1;
        int seen = max_in_flight.load();
        while (now > seen && !max_in_flight.compare_exchange_weak(seen, now)) {
        }
        in_flight.fetch_sub(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_LE(admitted.load(), 100);
  EXPECT_GT(admitted.load(), 0);
  EXPECT_LE(max_in_flight.load(), 4);
}

}  // namespace
}  // namespace poolside::auth

namespace poolside::auth {
namespace {

google::protobuf::RepeatedPtrField<v1::DatabaseConfig> Databases() {
  google::protobuf::RepeatedPtrField<v1::DatabaseConfig> dbs;
  v1::DatabaseConfig* app = dbs.Add();
  app->set_name("app");
  app->add_roles()->set_name("app_read");
  app->add_roles()->set_name("app_write");
  dbs.Add()->set_name("reports");  // no roles
  return dbs;
}

TEST(AuthorizerRolesTest, DatabaseRolesAndTheDdlGrant) {
  auto a = Of({Principal("reader", "t1", "\"read\", \"sql\"",
                         ", \"databases\": [\"app\"], \"databaseRole\": \"app_read\""),
               Principal("owner", "t2", "\"read\", \"write\", \"sql\", \"ddl\"",
                         ", \"databases\": [\"*\"], \"databaseRoles\": {\"app\": \"app_write\"}")});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE((*a)->CheckDatabaseRoles(Databases()).ok());
  std::string t1 = Bearer("t1"), t2 = Bearer("t2");
  const ::poolside::auth::Principal* reader = *(*a)->Authenticate(&t1);
  const ::poolside::auth::Principal* owner = *(*a)->Authenticate(&t2);
  EXPECT_EQ(reader->DatabaseRoleFor("app"), "app_read");
  EXPECT_FALSE(reader->Has(kDdl));
  EXPECT_EQ(owner->DatabaseRoleFor("app"), "app_write");
  EXPECT_EQ(owner->DatabaseRoleFor("reports"), "");  // the DSN's own user
  EXPECT_TRUE(owner->Has(kDdl));
  EXPECT_EQ((*a)->principals().size(), 2u);
}

TEST(AuthorizerRolesTest, RolesADatabaseDoesNotConfigureAreNamed) {
  // "*" reaches reports, which has no app_read.
  auto everywhere = Of({Principal("reader", "t1", "\"read\"",
                                  ", \"databases\": [\"*\"], \"databaseRole\": \"app_read\"")});
  ASSERT_TRUE(everywhere.ok());
  absl::Status s = (*everywhere)->CheckDatabaseRoles(Databases());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("\"reader\" runs as database role \"app_read\", which database "
                             "reports does not configure"),
            std::string::npos)
      << s;

  auto unknown_db = Of({Principal(
      "w", "t1", "\"write\"", ", \"databases\": [\"app\"], \"databaseRoles\": {\"nope\": \"x\"}")});
  ASSERT_TRUE(unknown_db.ok());
  EXPECT_NE((*unknown_db)->CheckDatabaseRoles(Databases()).message().find("\"nope\""),
            std::string::npos);

  auto bad_role = Of({Principal("w", "t1", "\"ddI\"")});
  EXPECT_EQ(bad_role.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_role.status().message().find("ddl"), std::string::npos);
}

}  // namespace
}  // namespace poolside::auth
