#ifndef POOLSIDE_COMMON_DB_TOPOLOGY_MONITOR_H_
#define POOLSIDE_COMMON_DB_TOPOLOGY_MONITOR_H_

// Keeps a Topology current: probes every member often (role, WAL position;
// member_probe.h) and, when Patroni endpoints are configured, rediscovers the
// members and the leader from Patroni's REST API (patroni_client.h).
//
//   Topology topology("app", {}, Clock::Real());
//   absl::StatusOr<std::vector<MemberSpec>> members =
//       MembersFromDsns(primary_dsn, {"host=replica1", "host=replica2"});
//   TopologyMonitor monitor(&topology, {.interval = absl::Milliseconds(200)});
//   absl::Status started = monitor.Start(*members);     // or StartPatroni(...)
//   ...
//   monitor.Stop();  // also in the destructor
//
// One thread per member probes it every `interval` (each probe bounded by
// `probe_timeout`, so a dead member delays nobody else), plus one discovery
// thread with Patroni. When Patroni cannot be reached for longer than
// `leader_hint_ttl`, its leader is no longer taken as given and the primary is
// whichever single member accepts writes; the member list stays as last seen.
//
// Thread-safety: Start*/Stop from one thread; ProbeSoon and discovery_status
// from any.

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/db/member_dsn.h"
#include "common/db/member_probe.h"
#include "common/db/topology.h"

namespace poolside::db {

struct TopologyMonitorOptions {
  absl::Duration interval = absl::Milliseconds(250);
  absl::Duration probe_timeout = absl::Seconds(1);
  absl::Duration leader_hint_ttl = absl::Seconds(3);
};

// Makes the probe of one member (tests substitute fakes).
using ProbeFactory = std::function<std::unique_ptr<MemberProbe>(const MemberSpec&)>;

class TopologyMonitor {
 public:
  TopologyMonitor(Topology* topology, TopologyMonitorOptions options,
                  ProbeFactory factory = nullptr);
  ~TopologyMonitor();
  TopologyMonitor(const TopologyMonitor&) = delete;
  TopologyMonitor& operator=(const TopologyMonitor&) = delete;

  // Monitors a fixed member list.
  absl::Status Start(std::vector<MemberSpec> members);
  // Discovers members from the first of `urls` ("http://host:port") that
  // answers GET /cluster; their DSNs are `dsn` with each member's host and
  // port. Returns after the first discovery attempt (its failure is not an
  // error: discovery keeps trying); INVALID_ARGUMENT for a malformed URL.
  absl::Status StartPatroni(std::vector<std::string> urls, std::string dsn);
  void Stop();

  // Probes member `id` once its probe under way, if any, is answered,
  // rather than at its next interval: a call found it unreachable
  // (Topology::MarkSuspect) and its next probe decides. Unknown ids: nothing.
  void ProbeSoon(const std::string& id);

  // The last discovery attempt's outcome (OK without Patroni).
  absl::Status discovery_status() const;

 private:
  struct Worker;

  void Reconcile(const std::vector<MemberSpec>& members);
  void ProbeLoop(std::shared_ptr<Worker> worker);
  void DiscoveryLoop();
  absl::Status DiscoverOnce();
  // Waits `d` or until stopped; false when stopped.
  bool Sleep(absl::Duration d);

  Topology* const topology_;
  const TopologyMonitorOptions options_;
  const ProbeFactory factory_;
  std::vector<std::string> patroni_urls_;
  std::string template_dsn_;
  absl::Time last_discovery_ = absl::InfinitePast();  // discovery thread only
  std::thread discovery_;

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status discovery_status_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<Worker>> workers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_TOPOLOGY_MONITOR_H_
