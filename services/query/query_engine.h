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
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/query.pb.h"
#include "services/query/cache_client.h"
#include "services/query/database.h"
#include "services/query/read_cache.h"
#include "services/query/result_sinks.h"
#include "services/query/statement_checks.h"
#include "services/query/statement_stats.h"

namespace poolside::query {

// How a call runs for its caller (set by the adapter from the caller's
// principal, common/auth).
struct CallAccess {
  // Statements run in read-only transactions (BEGIN READ ONLY), so PostgreSQL
  // itself refuses writes; statements that would end or change that
  // transaction are refused up front (CheckReadOnlyStatement). Cached reads are
  // keyed under this scope and their fills run read-only too.
  bool read_only = false;
};

class QueryEngine {
 public:
  using Done = std::function<void(absl::Status)>;

  // `config` must have been through FinalizeQueryConfig. `cache` (the sidecar
  // client) is required when config.cache is set, ignored otherwise.
  explicit QueryEngine(v1::QueryServiceConfig config,
                       std::unique_ptr<CacheClient> cache = nullptr);
  ~QueryEngine();

  // Warms the pools (in the background; the service serves meanwhile) and starts
  // pool maintenance.
  void Start();

  // Runs `ready` once every database's warm-up has finished (min_idle
  // connections made, or given up after pool.startup_retry_ms: that database
  // then connects on demand) — at once if that already happened, else on the
  // warm-up thread. Not run if the engine is destroyed first. For readiness.
  void WhenWarm(std::function<void()> ready);

  // The deadline a call runs under: the caller's, or the configured default if
  // the caller set none.
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
  // thread of its own; `done` runs when all are checked or the deadline passed.
  absl::Status CheckDatabases(const v1::CheckDatabasesRequest& request, absl::Time deadline,
                              v1::CheckDatabasesResponse* response, Done done);

  const v1::QueryServiceConfig& config() const { return config_; }
  // Null when no cache is configured.
  ReadCache* read_cache() { return cache_.get(); }
  StatementStatsRegistry& statement_stats() { return stats_; }

 private:
  absl::StatusOr<Database*> Find(absl::string_view name);
  // The limits and StatementChecks; *may_share_sync (if given) is its verdict.
  absl::Status CheckStatement(absl::string_view sql, int params, const CallAccess& access = {},
                              bool* may_share_sync = nullptr) const;
  void MaintenanceLoop();

  const v1::QueryServiceConfig config_;
  absl::flat_hash_map<std::string, std::unique_ptr<Database>> databases_;
  StatementStatsRegistry stats_;
  mutable StatementChecks checks_;
  std::atomic<int> checks_running_{0};
  std::atomic<int> background_threads_{0};
  absl::Notification stopping_;
  std::thread maintenance_;
  std::thread warmup_;
  absl::Mutex warm_mu_;
  bool warm_ ABSL_GUARDED_BY(warm_mu_) = false;
  std::vector<std::function<void()>> when_warm_ ABSL_GUARDED_BY(warm_mu_);
  // Declared last: destroyed first, while the databases it uses still exist.
  std::unique_ptr<ReadCache> cache_;
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_QUERY_ENGINE_H_
