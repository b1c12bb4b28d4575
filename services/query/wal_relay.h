#ifndef POOLSIDE_SERVICES_QUERY_WAL_RELAY_H_
#define POOLSIDE_SERVICES_QUERY_WAL_RELAY_H_

// WalRelay: for one database, makes sure exactly one query replica reads the
// cache's invalidations from the WAL, and has it relay them to every replica.
// Every replica runs one WalRelay per database in "wal" mode (read_cache.h);
// the design and its reasons are in docs/cache.md.
//
// - Election: on a connection of its own (the DSN's user), each WalRelay
//   tries pg_try_advisory_lock(LockKey()) every election_retry; the one that
//   gets it is the holder. A session lock dies with its session: a holder
//   that is killed (SIGKILL, a lost connection, pg_terminate_backend) is
//   replaced within about election_retry. The election, the lock session
//   and the stream follow the primary when the database has replicas
//   (Options::current_dsn).
// - The holder opens a LogicalStream (common/db/logical_stream.h): a
//   temporary slot, so a dead holder pins no WAL, on the publication
//   `publication`, created or extended with the configured tables that have
//   a replica identity (others are left out and logged: publishing them
//   would make UPDATE and DELETE fail for every writer), with logical
//   decoding messages (for fences, below).
// - It relays what it decodes as NOTIFY payloads on `channel`, sent from its
//   lock session (relay_message.h): a hello once the stream started (its
//   consistent point: what committed before was not decoded, so every
//   replica flushes the database's entries), then batches of changes, one
//   transaction per batch: at most one per `batch` (a change after a quiet
//   spell goes at once, under load changes gather for `batch`), each saying
//   up to which LSN every commit has been relayed, and a heartbeat after
//   `heartbeat` without one. A change
//   of a row of a table whose replica identity is its primary key becomes
//   that row's key hash (row_keys.h); TRUNCATE, a change whose key is not
//   known (another replica identity, an unchanged out-of-line key) or more
//   than max_rows_per_table rows of one table in a batch, the whole table;
//   a Relation message (DDL), the table's definition. A batch also names
//   its transactions (at most kMaxRelayXids; relay_message.h), so that a
//   replica can tell the changes its own writes invalidated already. Once a
//   batch's NOTIFY committed, the stream confirms its position (the slot
//   frees WAL).
// - Fences (token_fence.h): a read waiting for a consistency token that no
//   commit to a published table covers has its replica commit a
//   transaction holding a transactional logical decoding message with
//   FencePrefix(). When the holder decodes the commit of such a
//   transaction it relays the position past it within `batch` (with the
//   pending batch, or as a heartbeat) instead of at the next heartbeat.
//   Other prefixes, non-transactional and rolled-back messages are no
//   fences.
// - DDL: a Relation message comes only before a table's next change, and
//   views, policies and grants change what a statement reads without one.
//   So the holder installs (when its user may: a superuser) an event trigger
//   on ddl_command_end, EnsureDdlTrigger, whose function emits a
//   transactional message with kDdlPrefix for every DDL command but those
//   that cannot change a result (indexes, statistics, comments) or touch
//   only temporary objects. Its commit is relayed as kRelayAllTables
//   (relay_message.h): every replica drops the database's entries and
//   forgets its learned plans. Anyone may emit such a message: it can only
//   invalidate more. Anyone may emit fence messages: the relay sends at most once
//   per `batch` whatever it decodes, as often as a steady write load makes
//   it. The relay's own NOTIFY transactions hold no message and change no
//   published table, so they are never decoded and cannot feed it.
// - A batch is relayed only once its transactions are visible to new
//   snapshots: PostgreSQL flushes a commit record (so it can be decoded)
//   before the committing backend leaves the proc array, and a replica that
//   invalidated and then read in that gap would cache the old row. The
//   NOTIFY statement checks it (pg_visible_in_snapshot) and is retried
//   until it holds; a transaction invisible for 20 s ends the term.
// - Writers run nothing: NOTIFY's cluster-wide commit lock is taken by the
//   holder's own transactions only.
// - Anything failing (the stream, the lock session) ends the term: the
//   holder says so (kDown) if it still can, closes the stream (the server
//   drops the slot) and the session (releasing the lock), and runs for
//   election again.
//
// Thread-safe. One thread of its own, joined by the destructor (which ends a
// term the same way).

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/db/connection.h"
#include "common/db/logical_stream.h"
#include "services/query/relay_message.h"

namespace poolside::query {

// wal_level of the server `conn` is connected to is "logical".
absl::StatusOr<bool> WalLevelIsLogical(db::Connection& conn, absl::Time deadline);

// Why `table` (as SQL names it) cannot be published for the cache: it does
// not exist, is not a plain table, or has no replica identity (publishing it
// would make its UPDATE and DELETE fail for every writer). Empty: it can.
std::string WhyNotPublishable(db::Connection& conn, const std::string& table, absl::Time deadline);

// Adds those of `tables` (SQL names) that can be published and are not yet
// to the existing publication `publication` (a replica not holding the slot
// does this for its own cached tables; the holder's stream decodes their
// changes from then on). OK when the publication does not exist yet (the
// holder creates it). Errors: the server's (e.g. PERMISSION_DENIED when the
// DSN's user does not own the table).
absl::Status PublishTables(db::Connection& conn, const std::string& publication,
                           const std::vector<std::string>& tables, absl::Time deadline);

class WalRelay {
 public:
  struct Options {
    std::string database;  // the configured name, for logs
    std::string dsn;
    // Where the primary is now (a database with replicas: the topology's
    // primary, Database::AdminDsn), asked before each election and every
    // kStopCheck while holding; unset: `dsn`. Thread-safe, must not block
    // for long. A holder whose server is no longer the answer ends its term
    // (kDown: replicas bypass until the next stream's hello flushes them)
    // and runs for election where the primary is now: logical decoding,
    // LISTEN and NOTIFY work on a primary only, and slots do not move with
    // it.
    std::function<absl::StatusOr<std::string>()> current_dsn;
    std::string channel;
    std::string publication;
    std::vector<std::string> tables;  // as configured (SQL names)
    absl::Duration batch = absl::Milliseconds(2);
    absl::Duration heartbeat = absl::Milliseconds(200);
    absl::Duration election_retry = absl::Seconds(1);
    // Decoding more than this behind the server's WAL: batches say lagging.
    absl::Duration max_lag = absl::Seconds(1);
    size_t max_rows_per_table = 256;
    absl::Duration connect_timeout = absl::Seconds(5);
  };
  struct Stats {
    bool holder = false;
    uint64_t stream = 0;       // the holder id of the current term, 0 when not holding
    uint64_t terms = 0;        // times this replica became the holder
    uint64_t relayed_lsn = 0;  // `through` of the last payload sent
    absl::Duration lag;        // how far decoding trails the server (holder)
    uint64_t batches = 0, payloads = 0, rows = 0, tables = 0;
    // Times a batch was held back (and tried again) because its transactions
    // were not visible yet.
    uint64_t visibility_retries = 0;
    // Fence transactions decoded, and messages sent carrying a fence's
    // position (several fences may share one).
    uint64_t fences = 0, fence_relays = 0;
    // Committed DDL decoded (kDdlPrefix messages; a transaction counts once).
    uint64_t ddl = 0;
    // The DDL event trigger is installed (this term's check found it or made
    // it); false when the server's user may not create it (not a superuser).
    bool ddl_trigger = false;
    std::vector<std::string> published, excluded;
    std::string last_error;
  };
  // Runs on the relay's thread when the server cannot decode the WAL
  // (wal_level is not logical): the term is over, and the relay tries again
  // later (someone may change the setting and restart the server).
  using OnUnavailable = std::function<void(const absl::Status&)>;

  WalRelay(Options options, OnUnavailable on_unavailable);
  ~WalRelay();
  WalRelay(const WalRelay&) = delete;
  WalRelay& operator=(const WalRelay&) = delete;

  void Start();
  Stats GetStats() const;

  // The advisory lock key of a publication and channel: replicas configured
  // alike elect one holder per database (session advisory locks are per
  // database already).
  static int64_t LockKey(absl::string_view publication, absl::string_view channel);
  // The prefix of the logical decoding messages that fence a consistency
  // token (token_fence.h) for relays of this publication and channel.
  static std::string FencePrefix(absl::string_view publication, absl::string_view channel);
  // The prefix of the DDL event trigger's messages (one for every relay of
  // the database: any of them flushes).
  static constexpr char kDdlPrefix[] = "poolside-ddl";
  // Makes sure the DDL event trigger (see the file comment) is installed and
  // up to date on `conn`'s database: the function poolside.cache_ddl_message()
  // and the event trigger poolside_cache_ddl. True when it is installed and
  // enabled; false (nothing changed) when it is not and `conn`'s user may not
  // create it, or someone disabled it. Errors: the server's.
  static absl::StatusOr<bool> EnsureDdlTrigger(db::Connection& conn, absl::Time deadline);

 private:
  struct PendingTable {
    bool whole = false;
    bool definition = false;
    absl::flat_hash_set<uint64_t> rows;
  };
  using Pending = absl::btree_map<std::string, PendingTable>;
  // What was decoded and is not relayed yet.
  struct Batch {
    Pending tables;
    int64_t oldest_commit = 0;   // PostgreSQL micros of its oldest commit, 0 none
    std::vector<uint32_t> xids;  // the transactions whose changes are in `tables`
    // False once a change came outside a transaction (not expected from
    // pgoutput): then `xids` may miss one, and the batch names none.
    bool xids_complete = true;
    bool fence = false;  // a fence's transaction committed: relay soon
    bool due() const { return !tables.empty() || fence; }
  };
  // The transaction being decoded.
  struct Transaction {
    bool open = false;
    uint32_t xid = 0;
    int64_t commit_micros = 0;
    bool in_batch = false;  // its xid and commit time are in the current batch
    bool fence = false;     // it carries a fence message
    bool ddl = false;       // it carries a DDL message (kDdlPrefix)
  };

  void Run();
  // One term as the holder on `session` (connected to `dsn`), which holds
  // the lock; returns why it ended.
  absl::Status Hold(db::Connection& session, const std::string& dsn);
  // Where to connect now: current_dsn() or `dsn`.
  absl::StatusOr<std::string> CurrentDsn() const;
  // The configured tables that can be published (they have a replica
  // identity), as SQL names them; records the others.
  std::vector<std::string> PublishableTables(db::Connection& session);
  void Add(const db::LogicalEvent& event, Transaction* txn, Batch* batch);
  // NOTIFYs `payloads` in one transaction per statement, once every one of
  // `xids` is visible to a new snapshot; the server's WAL position read with
  // them. nullopt: some is not visible yet, nothing was sent.
  absl::StatusOr<std::optional<db::Lsn>> Notify(db::Connection& session,
                                                const std::vector<std::string>& payloads,
                                                const std::vector<uint32_t>& xids);
  bool Pause(absl::Duration d);  // false once stopping
  void SetError(const absl::Status& s);

  const Options options_;
  const std::string fence_prefix_;
  const OnUnavailable on_unavailable_;
  absl::Notification stopping_;
  std::thread thread_;

  mutable absl::Mutex mu_;
  Stats stats_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> warned_ ABSL_GUARDED_BY(mu_);
  bool warned_ddl_ ABSL_GUARDED_BY(mu_) = false;  // the DDL trigger's absence logged
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_WAL_RELAY_H_
