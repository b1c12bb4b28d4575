#ifndef POOLSIDE_SERVICES_QUERY_QUERY_ENGINE_H_
#define POOLSIDE_SERVICES_QUERY_QUERY_ENGINE_H_

// The query service's core: named databases, request validation and limits,
// execution through each database's pool and workers, statement statistics and
// health checks. Knows no gRPC: the adapter (query_service.h) converts calls.
//
// Asynchronous calls return the queued Work (so the transport can cancel it) or
// an error for a request that cannot run; their outcome arrives through `done`
// on a worker thread. Output messages must stay valid until `done` runs, or
// until Work::Abandon() returned true.
//
// Thread-safe.

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/auth/authorizer.h"
#include "common/db/catalog.h"
#include "common/db/database_set.h"
#include "common/sql/statement_analyzer.h"
#include "common/sync/bounded_executor.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/query.pb.h"
#include "services/query/cache_client.h"
#include "services/query/database.h"
#include "services/query/read_cache.h"
#include "services/query/replicas.h"
#include "services/query/result_sinks.h"
#include "services/query/statement_stats.h"

namespace poolside::query {

// How a call runs for its caller (set by the adapter from the caller's
// principal, common/auth).
struct CallAccess {
  // Statements run in read-only transactions (BEGIN READ ONLY), so PostgreSQL
  // itself refuses writes; statements the analyzer classifies as writes or
  // DDL are refused up front with PERMISSION_DENIED. Cached reads are keyed
  // under this scope and their fills run read-only too.
  bool read_only = false;
  // The principal holds the `ddl` role (sql::Grants::ddl).
  bool ddl = false;
  // The caller's principal: its database role picks the pool its statements
  // run on (Principal::DatabaseRoleFor). Null: the DSN's own user.
  const auth::Principal* principal = nullptr;
};

class QueryEngine {
 public:
  using Done = std::function<void(absl::Status)>;

  // `config` must have been through FinalizeQueryConfig. `cache` (the sidecar
  // client) is required when config.cache is set, ignored otherwise.
  explicit QueryEngine(v1::QueryServiceConfig config, std::unique_ptr<CacheClient> cache = nullptr);
  ~QueryEngine();

  // Starts the topology monitors, warms the pools (db::DatabaseSet, in the
  // background; the service serves meanwhile) and starts pool maintenance.
  void Start();

  // Runs `ready` once every database's warm-up has finished (min_idle
  // connections made, or given up after pool.startup_retry_ms: that database
  // then connects on demand) — at once if that already happened, else on the
  // warm-up thread. Not run if the engine is destroyed first. For readiness.
  void WhenWarm(std::function<void()> ready);

  // Opens one connection per pool (each database's DSN user and every
  // configured role) and checks its role: FAILED_PRECONDITION naming the
  // database and role when one is privileged without allowPrivilegedRole
  // (the service must not start). A database that cannot be reached now is
  // logged and skipped: its pools check every connection they make anyway.
  absl::Status VerifyRoles(absl::Time deadline);

  // The deadline a call runs under: the caller's, or the configured default if
  // the caller set none; never further than limits.max_timeout_ms.
  absl::Time EffectiveDeadline(absl::Time requested) const;

  // `request.sql` is what runs (the adapter resolves named queries first).
  absl::StatusOr<std::shared_ptr<Work>> Execute(const v1::ExecuteRequest& request,
                                                absl::Time deadline, std::string holder,
                                                v1::ExecuteResponse* response, Done done,
                                                const CallAccess& access = {});
  absl::StatusOr<std::shared_ptr<Work>> ExecuteStream(const v1::ExecuteRequest& request,
                                                      absl::Time deadline, std::string holder,
                                                      ChunkWriter* writer, Done done,
                                                      const CallAccess& access = {});
  absl::StatusOr<std::shared_ptr<Work>> ExecuteTransaction(
      const v1::ExecuteTransactionRequest& request, absl::Time deadline, std::string holder,
      v1::ExecuteTransactionResponse* response, Done done, const CallAccess& access = {});

  absl::Status GetPoolStats(const v1::GetPoolStatsRequest& request,
                            v1::GetPoolStatsResponse* response);
  absl::Status GetStatementStats(const v1::GetStatementStatsRequest& request,
                                 v1::GetStatementStatsResponse* response);
  // Checks the databases concurrently (config limits.check_concurrency) on a
  // thread of the engine's (at most kMaxConcurrentChecks calls at once, more
  // are RESOURCE_EXHAUSTED); `done` runs when all are checked or the deadline passed.
  absl::Status CheckDatabases(const v1::CheckDatabasesRequest& request, absl::Time deadline,
                              v1::CheckDatabasesResponse* response, Done done);

  // Index advice for one database (index_advice.h) on a session of its own
  // under the caller's database role, on a thread of its own: one advice or
  // index creation at a time (RESOURCE_EXHAUSTED while one runs).
  absl::StatusOr<std::shared_ptr<Work>> GetIndexAdvice(const v1::GetIndexAdviceRequest& request,
                                                       absl::Time deadline,
                                                       v1::GetIndexAdviceResponse* response,
                                                       Done done, const CallAccess& access = {});
  // CREATE INDEX CONCURRENTLY (common/db/hypothetical_index.h) likewise.
  absl::StatusOr<std::shared_ptr<Work>> CreateIndex(const v1::CreateIndexRequest& request,
                                                    absl::Time deadline,
                                                    v1::CreateIndexResponse* response, Done done,
                                                    const CallAccess& access = {});

  const v1::QueryServiceConfig& config() const { return config_; }
  // The topology of each database with replicas, by name.
  const absl::flat_hash_map<std::string, std::shared_ptr<Replicas>>& replicas() const {
    return replicas_;
  }
  // Null when no cache is configured.
  ReadCache* read_cache() { return cache_.get(); }
  StatementStatsRegistry& statement_stats() { return stats_; }

 private:
  // The configured database `name` (empty: the default one).
  absl::StatusOr<Database*> Find(absl::string_view name);
  // Its pool for the caller's database role (made on first use).
  absl::StatusOr<Database*> Find(absl::string_view name, const CallAccess& access);
  // The limits, then the analyzer's verdict for `scope` and the caller.
  // With `may_defer`, a long text the analyzer has not seen is not parsed
  // here: OK with a null analysis, and the caller checks it again (without)
  // on the database worker, so the queue thread never parses a large text.
  absl::StatusOr<std::shared_ptr<const sql::Analysis>> CheckStatement(absl::string_view sql,
                                                                      int params,
                                                                      const CallAccess& access,
                                                                      sql::Scope scope,
                                                                      bool may_defer) const;
  // The database an Execute or ExecuteStream call names and its statement's
  // analysis (CheckStatement's, null when deferred to the worker).
  struct CheckedStatement {
    Database* database;
    std::shared_ptr<const sql::Analysis> analysis;
  };
  absl::StatusOr<CheckedStatement> CheckExecute(const v1::ExecuteRequest& request,
                                                const CallAccess& access);
  // Whether `a` may share an implicit transaction with other callers'
  // statements on `database`: its syntax allows it and the database's
  // catalog snapshot proves its functions, operators and relations free of
  // side effects. False until that snapshot is loaded.
  bool MayShareSync(const std::string& database, const sql::Analysis& a) const;
  // `request` runs a named query configured readOnly (it may run on a
  // replica).
  bool DeclaredReadOnly(const v1::ExecuteRequest& request) const;
  // After a write `work` may have run (outcome `s`): the cache drops what
  // `written` changed (near cache, sidecar) before `done` hears of it, so the
  // caller's next read through this replica cannot find the old rows.
  void InvalidateThen(Database* database, std::vector<ReadCache::Written> written, const Work& work,
                      absl::Status s, Done done);
  // Loads the catalog snapshots that are missing or older than kCatalogAge.
  void RefreshCatalogs();
  // Every pool: the DSN users' and the roles' made so far.
  std::vector<Database*> AllDatabases();
  void MaintenanceLoop();
  // Runs `run` on the admin thread (one at a time) and passes its outcome
  // to `done`, unless the work was abandoned before it started.
  absl::StatusOr<std::shared_ptr<Work>> StartAdminWork(
      absl::Time deadline, std::function<absl::Status(const std::atomic<bool>*)> run, Done done);
  // A session of its own on `db` (as the caller's database role), on its
  // current primary when it has replicas (Database::AdminDsn).
  absl::StatusOr<std::unique_ptr<db::Connection>> OpenSession(Database& db, absl::Time deadline);

  const v1::QueryServiceConfig config_;
  // Each configured database's pools, topology, failover holds and warm-up.
  // Stopped by the destructor after the replicas.
  db::DatabaseSet database_set_;
  // The databases with replicas (DatabaseConfig.topology), by name; their
  // pools route through them. Stopped first by the destructor.
  absl::flat_hash_map<std::string, std::shared_ptr<Replicas>> replicas_;
  absl::flat_hash_map<std::string, std::unique_ptr<Database>> databases_;
  // Named queries configured readOnly.
  absl::flat_hash_set<std::string> read_only_named_;
  StatementStatsRegistry stats_;
  mutable sql::StatementAnalyzer analyzer_;
  // Role pools by (database, role); created on first use, never removed.
  absl::Mutex roles_mu_;
  absl::flat_hash_map<std::pair<std::string, std::string>, std::unique_ptr<Database>>
      role_databases_ ABSL_GUARDED_BY(roles_mu_);
  struct CatalogState {
    std::shared_ptr<const db::BuiltinCatalog> catalog;
    absl::Time loaded = absl::InfinitePast();
  };
  mutable absl::Mutex catalogs_mu_;
  absl::flat_hash_map<std::string, CatalogState> catalogs_ ABSL_GUARDED_BY(catalogs_mu_);
  absl::Notification stopping_;
  std::thread maintenance_;
  // GetIndexAdvice / CreateIndex: at most one at a time (admin_running_),
  // on admin_'s thread. Its queue holds the next one while the thread
  // finishes the one that just answered.
  absl::Mutex admin_mu_;
  sync::BoundedExecutor admin_{/*max_threads=*/1, /*max_queued=*/1};
  bool admin_running_ ABSL_GUARDED_BY(admin_mu_) = false;
  std::shared_ptr<Work> admin_work_ ABSL_GUARDED_BY(admin_mu_);
  // CheckDatabases calls: at most kMaxConcurrentChecks at once (their
  // checks block on connections), more are refused.
  static constexpr int kMaxConcurrentChecks = 4;
  sync::BoundedExecutor checks_{kMaxConcurrentChecks, /*max_queued=*/0};
  // Declared last: destroyed first, while the databases it uses still exist.
  std::unique_ptr<ReadCache> cache_;
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_QUERY_ENGINE_H_
