#include "services/query/named_queries.h"

#include "common/config/json_config.h"
#include "gtest/gtest.h"
#include "tests/fixtures/values.h"

namespace poolside::query {
namespace {

using ::poolside::testing::Int;
using ::poolside::testing::Null;
using ::poolside::testing::Params;

google::protobuf::RepeatedPtrField<v1::NamedQuery> Config(const std::string& json) {
  v1::QueryServiceConfig c;
  EXPECT_TRUE(config::ParseJsonConfig(json, &c).ok()) << json;
  return c.named_queries();
}

TEST(NamedQueriesTest, ResolvesWithTypedParameters) {
  absl::StatusOr<NamedQueries> q = NamedQueries::Create(Config(R"({"namedQueries": [
      {"name": "account_by_id", "sql": "SELECT owner FROM accounts WHERE id = $1",
       "params": [{"name": "id", "type": "int64"}]},
      {"name": "rename", "sql": "UPDATE accounts SET owner = $2 WHERE id = $1",
       "params": [{"name": "id", "type": "int64"}, {"name": "owner", "type": "text", "nullable": true}]}]})"));
  ASSERT_TRUE(q.ok()) << q.status();
  absl::StatusOr<const std::string*> sql = q->Resolve("account_by_id", Params({Int(7)}));
  ASSERT_TRUE(sql.ok()) << sql.status();
  EXPECT_EQ(**sql, "SELECT owner FROM accounts WHERE id = $1");
  EXPECT_TRUE(q->Resolve("rename", Params({Int(1), Null()})).ok());

  EXPECT_EQ(q->Resolve("nope", {}).status().code(), absl::StatusCode::kNotFound);
  absl::Status wrong_type = q->Resolve("account_by_id", Params({testing::Text("7")})).status();
  EXPECT_EQ(wrong_type.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong_type.message().find("parameter 1 (id) must be int64; got text"),
            std::string::npos)
      << wrong_type;
  EXPECT_EQ(q->Resolve("account_by_id", Params({Null()})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(q->Resolve("account_by_id", Params({Int(1), Int(2)})).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(NamedQueriesTest, BadConfigurationIsNamed) {
  for (
      const auto& [json, mentions] : std::vector<std::pair<std::string, std::string>>{
          {R"({"namedQueries": [{"name": "a b", "sql": "SELECT 1"}]})", "name must"},
          {R"({"namedQueries": [{"name": "a"}]})", "sql is empty"},
          {R"({"namedQueries": [{"name": "a", "sql": "SELECT $1", "params": [{"type": "int"}]}]})",
           "unknown type"},
          {R"({"namedQueries": [{"name": "a", "sql": "SELECT 1"}, {"name": "a", "sql": "SELECT 2"}]})",
           "used twice"},
          {R"({"namedQueries": [{"name": "a", "sql": "SELEC 1"}]})", "syntax error"},
          {R"({"namedQueries": [{"name": "a", "sql": "SELECT 1; SELECT 2"}]})", "2 statements"},
          {R"({"namedQueries": [{"name": "a", "sql": ";COMMIT"}]})", "COMMIT"},
          {R"({"namedQueries": [{"name": "a", "sql": "SET search_path = x"}]})", "SET"},
          {R"({"namedQueries": [{"name": "a", "readOnly": true, "sql": "DELETE FROM t"}]})",
           "readOnly, but DELETE is not a read"}}) {
    absl::StatusOr<NamedQueries> q = NamedQueries::Create(Config(json));
    EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument) << json;
    EXPECT_NE(q.status().message().find(mentions), std::string::npos) << q.status();
  }
  const std::string declared = R"json({"namedQueries": [
      {"name": "a", "readOnly": true, "sql": "SELECT f($1)", "params": [{"type": "int64"}]}]})json";
  EXPECT_TRUE(NamedQueries::Create(Config(declared)).ok());
}

}  // namespace
}  // namespace poolside::query
