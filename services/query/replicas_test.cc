// Replicas' failover buffer (its database's holds) without PostgreSQL:
// members on refused ports never name a primary, so every call offered is
// held until the buffer's configured count or bytes are reached
// (RESOURCE_EXHAUSTED past them) or the database stops (then(false), exactly
// once each); a read waiting for a replica ends when the replicas stop.
// Which failed reads run again on another member (ReplicaReadRetry).

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
#include "common/db/error.h"
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

// A plain read on a replica that failed with its connection: the base case
// every row below changes one thing of.
ReadAttempt PlainReplicaRead() {
  return {.on_replica = true, .plain_read = true, .connection_failed = true};
}

TEST(ReplicaReadRetryTest, ConnectionFailuresRunAgainElsewhere) {
  const ReadAttempt read = PlainReplicaRead();
  // Lost under the statement: libpq's words, no SQLSTATE, or class 08.
  EXPECT_EQ(
      ReplicaReadRetry(absl::UnavailableError("server closed the connection unexpectedly"), read),
      ReadRetryReason::kConnectionLost);
  EXPECT_EQ(ReplicaReadRetry(absl::UnavailableError("connection lost"), read),
            ReadRetryReason::kConnectionLost);
  EXPECT_EQ(ReplicaReadRetry(db::StatusFromSqlState("08006", "connection failure"), read),
            ReadRetryReason::kConnectionLost);
  // The server ended the session: shutdown, crash, pg_terminate_backend.
  for (const char* state : {"57P01", "57P02", "57P03"}) {
    absl::Status s = db::StatusFromSqlState(state, "terminating connection");
    ASSERT_EQ(s.code(), absl::StatusCode::kUnavailable) << state;
    EXPECT_EQ(ReplicaReadRetry(s, read), ReadRetryReason::kServerShutdown) << state;
  }
  // No connection could be had (refused: the member is down).
  ReadAttempt refused = read;
  refused.no_connection = true;
  EXPECT_EQ(
      ReplicaReadRetry(absl::UnavailableError("database connection failed: refused"), refused),
      ReadRetryReason::kConnectFailed);
  EXPECT_EQ(ReplicaReadRetry(db::StatusFromSqlState("57P03", "the database system is starting up"),
                             refused),
            ReadRetryReason::kServerShutdown);
  // Up to the bound of runs elsewhere.
  ReadAttempt again = read;
  again.retries = kMaxReplicaReadRetries - 1;
  EXPECT_EQ(ReplicaReadRetry(absl::UnavailableError("connection lost"), again),
            ReadRetryReason::kConnectionLost);
  // Given up on by routing because its member was found unhealthy.
  ReadAttempt given_up = read;
  given_up.abandoned = true;
  EXPECT_EQ(
      ReplicaReadRetry(absl::UnavailableError("connection to the database given up"), given_up),
      ReadRetryReason::kMemberUnhealthy);
  EXPECT_STREQ(ReadRetryReasonName(ReadRetryReason::kMemberUnhealthy), "member_unhealthy");
  EXPECT_STREQ(ReadRetryReasonName(ReadRetryReason::kConnectionLost), "connection_lost");
  EXPECT_STREQ(ReadRetryReasonName(ReadRetryReason::kServerShutdown), "server_shutdown");
  EXPECT_STREQ(ReadRetryReasonName(ReadRetryReason::kConnectFailed), "connect_failed");
  EXPECT_STREQ(ReadRetryReasonName(ReadRetryReason::kNone), "");
}

TEST(ReplicaReadRetryTest, SqlErrorsAndOtherCodesNeverRunAgain) {
  const ReadAttempt read = PlainReplicaRead();
  // The statement's own failures, whatever their code.
  for (const char* state :
       {"42601", "42501", "25006", "22012", "57014", "40001", "53300", "53200", "XX000", "0A000"}) {
    absl::Status s = db::StatusFromSqlState(state, "error");
    EXPECT_EQ(ReplicaReadRetry(s, read), ReadRetryReason::kNone) << state << ": " << s;
  }
  // UNAVAILABLE that no failed connection caused: the service shutting
  // down, a pool closed under the call.
  ReadAttempt no_connection_failed = read;
  no_connection_failed.connection_failed = false;
  for (const absl::Status& s : {absl::UnavailableError("the query service is shutting down"),
                                absl::UnavailableError("the pool is closed")}) {
    EXPECT_EQ(ReplicaReadRetry(s, no_connection_failed), ReadRetryReason::kNone) << s;
  }
  // Out of time, cancelled, refused by limits, or not the database's doing.
  for (const absl::Status& s :
       {absl::DeadlineExceededError("no connection became free"),
        absl::CancelledError("the caller went away"), absl::ResourceExhaustedError("max_rows"),
        absl::InternalError("bad"), absl::InvalidArgumentError("sql is empty"),
        absl::FailedPreconditionError("read-only")}) {
    EXPECT_EQ(ReplicaReadRetry(s, read), ReadRetryReason::kNone) << s;
  }
}

TEST(ReplicaReadRetryTest, OnlyPlainReadsOnAReplicaWithinTheirDeadline) {
  const absl::Status lost = absl::UnavailableError("server closed the connection unexpectedly");
  ASSERT_NE(ReplicaReadRetry(lost, PlainReplicaRead()), ReadRetryReason::kNone);
  ReadAttempt a = PlainReplicaRead();
  a.on_replica = false;  // on the primary (a write, or a read that fell back)
  EXPECT_EQ(ReplicaReadRetry(lost, a), ReadRetryReason::kNone);
  a = PlainReplicaRead();
  a.plain_read = false;  // a read-only transaction, or anything that may write
  EXPECT_EQ(ReplicaReadRetry(lost, a), ReadRetryReason::kNone);
  a = PlainReplicaRead();
  a.past_deadline = true;
  EXPECT_EQ(ReplicaReadRetry(lost, a), ReadRetryReason::kNone);
  a = PlainReplicaRead();
  a.cancelled = true;
  EXPECT_EQ(ReplicaReadRetry(lost, a), ReadRetryReason::kNone);
  a = PlainReplicaRead();
  a.stopping = true;
  EXPECT_EQ(ReplicaReadRetry(lost, a), ReadRetryReason::kNone);
  a = PlainReplicaRead();
  a.retries = kMaxReplicaReadRetries;
  EXPECT_EQ(ReplicaReadRetry(lost, a), ReadRetryReason::kNone);
  EXPECT_EQ(ReplicaReadRetry(absl::OkStatus(), PlainReplicaRead()), ReadRetryReason::kNone);
}

}  // namespace
}  // namespace poolside::query
