#ifndef POOLSIDE_COMMON_DB_MEMBER_PROBE_H_
#define POOLSIDE_COMMON_DB_MEMBER_PROBE_H_

// Asks one PostgreSQL server what it is: whether it is in recovery (a replica)
// and its WAL position (a primary's pg_current_wal_lsn(), a replica's
// pg_last_wal_replay_lsn()), for the TopologyMonitor.
//
//   PgMemberProbe probe(dsn);
//   absl::StatusOr<MemberSample> s = probe.Probe(absl::Now() + absl::Seconds(1));
//
// PgMemberProbe keeps one connection open between probes (reopened after a
// failure) and never waits past the deadline, whatever the server does: a
// stopped or unreachable server costs a DEADLINE_EXCEEDED or UNAVAILABLE, not
// a stuck thread. Used by one thread at a time.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/db/topology.h"

struct pg_conn;

namespace poolside::db {

class MemberProbe {
 public:
  virtual ~MemberProbe() = default;
  virtual absl::StatusOr<MemberSample> Probe(absl::Time deadline) = 0;
};

class PgMemberProbe : public MemberProbe {
 public:
  explicit PgMemberProbe(std::string dsn);
  ~PgMemberProbe() override;
  PgMemberProbe(const PgMemberProbe&) = delete;
  PgMemberProbe& operator=(const PgMemberProbe&) = delete;

  absl::StatusOr<MemberSample> Probe(absl::Time deadline) override;

 private:
  absl::Status Connect(absl::Time deadline);
  absl::StatusOr<MemberSample> Query(absl::Time deadline);
  void Close();

  std::string conninfo_;  // empty if the DSN did not parse
  absl::Status dsn_error_;
  pg_conn* conn_ = nullptr;
};

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_MEMBER_PROBE_H_
