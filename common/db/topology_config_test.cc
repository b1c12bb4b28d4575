#include "common/db/topology_config.h"

#include <string>

#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"
#include "gtest/gtest.h"

namespace poolside::db {
namespace {

v1::DatabaseConfig Config() {
  v1::DatabaseConfig c;
  c.set_name("app");
  c.set_dsn("host=127.0.0.1 port=1 dbname=app user=u");
  v1::TopologyConfig* t = c.mutable_topology();
  t->set_max_lag_ms(800);
  t->set_max_lag_bytes(1000);
  t->set_probe_interval_ms(100);
  t->set_probe_timeout_ms(500);
  t->set_no_replica("fail");
  return c;
}

TEST(TopologyConfigTest, ConfiguredOnlyWithMembersBesideTheDsn) {
  v1::DatabaseConfig c = Config();
  EXPECT_FALSE(TopologyConfigured(c));
  c.mutable_topology()->add_replicas("port=2");
  EXPECT_TRUE(TopologyConfigured(c));
  c.mutable_topology()->clear_replicas();
  c.mutable_topology()->add_patroni_endpoints("http://127.0.0.1:8008");
  EXPECT_TRUE(TopologyConfigured(c));
}

TEST(TopologyConfigTest, OptionsFromTheConfiguration) {
  const v1::TopologyConfig t = Config().topology();
  const TopologyOptions o = TopologyOptionsFor(t);
  EXPECT_EQ(o.max_lag, absl::Milliseconds(800));
  EXPECT_EQ(o.max_lag_bytes, 1000u);
  // A probe timeout past an interval is longer than three intervals here.
  EXPECT_EQ(o.max_sample_age, absl::Milliseconds(600));
  EXPECT_TRUE(o.fail_without_replica);
  v1::TopologyConfig fast = t;
  fast.set_probe_timeout_ms(50);
  EXPECT_EQ(TopologyOptionsFor(fast).max_sample_age, absl::Milliseconds(300));
  const TopologyMonitorOptions m = MonitorOptionsFor(t);
  EXPECT_EQ(m.interval, absl::Milliseconds(100));
  EXPECT_EQ(m.probe_timeout, absl::Milliseconds(500));
}

TEST(TopologyConfigTest, BadMembersAreRefusedNamingTheDatabase) {
  v1::DatabaseConfig c = Config();
  c.mutable_topology()->add_replicas("user=intruder port=2");
  Topology topology("app", TopologyOptionsFor(c.topology()), Clock::Real());
  TopologyMonitor monitor(&topology, MonitorOptionsFor(c.topology()));
  absl::Status s = StartTopologyMonitor(c, &monitor);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(s.message(), "database app topology: ")) << s;
  EXPECT_FALSE(absl::StrContains(s.message(), "intruder")) << s;
}

TEST(TopologyConfigTest, AwaitPrimaryGivesUpWithoutOne) {
  Topology topology("app", {}, Clock::Real());
  ASSERT_TRUE(topology.SetMembers({{"a", "host=a"}}).ok());
  EXPECT_FALSE(AwaitPrimary(topology, absl::Milliseconds(20)));
  topology.Record("a", MemberSample{.in_recovery = false, .lsn = 1});
  EXPECT_TRUE(AwaitPrimary(topology, absl::Seconds(10)));
}

}  // namespace
}  // namespace poolside::db
