// libFuzzer target for common/db/pgoutput_decoder: the logical replication
// stream as a (hostile or broken) server could send it.
//
// Besides memory errors (ASan/UBSan), it checks the decoder's contracts:
// - an error is DATA_LOSS or RESOURCE_EXHAUSTED with a short, non-empty message;
// - a relation's key_columns are exactly its columns flagged as key, in order;
// - a change's key vectors match the relation's key columns (new_key for
//   insert and update, old_key for delete, an update's old_key only when it
//   differs from new_key), and are empty when the key is unknown;
// - Begin opens and Commit closes a transaction; changes, truncates and
//   transactional messages only happen inside one, and a message changes no
//   transaction state;
// - an XLogData's payload lies inside the message it came from.
//
// Input: byte 0 selects how the frames that follow are read (bit 0 clear:
// each frame is a replication CopyData message, 'w' or 'k'; set: each frame is
// a bare pgoutput message) and, bit 1, whether the stream asked for logical
// decoding messages; a frame is a 2-byte big-endian length and that many
// bytes.
// One decoder sees all frames, so relations described early are used later.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/string_view.h"
#include "common/db/pgoutput_decoder.h"

namespace {

namespace db = poolside::db;

[[noreturn]] void Fail(const char* what, absl::string_view detail) {
  fprintf(stderr, "pgoutput_fuzzer: %s: \"%s\"\n", what, absl::CEscape(detail).c_str());
  abort();
}

void CheckRelation(const db::RelationInfo& rel) {
  size_t k = 0;
  for (size_t i = 0; i < rel.columns.size(); ++i) {
    if (!rel.columns[i].key) continue;
    if (k >= rel.key_columns.size() || rel.key_columns[k] != static_cast<int>(i)) {
      Fail("key_columns do not match the key flags", rel.table);
    }
    ++k;
  }
  if (k != rel.key_columns.size()) Fail("key_columns has extra entries", rel.table);
}

void CheckChange(const db::ChangeEvent& c) {
  if (c.relation == nullptr) Fail("change without a relation", "");
  const size_t keys = c.relation->key_columns.size();
  if (!c.key_known) {
    if (!c.new_key.empty() || !c.old_key.empty()) Fail("unknown key with values", "");
    return;
  }
  switch (c.kind) {
    case db::ChangeEvent::Kind::kInsert:
      if (c.new_key.size() != keys || !c.old_key.empty()) Fail("insert key sizes", "");
      break;
    case db::ChangeEvent::Kind::kUpdate:
      if (c.new_key.size() != keys) Fail("update new key size", "");
      if (!c.old_key.empty() && (c.old_key.size() != keys || c.old_key == c.new_key)) {
        Fail("update old key reported though equal, or of the wrong size", "");
      }
      break;
    case db::ChangeEvent::Kind::kDelete:
      if (c.old_key.size() != keys || !c.new_key.empty()) Fail("delete key sizes", "");
      break;
  }
}

void Decode(db::PgOutputDecoder& decoder, bool messages, absl::string_view message) {
  const bool was_in = decoder.in_transaction();
  absl::StatusOr<std::optional<db::LogicalEvent>> e = decoder.Decode(message);
  if (!e.ok()) {
    const absl::StatusCode code = e.status().code();
    if (code != absl::StatusCode::kDataLoss && code != absl::StatusCode::kResourceExhausted) {
      Fail("unexpected error code", e.status().ToString());
    }
    if (e.status().message().empty() || e.status().message().size() > 1024) {
      Fail("error message empty or unbounded", e.status().message().substr(0, 200));
    }
    if (decoder.in_transaction() != was_in) Fail("a refused message changed the state", message);
    return;
  }
  if (!e->has_value()) return;
  const db::LogicalEvent& event = **e;
  if (const auto* b = std::get_if<db::BeginEvent>(&event)) {
    (void)b;
    if (was_in || !decoder.in_transaction()) Fail("Begin accepted out of place", message);
  } else if (const auto* c = std::get_if<db::CommitEvent>(&event)) {
    if (!was_in || decoder.in_transaction()) Fail("Commit accepted out of place", message);
    if (c->end_lsn < c->commit_lsn) Fail("Commit ends before it starts", message);
  } else if (const auto* c = std::get_if<db::ChangeEvent>(&event)) {
    if (!was_in) Fail("change outside a transaction", message);
    CheckChange(*c);
  } else if (const auto* t = std::get_if<db::TruncateEvent>(&event)) {
    if (!was_in) Fail("truncate outside a transaction", message);
    if (t->relations.empty()) Fail("truncate of nothing", message);
    for (const auto& r : t->relations) {
      if (r == nullptr) Fail("truncate of a null relation", message);
    }
  } else if (const auto* r = std::get_if<db::RelationEvent>(&event)) {
    if (r->relation == nullptr) Fail("relation event without a relation", message);
    CheckRelation(*r->relation);
  } else if (const auto* m = std::get_if<db::MessageEvent>(&event)) {
    if (!messages) Fail("message decoded though not asked for", message);
    if (m->transactional && !was_in) Fail("transactional message outside a transaction", message);
    if (decoder.in_transaction() != was_in)
      Fail("a message changed the transaction state", message);
    if (m->prefix.size() + m->content.size() > message.size())
      Fail("message larger than its input", message);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool framed = (data[0] & 1) == 0;
  const bool messages = (data[0] & 2) != 0;
  absl::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  db::PgOutputDecoder decoder(messages);
  while (rest.size() >= 2) {
    const size_t len = (static_cast<uint8_t>(rest[0]) << 8) | static_cast<uint8_t>(rest[1]);
    rest.remove_prefix(2);
    const absl::string_view frame = rest.substr(0, len);
    rest.remove_prefix(frame.size());
    if (!framed) {
      Decode(decoder, messages, frame);
      continue;
    }
    absl::StatusOr<db::ReplicationMessage> m = db::ParseReplicationMessage(frame);
    if (!m.ok()) {
      if (m.status().code() != absl::StatusCode::kDataLoss) {
        Fail("unexpected framing error code", m.status().ToString());
      }
      continue;
    }
    if (m->kind != db::ReplicationMessage::Kind::kXLogData) continue;
    if (m->payload.empty() || m->payload.data() < frame.data() ||
        m->payload.data() + m->payload.size() != frame.data() + frame.size()) {
      Fail("XLogData payload outside its message", frame);
    }
    Decode(decoder, messages, m->payload);
  }
  return 0;
}
