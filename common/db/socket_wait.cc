#include "common/db/socket_wait.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

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

}  // namespace poolside::db
