#include "common/db/pgoutput_decoder.h"

#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace poolside::db {
namespace {

// Seconds from 1970-01-01 (Unix) to 2000-01-01 (PostgreSQL), in microseconds.
constexpr int64_t kPostgresEpochMicros = int64_t{946684800} * 1000000;

// A name from the stream, cut short for an error message (messages stay
// bounded whatever the server sent).
absl::string_view Bounded(absl::string_view name) { return name.substr(0, 64); }

// "pgoutput Insert", "replication keepalive".
std::string MessageName(char type) {
  switch (type) {
    case 'B':
      return "pgoutput Begin";
    case 'C':
      return "pgoutput Commit";
    case 'O':
      return "pgoutput Origin";
    case 'R':
      return "pgoutput Relation";
    case 'Y':
      return "pgoutput Type";
    case 'I':
      return "pgoutput Insert";
    case 'U':
      return "pgoutput Update";
    case 'D':
      return "pgoutput Delete";
    case 'T':
      return "pgoutput Truncate";
    case 'M':
      return "pgoutput Message";
    case 'w':
      return "replication XLogData";
    case 'k':
      return "replication keepalive";
    default:
      return absl::StrFormat("0x%02x", static_cast<unsigned char>(type));
  }
}

// Reads big-endian fields off one message; every read is checked against the
// bytes left and returns false (reading nothing) when they do not suffice.
// Errors name the message and the byte offset.
class Reader {
 public:
  Reader(absl::string_view data, char type) : data_(data), type_(type) {}

  size_t remaining() const { return data_.size() - pos_; }

  absl::Status Error(absl::string_view what) const {
    return absl::DataLossError(absl::StrCat("malformed ", MessageName(type_), " message: ", what,
                                            " (at byte ", pos_, " of ", data_.size(), ")"));
  }
  absl::Status Truncated(absl::string_view what) const {
    return Error(absl::StrCat("truncated in ", what));
  }

  bool Byte(uint8_t* out) {
    if (remaining() < 1) return false;
    *out = static_cast<uint8_t>(data_[pos_++]);
    return true;
  }
  bool Uint16(uint16_t* out) { return Unsigned(out); }
  bool Uint32(uint32_t* out) { return Unsigned(out); }
  bool Uint64(uint64_t* out) { return Unsigned(out); }
  bool Int32(int32_t* out) {
    uint32_t v;
    if (!Unsigned(&v)) return false;
    *out = static_cast<int32_t>(v);
    return true;
  }
  bool Int64(int64_t* out) {
    uint64_t v;
    if (!Unsigned(&v)) return false;
    *out = static_cast<int64_t>(v);
    return true;
  }
  // A NUL-terminated string.
  bool String(absl::string_view* out) {
    const void* nul = std::memchr(data_.data() + pos_, '\0', remaining());
    if (nul == nullptr) return false;
    const size_t len = static_cast<const char*>(nul) - (data_.data() + pos_);
    *out = data_.substr(pos_, len);
    pos_ += len + 1;
    return true;
  }
  bool Bytes(size_t n, absl::string_view* out) {
    if (remaining() < n) return false;
    *out = data_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  absl::string_view Rest() {
    absl::string_view rest = data_.substr(pos_);
    pos_ = data_.size();
    return rest;
  }
  absl::Status ExpectEnd() const {
    if (remaining() == 0) return absl::OkStatus();
    return Error(absl::StrCat(remaining(), " unexpected trailing bytes"));
  }

 private:
  template <typename T>
  bool Unsigned(T* out) {
    if (remaining() < sizeof(T)) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) v = (v << 8) | static_cast<uint8_t>(data_[pos_ + i]);
    pos_ += sizeof(T);
    *out = static_cast<T>(v);
    return true;
  }

  absl::string_view data_;
  char type_;
  size_t pos_ = 0;
};

// The key columns' values of one TupleData.
struct TupleKey {
  std::vector<KeyValue> values;
  std::vector<bool> unchanged;  // sent as 'u' (unchanged TOASTed value): not known
  bool any_unchanged = false;
};

// Reads one TupleData of `rel`, keeping the key columns' values only.
absl::Status ReadTuple(Reader& r, const RelationInfo& rel, const char* which, TupleKey* out) {
  uint16_t ncols;
  if (!r.Uint16(&ncols)) return r.Truncated(absl::StrCat("the ", which, "'s column count"));
  if (ncols != rel.columns.size()) {
    return r.Error(absl::StrCat(which, " has ", ncols, " columns, but relation ",
                                Bounded(rel.schema), ".", Bounded(rel.table), " (", rel.id,
                                ") was described with ", rel.columns.size()));
  }
  const std::vector<int>& keys = rel.key_columns;
  out->values.assign(keys.size(), std::nullopt);
  out->unchanged.assign(keys.size(), false);
  out->any_unchanged = false;
  size_t next_key = 0;
  for (int i = 0; i < ncols; ++i) {
    const bool is_key = next_key < keys.size() && keys[next_key] == i;
    uint8_t kind;
    if (!r.Byte(&kind)) return r.Truncated(absl::StrCat(which, " column ", i + 1));
    switch (kind) {
      case 'n':
        break;
      case 'u':
        if (is_key) {
          out->unchanged[next_key] = true;
          out->any_unchanged = true;
        }
        break;
      case 't': {
        int32_t len;
        if (!r.Int32(&len)) {
          return r.Truncated(absl::StrCat(which, " column ", i + 1, "'s length"));
        }
        absl::string_view bytes;
        if (len < 0) {
          return r.Error(absl::StrCat(which, " column ", i + 1, " has negative length ", len));
        }
        if (!r.Bytes(static_cast<size_t>(len), &bytes)) {
          return r.Error(absl::StrCat(which, " column ", i + 1, "'s value of ", len,
                                      " bytes runs past the end"));
        }
        if (is_key) out->values[next_key] = std::string(bytes);
        break;
      }
      case 'b':
        return r.Error(
            absl::StrCat(which, " column ", i + 1, " is in binary format, not requested"));
      default:
        return r.Error(
            absl::StrFormat("%s column %d has unknown value kind 0x%02x", which, i + 1, kind));
    }
    if (is_key) ++next_key;
  }
  return absl::OkStatus();
}

bool SameColumns(const RelationInfo& a, const RelationInfo& b) {
  if (a.columns.size() != b.columns.size()) return false;
  for (size_t i = 0; i < a.columns.size(); ++i) {
    const RelationInfo::Column& x = a.columns[i];
    const RelationInfo::Column& y = b.columns[i];
    if (x.name != y.name || x.type_oid != y.type_oid || x.type_modifier != y.type_modifier ||
        x.key != y.key) {
      return false;
    }
  }
  return true;
}

bool HexDigits(absl::string_view s, uint32_t* out) {
  if (s.empty() || s.size() > 8) return false;
  uint32_t v = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if (c >= 'a' && c <= 'f')
      d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F')
      d = c - 'A' + 10;
    else
      return false;
    v = (v << 4) | static_cast<uint32_t>(d);
  }
  *out = v;
  return true;
}

void PutUint64(std::string* out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out->push_back(static_cast<char>(v >> shift));
}

}  // namespace

std::string FormatLsn(Lsn lsn) {
  return absl::StrFormat("%X/%X", static_cast<uint32_t>(lsn >> 32), static_cast<uint32_t>(lsn));
}

absl::StatusOr<Lsn> ParseLsn(absl::string_view text) {
  const size_t slash = text.find('/');
  uint32_t hi, lo;
  if (slash == absl::string_view::npos || !HexDigits(text.substr(0, slash), &hi) ||
      !HexDigits(text.substr(slash + 1), &lo)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "not an LSN (expected two hex numbers such as 16/B374D848): \"", text.substr(0, 40), "\""));
  }
  return (Lsn{hi} << 32) | lo;
}

absl::Time TimeFromPostgresMicros(int64_t micros) {
  // PostgreSQL's -infinity/infinity are INT64_MIN/MAX; values too far out
  // to shift by the epoch difference saturate the same way.
  if (micros > std::numeric_limits<int64_t>::max() - kPostgresEpochMicros) {
    return absl::InfiniteFuture();
  }
  if (micros == std::numeric_limits<int64_t>::min()) return absl::InfinitePast();
  return absl::FromUnixMicros(micros + kPostgresEpochMicros);
}

int64_t PostgresMicrosFromTime(absl::Time time) {
  const int64_t unix_micros = absl::ToUnixMicros(time);
  if (unix_micros < std::numeric_limits<int64_t>::min() + kPostgresEpochMicros) {
    return std::numeric_limits<int64_t>::min();
  }
  return unix_micros - kPostgresEpochMicros;
}

std::vector<std::string> RelationInfo::KeyColumnNames() const {
  std::vector<std::string> names;
  names.reserve(key_columns.size());
  for (int i : key_columns) names.push_back(columns[i].name);
  return names;
}

absl::StatusOr<ReplicationMessage> ParseReplicationMessage(absl::string_view copy_data) {
  if (copy_data.empty()) {
    return absl::DataLossError("empty CopyData message in the replication stream");
  }
  const char type = copy_data[0];
  Reader r(copy_data.substr(1), type);
  ReplicationMessage m;
  int64_t send_time;
  if (type == 'w') {
    m.kind = ReplicationMessage::Kind::kXLogData;
    if (!r.Uint64(&m.wal_start)) return r.Truncated("the data's start position");
    if (!r.Uint64(&m.wal_end)) return r.Truncated("the WAL end");
    if (!r.Int64(&send_time)) return r.Truncated("the send time");
    m.send_time = TimeFromPostgresMicros(send_time);
    m.payload = r.Rest();
    if (m.payload.empty()) return r.Error("no pgoutput message inside");
    return m;
  }
  if (type == 'k') {
    m.kind = ReplicationMessage::Kind::kKeepalive;
    uint8_t reply;
    if (!r.Uint64(&m.wal_end)) return r.Truncated("the WAL end");
    if (!r.Int64(&send_time)) return r.Truncated("the send time");
    if (!r.Byte(&reply)) return r.Truncated("the reply flag");
    if (absl::Status s = r.ExpectEnd(); !s.ok()) return s;
    m.send_time = TimeFromPostgresMicros(send_time);
    m.reply_requested = reply != 0;
    return m;
  }
  return absl::DataLossError(absl::StrFormat(
      "unknown message type 0x%02x in the replication stream (expected XLogData 'w' or "
      "keepalive 'k')",
      static_cast<unsigned char>(type)));
}

std::string EncodeStatusUpdate(Lsn written, Lsn flushed, Lsn applied, absl::Time now,
                               bool reply_requested) {
  std::string out;
  out.reserve(34);
  out.push_back('r');
  PutUint64(&out, written);
  PutUint64(&out, flushed);
  PutUint64(&out, applied);
  PutUint64(&out, static_cast<uint64_t>(PostgresMicrosFromTime(now)));
  out.push_back(reply_requested ? 1 : 0);
  return out;
}

absl::StatusOr<std::optional<LogicalEvent>> PgOutputDecoder::Decode(absl::string_view message) {
  if (message.empty()) return absl::DataLossError("empty pgoutput message");
  const char type = message[0];
  const absl::string_view body = message.substr(1);
  Reader r(body, type);
  switch (type) {
    case 'B': {
      BeginEvent e;
      int64_t ts;
      if (!r.Uint64(&e.final_lsn)) return r.Truncated("the final LSN");
      if (!r.Int64(&ts)) return r.Truncated("the commit time");
      if (!r.Uint32(&e.xid)) return r.Truncated("the xid");
      if (absl::Status s = r.ExpectEnd(); !s.ok()) return s;
      if (in_transaction_) return r.Error("Begin inside a transaction (no Commit before it)");
      e.commit_time = TimeFromPostgresMicros(ts);
      in_transaction_ = true;
      final_lsn_ = e.final_lsn;
      return std::optional<LogicalEvent>(std::move(e));
    }
    case 'C': {
      CommitEvent e;
      uint8_t flags;
      int64_t ts;
      if (!r.Byte(&flags)) return r.Truncated("the flags");
      if (!r.Uint64(&e.commit_lsn)) return r.Truncated("the commit LSN");
      if (!r.Uint64(&e.end_lsn)) return r.Truncated("the end LSN");
      if (!r.Int64(&ts)) return r.Truncated("the commit time");
      if (absl::Status s = r.ExpectEnd(); !s.ok()) return s;
      if (!in_transaction_) return r.Error("Commit outside a transaction");
      if (e.commit_lsn != final_lsn_) {
        return r.Error(absl::StrCat("commit LSN ", FormatLsn(e.commit_lsn),
                                    " differs from the Begin's final LSN ", FormatLsn(final_lsn_)));
      }
      if (e.end_lsn < e.commit_lsn) {
        return r.Error(absl::StrCat("end LSN ", FormatLsn(e.end_lsn), " before the commit LSN ",
                                    FormatLsn(e.commit_lsn)));
      }
      e.commit_time = TimeFromPostgresMicros(ts);
      in_transaction_ = false;
      return std::optional<LogicalEvent>(std::move(e));
    }
    case 'O': {
      uint64_t lsn;
      absl::string_view name;
      if (!r.Uint64(&lsn)) return r.Truncated("the origin's commit LSN");
      if (!r.String(&name)) return r.Error("unterminated origin name");
      if (absl::Status s = r.ExpectEnd(); !s.ok()) return s;
      return std::optional<LogicalEvent>();
    }
    case 'Y': {
      uint32_t oid;
      absl::string_view schema, name;
      if (!r.Uint32(&oid)) return r.Truncated("the type's OID");
      if (!r.String(&schema)) return r.Error("unterminated type schema");
      if (!r.String(&name)) return r.Error("unterminated type name");
      if (absl::Status s = r.ExpectEnd(); !s.ok()) return s;
      return std::optional<LogicalEvent>();
    }
    case 'R':
      return DecodeRelation(body);
    case 'I':
    case 'U':
    case 'D':
      return DecodeChange(type, body);
    case 'T':
      return DecodeTruncate(body);
    case 'M':
      if (messages_) return DecodeMessage(body);
      return absl::DataLossError(
          "unexpected pgoutput Message (logical decoding messages were not asked for)");
    default:
      return absl::DataLossError(absl::StrFormat(
          "unknown pgoutput message type 0x%02x (protocol version 1 sends B, C, O, R, Y, I, "
          "U, D, T, M)",
          static_cast<unsigned char>(type)));
  }
}

absl::StatusOr<std::optional<LogicalEvent>> PgOutputDecoder::DecodeRelation(
    absl::string_view body) {
  Reader r(body, 'R');
  auto rel = std::make_shared<RelationInfo>();
  absl::string_view schema, table;
  uint8_t identity;
  uint16_t ncols;
  if (!r.Uint32(&rel->id)) return r.Truncated("the relation id");
  if (!r.String(&schema)) return r.Error("unterminated schema name");
  if (!r.String(&table)) return r.Error("unterminated relation name");
  if (!r.Byte(&identity)) return r.Truncated("the replica identity");
  if (!r.Uint16(&ncols)) return r.Truncated("the column count");
  if (rel->id == 0) return r.Error("relation id 0 (not a valid OID)");
  if (identity != 'd' && identity != 'n' && identity != 'f' && identity != 'i') {
    return r.Error(absl::StrFormat("unknown replica identity 0x%02x", identity));
  }
  rel->schema = std::string(schema);
  rel->table = std::string(table);
  rel->replica_identity = static_cast<char>(identity);
  // A column takes at least 10 bytes: never reserve more than the message holds.
  rel->columns.reserve(std::min<size_t>(ncols, r.remaining() / 10));
  for (int i = 0; i < ncols; ++i) {
    RelationInfo::Column c;
    uint8_t flags;
    absl::string_view name;
    if (!r.Byte(&flags)) return r.Truncated(absl::StrCat("column ", i + 1, "'s flags"));
    if (!r.String(&name)) return r.Error(absl::StrCat("unterminated column ", i + 1, "'s name"));
    if (!r.Uint32(&c.type_oid)) return r.Truncated(absl::StrCat("column ", i + 1, "'s type"));
    if (!r.Int32(&c.type_modifier)) {
      return r.Truncated(absl::StrCat("column ", i + 1, "'s type modifier"));
    }
    c.name = std::string(name);
    c.key = (flags & 1) != 0;
    if (c.key) rel->key_columns.push_back(i);
    rel->columns.push_back(std::move(c));
  }
  if (absl::Status s = r.ExpectEnd(); !s.ok()) return s;

  auto it = relations_.find(rel->id);
  bool changed = true;
  if (it == relations_.end()) {
    if (relations_.size() >= kMaxRelations) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the replication stream described more than ", kMaxRelations,
                       " relations; refusing to remember more"));
    }
  } else {
    const RelationInfo& old = *it->second;
    changed = old.schema != rel->schema || old.table != rel->table ||
              old.replica_identity != rel->replica_identity || !SameColumns(old, *rel);
  }
  std::shared_ptr<const RelationInfo> frozen = std::move(rel);
  relations_[frozen->id] = frozen;
  return std::optional<LogicalEvent>(RelationEvent{std::move(frozen), changed});
}

absl::StatusOr<std::shared_ptr<const RelationInfo>> PgOutputDecoder::Lookup(uint32_t id,
                                                                            char type) const {
  auto it = relations_.find(id);
  if (it == relations_.end()) {
    return Reader(absl::string_view(), type)
        .Error(absl::StrCat("relation id ", id, " was never described by a Relation message"));
  }
  return it->second;
}

absl::StatusOr<std::optional<LogicalEvent>> PgOutputDecoder::DecodeChange(char type,
                                                                          absl::string_view body) {
  Reader r(body, type);
  uint32_t id;
  if (!r.Uint32(&id)) return r.Truncated("the relation id");
  if (!in_transaction_) return r.Error("change outside a transaction");
  absl::StatusOr<std::shared_ptr<const RelationInfo>> rel = Lookup(id, type);
  if (!rel.ok()) return rel.status();

  ChangeEvent e;
  e.relation = *rel;
  uint8_t part;
  if (!r.Byte(&part)) return r.Truncated("the tuple kind");
  TupleKey old_row, new_row;
  bool has_old = false;
  if (type == 'D' && part != 'K' && part != 'O') {
    return r.Error(absl::StrFormat("expected an old key 'K' or old tuple 'O', got 0x%02x", part));
  }
  if (type != 'I' && (part == 'K' || part == 'O')) {
    if (absl::Status s = ReadTuple(r, **rel, part == 'K' ? "old key" : "old tuple", &old_row);
        !s.ok()) {
      return s;
    }
    has_old = true;
    if (type == 'U' && !r.Byte(&part)) return r.Truncated("the new tuple's kind");
  }
  if (type != 'D') {
    if (part != 'N') {
      return r.Error(absl::StrFormat("expected a new tuple 'N', got 0x%02x", part));
    }
    if (absl::Status s = ReadTuple(r, **rel, "new tuple", &new_row); !s.ok()) return s;
  }
  if (absl::Status s = r.ExpectEnd(); !s.ok()) return s;

  switch (type) {
    case 'I':
      e.kind = ChangeEvent::Kind::kInsert;
      break;
    case 'U':
      e.kind = ChangeEvent::Kind::kUpdate;
      break;
    default:
      e.kind = ChangeEvent::Kind::kDelete;
      break;
  }
  if (type == 'D') {
    e.old_key = std::move(old_row.values);
    e.key_known = !old_row.any_unchanged;
  } else {
    e.new_key = std::move(new_row.values);
    // An unchanged (unsent) TOASTed key value equals the old row's.
    for (size_t k = 0; k < e.new_key.size(); ++k) {
      if (!new_row.unchanged[k]) continue;
      if (has_old && !old_row.unchanged[k]) {
        e.new_key[k] = old_row.values[k];
      } else {
        e.key_known = false;
      }
    }
    if (has_old) {
      if (old_row.any_unchanged) e.key_known = false;
      if (old_row.values != e.new_key) e.old_key = std::move(old_row.values);
    }
  }
  if (!e.key_known) {
    e.new_key.clear();
    e.old_key.clear();
  }
  return std::optional<LogicalEvent>(std::move(e));
}

absl::StatusOr<std::optional<LogicalEvent>> PgOutputDecoder::DecodeTruncate(
    absl::string_view body) {
  Reader r(body, 'T');
  uint32_t count;
  uint8_t options;
  if (!r.Uint32(&count)) return r.Truncated("the relation count");
  if (!r.Byte(&options)) return r.Truncated("the options");
  if (!in_transaction_) return r.Error("Truncate outside a transaction");
  if (count == 0) return r.Error("no relations");
  if (r.remaining() != size_t{count} * 4) {
    return r.Error(
        absl::StrCat(count, " relation ids announced, ", r.remaining(), " bytes left (4 per id)"));
  }
  TruncateEvent e;
  e.cascade = (options & 1) != 0;
  e.restart_identity = (options & 2) != 0;
  e.relations.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    uint32_t id = 0;
    if (!r.Uint32(&id)) return r.Truncated("a relation id");
    absl::StatusOr<std::shared_ptr<const RelationInfo>> rel = Lookup(id, 'T');
    if (!rel.ok()) return rel.status();
    e.relations.push_back(*std::move(rel));
  }
  return std::optional<LogicalEvent>(std::move(e));
}

absl::StatusOr<std::optional<LogicalEvent>> PgOutputDecoder::DecodeMessage(absl::string_view body) {
  // Protocol version 1: no xid (only streamed transactions, version 2, carry one).
  Reader r(body, 'M');
  uint8_t flags;
  MessageEvent e;
  absl::string_view prefix, content;
  uint32_t length;
  if (!r.Byte(&flags)) return r.Truncated("the flags");
  if (!r.Uint64(&e.lsn)) return r.Truncated("the message's LSN");
  if (!r.String(&prefix)) return r.Error("unterminated prefix");
  if (!r.Uint32(&length)) return r.Truncated("the content's length");
  if (!r.Bytes(length, &content)) {
    return r.Error(absl::StrCat("content of ", length, " bytes runs past the end"));
  }
  if (absl::Status s = r.ExpectEnd(); !s.ok()) return s;
  if (flags > 1) return r.Error(absl::StrFormat("unknown flags 0x%02x", flags));
  e.transactional = flags == 1;
  if (e.transactional && !in_transaction_) {
    return r.Error("transactional message outside a transaction");
  }
  e.prefix = std::string(prefix);
  e.content = std::string(content);
  return std::optional<LogicalEvent>(std::move(e));
}

}  // namespace poolside::db
