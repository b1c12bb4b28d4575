#ifndef POOLSIDE_COMMON_DB_CONNECTION_H_
#define POOLSIDE_COMMON_DB_CONNECTION_H_

// One PostgreSQL connection: opened and owned through libpqxx, driven with libpq's
// pipeline mode for statements (libpqxx 6.4 cannot pipeline prepared statements,
// and pipelining is what lets poolside batch many callers' statements into one
// round trip; see docs/design.md, "Pipelining").
//
//   auto conn = Connection::Open({.dsn = "host=... dbname=..."});
//   Statement a{.sql = "SELECT $1::int8", .params = &params, .sink = &sink,
//               .deadline = absl::Now() + absl::Seconds(1)};
//   absl::Status link = (*conn)->RunIndependent({&a});  // a.status: a's outcome
//
// Every statement is prepared once per connection and kept in a bounded LRU
// (DEALLOCATEd on eviction). One whose result columns changed since (a table
// altered by a migration or another caller) fails once, ABORTED with the
// server's 0A000 "cached plan must not change result type" and "retry", and
// is prepared again on its next use (the stale one DEALLOCATEd with the next
// call), instead of failing on that connection for good. Deadlines are enforced twice:
// statement_timeout is set on the server (rounded up to whole seconds, only when it changes), and
// the client cancels the backend query (PQcancel) the moment a statement's deadline passes or its
// `cancelled` flag is raised.
//
// Thread safety: a Connection is used by one thread at a time (the pool's lease
// holder). Nothing else.

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/db/statement_labels.h"
#include "common/telemetry/trace.h"
#include "google/protobuf/repeated_ptr_field.h"
#include "proto/poolside/v1/common.pb.h"

// libpq's handle types (libpq-fe.h), kept out of this header.
struct pg_conn;
struct pg_result;
struct pg_cancel;

namespace poolside::db {

class EncodedParams;  // value_codec.h

struct ConnectionOptions {
  // libpq keyword/value string or URI; sslmode, sslrootcert etc. pass through.
  std::string dsn;
  std::string application_name = "poolside";
  absl::Duration connect_timeout = absl::Seconds(5);
  size_t statement_cache_size = 100;
  // After a cancel request, how long to wait for the server to give up the
  // statement before the connection is declared broken (ServerWait too).
  absl::Duration cancel_grace = absl::Seconds(3);
};

// Receives one statement's result, row by row, so results never need to be held
// twice and a limit can stop a result early.
class ResultSink {
 public:
  virtual ~ResultSink() = default;
  // Once, before any row (with no columns for commands that return none).
  virtual absl::Status Begin(const google::protobuf::RepeatedPtrField<v1::Column>& columns) = 0;
  // A row to fill with the next result row's values.
  virtual v1::Row* NewRow() = 0;
  // After NewRow()'s row is filled; `bytes` approximates its size. A non-OK
  // status ends the statement with that status (the rest of the rows are
  // discarded).
  virtual absl::Status RowDone(size_t bytes) = 0;
  // After the last row, when the statement succeeded.
  virtual void Finish(int64_t rows_affected, absl::string_view command_tag) = 0;
  // Forgets everything received so far, so the statement can run again from
  // the start. False if that is impossible (rows already left, e.g. streamed).
  virtual bool Rewind() { return false; }
};

// How far a statement got, for a caller deciding whether to run it again on
// another connection after it failed.
enum class Reach {
  // Its status is its own outcome: success, or the server's verdict on it.
  kAnswered,
  // The server provably never executed it: nothing of it was sent, the server
  // skipped it, or the server ended the session while still on an earlier
  // message. Running it again cannot run it twice.
  kNotRun,
  // It was sent, and then its connection failed or was discarded before its
  // outcome was confirmed. Its status says whether it was rolled back (not
  // committed) or whether the outcome is unknown; either way the server may
  // have executed it.
  kMayHaveRun,
};

// One statement to run and, after the run, its outcome.
struct Statement {
  absl::string_view sql;
  const google::protobuf::RepeatedPtrField<v1::Value>* params = nullptr;
  ResultSink* sink = nullptr;  // null: rows are discarded
  absl::Time deadline = absl::InfiniteFuture();
  // Raised by another thread to abandon the statement (its backend query is
  // cancelled).
  const std::atomic<bool>* cancelled = nullptr;
  absl::Status status;
  // Set with status by the run (see Reach).
  Reach reach = Reach::kAnswered;
  // A plain read whose sink can Rewind(): RunIndependent may run it in one
  // implicit transaction with the neighbouring such statements (one Sync for
  // all of them, so one commit and one reply flush on the server instead of
  // one each). If any of them fails, that transaction is rolled back and each
  // is run again on its own: every statement still succeeds or fails alone.
  bool may_share_sync = false;
  // The span this statement runs for (its span is a child); invalid: the
  // thread's current context. No context at all: no span.
  telemetry::SpanContext trace;
  // What its span says about it; null: derived from `sql` by PostgreSQL's
  // parser (StartStatementSpan).
  std::shared_ptr<const StatementLabels> labels;
};

// A NOTIFY received on a LISTENing connection.
struct Notification {
  std::string channel;
  std::string payload;
  int backend_pid = 0;
};

class Connection {
 public:
  // With `abandon`, connecting gives up (UNAVAILABLE, as a server that
  // cannot be reached) within 50 ms of one of the flags being raised by
  // another thread (routing found the server stopped answering), besides at
  // connect_timeout; for a DSN naming one host (libpq gives each host of a
  // multi-host DSN its own connect_timeout). The flags must outlive Open().
  static absl::StatusOr<std::unique_ptr<Connection>> Open(
      const ConnectionOptions& options, absl::Span<const std::atomic<bool>* const> abandon = {});
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Runs statements that are independent of each other, each in its own implicit
  // transaction, in one pipeline (one network round trip). Each statement's
  // status says how it went; one failing does not affect the others. Returns
  // non-OK when the connection itself failed; then, or whenever broken() is
  // true afterwards, discard the connection.
  // Neighbouring statements marked may_share_sync share one implicit
  // transaction (see Statement); `reruns`, if given, counts the statements run
  // a second time because a neighbour in their transaction failed.
  //
  // A statement that leaves a transaction open (BEGIN, START TRANSACTION) or
  // is other transaction control fails with INVALID_ARGUMENT, and the
  // connection is discarded (closing it rolls back what is open). Statements
  // that ran inside that transaction are not committed: ABORTED, safe to
  // retry. Where a later statement may have committed them (COMMIT), their
  // outcome is unknown: UNAVAILABLE. A COPY fails with INVALID_ARGUMENT.
  absl::Status RunIndependent(absl::Span<Statement* const> statements, uint64_t* reruns = nullptr);

  // BEGIN `begin_sql` and the statements pipelined in one round trip, then
  // COMMIT in a second one, sent only if every statement succeeded on the
  // server and in its sink (a sink's row/byte limit rolls the transaction
  // back). On the first failure everything is rolled back and that failure is
  // returned; a failed COMMIT (serialization, deferred constraint) likewise.
  // `deadline`/`cancelled` bound the whole transaction. begin_sql is a trusted
  // constant such as "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY".
  // A statement that is itself transaction control is never committed past:
  // the transaction is abandoned and the connection discarded (INVALID_ARGUMENT
  // when nothing can have been committed, UNAVAILABLE "outcome unknown" when
  // its COMMIT or ROLLBACK may have ended the transaction early). A COMMIT
  // that does not leave the connection idle discards it too.
  absl::Status RunTransaction(absl::string_view begin_sql, absl::Span<Statement* const> statements,
                              absl::Time deadline, const std::atomic<bool>* cancelled);

  // Runs one statement outside pipeline mode with libpq's single-row mode, so
  // the rows reach `statement.sink` as they arrive (bounded memory for results
  // of any size). Same return contract as RunIndependent. `begin_sql` (e.g.
  // "BEGIN READ ONLY", "BEGIN"), when given: inside that transaction, then
  // COMMIT, or ROLLBACK when it failed (a sink's row or byte limit among
  // them rolls a write back); empty: alone, as its own transaction.
  absl::Status RunStreaming(Statement& statement, absl::string_view begin_sql = {});

  // After RunIndependent, RunTransaction or RunStreaming failed: kNotRun when
  // the server provably executed none of the call's statements, kMayHaveRun
  // when the connection failed after the server may have run some (the
  // statuses say which), else kAnswered.
  Reach last_call_reach() const { return last_call_reach_; }

  // A round trip to the server (empty query); false if the connection is
  // unusable or not idle afterwards (then it is broken()). Notifications that
  // arrive meanwhile are kept for AwaitNotifications().
  bool Ping(absl::Time deadline);

  // LISTEN on `channel` (any string; quoted here). Meant for a connection of its
  // own, outside any pool.
  absl::Status Listen(absl::string_view channel, absl::Time deadline);
  // Appends the notifications received so far, waiting until at least one has
  // arrived or `deadline` passed (OK either way). UNAVAILABLE once the
  // connection is lost: notifications may then have been missed.
  absl::Status AwaitNotifications(absl::Time deadline, std::vector<Notification>* out);
  // Cheap local check (no round trip): reads what the server sent while the
  // connection was idle; false (and broken()) when the server closed the
  // socket or announced the end of the session (e.g. the backend was
  // terminated: FATAL 57P01), or a transaction was left open.
  bool LooksAlive();
  bool broken() const { return broken_; }
  // Gives the session the statement_timeout a statement of this class with
  // `deadline` would run under (one round trip, only when it has another),
  // for code that sends statements on the libpq handle (copy.h): without it
  // they would run under whatever an earlier statement left, such as a
  // connection check's few seconds. Does nothing inside a transaction (a SET
  // there would roll back with it).
  absl::Status MatchStatementTimeout(absl::Time deadline);
  // Until called again: while any of `signals` is raised, every wait for
  // the server (statements, transactions, COPY, pings) gives the connection
  // up at once instead: no cancel request (a server that stopped answering
  // answers none), the connection is broken() and the call fails
  // UNAVAILABLE, a lost connection. Raised flags are seen within 50 ms. For a
  // lease holder that learns the server stopped answering (routing, when
  // the probes find a replica unhealthy); the flags must outlive the calls
  // made until the next AbandonWhen({}).
  void AbandonWhen(absl::Span<const std::atomic<bool>* const> signals) {
    abandon_signals_.assign(signals.begin(), signals.end());
  }
  absl::Duration cancel_grace() const { return options_.cancel_grace; }
  int server_version() const;
  size_t prepared_statements() const { return lru_.size(); }
  // The libpq handle, for common/db code that speaks what this class does not
  // (COPY; see copy.h). Only between calls of this class; it is non-blocking.
  // Such code waits for the server through a ServerWait (below).
  ::pg_conn* libpq_conn() { return conn_; }
  class ServerWait;

  // A CLIENT span for one statement on this connection, child of `parent` (or
  // of the thread's current context), with OpenTelemetry's database
  // conventions: db.system.name "postgresql", db.namespace (the database),
  // server.address/server.port, and from `labels` db.query.summary (also the
  // span name), db.query.text, db.operation.name, db.collection.name.
  // Without labels they are derived from `sql` (PostgreSQL's parse of it, so
  // the text recorded never holds a literal); a text that does not parse is
  // recorded as its first keyword only, named "<keyword> <database>". End
  // it through EndStatementSpan. Records nothing when tracing is off or there
  // is no parent (background work such as the listener's own statements).
  telemetry::Span StartStatementSpan(absl::string_view sql, const StatementLabels* labels,
                                     const telemetry::SpanContext& parent = {}) const;
  // Sets the span's status and, on an error, error.type and
  // db.response.status_code (the SQLSTATE, when the server sent one).
  static void EndStatementSpan(telemetry::Span& span, const absl::Status& status);

 private:
  struct Prepared {
    std::string key;
    std::string name;
    google::protobuf::RepeatedPtrField<v1::Column> columns;
    bool columns_known = false;
  };
  struct CancelState;
  struct Step;
  class PqxxConnection;

  explicit Connection(const ConnectionOptions& options);

  // libpq's notice receiver: logs notices and notices the end of the session
  // (a FATAL the server sends while the connection is idle).
  static void OnNotice(void* self, const ::pg_result* res);
  // UNAVAILABLE unless the connection is usable and idle (then broken()).
  absl::Status ExpectIdle();
  absl::Status RunPipeline(std::vector<Step>& steps);
  // RunIndependent's one pass; `share`: let may_share_sync statements share a
  // Sync. Sets *retry for the statements of a shared transaction that failed.
  absl::Status RunIndependentPass(absl::Span<Statement* const> statements, bool share,
                                  std::vector<bool>* retry);
  // Gives each statement of a RunIndependentPass its true outcome from what the
  // server answered (see the .cc); breaks the connection if it is not clean.
  void SettleIndependent(std::vector<Step>& steps, absl::Span<Statement* const> statements,
                         const std::vector<size_t>& exec_index, const absl::Status& link);
  // Appends a Prepare step (first use of this SQL and parameter types on this
  // connection) and the Exec step for `s`; returns the Exec step's index.
  size_t AddStatementSteps(Statement* s, std::unique_ptr<EncodedParams> params,
                           std::vector<Step>& steps, std::vector<std::string>* evicted);
  // DEALLOCATE (each in its own Sync) for statements evicted from the LRU.
  static void AddDeallocateSteps(const std::vector<std::string>& names, std::vector<Step>& steps);
  absl::Status SendStep(Step& step);
  // Waits until a result is ready or the connection fails; enforces `deadline`
  // and `cancelled` by cancelling the backend query.
  absl::Status AwaitResult(absl::Time deadline, const std::atomic<bool>* cancelled,
                           CancelState* cancel);
  // One bounded wait for the socket (readable, or writable too), after
  // enforcing the deadline: sends the cancel request when it is due, and
  // breaks the connection once the cancel grace has passed.
  absl::Status WaitForServer(absl::Time deadline, const std::atomic<bool>* cancelled,
                             CancelState* cancel, bool want_write);
  absl::Status EnforceDeadline(absl::Time deadline, const std::atomic<bool>* cancelled,
                               CancelState* cancel, absl::Time now);
  void ConsumeResultsOf(Step& step);
  // Reads and drops the rows of a COPY TO STDOUT, so the statements pipelined
  // behind it still get their results.
  absl::Status DrainCopyOut(Step& step, CancelState* cancel, absl::Time cancel_deadline,
                            const std::atomic<bool>* cancelled);
  // Asks the server to cancel the statement running on this connection (a
  // synchronous cancel request on a connection of its own) and records why.
  void CancelBackend(CancelState* cancel, int reason, absl::Time now);
  absl::Status HandleRows(::pg_result* res, Step& step);
  // The statement_timeout (ms) a statement with this deadline runs under.
  static int64_t StatementTimeoutFor(absl::Time deadline);
  // SET statement_timeout = want (and its Sync) unless the session has it.
  void SetStatementTimeoutSteps(int64_t want, absl::Time deadline, std::vector<Step>& steps);
  Prepared* LookupOrAddPrepared(const std::string& key, absl::string_view sql,
                                std::vector<std::string>* evicted, bool* is_new);
  void ErasePrepared(const std::string& key, const std::string& name);
  // Prepared statements forgotten because their plan went stale (see
  // RunPipeline), to deallocate with the next call's statements.
  std::vector<std::string> TakeStalePrepared() { return std::move(stale_prepared_); }
  absl::Status MarkBroken(absl::string_view what);
  // Whether an AbandonWhen signal is raised.
  bool AbandonRaised() const;
  // One statement of poolside's own and its Sync; `xact_after` gets
  // PQtransactionStatus after the Sync (-1 if it was not read), `tag` the
  // command tag.
  absl::Status RunSimple(const char* sql, absl::Time deadline, int* xact_after = nullptr,
                         std::string* tag = nullptr);
  // `tag`: the statement's command tag.
  absl::Status RunStreamingStatement(Statement& statement, std::string* tag);

  ConnectionOptions options_;
  std::unique_ptr<PqxxConnection> pqxx_;
  ::pg_conn* conn_ = nullptr;
  ::pg_cancel* cancel_ = nullptr;
  bool broken_ = false;
  std::vector<const std::atomic<bool>*> abandon_signals_;
  // The current call must discard the connection when it ends (a COPY was
  // read past, a statement used transaction control).
  bool discard_ = false;
  // The server announced the end of the session (FATAL); what it said.
  bool session_ended_ = false;
  absl::Status session_end_;
  Reach last_call_reach_ = Reach::kAnswered;
  bool listening_ = false;            // Listen() was called: keep notifications
  int64_t statement_timeout_ms_ = 0;  // what the session has now
  uint64_t next_statement_id_ = 0;
  std::vector<std::string> stale_prepared_;
  // LRU of prepared statements, most recent first.
  std::list<Prepared> lru_;
  absl::flat_hash_map<std::string, std::list<Prepared>::iterator> prepared_;
};

// Waiting for the server, for common/db code that drives libpq_conn() itself
// (COPY, copy.h), under the rules of the Connection's own statements, in the
// same code: past `deadline` (or once `*cancelled`) the backend query is
// cancelled, and once the connection's cancel_grace has passed too the
// connection is marked broken and the wait fails UNAVAILABLE, so every loop
// over these waits ends by then. One ServerWait may serve several statements
// in turn: after a cancel, the statements that follow get what is left of
// the grace. Used by the connection's lease holder, like the Connection.
class Connection::ServerWait {
 public:
  explicit ServerWait(Connection& conn, absl::Time deadline,
                      const std::atomic<bool>* cancelled = nullptr);
  ~ServerWait();
  ServerWait(const ServerWait&) = delete;
  ServerWait& operator=(const ServerWait&) = delete;

  // Sends what libpq holds, then waits until a result can be read without
  // blocking (PQisBusy false).
  absl::Status AwaitResult();
  // One bounded wait for the socket to be readable (or, with `want_write`,
  // writable), input consumed; callers loop.
  absl::Status WaitForServer(bool want_write);
  // The backend query was cancelled because the deadline passed (a statement
  // failing with SQLSTATE 57014 then failed by DEADLINE_EXCEEDED).
  bool cancelled_for_deadline() const;

 private:
  Connection& conn_;
  const absl::Time deadline_;
  const std::atomic<bool>* const cancelled_;
  std::unique_ptr<CancelState> cancel_;
};

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_CONNECTION_H_
