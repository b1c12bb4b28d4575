#include "services/query/query_engine.h"

#include <algorithm>
#include <tuple>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/config/database_config.h"
#include "common/config/database_roles.h"
#include "common/db/hypothetical_index.h"
#include "common/db/statement_labels.h"
#include "common/telemetry/log.h"
#include "common/telemetry/trace.h"
#include "common/telemetry/trace_context.h"
#include "services/query/index_advice.h"
#include "services/query/named_queries.h"

namespace poolside::query {
namespace {

// A statement text longer than this that the analyzer has not seen yet is
// parsed on the database worker that runs it rather than on the calling
// (queue) thread: parsing costs up to a few microseconds per byte, and the
// queue thread serves every caller.
constexpr size_t kInlineAnalysisBytes = 4096;

// How old a database's catalog snapshot (which functions are built in and
// non-volatile, which relations are views) may get before it is read again.
constexpr absl::Duration kCatalogAge = absl::Seconds(10);

// Runs fn(i) for i in [0, n) on up to `parallelism` threads.
void ParallelFor(size_t n, size_t parallelism, const std::function<void(size_t)>& fn) {
  std::atomic<size_t> next{0};
  auto run = [&] {
    for (size_t i = next++; i < n; i = next++) fn(i);
  };
  std::vector<std::thread> threads;
  const size_t extra = std::min(n, std::max<size_t>(1, parallelism)) - (n > 0 ? 1 : 0);
  for (size_t t = 0; t < extra; ++t) threads.emplace_back(run);
  run();
  for (auto& t : threads) t.join();
}

// Whether a statement with this outcome may have changed data: it succeeded,
// or it ended without a verdict from the server (the connection was lost or
// the call was cut short around the commit).
bool MayHaveWritten(const absl::Status& s) {
  return s.ok() || s.code() == absl::StatusCode::kUnavailable ||
         s.code() == absl::StatusCode::kDeadlineExceeded ||
         s.code() == absl::StatusCode::kCancelled || s.code() == absl::StatusCode::kUnknown ||
         s.code() == absl::StatusCode::kInternal;
}

uint64_t Cap(uint64_t requested, uint64_t server_limit) {
  return requested == 0 ? server_limit : std::min(requested, server_limit);
}

class ExecuteWork : public Work {
 public:
  // The work of a call of `request` (which must outlive it): its deadline
  // and holder, the caller's trace, its budget within the server's `limits`
  // and its statement (the caller sets the sink).
  ExecuteWork(const v1::ExecuteRequest& request, const v1::LimitsConfig& limits,
              absl::Time deadline, std::string holder) {
    this->deadline = deadline;
    this->holder = std::move(holder);
    trace = telemetry::CurrentSpanContext();
    budget.max_rows = Cap(request.max_rows(), limits.max_rows());
    budget.max_bytes = Cap(request.max_bytes(), limits.max_bytes());
    statement.sql = request.sql();
    statement.params = &request.params();
    min_lsn = request.min_lsn();
    wait_for_replica = true;
    request_bytes = request.ByteSizeLong();
  }

  // Takes the statement's analysis (null while deferred) and, when traces
  // are sent, its span labels.
  void SetAnalysis(std::shared_ptr<const sql::Analysis> a, const v1::ExecuteRequest& request) {
    analysis = std::move(a);
    if (analysis != nullptr && telemetry::GlobalTracer() != nullptr) {
      statement.labels = db::StatementLabelsFor(*analysis, request.named_query());
    }
  }

  ResultBudget budget;
  std::unique_ptr<db::ResultSink> sink;
  // The statement's analysis; set on the worker when it was deferred there
  // (null if the statement was refused).
  std::shared_ptr<const sql::Analysis> analysis;
};

class TransactionWork : public Work {
 public:
  ResultBudget budget;
  std::vector<db::Statement> statements;
  std::vector<std::unique_ptr<ResultSetSink>> sinks;
  // As ExecuteWork::analysis, one per statement (empty if refused).
  std::vector<std::shared_ptr<const sql::Analysis>> analyses;

  // Each statement's span labels from its analysis (when traces are sent).
  void LabelStatements(const v1::ExecuteTransactionRequest& request) {
    if (telemetry::GlobalTracer() == nullptr) return;
    for (size_t i = 0; i < analyses.size() && i < statements.size(); ++i) {
      const int index = static_cast<int>(i);
      statements[i].labels =
          db::StatementLabelsFor(*analyses[i], request.statements(index).named_query());
    }
  }
};

// The set's options: pools as the query service makes them, maintained by
// the engine's maintenance loop, and Start() waiting for each topology's
// first round of probes to name its primary.
db::DatabaseSetOptions SetOptions(const v1::QueryServiceConfig& config) {
  db::DatabaseSetOptions o;
  o.database = QueryDatabaseOptions();
  o.maintenance_every = absl::ZeroDuration();
  for (const v1::DatabaseConfig& db : config.databases()) {
    if (!db.has_topology()) continue;
    const v1::TopologyConfig& t = db.topology();
    o.wait_for_primary = std::max(o.wait_for_primary, absl::Milliseconds(t.probe_interval_ms()) +
                                                          absl::Milliseconds(t.probe_timeout_ms()));
  }
  return o;
}

}  // namespace

QueryEngine::QueryEngine(v1::QueryServiceConfig config, std::unique_ptr<CacheClient> cache)
    : config_(std::move(config)), database_set_(config_.databases(), SetOptions(config_)) {
  for (const v1::NamedQuery& q : config_.named_queries()) {
    if (q.read_only()) read_only_named_.insert(q.name());
  }
  for (const auto& [name, managed] : database_set_.databases()) {
    // Its DSN user's pool: only a stopped set refuses it.
    absl::StatusOr<std::shared_ptr<ConnectionPool>> pool = managed->Pool("");
    auto database = std::make_unique<Database>(*std::move(pool), managed->config());
    if (managed->topology() != nullptr) {
      auto replicas = std::make_shared<Replicas>(managed.get());
      database->AttachReplicas(replicas);
      replicas_.emplace(name, std::move(replicas));
    }
    databases_.emplace(name, std::move(database));
  }
  if (config_.has_cache() && cache != nullptr) {
    cache_ = std::make_unique<ReadCache>(config_.cache(), std::move(cache), databases_,
                                         config_.limits());
  }
}

QueryEngine::~QueryEngine() {
  stopping_.Notify();
  // Reads waiting for a replica are routed (or fail) now, while the pools
  // they go to exist.
  for (auto& [name, replicas] : replicas_) replicas->Stop();
  // Calls held for a primary fail; every pool closes, which stops warm-up
  // retries against databases that are down (they would otherwise hold the
  // exit for up to startup_retry_ms).
  database_set_.Stop();
  // Pools of members whose DSN changed, no longer the set's.
  for (Database* db : AllDatabases()) db->pool().Close();
  cache_.reset();  // stops its listeners; its flights end as the pools close
  if (maintenance_.joinable()) maintenance_.join();
  {
    absl::MutexLock lock(&admin_mu_);
    if (admin_work_ != nullptr) admin_work_->cancelled.store(true);
  }
  // Their tasks reference the databases: let them end first.
  admin_.Shutdown();
  checks_.Shutdown();
  {
    absl::MutexLock lock(&roles_mu_);
    role_databases_.clear();
  }
  databases_.clear();
}

void QueryEngine::Start() {
  // Monitors the topologies (waiting for their first primaries), then warms
  // the pools up in the background; the service serves meanwhile.
  database_set_.Start();
  maintenance_ = std::thread([this] { MaintenanceLoop(); });
  if (cache_ != nullptr) cache_->Start();
}

void QueryEngine::WhenWarm(std::function<void()> ready) {
  database_set_.WhenWarm(std::move(ready));
}

void QueryEngine::MaintenanceLoop() {
  RefreshCatalogs();
  while (!stopping_.WaitForNotificationWithTimeout(absl::Seconds(1))) {
    for (Database* db : AllDatabases()) db->pool().Maintain();
    RefreshCatalogs();
  }
}

std::vector<Database*> QueryEngine::AllDatabases() {
  std::vector<Database*> out;
  for (auto& [name, db] : databases_) out.push_back(db.get());
  {
    absl::MutexLock lock(&roles_mu_);
    for (auto& [key, db] : role_databases_) out.push_back(db.get());
  }
  // Each one's member pools (databases with replicas).
  const size_t roots = out.size();
  for (size_t i = 0; i < roots; ++i) {
    for (Database* m : out[i]->Members()) out.push_back(m);
  }
  return out;
}

void QueryEngine::RefreshCatalogs() {
  for (auto& [name, db] : databases_) {
    if (stopping_.HasBeenNotified()) return;
    {
      absl::MutexLock lock(&catalogs_mu_);
      auto it = catalogs_.find(name);
      if (it != catalogs_.end() && absl::Now() - it->second.loaded < kCatalogAge) continue;
    }
    const absl::Time deadline = absl::Now() + absl::Seconds(2);
    absl::StatusOr<ConnectionPool::Lease> lease = db->AcquireLive(deadline, "catalog snapshot");
    if (!lease.ok()) continue;  // down: statements share no Sync until it is back
    absl::StatusOr<db::BuiltinCatalog> catalog = db::BuiltinCatalog::Load(**lease, deadline);
    if ((*lease)->broken()) lease->MarkBroken();
    lease->Release();
    if (!catalog.ok()) {
      telemetry::LogWarning(
          "cannot read the catalog; statements share no Sync",
          {{"database", name}, {"error", std::string(catalog.status().message())}});
      continue;
    }
    absl::MutexLock lock(&catalogs_mu_);
    catalogs_[name] =
        CatalogState{std::make_shared<const db::BuiltinCatalog>(*std::move(catalog)), absl::Now()};
  }
}

bool QueryEngine::DeclaredReadOnly(const v1::ExecuteRequest& request) const {
  return !request.named_query().empty() && read_only_named_.contains(request.named_query());
}

bool QueryEngine::MayShareSync(const std::string& database, const sql::Analysis& a) const {
  if (!a.shareable_syntax) return false;
  std::shared_ptr<const db::BuiltinCatalog> catalog;
  {
    absl::MutexLock lock(&catalogs_mu_);
    auto it = catalogs_.find(database);
    if (it == catalogs_.end()) return false;
    catalog = it->second.catalog;
  }
  return catalog->AllSafe(a.functions, a.operators, a.tables);
}

absl::Status QueryEngine::VerifyRoles(absl::Time deadline) {
  return config::VerifyDatabaseRoles(config_.databases(), "query",
                                     config_.limits().check_concurrency(), deadline);
}

absl::Time QueryEngine::EffectiveDeadline(absl::Time requested) const {
  const absl::Time now = absl::Now();
  const absl::Time fallback = now + absl::Milliseconds(config_.limits().default_timeout_ms());
  const absl::Time cap = now + absl::Milliseconds(config_.limits().max_timeout_ms());
  return std::min(requested == absl::InfiniteFuture() ? fallback : requested, cap);
}

absl::StatusOr<Database*> QueryEngine::Find(absl::string_view name) {
  if (name.empty()) {
    if (config_.default_database().empty()) {
      return absl::InvalidArgumentError(
          "name a database: several are configured and none is the default");
    }
    name = config_.default_database();
  }
  auto it = databases_.find(name);
  if (it == databases_.end()) {
    return absl::NotFoundError(absl::StrCat("unknown database \"", name.substr(0, 64),
                                            "\"; configured databases are listed by GetPoolStats"));
  }
  return it->second.get();
}

absl::StatusOr<Database*> QueryEngine::Find(absl::string_view name, const CallAccess& access) {
  absl::StatusOr<Database*> db = Find(name);
  if (!db.ok() || access.principal == nullptr) return db;
  const std::string& role = access.principal->DatabaseRoleFor((*db)->name());
  if (role.empty()) return db;
  const std::pair<std::string, std::string> key((*db)->name(), role);
  absl::MutexLock lock(&roles_mu_);
  auto it = role_databases_.find(key);
  if (it != role_databases_.end()) return it->second.get();
  db::ManagedDatabase* managed = database_set_.Find(key.first);
  if (managed->HasRole(role)) {
    absl::StatusOr<v1::DatabaseConfig> c = managed->PoolConfig(role, managed->config().dsn());
    if (!c.ok()) return c.status();
    absl::StatusOr<std::shared_ptr<ConnectionPool>> pool = managed->Pool(role);
    if (!pool.ok()) return pool.status();
    auto made = std::make_unique<Database>(*std::move(pool), *c, role);
    if (auto r = replicas_.find(key.first); r != replicas_.end()) made->AttachReplicas(r->second);
    Database* out = made.get();
    role_databases_.emplace(key, std::move(made));
    return out;
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "principal ", access.principal->name, " runs as database role \"", role,
      "\", which database ", (*db)->name(), " does not configure (databases[].roles)"));
}

absl::StatusOr<std::shared_ptr<const sql::Analysis>> QueryEngine::CheckStatement(
    absl::string_view sql, int params, const CallAccess& access, sql::Scope scope,
    bool may_defer) const {
  const auto& limits = config_.limits();
  if (sql.empty()) return absl::InvalidArgumentError("sql is empty");
  if (sql.size() > limits.max_sql_bytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("sql is ", sql.size(), " bytes; the limit is ", limits.max_sql_bytes()));
  }
  if (params > static_cast<int>(limits.max_params())) {
    return absl::InvalidArgumentError(
        absl::StrCat(params, " parameters; the limit is ", limits.max_params()));
  }
  std::shared_ptr<const sql::Analysis> a =
      sql.size() > kInlineAnalysisBytes ? analyzer_.Lookup(sql) : analyzer_.Analyze(sql);
  if (a == nullptr) {
    if (may_defer) return a;  // the caller runs this again on the worker
    a = analyzer_.Analyze(sql);
  }
  if (absl::Status s = sql::Permitted(*a, scope, sql::Grants{access.ddl}); !s.ok()) return s;
  if (access.read_only &&
      (a->kind == sql::StatementKind::kWrite || a->kind == sql::StatementKind::kDdl)) {
    return absl::PermissionDeniedError(
        absl::StrCat(a->command,
                     " is not allowed for a read-only principal (it runs as a read-only "
                     "database role, in read-only transactions)"));
  }
  return a;
}

absl::StatusOr<QueryEngine::CheckedStatement> QueryEngine::CheckExecute(
    const v1::ExecuteRequest& request, const CallAccess& access) {
  absl::StatusOr<Database*> db = Find(request.database(), access);
  if (!db.ok()) return db.status();
  absl::StatusOr<std::shared_ptr<const sql::Analysis>> analysis = CheckStatement(
      request.sql(), request.params_size(), access, sql::Scope::kAlone, /*may_defer=*/true);
  if (!analysis.ok()) return analysis.status();
  return CheckedStatement{*db, *std::move(analysis)};
}

absl::StatusOr<std::shared_ptr<Work>> QueryEngine::Execute(const v1::ExecuteRequest& request,
                                                           absl::Time deadline, std::string holder,
                                                           v1::ExecuteResponse* response, Done done,
                                                           const CallAccess& access) {
  absl::StatusOr<CheckedStatement> checked = CheckExecute(request, access);
  if (!checked.ok()) return checked.status();
  Database* const database = checked->database;
  const std::shared_ptr<const sql::Analysis> analysis = std::move(checked->analysis);
  const bool deferred = analysis == nullptr;

  auto work = std::make_shared<ExecuteWork>(request, config_.limits(), deadline, std::move(holder));
  ExecuteWork* raw = work.get();
  work->sink = std::make_unique<ResultSetSink>(response->mutable_result(), &work->budget);
  work->statement.sink = work->sink.get();
  work->SetAnalysis(analysis, request);
  // Not pipelined with other calls: a read-only caller's statement (in a
  // read-only transaction), one whose analysis was deferred, and a write
  // that answers with rows (in a transaction of its own, which a limit on
  // its answer rolls back: refused means not written).
  const bool exclusive = access.read_only || deferred || analysis->write_returns_rows;
  work->batchable = !exclusive;
  work->statement.may_share_sync =
      !access.read_only && !deferred && MayShareSync(database->name(), *analysis);
  // Unknown until a deferred analysis ran: then the worker reads the commit
  // position itself.
  const bool writes = !deferred && ReadCache::NeedsInvalidation(*analysis);
  work->wants_commit_lsn = writes && !access.read_only;
  // With replicas: a read PostgreSQL keeps from writing (a read-only
  // caller's transaction) or that the catalog proves free of side effects
  // may run on a replica; anything else on the primary.
  work->replica_ok =
      !deferred && !request.primary() && analysis->kind == sql::StatementKind::kRead &&
      (access.read_only || work->statement.may_share_sync || DeclaredReadOnly(request));
  work->plain_read = work->replica_ok;
  work->may_write = !work->replica_ok && (deferred || writes) && !access.read_only;
  if (exclusive) {
    // After the analysis when it was deferred.
    work->exclusive = [this, raw, access, &request,
                       deferred](db::Connection& conn) -> absl::Status {
      if (deferred) {
        absl::StatusOr<std::shared_ptr<const sql::Analysis>> a =
            CheckStatement(request.sql(), request.params_size(), access, sql::Scope::kAlone, false);
        if (!a.ok()) return a.status();
        raw->SetAnalysis(*std::move(a), request);
      }
      db::Statement* st = &raw->statement;
      if (access.read_only) {
        return conn.RunTransaction("BEGIN READ ONLY", {&st, 1}, raw->deadline, &raw->cancelled);
      }
      absl::Status s;
      if (raw->analysis->write_returns_rows) {
        s = conn.RunTransaction("BEGIN", {&st, 1}, raw->deadline, &raw->cancelled);
      } else {
        if (absl::Status link = conn.RunIndependent({&st, 1}); !link.ok()) return link;
        s = st->status;
      }
      if (s.ok() && ReadCache::NeedsInvalidation(*raw->analysis)) {
        absl::StatusOr<uint64_t> lsn = ReadCommitLsn(conn, raw->deadline, &raw->commit_snapshot);
        raw->commit_lsn = lsn.ok() ? *lsn : 0;
      }
      return s;
    };
    work->read_only = access.read_only;
    work->rewind = [raw] { return raw->sink->Rewind(); };
  }
  const absl::Time start = absl::Now();
  // What a read of the database that starts now reflects (a cached answer
  // says so itself; a write reflects nothing).
  const uint64_t reflected =
      cache_ != nullptr ? cache_->ReflectedLsn(*database, request.min_lsn()) : request.min_lsn();
  work->done = [this, database, raw, &request, response, start, reflected, trace = work->trace,
                done = std::move(done)](absl::Status s) {
    telemetry::ScopedSpanContext record_scope(trace);     // a slow-statement log line carries it
    const sql::Analysis* analysis = raw->analysis.get();  // null: refused on the worker
    if (analysis != nullptr) {
      stats_.Record(database->name(), *analysis, absl::Now() - start,
                    s.ok() ? std::max<int64_t>(0, response->result().rows_affected()) : 0, s.ok());
    }
    if (response->cache() == v1::CACHE_OUTCOME_UNSPECIFIED) response->set_cache(v1::BYPASS);
    const bool writes = analysis != nullptr && ReadCache::NeedsInvalidation(*analysis);
    if (response->source() == v1::RESULT_SOURCE_UNSPECIFIED) {
      response->set_source(v1::DATABASE);
      // A replica's read reflects its replay position when it was picked
      // (at least the call's min_lsn), not what the primary had.
      response->set_lsn(writes ? 0 : raw->on_replica ? raw->member_lsn : reflected);
      response->set_member(raw->member);
    }
    if (s.ok() && raw->commit_lsn != 0) response->set_commit_lsn(raw->commit_lsn);
    if (cache_ != nullptr && writes && MayHaveWritten(s)) {
      std::vector<ReadCache::Written> written(1);
      written[0].sql = request.sql();
      written[0].params = request.params();
      InvalidateThen(database, std::move(written), *raw, std::move(s), std::move(done));
      return;
    }
    done(std::move(s));
  };
  if (cache_ != nullptr && !deferred && cache_->Applies(*database, request, *analysis)) {
    std::shared_ptr<Work> generic = work;
    cache_->Execute(database, request, generic, response, work->budget.max_rows,
                    work->budget.max_bytes, access.read_only, [database, generic] {
                      if (absl::Status s = database->Submit(generic); !s.ok()) {
                        if (generic->Claim()) generic->done(s);
                      }
                    });
    return generic;
  }
  if (absl::Status s = database->Submit(work); !s.ok()) return s;
  return std::static_pointer_cast<Work>(work);
}

absl::StatusOr<std::shared_ptr<Work>> QueryEngine::ExecuteStream(const v1::ExecuteRequest& request,
                                                                 absl::Time deadline,
                                                                 std::string holder,
                                                                 ChunkWriter* writer, Done done,
                                                                 const CallAccess& access) {
  absl::StatusOr<CheckedStatement> checked = CheckExecute(request, access);
  if (!checked.ok()) return checked.status();
  Database* const database = checked->database;
  const std::shared_ptr<const sql::Analysis> analysis = std::move(checked->analysis);

  auto work = std::make_shared<ExecuteWork>(request, config_.limits(), deadline, std::move(holder));
  const size_t chunk_rows = std::clamp<size_t>(
      request.chunk_rows() == 0 ? config_.limits().stream_chunk_rows() : request.chunk_rows(), 1,
      100000);
  work->sink = std::make_unique<StreamSink>(writer, &work->budget, chunk_rows, size_t{1} << 20,
                                            &work->member);
  work->statement.sink = work->sink.get();
  work->SetAnalysis(analysis, request);
  ExecuteWork* raw = work.get();
  work->exclusive = [this, raw, access, &request](db::Connection& conn) -> absl::Status {
    if (raw->analysis == nullptr) {  // deferred to this worker
      absl::StatusOr<std::shared_ptr<const sql::Analysis>> a =
          CheckStatement(request.sql(), request.params_size(), access, sql::Scope::kAlone, false);
      if (!a.ok()) return a.status();
      raw->SetAnalysis(*std::move(a), request);
    }
    // A write that streams rows back runs in a transaction of its own, which
    // a refusal for the call's limits (or a failure) rolls back.
    absl::Status link =
        conn.RunStreaming(raw->statement, access.read_only                    ? "BEGIN READ ONLY"
                                          : raw->analysis->write_returns_rows ? "BEGIN"
                                                                              : "");
    return link.ok() ? raw->statement.status : link;
  };
  work->read_only = access.read_only;
  work->replica_ok =
      analysis != nullptr && !request.primary() && analysis->kind == sql::StatementKind::kRead &&
      (access.read_only || MayShareSync(database->name(), *analysis) || DeclaredReadOnly(request));
  work->plain_read = work->replica_ok;
  // Until its first chunk leaves, a stream can start over (on a fresh
  // connection, or on another member).
  work->rewind = [raw] { return raw->sink->Rewind(); };
  work->may_write = !work->replica_ok && !access.read_only &&
                    (analysis == nullptr || ReadCache::NeedsInvalidation(*analysis));
  const absl::Time start = absl::Now();
  work->done = [this, database, raw, start, done = std::move(done)](absl::Status s) {
    telemetry::ScopedSpanContext record_scope(raw->trace);  // a slow-statement log line carries it
    if (raw->analysis != nullptr) {
      stats_.Record(database->name(), *raw->analysis, absl::Now() - start,
                    s.ok() ? raw->budget.rows : 0, s.ok());
    }
    done(std::move(s));
  };
  if (absl::Status s = database->Submit(work); !s.ok()) return s;
  return std::static_pointer_cast<Work>(work);
}

absl::StatusOr<std::shared_ptr<Work>> QueryEngine::ExecuteTransaction(
    const v1::ExecuteTransactionRequest& request, absl::Time deadline, std::string holder,
    v1::ExecuteTransactionResponse* response, Done done, const CallAccess& access) {
  absl::StatusOr<Database*> db = Find(request.database(), access);
  if (!db.ok()) return db.status();
  if (request.statements().empty()) {
    return absl::InvalidArgumentError("a transaction needs at least one statement");
  }
  if (request.statements_size() > static_cast<int>(config_.limits().max_statements())) {
    return absl::InvalidArgumentError(absl::StrCat(request.statements_size(),
                                                   " statements; the limit is ",
                                                   config_.limits().max_statements()));
  }
  // Every statement's analysis, or none when one must be deferred to the
  // worker (then all are analyzed again there, before anything is sent);
  // refusals found here are answered at once.
  auto check_all =
      [this, &request, access](
          bool may_defer) -> absl::StatusOr<std::vector<std::shared_ptr<const sql::Analysis>>> {
    std::vector<std::shared_ptr<const sql::Analysis>> analyses;
    analyses.reserve(request.statements_size());
    bool deferred = false;
    for (int i = 0; i < request.statements_size(); ++i) {
      const v1::Statement& st = request.statements(i);
      absl::StatusOr<std::shared_ptr<const sql::Analysis>> a =
          CheckStatement(st.sql(), st.params_size(), access, sql::Scope::kInTransaction, may_defer);
      if (!a.ok()) {
        return absl::Status(a.status().code(),
                            absl::StrCat("statement ", i + 1, ": ", a.status().message()));
      }
      deferred = deferred || *a == nullptr;
      analyses.push_back(*std::move(a));
    }
    if (deferred) analyses.clear();
    return analyses;
  };
  absl::StatusOr<std::vector<std::shared_ptr<const sql::Analysis>>> analyses =
      check_all(/*may_defer=*/true);
  if (!analyses.ok()) return analyses.status();
  std::string begin = "BEGIN";
  switch (request.isolation()) {
    case v1::READ_COMMITTED:
      begin += " ISOLATION LEVEL READ COMMITTED";
      break;
    case v1::REPEATABLE_READ:
      begin += " ISOLATION LEVEL REPEATABLE READ";
      break;
    case v1::SERIALIZABLE:
      begin += " ISOLATION LEVEL SERIALIZABLE";
      break;
    default:
      break;
  }
  if (request.read_only() || access.read_only) begin += " READ ONLY";

  auto work = std::make_shared<TransactionWork>();
  work->deadline = deadline;
  work->holder = std::move(holder);
  work->trace = telemetry::CurrentSpanContext();
  work->budget.max_rows = Cap(request.max_rows(), config_.limits().max_rows());
  work->budget.max_bytes = Cap(request.max_bytes(), config_.limits().max_bytes());
  work->statements.resize(request.statements_size());
  for (int i = 0; i < request.statements_size(); ++i) {
    work->sinks.push_back(std::make_unique<ResultSetSink>(response->add_results(), &work->budget));
    db::Statement& st = work->statements[i];
    st.sql = request.statements(i).sql();
    st.params = &request.statements(i).params();
    st.sink = work->sinks.back().get();
  }
  TransactionWork* raw = work.get();
  const bool read_only = request.read_only() || access.read_only;
  raw->analyses = *std::move(analyses);
  raw->LabelStatements(request);
  work->exclusive = [raw, begin, check_all, read_only,
                     &request](db::Connection& conn) -> absl::Status {
    if (raw->analyses.empty()) {  // deferred to this worker
      absl::StatusOr<std::vector<std::shared_ptr<const sql::Analysis>>> a = check_all(false);
      if (!a.ok()) return a.status();
      raw->analyses = *std::move(a);
      raw->LabelStatements(request);
    }
    std::vector<db::Statement*> ptrs;
    for (auto& st : raw->statements) ptrs.push_back(&st);
    absl::Status s = conn.RunTransaction(begin, ptrs, raw->deadline, &raw->cancelled);
    if (s.ok() && !read_only) {
      // Committed: the position after it, for the caller's token (unknown if
      // this fails; the transaction's outcome stands).
      absl::StatusOr<uint64_t> lsn = ReadCommitLsn(conn, raw->deadline, &raw->commit_snapshot);
      raw->commit_lsn = lsn.ok() ? *lsn : 0;
    }
    return s;
  };
  work->read_only = read_only;
  // PostgreSQL keeps a read-only transaction from writing: a replica may
  // run it.
  work->replica_ok = read_only && !request.primary();
  work->min_lsn = request.min_lsn();
  work->wait_for_replica = true;
  work->request_bytes = request.ByteSizeLong();
  work->may_write = !read_only;
  work->rewind = [raw] {
    for (auto& sink : raw->sinks) sink->Rewind();
    return true;
  };
  const absl::Time start = absl::Now();
  Database* database = *db;
  work->done = [this, database, raw, &request, response, start, trace = work->trace, read_only,
                done = std::move(done)](absl::Status s) {
    const absl::Duration took = absl::Now() - start;
    telemetry::ScopedSpanContext record_scope(trace);  // a slow-statement log line carries it
    const std::vector<std::shared_ptr<const sql::Analysis>>& analyses = raw->analyses;
    if (analyses.empty()) {  // refused on the worker: nothing ran
      response->clear_results();
      done(std::move(s));
      return;
    }
    for (int i = 0; i < request.statements_size(); ++i) {
      const int64_t rows = s.ok() && i < response->results_size()
                               ? std::max<int64_t>(0, response->results(i).rows_affected())
                               : 0;
      stats_.Record(database->name(), *analyses[i], took, rows, s.ok());
    }
    if (!s.ok()) response->clear_results();
    if (s.ok() && raw->commit_lsn != 0) response->set_commit_lsn(raw->commit_lsn);
    response->set_member(raw->member);
    if (s.ok() && read_only) {
      response->set_lsn(raw->on_replica ? raw->member_lsn : request.min_lsn());
    }
    if (cache_ != nullptr && MayHaveWritten(s) && !read_only) {
      std::vector<ReadCache::Written> written;
      for (int i = 0; i < request.statements_size(); ++i) {
        const v1::Statement& st = request.statements(i);
        if (!ReadCache::NeedsInvalidation(*analyses[i])) continue;
        written.emplace_back();
        written.back().sql = st.sql();
        written.back().params = st.params();
      }
      if (!written.empty()) {
        InvalidateThen(database, std::move(written), *raw, std::move(s), std::move(done));
        return;
      }
    }
    done(std::move(s));
  };
  if (absl::Status s = database->Submit(work); !s.ok()) return s;
  return std::static_pointer_cast<Work>(work);
}

void QueryEngine::InvalidateThen(Database* database, std::vector<ReadCache::Written> written,
                                 const Work& work, absl::Status s, Done done) {
  // The invalidation joins the call's trace: its callers, the calls' `done`
  // wrappers, run with the call's span context current.
  cache_->AfterWrite(database, std::move(written),
                     s.ok() && work.commit_lsn != 0 ? work.commit_snapshot : "",
                     [s, done = std::move(done)]() mutable { done(std::move(s)); });
}

absl::Status QueryEngine::GetPoolStats(const v1::GetPoolStatsRequest& request,
                                       v1::GetPoolStatsResponse* response) {
  if (!request.database().empty()) {
    if (absl::StatusOr<Database*> db = Find(request.database()); !db.ok()) return db.status();
  }
  std::vector<Database*> dbs;
  for (Database* db : AllDatabases()) {
    if (request.database().empty() || db->name() == request.database()) dbs.push_back(db);
  }
  std::sort(dbs.begin(), dbs.end(), [](Database* a, Database* b) {
    return std::tie(a->name(), a->role(), a->member()) <
           std::tie(b->name(), b->role(), b->member());
  });
  for (Database* db : dbs) {
    const pool::PoolStats s = db->pool().Stats();
    v1::PoolStats* out = response->add_pools();
    out->set_database(db->name());
    out->set_role(db->role());
    out->set_member(db->member());
    out->set_size(s.size);
    out->set_idle(s.idle);
    out->set_in_use(s.in_use);
    out->set_waiters(s.waiters);
    out->set_min_idle(s.min_idle);
    out->set_max_size(s.max_size);
    out->set_max_overflow(s.max_overflow);
    out->set_overflow_in_use(s.overflow_in_use);
    out->set_overflow_created_total(s.overflow_created);
    out->set_acquired_total(s.acquired);
    out->set_timeouts_total(s.timeouts + db->queue_timeouts());
    out->set_created_total(s.created);
    out->set_closed_total(s.closed);
    out->set_recycled_total(s.recycled);
    out->set_broken_total(s.broken);
    out->set_leaks_total(s.leaks);
    out->set_create_failures_total(s.create_failures);
    // The database's own queue of calls, and its pipelining.
    out->set_queued(db->queued());
    out->set_pipelines_total(db->pipelines());
    out->set_pipelined_statements_total(db->pipelined_statements());
    out->set_pipeline_reruns_total(db->pipeline_reruns());
    v1::Histogram* h = out->mutable_acquire_wait();
    for (double b : s.acquire_wait.bounds) h->add_bounds_seconds(b);
    for (uint64_t c : s.acquire_wait.cumulative_counts) h->add_counts(c);
    h->set_count(s.acquire_wait.count);
    h->set_sum_seconds(s.acquire_wait.sum);
  }
  std::vector<std::string> names;
  for (const auto& [name, replicas] : replicas_) {
    if (request.database().empty() || name == request.database()) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    for (const db::MemberStatus& m : replicas_.at(name)->topology().Snapshot()) {
      v1::MemberStats* out = response->add_members();
      out->set_database(name);
      out->set_member(m.id);
      out->set_role(db::MemberRoleName(m.role));
      out->set_healthy(m.healthy);
      out->set_banned(m.banned);
      out->set_lsn(m.lsn);
      out->set_lag_bytes(m.lag_bytes);
      out->set_lag_seconds(absl::ToDoubleSeconds(m.lag));
      out->set_outstanding(m.outstanding);
      out->set_routed_total(m.routed);
      out->set_bans_total(m.bans);
      if (!m.last_error.ok()) out->set_error(std::string(m.last_error.message().substr(0, 256)));
    }
  }
  return absl::OkStatus();
}

absl::Status QueryEngine::GetStatementStats(const v1::GetStatementStatsRequest& request,
                                            v1::GetStatementStatsResponse* response) {
  if (!request.database().empty()) {
    if (absl::StatusOr<Database*> db = Find(request.database()); !db.ok()) return db.status();
  }
  for (auto& s : stats_.Snapshot(request.database(), request.limit())) {
    *response->add_statements() = std::move(s);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Work>> QueryEngine::StartAdminWork(
    absl::Time deadline, std::function<absl::Status(const std::atomic<bool>*)> run, Done done) {
  auto work = std::make_shared<Work>();
  work->deadline = deadline;
  absl::MutexLock lock(&admin_mu_);
  if (admin_running_) {
    return absl::ResourceExhaustedError(
        "an index advice or index creation is already running; retry when it has ended");
  }
  absl::Status submitted =
      admin_.Submit([this, work, run = std::move(run), done = std::move(done)] {
        const bool claimed = work->Claim();
        const absl::Status outcome = claimed ? run(&work->cancelled) : absl::OkStatus();
        {
          // Free before answering: a caller that follows the answer with the
          // next admin call (advise --apply) is not refused (it queues behind
          // the end of this task).
          absl::MutexLock lock(&admin_mu_);
          admin_running_ = false;
          admin_work_ = nullptr;
        }
        if (claimed) done(outcome);
      });
  if (!submitted.ok()) return submitted;
  admin_running_ = true;
  admin_work_ = work;
  return work;
}

absl::StatusOr<std::unique_ptr<db::Connection>> QueryEngine::OpenSession(Database& db,
                                                                         absl::Time deadline) {
  // The primary: CREATE INDEX must run there (and advice is checked where
  // its indexes would be made).
  absl::StatusOr<std::string> dsn = db.AdminDsn();
  if (!dsn.ok()) return dsn.status();
  db::ConnectionOptions options;
  options.dsn = *std::move(dsn);
  options.application_name = absl::StrCat("poolside-query/", db.name(), "/index-advice");
  options.connect_timeout = std::min(absl::Milliseconds(db.config().pool().connect_timeout_ms()),
                                     std::max(absl::Seconds(1), deadline - absl::Now()));
  return db::OpenChecked(options, db.name(), db.config().allow_privileged_role());
}

absl::StatusOr<std::shared_ptr<Work>> QueryEngine::GetIndexAdvice(
    const v1::GetIndexAdviceRequest& request, absl::Time deadline,
    v1::GetIndexAdviceResponse* response, Done done, const CallAccess& access) {
  absl::StatusOr<Database*> found = Find(request.database(), access);
  if (!found.ok()) return found.status();
  Database* database = *found;
  return StartAdminWork(
      deadline,
      [this, database, deadline, response, min_calls = request.min_calls(),
       max_statements = request.max_statements()](const std::atomic<bool>* cancelled) {
        response->set_database(database->name());
        absl::StatusOr<std::unique_ptr<db::Connection>> conn = OpenSession(*database, deadline);
        if (!conn.ok()) return conn.status();
        db::PlanSession::Options session_options;
        session_options.deadline = deadline;
        session_options.cancelled = cancelled;
        absl::StatusOr<std::unique_ptr<db::PlanSession>> session =
            db::PlanSession::Start(**conn, session_options);
        if (!session.ok()) return session.status();
        AdviceOptions options;
        options.min_calls = min_calls;
        options.max_statements = max_statements;
        options.deadline = deadline;
        options.cancelled = cancelled;
        return AdviseIndexes(**session, stats_.Snapshot(database->name(), 0), options, response);
      },
      std::move(done));
}

absl::StatusOr<std::shared_ptr<Work>> QueryEngine::CreateIndex(
    const v1::CreateIndexRequest& request, absl::Time deadline, v1::CreateIndexResponse* response,
    Done done, const CallAccess& access) {
  absl::StatusOr<Database*> found = Find(request.database(), access);
  if (!found.ok()) return found.status();
  if (request.index().table().empty() || request.index().columns().empty()) {
    return absl::InvalidArgumentError("name the index's table and at least one column");
  }
  if (request.index().columns_size() > 32) {
    return absl::InvalidArgumentError("an index has at most 32 columns");
  }
  Database* database = *found;
  db::IndexSpec spec{request.index().schema(),
                     request.index().table(),
                     {request.index().columns().begin(), request.index().columns().end()}};
  return StartAdminWork(
      deadline,
      [this, database, deadline, response, spec](const std::atomic<bool>* cancelled) {
        const absl::Time start = absl::Now();
        absl::StatusOr<std::unique_ptr<db::Connection>> conn = OpenSession(*database, deadline);
        if (!conn.ok()) return conn.status();
        absl::StatusOr<std::string> name =
            db::CreateIndexConcurrently(**conn, spec, deadline, cancelled);
        if (!name.ok()) return name.status();
        response->set_index_name(*name);
        response->set_sql(db::IndexDefinition(spec, /*concurrently=*/true));
        response->set_elapsed_ms(absl::ToDoubleMilliseconds(absl::Now() - start));
        telemetry::LogInfo(
            "index created",
            {{"database", database->name()}, {"index", *name}, {"sql", response->sql()}});
        return absl::OkStatus();
      },
      std::move(done));
}

absl::Status QueryEngine::CheckDatabases(const v1::CheckDatabasesRequest& request,
                                         absl::Time deadline, v1::CheckDatabasesResponse* response,
                                         Done done) {
  std::vector<Database*> dbs;
  if (request.databases().empty()) {
    for (auto& [name, db] : databases_) dbs.push_back(db.get());
  } else {
    for (const std::string& name : request.databases()) {
      absl::StatusOr<Database*> db = Find(name);
      if (!db.ok()) return db.status();
      dbs.push_back(*db);
    }
  }
  std::sort(dbs.begin(), dbs.end(), [](Database* a, Database* b) { return a->name() < b->name(); });
  absl::Status submitted = checks_.Submit([this, dbs, deadline, response, done = std::move(done)] {
    for (Database* db : dbs) response->add_databases()->set_database(db->name());
    // Each check is bounded by its own short timeout as well as the call's deadline.
    ParallelFor(dbs.size(), config_.limits().check_concurrency(), [&](size_t i) {
      v1::DatabaseHealth* h = response->mutable_databases(static_cast<int>(i));
      const absl::Time start = absl::Now();
      const absl::Time check_deadline = std::min(deadline, start + absl::Seconds(5));
      absl::StatusOr<ConnectionPool::Lease> lease =
          dbs[i]->AcquireLive(check_deadline, "CheckDatabases");
      if (!lease.ok()) {
        h->set_healthy(false);
        h->set_error(std::string(lease.status().message()));
      } else if (!(*lease)->Ping(check_deadline)) {
        lease->MarkBroken();
        h->set_healthy(false);
        h->set_error("connection did not answer a ping");
      } else {
        h->set_healthy(true);
        const int v = (*lease)->server_version();
        h->set_server_version(absl::StrCat(v / 10000, ".", v % 10000));
      }
      h->set_latency_ms(absl::ToDoubleMilliseconds(absl::Now() - start));
    });
    for (const auto& h : response->databases()) {
      if (h.healthy())
        response->set_healthy(response->healthy() + 1);
      else
        response->set_unhealthy(response->unhealthy() + 1);
    }
    done(absl::OkStatus());
  });
  if (submitted.code() == absl::StatusCode::kResourceExhausted) {
    return absl::ResourceExhaustedError("too many CheckDatabases calls at once; retry shortly");
  }
  return submitted;
}

}  // namespace poolside::query
