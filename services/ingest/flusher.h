#ifndef POOLSIDE_SERVICES_INGEST_FLUSHER_H_
#define POOLSIDE_SERVICES_INGEST_FLUSHER_H_

// Writes one batch in one transaction on one connection:
//
//   BEGIN
//   SELECT the batch's idempotency keys already in poolside_ingest_keys
//     -> those requests are answered with their stored result, not written
//   COPY every other row
//     -> on a data error (SQLSTATE class 22 or 23): ROLLBACK and start again,
//        now copying under savepoints and splitting the rows on failure: at
//        the line PostgreSQL names (rows before it, the row itself, rows after
//        it) or else in halves, each part under its own savepoint, until the
//        bad rows stand alone; they are rejected with PostgreSQL's reason and
//        every other row is copied
//   COPY the new keys with each request's result into poolside_ingest_keys
//   COMMIT
//
// So a request's rows and its key commit together or not at all. A key that
// another writer committed concurrently (unique violation on the key table)
// restarts the transaction, which then finds it.
//
// Thread-compatible: one call per connection at a time.

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/db/connection.h"
#include "proto/poolside/v1/ingest.pb.h"
#include "services/ingest/batcher.h"

namespace poolside::ingest {

inline constexpr char kKeysTable[] = "poolside_ingest_keys";

struct FlushResult {
  // Not OK: nothing was committed, every request of the batch fails with this
  // (UNAVAILABLE or ABORTED when a retry can succeed).
  absl::Status status;
  // With status OK: one per batch.writes, in order.
  std::vector<v1::WriteResponse> responses;
  // The connection is unusable (mark its lease broken).
  bool broken = false;
  uint64_t copy_statements = 0;
  uint64_t rows_written = 0;
  uint64_t bytes_written = 0;
  uint64_t rows_rejected = 0;  // by PostgreSQL during COPY
};

// Creates poolside_ingest_keys (and its index on written_at) unless present.
absl::Status EnsureKeysTable(db::Connection& conn, absl::Time deadline);

FlushResult FlushBatch(db::Connection& conn, const Batch& batch, absl::Time deadline);

// Deletes keys older than `retention`; returns how many.
absl::StatusOr<int64_t> DeleteExpiredKeys(db::Connection& conn, absl::Duration retention,
                                          absl::Time deadline);

}  // namespace poolside::ingest

#endif  // POOLSIDE_SERVICES_INGEST_FLUSHER_H_
