#ifndef POOLSIDE_COMMON_DB_TOPOLOGY_CONFIG_H_
#define POOLSIDE_COMMON_DB_TOPOLOGY_CONFIG_H_

// A configured database's topology (DatabaseConfig.topology, validated and
// defaulted by config::FinalizeTopology) as every service runs it: the
// Topology's and the monitor's options, and the monitor started on the
// configured members or on Patroni's.
//
//   if (db::TopologyConfigured(config)) {
//     db::Topology topology(config.name(), db::TopologyOptionsFor(config.topology()),
//                           Clock::Real());
//     db::TopologyMonitor monitor(&topology, db::MonitorOptionsFor(config.topology()));
//     absl::Status s = db::StartTopologyMonitor(config, &monitor);
//     db::AwaitPrimary(topology, absl::Seconds(2));
//   }
//
// Pure functions, except StartTopologyMonitor (see TopologyMonitor).

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/db/topology.h"
#include "common/db/topology_monitor.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::db {

// Whether `config`'s topology names replicas or Patroni endpoints.
bool TopologyConfigured(const v1::DatabaseConfig& config);

// The lag bounds, sample age (three probe intervals or one probe timeout past
// an interval, whichever is longer) and fallback of `t`.
TopologyOptions TopologyOptionsFor(const v1::TopologyConfig& t);
// The probe interval and timeout of `t`.
TopologyMonitorOptions MonitorOptionsFor(const v1::TopologyConfig& t);

// Starts `monitor` on `config`'s members: discovered through its Patroni
// endpoints (each member at its host and port with the DSN's other settings),
// else its DSN and replicas. INVALID_ARGUMENT, naming the database, for
// members or endpoints that do not parse.
absl::Status StartTopologyMonitor(const v1::DatabaseConfig& config, TopologyMonitor* monitor);

// Waits up to `timeout` for `topology` to name a primary; whether it does.
bool AwaitPrimary(const Topology& topology, absl::Duration timeout);

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_TOPOLOGY_CONFIG_H_
