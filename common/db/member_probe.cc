#include "common/db/member_probe.h"

#include <errno.h>
#include <poll.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/db/conninfo.h"
#include "common/db/error.h"
#include "common/db/socket_wait.h"
#include "libpq-fe.h"

namespace poolside::db {
namespace {

// pg_is_in_recovery() once: a server promoted between two calls would make
// pg_current_wal_lsn() fail (or a replay position look like a primary's).
// The volatile function keeps the subquery from being flattened. The
// timeline: a primary's, of its current WAL file (its first 8 hex digits); a
// replica's, the one its WAL receiver streams (NULL without one, or for a
// role that may not read pg_stat_wal_receiver).
constexpr char kProbeSql[] =
    "SELECT r, CASE WHEN r THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text, "
    "CASE WHEN r THEN (SELECT received_tli FROM pg_catalog.pg_stat_wal_receiver LIMIT 1)::int8 "
    "ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int8 END "
    "FROM (SELECT pg_is_in_recovery() AS r) s";

std::string Trimmed(const char* s) {
  return std::string(absl::StripAsciiWhitespace(s != nullptr ? s : ""));
}

void DiscardNotice(void*, const char*) {}

}  // namespace

PgMemberProbe::PgMemberProbe(std::string dsn) {
  absl::StatusOr<Conninfo> c = Conninfo::Parse(dsn);
  if (!c.ok()) {
    dsn_error_ = c.status();
    return;
  }
  c->SetDefault("application_name", "poolside-monitor");
  // A dead peer is noticed by the deadline; keepalives only free the socket.
  c->SetDefault("keepalives", "1");
  conninfo_ = c->ToString();
}

PgMemberProbe::~PgMemberProbe() { Close(); }

void PgMemberProbe::Close() {
  if (conn_ != nullptr) PQfinish(conn_);
  conn_ = nullptr;
}

absl::Status PgMemberProbe::Connect(absl::Time deadline) {
  conn_ = PQconnectStart(conninfo_.c_str());
  if (absl::Status s = CompleteConnect(conn_, deadline); !s.ok()) {
    Close();
    if (s.code() != absl::StatusCode::kUnavailable) return s;
    return absl::UnavailableError(absl::StrCat("cannot connect: ", s.message()));
  }
  PQsetNoticeProcessor(conn_, &DiscardNotice, nullptr);
  if (PQsetnonblocking(conn_, 1) != 0) {
    Close();
    return absl::InternalError("cannot switch the connection to non-blocking mode");
  }
  return absl::OkStatus();
}

absl::StatusOr<MemberSample> PgMemberProbe::Probe(absl::Time deadline) {
  if (!dsn_error_.ok()) return dsn_error_;
  if (conn_ != nullptr && PQstatus(conn_) != CONNECTION_OK) Close();
  if (conn_ == nullptr) {
    if (absl::Status s = Connect(deadline); !s.ok()) return s;
  }
  absl::StatusOr<MemberSample> sample = Query(deadline);
  // Any failure may leave the connection mid-statement: start afresh.
  if (!sample.ok()) Close();
  return sample;
}

absl::StatusOr<MemberSample> PgMemberProbe::Query(absl::Time deadline) {
  if (PQsendQuery(conn_, kProbeSql) != 1) {
    return absl::UnavailableError(absl::StrCat("send: ", Trimmed(PQerrorMessage(conn_))));
  }
  for (;;) {
    const int flushed = PQflush(conn_);
    if (flushed < 0) {
      return absl::UnavailableError(absl::StrCat("send: ", Trimmed(PQerrorMessage(conn_))));
    }
    if (flushed == 0) break;
    absl::StatusOr<bool> ready = WaitForSocket(PQsocket(conn_), POLLOUT, deadline);
    if (!ready.ok()) return ready.status();
    if (!*ready) return absl::DeadlineExceededError("the probe took too long");
  }
  absl::StatusOr<MemberSample> out = absl::UnavailableError("no result");
  bool got_rows = false;
  for (;;) {
    while (PQisBusy(conn_)) {
      absl::StatusOr<bool> ready = WaitForSocket(PQsocket(conn_), POLLIN, deadline);
      if (!ready.ok()) return ready.status();
      if (!*ready) return absl::DeadlineExceededError("the probe took too long");
      if (PQconsumeInput(conn_) != 1) {
        return absl::UnavailableError(
            absl::StrCat("connection lost: ", Trimmed(PQerrorMessage(conn_))));
      }
    }
    PGresult* result = PQgetResult(conn_);
    if (result == nullptr) break;
    const ExecStatusType status = PQresultStatus(result);
    if (status == PGRES_TUPLES_OK && !got_rows) {
      got_rows = true;
      if (PQntuples(result) != 1 || PQnfields(result) != 3 || PQgetisnull(result, 0, 0)) {
        out = absl::InternalError("unexpected probe result shape");
      } else if (PQgetisnull(result, 0, 1)) {
        out = absl::UnavailableError("the server has no WAL position yet");
      } else {
        MemberSample sample;
        sample.in_recovery = absl::string_view(PQgetvalue(result, 0, 0)) == "t";
        int64_t timeline = 0;
        if (!PQgetisnull(result, 0, 2) && absl::SimpleAtoi(PQgetvalue(result, 0, 2), &timeline) &&
            timeline > 0 && timeline <= UINT32_MAX) {
          sample.timeline = static_cast<uint32_t>(timeline);
        }
        absl::StatusOr<Lsn> lsn = ParseLsn(PQgetvalue(result, 0, 1));
        if (lsn.ok()) {
          sample.lsn = *lsn;
          out = sample;
        } else {
          out = lsn.status();
        }
      }
    } else if (status != PGRES_TUPLES_OK) {
      const char* sqlstate = PQresultErrorField(result, PG_DIAG_SQLSTATE);
      const char* primary = PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY);
      out = sqlstate != nullptr ? StatusFromSqlState(sqlstate, primary != nullptr ? primary : "")
                                : absl::UnavailableError(Trimmed(PQresultErrorMessage(result)));
    }
    PQclear(result);
  }
  return out;
}

}  // namespace poolside::db
