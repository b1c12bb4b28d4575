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
#include "absl/container/flat_hash_set.h"
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
  telemetry::Histogram::Snapshot delay;  // commit -> applied here
  WalRelay::Stats relay;
  TokenFence::Stats fence;
  std::vector<std::string> watched;
  std::string note;  // why not "wal", leftover triggers, ...
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
