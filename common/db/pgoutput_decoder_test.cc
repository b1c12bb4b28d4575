#include "common/db/pgoutput_decoder.h"

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace poolside::db {
namespace {

// Builds protocol messages byte by byte (big-endian), as the server writes them.
class Msg {
 public:
  explicit Msg(char type) { bytes_.push_back(type); }
  Msg& U8(uint8_t v) {
    bytes_.push_back(static_cast<char>(v));
    return *this;
  }
  Msg& U16(uint16_t v) { return Int(v, 2); }
  Msg& U32(uint32_t v) { return Int(v, 4); }
  Msg& U64(uint64_t v) { return Int(v, 8); }
  Msg& Str(absl::string_view s) {
    bytes_.append(s.data(), s.size());
    bytes_.push_back('\0');
    return *this;
  }
  Msg& Raw(absl::string_view s) {
    bytes_.append(s.data(), s.size());
    return *this;
  }
  // TupleData parts.
  Msg& Text(absl::string_view s) { return U8('t').U32(static_cast<uint32_t>(s.size())).Raw(s); }
  Msg& Null() { return U8('n'); }
  Msg& Unchanged() { return U8('u'); }
  // A whole TupleData introduced by `kind` ('N', 'K' or 'O'): a column is a
  // null if nullptr, unchanged (TOASTed) if kUnchanged, else a text value.
  Msg& Tuple(char kind, std::initializer_list<const char*> columns) {
    U8(kind).U16(static_cast<uint16_t>(columns.size()));
    for (const char* column : columns) {
      if (column == nullptr) {
        Null();
      } else if (column == kUnchanged) {
        Unchanged();
      } else {
        Text(column);
      }
    }
    return *this;
  }
  static constexpr char kUnchanged[] = "<unchanged>";
  const std::string& str() const { return bytes_; }
  operator absl::string_view() const { return bytes_; }

 private:
  Msg& Int(uint64_t v, int n) {
    for (int i = n - 1; i >= 0; --i) bytes_.push_back(static_cast<char>(v >> (8 * i)));
    return *this;
  }
  std::string bytes_;
};

struct Col {
  std::string name;
  bool key;
};

std::string Relation(uint32_t id, absl::string_view schema, absl::string_view table, char identity,
                     const std::vector<Col>& cols) {
  Msg m('R');
  m.U32(id).Str(schema).Str(table).U8(identity).U16(static_cast<uint16_t>(cols.size()));
  for (const Col& c : cols) m.U8(c.key ? 1 : 0).Str(c.name).U32(25).U32(0xffffffff);
  return m.str();
}

std::string Begin(uint64_t lsn, int64_t micros, uint32_t xid) {
  return Msg('B').U64(lsn).U64(static_cast<uint64_t>(micros)).U32(xid).str();
}

std::string Commit(uint64_t lsn, uint64_t end, int64_t micros) {
  return Msg('C').U8(0).U64(lsn).U64(end).U64(static_cast<uint64_t>(micros)).str();
}

template <typename T>
const T& As(const absl::StatusOr<std::optional<LogicalEvent>>& e) {
  static const T kEmpty{};
  if (!e.ok() || !e->has_value() || !std::holds_alternative<T>(**e)) {
    ADD_FAILURE() << "unexpected event (status " << e.status() << ")";
    return kEmpty;
  }
  return std::get<T>(**e);
}

std::vector<KeyValue> Key(std::vector<KeyValue> values) { return values; }

class DecoderTest : public ::testing::Test {
 protected:
  // accounts(id key, name, balance) and pair(a key, b key, note) described,
  // and a transaction open.
  void SetUp() override {
    ASSERT_TRUE(d_.Decode(Relation(16384, "public", "accounts", 'd',
                                   {{"id", true}, {"name", false}, {"balance", false}}))
                    .ok());
    ASSERT_TRUE(
        d_.Decode(Relation(16390, "app", "pair", 'd', {{"a", true}, {"b", true}, {"note", false}}))
            .ok());
    ASSERT_TRUE(d_.Decode(Begin(0x1000, 0, 7)).ok());
  }

  absl::Status DecodeError(absl::string_view message) {
    absl::StatusOr<std::optional<LogicalEvent>> e = d_.Decode(message);
    return e.status();
  }

  PgOutputDecoder d_;
};

TEST_F(DecoderTest, InsertCarriesTheNewKey) {
  auto e = d_.Decode(Msg('I').U32(16384).U8('N').U16(3).Text("42").Text("ann").Null());
  const ChangeEvent& c = As<ChangeEvent>(e);
  EXPECT_EQ(c.kind, ChangeEvent::Kind::kInsert);
  ASSERT_NE(c.relation, nullptr);
  EXPECT_EQ(c.relation->schema, "public");
  EXPECT_EQ(c.relation->table, "accounts");
  EXPECT_EQ(c.relation->KeyColumnNames(), std::vector<std::string>{"id"});
  EXPECT_EQ(c.new_key, Key({"42"}));
  EXPECT_TRUE(c.old_key.empty());
  EXPECT_TRUE(c.key_known);
}

TEST_F(DecoderTest, UpdateWithoutOldKeyKeepsOnlyTheNewKey) {
  auto e = d_.Decode(Msg('U').U32(16384).U8('N').U16(3).Text("42").Text("bob").Text("10"));
  const ChangeEvent& c = As<ChangeEvent>(e);
  EXPECT_EQ(c.kind, ChangeEvent::Kind::kUpdate);
  EXPECT_EQ(c.new_key, Key({"42"}));
  EXPECT_TRUE(c.old_key.empty());
}

TEST_F(DecoderTest, UpdateThatChangedTheKeyCarriesBoth) {
  // The old key tuple has every column; the non-key ones are null.
  auto e = d_.Decode(
      Msg('U').U32(16384).Tuple('K', {"42", nullptr, nullptr}).Tuple('N', {"43", "bob", nullptr}));
  const ChangeEvent& c = As<ChangeEvent>(e);
  EXPECT_EQ(c.new_key, Key({"43"}));
  EXPECT_EQ(c.old_key, Key({"42"}));
  EXPECT_TRUE(c.key_known);
}

TEST_F(DecoderTest, OldKeyEqualToTheNewOneIsDropped) {
  auto e = d_.Decode(Msg('U')
                         .U32(16384)
                         .Tuple('K', {"42", nullptr, nullptr})
                         .Tuple('N', {"42", nullptr, nullptr}));
  const ChangeEvent& c = As<ChangeEvent>(e);
  EXPECT_EQ(c.new_key, Key({"42"}));
  EXPECT_TRUE(c.old_key.empty());
}

TEST_F(DecoderTest, UnchangedToastedKeyIsTakenFromTheOldRow) {
  auto e = d_.Decode(Msg('U')
                         .U32(16390)
                         .Tuple('O', {"1", "long key", "x"})
                         .Tuple('N', {"1", Msg::kUnchanged, "y"}));
  const ChangeEvent& c = As<ChangeEvent>(e);
  EXPECT_TRUE(c.key_known);
  EXPECT_EQ(c.new_key, Key({"1", "long key"}));
  EXPECT_TRUE(c.old_key.empty());
}

TEST_F(DecoderTest, UnchangedToastedKeyWithoutOldRowIsUnknown) {
  auto e = d_.Decode(Msg('U').U32(16390).U8('N').U16(3).Text("1").Unchanged().Text("y"));
  const ChangeEvent& c = As<ChangeEvent>(e);
  EXPECT_FALSE(c.key_known);
  EXPECT_TRUE(c.new_key.empty());
  EXPECT_TRUE(c.old_key.empty());
}

TEST_F(DecoderTest, DeleteCarriesTheOldKeyAndNullKeys) {
  auto e = d_.Decode(Msg('D').U32(16390).U8('K').U16(3).Text("1").Null().Null());
  const ChangeEvent& c = As<ChangeEvent>(e);
  EXPECT_EQ(c.kind, ChangeEvent::Kind::kDelete);
  EXPECT_EQ(c.relation->KeyColumnNames(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(c.old_key, Key({"1", std::nullopt}));
  EXPECT_TRUE(c.new_key.empty());
}

TEST_F(DecoderTest, TableWithoutKeyColumnsHasEmptyKeys) {
  ASSERT_TRUE(d_.Decode(Relation(16400, "public", "log", 'd', {{"line", false}})).ok());
  auto e = d_.Decode(Msg('I').U32(16400).U8('N').U16(1).Text("hello"));
  const ChangeEvent& c = As<ChangeEvent>(e);
  EXPECT_TRUE(c.relation->key_columns.empty());
  EXPECT_TRUE(c.new_key.empty());
  EXPECT_TRUE(c.key_known);
}

TEST_F(DecoderTest, TruncateNamesItsRelations) {
  auto e = d_.Decode(Msg('T').U32(2).U8(3).U32(16390).U32(16384));
  const TruncateEvent& t = As<TruncateEvent>(e);
  ASSERT_EQ(t.relations.size(), 2u);
  EXPECT_EQ(t.relations[0]->table, "pair");
  EXPECT_EQ(t.relations[1]->table, "accounts");
  EXPECT_TRUE(t.cascade);
  EXPECT_TRUE(t.restart_identity);
}

TEST_F(DecoderTest, BeginAndCommitCarryTheirPositionsAndTimes) {
  PgOutputDecoder d;
  const int64_t micros = int64_t{86400} * 1000000 + 5;  // 2000-01-02 00:00:00.000005 UTC
  auto b = d.Decode(Begin(0x100000020, micros, 4242));
  EXPECT_EQ(As<BeginEvent>(b).final_lsn, 0x100000020u);
  EXPECT_EQ(As<BeginEvent>(b).xid, 4242u);
  EXPECT_EQ(As<BeginEvent>(b).commit_time,
            absl::FromCivil(absl::CivilSecond(2000, 1, 2, 0, 0, 0), absl::UTCTimeZone()) +
                absl::Microseconds(5));
  EXPECT_TRUE(d.in_transaction());
  // Origin and Type messages inform only.
  auto o = d.Decode(Msg('O').U64(5).Str("elsewhere"));
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->has_value());
  auto y = d.Decode(Msg('Y').U32(90000).Str("public").Str("mood"));
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_FALSE(y->has_value());
  auto c = d.Decode(Commit(0x100000020, 0x100000050, micros));
  EXPECT_EQ(As<CommitEvent>(c).commit_lsn, 0x100000020u);
  EXPECT_EQ(As<CommitEvent>(c).end_lsn, 0x100000050u);
  EXPECT_FALSE(d.in_transaction());
}

TEST_F(DecoderTest, RelationResentUnchangedOrChanged) {
  auto first = d_.Decode(Msg('I').U32(16384).U8('N').U16(3).Text("1").Null().Null());
  std::shared_ptr<const RelationInfo> before = As<ChangeEvent>(first).relation;
  auto same = d_.Decode(Relation(16384, "public", "accounts", 'd',
                                 {{"id", true}, {"name", false}, {"balance", false}}));
  EXPECT_FALSE(As<RelationEvent>(same).changed);
  auto renamed = d_.Decode(Relation(16384, "public", "accounts", 'f',
                                    {{"id", true}, {"name", true}, {"balance", true}}));
  EXPECT_TRUE(As<RelationEvent>(renamed).changed);
  EXPECT_EQ(As<RelationEvent>(renamed).relation->key_columns, (std::vector<int>{0, 1, 2}));
  // Events already returned keep the description they were decoded with.
  EXPECT_EQ(before->key_columns, std::vector<int>{0});
  auto after = d_.Decode(Msg('D').U32(16384).U8('O').U16(3).Text("1").Text("n").Null());
  EXPECT_EQ(As<ChangeEvent>(after).old_key, Key({"1", "n", std::nullopt}));
}

// Every proper prefix of a well-formed message is refused as DATA_LOSS, and a
// refused Begin or Commit leaves the transaction state as it was.
TEST(DecoderTruncationTest, EveryPrefixIsRejected) {
  const std::vector<std::string> messages = {
      Relation(16384, "public", "accounts", 'd', {{"id", true}, {"name", false}}),
      Begin(0x10, 0, 1),
      Msg('I').U32(16384).U8('N').U16(2).Text("42").Text("ann").str(),
      Msg('U').U32(16384).U8('K').U16(2).Text("41").Null().U8('N').U16(2).Text("42").Null().str(),
      Msg('D').U32(16384).U8('K').U16(2).Text("42").Null().str(),
      Msg('T').U32(1).U8(0).U32(16384).str(),
      Msg('O').U64(1).Str("origin").str(),
      Msg('Y').U32(1).Str("s").Str("t").str(),
      Commit(0x10, 0x20, 0),
  };
  PgOutputDecoder d;
  for (const std::string& m : messages) {
    for (size_t len = 0; len < m.size(); ++len) {
      const bool in_txn = d.in_transaction();
      absl::StatusOr<std::optional<LogicalEvent>> e = d.Decode(absl::string_view(m).substr(0, len));
      EXPECT_EQ(e.status().code(), absl::StatusCode::kDataLoss)
          << "message '" << m[0] << "' cut to " << len << " bytes: " << e.status();
      EXPECT_EQ(d.in_transaction(), in_txn);
    }
    absl::StatusOr<std::optional<LogicalEvent>> whole = d.Decode(m);
    EXPECT_TRUE(whole.ok()) << "message '" << m[0] << "': " << whole.status();
  }
  EXPECT_FALSE(d.in_transaction());
}

TEST_F(DecoderTest, RejectsWrongLengths) {
  struct Case {
    std::string message;
    std::string expect;
  };
  const std::vector<Case> cases = {
      // A value's length runs past the end of the message.
      {Msg('I').U32(16384).U8('N').U16(3).U8('t').U32(1000).Raw("42").str(), "runs past the end"},
      // A length of 2^31 and more reads as negative.
      {Msg('I').U32(16384).U8('N').U16(3).U8('t').U32(0x80000000).Raw("42").str(),
       "negative length"},
      {Msg('I').U32(16384).U8('N').U16(3).U8('t').U32(0xffffffff).str(), "negative length"},
      // Fewer or more columns than the relation was described with.
      {Msg('I').U32(16384).U8('N').U16(2).Text("1").Text("2").str(), "has 2 columns"},
      {Msg('I').U32(16384).U8('N').U16(65535).Text("1").str(), "has 65535 columns"},
      // Bytes after a complete message.
      {Msg('I').U32(16384).U8('N').U16(3).Text("1").Null().Null().Raw("x").str(), "trailing bytes"},
      {Msg('B').U64(1).U64(0).U32(1).U8(0).str(), "trailing bytes"},
      // Truncate announcing more ids than it carries, or fewer.
      {Msg('T').U32(1000000).U8(0).U32(16384).str(), "relation ids announced"},
      {Msg('T').U32(1).U8(0).U32(16384).U32(16390).str(), "relation ids announced"},
      {Msg('T').U32(0).U8(0).str(), "no relations"},
      // A relation announcing 65535 columns in a few bytes.
      {Msg('R').U32(5).Str("s").Str("t").U8('d').U16(65535).U8(1).Str("a").U32(25).str(),
       "truncated"},
      {Msg('R').U32(5).Str("s").Str("t").str(), "truncated"},
      {Msg('R').U32(5).Raw("no terminator").str(), "unterminated schema"},
  };
  for (const Case& c : cases) {
    absl::Status s = DecodeError(c.message);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << c.expect << ": " << s;
    EXPECT_TRUE(absl::StrContains(s.message(), c.expect)) << s;
  }
  // None of them disturbed what the decoder knows.
  EXPECT_TRUE(d_.in_transaction());
  EXPECT_EQ(d_.relation_count(), 2u);
}

TEST_F(DecoderTest, RejectsUnknownTypesAndKinds) {
  const std::vector<std::string> cases = {
      Msg('Z').U32(1).str(),                             // unknown message
      Msg('S').U32(1).U8(1).str(),                       // stream start (protocol 2)
      Msg('M').U8(1).U64(1).Str("p").U32(0).str(),       // logical message, not asked for
      Msg('I').U32(16384).U8('N').U16(3).U8('x').str(),  // unknown value kind
      Msg('I').U32(16384).U8('N').U16(3).U8('b').U32(1).Raw("1").str(),  // binary, not asked
      Msg('I').U32(16384).U8('K').U16(3).Text("1").Null().Null().str(),  // insert with a key
      Msg('U').U32(16384).U8('X').U16(3).Text("1").Null().Null().str(),
      Msg('U').U32(16384).U8('K').U16(3).Text("1").Null().Null().U8('K').str(),
      Msg('D').U32(16384).U8('N').U16(3).Text("1").Null().Null().str(),  // delete without old
      Relation(77, "s", "t", 'z', {{"a", true}}),                        // replica identity
      Relation(0, "s", "t", 'd', {{"a", true}}),                         // invalid OID
      std::string(),                                                     // empty
  };
  for (const std::string& m : cases) {
    absl::Status s = DecodeError(m);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss)
        << (m.empty() ? "empty" : m.substr(0, 1)) << ": " << s;
    EXPECT_FALSE(s.message().empty());
  }
  EXPECT_EQ(d_.relation_count(), 2u);
}

TEST(DecoderOrderTest, RejectsMessagesOutOfPlace) {
  PgOutputDecoder d;
  ASSERT_TRUE(d.Decode(Relation(10, "s", "t", 'd', {{"a", true}})).ok());
  const std::string insert = Msg('I').U32(10).U8('N').U16(1).Text("1").str();
  EXPECT_TRUE(absl::StrContains(d.Decode(insert).status().message(), "outside a transaction"));
  EXPECT_TRUE(absl::StrContains(d.Decode(Msg('T').U32(1).U8(0).U32(10)).status().message(),
                                "outside a transaction"));
  EXPECT_TRUE(
      absl::StrContains(d.Decode(Commit(1, 2, 0)).status().message(), "outside a transaction"));
  ASSERT_TRUE(d.Decode(Begin(0x50, 0, 1)).ok());
  EXPECT_TRUE(
      absl::StrContains(d.Decode(Begin(0x60, 0, 2)).status().message(), "inside a transaction"));
  EXPECT_TRUE(
      absl::StrContains(d.Decode(Msg('I').U32(11).U8('N').U16(1).Text("1")).status().message(),
                        "relation id 11 was never described"));
  EXPECT_TRUE(absl::StrContains(d.Decode(Msg('T').U32(1).U8(0).U32(11)).status().message(),
                                "relation id 11 was never described"));
  EXPECT_TRUE(absl::StrContains(d.Decode(Commit(0x51, 0x70, 0)).status().message(),
                                "differs from the Begin's final LSN 0/50"));
  EXPECT_TRUE(absl::StrContains(d.Decode(Commit(0x50, 0x40, 0)).status().message(),
                                "before the commit LSN"));
  EXPECT_TRUE(d.in_transaction());
  auto ok = d.Decode(Commit(0x50, 0x70, 0));
  EXPECT_EQ(As<CommitEvent>(ok).end_lsn, 0x70u);
}

// Logical decoding messages (pg_logical_emit_message), when the stream asked
// for them: a transactional one inside its transaction, a non-transactional
// one anywhere; anything malformed is DATA_LOSS and changes nothing.
TEST(DecoderMessageTest, MessagesAreDecodedWhenAskedFor) {
  PgOutputDecoder d(/*messages=*/true);
  const std::string transactional = Msg('M')
                                        .U8(1)
                                        .U64(0x4000)
                                        .Str("poolside.fence")
                                        .U32(3)
                                        .Raw(absl::string_view("a\0b", 3))
                                        .str();
  EXPECT_TRUE(absl::StrContains(d.Decode(transactional).status().message(),
                                "transactional message outside a transaction"));
  auto loose = d.Decode(Msg('M').U8(0).U64(0x10).Str("").U32(0));
  EXPECT_FALSE(As<MessageEvent>(loose).transactional);
  EXPECT_EQ(As<MessageEvent>(loose).lsn, 0x10u);
  EXPECT_EQ(As<MessageEvent>(loose).prefix, "");
  EXPECT_EQ(As<MessageEvent>(loose).content, "");
  EXPECT_FALSE(d.in_transaction());

  ASSERT_TRUE(d.Decode(Begin(0x5000, 0, 3)).ok());
  for (size_t len = 0; len < transactional.size(); ++len) {
    absl::Status s = d.Decode(absl::string_view(transactional).substr(0, len)).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << "cut to " << len << ": " << s;
  }
  const std::vector<std::pair<std::string, std::string>> malformed = {
      {Msg('M').U8(2).U64(1).Str("p").U32(0).str(), "unknown flags 0x02"},
      {Msg('M').U8(1).U64(1).Str("p").U32(5).Raw("abc").str(), "runs past the end"},
      {Msg('M').U8(1).U64(1).Str("p").U32(0xffffffff).str(), "runs past the end"},
      {Msg('M').U8(1).U64(1).Str("p").U32(1).Raw("ab").str(), "trailing bytes"},
      {Msg('M').U8(1).U64(1).Raw("p").str(), "unterminated prefix"},
  };
  for (const auto& [m, expect] : malformed) {
    absl::Status s = d.Decode(m).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << expect << ": " << s;
    EXPECT_TRUE(absl::StrContains(s.message(), expect)) << s;
  }
  EXPECT_TRUE(d.in_transaction());
  auto inside = d.Decode(transactional);
  EXPECT_TRUE(As<MessageEvent>(inside).transactional);
  EXPECT_EQ(As<MessageEvent>(inside).lsn, 0x4000u);
  EXPECT_EQ(As<MessageEvent>(inside).prefix, "poolside.fence");
  EXPECT_EQ(As<MessageEvent>(inside).content, std::string("a\0b", 3));
  EXPECT_TRUE(d.in_transaction()) << "a message neither opens nor closes a transaction";
  EXPECT_TRUE(d.Decode(Commit(0x5000, 0x5100, 0)).ok());
  EXPECT_FALSE(d.in_transaction());

  // Not asked for: refused like any unknown message.
  PgOutputDecoder plain;
  absl::Status s = plain.Decode(Msg('M').U8(0).U64(0x10).Str("").U32(0)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "not asked for")) << s;
}

TEST(DecoderLimitTest, RelationsAreBounded) {
  PgOutputDecoder d;
  for (uint32_t id = 1; id <= PgOutputDecoder::kMaxRelations; ++id) {
    ASSERT_TRUE(d.Decode(Relation(id, "s", "t", 'n', {})).ok()) << id;
  }
  // Describing a known relation again is fine; a new one is refused.
  EXPECT_TRUE(d.Decode(Relation(1, "s", "t2", 'n', {})).ok());
  absl::Status s =
      d.Decode(Relation(PgOutputDecoder::kMaxRelations + 1, "s", "t", 'n', {})).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(d.relation_count(), PgOutputDecoder::kMaxRelations);
}

TEST(ReplicationMessageTest, ParsesXLogDataAndKeepalive) {
  const std::string payload = Begin(0x30, 0, 9);
  // The payload points into the message: keep it alive.
  const std::string xlog = Msg('w').U64(0x10).U64(0x40).U64(0).Raw(payload).str();
  auto w = ParseReplicationMessage(xlog);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->kind, ReplicationMessage::Kind::kXLogData);
  EXPECT_EQ(w->wal_start, 0x10u);
  EXPECT_EQ(w->wal_end, 0x40u);
  EXPECT_EQ(w->payload, payload);

  auto k = ParseReplicationMessage(Msg('k').U64(0x1234567890).U64(0).U8(1));
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_EQ(k->kind, ReplicationMessage::Kind::kKeepalive);
  EXPECT_EQ(k->wal_end, 0x1234567890u);
  EXPECT_TRUE(k->reply_requested);
  EXPECT_EQ(k->send_time, TimeFromPostgresMicros(0));
}

TEST(ReplicationMessageTest, RejectsMalformedFraming) {
  const std::vector<std::string> cases = {
      std::string(),
      Msg('w').U64(1).U64(2).U64(3).str(),       // no payload
      Msg('w').U64(1).U64(2).str(),              // truncated header
      Msg('k').U64(1).U64(2).str(),              // no reply flag
      Msg('k').U64(1).U64(2).U8(0).U8(0).str(),  // trailing byte
      Msg('d').U64(1).str(),                     // unknown type
  };
  for (const std::string& m : cases) {
    absl::Status s = ParseReplicationMessage(m).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  }
}

TEST(ReplicationMessageTest, EncodesTheStatusUpdate) {
  const absl::Time now = TimeFromPostgresMicros(0x0102030405060708);
  const std::string m = EncodeStatusUpdate(0x10, 0x20, 0x30, now, true);
  const std::string want =
      Msg('r').U64(0x10).U64(0x20).U64(0x30).U64(0x0102030405060708).U8(1).str();
  EXPECT_EQ(m, want);
}

TEST(LsnTest, FormatsAndParses) {
  EXPECT_EQ(FormatLsn(0x16B374D848), "16/B374D848");
  EXPECT_EQ(FormatLsn(0), "0/0");
  EXPECT_EQ(*ParseLsn("16/B374D848"), 0x16B374D848u);
  EXPECT_EQ(*ParseLsn("ffffffff/ffffffff"), ~uint64_t{0});
  for (const char* bad : {"", "/", "1/", "/1", "1/2/3", "x/1", "123456789/0", "1 /2", "-1/0"}) {
    EXPECT_EQ(ParseLsn(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(TimeTest, PostgresEpochAndExtremes) {
  EXPECT_EQ(TimeFromPostgresMicros(0),
            absl::FromCivil(absl::CivilSecond(2000, 1, 1, 0, 0, 0), absl::UTCTimeZone()));
  EXPECT_EQ(PostgresMicrosFromTime(TimeFromPostgresMicros(123456789)), 123456789);
  EXPECT_EQ(TimeFromPostgresMicros(INT64_MAX), absl::InfiniteFuture());
  EXPECT_EQ(TimeFromPostgresMicros(INT64_MIN), absl::InfinitePast());
  EXPECT_EQ(PostgresMicrosFromTime(absl::InfinitePast()), INT64_MIN);
}

}  // namespace
}  // namespace poolside::db
