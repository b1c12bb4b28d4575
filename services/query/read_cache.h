#ifndef POOLSIDE_SERVICES_QUERY_READ_CACHE_H_
#define POOLSIDE_SERVICES_QUERY_READ_CACHE_H_

// Read caching for the query service, through the cache sidecar, without ever
// serving what a committed write changed (docs/cache.md has the design).
//
// ReadCache orchestrates a cached read over its parts:
//   cached_read.h      one read's state, from Execute to its answer
//   statement_plans.h  what a statement's plan reads (EXPLAIN, once), its tags
//   invalidation.h     how each database learns of writes (the WAL relay's
//                      NOTIFYs, or triggers), whether its reads may use the
//                      cache now, the applied LSN that consistency tokens wait for
//   single_flight.h    one database read for identical concurrent misses
//   sidecar_breaker.h  skipping a failing sidecar for a while
//   near_cache.h, cache_client.h  the in-process cache and the sidecar
// The steps of a read: Execute (waits for the request's min_lsn if the
// applied LSN is behind it) -> AnswerWithoutSidecar (a near-cache hit, or a
// bypass) -> LookUp (the plan) -> WithPlan (the sidecar's Get) ->
// OnSidecarLookup (a hit; a stale entry and its refresh; a miss) ->
// ReadShared (single flight) -> Land (fills, answers every reader).
//
// - A cached result is keyed by database, role, SQL and parameters, and
//   tagged (row_keys.h) with the database, each table its plan reads, its
//   row's key when the statement looks up one row by its table's whole
//   primary key (else each table's table-level tag), and the caller's tags.
// - Misses fill with the generation their lookup saw, so a result read
//   before an invalidation is refused by the sidecar (and the near cache) if
//   it arrives after it: fills are fenced, and a flush fences every fill
//   begun before it.
// - Identical concurrent misses share one database query (single flight),
//   bounded by the first caller's deadline; results past a caller's own row
//   or byte limit fail that caller only. A caller joins a flight only if it
//   began after this replica's last own write to the database and at or
//   past the caller's min_lsn.
// - Only reads of cached tables alone whose writes are seen (published ones,
//   in "wal" mode) are cached; any other read runs on the database (BYPASS),
//   as do reads of a database whose invalidation is not ready.
// - Consistency tokens ("wal" mode): a read with a min_lsn beyond the
//   database's applied LSN asks its TokenFence (token_fence.h) for a fence
//   and waits up to cache.wal.tokenWaitMs for the applied LSN to get there;
//   then, or if the fence failed, it runs on the database. Responses say
//   where a result came from and the position it reflects at least.
// - Writes through this replica also invalidate their tables before the
//   caller gets the reply (read-your-writes on this replica without a
//   token); a statement whose tables cannot be learned (DDL, CALL, ...)
//   flushes its database's entries. When the WAL relay delivers the same
//   commit later, what that invalidation covered is not applied again, so
//   entries read since stay (OwnWriteCover, invalidation_state.h).
// - Near cache (`cache.near`): results are also kept parsed in this process
//   and a hit there is answered on the calling thread (outcome HIT, counted
//   in near_hits too). Filled by sidecar hits and database fills, with the
//   near cache's generation taken before the lookup. Every invalidation of
//   this replica reaches it before the sidecar and again once the sidecar
//   answered; the sidecar's own arrive through its WatchInvalidations
//   stream, and while that stream is down the near cache does not serve.
// - Databases with replicas (database.h): a fill may read a replica only
//   if its replay position covers every invalidation applied here when the
//   lookup ran ("wal" mode; trigger mode fills read the primary), and every
//   write through this service (Replicas::WriteFence).
// - The sidecar being down, slow or restarted never fails a call: the call
//   runs on the database (outcome BYPASS; see sidecar_breaker.h). An
//   invalidation that could not be delivered makes the database bypass the
//   cache until a flush succeeds.
//
// Thread-safe. Applies, Execute and ReflectedLsn are called on the queue
// thread and never block (a near-cache hit is answered there); the sidecar's
// and the database's callbacks go on wherever they run; AfterWrite runs on
// database workers; CheckInvalidation blocks (start-up only).

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/sql/statement_analyzer.h"
#include "google/protobuf/repeated_ptr_field.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/query.pb.h"
#include "services/query/cache_bypass.h"
#include "services/query/cache_client.h"
#include "services/query/cached_read.h"
#include "services/query/database.h"
#include "services/query/in_flight.h"
#include "services/query/invalidation.h"
#include "services/query/invalidation_state.h"
#include "services/query/near_cache.h"
#include "services/query/sidecar_breaker.h"
#include "services/query/single_flight.h"
#include "services/query/statement_plans.h"

namespace poolside::query {

class ReadCache {
 public:
  // Why a cacheable read ran on the database.
  using Bypass = CacheBypass;
  static const char* BypassName(Bypass reason) { return CacheBypassName(reason); }

  struct Counters {
    std::atomic<uint64_t> hits{0}, stale{0}, misses{0}, bypass{0}, coalesced{0};
    std::atomic<uint64_t> fills{0}, fills_refused{0}, sidecar_errors{0};
    std::atomic<uint64_t> notifications{0}, write_invalidations{0}, flushes{0};
    // Hits answered by the near cache (also counted in hits).
    std::atomic<uint64_t> near_hits{0};
    // Cached reads tagged by row (a subset of the misses' fills).
    std::atomic<uint64_t> keyed_fills{0};
    // By reason; bypass counts the ones that reached Execute.
    std::atomic<uint64_t> bypass_by_reason[static_cast<int>(Bypass::kCount)] = {};
    // Reads that waited for their min_lsn, and of them those that got it.
    std::atomic<uint64_t> token_waits{0}, token_waits_reached{0};
  };

  // How one database's cache learns of writes, for stats and the status page.
  using InvalidationState = InvalidationStatus;

  // `databases` outlive this.
  ReadCache(const v1::QueryCacheConfig& config, std::unique_ptr<CacheClient> client,
            const absl::flat_hash_map<std::string, std::unique_ptr<Database>>& databases,
            const v1::LimitsConfig& limits);
  ~ReadCache();  // stops the listeners and relays; waits for sidecar calls in flight
  ReadCache(const ReadCache&) = delete;
  ReadCache& operator=(const ReadCache&) = delete;

  // "wal" mode: checks each database it can reach now; one whose wal_level is
  // not logical is handled per cache.walUnavailable: FAILED_PRECONDITION
  // naming it ("fail"), or switched to "trigger" or "off" (logged).
  // Databases it cannot reach are checked again when their listener
  // connects. Before Start().
  absl::Status CheckInvalidation(absl::Time deadline);

  // Starts one listener per database with cached tables, and its WalRelay.
  void Start();

  // Whether `request` (whose text `analysis` describes) goes through the
  // cache: a read (SELECT, VALUES, TABLE; no locking clause, INTO or
  // data-modifying WITH) asking for it, on a database whose invalidations
  // are up. False: run it plainly, outcome BYPASS.
  bool Applies(const Database& db, const v1::ExecuteRequest& request,
               const sql::Analysis& analysis) const;

  // The cached path of Execute. `work` is the caller's queued Work, completed
  // through Claim() + done (or, for a fallback, by `run_plain`, which submits
  // it to the database as an ordinary statement writing into `response`).
  // `request` and `response` stay valid until work->done ran or Abandon() won.
  // `read_only`: the caller's access scope (CallAccess): part of the cache key
  // (as is db's role), and the fill of such a key runs in a read-only
  // transaction. Sets response's cache outcome, source and lsn for what it
  // answers itself.
  void Execute(Database* db, const v1::ExecuteRequest& request, std::shared_ptr<Work> work,
               v1::ExecuteResponse* response, uint64_t max_rows, uint64_t max_bytes, bool read_only,
               std::function<void()> run_plain);

  // The position a read of `db` that starts now on the database reflects at
  // least: the applied LSN ("wal" mode, while the stream is up) or the
  // caller's min_lsn, whichever is later; 0 when nothing is known.
  uint64_t ReflectedLsn(const Database& db, uint64_t min_lsn) const;

  // After write statements committed through this replica: invalidates their
  // tables (or the database) in the sidecar, then runs `done` (always; a
  // failed invalidation makes the database bypass the cache until flushed).
  // `commit_snapshot`: pg_current_snapshot() as text, read after the commit
  // (kCommitLsnSql), or empty: with it, the WAL relay's later changes of
  // those tables by transactions finished in it are not applied again
  // ("wal" mode; OwnWriteCover).
  struct Written {
    std::string sql;
    google::protobuf::RepeatedPtrField<v1::Value> params;
  };
  void AfterWrite(Database* db, std::vector<Written> statements, std::string commit_snapshot,
                  std::function<void()> done);

  // True for statements whose success must invalidate: anything but a read.
  static bool NeedsInvalidation(const sql::Analysis& analysis) {
    return analysis.kind != sql::StatementKind::kRead;
  }

  const Counters& counters() const { return counters_; }
  std::vector<InvalidationState> InvalidationStates() const;

  // Whether reads of `database` currently use the cache.
  bool DatabaseReady(absl::string_view database) const;

  // Null when `cache.near.capacityBytes` is 0.
  const NearCache* near_cache() const { return near_.get(); }

 private:
  struct Fill;

  Invalidation::Sinks InvalidationSinks();
  std::string KeyFor(const Database& db, const v1::ExecuteRequest& request, bool read_only) const;

  // The steps of a cached read (cached_read.h), in order. Each either
  // answers the read (from the near cache or the sidecar), hands it to the
  // database (RunOnDatabase, counting why), or passes it on.
  //
  // Answers `read` if it can without the sidecar: runs it on the database
  // when the database is not ready, the key too long or the sidecar skipped;
  // answers a near-cache hit. False: it goes on to LookUp.
  bool AnswerWithoutSidecar(CachedRead& read);
  // Learns the statement's plan (remembered, or EXPLAIN), then WithPlan.
  void LookUp(std::shared_ptr<CachedRead> read);
  // A plain read of watched tables asks the sidecar.
  void WithPlan(std::shared_ptr<CachedRead> read, StatementPlans::Learned plan);
  // A hit answers; a stale entry answers and is refreshed; a miss reads.
  void OnSidecarLookup(std::shared_ptr<CachedRead> read, absl::StatusOr<CacheLookup> found);
  // Joins or starts the flight for about.key (single_flight.h); `reader`
  // (about itself, or null for a background refresh of a stale entry) gets
  // its result. `generation`: the sidecar's at the lookup.
  void ReadShared(const CachedRead& about, std::shared_ptr<CachedRead> reader, uint64_t generation,
                  std::vector<std::string> tags, bool keyed, absl::Time deadline);
  // The flight's read finished: fills the near cache and the sidecar,
  // answers its readers.
  void Land(Fill& fill, absl::Status status);
  void RunOnDatabase(CachedRead& read, Bypass reason);
  void CountBypass(Bypass reason) const;
  // The outcome of a sidecar call: counted, and told to the breaker.
  void SidecarResult(bool ok);
  // The same for a lookup's or a fill's status; a refusal of the request as
  // invalid is an error but no failure of the sidecar.
  void SidecarResult(const absl::Status& s);

  const v1::QueryCacheConfig config_;
  const v1::LimitsConfig limits_;
  // Sidecar calls, statements, waits and flights not yet finished: their
  // callbacks reference this (the destructor waits for them).
  InFlight in_flight_;
  // Before client_: the client's watch thread feeds it until ~ReadCache stops it.
  const std::unique_ptr<NearCache> near_;
  const std::unique_ptr<CacheClient> client_;
  SidecarBreaker breaker_;
  mutable Counters counters_;
  StatementPlans plans_;
  SingleFlight flights_;
  // After what its sinks point at; stopped by the destructor.
  Invalidation invalidation_;
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_READ_CACHE_H_
