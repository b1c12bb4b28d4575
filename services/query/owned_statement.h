#ifndef POOLSIDE_SERVICES_QUERY_OWNED_STATEMENT_H_
#define POOLSIDE_SERVICES_QUERY_OWNED_STATEMENT_H_

// A statement the read cache runs for itself (EXPLAIN, a catalog query, a
// fill): Work with its own copies of SQL and parameters and its own result,
// since the callers it serves may go away before it finishes.
//
//   auto work = std::make_shared<OwnedStatement>();
//   work->sql = ...; work->params = ...;
//   work->Prepare(deadline, max_rows, max_bytes);
//   work->done = [raw = work.get()](absl::Status s) { use(raw->result); };
//   db->Submit(work);

#include <cstdint>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "google/protobuf/repeated_ptr_field.h"
#include "proto/poolside/v1/query.pb.h"
#include "services/query/database.h"
#include "services/query/result_sinks.h"

namespace poolside::query {

class OwnedStatement : public Work {
 public:
  std::string sql;
  google::protobuf::RepeatedPtrField<v1::Value> params;
  ResultBudget budget;
  v1::ResultSet result;
  std::unique_ptr<ResultSetSink> sink;

  // Makes it a batchable statement over `sql` and `params` into `result`.
  void Prepare(absl::Time until, uint64_t max_rows, uint64_t max_bytes) {
    deadline = until;
    budget.max_rows = max_rows;
    budget.max_bytes = max_bytes;
    sink = std::make_unique<ResultSetSink>(&result, &budget);
    batchable = true;
    statement.sql = sql;
    statement.params = &params;
    statement.sink = sink.get();
  }
};

// Submits `work` to `db`; completes it with the refusal if `db` refuses it.
inline void SubmitOrFail(Database& db, std::shared_ptr<Work> work) {
  if (absl::Status s = db.Submit(work); !s.ok()) {
    if (work->Claim()) work->done(s);
  }
}

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_OWNED_STATEMENT_H_
