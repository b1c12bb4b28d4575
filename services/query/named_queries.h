#ifndef POOLSIDE_SERVICES_QUERY_NAMED_QUERIES_H_
#define POOLSIDE_SERVICES_QUERY_NAMED_QUERIES_H_

// Statements callable by name (QueryServiceConfig.named_queries) with typed
// parameters, and the statement rule for read-only principals. Principals
// without the `sql` role run only named queries. No gRPC here.
//
//   absl::StatusOr<NamedQueries> named = NamedQueries::Create(config.named_queries());
//   absl::StatusOr<const std::string*> sql = named->Resolve("account_by_id", params);
//
// Immutable after Create; thread-safe.

#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/repeated_ptr_field.h"
#include "proto/poolside/v1/common.pb.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::query {

class NamedQueries {
 public:
  // INVALID_ARGUMENT naming the entry: bad or duplicate name, empty SQL, SQL
  // that is not one statement poolside may run (common/sql's Permitted, in a
  // transaction, with the ddl grant), unknown parameter type, readOnly on a
  // statement that is not a read.
  static absl::StatusOr<NamedQueries> Create(
      const google::protobuf::RepeatedPtrField<v1::NamedQuery>& config);

  // The SQL of `name` once `params` match its declaration: NOT_FOUND for an
  // unknown name, INVALID_ARGUMENT naming the parameter that does not match.
  absl::StatusOr<const std::string*> Resolve(
      absl::string_view name, const google::protobuf::RepeatedPtrField<v1::Value>& params) const;

  size_t size() const { return queries_.size(); }

 private:
  struct Param {
    std::string name;
    v1::Value::KindCase kind;
    bool nullable;
  };
  struct Query {
    std::string sql;
    std::vector<Param> params;
  };
  absl::flat_hash_map<std::string, Query> queries_;
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_NAMED_QUERIES_H_
