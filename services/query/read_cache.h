#ifndef POOLSIDE_SERVICES_QUERY_READ_CACHE_H_
#define POOLSIDE_SERVICES_QUERY_READ_CACHE_H_

// Read caching for the query service, through the cache sidecar, without ever
// serving what a committed write changed.
//
// - A cached result is keyed by database, SQL and parameters, and tagged with
//   the tables its plan reads ("t:<db>:<schema>.<table>", learned once per
//   statement with EXPLAIN (FORMAT JSON, VERBOSE) — views show up as their base
//   tables), the database ("db:<db>") and the caller's extra tags.
// - Misses fill with the generation their lookup saw, so a result read before
//   an invalidation is refused by the sidecar if it arrives after it.
// - Identical concurrent misses share one database query (single flight),
//   bounded by the first caller's deadline; results past a caller's own row or
//   byte limit fail that caller only.
// - Writes: on the tables configured in `cache.tables`, a statement-level
//   trigger sends NOTIFY (delivered on commit only); one LISTEN connection per
//   such database invalidates the tables' tags. After a (re)subscription the
//   database's entries are flushed, and until then its reads bypass the cache.
//   Only statements reading nothing but such watched tables are cached; a read
//   of any other table (or of a partition, whose direct writes the parent's
//   trigger does not see) runs on the database (BYPASS).
//   A write through this replica also invalidates its tables before the
//   caller gets its reply (read-your-writes through any replica sharing the
//   sidecar); a statement whose tables cannot be learned (DDL, CALL, ...)
//   flushes its database's entries.
// - Near cache (near_cache.h, `cache.near`): results are also kept parsed in
//   this process and a hit there is answered on the calling thread (outcome
//   HIT, counted in near_hits too). Filled by sidecar hits and database
//   fills, with the near cache's generation taken before the lookup (so a
//   fill loses against a later invalidation). Every invalidation of this
//   replica (NOTIFY, writes, flushes) is applied to it before the sidecar
//   gets it, and again once the sidecar answered (a read that began in
//   between may have found the old entry in the sidecar);
//   invalidations the sidecar applies for anyone else arrive through its
//   WatchInvalidations stream, and while that stream is down the near cache
//   does not serve (it is emptied when the stream is back).
// - The sidecar being down, slow or restarted never fails a call: the call
//   runs on the database (outcome BYPASS); after `failure_threshold`
//   consecutive failures the sidecar is skipped for `retry_after_ms`. An
//   invalidation that could not be delivered makes the database bypass the
//   cache until a flush succeeds.
//
// Thread-safe.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/query.pb.h"
#include "common/sql/statement_analyzer.h"
#include "services/query/cache_client.h"
#include "services/query/database.h"
#include "services/query/near_cache.h"
#include "services/query/result_sinks.h"

namespace poolside::query {

// What a statement's plan says about it.
struct StatementTables {
  bool explained = false;     // false: EXPLAIN refused it (DDL, CALL, ...)
  bool modifies = false;      // a ModifyTable node (INSERT/UPDATE/DELETE/MERGE, data-modifying CTE)
  bool locks_rows = false;    // FOR UPDATE/SHARE
  std::vector<std::string> tables;  // "schema.table", sorted, unique
};

// Parses EXPLAIN (FORMAT JSON, VERBOSE) output. Exposed for tests.
absl::StatusOr<StatementTables> ParsePlanTables(const std::string& explain_json);

class ReadCache {
 public:
  struct Counters {
    std::atomic<uint64_t> hits{0}, stale{0}, misses{0}, bypass{0}, coalesced{0};
    std::atomic<uint64_t> fills{0}, fills_refused{0}, sidecar_errors{0};
    std::atomic<uint64_t> notifications{0}, write_invalidations{0}, flushes{0};
    // Hits answered by the near cache (also counted in hits).
    std::atomic<uint64_t> near_hits{0};
  };

  // `databases` outlive this.
  ReadCache(const v1::QueryCacheConfig& config, std::unique_ptr<CacheClient> client,
            const absl::flat_hash_map<std::string, std::unique_ptr<Database>>& databases,
            const v1::LimitsConfig& limits);
  ~ReadCache();  // stops the listeners; waits for sidecar calls in flight
  ReadCache(const ReadCache&) = delete;
  ReadCache& operator=(const ReadCache&) = delete;

  // Starts one LISTEN thread per database with cached tables.
  void Start();

  // Whether `request` (whose text `analysis` describes) goes through the
  // cache: a read (SELECT, VALUES, TABLE; no locking clause, INTO or
  // data-modifying WITH) asking for it. False: run it
  // plainly, outcome BYPASS.
  bool Applies(const Database& db, const v1::ExecuteRequest& request,
               const sql::Analysis& analysis) const;

  // The cached path of Execute. `work` is the caller's queued Work, completed
  // through Claim() + done (or, for a fallback, by `run_plain`, which submits
  // it to the database as an ordinary statement writing into `response`).
  // `request` and `response` stay valid until work->done ran or Abandon() won.
  // `read_only`: the caller's access scope (CallAccess): part of the cache key
  // (as is db's role), and the fill of such a key runs in a read-only
  // transaction.
  void Execute(Database* db, const v1::ExecuteRequest& request, std::shared_ptr<Work> work,
               v1::ExecuteResponse* response, uint64_t max_rows, uint64_t max_bytes,
               bool read_only, std::function<void()> run_plain);

  // After write statements committed through this replica: invalidates their
  // tables (or the database) in the sidecar, then runs `done` (always; a
  // failed invalidation makes the database bypass the cache until flushed).
  struct Written {
    std::string sql;
    google::protobuf::RepeatedPtrField<v1::Value> params;
  };
  void AfterWrite(Database* db, std::vector<Written> statements, std::function<void()> done);

  // True for statements whose success must invalidate: anything but a read.
  static bool NeedsInvalidation(const sql::Analysis& analysis) {
    return analysis.kind != sql::StatementKind::kRead;
  }

  const Counters& counters() const { return counters_; }

  // Test hook: whether reads of `database` currently use the cache.
  bool DatabaseReady(absl::string_view database) const;

  // Null when `cache.near.capacityBytes` is 0.
  const NearCache* near_cache() const { return near_.get(); }

 private:
  struct Flight;
  struct DbState;
  struct Participant;

  std::string KeyFor(const Database& db, const v1::ExecuteRequest& request, bool read_only) const;
  // Learns (once) and returns the statement's tables; runs `then` with them.
  void Tables(Database* db, const std::string& sql,
              const google::protobuf::RepeatedPtrField<v1::Value>& params, absl::Time deadline,
              std::function<void(absl::StatusOr<StatementTables>)> then);
  std::vector<std::string> TagsFor(const Database& db, const StatementTables& t,
                                   const v1::CachePolicy& policy) const;
  void Lookup(Database* db, std::shared_ptr<const v1::ExecuteRequest> request, std::string key,
              std::shared_ptr<Work> work,
              v1::ExecuteResponse* response, uint64_t max_rows, uint64_t max_bytes,
              std::function<void()> run_plain, StatementTables tables, uint64_t near_generation);
  // Joins or starts the flight for `key`. `participant` may be empty (a
  // background refresh of a stale entry). `near_generation`: the near
  // cache's, taken before the lookup that led here.
  void Fly(Database* db, const v1::ExecuteRequest& request, const std::string& key,
           uint64_t generation, uint64_t near_generation, std::vector<std::string> tags,
           absl::Time deadline, std::unique_ptr<Participant> participant);
  void Land(const std::shared_ptr<Flight>& flight, absl::Status status);
  void Deliver(Participant& p, const absl::Status& status, const v1::ResultSet& result,
               v1::CacheOutcome outcome);
  // Claims `work` and answers it with `result` (within the caller's limits).
  static void Answer(Work& work, v1::ExecuteResponse* response, uint64_t max_rows,
                     uint64_t max_bytes, const absl::Status& status, const v1::ResultSet& result,
                     v1::CacheOutcome outcome);

  bool SidecarUsable();
  void SidecarResult(bool ok);
  void Listen(DbState* state);
  // Flushes the database's entries; true when the sidecar confirmed.
  bool FlushDatabase(DbState* state, const std::string& source);
  void MarkSuspect(DbState* state);
  DbState* StateOf(const Database& db) const;

  const v1::QueryCacheConfig config_;
  const v1::LimitsConfig limits_;
  // Before client_: the client's watch thread feeds it until ~ReadCache stops it.
  const std::unique_ptr<NearCache> near_;
  const std::unique_ptr<CacheClient> client_;
  absl::flat_hash_map<std::string, std::unique_ptr<DbState>> dbs_;
  Counters counters_;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Flight>> flights_ ABSL_GUARDED_BY(mu_);
  // (database, sql) -> tables; bounded, cleared when full.
  absl::flat_hash_map<std::string, StatementTables> tables_ ABSL_GUARDED_BY(mu_);
  int consecutive_failures_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time skip_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();

  std::atomic<int> in_flight_{0};  // sidecar calls and flights not yet finished
  absl::Notification stopping_;
  std::vector<std::thread> threads_;
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_READ_CACHE_H_
