#ifndef POOLSIDE_COMMON_DB_PATRONI_CLIENT_H_
#define POOLSIDE_COMMON_DB_PATRONI_CLIENT_H_

// Reads a Patroni cluster's members and leader from Patroni's REST API
// (GET /cluster on any member's API), for the TopologyMonitor's discovery.
//
//   absl::StatusOr<PatroniClusterView> view =
//       FetchPatroniCluster("http://10.0.0.5:8008", absl::Now() + absl::Seconds(1));
//
// HTTP/1.0 over a plain TCP socket of our own: never waits past the deadline
// (connect included), reads at most kMaxPatroniResponse bytes, and accepts
// only what a /cluster answer looks like. https is not supported yet.
// Thread-safe (no shared state).

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace poolside::db {

inline constexpr size_t kMaxPatroniResponse = 1 << 20;
inline constexpr size_t kMaxPatroniMembers = 64;

struct PatroniMember {
  std::string name;
  // "leader", "replica", "sync_standby", "standby_leader", ...
  std::string role;
  // "running", "streaming", "stopped", "starting", ...
  std::string state;
  std::string host;
  int port = 0;
};

struct PatroniClusterView {
  std::vector<PatroniMember> members;
  // The member whose role is "leader"; "" when there is none (e.g. during a
  // failover).
  std::string leader;
};

struct HttpEndpoint {
  std::string host;
  int port = 0;
};

// "http://host:port" (a trailing '/' allowed); INVALID_ARGUMENT otherwise.
absl::StatusOr<HttpEndpoint> ParseHttpEndpoint(absl::string_view url);

// A /cluster response body. INVALID_ARGUMENT for anything malformed: not
// JSON, no members array, a member without a name, host or valid port, a
// host that is not a plain name or address, duplicate names, more than
// kMaxPatroniMembers members, or more than one leader.
absl::StatusOr<PatroniClusterView> ParsePatroniCluster(absl::string_view json);

// GET `path` from host:port; the body of a 200 answer. UNAVAILABLE when the
// connection fails or the status is not 200, DEADLINE_EXCEEDED at the
// deadline, RESOURCE_EXHAUSTED past `max_bytes`, INVALID_ARGUMENT for a reply
// that is not HTTP.
absl::StatusOr<std::string> HttpGet(const HttpEndpoint& endpoint, absl::string_view path,
                                    absl::Time deadline, size_t max_bytes = kMaxPatroniResponse);

// HttpGet(/cluster) then ParsePatroniCluster.
absl::StatusOr<PatroniClusterView> FetchPatroniCluster(absl::string_view url, absl::Time deadline);

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_PATRONI_CLIENT_H_
