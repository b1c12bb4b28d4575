#ifndef POOLSIDE_SERVICES_INGEST_FLUSHER_H_
#define POOLSIDE_SERVICES_INGEST_FLUSHER_H_

// Writes one batch in one transaction on one connection:
//
//   BEGIN
//   SELECT the batch's idempotency keys already in poolside_ingest_keys
//     -> a request whose key is stored with the same content (digest) is
//        answered with its stored result, not written; one whose key is stored
//        with other content fails with FAILED_PRECONDITION naming the key
//   COPY every other row
//     -> on a row's error (SQLSTATE class 22 or 23, or 54000: a row or index
//        entry too large): ROLLBACK and start again,
//        now isolating the bad rows (below)
//   INSERT the new keys with each request's digest and result
//   COMMIT
//     -> the connection lost (or the deadline passed) during COMMIT: the
//        outcome is unknown (FlushResult::commit_unknown); a retry of a keyed
//        request finds its key if the first attempt committed
//
// Keys belong to the login role the connection is logged in as (column
// `login`, DEFAULT session_user): the lookup reads only that login's keys,
// and row-level security keeps every login but the table's owner to its own
// (see EnsureKeysTable()).
//
// So a request's rows and its key commit together or not at all. A key that
// another writer committed concurrently (unique violation on the key table)
// restarts the transaction, which then finds it.
//
// Bad-row isolation copies the rows in probes, in order, each under a
// savepoint: a probe that succeeds is kept; one that fails is rolled back, and
// the row PostgreSQL names in its error is rejected with its reason while the
// rows before it (which went in) become the next probe. Without a line number
// the probe is halved. A probe after a success is twice its size, after a
// rejection as large as the good run before it, so dense bad rows are probed
// one by one and sparse ones cost a few COPYs each: at most one COPY (one
// round trip with its savepoint handling) per bad row plus a logarithmic
// number per good run, and the bytes sent stay within a small multiple of the
// batch's. Deferred constraints are made immediate, so they fail inside a
// probe.
//
// Thread-compatible: one call per connection at a time.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/db/connection.h"
#include "proto/poolside/v1/ingest.pb.h"
#include "services/ingest/batcher.h"

namespace poolside::ingest {

inline constexpr char kKeysTable[] = "poolside_ingest_keys";
// The transaction-level advisory lock that serializes EnsureKeysTable().
inline constexpr int64_t kKeysTableLock = 0x706f6f6c73696465;  // "poolside"

struct FlushResult {
  // Not OK: nothing was committed, every request of the batch fails with this
  // (UNAVAILABLE or ABORTED when a retry can succeed).
  absl::Status status;
  // With status OK: one per batch.writes, in order; a request whose key was
  // used for other content gets FAILED_PRECONDITION (nothing of it written).
  std::vector<absl::StatusOr<v1::WriteResponse>> responses;
  // The connection is unusable (mark its lease broken).
  bool broken = false;
  // With status not OK: the connection was lost, or the deadline passed,
  // while COMMIT was under way, so the transaction may have committed (status
  // says so). False: nothing of the batch was committed.
  bool commit_unknown = false;
  uint64_t copy_statements = 0;
  uint64_t rows_written = 0;
  uint64_t bytes_written = 0;
  uint64_t rows_rejected = 0;  // by PostgreSQL during COPY
};

// Creates poolside_ingest_keys (and its index on written_at) unless present,
// and brings a table of an earlier version up to date: keys scoped by login
// and principal (primary key (login, principal, key)), the table and digest
// of each, and row-level security: a policy for every role but the owner
// (ENABLE, not FORCE) admits only rows whose login is session_user, so a
// role granted SELECT, INSERT (GrantKeysTable) can neither read another
// login's keys nor store one under another login's name; the owner, which
// runs this and the cleanup, sees all. Rows written before the login column
// count as the caller's; before principals, they keep an empty principal and
// no digest, and such a key matches a retry whose row count equals the
// stored result's. Idempotent; concurrent callers are serialized by an
// advisory lock. Run it as the table's owner (the DSN user that created it).
absl::Status EnsureKeysTable(db::Connection& conn, absl::Time deadline);

// Lets each of `users` (the login roles principals' rows are written as)
// look keys up and store them in the same transaction as their rows: GRANT
// SELECT, INSERT ON poolside_ingest_keys (its own rows only, by the policy
// EnsureKeysTable() makes), one user at a time. Serialized
// like EnsureKeysTable(). The first error, naming its user, after trying
// every user.
absl::Status GrantKeysTable(db::Connection& conn, const std::vector<std::string>& users,
                            absl::Time deadline);

// The FAILED_PRECONDITION answer to a key used before for other content.
absl::Status KeyConflict(const PendingWrite& write, absl::string_view used_table);

FlushResult FlushBatch(db::Connection& conn, const Batch& batch, absl::Time deadline);

// Whether the server `conn` is connected to is a standby (pg_is_in_recovery()):
// a write it refused as read-only (SQLSTATE 25006) met a demoted primary, not
// a read-only role.
absl::StatusOr<bool> InRecovery(db::Connection& conn, absl::Time deadline);

// Deletes keys older than `retention`; returns how many.
absl::StatusOr<int64_t> DeleteExpiredKeys(db::Connection& conn, absl::Duration retention,
                                          absl::Time deadline);

}  // namespace poolside::ingest

#endif  // POOLSIDE_SERVICES_INGEST_FLUSHER_H_
