#include "common/db/connection.h"

#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <optional>
#include <pqxx/connection>
#include <pqxx/connection_base>
#include <pqxx/connectionpolicy>
#include <pqxx/except>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/db/conninfo.h"
#include "common/db/error.h"
#include "common/db/socket_wait.h"
#include "common/db/value_codec.h"
#include "common/sql/statement_analyzer.h"
#include "common/telemetry/log.h"

namespace poolside::db {
namespace {

// Session settings sent in the startup packet (no extra round trip); they
// override a role's or database's defaults. The value codec depends on them.
constexpr absl::string_view kSessionOptions =
    "-c DateStyle=ISO,YMD -c TimeZone=UTC -c IntervalStyle=postgres "
    "-c extra_float_digits=3 -c bytea_output=hex -c client_encoding=UTF8";
// Sent after the DSN's own options, so they cannot be overridden there either:
// common/sql's analyzer decides what a caller may run reading the text with
// standard_conforming_strings on, and a server reading backslashes in ''
// strings as escapes would end a literal elsewhere and run a statement the
// analyzer never saw.
constexpr absl::string_view kEnforcedOptions = "-c standard_conforming_strings=on";

constexpr int kCancelDeadline = 1;
constexpr int kCancelCaller = 2;
constexpr int kCancelRefused = 3;  // a sink refused rows: the rest is not wanted

// How long the rest of a result a sink refused is read and dropped before the
// backend query is cancelled. A cancel request costs a new connection to the
// server (and a process there) and holds this worker until it is delivered,
// far more than reading a small rest, which is usually already on its way.
constexpr absl::Duration kDrainBeforeCancel = absl::Milliseconds(20);

// The longest single poll() of a wait: a wait without a deadline still comes
// back to check the caller's flags and the connection now and then.
constexpr int kMaxPollSliceMs = 1000;

// What a statement's command tag says it did to the transaction.
enum TxnControl {
  kTxnNone = 0,
  kTxnOpens,   // BEGIN, START TRANSACTION: a transaction block is open after it
  kTxnWithin,  // SAVEPOINT, RELEASE: only possible inside a transaction block
  kTxnEnds,    // COMMIT, ROLLBACK (also ROLLBACK TO), PREPARE TRANSACTION, ...
};

TxnControl TxnControlOf(absl::string_view tag) {
  if (tag == "BEGIN" || tag == "START TRANSACTION") return kTxnOpens;
  if (tag == "SAVEPOINT" || tag == "RELEASE") return kTxnWithin;
  if (tag == "COMMIT" || tag == "ROLLBACK" || tag == "PREPARE TRANSACTION" ||
      tag == "COMMIT PREPARED" || tag == "ROLLBACK PREPARED") {
    return kTxnEnds;
  }
  return kTxnNone;
}

// The error a statement that is transaction control gets. `tag` is its
// command tag (what it did), `where` what poolside runs it in.
absl::Status TxnControlRefused(absl::string_view tag, absl::string_view where) {
  return absl::InvalidArgumentError(absl::StrCat(
      "transaction control (", tag, ") is not allowed ", where,
      "; use ExecuteTransaction for a transaction of several statements. The connection was "
      "discarded and anything left open on it rolled back"));
}

absl::Status CopyRefused(ExecStatusType kind) {
  absl::string_view what;
  switch (kind) {
    case PGRES_COPY_OUT:
      what =
          "COPY ... TO STDOUT sends its rows outside the statement protocol; select them "
          "instead (ExecuteStream for large results)";
      break;
    case PGRES_COPY_IN:
      what = "COPY ... FROM STDIN; nothing was copied. Rows come in through the ingest service";
      break;
    default:
      what = "COPY BOTH (replication) is not a statement";
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("COPY is not supported here: ", what, ". The connection was discarded"));
}

bool SeverityEndsSession(const PGresult* res) {
  const char* severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
  if (severity == nullptr) return false;
  const absl::string_view sev = severity;
  return sev == "FATAL" || sev == "PANIC";
}

// PostgreSQL's answer to executing a prepared statement whose result columns
// changed since it was prepared (SQLSTATE 0A000 is also other things).
bool IsStalePlan(const absl::Status& s) {
  return !s.ok() && SqlStateOf(s) == "0A000" &&
         absl::StrContains(s.message(), "cached plan must not change result type");
}

// The same code with more said after the message (the SQLSTATE payload kept).
absl::Status Annotate(const absl::Status& s, absl::string_view more) {
  absl::Status out(s.code(), absl::StrCat(s.message(), more));
  if (auto state = s.GetPayload(kSqlStatePayload)) out.SetPayload(kSqlStatePayload, *state);
  return out;
}

// Parses the user's DSN (keyword/value or URI) and rebuilds it with poolside's
// additions, so both forms work and the user's own settings win where they set
// them (their `options` are kept after ours), except kEnforcedOptions.
absl::StatusOr<Conninfo> BuildConninfo(const ConnectionOptions& o) {
  absl::StatusOr<Conninfo> c = Conninfo::Parse(o.dsn);
  if (!c.ok()) return c.status();
  c->SetDefault("application_name", o.application_name);
  c->SetDefault("connect_timeout",
                absl::StrCat(std::max<int64_t>(1, absl::ToInt64Seconds(o.connect_timeout))));
  const std::string* options = c->Get("options");
  c->Set("options", absl::StrCat(kSessionOptions, options == nullptr ? "" : " ",
                                 options == nullptr ? "" : *options, " ", kEnforcedOptions));
  return c;
}

// When a connect watching abandon flags gives up by itself (CapturingPolicy):
// at connect_timeout as libpq applies it (whole seconds, at least 2; never
// without a valid one). Nullopt for a DSN of several hosts, which keeps
// libpq's blocking connect (a connect_timeout for each host), flags unseen.
std::optional<absl::Time> NonBlockingGiveUp(const Conninfo& c) {
  for (const char* key : {"host", "hostaddr"}) {
    const std::string* hosts = c.Get(key);
    if (hosts != nullptr && absl::StrContains(*hosts, ',')) return std::nullopt;
  }
  int64_t seconds = 0;
  const std::string* timeout = c.Get("connect_timeout");
  if (timeout == nullptr || !absl::SimpleAtoi(*timeout, &seconds) || seconds <= 0) {
    return absl::InfiniteFuture();
  }
  return absl::Now() + absl::Seconds(std::max<int64_t>(2, seconds));
}

// A libpqxx connection policy that remembers the libpq handle it opens: the
// documented way to combine libpqxx's connection handling with libpq calls.
// With `abandon` flags (Open's) it connects without blocking
// (PQconnectStart, CompleteConnect) and gives up when one is raised, or at
// `give_up` (connect_timeout, which libpq applies only to a blocking
// connect).
class CapturingPolicy : public pqxx::connect_direct {
 public:
  CapturingPolicy(const std::string& opts, absl::Time give_up,
                  absl::Span<const std::atomic<bool>* const> abandon)
      : pqxx::connect_direct(opts), give_up_(give_up), abandon_(abandon.begin(), abandon.end()) {}
  handle do_startconnect(handle orig) override {
    if (abandon_.empty() || orig != nullptr) {
      handle_ = pqxx::connect_direct::do_startconnect(orig);
      return handle_;
    }
    handle_ = PQconnectStart(options().c_str());
    if (handle_ == nullptr) throw std::bad_alloc();
    if (PQstatus(handle_) == CONNECTION_BAD) {
      const std::string why = PQerrorMessage(handle_);
      PQfinish(handle_);
      handle_ = nullptr;
      throw pqxx::broken_connection(why);
    }
    return handle_;
  }
  handle do_completeconnect(handle orig) override {
    if (abandon_.empty() || orig == nullptr || PQstatus(orig) == CONNECTION_OK) {
      handle_ = pqxx::connect_direct::do_completeconnect(orig);
      return handle_;
    }
    // Thrown, the handle is closed by libpqxx (it still holds it); every
    // failure reads as an unreachable server (UNAVAILABLE).
    if (absl::Status s = CompleteConnect(orig, give_up_, abandon_); !s.ok()) {
      throw pqxx::broken_connection(std::string(s.message()));
    }
    handle_ = orig;
    return handle_;
  }
  handle do_dropconnect(handle orig) noexcept override {
    handle_ = nullptr;
    return pqxx::connect_direct::do_dropconnect(orig);
  }
  handle do_disconnect(handle orig) noexcept override {
    handle_ = nullptr;
    return pqxx::connect_direct::do_disconnect(orig);
  }
  PGconn* raw() const { return handle_; }

 private:
  const absl::Time give_up_;
  const std::vector<const std::atomic<bool>*> abandon_;
  handle handle_ = nullptr;
};

int64_t CeilSeconds(absl::Duration d) {
  return absl::ToInt64Seconds(absl::Ceil(d, absl::Seconds(1)));
}

}  // namespace

class Connection::PqxxConnection : public pqxx::connection_base {
 public:
  PqxxConnection(const std::string& conninfo, absl::Time give_up,
                 absl::Span<const std::atomic<bool>* const> abandon)
      : pqxx::connection_base(policy_), policy_(conninfo, give_up, abandon) {
    init();
  }
  ~PqxxConnection() noexcept { close(); }
  PGconn* raw() const { return policy_.raw(); }

 private:
  CapturingPolicy policy_;
};

// Whether and why a statement's backend query was cancelled. Shared by all the
// steps of one statement (Parse, Execute): libpq may still be waiting on an
// earlier step while the server already runs the statement.
struct Connection::CancelState {
  int reason = 0;
  absl::Time give_up = absl::InfiniteFuture();
  // Cancel (kCancelRefused) at this time unless the statement ended by then.
  absl::Time cancel_at = absl::InfiniteFuture();
  // For a statement with someone else's work pipelined behind it no cancel
  // request is sent (it could reach the next statement instead): the server's
  // statement_timeout ends it. Past this time the server has not done that
  // either, and the connection is given up.
  absl::Time unanswered_by = absl::InfiniteFuture();
};

struct Connection::Step {
  // kMarker: a Parse of the empty unnamed statement, sent first when a
  // pipeline would otherwise start with a statement's Execute: if the server
  // ends the session before answering it, no statement of the pipeline ran.
  enum Kind { kSimple, kPrepare, kExec, kSync, kMarker };
  Kind kind;
  std::string sql;                 // kSimple: the SQL text
  Statement* statement = nullptr;  // kExec/kPrepare
  Prepared* prepared = nullptr;    // kExec/kPrepare
  std::string prepared_key;        // kPrepare: to forget it if it fails
  std::string prepared_name;
  std::unique_ptr<EncodedParams> params;  // kExec
  absl::Time deadline = absl::InfiniteFuture();
  const std::atomic<bool>* cancelled = nullptr;
  absl::Status status;
  bool began = false;             // sink->Begin called
  bool sink_failed = false;       // sink refused a row; discard the rest
  CancelState* cancel = nullptr;  // null: the step's own local_cancel
  CancelState local_cancel;
  int64_t timeout_ms = -1;         // kSimple SET statement_timeout: the value
  int64_t timeout_before_ms = -1;  // ... and the one it replaces (-1: unknown)
  // The statement_timeout the server runs this step under (-1: unknown). Set
  // by RunPipeline.
  int64_t server_timeout_ms = -1;
  // A later step of this pipeline is another statement's (or a SET/DEALLOCATE
  // of its own): the server may already run it, so a cancel request sent for
  // this step could hit that one instead. Set by RunPipeline.
  bool others_behind = false;
  // The caller's statement this step belongs to (its index in the call), or
  // SIZE_MAX for poolside's own steps.
  size_t owner = SIZE_MAX;

  // What happened to it, recorded while reading results.
  bool sent = false;           // handed to libpq
  bool done = false;           // every result of it was read
  bool answered = false;       // the server replied to it (rows, a command, an error)
  bool completed = false;      // its command completed on the server
  bool server_error = false;   // the server's reply was an error (in `status`)
  bool session_ended = false;  // ... one that ended the session (FATAL)
  bool skipped = false;        // the server skipped it after an earlier error
  bool refused = false;        // a COPY: failed here, its own outcome
  TxnControl txn = kTxnNone;   // kExec: its command tag was transaction control
  std::string tag;             // kExec/kSimple: its command tag
  int xact = -1;               // kSync: PQtransactionStatus when its result was read
};

Connection::Connection(const ConnectionOptions& options) : options_(options) {}

Connection::~Connection() {
  if (cancel_ != nullptr) PQfreeCancel(cancel_);
  // pqxx_ closes the libpq connection.
}

absl::StatusOr<std::unique_ptr<Connection>> Connection::Open(
    const ConnectionOptions& options, absl::Span<const std::atomic<bool>* const> abandon) {
  absl::StatusOr<Conninfo> conninfo = BuildConninfo(options);
  if (!conninfo.ok()) return conninfo.status();
  absl::Time give_up = absl::InfiniteFuture();
  if (!abandon.empty()) {
    const std::optional<absl::Time> t = NonBlockingGiveUp(*conninfo);
    if (t.has_value()) {
      give_up = *t;
    } else {
      abandon = {};
    }
  }
  std::unique_ptr<Connection> c(new Connection(options));
  try {
    c->pqxx_ = std::make_unique<PqxxConnection>(conninfo->ToString(), give_up, abandon);
    c->pqxx_->inhibit_reactivation(true);
  } catch (const std::exception& e) {
    return StatusFromException(e);
  }
  c->conn_ = c->pqxx_->raw();
  if (c->conn_ == nullptr || PQstatus(c->conn_) != CONNECTION_OK) {
    return absl::UnavailableError("database connection failed");
  }
  PQsetNoticeReceiver(c->conn_, &Connection::OnNotice, c.get());
  if (PQsetnonblocking(c->conn_, 1) != 0) {
    return absl::InternalError("cannot switch the connection to non-blocking mode");
  }
  c->cancel_ = PQgetCancel(c->conn_);
  return c;
}

int Connection::server_version() const { return conn_ ? PQserverVersion(conn_) : 0; }

absl::Status Connection::MarkBroken(absl::string_view what) {
  broken_ = true;
  if (session_ended_) {
    return Annotate(session_end_, absl::StrCat(" (while ", what, ")"));
  }
  std::string msg = conn_ ? PQerrorMessage(conn_) : "";
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  if (msg.size() > kMaxErrorMessage) msg.resize(kMaxErrorMessage);
  return absl::UnavailableError(
      absl::StrCat("connection to the database lost while ", what, msg.empty() ? "" : ": ", msg));
}

void Connection::OnNotice(void* self, const PGresult* res) {
  auto* c = static_cast<Connection*>(self);
  const char* state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
  // A FATAL outside a statement is the server saying goodbye (e.g. the backend
  // was terminated); the socket closes right after it. 57P02 (another backend
  // crashed) comes as a WARNING and ends the session all the same.
  if (SeverityEndsSession(res) || (state != nullptr && absl::string_view(state) == "57P02")) {
    if (!c->session_ended_) {
      const char* primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
      c->session_end_ =
          StatusFromSqlState(state != nullptr ? state : "",
                             absl::StrCat("the server ended the session: ",
                                          primary != nullptr ? primary : "(no message)"));
    }
    c->session_ended_ = true;
  }
  if (telemetry::LogEnabled(telemetry::LogLevel::kDebug)) {
    telemetry::LogDebug("postgres notice", {{"notice", std::string(PQresultErrorMessage(res))}});
  }
}

absl::Status Connection::ExpectIdle() {
  if (broken_ || conn_ == nullptr) return absl::UnavailableError("connection is broken");
  if (session_ended_) return MarkBroken("idle");
  if (PQstatus(conn_) != CONNECTION_OK) return MarkBroken("idle");
  if (PQtransactionStatus(conn_) != PQTRANS_IDLE) {
    broken_ = true;
    return absl::UnavailableError("connection is not idle (a transaction was left open)");
  }
  return absl::OkStatus();
}

bool Connection::LooksAlive() {
  if (!ExpectIdle().ok()) return false;
  // Nothing is expected while idle but asynchronous messages (notices,
  // parameter status, notifications) or the end of the session: a FATAL (to
  // OnNotice once parsed) and the socket closing. Read what is there, a few
  // times at most: the end of the stream shows only on a read after the data.
  for (int reads = 0; reads < 4 && !broken_; ++reads) {
    pollfd pfd{PQsocket(conn_), POLLIN, 0};
    const int rc = ::poll(&pfd, 1, 0);
    if (rc == 0) break;
    if (rc < 0) {
      if (errno != EINTR) broken_ = true;
      continue;
    }
    if ((pfd.revents & POLLNVAL) != 0 || PQconsumeInput(conn_) == 0 ||
        PQstatus(conn_) != CONNECTION_OK) {
      broken_ = true;
      break;
    }
    // PQconsumeInput only reads; parsing happens here. Pooled connections
    // never want notifications (a caller's stray LISTEN must not make them pile
    // up); a listening one keeps them.
    if (!listening_) {
      while (PGnotify* n = PQnotifies(conn_)) PQfreemem(n);
    }
    if (!PQisBusy(conn_)) {
      while (PGresult* r = PQgetResult(conn_)) {
        PQclear(r);
        broken_ = true;
      }
    }
    if (session_ended_) broken_ = true;
  }
  return !broken_;
}

void Connection::CancelBackend(CancelState* cancel, int reason, absl::Time now) {
  cancel->reason = reason;
  cancel->give_up = now + options_.cancel_grace;
  char err[256] = "no cancel handle";
  if (cancel_ == nullptr || PQcancel(cancel_, err, sizeof(err)) == 0) {
    telemetry::LogWarning("cancel request failed", {{"error", err}});
  }
}

bool Connection::AbandonRaised() const {
  for (const std::atomic<bool>* signal : abandon_signals_) {
    if (signal->load(std::memory_order_relaxed)) return true;
  }
  return false;
}

absl::Status Connection::EnforceDeadline(absl::Time deadline, const std::atomic<bool>* cancelled,
                                         CancelState* cancel, absl::Time now) {
  if (!abandon_signals_.empty() && AbandonRaised()) {
    // No cancel request and no grace: the server answers neither.
    broken_ = true;
    return absl::UnavailableError(
        "connection to the database given up while waiting for the server: the server stopped "
        "answering (its probes failed)");
  }
  if (now >= cancel->unanswered_by) {
    return MarkBroken(
        "waiting for a statement past its deadline and the server's statement_timeout (no cancel "
        "request could be sent: other statements are pipelined behind it)");
  }
  if (cancel->reason == 0) {
    int reason = 0;
    if (now >= deadline) {
      reason = kCancelDeadline;
    } else if (cancelled != nullptr && cancelled->load(std::memory_order_relaxed)) {
      reason = kCancelCaller;
    } else if (now >= cancel->cancel_at) {
      reason = kCancelRefused;
    }
    if (reason != 0) CancelBackend(cancel, reason, now);
  } else if (now >= cancel->give_up) {
    return MarkBroken("waiting for a cancelled statement to stop");
  }
  return absl::OkStatus();
}

absl::Status Connection::WaitForServer(absl::Time deadline, const std::atomic<bool>* cancelled,
                                       CancelState* cancel, bool want_write) {
  if (session_ended_) return MarkBroken("waiting for the server");
  const absl::Time now = absl::Now();
  if (absl::Status s = EnforceDeadline(deadline, cancelled, cancel, now); !s.ok()) return s;
  // Wake up at the deadline, and poll the caller's cancel flag now and then.
  absl::Time wake = cancel->reason != 0 ? cancel->give_up : std::min(deadline, cancel->cancel_at);
  wake = std::min(wake, cancel->unanswered_by);
  if ((cancelled != nullptr && cancel->reason == 0) || !abandon_signals_.empty()) {
    wake = std::min(wake, now + absl::Milliseconds(50));
  }
  const int timeout_ms = PollTimeoutMs(now, wake, kMaxPollSliceMs);
  const int fd = PQsocket(conn_);
  if (fd < 0) return MarkBroken("waiting for the server");
  pollfd pfd{fd, static_cast<short>(POLLIN | (want_write ? POLLOUT : 0)), 0};
  const int rc = ::poll(&pfd, 1, timeout_ms);
  if (rc < 0 && errno != EINTR) return MarkBroken("waiting for the server");
  if (rc > 0) {
    if ((pfd.revents & POLLNVAL) != 0) return MarkBroken("waiting for the server");
    if ((pfd.revents & (POLLIN | POLLHUP | POLLERR)) != 0 && PQconsumeInput(conn_) == 0) {
      return MarkBroken("reading");
    }
  }
  return absl::OkStatus();
}

absl::Status Connection::AwaitResult(absl::Time deadline, const std::atomic<bool>* cancelled,
                                     CancelState* cancel) {
  // Each pass sends, finds a result ready, or waits one bounded slice.
  while (true) {
    const int flush = PQflush(conn_);
    if (flush < 0) return MarkBroken("sending");
    if (flush == 0 && !PQisBusy(conn_)) return absl::OkStatus();
    if (absl::Status s = WaitForServer(deadline, cancelled, cancel, flush == 1); !s.ok()) {
      return s;
    }
  }
}

Connection::ServerWait::ServerWait(Connection& conn, absl::Time deadline,
                                   const std::atomic<bool>* cancelled)
    : conn_(conn),
      deadline_(deadline),
      cancelled_(cancelled),
      cancel_(std::make_unique<CancelState>()) {}

Connection::ServerWait::~ServerWait() = default;

absl::Status Connection::ServerWait::AwaitResult() {
  return conn_.AwaitResult(deadline_, cancelled_, cancel_.get());
}

absl::Status Connection::ServerWait::WaitForServer(bool want_write) {
  return conn_.WaitForServer(deadline_, cancelled_, cancel_.get(), want_write);
}

bool Connection::ServerWait::cancelled_for_deadline() const {
  return cancel_->reason == kCancelDeadline;
}

Connection::Prepared* Connection::LookupOrAddPrepared(const std::string& key, absl::string_view sql,
                                                      std::vector<std::string>* evicted,
                                                      bool* is_new) {
  (void)sql;
  auto it = prepared_.find(key);
  if (it != prepared_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second);
    *is_new = false;
    return &*it->second;
  }
  while (!lru_.empty() && lru_.size() >= std::max<size_t>(1, options_.statement_cache_size)) {
    evicted->push_back(lru_.back().name);
    prepared_.erase(lru_.back().key);
    lru_.pop_back();
  }
  lru_.push_front(Prepared{key, absl::StrCat("poolside_", next_statement_id_++), {}, false});
  prepared_[key] = lru_.begin();
  *is_new = true;
  return &lru_.front();
}

void Connection::ErasePrepared(const std::string& key, const std::string& name) {
  auto it = prepared_.find(key);
  if (it == prepared_.end() || it->second->name != name) return;
  lru_.erase(it->second);
  prepared_.erase(it);
}

int64_t Connection::StatementTimeoutFor(absl::Time deadline) {
  // Server-side safety net behind the client-side cancel: whole seconds, rounded
  // up, so it changes rarely and never cuts a statement short of its deadline.
  if (deadline == absl::InfiniteFuture()) return 0;
  return std::max<int64_t>(1, CeilSeconds(deadline - absl::Now())) * 1000;
}

void Connection::SetStatementTimeoutSteps(int64_t want, absl::Time deadline,
                                          std::vector<Step>& steps) {
  if (want == statement_timeout_ms_) return;
  Step set{Step::kSimple};
  set.sql = absl::StrCat("SET statement_timeout = ", want);
  set.timeout_ms = want;
  set.timeout_before_ms = statement_timeout_ms_;
  set.deadline = deadline;
  steps.push_back(std::move(set));
  steps.push_back(Step{Step::kSync});
  statement_timeout_ms_ = want;  // corrected if the SET fails
}

absl::Status Connection::MatchStatementTimeout(absl::Time deadline) {
  if (broken_) return absl::UnavailableError("connection is broken");
  if (PQtransactionStatus(conn_) != PQTRANS_IDLE) return absl::OkStatus();
  std::vector<Step> steps;
  SetStatementTimeoutSteps(StatementTimeoutFor(deadline), deadline, steps);
  if (steps.empty()) return absl::OkStatus();
  absl::Status link = RunPipeline(steps);
  return link.ok() ? steps[0].status : link;
}

absl::Status Connection::SendStep(Step& step) {
  int ok = 1;
  switch (step.kind) {
    case Step::kSimple:
      ok = PQsendQueryParams(conn_, step.sql.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0);
      break;
    case Step::kPrepare: {
      const EncodedParams& p = *step.params;
      ok =
          PQsendPrepare(conn_, step.prepared_name.c_str(), std::string(step.statement->sql).c_str(),
                        p.size(), reinterpret_cast<const Oid*>(p.types()));
      break;
    }
    case Step::kExec: {
      const EncodedParams& p = *step.params;
      ok = PQsendQueryPrepared(conn_, step.prepared->name.c_str(), p.size(), p.values(),
                               p.lengths(), p.formats(), 0);
      break;
    }
    case Step::kSync:
      ok = PQpipelineSync(conn_);
      break;
    case Step::kMarker:
      ok = PQsendPrepare(conn_, "", "", 0, nullptr);
      break;
  }
  if (ok == 1) {
    step.sent = true;
    return absl::OkStatus();
  }
  return MarkBroken("sending a statement");
}

absl::Status Connection::HandleRows(PGresult* res, Step& step) {
  ResultSink* sink = step.statement != nullptr ? step.statement->sink : nullptr;
  if (sink == nullptr || step.sink_failed) return absl::OkStatus();
  const int ncols = PQnfields(res);
  if (!step.began) {
    step.began = true;
    Prepared* prep = step.prepared;
    absl::Status st;
    if (prep != nullptr && prep->columns_known) {
      st = sink->Begin(prep->columns);
    } else {
      google::protobuf::RepeatedPtrField<v1::Column> columns;
      for (int c = 0; c < ncols; ++c) {
        v1::Column* col = columns.Add();
        col->set_name(PQfname(res, c));
        col->set_type_oid(PQftype(res, c));
        col->set_type_name(std::string(TypeName(PQftype(res, c))));
      }
      st = sink->Begin(columns);
      if (prep != nullptr) {
        prep->columns = std::move(columns);
        prep->columns_known = true;
      }
    }
    if (!st.ok()) {
      step.sink_failed = true;
      return st;
    }
  }
  const int nrows = PQntuples(res);
  for (int r = 0; r < nrows; ++r) {
    v1::Row* row = sink->NewRow();
    size_t bytes = 0;
    for (int c = 0; c < ncols; ++c) {
      v1::Value* v = row->add_values();
      DecodeCell(PQgetvalue(res, r, c), PQgetlength(res, r, c), PQgetisnull(res, r, c),
                 PQftype(res, c), v);
      bytes += ValueBytes(*v);
    }
    absl::Status st = sink->RowDone(bytes);
    if (!st.ok()) {
      step.sink_failed = true;
      return st;
    }
  }
  return absl::OkStatus();
}

void Connection::ConsumeResultsOf(Step& step) {
  // Called with a result ready; reads this step's results up to its terminator
  // (NULL for a command, PGRES_PIPELINE_SYNC for a sync). Every pass either
  // takes a result (progress) or waits a bounded slice in AwaitResult, and
  // every result kind either is consumed here or ends the step: COPY states
  // (where libpq hands out the same result again) are read past or end the
  // connection.
  int stray_nulls = 0;
  CancelState* cancel = step.cancel != nullptr ? step.cancel : &step.local_cancel;
  // When a cancel request goes out: at the deadline or the caller's cancel,
  // unless someone else's statement is pipelined behind this one. The server
  // may already have finished this step and started that one, and a cancel
  // request stops whatever the backend runs when it arrives: another caller's
  // statement would fail (a write among them). Such a step is ended by the
  // statement_timeout it runs under (set from its deadline, rounded up to
  // whole seconds), which the server applies to this statement alone.
  absl::Time cancel_deadline = step.deadline;
  const std::atomic<bool>* cancelled = step.cancelled;
  if (step.others_behind) {
    cancel_deadline = absl::InfiniteFuture();
    cancelled = nullptr;
    if (step.deadline != absl::InfiniteFuture() &&
        cancel->unanswered_by == absl::InfiniteFuture()) {
      // The server started this statement's timer before its results are
      // read here, so by then at the latest. Unknown timeout: the deadline.
      const absl::Duration timeout = step.server_timeout_ms > 0
                                         ? absl::Milliseconds(step.server_timeout_ms)
                                         : absl::ZeroDuration();
      cancel->unanswered_by =
          std::max(step.deadline, absl::Now() + timeout) + options_.cancel_grace;
    }
  }
  while (true) {
    absl::Status wait = AwaitResult(cancel_deadline, cancelled, cancel);
    if (!wait.ok()) {
      if (step.status.ok()) step.status = wait;
      return;
    }
    PGresult* res = PQgetResult(conn_);
    if (res == nullptr) {
      if (step.kind != Step::kSync) {
        step.done = true;
        // The server ended the session with this step's error: nothing else
        // comes but the socket closing.
        if (session_ended_) broken_ = true;
        return;
      }
      // A Sync's first result is PGRES_PIPELINE_SYNC; more than one NULL
      // before it means the results are out of step with what was sent.
      if (++stray_nulls > 1) {
        absl::Status lost = MarkBroken("reading results out of step with the statements sent");
        if (step.status.ok()) step.status = lost;
        return;
      }
      continue;
    }
    const ExecStatusType rs = PQresultStatus(res);
    switch (rs) {
      case PGRES_PIPELINE_SYNC:
        PQclear(res);
        if (step.kind == Step::kSync) {
          step.answered = step.done = step.completed = true;
          // Exact only at the pipeline's last Sync: with commands still
          // queued behind it, libpq reports PQTRANS_ACTIVE.
          step.xact = PQtransactionStatus(conn_);
          return;
        }
        {
          absl::Status lost = MarkBroken("reading results out of step with the statements sent");
          if (step.status.ok()) step.status = lost;
        }
        return;
      case PGRES_SINGLE_TUPLE:
      case PGRES_TUPLES_OK: {
        step.answered = true;
        if (rs == PGRES_TUPLES_OK) step.completed = true;
        absl::Status st = HandleRows(res, step);
        if (!st.ok() && step.status.ok()) {
          step.status = st;
          // The rest is read and dropped. If it goes on for a while, the
          // server is told to stop producing it, unless a later statement in
          // this pipeline belongs to someone else: the server may already run
          // that one, and a cancel request would hit it instead.
          if (cancel->reason == 0 && !step.others_behind) {
            cancel->cancel_at = absl::Now() + kDrainBeforeCancel;
          }
        } else if (step.sink_failed && cancel->reason == 0) {
          // Rows that are already here never make AwaitResult wait.
          if (const absl::Time now = absl::Now(); now >= cancel->cancel_at) {
            CancelBackend(cancel, kCancelRefused, now);
          }
        }
        if (rs == PGRES_TUPLES_OK && step.status.ok() && step.statement && step.statement->sink) {
          step.statement->sink->Finish(std::strtoll(PQcmdTuples(res), nullptr, 10),
                                       PQcmdStatus(res));
        }
        break;
      }
      case PGRES_COMMAND_OK:
      case PGRES_EMPTY_QUERY:
        step.answered = step.completed = true;
        if (step.kind == Step::kExec || step.kind == Step::kSimple) step.tag = PQcmdStatus(res);
        if (step.kind == Step::kExec) {
          // A caller's statement that is transaction control: whatever it did
          // to the transaction, this connection is not reused.
          step.txn = TxnControlOf(step.tag);
          if (step.txn != kTxnNone) discard_ = true;
        }
        if (step.kind == Step::kExec && step.statement && step.statement->sink &&
            step.status.ok()) {
          ResultSink* sink = step.statement->sink;
          if (!step.began) {
            step.began = true;
            absl::Status st = sink->Begin({});
            if (!st.ok()) step.status = st;
          }
          if (step.status.ok()) {
            sink->Finish(std::strtoll(PQcmdTuples(res), nullptr, 10), PQcmdStatus(res));
          }
        }
        break;
      case PGRES_PIPELINE_ABORTED:
        step.skipped = true;
        if (step.status.ok()) {
          step.status = absl::AbortedError(
              "not executed: an earlier statement in the same transaction failed");
        }
        break;
      case PGRES_COPY_OUT:
        PQclear(res);
        step.answered = step.refused = true;
        if (step.status.ok()) step.status = CopyRefused(rs);
        discard_ = true;
        if (!step.others_behind) {
          // Nothing behind it needs the protocol in step: drop the connection
          // now rather than read a COPY of any size.
          broken_ = true;
          return;
        }
        // Statements of other callers follow: read the rows past, so they
        // still get their results. The COPY's own result follows the data.
        if (!DrainCopyOut(step, cancel, cancel_deadline, cancelled).ok()) return;
        continue;
      case PGRES_COPY_IN:
      case PGRES_COPY_BOTH:
        // The server now waits for COPY data; it reads the messages pipelined
        // behind as a protocol error and skips to a later Sync, so libpq's
        // queue and the server are no longer in step: drop the connection.
        PQclear(res);
        step.answered = step.refused = true;
        if (step.status.ok()) step.status = CopyRefused(rs);
        broken_ = true;
        return;
      case PGRES_FATAL_ERROR: {
        const char* state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        const char* primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        const char* detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
        absl::Status st =
            StatusFromSqlState(state ? state : "", primary ? primary : PQresultErrorMessage(res),
                               detail ? detail : "");
        // An error with a SQLSTATE came from the server; one without is
        // libpq's own (the connection was lost).
        if (state != nullptr) {
          step.answered = step.server_error = true;
          if (SeverityEndsSession(res)) {
            step.session_ended = true;
            if (!session_ended_) session_end_ = st;
            session_ended_ = true;
          }
        }
        if (state != nullptr && absl::string_view(state) == "57014") {
          if (cancel->reason == kCancelDeadline) {
            st = absl::DeadlineExceededError(
                "statement ran past the call's deadline and was cancelled on the "
                "server (SQLSTATE 57014)");
          } else if (cancel->reason == kCancelCaller && step.status.ok()) {
            st = absl::CancelledError("statement cancelled by the caller (SQLSTATE 57014)");
          }
          st.SetPayload(kSqlStatePayload, absl::Cord("57014"));
        }
        if (step.status.ok()) step.status = st;
        break;
      }
      default: {
        // PGRES_BAD_RESPONSE (libpq could not make sense of the server) or a
        // kind this code does not know: nothing more can be trusted.
        const std::string kind = PQresStatus(rs);
        PQclear(res);
        absl::Status lost = MarkBroken(absl::StrCat("reading an unexpected result (", kind, ")"));
        if (step.status.ok()) step.status = lost;
        return;
      }
    }
    PQclear(res);
    if (PQstatus(conn_) != CONNECTION_OK) {
      absl::Status lost = MarkBroken("reading results");
      if (step.status.ok()) step.status = lost;
      return;
    }
  }
}

absl::Status Connection::DrainCopyOut(Step& step, CancelState* cancel, absl::Time cancel_deadline,
                                      const std::atomic<bool>* cancelled) {
  for (uint64_t rows = 0;; ++rows) {
    // Rows may keep coming without a wait: look at the clock now and then.
    if (rows % 256 == 255) {
      if (absl::Status s = EnforceDeadline(cancel_deadline, cancelled, cancel, absl::Now());
          !s.ok()) {
        return s;
      }
    }
    char* buf = nullptr;
    const int n = PQgetCopyData(conn_, &buf, /*async=*/1);
    if (n > 0) {
      PQfreemem(buf);
      continue;
    }
    if (n == -1) return absl::OkStatus();  // the COPY's own result follows
    if (n < -1) return MarkBroken("reading past COPY data");
    if (absl::Status s = WaitForServer(cancel_deadline, cancelled, cancel, false); !s.ok()) {
      return s;
    }
  }
}

size_t Connection::AddStatementSteps(Statement* s, std::unique_ptr<EncodedParams> params,
                                     std::vector<Step>& steps, std::vector<std::string>* evicted) {
  bool is_new = false;
  std::string key = absl::StrCat(s->sql, "\x1f", params->TypeSignature());
  Prepared* prep = LookupOrAddPrepared(key, s->sql, evicted, &is_new);
  if (is_new) {
    Step p{Step::kPrepare};
    p.statement = s;
    p.prepared = prep;
    p.prepared_key = key;
    p.prepared_name = prep->name;
    p.params = std::make_unique<EncodedParams>();
    if (s->params != nullptr) (void)p.params->Encode(*s->params);
    steps.push_back(std::move(p));
  }
  Step e{Step::kExec};
  e.statement = s;
  e.prepared = prep;
  e.params = std::move(params);
  steps.push_back(std::move(e));
  return steps.size() - 1;
}

void Connection::AddDeallocateSteps(const std::vector<std::string>& names,
                                    std::vector<Step>& steps) {
  for (const std::string& name : names) {
    Step d{Step::kSimple};
    d.sql = absl::StrCat("DEALLOCATE ", name);
    steps.push_back(std::move(d));
    steps.push_back(Step{Step::kSync});
  }
}

absl::Status Connection::RunPipeline(std::vector<Step>& steps) {
  if (broken_) return absl::UnavailableError("connection is broken");
  if (PQenterPipelineMode(conn_) != 1) return MarkBroken("entering pipeline mode");
  absl::Status link;
  size_t sent = 0;
  for (; sent < steps.size(); ++sent) {
    link = SendStep(steps[sent]);
    if (!link.ok()) break;
  }
  if (link.ok()) {
    // Which steps have someone else's work behind them (Step::others_behind):
    // a step's owner is its statement's CancelState, or the step itself.
    const void* later = nullptr;  // the owner of the nearest later step
    bool mixed = false;           // the later steps have more than one owner
    for (size_t i = steps.size(); i-- > 0;) {
      Step& step = steps[i];
      const void* owner = step.cancel != nullptr ? static_cast<const void*>(step.cancel) : &step;
      step.others_behind = mixed || (later != nullptr && later != owner);
      if (step.kind == Step::kSync) continue;
      if (later != nullptr && later != owner) mixed = true;
      later = owner;
    }
    // The statement_timeout each step runs under: the session's, as each SET
    // of this pipeline leaves it (statement_timeout_ms_ already says the last).
    int64_t timeout = statement_timeout_ms_;
    for (const Step& step : steps) {
      if (step.kind == Step::kSimple && step.timeout_ms >= 0) {
        timeout = step.timeout_before_ms;
        break;
      }
    }
    for (Step& step : steps) {
      step.server_timeout_ms = timeout;
      if (step.kind == Step::kSimple && step.timeout_ms >= 0) timeout = step.timeout_ms;
    }
    for (size_t i = 0; i < steps.size(); ++i) {
      Step& step = steps[i];
      if (step.kind == Step::kExec && step.statement && step.statement->sink) {
        // Rows arrive one PGresult each, so limits apply as they stream in.
        PQsetSingleRowMode(conn_);
      }
      ConsumeResultsOf(step);
      if (broken_) {
        link = step.status.ok() ? absl::UnavailableError("connection lost") : step.status;
        break;
      }
    }
  }
  if (!broken_ && PQexitPipelineMode(conn_) != 1) {
    absl::Status lost = MarkBroken("leaving pipeline mode");
    if (link.ok()) link = lost;
  }
  // A COPY was read past or a statement used transaction control: the results
  // are all here, and the connection is not reused.
  if (discard_) broken_ = true;
  std::vector<std::pair<std::string, std::string>> stale;  // key, name
  for (Step& step : steps) {
    // A step whose results were all read has its own outcome.
    if (!link.ok() && step.status.ok() && !step.done) step.status = link;
    if (step.kind == Step::kPrepare && !step.status.ok()) {
      ErasePrepared(step.prepared_key, step.prepared_name);
    }
    // A statement prepared before a table it reads changed shape (a
    // migration, another caller's ALTER TABLE) fails every later execution
    // with "cached plan must not change result type": forget it, so that its
    // next use prepares it again, and deallocate it with the next call. It
    // failed before it ran: safe to retry.
    if (step.kind == Step::kExec && step.prepared != nullptr && IsStalePlan(step.status)) {
      absl::Status retry(absl::StatusCode::kAborted,
                         absl::StrCat(step.status.message(),
                                      "; the statement was prepared before a table it uses "
                                      "changed and did not run; it is prepared again: retry"));
      if (auto state = step.status.GetPayload(kSqlStatePayload)) {
        retry.SetPayload(kSqlStatePayload, *state);
      }
      step.status = retry;
      stale.emplace_back(step.prepared->key, step.prepared->name);
    }
    if (step.kind == Step::kSimple && step.timeout_ms >= 0 && !step.status.ok()) {
      statement_timeout_ms_ = -1;  // unknown: set again next time
    }
  }
  // After the loop: steps of this pipeline may share one Prepared.
  for (const auto& [key, name] : stale) {
    auto it = prepared_.find(key);
    if (it == prepared_.end() || it->second->name != name) continue;
    ErasePrepared(key, name);
    stale_prepared_.push_back(name);
  }
  return link;
}

telemetry::Span Connection::StartStatementSpan(absl::string_view sql, const StatementLabels* labels,
                                               const telemetry::SpanContext& parent) const {
  if (telemetry::GlobalTracer() == nullptr) return telemetry::Span();
  const telemetry::SpanContext& p = parent.valid() ? parent : telemetry::CurrentSpanContext();
  if (!p.valid()) return telemetry::Span();
  const char* db = conn_ != nullptr ? PQdb(conn_) : nullptr;
  std::shared_ptr<const StatementLabels> derived;
  if (labels == nullptr) {
    // Statements whose caller analyzed nothing (poolside's own, the cache's
    // fills): a memo of their own, small, since few distinct texts come
    // this way. Thread-safe; never destroyed (used until exit).
    static sql::StatementAnalyzer* const analyzer =
        new sql::StatementAnalyzer(sql::StatementAnalyzer::Options{1 << 20, 16 << 10});
    std::shared_ptr<const sql::Analysis> a = analyzer->Analyze(sql);
    if (a->parse_error.ok() && a->statement_count == 1) {
      derived = StatementLabelsFor(*a);
      labels = derived.get();
    }
  }
  std::string operation;
  if (labels != nullptr && !labels->operation.empty()) {
    operation = labels->operation;
  } else {
    absl::string_view rest = absl::StripLeadingAsciiWhitespace(sql);
    size_t word = 0;
    while (word < rest.size() && absl::ascii_isalpha(static_cast<unsigned char>(rest[word]))) {
      ++word;
    }
    operation = absl::AsciiStrToUpper(rest.substr(0, std::min<size_t>(word, 32)));
  }
  // The name: the summary, else "<operation> <database>" (the conventions'
  // "{db.operation.name} {target}"), else the system.
  std::string name;
  if (labels != nullptr && !labels->summary.empty()) {
    name = labels->summary;
  } else if (!operation.empty()) {
    name = db != nullptr ? absl::StrCat(operation, " ", db) : operation;
  } else {
    name = "postgresql";
  }
  telemetry::Span span = telemetry::StartSpan(name, telemetry::SpanKind::kClient, p);
  if (!span.recording()) return span;
  span.SetAttribute("db.system.name", "postgresql");
  if (db != nullptr) span.SetAttribute("db.namespace", db);
  if (!operation.empty()) span.SetAttribute("db.operation.name", operation);
  if (labels != nullptr) {
    if (!labels->summary.empty()) span.SetAttribute("db.query.summary", labels->summary);
    if (!labels->query_text.empty()) {
      span.SetAttribute("db.query.text", absl::string_view(labels->query_text).substr(0, 4096));
    }
    if (!labels->collection.empty()) span.SetAttribute("db.collection.name", labels->collection);
  }
  if (conn_ != nullptr) {
    if (const char* host = PQhost(conn_); host != nullptr && *host != '\0') {
      span.SetAttribute("server.address", host);
    }
    int port = 0;
    if (const char* p = PQport(conn_); p != nullptr && absl::SimpleAtoi(p, &port)) {
      span.SetAttribute("server.port", port);
    }
  }
  return span;
}

void Connection::EndStatementSpan(telemetry::Span& span, const absl::Status& status) {
  if (span.recording() && !status.ok()) {
    const std::string sqlstate = SqlStateOf(status);
    if (!sqlstate.empty()) span.SetAttribute("db.response.status_code", sqlstate);
    // The conventions' error.type: the SQLSTATE when the server sent one,
    // else what went wrong on this side (UNAVAILABLE, DEADLINE_EXCEEDED...).
    span.SetAttribute("error.type",
                      sqlstate.empty() ? absl::StatusCodeToString(status.code()) : sqlstate);
  }
  span.SetStatus(status);
}

absl::Status Connection::RunIndependent(absl::Span<Statement* const> statements, uint64_t* reruns) {
  std::vector<telemetry::Span> spans;
  if (telemetry::GlobalTracer() != nullptr) {
    spans.reserve(statements.size());
    for (Statement* s : statements) {
      spans.push_back(StartStatementSpan(s->sql, s->labels.get(), s->trace));
      spans.back().SetAttribute("poolside.pipeline.statements", statements.size());
    }
  }
  std::vector<bool> retry;
  absl::Status link = RunIndependentPass(statements, /*share=*/true, &retry);
  if (link.ok() && !broken_) {
    // A shared transaction with a failure was rolled back as a whole: run each
    // of its statements again, alone, so only the failing one fails.
    std::vector<Statement*> again;
    for (size_t i = 0; i < statements.size(); ++i) {
      if (retry[i]) again.push_back(statements[i]);
    }
    if (!again.empty()) {
      if (reruns != nullptr) *reruns += again.size();
      link = RunIndependentPass(again, /*share=*/false, nullptr);
    }
  }
  for (size_t i = 0; i < spans.size(); ++i) {
    EndStatementSpan(spans[i], link.ok() ? statements[i]->status : link);
  }
  // The call as a whole: none of it ran, all of it answered, or something in
  // between (running it all again could run part of it twice).
  size_t not_run = 0, answered = 0;
  for (const Statement* s : statements) {
    not_run += s->reach == Reach::kNotRun;
    answered += s->reach == Reach::kAnswered;
  }
  last_call_reach_ = answered == statements.size()  ? Reach::kAnswered
                     : not_run == statements.size() ? Reach::kNotRun
                                                    : Reach::kMayHaveRun;
  return link;
}

absl::Status Connection::RunIndependentPass(absl::Span<Statement* const> statements, bool share,
                                            std::vector<bool>* retry) {
  if (retry != nullptr) retry->assign(statements.size(), false);
  for (Statement* s : statements) s->reach = Reach::kAnswered;
  if (absl::Status idle = ExpectIdle(); !idle.ok()) {
    for (Statement* s : statements) {
      s->status = idle;
      s->reach = Reach::kNotRun;
    }
    return idle;
  }
  std::vector<Step> steps;
  steps.reserve(statements.size() * 3 + 3);
  std::vector<std::string> evicted = TakeStalePrepared();
  std::vector<size_t> exec_index(statements.size(), SIZE_MAX);
  std::vector<CancelState> cancels(statements.size());
  // Shared transactions: the statements of each, by index (no Sync between them).
  std::vector<std::vector<size_t>> shared;
  bool open = false;  // the last of `shared` still takes statements
  for (size_t i = 0; i < statements.size(); ++i) {
    Statement* s = statements[i];
    auto params = std::make_unique<EncodedParams>();
    if (s->params != nullptr) {
      s->status = params->Encode(*s->params);
      if (!s->status.ok()) continue;
    } else {
      s->status = absl::OkStatus();
    }
    if (absl::Now() >= s->deadline) {
      s->status = absl::DeadlineExceededError("deadline passed before the statement was sent");
      continue;
    }
    const bool shares = share && s->may_share_sync;
    const int64_t timeout_ms = StatementTimeoutFor(s->deadline);
    // A SET inside a shared transaction would roll back with it: close it first.
    if (open && (!shares || timeout_ms != statement_timeout_ms_)) {
      steps.push_back(Step{Step::kSync});
      open = false;
    }
    SetStatementTimeoutSteps(timeout_ms, s->deadline, steps);
    const size_t from = steps.size();
    exec_index[i] = AddStatementSteps(s, std::move(params), steps, &evicted);
    for (size_t j = from; j < steps.size(); ++j) {
      steps[j].deadline = s->deadline;
      steps[j].cancelled = s->cancelled;
      steps[j].cancel = &cancels[i];
      steps[j].owner = i;
    }
    if (shares) {
      if (!open) shared.emplace_back();
      shared.back().push_back(i);
      open = true;
    } else {
      steps.push_back(Step{Step::kSync});
    }
  }
  if (open) steps.push_back(Step{Step::kSync});
  AddDeallocateSteps(evicted, steps);
  if (steps.empty()) return absl::OkStatus();
  // A pipeline that starts with the Execute of a statement that may write gets
  // the marker in front, so that a server that ends the session before doing
  // anything (a backend terminated while idle) proves it ran nothing.
  if (steps[0].kind == Step::kExec && !steps[0].statement->may_share_sync) {
    Step marker{Step::kMarker};
    marker.deadline = steps[0].deadline;
    marker.cancelled = steps[0].cancelled;
    marker.cancel = steps[0].cancel;
    steps.insert(steps.begin(), std::move(marker));
    for (size_t& e : exec_index) {
      if (e != SIZE_MAX) ++e;
    }
  }
  absl::Status link = RunPipeline(steps);
  for (size_t i = 0; i < statements.size(); ++i) {
    if (exec_index[i] == SIZE_MAX) continue;
    Step& e = steps[exec_index[i]];
    // A failed Parse is the statement's real error; its Execute only says "aborted".
    absl::Status st = e.status;
    if (exec_index[i] > 0) {
      Step& before = steps[exec_index[i] - 1];
      if (before.kind == Step::kPrepare && !before.status.ok()) st = before.status;
    }
    statements[i]->status = st;
  }
  SettleIndependent(steps, statements, exec_index, link);
  if (retry == nullptr) return link;
  for (const std::vector<size_t>& group : shared) {
    if (group.size() < 2) continue;  // alone in its transaction anyway
    bool failed = false, settled = false;
    for (size_t i : group) {
      failed = failed || !statements[i]->status.ok();
      // Settled by the connection's failure or a neighbour's transaction
      // control: its status already says what happened.
      settled = settled || statements[i]->reach != Reach::kAnswered;
    }
    if (!failed || settled) continue;
    for (size_t i : group) {
      Statement* s = statements[i];
      const bool gave_up =
          absl::Now() >= s->deadline || (s->cancelled != nullptr && s->cancelled->load());
      if (gave_up) {
        // No second run: its own failure stands; a result it got was rolled back.
        if (s->status.ok()) {
          s->status = absl::DeadlineExceededError(
              "deadline passed before the statement could run again (a statement "
              "pipelined in the same transaction failed)");
        }
        if (s->sink != nullptr) (void)s->sink->Rewind();
        continue;
      }
      if (broken_ || (s->sink != nullptr && !s->sink->Rewind())) {
        if (s->status.ok()) {
          s->status = absl::AbortedError(
              "rolled back because a statement pipelined in the same transaction failed; "
              "retry");
          s->reach = Reach::kMayHaveRun;
        }
        continue;
      }
      (*retry)[i] = true;
    }
  }
  return link;
}

// After a RunIndependentPass pipeline, what the results and the server's
// answers say about each statement's outcome.
//
// While no statement uses transaction control, each runs in an implicit
// transaction that its Sync commits (or rolls back, after an error), and its
// own result is its outcome once that Sync is read. A transaction block is
// opened only by a statement whose command tag says so (BEGIN, START
// TRANSACTION: no function or procedure can), and closed only by transaction
// control (tagged COMMIT, ROLLBACK, ...) or by a failed COMMIT (an error), so
// the tags locate where a block began. PQtransactionStatus is exact only at
// the pipeline's last Sync (libpq reports ACTIVE while commands are queued
// behind a Sync); it confirms the end state, and if it contradicts the tags no
// outcome is vouched for. Statements that ran inside a block still open when
// the connection is discarded are rolled back with it (closing a connection
// rolls back); where something may have committed the block, or ended it and
// let later statements commit on their own, their outcome is unknown.
//
// When the connection failed before a statement's Sync was read: a statement
// that was not sent, that the server skipped, or that lay behind the message
// at which the server ended the session (its FATAL comes after the replies to
// everything before it) never ran; one the server ended the session at, or
// after but before its Sync, was not committed; otherwise, its outcome is
// unknown.
void Connection::SettleIndependent(std::vector<Step>& steps,
                                   absl::Span<Statement* const> statements,
                                   const std::vector<size_t>& exec_index,
                                   const absl::Status& link) {
  enum Verdict { kKeep, kNotCommitted, kUnknown, kRefused };
  enum State { kIdle, kOpen, kOpenFailed, kAmbiguous };
  std::vector<Verdict> verdict(statements.size(), kKeep);
  std::vector<size_t> segment;  // ran fine since the last Sync, while idle
  std::vector<size_t> block;    // ran fine inside the open block
  State state = kIdle;
  bool tampered = false;       // the session is not clean: discard it
  bool contradiction = false;  // a block was open that no tag accounts for
  std::string opener_tag, ender_tag;
  size_t fatal_at = SIZE_MAX;  // the step the server ended the session at
  bool complete = true;        // every step's results were read
  auto resolve = [&](Verdict v) {
    for (size_t k : block) verdict[k] = v;
    block.clear();
  };
  for (size_t i = 0; i < steps.size(); ++i) {
    const Step& st = steps[i];
    if (st.session_ended && fatal_at == SIZE_MAX) fatal_at = i;
    if (!st.done) complete = false;
    if (st.kind == Step::kSync) {
      if (!st.done) break;
      if (state == kIdle) segment.clear();  // their transaction ended at this Sync
      if (st.xact == PQTRANS_IDLE) {
        if (state == kOpen) {  // closed, though no tag said so
          resolve(kUnknown);
          state = kAmbiguous;
        }
      } else if (st.xact == PQTRANS_INTRANS || st.xact == PQTRANS_INERROR) {
        tampered = true;
        if (state == kIdle) contradiction = true;
      } else if (st.xact == PQTRANS_UNKNOWN) {
        tampered = true;  // the connection went bad: no word on the transaction
      }
      continue;
    }
    if (st.txn != kTxnNone) {
      tampered = true;
      if (st.owner != SIZE_MAX) verdict[st.owner] = kRefused;
      if (st.txn == kTxnOpens && state == kIdle) {
        // The statements before it since the last Sync were in the implicit
        // transaction it turned into a block.
        state = kOpen;
        opener_tag = st.tag;
        block.swap(segment);
        segment.clear();
      } else if (st.txn == kTxnEnds || state != kOpen) {
        if (ender_tag.empty()) ender_tag = st.tag;
        if (state == kOpen) resolve(kUnknown);
        for (size_t k : segment) verdict[k] = kUnknown;
        segment.clear();
        state = kAmbiguous;
      }
    } else if (st.server_error) {
      // An error inside the block fails it (or, a failed COMMIT, rolls it
      // back): either way nothing of it was committed.
      if (state == kOpen) {
        resolve(kNotCommitted);
        state = kOpenFailed;
      }
    } else if (st.kind == Step::kExec && st.owner != SIZE_MAX && st.answered && !st.skipped) {
      switch (state) {
        case kIdle:
          segment.push_back(st.owner);
          break;
        case kOpen:
          block.push_back(st.owner);
          break;
        case kOpenFailed:
          // Only transaction control succeeds in a failed block: this ran
          // after the block was gone.
          state = kAmbiguous;
          verdict[st.owner] = kUnknown;
          break;
        case kAmbiguous:
          verdict[st.owner] = kUnknown;
          break;
      }
    }
    if (!st.done) break;
  }
  if (state == kOpen) {
    // Open at the end (the last Sync said so), or when the connection failed:
    // rolled back with the connection, unless the server may have gone on to
    // statements whose results never arrived (one of them could commit it).
    resolve(complete || fatal_at != SIZE_MAX ? kNotCommitted : kUnknown);
  }
  if (tampered) broken_ = true;

  const std::string opened = opener_tag.empty() ? "a transaction" : opener_tag;
  for (size_t k = 0; k < statements.size(); ++k) {
    if (exec_index[k] == SIZE_MAX) continue;
    Statement* s = statements[k];
    const size_t e = exec_index[k];
    const Step& exec = steps[e];
    const bool was_ok = s->status.ok();
    Verdict v = verdict[k];
    if (contradiction && v == kKeep && was_ok) v = kUnknown;
    switch (v) {
      case kRefused:
        s->status =
            TxnControlRefused(exec.tag, "here: each statement runs in a transaction of its own");
        break;
      case kNotCommitted:
        if (was_ok) {
          s->status = absl::AbortedError(absl::StrCat(
              "not committed: a statement pipelined before it (", opened,
              ") left a transaction open and this statement ran inside it; that transaction was "
              "rolled back when the connection was discarded. Retry"));
          s->reach = Reach::kMayHaveRun;
        }
        break;
      case kUnknown:
        if (was_ok) {
          s->status = absl::UnavailableError(absl::StrCat(
              "outcome unknown: ",
              contradiction ? "a statement pipelined with it left a transaction open"
                            : absl::StrCat("transaction control pipelined with it (",
                                           ender_tag.empty() ? opened : ender_tag, ")"),
              " may or may not have committed it; the connection was discarded"));
          s->reach = Reach::kMayHaveRun;
        }
        break;
      case kKeep: {
        size_t y = e;
        while (y < steps.size() && steps[y].kind != Step::kSync) ++y;
        if (y < steps.size() && steps[y].done) break;  // its outcome is complete
        const Step* prepare =
            e > 0 && steps[e - 1].kind == Step::kPrepare ? &steps[e - 1] : nullptr;
        const bool own_error =
            exec.refused || (exec.server_error && !exec.session_ended) ||
            (prepare != nullptr && prepare->server_error && !prepare->session_ended);
        if (own_error) break;  // it failed on its own: not committed, and said why
        if (!exec.sent || fatal_at < e) {
          s->status =
              Annotate(fatal_at < e ? session_end_ : link, "; the statement was not executed");
          s->reach = Reach::kNotRun;
        } else if (exec.skipped) {
          s->reach = Reach::kNotRun;
        } else if (fatal_at < y) {
          s->status = Annotate(session_end_, "; the statement was not committed");
          s->reach = Reach::kMayHaveRun;
        } else {
          s->status = absl::UnavailableError(absl::StrCat(
              "outcome unknown: the connection failed after the statement was sent and before "
              "its commit was confirmed, so it may or may not have been committed (",
              (fatal_at != SIZE_MAX ? session_end_ : link).message(), ")"));
          s->reach = Reach::kMayHaveRun;
        }
        break;
      }
    }
    // Refused by the server because an earlier statement left a failed block open.
    if (tampered && v != kRefused && SqlStateOf(s->status) == "25P02") {
      s->status = absl::AbortedError(
          absl::StrCat("not executed: a statement pipelined before it (", opened,
                       ") left a failed transaction open; the connection was discarded. Retry"));
      s->reach = Reach::kNotRun;
    }
    if (was_ok && !s->status.ok() && s->sink != nullptr) (void)s->sink->Rewind();
  }
}

absl::Status Connection::RunTransaction(absl::string_view begin_sql,
                                        absl::Span<Statement* const> statements,
                                        absl::Time deadline, const std::atomic<bool>* cancelled) {
  last_call_reach_ = Reach::kAnswered;
  for (Statement* s : statements) s->reach = Reach::kAnswered;
  if (absl::Status idle = ExpectIdle(); !idle.ok()) {
    last_call_reach_ = Reach::kNotRun;
    for (Statement* s : statements) {
      s->status = idle;
      s->reach = Reach::kNotRun;
    }
    return idle;
  }
  std::vector<Step> steps;
  steps.reserve(statements.size() * 2 + 5);
  std::vector<std::string> evicted = TakeStalePrepared();
  std::vector<std::unique_ptr<EncodedParams>> encoded;
  for (size_t i = 0; i < statements.size(); ++i) {
    Statement* s = statements[i];
    auto params = std::make_unique<EncodedParams>();
    if (s->params != nullptr) {
      absl::Status st = params->Encode(*s->params);
      if (!st.ok()) {
        s->status = st;
        return absl::Status(st.code(), absl::StrCat("statement ", i + 1, ": ", st.message()));
      }
    }
    encoded.push_back(std::move(params));
  }
  if (absl::Now() >= deadline) {
    return absl::DeadlineExceededError("deadline passed before the transaction started");
  }
  SetStatementTimeoutSteps(StatementTimeoutFor(deadline), deadline, steps);
  const size_t first = steps.size();
  Step begin{Step::kSimple};
  begin.sql = std::string(begin_sql);
  steps.push_back(std::move(begin));
  std::vector<size_t> exec_index(statements.size());
  for (size_t i = 0; i < statements.size(); ++i) {
    const size_t from = steps.size();
    exec_index[i] = AddStatementSteps(statements[i], std::move(encoded[i]), steps, &evicted);
    for (size_t j = from; j < steps.size(); ++j) steps[j].owner = i;
  }
  // The statements end at a Sync, not at COMMIT: a statement can fail on this
  // side (a row or byte limit in its sink, say) after the server ran it fine,
  // and then the transaction must roll back. COMMIT goes in a second round
  // trip, only when every statement succeeded here as well as on the server.
  steps.push_back(Step{Step::kSync});
  CancelState cancel;
  for (size_t i = first; i < steps.size(); ++i) {
    steps[i].deadline = deadline;
    steps[i].cancelled = cancelled;
    steps[i].cancel = &cancel;
  }
  std::vector<telemetry::Span> spans;
  if (telemetry::GlobalTracer() != nullptr) {
    for (Statement* s : statements) {
      spans.push_back(StartStatementSpan(s->sql, s->labels.get(), s->trace));
    }
  }
  absl::Status link = RunPipeline(steps);
  auto end_spans = [&](const absl::Status& status) {
    for (size_t i = 0; i < spans.size(); ++i) {
      EndStatementSpan(spans[i], status.ok() ? statements[i]->status : status);
      spans[i].End();
    }
  };
  for (size_t i = 0; i < statements.size(); ++i) {
    statements[i]->status = steps[exec_index[i]].status;
  }

  // A statement that is itself transaction control: the transaction is not
  // what the caller asked for any more, and is never committed past it.
  const Step& sync = steps.back();
  size_t culprit = SIZE_MAX;
  // Idle after our BEGIN succeeded: something ended the transaction early.
  bool ended =
      sync.done && sync.xact == PQTRANS_IDLE && steps[first].completed && steps[first].status.ok();
  for (size_t i = 0; i < statements.size(); ++i) {
    const Step& e = steps[exec_index[i]];
    if (e.txn == kTxnNone) continue;
    if (culprit == SIZE_MAX) culprit = i;
    ended = ended || e.txn == kTxnEnds;
  }
  if (culprit != SIZE_MAX || ended) {
    broken_ = true;  // closing the connection rolls back whatever is open
    const std::string which =
        culprit == SIZE_MAX
            ? std::string("a statement")
            : absl::StrCat("statement ", culprit + 1, " (", steps[exec_index[culprit]].tag, ")");
    absl::Status outcome;
    if (ended) {
      outcome = absl::UnavailableError(absl::StrCat(
          "outcome unknown: ", which,
          " ended the transaction early, so what ran before it may have been committed and what "
          "ran after it ran outside the transaction. Transaction control is not allowed inside "
          "a transaction; the connection was discarded"));
      last_call_reach_ = Reach::kMayHaveRun;
    } else {
      outcome = absl::InvalidArgumentError(absl::StrCat(
          which,
          ": transaction control is not allowed inside a transaction; the transaction was "
          "rolled back and the connection discarded"));
    }
    for (Statement* s : statements) {
      if (s->status.ok()) s->status = outcome;
      s->reach = last_call_reach_;
    }
    end_spans(outcome);
    return outcome;
  }

  // The first failure in the transaction is its outcome.
  absl::Status outcome = link;
  if (!link.ok()) {
    // COMMIT was never sent. Nothing of it ran if the server ended the session
    // before the first statement, or the statement was never sent.
    size_t fatal_at = SIZE_MAX;
    for (size_t i = 0; i < steps.size() && fatal_at == SIZE_MAX; ++i) {
      if (steps[i].session_ended) fatal_at = i;
    }
    const size_t first_statement = first + 1;
    const bool not_run = first_statement >= steps.size() || !steps[first_statement].sent ||
                         fatal_at < first_statement;
    bool refused = false;  // a COPY: the statement's own fault, not the connection's
    for (const Step& st : steps) refused = refused || st.refused;
    last_call_reach_ = refused ? Reach::kAnswered : not_run ? Reach::kNotRun : Reach::kMayHaveRun;
    outcome = Annotate(link, not_run ? "; no statement of the transaction was executed"
                                     : "; the transaction was not committed");
    for (Statement* s : statements) s->reach = last_call_reach_;
  }
  for (size_t i = first; i < steps.size() && outcome.ok(); ++i) {
    Step& st = steps[i];
    if (st.status.ok() || (st.status.code() == absl::StatusCode::kAborted &&
                           absl::StartsWith(st.status.message(), "not executed"))) {
      continue;
    }
    if (st.statement != nullptr) {
      const size_t n =
          std::find(statements.begin(), statements.end(), st.statement) - statements.begin();
      outcome = absl::Status(st.status.code(),
                             absl::StrCat("statement ", n + 1, ": ", st.status.message()));
      std::string sqlstate = SqlStateOf(st.status);
      if (!sqlstate.empty()) outcome.SetPayload(kSqlStatePayload, absl::Cord(sqlstate));
    } else {
      outcome = st.status;
    }
  }
  end_spans(link);
  if (!broken_) {
    std::vector<Step> finish;
    const bool open = sync.xact != PQTRANS_IDLE;
    if (outcome.ok() || open) {
      Step end{Step::kSimple};
      end.sql = outcome.ok() ? "COMMIT" : "ROLLBACK";
      finish.push_back(std::move(end));
      finish.push_back(Step{Step::kSync});
    }
    AddDeallocateSteps(evicted, finish);
    // COMMIT is bounded by the caller's deadline; ROLLBACK and DEALLOCATE get a
    // few seconds of their own, since they only tidy up after a failure.
    const absl::Time finish_deadline = outcome.ok() ? deadline : absl::Now() + absl::Seconds(5);
    CancelState finish_cancel;
    for (Step& st : finish) {
      st.deadline = finish_deadline;
      if (outcome.ok()) st.cancelled = cancelled;
      st.cancel = &finish_cancel;
    }
    telemetry::Span end_span;
    if (!finish.empty() && !statements.empty()) {
      static const StatementLabels kCommit{"COMMIT", "COMMIT", "COMMIT", ""};
      static const StatementLabels kRollback{"ROLLBACK", "ROLLBACK", "ROLLBACK", ""};
      end_span = StartStatementSpan(outcome.ok() ? "COMMIT" : "ROLLBACK",
                                    outcome.ok() ? &kCommit : &kRollback, statements[0]->trace);
    }
    if (!finish.empty()) {
      absl::Status finish_link = RunPipeline(finish);
      EndStatementSpan(end_span, finish_link.ok() ? finish[0].status : finish_link);
      // The session must be idle again, or it is not reused.
      if (!broken_ && finish.back().xact != PQTRANS_IDLE) broken_ = true;
      if (outcome.ok()) {
        const Step& commit = finish[0];
        if (commit.completed && commit.tag == "COMMIT") {
          // Committed: COMMIT's command completes after the commit itself,
          // whatever became of the steps after it.
        } else if (commit.completed) {
          outcome = absl::AbortedError(
              absl::StrCat("COMMIT ended in ", commit.tag,
                           ": the transaction had failed on the server and nothing was committed"));
        } else if (commit.server_error && !commit.session_ended) {
          outcome =
              absl::Status(commit.status.code(), absl::StrCat("COMMIT: ", commit.status.message()));
          std::string sqlstate = SqlStateOf(commit.status);
          if (!sqlstate.empty()) outcome.SetPayload(kSqlStatePayload, absl::Cord(sqlstate));
        } else {
          const absl::Status& why = finish_link.ok() ? commit.status : finish_link;
          outcome = absl::UnavailableError(absl::StrCat(
              "outcome unknown: the connection failed during COMMIT, so the transaction may or "
              "may not have been committed (",
              why.message(), ")"));
          last_call_reach_ = Reach::kMayHaveRun;
          for (Statement* s : statements) s->reach = Reach::kMayHaveRun;
        }
      }
    }
  }
  return outcome;
}

absl::Status Connection::RunSimple(const char* sql, absl::Time deadline, int* xact_after,
                                   std::string* tag) {
  std::vector<Step> steps;
  Step s{Step::kSimple};
  s.sql = sql;
  s.deadline = deadline;
  steps.push_back(std::move(s));
  Step sync{Step::kSync};
  sync.deadline = deadline;
  steps.push_back(std::move(sync));
  absl::Status link = RunPipeline(steps);
  if (xact_after != nullptr) *xact_after = steps[1].done ? steps[1].xact : -1;
  if (tag != nullptr) *tag = steps[0].tag;
  return link.ok() ? steps[0].status : link;
}

absl::Status Connection::RunStreaming(Statement& statement, absl::string_view begin_sql) {
  last_call_reach_ = Reach::kAnswered;
  statement.reach = Reach::kAnswered;
  if (absl::Status idle = ExpectIdle(); !idle.ok()) {
    statement.status = idle;
    statement.reach = last_call_reach_ = Reach::kNotRun;
    return idle;
  }
  const bool wrapped = !begin_sql.empty();
  if (wrapped) {
    int xact = -1;
    if (absl::Status s = RunSimple(std::string(begin_sql).c_str(), statement.deadline, &xact);
        !s.ok()) {
      statement.status = s;
      if (!broken_) return absl::OkStatus();
      statement.reach = last_call_reach_ = Reach::kNotRun;
      return s;
    }
    if (xact != PQTRANS_INTRANS) {
      broken_ = true;
      statement.status =
          absl::UnavailableError(absl::StrCat(begin_sql, " did not open a transaction"));
      statement.reach = last_call_reach_ = Reach::kNotRun;
      return statement.status;
    }
  }
  std::string tag;
  absl::Status link = RunStreamingStatement(statement, &tag);
  if (!link.ok()) return link;
  // Not in pipeline mode and every result read: the status is exact. A plain
  // statement leaves the session idle; one in our read-only transaction stays
  // inside it.
  const PGTransactionStatusType xact = PQtransactionStatus(conn_);
  const bool clean =
      wrapped ? (xact == PQTRANS_INTRANS || xact == PQTRANS_INERROR) : xact == PQTRANS_IDLE;
  if (!clean || TxnControlOf(tag) != kTxnNone) {
    broken_ = true;
    statement.status =
        TxnControlOf(tag) != kTxnNone
            ? TxnControlRefused(tag, wrapped ? "inside ExecuteStream's transaction"
                                             : "here: each statement runs in a transaction "
                                               "of its own")
            : absl::UnavailableError(
                  "the statement left the connection inside a transaction; it was not "
                  "committed and the connection was discarded");
    if (statement.sink != nullptr) (void)statement.sink->Rewind();
    return absl::OkStatus();
  }
  if (discard_) broken_ = true;
  if (!wrapped || broken_) return absl::OkStatus();
  // COMMIT after a failure rolls back too; ROLLBACK says what is meant.
  int xact_after = -1;
  absl::Status end = RunSimple(statement.status.ok() ? "COMMIT" : "ROLLBACK",
                               absl::Now() + absl::Seconds(5), &xact_after);
  if (broken_) return end.ok() ? absl::UnavailableError("connection lost") : end;
  if (xact_after != PQTRANS_IDLE) broken_ = true;
  if (statement.status.ok() && !end.ok()) statement.status = end;
  return absl::OkStatus();
}

absl::Status Connection::RunStreamingStatement(Statement& statement, std::string* tag) {
  if (broken_) return absl::UnavailableError("connection is broken");
  EncodedParams params;
  if (statement.params != nullptr) {
    statement.status = params.Encode(*statement.params);
    if (!statement.status.ok()) return absl::OkStatus();
  }
  {
    std::vector<Step> steps;
    SetStatementTimeoutSteps(StatementTimeoutFor(statement.deadline), statement.deadline, steps);
    if (!steps.empty()) {
      absl::Status link = RunPipeline(steps);
      if (!link.ok()) {
        statement.status = Annotate(link, "; the statement was not executed");
        statement.reach = last_call_reach_ = Reach::kNotRun;
        return statement.status;
      }
      if (!steps[0].status.ok()) {
        statement.status = steps[0].status;
        return absl::OkStatus();
      }
    }
  }
  // Unnamed statement: a streamed query is rarely repeated fast enough for a
  // prepared statement to pay.
  const std::string sql(statement.sql);
  telemetry::Span span = StartStatementSpan(statement.sql, statement.labels.get(), statement.trace);
  span.SetAttribute("poolside.streaming", true);
  if (PQsendQueryParams(conn_, sql.c_str(), params.size(),
                        reinterpret_cast<const Oid*>(params.types()), params.values(),
                        params.lengths(), params.formats(), 0) != 1) {
    statement.status = MarkBroken("sending a statement");
    statement.reach = last_call_reach_ = Reach::kNotRun;
    return statement.status;
  }
  PQsetSingleRowMode(conn_);
  Step step{Step::kExec};
  step.statement = &statement;
  step.deadline = statement.deadline;
  step.cancelled = statement.cancelled;
  step.sent = true;
  ConsumeResultsOf(step);
  statement.status = step.status;
  *tag = step.tag;
  EndStatementSpan(span, step.status);
  if (!broken_) return absl::OkStatus();
  // Outside pipeline mode the statement's Sync went with it: its results end
  // with the server's ReadyForQuery, after the commit.
  const bool own_outcome = step.done || step.refused || (step.server_error && !step.session_ended);
  if (!own_outcome) {
    if (step.session_ended && !step.completed) {
      statement.status = Annotate(session_end_, "; the statement was not committed");
    } else {
      statement.status = absl::UnavailableError(absl::StrCat(
          "outcome unknown: the connection failed after the statement was sent and before "
          "its commit was confirmed, so it may or may not have been committed (",
          (session_ended_ ? session_end_ : step.status).message(), ")"));
    }
    statement.reach = last_call_reach_ = Reach::kMayHaveRun;
  }
  return statement.status.ok() ? absl::UnavailableError("connection lost") : statement.status;
}

bool Connection::Ping(absl::Time deadline) {
  if (!LooksAlive()) return false;
  int xact = -1;
  absl::Status s = RunSimple("", deadline, &xact);
  if (s.ok() && !broken_ && xact == PQTRANS_IDLE) return true;
  broken_ = true;
  return false;
}

absl::Status Connection::Listen(absl::string_view channel, absl::Time deadline) {
  if (absl::Status idle = ExpectIdle(); !idle.ok()) return idle;
  const std::string name(channel);
  char* quoted = PQescapeIdentifier(conn_, name.c_str(), name.size());
  if (quoted == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot quote channel name \"", name, "\""));
  }
  const std::string sql = absl::StrCat("LISTEN ", quoted);
  PQfreemem(quoted);
  listening_ = true;
  return RunSimple(sql.c_str(), deadline);
}

absl::Status Connection::AwaitNotifications(absl::Time deadline, std::vector<Notification>* out) {
  if (broken_ || conn_ == nullptr) return absl::UnavailableError("connection is broken");
  // Each pass reads what arrived, or waits a bounded slice; the loop ends at
  // the deadline.
  while (true) {
    if (PQconsumeInput(conn_) == 0 || PQstatus(conn_) != CONNECTION_OK) {
      return MarkBroken("waiting for notifications");
    }
    const size_t before = out->size();
    while (PGnotify* n = PQnotifies(conn_)) {
      out->push_back(Notification{n->relname, n->extra != nullptr ? n->extra : "", n->be_pid});
      PQfreemem(n);
    }
    // The server ending the session while we are idle (e.g. the backend was
    // terminated) arrives as a notice (OnNotice), or as a result.
    if (!PQisBusy(conn_)) {
      bool failed = false;
      while (PGresult* r = PQgetResult(conn_)) {
        failed = true;
        PQclear(r);
      }
      if (failed) return MarkBroken("waiting for notifications");
    }
    if (session_ended_) return MarkBroken("waiting for notifications");
    if (out->size() > before) return absl::OkStatus();
    const absl::Time now = absl::Now();
    if (now >= deadline) return absl::OkStatus();
    const int timeout_ms = PollTimeoutMs(now, deadline, kMaxPollSliceMs);
    const int fd = PQsocket(conn_);
    if (fd < 0) return MarkBroken("waiting for notifications");
    pollfd pfd{fd, POLLIN, 0};
    const int rc = ::poll(&pfd, 1, timeout_ms);
    if ((rc < 0 && errno != EINTR) || (rc > 0 && (pfd.revents & POLLNVAL) != 0)) {
      return MarkBroken("waiting for notifications");
    }
  }
}

}  // namespace poolside::db
