#ifndef POOLSIDE_COMMON_DB_SOCKET_WAIT_H_
#define POOLSIDE_COMMON_DB_SOCKET_WAIT_H_

// Waiting on one socket with poll(2) until a deadline: what the libpq
// connections (Connection, LogicalStream, the member probe) and the Patroni
// HTTP client do between non-blocking calls.

#include <atomic>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

struct pg_conn;  // libpq's PGconn

namespace poolside::db {

// Waits until `fd` is ready for `events` (poll(2) flags): true when it is (or
// has an error or hang-up to report), false once `deadline` has passed.
// UNAVAILABLE if `fd` is negative (a closed connection) or poll(2) fails; an
// interrupted poll is retried.
absl::StatusOr<bool> WaitForSocket(int fd, short events, absl::Time deadline);

// poll(2)'s timeout for waking at `wake`: the milliseconds from `now`,
// rounded up, within [0, max_ms].
int PollTimeoutMs(absl::Time now, absl::Time wake, int max_ms);

// Completes a connection PQconnectStart() began: PQconnectPoll() until it is
// made, waiting on its socket between calls. OK once connected; UNAVAILABLE
// with libpq's message when it fails (RESOURCE_EXHAUSTED for a null `conn`:
// libpq ran out of memory), or within 50 ms of one of `abandon` being raised
// by another thread; DEADLINE_EXCEEDED once `deadline` passes. `conn` stays
// the caller's to close either way.
absl::Status CompleteConnect(pg_conn* conn, absl::Time deadline,
                             absl::Span<const std::atomic<bool>* const> abandon = {});

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_SOCKET_WAIT_H_
