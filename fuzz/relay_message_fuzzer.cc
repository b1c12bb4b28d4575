// libFuzzer target for services/query/relay_message: the NOTIFY payloads of
// the cache's WAL relay. Any session that can connect to the database can
// NOTIFY on the relay's channel, so every replica parses payloads anyone may
// have written before it checks who sent them.
//
// Besides memory errors (ASan/UBSan), it checks the codec's contracts:
// - a refused payload is INVALID_ARGUMENT with a short, non-empty message;
// - what decodes, encoded again, decodes to the same message: the same
//   header (but `final`, which the encoder sets on a batch's last payload,
//   and `seq`, which numbers the payloads) and the same tables, in order,
//   over however many payloads the encoder made, each under the NOTIFY limit.
//
// Input: the payload itself.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/string_view.h"
#include "services/query/relay_message.h"

namespace {

namespace query = poolside::query;

[[noreturn]] void Fail(const char* what, absl::string_view detail) {
  fprintf(stderr, "relay_message_fuzzer: %s: \"%s\"\n", what,
          absl::CEscape(detail.substr(0, 300)).c_str());
  abort();
}

bool SameTable(const query::RelayTable& a, const query::RelayTable& b) {
  return a.name == b.name && a.change == b.change && a.rows == b.rows;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view payload(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<query::RelayMessage> m = query::DecodeRelay(payload);
  if (!m.ok()) {
    if (m.status().code() != absl::StatusCode::kInvalidArgument) {
      Fail("unexpected error code", m.status().ToString());
    }
    if (m.status().message().empty() || m.status().message().size() > 1024) {
      Fail("error message empty or unbounded", m.status().message());
    }
    return 0;
  }
  if (!query::IsRelayPayload(payload)) Fail("decoded but not a relay payload", payload);

  const std::vector<std::string> again = query::EncodeRelay(m->header, m->tables);
  if (again.empty()) Fail("encoded to nothing", payload);
  std::vector<query::RelayTable> tables;
  for (size_t i = 0; i < again.size(); ++i) {
    if (again[i].size() > query::kMaxRelayPayloadBytes) Fail("payload over the limit", again[i]);
    absl::StatusOr<query::RelayMessage> d = query::DecodeRelay(again[i]);
    if (!d.ok()) Fail("own encoding refused", d.status().ToString());
    const query::RelayHeader& h = d->header;
    const query::RelayHeader& want = m->header;
    if (h.kind != want.kind || h.holder != want.holder || h.through != want.through ||
        h.lagging != want.lagging || h.oldest_commit_micros != want.oldest_commit_micros) {
      Fail("header changed by a round trip", again[i]);
    }
    if (h.seq != want.seq + i) Fail("payloads not numbered in order", again[i]);
    if (h.final != (i + 1 == again.size())) Fail("final not on the last payload only", again[i]);
    tables.insert(tables.end(), d->tables.begin(), d->tables.end());
  }
  // The encoder may split one table's rows over payloads; joined back they
  // are the same entries.
  std::vector<query::RelayTable> joined;
  for (query::RelayTable& t : tables) {
    if (!joined.empty() && joined.back().name == t.name && joined.back().change == t.change &&
        t.change == query::RelayTable::kRows) {
      joined.back().rows.insert(joined.back().rows.end(), t.rows.begin(), t.rows.end());
    } else {
      joined.push_back(std::move(t));
    }
  }
  std::vector<query::RelayTable> expected;
  for (const query::RelayTable& t : m->tables) {
    // Dropped by the encoder, as documented: a name that cannot fit in a
    // payload, and rows of a table with no row in them (nothing changed).
    // (The encoder keeps 96 bytes for the header line; an entry is
    // "<len>:<name> <c>" and at least one " <16 hex>" and a newline.)
    const size_t entry = std::to_string(t.name.size()).size() + 1 + t.name.size() + 2 + 18;
    if (entry > query::kMaxRelayPayloadBytes - 96) continue;
    if (t.change == query::RelayTable::kRows && t.rows.empty()) continue;
    if (!expected.empty() && expected.back().name == t.name && expected.back().change == t.change &&
        t.change == query::RelayTable::kRows) {
      expected.back().rows.insert(expected.back().rows.end(), t.rows.begin(), t.rows.end());
    } else {
      expected.push_back(t);
    }
  }
  if (joined.size() != expected.size()) Fail("tables changed by a round trip", payload);
  for (size_t i = 0; i < joined.size(); ++i) {
    if (!SameTable(joined[i], expected[i])) Fail("a table changed by a round trip", payload);
  }
  return 0;
}
