#ifndef POOLSIDE_SERVICES_QUERY_TOKEN_FENCE_H_
#define POOLSIDE_SERVICES_QUERY_TOKEN_FENCE_H_

// TokenFence: for one database, brings the WAL relay (wal_relay.h) to a
// read's consistency token (min_lsn) when nothing else would soon.
//
// A read whose token lies beyond the position this replica has applied waits
// for the relay (read_cache.h), and the relay speaks when its holder decodes
// a commit to a published table, or at its heartbeat. A token past the last
// such commit (the caller wrote an uncached table; other sessions wrote WAL
// between the caller's commit and the position read after it) would wait for
// the heartbeat. A fence is a transaction of the replica's own on the
// primary that emits a transactional logical decoding message,
// pg_logical_emit_message(true, WalRelay::FencePrefix(...), ''): it starts
// after the token was issued, so its commit record lies past the token in the
// WAL and is decoded after every commit before it; the holder relays a
// position past that commit within a batch interval (wal_relay.h), and every
// replica's applied LSN passes the token.
//
//   TokenFence fence({.database = "app", .dsn = ..., .prefix = ...});
//   fence.Start();
//   fence.Request(min_lsn);   // a read is waiting for min_lsn
//
// - Requests coalesce: one fence runs at a time; a request at or below the
//   position of a fence that already committed needs none; requests that
//   arrive while one runs are judged by its position when it ends (a second
//   fence runs only for those beyond it). A token past the server's WAL
//   (made up, or from another server) is never covered: its request costs
//   one fence, and its read waits and bypasses the cache as without fences.
// - The fence commits with synchronous_commit = local: flushed at once
//   (decoding reads flushed WAL only, and flushing it also flushes the
//   token's commit on a server running with synchronous_commit = off), and
//   without waiting for synchronous standbys (it carries no data).
// - It runs on a connection of its own, as the DSN's user (like the relay's
//   sessions), on the primary: with `current_dsn` set (a database with
//   replicas: the topology's primary, Database::AdminDsn), each fence asks
//   it where that is and opens its connection anew when the answer changed
//   (a switchover or failover), so fences follow the primary; a fence while
//   none is known fails like any other. pg_logical_emit_message is
//   executable by PUBLIC on
//   PostgreSQL 15. A failure (the server down, the function revoked, a hot
//   standby behind the DSN) is counted and logged once per streak; the
//   connection is opened again at the next request after a backoff. A read
//   whose fence failed waits as without fences (up to tokenWaitMs, then
//   the database): never a stale hit.
//
// Thread-safe. One thread of its own, joined by the destructor.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/db/connection.h"

namespace poolside::query {

class TokenFence {
 public:
  struct Options {
    std::string database;  // the configured name, for logs
    std::string dsn;
    // Where the primary is now, asked before each fence; unset: `dsn`.
    // Thread-safe, and must not block for long.
    std::function<absl::StatusOr<std::string>()> current_dsn;
    std::string prefix;  // WalRelay::FencePrefix of the database's relay
    absl::Duration connect_timeout = absl::Seconds(5);
    absl::Duration timeout = absl::Seconds(5);  // bounds one fence
  };
  struct Stats {
    uint64_t fences = 0;  // committed
    uint64_t failures = 0;
    uint64_t fenced_lsn = 0;  // the last committed fence's message position
    std::string last_error;
  };

  explicit TokenFence(Options options);
  ~TokenFence();
  TokenFence(const TokenFence&) = delete;
  TokenFence& operator=(const TokenFence&) = delete;

  void Start();
  // A read waits for the relay to reach `lsn`. Never blocks.
  void Request(uint64_t lsn);
  Stats GetStats() const;

 private:
  void Run();
  // Runs one fence; the position of its message.
  // Opens the fence thread's connection unless it has a working one.
  absl::Status Connect();
  absl::StatusOr<uint64_t> Emit();

  const Options options_;
  mutable absl::Mutex mu_;
  // The highest token requested since the last fence began, 0 none.
  uint64_t wanted_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  Stats stats_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<db::Connection> conn_;  // the fence thread's
  std::string conn_dsn_;                  // the DSN conn_ was opened with
  std::thread thread_;
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_TOKEN_FENCE_H_
