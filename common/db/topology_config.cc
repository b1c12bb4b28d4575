#include "common/db/topology_config.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/db/member_dsn.h"

namespace poolside::db {

bool TopologyConfigured(const v1::DatabaseConfig& config) {
  return !config.topology().replicas().empty() || !config.topology().patroni_endpoints().empty();
}

TopologyOptions TopologyOptionsFor(const v1::TopologyConfig& t) {
  TopologyOptions o;
  o.max_lag = absl::Milliseconds(t.max_lag_ms());
  o.max_lag_bytes = t.max_lag_bytes();
  const absl::Duration interval = absl::Milliseconds(t.probe_interval_ms());
  o.max_sample_age = std::max(3 * interval, interval + absl::Milliseconds(t.probe_timeout_ms()));
  o.fail_without_replica = t.no_replica() == "fail";
  return o;
}

TopologyMonitorOptions MonitorOptionsFor(const v1::TopologyConfig& t) {
  TopologyMonitorOptions o;
  o.interval = absl::Milliseconds(t.probe_interval_ms());
  o.probe_timeout = absl::Milliseconds(t.probe_timeout_ms());
  return o;
}

absl::Status StartTopologyMonitor(const v1::DatabaseConfig& config, TopologyMonitor* monitor) {
  const v1::TopologyConfig& t = config.topology();
  absl::Status started;
  if (!t.patroni_endpoints().empty()) {
    started = monitor->StartPatroni({t.patroni_endpoints().begin(), t.patroni_endpoints().end()},
                                    config.dsn());
  } else {
    absl::StatusOr<std::vector<MemberSpec>> members =
        MembersFromDsns(config.dsn(), {t.replicas().begin(), t.replicas().end()});
    started = members.ok() ? monitor->Start(*std::move(members)) : members.status();
  }
  if (started.ok()) return started;
  return absl::Status(started.code(),
                      absl::StrCat("database ", config.name(), " topology: ", started.message()));
}

bool AwaitPrimary(const Topology& topology, absl::Duration timeout) {
  const absl::Time until = absl::Now() + timeout;
  uint64_t generation = topology.primary_generation();
  while (topology.primary().empty() && absl::Now() < until) {
    generation = topology.AwaitPrimaryChange(generation, until - absl::Now());
  }
  return !topology.primary().empty();
}

}  // namespace poolside::db
