#include "common/db/socket_wait.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "libpq-fe.h"

namespace poolside::db {

int PollTimeoutMs(absl::Time now, absl::Time wake, int max_ms) {
  return static_cast<int>(std::clamp<int64_t>(
      absl::ToInt64Milliseconds(absl::Ceil(wake - now, absl::Milliseconds(1))), 0, max_ms));
}

absl::StatusOr<bool> WaitForSocket(int fd, short events, absl::Time deadline) {
  if (fd < 0) return absl::UnavailableError("the connection is closed");
  for (;;) {
    const absl::Time now = absl::Now();
    if (now >= deadline) return false;
    pollfd pfd{fd, events, 0};
    const int rc = ::poll(&pfd, 1, PollTimeoutMs(now, deadline, 60000));
    if (rc > 0) return true;
    if (rc < 0 && errno != EINTR) {
      return absl::UnavailableError(absl::StrCat("poll on the socket failed: ", strerror(errno)));
    }
  }
}

absl::Status CompleteConnect(pg_conn* conn, absl::Time deadline,
                             absl::Span<const std::atomic<bool>* const> abandon) {
  if (conn == nullptr) return absl::ResourceExhaustedError("libpq: out of memory");
  // Before the first PQconnectPoll(), as if it had asked to write.
  PostgresPollingStatusType state = PGRES_POLLING_WRITING;
  for (;;) {
    if (PQstatus(conn) == CONNECTION_BAD || state == PGRES_POLLING_FAILED) {
      return absl::UnavailableError(absl::StripAsciiWhitespace(PQerrorMessage(conn)));
    }
    if (state == PGRES_POLLING_OK) return absl::OkStatus();
    for (const std::atomic<bool>* flag : abandon) {
      if (flag->load(std::memory_order_relaxed)) {
        return absl::UnavailableError(
            "connecting given up: the server stopped answering (its probes failed)");
      }
    }
    // With flags to watch, wake now and then to look at them.
    const absl::Time wake =
        abandon.empty() ? deadline : std::min(deadline, absl::Now() + absl::Milliseconds(50));
    absl::StatusOr<bool> ready =
        WaitForSocket(PQsocket(conn), state == PGRES_POLLING_READING ? POLLIN : POLLOUT, wake);
    if (!ready.ok()) return ready.status();
    if (*ready) {
      state = PQconnectPoll(conn);
    } else if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError("connecting took too long");
    }
  }
}

}  // namespace poolside::db
