#ifndef POOLSIDE_SERVICES_QUERY_CACHED_READ_H_
#define POOLSIDE_SERVICES_QUERY_CACHED_READ_H_

// One cached read, from ReadCache::Execute to its answer: the caller's queued
// Work, response, limits and fallback; its request (borrowed while the call
// is on the stack, copied once the read may outlive it); its key; and what
// the lookup learns on the way (the plan, the near cache's generation, the
// position its answer reflects).
//
// ReadCache passes it from step to step. It is built on the stack, so that a
// read answered at once (a near-cache hit, a bypass) costs no allocation, and
// moved to the heap (Detach) when it goes on to the sidecar or waits; from
// then on it counts as work in flight (InFlight) until destroyed, so
// whichever callback holds it last ends the count, on every path. It is
// answered once: Answer() or RunPlain().
//
// Not thread-safe: one step at a time holds it.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/telemetry/trace.h"
#include "proto/poolside/v1/query.pb.h"
#include "services/query/database.h"
#include "services/query/in_flight.h"
#include "services/query/statement_plans.h"

namespace poolside::query {

class CachedRead {
 public:
  // `request` and `response` stay valid until the work's done ran or
  // Abandon() won; `work` is completed through Claim() + done, or by
  // `run_plain`, which submits it to the database as an ordinary statement.
  CachedRead(Database* db, const v1::ExecuteRequest& request, std::shared_ptr<Work> work,
             v1::ExecuteResponse* response, uint64_t max_rows, uint64_t max_bytes,
             std::function<void()> run_plain);
  CachedRead(CachedRead&&) = default;
  CachedRead& operator=(CachedRead&&) = delete;
  CachedRead(const CachedRead&) = delete;

  // Moves `read` to the heap with its own copy of the request (the call,
  // whose request dies with it, may be cancelled while the read goes on),
  // counted in `in_flight` until the copy is destroyed.
  static std::shared_ptr<CachedRead> Detach(CachedRead&& read, InFlight& in_flight);

  Database* db() const { return db_; }
  const v1::ExecuteRequest& request() const { return owned_ ? *owned_ : *borrowed_; }
  const Work& work() const { return *work_; }
  absl::Time deadline() const { return work_->deadline; }
  uint64_t min_lsn() const { return request().min_lsn(); }

  // Claims the work and answers it with `result` (within the caller's row and
  // byte limits, else RESOURCE_EXHAUSTED), saying where it came from. False,
  // touching nothing, when the work was claimed already (the caller went
  // away).
  bool Answer(const absl::Status& status, const v1::ResultSet& result, v1::CacheOutcome outcome,
              v1::ResultSource source, uint64_t lsn, const std::string& member = "");
  // Hands it to the database as an ordinary statement (outcome BYPASS).
  void RunPlain() { run_plain_(); }

  // While it waits for another read's result (single flight): a span of the
  // call's trace, ended when this is destroyed.
  void StartWaiting();

  // Learned on the way.
  std::string key;
  StatementPlans::Plan plan;     // what the statement reads
  uint64_t near_generation = 0;  // the near cache's, before anything was read; 0: no near fill
  uint64_t lsn = 0;              // the applied LSN before anything was read
  telemetry::Span lookup;        // the sidecar lookup

 private:
  Database* db_;
  const v1::ExecuteRequest* borrowed_;
  std::optional<v1::ExecuteRequest> owned_;
  std::shared_ptr<Work> work_;
  v1::ExecuteResponse* response_;
  uint64_t max_rows_;
  uint64_t max_bytes_;
  std::function<void()> run_plain_;
  telemetry::Span wait_;
  InFlight::Token in_flight_;
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_CACHED_READ_H_
