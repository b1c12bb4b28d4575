#ifndef POOLSIDE_COMMON_DB_PGOUTPUT_DECODER_H_
#define POOLSIDE_COMMON_DB_PGOUTPUT_DECODER_H_

// Decoding of PostgreSQL's logical replication stream as the built-in
// `pgoutput` plugin sends it (protocol version 1), without any I/O: the
// replication protocol's CopyData framing (XLogData 'w', primary keepalive 'k')
// and the pgoutput messages inside XLogData (Begin, Commit, Origin, Relation,
// Type, Insert, Update, Delete, Truncate, and Message when the stream asks for
// logical decoding messages). LogicalStream (logical_stream.h)
// drives it over a replication connection; tests and the fuzzer feed it bytes.
//
//   PgOutputDecoder decoder;
//   absl::StatusOr<ReplicationMessage> m = ParseReplicationMessage(copy_data);
//   if (m.ok() && m->kind == ReplicationMessage::Kind::kXLogData) {
//     absl::StatusOr<std::optional<LogicalEvent>> e = decoder.Decode(m->payload);
//   }
//
// Every field is read with an explicit bounds check: bytes that do not form a
// well-formed message of the expected shape (truncated, a length running past
// the end, trailing bytes, an unknown message or tuple kind, a change to a
// relation never described, a change or transactional message outside a
// transaction) give DATA_LOSS naming the message and the problem, never a read
// out of bounds. Memory is bounded by one message (and a Message event's copy
// of its content) plus the relations' descriptions (at most kMaxRelations;
// more is RESOURCE_EXHAUSTED). Of a row only the replica identity ("key")
// columns are kept; other values are skipped unread.
//
// Thread-compatible: one decoder per stream, used by one thread at a time.
// Events share their RelationInfo (immutable once published) by shared_ptr, so
// events may be handed to other threads.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace poolside::db {

// A WAL position (XLogRecPtr). PostgreSQL prints it as two 32-bit hex halves.
using Lsn = uint64_t;

// "16/B374D848".
std::string FormatLsn(Lsn lsn);
// Reads "16/B374D848" (as printed by PostgreSQL); INVALID_ARGUMENT otherwise.
absl::StatusOr<Lsn> ParseLsn(absl::string_view text);

// PostgreSQL timestamps count microseconds from 2000-01-01 00:00 UTC.
absl::Time TimeFromPostgresMicros(int64_t micros);
int64_t PostgresMicrosFromTime(absl::Time time);

// What a Relation message says about a published table. Immutable once an
// event refers to it; a later Relation message for the same table makes a new
// RelationInfo (events already returned keep the old one).
struct RelationInfo {
  struct Column {
    std::string name;
    uint32_t type_oid = 0;
    int32_t type_modifier = -1;
    // Part of the replica identity: the primary key's columns (REPLICA
    // IDENTITY DEFAULT), the chosen unique index's (USING INDEX), or every
    // column (FULL).
    bool key = false;
  };

  uint32_t id = 0;     // the table's OID; stable until the table is dropped
  std::string schema;  // "" for pg_catalog, as pgoutput sends it
  std::string table;
  // pg_class.relreplident: 'd' default (primary key), 'i' index, 'f' full,
  // 'n' nothing. 'd' without a primary key and 'n' have no key columns.
  char replica_identity = 'd';
  // The published columns in table order (generated columns are not sent).
  std::vector<Column> columns;
  // Indexes into `columns` of the key columns, in table order. Empty: changes
  // to this table cannot be told apart by row (invalidate the whole table).
  std::vector<int> key_columns;

  std::vector<std::string> KeyColumnNames() const;
};

// One value of a key column as text (PostgreSQL's output function);
// nullopt is SQL NULL.
using KeyValue = std::optional<std::string>;

// The start of a committed transaction; its changes follow, then its Commit.
// pgoutput sends only committed transactions, whole and in commit order, and
// skips transactions that changed no published table.
struct BeginEvent {
  Lsn final_lsn = 0;  // the LSN of its commit record (= CommitEvent::commit_lsn)
  absl::Time commit_time;
  uint32_t xid = 0;  // the transaction id (32 bits, without epoch)
};

struct CommitEvent {
  Lsn commit_lsn = 0;  // the LSN of the commit record
  // The end of the commit record: every transaction that committed before
  // this position has been sent. The position to Confirm() once applied, and
  // the one a writer's consistency token is compared with.
  Lsn end_lsn = 0;
  absl::Time commit_time;
};

// One row inserted, updated or deleted (inside Begin..Commit).
struct ChangeEvent {
  enum class Kind { kInsert, kUpdate, kDelete };
  Kind kind = Kind::kInsert;
  std::shared_ptr<const RelationInfo> relation;
  // Values of relation->key_columns, in that order, in the row after the
  // change. Insert and update: filled; delete: empty.
  std::vector<KeyValue> new_key;
  // The key before the change. Delete: the deleted row's key. Update: only
  // when the key changed (differs from new_key); empty otherwise. Insert:
  // empty.
  std::vector<KeyValue> old_key;
  // False when PostgreSQL did not send a key value (a large key column stored
  // out of line and unchanged by an update, with no old key to take it from):
  // the row is unknown, invalidate the whole table.
  bool key_known = true;
};

// TRUNCATE of one or more published tables (inside Begin..Commit).
struct TruncateEvent {
  std::vector<std::shared_ptr<const RelationInfo>> relations;
  bool cascade = false;
  bool restart_identity = false;
};

// A Relation message: pgoutput describes a table before its first change in a
// stream and again after anything invalidated the server's cache of it (DDL,
// but also e.g. VACUUM or ANALYZE). Logical decoding does not decode DDL, so
// this is the only sign of it, and it arrives only with the table's next
// change: forget what was learned about the table (plans, keys) and
// invalidate it; a DDL statement may have rewritten its rows.
struct RelationEvent {
  std::shared_ptr<const RelationInfo> relation;
  // False when the description equals what this stream already knew about
  // the table (still a possible DDL: ALTER COLUMN ... TYPE ... USING keeps the
  // shape and rewrites the rows).
  bool changed = true;
};

// A logical decoding message, written by anyone with
// pg_logical_emit_message(transactional, prefix, content) and sent only when
// the stream asks for messages. A transactional one arrives inside its
// transaction (between its Begin and Commit, so in commit order, and only if
// that transaction committed); a non-transactional one between transactions,
// as soon as it is decoded. Nothing about it is trustworthy beyond that: any
// role that may execute the function can send any prefix.
struct MessageEvent {
  bool transactional = false;
  // Its position as the server reports it (for a transactional message,
  // PostgreSQL 15 reports its transaction's commit LSN).
  Lsn lsn = 0;
  std::string prefix;
  std::string content;
};

using LogicalEvent =
    std::variant<BeginEvent, CommitEvent, ChangeEvent, TruncateEvent, RelationEvent, MessageEvent>;

// One CopyData message of the replication stream (server to client).
struct ReplicationMessage {
  enum class Kind { kXLogData, kKeepalive };
  Kind kind = Kind::kXLogData;
  Lsn wal_start = 0;  // XLogData: the position of its data
  Lsn wal_end = 0;    // the server's WAL end (keepalive: everything before it was sent)
  absl::Time send_time;
  bool reply_requested = false;  // keepalive: answer with a status update now
  absl::string_view payload;     // XLogData: the pgoutput message (points into the input)
};

absl::StatusOr<ReplicationMessage> ParseReplicationMessage(absl::string_view copy_data);

// The standby status update ('r') reporting positions to the server.
std::string EncodeStatusUpdate(Lsn written, Lsn flushed, Lsn applied, absl::Time now,
                               bool reply_requested);

class PgOutputDecoder {
 public:
  static constexpr size_t kMaxRelations = 65536;

  // `messages`: the stream asked for logical decoding messages (pgoutput's
  // `messages` option); otherwise a Message is as unexpected as any unknown
  // message type.
  explicit PgOutputDecoder(bool messages = false) : messages_(messages) {}

  // Decodes one pgoutput message. nullopt for messages that only inform the
  // decoder (Type, Origin). Errors: DATA_LOSS (malformed or unexpected
  // message), RESOURCE_EXHAUSTED (too many relations). After an error the
  // stream cannot be trusted: its events up to there may be incomplete.
  absl::StatusOr<std::optional<LogicalEvent>> Decode(absl::string_view message);

  bool in_transaction() const { return in_transaction_; }
  size_t relation_count() const { return relations_.size(); }

 private:
  absl::StatusOr<std::optional<LogicalEvent>> DecodeRelation(absl::string_view body);
  absl::StatusOr<std::optional<LogicalEvent>> DecodeChange(char type, absl::string_view body);
  absl::StatusOr<std::optional<LogicalEvent>> DecodeTruncate(absl::string_view body);
  absl::StatusOr<std::optional<LogicalEvent>> DecodeMessage(absl::string_view body);
  absl::StatusOr<std::shared_ptr<const RelationInfo>> Lookup(uint32_t id, char type) const;

  const bool messages_;
  absl::flat_hash_map<uint32_t, std::shared_ptr<const RelationInfo>> relations_;
  bool in_transaction_ = false;
  Lsn final_lsn_ = 0;
};

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_PGOUTPUT_DECODER_H_
