#ifndef POOLSIDE_SERVICES_QUERY_INVALIDATION_STATE_H_
#define POOLSIDE_SERVICES_QUERY_INVALIDATION_STATE_H_

// One database's invalidation state (invalidation.h keeps one per database):
// how its cache learns of writes, whether its reads may use the cache now,
// and up to which WAL position every commit has been invalidated here.
// Written by the database's listener (and by writes through this replica:
// own_writes, MarkSuspect), read by every cached read.
//
// Thread-safe: atomics, and a lock each for the watched set and the note;
// the fields marked "listener thread only" belong to the listener.

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/telemetry/histogram.h"
#include "services/query/cache_bypass.h"
#include "services/query/database.h"
#include "services/query/token_fence.h"
#include "services/query/wal_relay.h"

namespace poolside::query {

// How a database's cache learns of writes (cache.invalidation, and
// cache.walUnavailable where the server has no logical decoding).
enum class InvalidationMode { kWal, kTrigger, kOff };
// "wal", "trigger", "off".
const char* InvalidationModeName(InvalidationMode mode);

// How one database's cache learns of writes, for stats and the status page.
struct InvalidationStatus {
  std::string database;
  std::string mode;  // "wal", "trigger", or "off" (walUnavailable: bypass)
  bool ready = false;
  bool subscribed = false;
  // "wal":
  bool holder = false;  // this replica holds the slot
  uint64_t stream = 0;  // the stream whose messages are applied, 0 none
  uint64_t applied_lsn = 0;
  absl::Duration since_heard = absl::InfiniteDuration();
  bool lagging = false;
  uint64_t streams_seen = 0;  // new streams applied (each flushed the database)
  uint64_t relay_messages = 0;
  // Relayed table changes not applied: writes through this replica had
  // invalidated them already (OwnWriteCover).
  uint64_t own_write_skips = 0;
  telemetry::Histogram::Snapshot delay;  // commit -> applied here
  WalRelay::Stats relay;
  TokenFence::Stats fence;
  std::vector<std::string> watched;
  std::string note;  // why not "wal", leftover triggers, ...
};

// A snapshot as pg_current_snapshot() prints it ("xmin:xmax:xip,..."): which
// transactions had finished when it was taken.
struct XidSnapshot {
  // More transactions running than this: only those before xmin count as
  // finished (the snapshot is kept as if xmax were xmin).
  static constexpr size_t kMaxRunning = 256;

  uint64_t xmin = 0;
  uint64_t xmax = 0;
  std::vector<uint64_t> xip;  // sorted

  // INVALID_ARGUMENT unless `text` is a snapshot.
  static absl::StatusOr<XidSnapshot> Parse(absl::string_view text);
  // Whether the transaction `xid` (its low 32 bits, as logical decoding
  // names it) had finished when the snapshot was taken. For a transaction
  // known to have committed (the WAL relay names only those): it was
  // visible to this snapshot and to every one taken after it. Valid for
  // transactions within 2^31 of xmax (PostgreSQL keeps live ones closer).
  bool Finished(uint32_t xid) const;
};

// What writes through this replica invalidated themselves (ReadCache::
// AfterWrite): for each table, a snapshot taken after such a write committed,
// recorded once its invalidation of the table was applied by the near cache
// and confirmed by the sidecar. An entry of the table that outlived that
// invalidation was looked up after it, so read from a
// snapshot later than the recorded one: a relayed change of the table whose
// every transaction had finished in the recorded snapshot is in every such
// entry already, and need not drop them again (docs/cache.md, "A replica's
// own writes"). A record counts only for messages of the stream that was
// applied when it was made: transaction ids mean nothing across servers (a
// failover's new primary may hand out again ids the old one used). Bounded:
// at most max_tables tables (the least recently recorded go first), each
// record good for max_age.
//
// Thread-safe.
class OwnWriteCover {
 public:
  struct Options {
    size_t max_tables = 256;
    absl::Duration max_age = absl::Seconds(60);
  };
  // The key of a write that invalidated every table of the database.
  static constexpr absl::string_view kEveryTable = "";

  OwnWriteCover() : OwnWriteCover(Options{}) {}
  explicit OwnWriteCover(Options options) : options_(options) {}

  // Once the invalidation of `tables` ("schema.table", or kEveryTable) is
  // applied everywhere (never before: a change skipped while the sidecar
  // still held an entry it should drop would leave that entry behind the
  // applied position); `snapshot` was taken after the write committed, while `stream`
  // (DatabaseInvalidation::stream; 0: none, nothing is recorded) was
  // applied. A table keeps the later of its records of one stream (by xmax).
  void Record(const std::vector<std::string>& tables, const XidSnapshot& snapshot, uint64_t stream,
              absl::Time now);
  // Whether every one of `xids` (none: false) had finished in a snapshot
  // recorded for `table` or for kEveryTable, with `stream`, no longer than
  // max_age ago.
  bool Covers(absl::string_view table, const std::vector<uint32_t>& xids, uint64_t stream,
              absl::Time now) const;
  size_t size() const;

 private:
  struct Recorded {
    std::shared_ptr<const XidSnapshot> snapshot;
    uint64_t stream = 0;
    absl::Time at;
  };
  bool CoveredBy(absl::string_view key, const std::vector<uint32_t>& xids, uint64_t stream,
                 absl::Time now) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const Options options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Recorded> tables_ ABSL_GUARDED_BY(mu_);
};

struct DatabaseInvalidation {
  Database* db = nullptr;
  std::vector<std::string> tables;  // configured
  bool listens = false;
  std::atomic<InvalidationMode> mode{InvalidationMode::kWal};
  // Set when `mode` changed: the listener subscribes again in the new mode.
  std::atomic<bool> mode_changed{false};
  // "schema.table" of the configured tables whose writes are seen (trigger
  // installed, or published): only reads of these tables alone are cached,
  // since a write to any other table (by a client outside poolside) would
  // never invalidate them.
  absl::Mutex watched_mu;
  absl::flat_hash_set<std::string> watched ABSL_GUARDED_BY(watched_mu);
  std::atomic<bool> subscribed{false};
  // Reads use the cache while flushed_epoch == suspect_epoch: every event
  // that may have left stale entries (start, a lost invalidation, a new
  // stream) raises suspect_epoch, and a confirmed flush of the database
  // catches up.
  std::atomic<uint64_t> suspect_epoch{1};
  std::atomic<uint64_t> flushed_epoch{0};
  // Writes through this replica so far (AfterWrite): a read does not join a
  // flight that began before the last of them.
  std::atomic<uint64_t> own_writes{0};
  // What they invalidated, and when ("wal" mode skips relayed changes it
  // covers); and the relayed table changes skipped for it.
  OwnWriteCover own_cover;
  std::atomic<uint64_t> own_write_skips{0};

  // "wal" mode.
  std::unique_ptr<WalRelay> relay;
  std::unique_ptr<TokenFence> token_fence;
  // The stream whose messages are applied; 0 when none is.
  std::atomic<uint64_t> stream{0};
  // Every commit before it has been invalidated in the near cache and the
  // sidecar (or was committed before their last flush).
  std::atomic<uint64_t> applied_lsn{0};
  // The fence of fills read from a replica (ReplicaFillFence): every
  // invalidation this replica has applied or is applying is for a commit at
  // or before fence_lsn, except while fence_opened > fence_closed (an
  // invalidation or flush of unknown position since). Both are raised
  // before the invalidation is sent, so a fill whose lookup saw it reads
  // them raised.
  std::atomic<uint64_t> fence_lsn{0};
  std::atomic<uint64_t> fence_opened{0}, fence_closed{0};
  std::atomic<int64_t> last_heard_micros{0};  // unix micros, the holder's last message
  std::atomic<bool> lagging{false};
  std::atomic<uint64_t> streams_seen{0}, relay_messages{0};
  telemetry::Histogram delay;
  // Listener thread only.
  bool fresh = false;  // subscribed and flushed, no stream applied since
  int holder_pid = 0;
  absl::Time holder_checked = absl::InfinitePast();
  absl::Time published_at = absl::InfinitePast();

  absl::Mutex note_mu;
  std::string note ABSL_GUARDED_BY(note_mu);

  // Whether writes to every one of `tables` are seen.
  bool Watches(const std::vector<std::string>& tables);
  void SetNote(std::string n);

  // Why reads of the database bypass the cache now, if they do: its
  // invalidation is off; it listens but is not subscribed; in "wal" mode no
  // stream is applied, the holder has been silent for longer than `max_lag`,
  // or lags; a flush is pending.
  std::optional<CacheBypass> NotReady(absl::Duration max_lag) const;
  // What a replica must have replayed for a fill read from it to be stored
  // (UINT64_MAX: none may; the primary reads).
  uint64_t ReplicaFillFence() const;
  // Something may have left stale entries: reads bypass until a flush that
  // begins from now on is confirmed.
  void MarkSuspect() { suspect_epoch.fetch_add(1); }
  // A flush begun when suspect_epoch was `epoch` was confirmed.
  void Flushed(uint64_t epoch);
  // What the status page and metrics show (`max_lag` as for NotReady).
  InvalidationStatus Status(absl::string_view name, absl::Duration max_lag);
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_INVALIDATION_STATE_H_
