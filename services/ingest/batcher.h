#ifndef POOLSIDE_SERVICES_INGEST_BATCHER_H_
#define POOLSIDE_SERVICES_INGEST_BATCHER_H_

// Groups accepted write requests into batches, one open batch per group
// (database, database role, table, column list), and seals a batch when it reaches a row
// count, a byte size or its linger time. A request is never split: a batch may
// pass max_rows/max_bytes by at most one request, so that each request's rows
// (and its idempotency key) commit in exactly one transaction.
//
//   Batcher batcher({.max_rows = 10000, .max_bytes = 4 << 20,
//                    .linger = absl::Milliseconds(10)});
//   std::vector<Batch> sealed;
//   batcher.Add(write, absl::Now(), &sealed);          // may seal one
//   absl::Time next = batcher.SealExpired(absl::Now(), &sealed);
//
// Thread-compatible (the engine calls it under its lock).

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/telemetry/trace_context.h"
#include "proto/poolside/v1/ingest.pb.h"

namespace poolside::ingest {

// Why a batch was flushed (GetStats' flushes_by_reason).
enum class FlushReason { kRows, kBytes, kLinger, kDrain };
const char* FlushReasonName(FlushReason reason);

// One accepted request, its rows already validated and encoded as COPY lines.
struct PendingWrite {
  using Done = std::function<void(absl::StatusOr<v1::WriteResponse>)>;

  uint64_t id = 0;
  std::string database;
  // The table as configured (and requested).
  std::string table;
  // The database role (DatabaseConfig.roles) its rows are written as;
  // empty: the database DSN's own user.
  std::string role;
  // Requests with equal groups (database, table, columns) and equal roles
  // share batches; rows of different roles never share a COPY or a
  // transaction.
  std::string group;
  // "<table> (<columns>)" for COPY.
  std::string copy_target;
  // `data` is in COPY's binary format, not text (part of `group`: a COPY
  // carries one format).
  bool binary = false;
  // Empty: no idempotency key. A key belongs to the principal that sent it
  // (empty without authentication) within its database, and names one
  // request: `digest` identifies its content (table, columns, rows).
  std::string key;
  std::string principal;
  std::string digest;
  // Rows in the request (written, rejected before COPY or by PostgreSQL).
  uint32_t total_rows = 0;
  // The COPY lines (binary: tuples) of the rows that passed validation ...
  std::string data;
  // ... where each one ends (offset past its newline) ...
  std::vector<uint32_t> line_ends;
  // ... and which row of the request it is.
  std::vector<uint32_t> row_index;
  // Rows refused before COPY, and what their answers take in memory (a
  // reason tens of bytes long for a row that may have taken two on the wire).
  std::vector<v1::RowError> rejected;
  size_t rejected_bytes = 0;
  Done done;
  // The span of the call that sent it; its batch's flush span links to it.
  telemetry::SpanContext trace;

  size_t lines() const { return line_ends.size(); }
  // What the request holds against the buffer bound (allocated, not just
  // used; constant once the request is prepared).
  size_t bytes() const { return data.capacity() + 8 * line_ends.capacity() + rejected_bytes + 64; }
};

struct Batch {
  std::string database;
  std::string role;   // as PendingWrite::role, the same for every write
  std::string group;  // as PendingWrite::group, likewise
  std::string copy_target;
  bool binary = false;  // as PendingWrite::binary, the same for every write
  std::vector<std::shared_ptr<PendingWrite>> writes;
  size_t lines = 0;
  size_t bytes = 0;
  FlushReason reason = FlushReason::kLinger;
  // Sealed batches joined to this one while it waited for a connection
  // (Batcher::Join).
  size_t joined = 0;
};

struct BatcherOptions {
  size_t max_rows = 10000;
  size_t max_bytes = 4 << 20;
  absl::Duration linger = absl::Milliseconds(10);
};

class Batcher {
 public:
  explicit Batcher(BatcherOptions options) : options_(options) {}

  // Adds `write` to its group's open batch (opening one at `now`); appends the
  // batch to `sealed` if it is now full.
  void Add(std::shared_ptr<PendingWrite> write, absl::Time now, std::vector<Batch>* sealed);

  // Seals every batch opened at least `linger` before `now`. Returns when the
  // next open batch will be due (InfiniteFuture if none is open).
  absl::Time SealExpired(absl::Time now, std::vector<Batch>* sealed);

  // Seals every open batch (shutdown).
  void SealAll(std::vector<Batch>* sealed);

  // Moves `from`'s writes to the end of `into` if both are of one role and
  // group (database, COPY target and format) and the two together stay
  // within max_rows and max_bytes; returns whether it did. The engine joins
  // sealed batches that queued behind busy COPY connections, so that a
  // stream too fast for its connections commits fewer, larger transactions
  // (each commit costs PostgreSQL a WAL flush) without holding back rows
  // when a connection is free.
  bool Join(Batch* into, Batch& from) const;

  size_t open_batches() const { return open_.size(); }

 private:
  struct Open {
    Batch batch;
    absl::Time opened;
  };
  const BatcherOptions options_;
  // By role and group.
  absl::flat_hash_map<std::pair<std::string, std::string>, Open> open_;
};

}  // namespace poolside::ingest

#endif  // POOLSIDE_SERVICES_INGEST_BATCHER_H_
