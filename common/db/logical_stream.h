#ifndef POOLSIDE_COMMON_DB_LOGICAL_STREAM_H_
#define POOLSIDE_COMMON_DB_LOGICAL_STREAM_H_

// The committed changes to a set of tables, read from PostgreSQL's WAL by
// logical decoding with the built-in `pgoutput` plugin: nothing runs inside
// the writers' transactions. The foundation of the cache's invalidation.
//
//   LogicalStreamOptions o;
//   o.dsn = "host=... dbname=app";
//   o.publication = "poolside_cache";
//   o.tables = {"accounts", "app.orders"};
//   absl::StatusOr<std::unique_ptr<LogicalStream>> s = LogicalStream::Open(o);
//   while (true) {
//     absl::StatusOr<std::optional<LogicalEvent>> e =
//         (*s)->Next(absl::Now() + absl::Milliseconds(100));
//     if (!e.ok()) { /* flush the cache, Open again */ }
//     if (!e->has_value()) continue;               // nothing before the deadline
//     if (auto* c = std::get_if<ChangeEvent>(&**e)) { /* invalidate c's row */ }
//     if (auto* c = std::get_if<CommitEvent>(&**e)) (*s)->Confirm(c->end_lsn);
//   }
//
// Design notes
//
// Why a temporary slot (the default). A logical replication slot keeps every
// WAL segment from its restart point on (and old catalog rows) until its
// consumer confirms it has processed them; a permanent slot whose consumer
// died pins WAL without bound, until the primary's disk fills. A temporary
// slot belongs to its replication connection: the server drops it when the
// connection ends for any reason (consumer crash or SIGKILL, network loss,
// pg_terminate_backend, server restart), so a dead consumer never pins WAL.
// The price is that changes committed while no stream is connected are never
// delivered, which a cache can afford: it starts empty with each stream.
// `temporary_slot = false` keeps a named slot across connections (the stream
// resumes after the last confirmed position); then whoever runs it owns the
// slot's hygiene (max_slot_wal_keep_size, monitoring pg_replication_slots,
// pg_drop_replication_slot when retired).
//
// What the consumer must do when Next fails. Any error from Next (UNAVAILABLE
// when the connection is lost or the server ended the stream; DATA_LOSS when
// the server sent something this decoder cannot read) ends the stream for
// good: it returns that error from then on and the slot is gone. Changes may
// have been committed that it will never deliver, so every cached entry that
// depends on these tables is suspect: flush them (or bypass the cache) and
// Open a new stream; only reads that start after the new Open returned may
// fill the cache again.
//
// How LSNs relate to commits. pgoutput sends each transaction whole when it
// commits, in commit order, and only committed transactions that changed a
// published table (or, with `messages`, emitted a transactional message):
// Begin (final_lsn = the LSN of its commit record), its changes, Commit
// (commit_lsn = that same LSN; end_lsn = the end of the commit record). A
// writer that reads pg_current_wal_insert_lsn() after its COMMIT returns gets
// a position at or after its transaction's end_lsn (pg_current_wal_lsn() may
// lag it when synchronous_commit is off). Once the stream has delivered a
// Commit whose end_lsn is at least X, or delivered_lsn() is at least X, every
// transaction that committed before X (on these tables) has been delivered: X
// works as a consistency token. Transactions that committed before start_lsn()
// (the slot's consistent point) are not delivered.
// Confirm(end_lsn) once a transaction's effects are applied: the server may
// then free the WAL before it (see Confirm).
//
// The events (Begin, Commit, Change, Truncate, Relation, Message) and what
// each field means are described in pgoutput_decoder.h.
//
// Threading: Open, Next and the destructor are called by one thread (the
// stream's reader); Confirm may be called from any thread.

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/db/pgoutput_decoder.h"

struct pg_conn;  // libpq's PGconn (libpq-fe.h), kept out of this header

namespace poolside::db {

struct LogicalStreamOptions {
  // libpq keyword/value string or URI of the database. The stream connects
  // twice: a normal session for the checks and the publication (closed when
  // Open returns), and the replication connection (`replication=database` is
  // added). The role needs the REPLICATION attribute (or superuser), CREATE on
  // the database (to create the publication) and ownership of the tables
  // (to add them to it).
  std::string dsn;
  // The publication to read; created (publishing insert, update, delete and
  // truncate) if missing, extended with the tables it lacks otherwise. At most
  // 63 bytes.
  std::string publication;
  // The tables, as SQL names them: `accounts` (found on the search_path),
  // `app.orders`, `"Odd Name"`. Each must have a replica identity (a primary
  // key, REPLICA IDENTITY USING INDEX or FULL): in a publication that
  // publishes updates and deletes, PostgreSQL refuses UPDATE and DELETE on a
  // table without one, for every writer.
  std::vector<std::string> tables;
  // Publish tables without a replica identity anyway (Open refuses them
  // otherwise). Only for tables that are never updated or deleted from
  // (append-only): their UPDATE and DELETE fail from then on, for everyone.
  bool allow_tables_without_replica_identity = false;
  // The replication slot: lowercase letters, digits and underscores, at most
  // 63 bytes. Empty: "poolside_" and a random suffix (temporary slots only).
  std::string slot;
  // See the design notes above.
  bool temporary_slot = true;
  // Also deliver logical decoding messages (pg_logical_emit_message) as
  // MessageEvents: pgoutput's `messages` option, PostgreSQL 14 and later
  // (ignored before; see messages()). A transaction whose only content is a
  // transactional message is then delivered too (Begin, Message, Commit).
  bool messages = false;
  std::string application_name = "poolside-logical-stream";
  // Bounds each connection attempt.
  absl::Duration connect_timeout = absl::Seconds(5);
  // Bounds all of Open. Creating a slot waits for the transactions running at
  // that moment to end, so a long transaction elsewhere delays Open.
  absl::Duration open_timeout = absl::Seconds(30);
  // How often Next reports the confirmed position to the server (the server
  // frees WAL from it and ends a connection that stays silent for
  // wal_sender_timeout, 60 s by default).
  absl::Duration status_interval = absl::Seconds(1);
};

class LogicalStream {
 public:
  // Checks the server (wal_level = logical, replication slots and WAL senders
  // configured, the role may replicate), resolves the tables, creates or
  // extends the publication (safe against concurrent Opens), creates the slot
  // and starts streaming from its consistent point. Errors:
  //   INVALID_ARGUMENT    bad options; a name that is not a table
  //   NOT_FOUND           a table does not exist
  //   FAILED_PRECONDITION wal_level is not logical, or max_replication_slots /
  //                       max_wal_senders is 0 (each names the setting and the
  //                       fallback); a table without a replica identity; an
  //                       existing publication that does not publish every kind
  //                       of change; an existing slot of another kind
  //   PERMISSION_DENIED   the role may not replicate or not change the publication
  //   ALREADY_EXISTS      the temporary slot's name is taken
  //   ABORTED             the permanent slot is in use by another connection
  //   UNAVAILABLE         the server cannot be reached
  //   DEADLINE_EXCEEDED   open_timeout passed (the slot is not left behind)
  static absl::StatusOr<std::unique_ptr<LogicalStream>> Open(const LogicalStreamOptions& options);

  // Closes the connection; the server drops a temporary slot.
  ~LogicalStream();
  LogicalStream(const LogicalStream&) = delete;
  LogicalStream& operator=(const LogicalStream&) = delete;

  // The next event, or nullopt once `deadline` passes without one (an event
  // already received is returned even if the deadline has passed; Next never
  // waits past it). Events come as they arrive: a large transaction is never
  // held here whole. Along the way it answers the server's keepalives and
  // sends a status update at least every status_interval. Any error ends the
  // stream (see the design notes): UNAVAILABLE when the connection is lost or
  // the server ends the stream, DATA_LOSS for a message that cannot be
  // decoded, or the server's error translated as in error.h.
  absl::StatusOr<std::optional<LogicalEvent>> Next(absl::Time deadline);

  // The consumer has applied every transaction whose Commit end_lsn is at most
  // `lsn`. Reported to the server with the next status update, so the slot
  // stops holding the WAL before it. Positions beyond what Next delivered are
  // not reported. Thread-safe.
  void Confirm(Lsn lsn);

  const std::string& slot_name() const { return slot_; }
  // The slot's consistent point: where the stream starts.
  Lsn start_lsn() const { return start_lsn_; }
  // Every transaction on the published tables that committed before this
  // position has been returned by Next: the end_lsn of the last Commit
  // returned, or later when the server reports (keepalive) that it sent
  // everything up to a position between transactions. Reader thread only.
  Lsn delivered_lsn() const { return delivered_lsn_; }
  // The latest end of WAL the server reported; with delivered_lsn(), how far
  // the stream lags. Reader thread only.
  Lsn server_wal_end() const { return server_wal_end_; }
  // The server process serving the replication connection.
  int backend_pid() const { return backend_pid_; }
  // Whether messages are delivered (asked for, and the server can).
  bool messages() const { return messages_; }

 private:
  explicit LogicalStream(bool messages) : messages_(messages), decoder_(messages) {}

  absl::StatusOr<std::optional<LogicalEvent>> HandleMessage(absl::string_view copy_data);
  absl::Status SendStatus(absl::Time now);
  // The position reported as flushed: what the consumer confirmed, or the
  // delivered position when everything delivered is confirmed. Never moves
  // back.
  Lsn FlushToReport();
  absl::Status Fail(absl::Status status);
  absl::Status Lost(absl::string_view while_doing);

  ::pg_conn* conn_ = nullptr;
  absl::Status status_;  // the first error; sticky
  std::string slot_;
  bool temporary_ = true;
  int backend_pid_ = 0;
  absl::Duration status_interval_;
  const bool messages_;
  PgOutputDecoder decoder_;
  Lsn start_lsn_ = 0;
  Lsn delivered_lsn_ = 0;
  Lsn last_commit_end_ = 0;  // end_lsn of the last Commit returned
  Lsn server_wal_end_ = 0;
  Lsn reported_flush_ = 0;
  // When the next status update is due (InfinitePast: the server asked for one).
  absl::Time next_status_at_;
  std::atomic<Lsn> confirmed_{0};
};

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_LOGICAL_STREAM_H_
