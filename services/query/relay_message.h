#ifndef POOLSIDE_SERVICES_QUERY_RELAY_MESSAGE_H_
#define POOLSIDE_SERVICES_QUERY_RELAY_MESSAGE_H_

// The NOTIFY payloads in which the replica holding a database's replication
// slot relays what it decoded to every replica (wal_relay.h, read_cache.h).
//
// One relay batch becomes one or more payloads, each under PostgreSQL's
// 8000-byte NOTIFY limit and each readable alone:
//
//   psw1 <kind> <holder> <seq> <through> <final> <lagging> <oldest_commit>\n
//   <entry>\n ...
//
//   kind           h hello (a stream started at `through`, its consistent
//                  point: changes before it were not decoded), c changes,
//                  b heartbeat, x the stream ended
//   holder         16 hex digits naming one stream of one holder
//   seq            decimal, +1 per payload of that holder
//   through        hex LSN: when `final`, every transaction that committed
//                  before it has been relayed (in this payload or earlier)
//   final          1 for the last payload of a batch, else 0
//   lagging        1 when the holder's decoding is more than the configured
//                  bound behind the server's WAL
//   oldest_commit  PostgreSQL microseconds of the oldest commit in the
//                  batch, 0 for none
//   entry          <len>:<table> <w|d|r>[ <16 hex row hash>...]
//                  w: the whole table (TRUNCATE, unknown key, too many rows)
//                  d: its definition changed (also the whole table)
//                  r: those rows (row_keys.h hashes) changed
//                  The table kRelayAllTables ("*", never a table's name,
//                  which always has a schema and a dot) with d: DDL ran
//                  (an event trigger's message, wal_relay.h): every table's
//                  entries and learned plans of the database go.
//
// A batch of changes may also name its transactions (RelayHeader::xids): the
// first entry of each of its payloads is then a whole-table entry whose
// "table" is kRelayXidsMarker followed by ` <8 hex xid>` for each. The
// marker is longer than any name PostgreSQL can give a table (63 bytes of
// schema, a dot, 63 of table), so it is never a table's; a replica that
// does not know it takes it for a table nobody reads, and applies the rest.
//
// Thread-compatible; pure functions.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace poolside::query {

// PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
inline constexpr size_t kMaxRelayPayloadBytes = 7900;

struct RelayHeader {
  enum Kind : char { kHello = 'h', kChanges = 'c', kHeartbeat = 'b', kDown = 'x' };
  Kind kind = kChanges;
  uint64_t holder = 0;
  uint64_t seq = 0;
  uint64_t through = 0;
  bool final = true;
  bool lagging = false;
  int64_t oldest_commit_micros = 0;
  // The transactions (32-bit xids, as logical decoding names them) whose
  // changes the batch holds, when the holder says; not in the header line
  // but in an entry of each payload (see above). Encoded only if it fits a
  // payload comfortably (kMaxRelayXids).
  std::optional<std::vector<uint32_t>> xids;
};

// At most this many transactions are named in a batch's payloads; a batch
// of more names none.
inline constexpr size_t kMaxRelayXids = 32;
// The start of the pseudo-table entry naming the transactions (see above).
extern const char kRelayXidsMarker[];
// The pseudo-table of a DDL entry (see above).
inline constexpr char kRelayAllTables[] = "*";

struct RelayTable {
  enum Change : char { kRows = 'r', kWhole = 'w', kDefinition = 'd' };
  std::string name;  // "schema.table"
  Change change = kRows;
  std::vector<uint64_t> rows;  // kRows
};

struct RelayMessage {
  RelayHeader header;
  std::vector<RelayTable> tables;
};

// Whether `payload` is a relay message at all (else: a trigger's table name).
bool IsRelayPayload(absl::string_view payload);

// The payloads of one batch, in order: `seq` numbers them from
// header.seq on, only the last has `final` (a batch whose entries fit in one
// payload has one). A table name that cannot fit in a payload is dropped
// (PostgreSQL's names are at most 127 bytes with their schema).
std::vector<std::string> EncodeRelay(const RelayHeader& header,
                                     const std::vector<RelayTable>& tables,
                                     size_t max_bytes = kMaxRelayPayloadBytes);

// INVALID_ARGUMENT for anything malformed (every field is bounds-checked).
absl::StatusOr<RelayMessage> DecodeRelay(absl::string_view payload);

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_RELAY_MESSAGE_H_
