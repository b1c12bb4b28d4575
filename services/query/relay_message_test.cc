#include "services/query/relay_message.h"

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace poolside::query {
namespace {

RelayHeader Header() {
  RelayHeader h;
  h.kind = RelayHeader::kChanges;
  h.holder = 0x0123456789abcdefULL;
  h.seq = 7;
  h.through = 0x16B374D848ULL;
  h.lagging = true;
  h.oldest_commit_micros = 789000000123;
  return h;
}

TEST(RelayMessageTest, RoundTripsInOnePayload) {
  std::vector<RelayTable> tables(3);
  tables[0].name = "public.items";
  tables[0].rows = {1, 0xffffffffffffffffULL};
  tables[1].name = "odd schema.a\nb:c 1:x";  // names may hold anything
  tables[1].change = RelayTable::kWhole;
  tables[2].name = "public.t";
  tables[2].change = RelayTable::kDefinition;
  const std::vector<std::string> payloads = EncodeRelay(Header(), tables);
  ASSERT_EQ(payloads.size(), 1u);
  EXPECT_TRUE(IsRelayPayload(payloads[0]));
  absl::StatusOr<RelayMessage> m = DecodeRelay(payloads[0]);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->header.kind, RelayHeader::kChanges);
  EXPECT_EQ(m->header.holder, 0x0123456789abcdefULL);
  EXPECT_EQ(m->header.seq, 7u);
  EXPECT_EQ(m->header.through, 0x16B374D848ULL);
  EXPECT_TRUE(m->header.final);
  EXPECT_TRUE(m->header.lagging);
  EXPECT_EQ(m->header.oldest_commit_micros, 789000000123);
  ASSERT_EQ(m->tables.size(), 3u);
  EXPECT_EQ(m->tables[0].name, "public.items");
  EXPECT_EQ(m->tables[0].change, RelayTable::kRows);
  EXPECT_EQ(m->tables[0].rows, tables[0].rows);
  EXPECT_EQ(m->tables[1].name, tables[1].name);
  EXPECT_EQ(m->tables[1].change, RelayTable::kWhole);
  EXPECT_EQ(m->tables[2].change, RelayTable::kDefinition);

  RelayHeader beat;
  beat.kind = RelayHeader::kHeartbeat;
  beat.holder = 1;
  const std::vector<std::string> one = EncodeRelay(beat, {});
  ASSERT_EQ(one.size(), 1u);
  m = DecodeRelay(one[0]);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->header.kind, RelayHeader::kHeartbeat);
  EXPECT_TRUE(m->tables.empty());
  EXPECT_FALSE(IsRelayPayload("public.items")) << "a trigger's payload";
}

TEST(RelayMessageTest, LargeBatchesAreSplitAndOnlyTheLastIsFinal) {
  std::vector<RelayTable> tables(5);
  for (int i = 0; i < 5; ++i) {
    tables[i].name = absl::StrCat("public.table_", i);
    for (uint64_t r = 0; r < 1000; ++r) tables[i].rows.push_back(r * 7919 + i);
  }
  tables[3].change = RelayTable::kWhole;
  tables[3].rows.clear();
  const std::vector<std::string> payloads = EncodeRelay(Header(), tables);
  ASSERT_GT(payloads.size(), 1u);
  std::vector<std::vector<uint64_t>> rows(5);
  std::vector<bool> whole(5, false);
  for (size_t i = 0; i < payloads.size(); ++i) {
    EXPECT_LT(payloads[i].size(), 8000u);
    EXPECT_LE(payloads[i].size(), kMaxRelayPayloadBytes);
    absl::StatusOr<RelayMessage> m = DecodeRelay(payloads[i]);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->header.seq, 7 + i);
    EXPECT_EQ(m->header.final, i + 1 == payloads.size());
    for (const RelayTable& t : m->tables) {
      const int n = t.name.back() - '0';
      if (t.change == RelayTable::kWhole) whole[n] = true;
      rows[n].insert(rows[n].end(), t.rows.begin(), t.rows.end());
    }
  }
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(rows[i], tables[i].rows) << i;
    EXPECT_EQ(whole[i], i == 3);
  }
}

TEST(RelayMessageTest, MalformedPayloadsAreRefused) {
  const std::string good =
      EncodeRelay(Header(), {RelayTable{"public.t", RelayTable::kRows, {5}}})[0];
  ASSERT_TRUE(DecodeRelay(good).ok());
  // Every truncation of a valid payload is malformed, but the one ending
  // with the header line (a message without entries).
  const size_t header_end = good.find('\n') + 1;
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_EQ(DecodeRelay(good.substr(0, n)).ok(), n == header_end)
        << n << ": " << good.substr(0, n);
  }
  for (const char* bad : {
           "psw1 c 0123456789abcdef 1 0 1 0 0",                                 // no newline
           "psw1 q 0123456789abcdef 1 0 1 0 0\n",                               // kind
           "psw1 c 0123456789abcde 1 0 1 0 0\n",                                // holder length
           "psw1 c 0x23456789abcdef 1 0 1 0 0\n",                               // holder digits
           "psw1 c 0123456789abcdef -1 0 1 0 0\n",                              // seq
           "psw1 c 0123456789abcdef 1 10000000000000000 1 0 0\n",               // through
           "psw1 c 0123456789abcdef 1 0 2 0 0\n",                               // final
           "psw1 c 0123456789abcdef 1 0 1 0 0 9\n",                             // fields
           "psw1 c 0123456789abcdef 1 0 1 0 0\n8:public.t r 0000000000000005",  // no newline
           "psw1 c 0123456789abcdef 1 0 1 0 0\n8:public.t w 0000000000000005\n",
           "psw1 c 0123456789abcdef 1 0 1 0 0\n8:public.t r\n",
           "psw1 c 0123456789abcdef 1 0 1 0 0\n8:public.t r 000000000000005\n",
           "psw1 c 0123456789abcdef 1 0 1 0 0\n8:public.t r 000000000000000g\n",
           "psw1 c 0123456789abcdef 1 0 1 0 0\n8:public.t z\n",
           "psw1 c 0123456789abcdef 1 0 1 0 0\n0: w\n",
           "psw1 c 0123456789abcdef 1 0 1 0 0\n99999:x w\n",
           "psw1 c 0123456789abcdef 1 0 1 0 0\n-8:public.t w\n",
       }) {
    EXPECT_FALSE(DecodeRelay(bad).ok()) << bad;
  }
}

// A batch names its transactions in every payload; the pseudo-entry that
// carries them is never taken for a table by this decoder, and an older one
// takes it for a table nobody reads (a name no table can have).
TEST(RelayMessageTest, TransactionsTravelInEveryPayloadOfTheirBatch) {
  EXPECT_GT(std::string(kRelayXidsMarker).size(), 63u + 1 + 63);
  RelayHeader h = Header();
  h.xids = std::vector<uint32_t>{3, 0xffffffffu, 0x1234};
  std::vector<RelayTable> tables(3);
  for (int i = 0; i < 3; ++i) {
    tables[i].name = absl::StrCat("public.table_", i);
    for (uint64_t r = 0; r < 400; ++r) tables[i].rows.push_back(r * 31 + i);
  }
  const std::vector<std::string> payloads = EncodeRelay(h, tables);
  ASSERT_GT(payloads.size(), 1u);
  size_t rows = 0;
  for (const std::string& p : payloads) {
    EXPECT_LE(p.size(), kMaxRelayPayloadBytes);
    absl::StatusOr<RelayMessage> m = DecodeRelay(p);
    ASSERT_TRUE(m.ok()) << m.status();
    ASSERT_TRUE(m->header.xids.has_value());
    EXPECT_EQ(*m->header.xids, *h.xids);
    for (const RelayTable& t : m->tables) {
      EXPECT_TRUE(absl::StartsWith(t.name, "public.table_")) << t.name;
      rows += t.rows.size();
    }
  }
  EXPECT_EQ(rows, 1200u) << "no row made room for the transactions";

  // Without them (a heartbeat, an older holder): none.
  h.xids.reset();
  absl::StatusOr<RelayMessage> m = DecodeRelay(EncodeRelay(h, {tables[0]})[0]);
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->header.xids.has_value());
  // Too many to name: none, and the changes all the same.
  h.xids = std::vector<uint32_t>(kMaxRelayXids + 1, 7);
  m = DecodeRelay(EncodeRelay(h, {RelayTable{"public.t", RelayTable::kWhole, {}}})[0]);
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->header.xids.has_value());
  ASSERT_EQ(m->tables.size(), 1u);
  EXPECT_EQ(m->tables[0].name, "public.t");
  // Payloads too small to carry them beside a table: the table goes, alone.
  h.xids = std::vector<uint32_t>(kMaxRelayXids, 7);
  const std::vector<std::string> small =
      EncodeRelay(h, {RelayTable{"public.t", RelayTable::kRows, {1, 2}}}, 400);
  ASSERT_EQ(small.size(), 1u);
  m = DecodeRelay(small[0]);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_FALSE(m->header.xids.has_value());
  ASSERT_EQ(m->tables.size(), 1u);
  EXPECT_EQ(m->tables[0].rows, (std::vector<uint64_t>{1, 2}));
}

TEST(RelayMessageTest, UnreadableTransactionListsNameNoneAndTheRestApplies) {
  const std::string head = "psw1 c 0123456789abcdef 1 0 1 0 0\n";
  const std::string marker = kRelayXidsMarker;
  auto entry = [](const std::string& name, const std::string& change) {
    return absl::StrCat(name.size(), ":", name, " ", change, "\n");
  };
  ASSERT_TRUE(DecodeRelay(head + entry(marker + " 0000000a", "w")).ok());
  std::string many = marker;
  for (size_t i = 0; i <= kMaxRelayXids; ++i) many += " 0000000a";
  for (const std::string& bad : {
           entry(marker, "w"),                                                   // no transaction
           entry(marker + " a", "w"),                                            // short
           entry(marker + " 0000000g", "w"),                                     // not hex
           entry(marker + " 00000000a", "w"),                                    // long
           entry(marker + "0000000a", "w"),                                      // no separator
           entry(marker + " 0000000a", "w") + entry(marker + " 0000000b", "w"),  // twice
           entry(many, "w"),
       }) {
    // The message's invalidations still stand; only nothing may be skipped.
    absl::StatusOr<RelayMessage> m = DecodeRelay(head + bad + entry("public.items", "w"));
    ASSERT_TRUE(m.ok()) << bad << ": " << m.status();
    EXPECT_FALSE(m->header.xids.has_value()) << bad;
    ASSERT_EQ(m->tables.size(), 1u) << bad;
    EXPECT_EQ(m->tables[0].name, "public.items");
    EXPECT_EQ(m->tables[0].change, RelayTable::kWhole);
  }
  // Only a whole-table entry carries them; a marker-like name elsewhere is a
  // table's name as far as the format goes.
  absl::StatusOr<RelayMessage> m = DecodeRelay(head + entry(marker + " 0000000a", "d"));
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->header.xids.has_value());
  EXPECT_EQ(m->tables.size(), 1u);
}

}  // namespace
}  // namespace poolside::query
