#include "services/query/relay_message.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace poolside::query {
namespace {

constexpr absl::string_view kMagic = "psw1 ";

std::string HeaderLine(const RelayHeader& h, uint64_t seq, bool final) {
  return absl::StrFormat("psw1 %c %016x %d %x %d %d %d\n", static_cast<char>(h.kind), h.holder, seq,
                         h.through, final ? 1 : 0, h.lagging ? 1 : 0, h.oldest_commit_micros);
}

std::string EntryPrefix(const RelayTable& t) {
  return absl::StrCat(t.name.size(), ":", t.name, " ", std::string(1, static_cast<char>(t.change)));
}

absl::Status Malformed(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("malformed relay message: ", what));
}

bool ParseHex(absl::string_view s, uint64_t* out) {
  if (s.empty() || s.size() > 16) return false;
  return s.find_first_not_of("0123456789abcdef") == absl::string_view::npos &&
         absl::SimpleHexAtoi(s, out);
}

// The pseudo-table entry's name: the marker and the xids.
std::string XidsEntryName(const std::vector<uint32_t>& xids) {
  std::string name = kRelayXidsMarker;
  for (uint32_t xid : xids) absl::StrAppend(&name, absl::StrFormat(" %08x", xid));
  return name;
}

absl::StatusOr<std::vector<uint32_t>> ParseXids(absl::string_view rest) {
  std::vector<uint32_t> xids;
  while (!rest.empty()) {
    if (rest.size() < 9 || rest[0] != ' ') return Malformed("transaction list");
    uint64_t xid = 0;
    if (!ParseHex(rest.substr(1, 8), &xid)) return Malformed("transaction id");
    xids.push_back(static_cast<uint32_t>(xid));
    rest.remove_prefix(9);
  }
  if (xids.empty() || xids.size() > kMaxRelayXids) return Malformed("transaction count");
  return xids;
}

}  // namespace

// 128 bytes: longer than any "schema.table" (at most 127).
const char kRelayXidsMarker[] =
    "~poolside.relay.transactions~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~"
    "~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~";
static_assert(sizeof(kRelayXidsMarker) - 1 == 128, "longer than any table's name");

bool IsRelayPayload(absl::string_view payload) { return absl::StartsWith(payload, kMagic); }

std::vector<std::string> EncodeRelay(const RelayHeader& header,
                                     const std::vector<RelayTable>& tables, size_t max_bytes) {
  // Room for the header line with the largest numbers it can hold.
  constexpr size_t kHeaderRoom = 96;
  // The transactions go first in every payload, if they leave room enough.
  std::string xids_entry;
  if (header.xids.has_value() && !header.xids->empty() && header.xids->size() <= kMaxRelayXids) {
    RelayTable pseudo;
    pseudo.name = XidsEntryName(*header.xids);
    pseudo.change = RelayTable::kWhole;
    xids_entry = absl::StrCat(EntryPrefix(pseudo), "\n");
    if (xids_entry.size() > (max_bytes - kHeaderRoom) / 2) xids_entry.clear();
    // Never at the cost of a table that would fit without them.
    for (const RelayTable& t : tables) {
      const size_t need = EntryPrefix(t).size() + 1 + 17;
      if (need <= max_bytes - kHeaderRoom && need > max_bytes - kHeaderRoom - xids_entry.size()) {
        xids_entry.clear();
      }
    }
  }
  std::vector<std::string> bodies(1, xids_entry);
  auto room = [&] { return max_bytes - kHeaderRoom - bodies.back().size(); };
  for (const RelayTable& t : tables) {
    const std::string prefix = EntryPrefix(t);
    if (prefix.size() + 1 + 17 > max_bytes - kHeaderRoom) continue;  // cannot fit anywhere
    if (t.change != RelayTable::kRows) {
      if (prefix.size() + 1 > room()) bodies.emplace_back(xids_entry);
      absl::StrAppend(&bodies.back(), prefix, "\n");
      continue;
    }
    size_t next = 0;
    while (next < t.rows.size()) {
      if (prefix.size() + 1 + 17 > room()) bodies.emplace_back(xids_entry);
      std::string line = prefix;
      while (next < t.rows.size() && line.size() + 17 + 1 <= room()) {
        absl::StrAppend(&line, absl::StrFormat(" %016x", t.rows[next++]));
      }
      absl::StrAppend(&bodies.back(), line, "\n");
    }
  }
  std::vector<std::string> out;
  out.reserve(bodies.size());
  for (size_t i = 0; i < bodies.size(); ++i) {
    out.push_back(
        absl::StrCat(HeaderLine(header, header.seq + i, i + 1 == bodies.size()), bodies[i]));
  }
  return out;
}

absl::StatusOr<RelayMessage> DecodeRelay(absl::string_view payload) {
  if (!IsRelayPayload(payload)) return Malformed("no psw1 header");
  const size_t eol = payload.find('\n');
  if (eol == absl::string_view::npos) return Malformed("header not terminated");
  std::vector<absl::string_view> f = absl::StrSplit(payload.substr(0, eol), ' ');
  if (f.size() != 8) return Malformed("header fields");
  RelayMessage m;
  RelayHeader& h = m.header;
  bool xids_unreadable = false;
  if (f[1].size() != 1 || std::string("hcbx").find(f[1][0]) == std::string::npos) {
    return Malformed("kind");
  }
  h.kind = static_cast<RelayHeader::Kind>(f[1][0]);
  if (f[2].size() != 16 || !ParseHex(f[2], &h.holder)) return Malformed("holder");
  if (!absl::SimpleAtoi(f[3], &h.seq) || f[3].find_first_of("+- ") != absl::string_view::npos) {
    return Malformed("seq");
  }
  if (!ParseHex(f[4], &h.through)) return Malformed("through");
  if (f[5] != "0" && f[5] != "1") return Malformed("final");
  h.final = f[5] == "1";
  if (f[6] != "0" && f[6] != "1") return Malformed("lagging");
  h.lagging = f[6] == "1";
  if (!absl::SimpleAtoi(f[7], &h.oldest_commit_micros) ||
      f[7].find_first_of("+ ") != absl::string_view::npos) {
    return Malformed("oldest_commit");
  }
  absl::string_view rest = payload.substr(eol + 1);
  while (!rest.empty()) {
    const size_t colon = rest.find(':');
    if (colon == absl::string_view::npos || colon == 0 || colon > 4)
      return Malformed("entry length");
    size_t len = 0;
    if (!absl::SimpleAtoi(rest.substr(0, colon), &len) ||
        rest.substr(0, colon).find_first_not_of("0123456789") != absl::string_view::npos ||
        len == 0 || colon + 1 + len + 2 > rest.size()) {
      return Malformed("entry length");
    }
    RelayTable t;
    t.name = std::string(rest.substr(colon + 1, len));
    rest.remove_prefix(colon + 1 + len);
    if (rest[0] != ' ') return Malformed("entry separator");
    const size_t line_end = rest.find('\n');
    if (line_end == absl::string_view::npos) return Malformed("entry not terminated");
    absl::string_view body = rest.substr(1, line_end - 1);
    rest.remove_prefix(line_end + 1);
    if (body.empty()) return Malformed("entry change");
    const char change = body[0];
    body.remove_prefix(1);
    if (change == 'w' || change == 'd') {
      if (!body.empty()) return Malformed("whole-table entry with rows");
      t.change = static_cast<RelayTable::Change>(change);
      if (change == 'w' && absl::StartsWith(t.name, kRelayXidsMarker)) {
        // A list this version cannot read (another version's format, more
        // transactions than it takes) or a second one names none: the
        // message's invalidations still apply, only none is skipped.
        absl::StatusOr<std::vector<uint32_t>> xids =
            ParseXids(absl::string_view(t.name).substr(sizeof(kRelayXidsMarker) - 1));
        if (xids.ok() && !xids_unreadable && !h.xids.has_value()) {
          h.xids = *std::move(xids);
        } else {
          xids_unreadable = true;
          h.xids.reset();
        }
        continue;
      }
    } else if (change == 'r') {
      t.change = RelayTable::kRows;
      if (body.empty()) return Malformed("row entry without rows");
      while (!body.empty()) {
        if (body.size() < 17 || body[0] != ' ') return Malformed("row hash");
        uint64_t row = 0;
        if (!ParseHex(body.substr(1, 16), &row) || body.substr(1, 16).size() != 16) {
          return Malformed("row hash");
        }
        t.rows.push_back(row);
        body.remove_prefix(17);
      }
    } else {
      return Malformed("entry change");
    }
    m.tables.push_back(std::move(t));
  }
  return m;
}

}  // namespace poolside::query
