#include "common/db/connection.h"

#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <pqxx/connection>
#include <pqxx/connection_base>
#include <pqxx/connectionpolicy>
#include <pqxx/except>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/db/error.h"
#include "common/db/value_codec.h"
#include "common/telemetry/log.h"

namespace poolside::db {
namespace {

// Session settings sent in the startup packet (no extra round trip); the value
// codec depends on them.
constexpr absl::string_view kSessionOptions =
    "-c DateStyle=ISO,YMD -c TimeZone=UTC -c IntervalStyle=postgres "
    "-c extra_float_digits=3 -c bytea_output=hex -c client_encoding=UTF8";

constexpr int kCancelDeadline = 1;
constexpr int kCancelCaller = 2;
constexpr int kCancelRefused = 3;  // a sink refused rows: the rest is not wanted

// How long the rest of a result a sink refused is read and dropped before the
// backend query is cancelled. A cancel request costs a new connection to the
// server (and a process there) and holds this worker until it is delivered,
// far more than reading a small rest, which is usually already on its way.
constexpr absl::Duration kDrainBeforeCancel = absl::Milliseconds(20);

// Quotes a libpq keyword/value connection string value.
std::string QuoteConninfo(absl::string_view value) {
  std::string out = "'";
  for (char c : value) {
    if (c == '\'' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('\'');
  return out;
}

// Parses the user's DSN (keyword/value or URI) and rebuilds it with poolside's
// additions, so both forms work and the user's own settings win where they set
// them (their `options` are kept, ours appended).
absl::StatusOr<std::string> BuildConninfo(const ConnectionOptions& o) {
  char* err = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(o.dsn.c_str(), &err);
  if (parsed == nullptr) {
    std::string msg = err != nullptr ? err : "out of memory";
    if (err != nullptr) PQfreemem(err);
    // libpq's message quotes no secret values, only the syntax problem.
    return absl::InvalidArgumentError(absl::StrCat("invalid database DSN: ", msg));
  }
  std::string out;
  bool has_app = false, has_timeout = false;
  std::string options;
  for (PQconninfoOption* opt = parsed; opt->keyword != nullptr; ++opt) {
    if (opt->val == nullptr) continue;
    const absl::string_view key = opt->keyword;
    if (key == "options") {
      options = opt->val;
      continue;
    }
    if (key == "application_name") has_app = true;
    if (key == "connect_timeout") has_timeout = true;
    absl::StrAppend(&out, key, "=", QuoteConninfo(opt->val), " ");
  }
  PQconninfoFree(parsed);
  if (!has_app) absl::StrAppend(&out, "application_name=", QuoteConninfo(o.application_name), " ");
  if (!has_timeout) {
    absl::StrAppend(&out, "connect_timeout=",
                    std::max<int64_t>(1, absl::ToInt64Seconds(o.connect_timeout)), " ");
  }
  absl::StrAppend(&out, "options=",
                  QuoteConninfo(absl::StrCat(kSessionOptions, options.empty() ? "" : " ", options)));
  return out;
}

void NoticeToLog(void*, const char* message) {
  if (telemetry::LogEnabled(telemetry::LogLevel::kDebug)) {
    telemetry::LogDebug("postgres notice", {{"notice", std::string(message)}});
  }
}

// A libpqxx connection policy that remembers the libpq handle it opens: the
// documented way to combine libpqxx's connection handling with libpq calls.
class CapturingPolicy : public pqxx::connect_direct {
 public:
  explicit CapturingPolicy(const std::string& opts) : pqxx::connect_direct(opts) {}
  handle do_startconnect(handle orig) override {
    handle_ = pqxx::connect_direct::do_startconnect(orig);
    return handle_;
  }
  handle do_completeconnect(handle orig) override {
    handle_ = pqxx::connect_direct::do_completeconnect(orig);
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
  handle handle_ = nullptr;
};

int64_t CeilSeconds(absl::Duration d) {
  return absl::ToInt64Seconds(absl::Ceil(d, absl::Seconds(1)));
}

}  // namespace

class Connection::PqxxConnection : public pqxx::connection_base {
 public:
  explicit PqxxConnection(const std::string& conninfo)
      : pqxx::connection_base(policy_), policy_(conninfo) {
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
};

struct Connection::Step {
  enum Kind { kSimple, kPrepare, kExec, kSync };
  Kind kind;
  std::string sql;                  // kSimple: the SQL text
  Statement* statement = nullptr;   // kExec/kPrepare
  Prepared* prepared = nullptr;     // kExec/kPrepare
  std::string prepared_key;         // kPrepare: to forget it if it fails
  std::string prepared_name;
  std::unique_ptr<EncodedParams> params;  // kExec
  absl::Time deadline = absl::InfiniteFuture();
  const std::atomic<bool>* cancelled = nullptr;
  absl::Status status;
  bool began = false;               // sink->Begin called
  bool sink_failed = false;         // sink refused a row; discard the rest
  CancelState* cancel = nullptr;    // null: the step's own local_cancel
  CancelState local_cancel;
  int64_t timeout_ms = -1;          // kSimple SET statement_timeout: the value
  // A later step of this pipeline is another statement's (or a SET/DEALLOCATE
  // of its own): the server may already run it, so a cancel request sent for
  // this step could hit that one instead. Set by RunPipeline.
  bool others_behind = false;
};

Connection::Connection(const ConnectionOptions& options) : options_(options) {}

Connection::~Connection() {
  if (cancel_ != nullptr) PQfreeCancel(cancel_);
  // pqxx_ closes the libpq connection.
}

absl::StatusOr<std::unique_ptr<Connection>> Connection::Open(
    const ConnectionOptions& options) {
  absl::StatusOr<std::string> conninfo = BuildConninfo(options);
  if (!conninfo.ok()) return conninfo.status();
  std::unique_ptr<Connection> c(new Connection(options));
  try {
    c->pqxx_ = std::make_unique<PqxxConnection>(*conninfo);
    c->pqxx_->inhibit_reactivation(true);
  } catch (const std::exception& e) {
    return StatusFromException(e);
  }
  c->conn_ = c->pqxx_->raw();
  if (c->conn_ == nullptr || PQstatus(c->conn_) != CONNECTION_OK) {
    return absl::UnavailableError("database connection failed");
  }
  PQsetNoticeProcessor(c->conn_, &NoticeToLog, nullptr);
  if (PQsetnonblocking(c->conn_, 1) != 0) {
    return absl::InternalError("cannot switch the connection to non-blocking mode");
  }
  c->cancel_ = PQgetCancel(c->conn_);
  return c;
}

int Connection::server_version() const { return conn_ ? PQserverVersion(conn_) : 0; }

absl::Status Connection::MarkBroken(absl::string_view what) {
  broken_ = true;
  std::string msg = conn_ ? PQerrorMessage(conn_) : "";
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  if (msg.size() > kMaxErrorMessage) msg.resize(kMaxErrorMessage);
  return absl::UnavailableError(absl::StrCat("connection to the database lost while ",
                                             what, msg.empty() ? "" : ": ", msg));
}

bool Connection::LooksAlive() {
  if (broken_ || conn_ == nullptr || PQstatus(conn_) != CONNECTION_OK) return false;
  if (PQtransactionStatus(conn_) != PQTRANS_IDLE) return false;
  pollfd pfd{PQsocket(conn_), POLLIN, 0};
  int rc = ::poll(&pfd, 1, 0);
  if (rc > 0) {
    // Nothing is expected while idle: either an asynchronous message (notice,
    // parameter status) or the server closing the connection.
    if (PQconsumeInput(conn_) == 0 || PQstatus(conn_) != CONNECTION_OK) {
      broken_ = true;
      return false;
    }
    // Pooled connections never want notifications (a caller's stray LISTEN
    // must not make them pile up); a listening one keeps them.
    if (!listening_) {
      while (PGnotify* n = PQnotifies(conn_)) PQfreemem(n);
    }
    if (!PQisBusy(conn_)) {
      // A server-initiated error (e.g. terminating connection) surfaces as a result.
      while (PGresult* r = PQgetResult(conn_)) {
        PQclear(r);
        broken_ = true;
      }
    }
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

absl::Status Connection::AwaitResult(absl::Time deadline,
                                     const std::atomic<bool>* cancelled,
                                     CancelState* cancel) {
  int* cancel_reason = &cancel->reason;
  absl::Time& give_up = cancel->give_up;
  while (true) {
    const int flush = PQflush(conn_);
    if (flush < 0) return MarkBroken("sending");
    if (flush == 0 && !PQisBusy(conn_)) return absl::OkStatus();

    const absl::Time now = absl::Now();
    if (*cancel_reason == 0) {
      int reason = 0;
      if (now >= deadline) reason = kCancelDeadline;
      else if (cancelled != nullptr && cancelled->load(std::memory_order_relaxed))
        reason = kCancelCaller;
      else if (now >= cancel->cancel_at)
        reason = kCancelRefused;
      if (reason != 0) CancelBackend(cancel, reason, now);
    } else if (now >= give_up) {
      return MarkBroken("waiting for a cancelled statement to stop");
    }

    // Wake up at the deadline, and poll the caller's cancel flag now and then.
    absl::Time wake = *cancel_reason != 0 ? give_up : std::min(deadline, cancel->cancel_at);
    if (cancelled != nullptr && *cancel_reason == 0) {
      wake = std::min(wake, now + absl::Milliseconds(50));
    }
    int timeout_ms = -1;
    if (wake != absl::InfiniteFuture()) {
      timeout_ms = static_cast<int>(std::clamp<int64_t>(
          absl::ToInt64Milliseconds(absl::Ceil(wake - now, absl::Milliseconds(1))), 0,
          60000));
    }
    pollfd pfd{PQsocket(conn_), static_cast<short>(POLLIN | (flush == 1 ? POLLOUT : 0)), 0};
    const int rc = ::poll(&pfd, 1, timeout_ms);
    if (rc < 0 && errno != EINTR) return MarkBroken("waiting for the server");
    if (rc > 0 && (pfd.revents & (POLLIN | POLLHUP | POLLERR))) {
      if (PQconsumeInput(conn_) == 0) return MarkBroken("reading");
    }
  }
}

Connection::Prepared* Connection::LookupOrAddPrepared(const std::string& key,
                                                      absl::string_view sql,
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
  set.deadline = deadline;
  steps.push_back(std::move(set));
  steps.push_back(Step{Step::kSync});
  statement_timeout_ms_ = want;  // corrected if the SET fails
}

absl::Status Connection::SendStep(Step& step) {
  int ok = 1;
  switch (step.kind) {
    case Step::kSimple:
      ok = PQsendQueryParams(conn_, step.sql.c_str(), 0, nullptr, nullptr, nullptr,
                             nullptr, 0);
      break;
    case Step::kPrepare: {
      const EncodedParams& p = *step.params;
      ok = PQsendPrepare(conn_, step.prepared_name.c_str(),
                         std::string(step.statement->sql).c_str(), p.size(),
                         reinterpret_cast<const Oid*>(p.types()));
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
  }
  if (ok == 1) return absl::OkStatus();
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
  // (NULL for a command, PGRES_PIPELINE_SYNC for a sync).
  while (true) {
    CancelState* cancel = step.cancel != nullptr ? step.cancel : &step.local_cancel;
    absl::Status wait = AwaitResult(step.deadline, step.cancelled, cancel);
    if (!wait.ok()) {
      if (step.status.ok()) step.status = wait;
      return;
    }
    PGresult* res = PQgetResult(conn_);
    if (res == nullptr) {
      if (step.kind == Step::kSync) continue;  // stray terminator; keep reading
      return;
    }
    const ExecStatusType rs = PQresultStatus(res);
    switch (rs) {
      case PGRES_PIPELINE_SYNC:
        PQclear(res);
        if (step.kind == Step::kSync) return;
        continue;
      case PGRES_SINGLE_TUPLE:
      case PGRES_TUPLES_OK: {
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
        if (rs == PGRES_TUPLES_OK && step.status.ok() && step.statement &&
            step.statement->sink) {
          step.statement->sink->Finish(std::strtoll(PQcmdTuples(res), nullptr, 10),
                                       PQcmdStatus(res));
        }
        break;
      }
      case PGRES_COMMAND_OK:
      case PGRES_EMPTY_QUERY:
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
        if (step.status.ok()) {
          step.status = absl::AbortedError(
              "not executed: an earlier statement in the same transaction failed");
        }
        break;
      default: {
        const char* state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        const char* primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        const char* detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
        absl::Status st = StatusFromSqlState(
            state ? state : "", primary ? primary : PQresultErrorMessage(res),
            detail ? detail : "");
        if (state != nullptr && absl::string_view(state) == "57014") {
          if (cancel->reason == kCancelDeadline) {
            st = absl::DeadlineExceededError(
                "statement ran past the call's deadline and was cancelled on the "
                "server (SQLSTATE 57014)");
          } else if (cancel->reason == kCancelCaller && step.status.ok()) {
            st = absl::CancelledError("statement cancelled by the caller (SQLSTATE 57014)");
          }
        }
        if (step.status.ok()) step.status = st;
        break;
      }
    }
    PQclear(res);
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
  if (!broken_) PQexitPipelineMode(conn_);
  for (Step& step : steps) {
    if (!link.ok() && step.status.ok()) step.status = link;
    if (step.kind == Step::kPrepare && !step.status.ok()) {
      ErasePrepared(step.prepared_key, step.prepared_name);
    }
    if (step.kind == Step::kSimple && step.timeout_ms >= 0 && !step.status.ok()) {
      statement_timeout_ms_ = -1;  // unknown: set again next time
    }
  }
  return link;
}

telemetry::Span Connection::StartStatementSpan(absl::string_view sql,
                                               const telemetry::SpanContext& parent) const {
  if (telemetry::GlobalTracer() == nullptr) return telemetry::Span();
  const telemetry::SpanContext& p = parent.valid() ? parent : telemetry::CurrentSpanContext();
  if (!p.valid()) return telemetry::Span();
  // Span name: the statement's first keyword and the database ("SELECT app").
  absl::string_view rest = absl::StripLeadingAsciiWhitespace(sql);
  size_t word = 0;
  while (word < rest.size() && absl::ascii_isalpha(static_cast<unsigned char>(rest[word]))) ++word;
  const char* db = conn_ != nullptr ? PQdb(conn_) : nullptr;
  telemetry::Span span = telemetry::StartSpan(
      absl::StrCat(word > 0 ? absl::AsciiStrToUpper(rest.substr(0, word)) : "statement",
                   db != nullptr ? " " : "", db != nullptr ? db : ""),
      telemetry::SpanKind::kClient, p);
  if (!span.recording()) return span;
  span.SetAttribute("db.system", "postgresql");
  if (db != nullptr) span.SetAttribute("db.name", db);
  span.SetAttribute("db.statement", sql.substr(0, 4096));
  if (conn_ != nullptr) {
    if (const char* host = PQhost(conn_); host != nullptr) span.SetAttribute("net.peer.name", host);
    int port = 0;
    if (const char* p = PQport(conn_); p != nullptr && absl::SimpleAtoi(p, &port)) {
      span.SetAttribute("net.peer.port", port);
    }
  }
  return span;
}

absl::Status Connection::RunIndependent(absl::Span<Statement* const> statements,
                                        uint64_t* reruns) {
  std::vector<telemetry::Span> spans;
  if (telemetry::GlobalTracer() != nullptr) {
    spans.reserve(statements.size());
    for (Statement* s : statements) {
      spans.push_back(StartStatementSpan(s->sql, s->trace));
      spans.back().SetAttribute("poolside.pipeline.statements", statements.size());
    }
  }
  std::vector<bool> retry;
  absl::Status link = RunIndependentPass(statements, /*share=*/true, &retry);
  if (link.ok()) {
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
    spans[i].SetStatus(link.ok() ? statements[i]->status : link);
  }
  return link;
}

absl::Status Connection::RunIndependentPass(absl::Span<Statement* const> statements, bool share,
                                            std::vector<bool>* retry) {
  std::vector<Step> steps;
  steps.reserve(statements.size() * 3 + 2);
  std::vector<std::string> evicted;
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
  if (retry != nullptr) retry->assign(statements.size(), false);
  if (steps.empty()) return absl::OkStatus();
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
  if (!link.ok() || retry == nullptr) return link;
  for (const std::vector<size_t>& group : shared) {
    if (group.size() < 2) continue;  // alone in its transaction anyway
    bool failed = false;
    for (size_t i : group) failed = failed || !statements[i]->status.ok();
    if (!failed) continue;
    for (size_t i : group) {
      Statement* s = statements[i];
      const bool gave_up = absl::Now() >= s->deadline ||
                           (s->cancelled != nullptr && s->cancelled->load());
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
      if (s->sink != nullptr && !s->sink->Rewind()) {
        if (s->status.ok()) {
          s->status = absl::AbortedError(
              "rolled back because a statement pipelined in the same transaction failed; "
              "retry");
        }
        continue;
      }
      (*retry)[i] = true;
    }
  }
  return link;
}

absl::Status Connection::RunTransaction(absl::string_view begin_sql,
                                        absl::Span<Statement* const> statements,
                                        absl::Time deadline,
                                        const std::atomic<bool>* cancelled) {
  std::vector<Step> steps;
  steps.reserve(statements.size() * 2 + 5);
  std::vector<std::string> evicted;
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
    exec_index[i] = AddStatementSteps(statements[i], std::move(encoded[i]), steps, &evicted);
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
    for (Statement* s : statements) spans.push_back(StartStatementSpan(s->sql, s->trace));
  }
  absl::Status link = RunPipeline(steps);
  // The first failure in the transaction is its outcome.
  absl::Status outcome = link;
  for (size_t i = first; i < steps.size() && outcome.ok(); ++i) {
    Step& st = steps[i];
    if (st.status.ok() || (st.status.code() == absl::StatusCode::kAborted &&
                               absl::StartsWith(st.status.message(), "not executed"))) {
      continue;
    }
    if (st.statement != nullptr) {
      const size_t n = std::find(statements.begin(), statements.end(), st.statement) -
                       statements.begin();
      outcome = absl::Status(st.status.code(),
                             absl::StrCat("statement ", n + 1, ": ", st.status.message()));
      std::string sqlstate = SqlStateOf(st.status);
      if (!sqlstate.empty()) outcome.SetPayload(kSqlStatePayload, absl::Cord(sqlstate));
    } else {
      outcome = st.status;
    }
  }
  for (size_t i = 0; i < statements.size(); ++i) {
    statements[i]->status = steps[exec_index[i]].status;
    if (i < spans.size()) {
      spans[i].SetStatus(link.ok() ? statements[i]->status : link);
      spans[i].End();
    }
  }
  if (!broken_) {
    std::vector<Step> finish;
    const bool open = PQtransactionStatus(conn_) != PQTRANS_IDLE;
    if (outcome.ok() || open) {
      Step end{Step::kSimple};
      end.sql = outcome.ok() ? "COMMIT" : "ROLLBACK";
      finish.push_back(std::move(end));
      finish.push_back(Step{Step::kSync});
    }
    AddDeallocateSteps(evicted, finish);
    // COMMIT is bounded by the caller's deadline; ROLLBACK and DEALLOCATE get a
    // few seconds of their own, since they only tidy up after a failure.
    const absl::Time finish_deadline =
        outcome.ok() ? deadline : absl::Now() + absl::Seconds(5);
    CancelState finish_cancel;
    for (Step& st : finish) {
      st.deadline = finish_deadline;
      if (outcome.ok()) st.cancelled = cancelled;
      st.cancel = &finish_cancel;
    }
    telemetry::Span end_span;
    if (!finish.empty() && !statements.empty()) {
      end_span = StartStatementSpan(outcome.ok() ? "COMMIT" : "ROLLBACK", statements[0]->trace);
    }
    if (!finish.empty()) {
      absl::Status finish_link = RunPipeline(finish);
      end_span.SetStatus(finish_link.ok() ? finish[0].status : finish_link);
      absl::Status end_status =
          finish_link.ok() ? (outcome.ok() || open ? finish[0].status : absl::OkStatus())
                           : finish_link;
      if (outcome.ok() && !end_status.ok()) {
        outcome = absl::Status(end_status.code(),
                               absl::StrCat("COMMIT: ", end_status.message()));
        std::string sqlstate = SqlStateOf(end_status);
        if (!sqlstate.empty()) outcome.SetPayload(kSqlStatePayload, absl::Cord(sqlstate));
      }
    }
  }
  return outcome;
}

absl::Status Connection::RunSimple(const char* sql, absl::Time deadline) {
  std::vector<Step> steps;
  Step s{Step::kSimple};
  s.sql = sql;
  s.deadline = deadline;
  steps.push_back(std::move(s));
  Step sync{Step::kSync};
  sync.deadline = deadline;
  steps.push_back(std::move(sync));
  absl::Status link = RunPipeline(steps);
  return link.ok() ? steps[0].status : link;
}

absl::Status Connection::RunStreaming(Statement& statement, bool read_only) {
  if (!read_only) return RunStreamingStatement(statement);
  if (absl::Status s = RunSimple("BEGIN READ ONLY", statement.deadline); !s.ok()) {
    if (broken_) return s;
    statement.status = s;
    return absl::OkStatus();
  }
  absl::Status link = RunStreamingStatement(statement);
  if (!link.ok()) return link;
  // COMMIT after a failure rolls back too; ROLLBACK says what is meant.
  absl::Status end = RunSimple(statement.status.ok() ? "COMMIT" : "ROLLBACK",
                               absl::Now() + absl::Seconds(5));
  if (broken_) return end.ok() ? absl::UnavailableError("connection lost") : end;
  if (statement.status.ok() && !end.ok()) statement.status = end;
  return absl::OkStatus();
}

absl::Status Connection::RunStreamingStatement(Statement& statement) {
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
      if (!link.ok()) return link;
      if (!steps[0].status.ok()) {
        statement.status = steps[0].status;
        return absl::OkStatus();
      }
    }
  }
  // Unnamed statement: a streamed query is rarely repeated fast enough for a
  // prepared statement to pay.
  const std::string sql(statement.sql);
  telemetry::Span span = StartStatementSpan(statement.sql, statement.trace);
  span.SetAttribute("poolside.streaming", true);
  if (PQsendQueryParams(conn_, sql.c_str(), params.size(),
                        reinterpret_cast<const Oid*>(params.types()), params.values(),
                        params.lengths(), params.formats(), 0) != 1) {
    return MarkBroken("sending a statement");
  }
  PQsetSingleRowMode(conn_);
  Step step{Step::kExec};
  step.statement = &statement;
  step.deadline = statement.deadline;
  step.cancelled = statement.cancelled;
  ConsumeResultsOf(step);
  statement.status = step.status;
  span.SetStatus(step.status);
  if (broken_) return step.status.ok() ? absl::UnavailableError("connection lost") : step.status;
  return absl::OkStatus();
}

bool Connection::Ping(absl::Time deadline) {
  if (!LooksAlive()) return false;
  Step s{Step::kSimple};
  std::vector<Step> steps;
  s.sql = "";
  s.deadline = deadline;
  steps.push_back(std::move(s));
  Step sync{Step::kSync};
  sync.deadline = deadline;
  steps.push_back(std::move(sync));
  absl::Status link = RunPipeline(steps);
  return link.ok() && steps[0].status.ok() && !broken_;
}

absl::Status Connection::Listen(absl::string_view channel, absl::Time deadline) {
  if (broken_) return absl::UnavailableError("connection is broken");
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

absl::Status Connection::AwaitNotifications(absl::Time deadline,
                                            std::vector<Notification>* out) {
  if (broken_ || conn_ == nullptr) return absl::UnavailableError("connection is broken");
  while (true) {
    if (PQconsumeInput(conn_) == 0 || PQstatus(conn_) != CONNECTION_OK) {
      return MarkBroken("waiting for notifications");
    }
    const size_t before = out->size();
    while (PGnotify* n = PQnotifies(conn_)) {
      out->push_back(Notification{n->relname, n->extra != nullptr ? n->extra : "", n->be_pid});
      PQfreemem(n);
    }
    // An error the server sends on its own (e.g. the backend was terminated)
    // arrives as a result while idle; the connection is over.
    if (!PQisBusy(conn_)) {
      bool failed = false;
      while (PGresult* r = PQgetResult(conn_)) {
        failed = failed || PQresultStatus(r) == PGRES_FATAL_ERROR;
        PQclear(r);
      }
      if (failed) return MarkBroken("waiting for notifications");
    }
    if (out->size() > before) return absl::OkStatus();
    const absl::Time now = absl::Now();
    if (now >= deadline) return absl::OkStatus();
    const int timeout_ms = static_cast<int>(std::clamp<int64_t>(
        absl::ToInt64Milliseconds(absl::Ceil(deadline - now, absl::Milliseconds(1))), 0, 60000));
    pollfd pfd{PQsocket(conn_), POLLIN, 0};
    const int rc = ::poll(&pfd, 1, timeout_ms);
    if (rc < 0 && errno != EINTR) return MarkBroken("waiting for notifications");
  }
}

}  // namespace poolside::db
