#include "common/db/sql_quote.h"

#include <string>

#include "absl/strings/string_view.h"

namespace poolside::db {
namespace {

// `text` between two `quote`s, each `quote` inside doubled.
std::string Enclose(absl::string_view text, char quote) {
  std::string out(1, quote);
  for (char c : text) {
    if (c == quote) out.push_back(quote);
    out.push_back(c);
  }
  out.push_back(quote);
  return out;
}

}  // namespace

std::string QuoteIdentifier(absl::string_view name) { return Enclose(name, '"'); }

std::string QuoteLiteral(absl::string_view text) { return Enclose(text, '\''); }

}  // namespace poolside::db
