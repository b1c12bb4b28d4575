// Replicas' failover buffer (its database's holds) without PostgreSQL:
// members on refused ports never name a primary, so every call offered is
// held until the buffer's configured count or bytes are reached
// (RESOURCE_EXHAUSTED past them) or the database stops (then(false), exactly
// once each); a read waiting for a replica ends when the replicas stop.

#include "services/query/replicas.h"

#include <atomic>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/config/database_config.h"
#include "gtest/gtest.h"
#include "tests/fixtures/refusing_port.h"

namespace poolside::query {
namespace {

using ::poolside::testing::RefusingPort;

TEST(ReplicasTest, FailoverBufferHoldsUpToItsConfiguredLimits) {
  RefusingPort primary, replica;
  ASSERT_GT(primary.port(), 0);
  ASSERT_GT(replica.port(), 0);
  v1::DatabaseConfig c;
  c.set_name("app");
  c.set_dsn(absl::StrCat("host=127.0.0.1 port=", primary.port(), " dbname=app user=u"));
  v1::TopologyConfig* t = c.mutable_topology();
  t->add_replicas(absl::StrCat("host=127.0.0.1 port=", replica.port()));
  t->set_probe_interval_ms(50);
  t->set_probe_timeout_ms(200);
  t->set_failover_buffer_ms(60000);
  t->set_failover_buffer_calls(2);
  t->set_failover_buffer_bytes(1 << 20);
  absl::flat_hash_set<std::string> names;
  ASSERT_TRUE(config::FinalizeDatabase("databases[0]", &c, &names).ok());

  db::ManagedDatabase database(c, {});
  Replicas replicas(&database);
  absl::Mutex mu;
  std::vector<bool> outcomes;
  auto hold = [&](size_t bytes) {
    return replicas.HoldForPrimary(replicas.primary_generation(), bytes,
                                   absl::Now() + absl::Minutes(5), [&](bool known) {
                                     absl::MutexLock lock(&mu);
                                     outcomes.push_back(known);
                                   });
  };
  ASSERT_TRUE(database.StartMonitor().ok());
  EXPECT_TRUE(replicas.topology().primary().empty());
  EXPECT_EQ(replicas.PrimaryDsn("").status().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(hold(100).ok());
  // 100 + (1 MiB - 99) bytes is one byte past failoverBufferBytes.
  absl::Status bytes = hold((1 << 20) - 99);
  EXPECT_EQ(bytes.code(), absl::StatusCode::kResourceExhausted) << bytes;
  EXPECT_TRUE(absl::StrContains(bytes.message(), "failoverBufferBytes (1048576)")) << bytes;
  ASSERT_TRUE(hold(1).ok());
  absl::Status calls = hold(1);
  EXPECT_EQ(calls.code(), absl::StatusCode::kResourceExhausted) << calls;
  EXPECT_TRUE(absl::StrContains(calls.message(), "failoverBufferCalls (2)")) << calls;
  EXPECT_EQ(replicas.held_now(), 2u);
  EXPECT_EQ(replicas.held_total(), 2u);
  {
    absl::MutexLock lock(&mu);
    EXPECT_TRUE(outcomes.empty()) << "released with no primary named";
  }

  // A read waiting for a replica ends, unreached, when the replicas stop.
  std::atomic<bool> replayed{true};
  std::atomic<int> answers{0};
  replicas.AwaitReplay(1, absl::Now() + absl::Minutes(5), [&](bool reached) {
    replayed.store(reached);
    answers.fetch_add(1);
  });
  EXPECT_EQ(answers.load(), 0);
  replicas.Stop();
  EXPECT_EQ(answers.load(), 1);
  EXPECT_FALSE(replayed.load());
  EXPECT_EQ(replicas.held_now(), 2u) << "held calls wait for the database";

  // Stopping the database releases what is held, unrouted, exactly once each.
  database.Stop();
  EXPECT_EQ(replicas.held_now(), 0u);
  EXPECT_EQ(replicas.held_timeouts(), 2u);
  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(outcomes, std::vector<bool>({false, false}));
  }
  EXPECT_EQ(hold(1).code(), absl::StatusCode::kUnavailable) << "nothing is held once stopped";
}

}  // namespace
}  // namespace poolside::query
