#include "common/db/conninfo.h"

#include <libpq-fe.h>

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace poolside::db {

absl::StatusOr<Conninfo> Conninfo::Parse(absl::string_view dsn) {
  char* err = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(std::string(dsn).c_str(), &err);
  if (parsed == nullptr) {
    std::string msg = err != nullptr ? err : "out of memory";
    if (err != nullptr) PQfreemem(err);
    return absl::InvalidArgumentError(
        absl::StrCat("invalid database DSN: ", absl::StripTrailingAsciiWhitespace(msg)));
  }
  Conninfo out;
  for (PQconninfoOption* opt = parsed; opt->keyword != nullptr; ++opt) {
    if (opt->val != nullptr) out.settings_.emplace_back(opt->keyword, opt->val);
  }
  PQconninfoFree(parsed);
  return out;
}

const std::string* Conninfo::Get(absl::string_view keyword) const {
  for (const auto& [k, v] : settings_) {
    if (k == keyword) return &v;
  }
  return nullptr;
}

void Conninfo::Set(absl::string_view keyword, absl::string_view value) {
  for (auto& [k, v] : settings_) {
    if (k == keyword) {
      v = std::string(value);
      return;
    }
  }
  settings_.emplace_back(std::string(keyword), std::string(value));
}

void Conninfo::SetDefault(absl::string_view keyword, absl::string_view value) {
  if (Get(keyword) == nullptr) settings_.emplace_back(std::string(keyword), std::string(value));
}

void Conninfo::Erase(absl::string_view keyword) {
  settings_.erase(std::remove_if(settings_.begin(), settings_.end(),
                                 [&](const auto& kv) { return kv.first == keyword; }),
                  settings_.end());
}

std::string Conninfo::ToString() const {
  std::string out;
  for (const auto& [k, v] : settings_) {
    absl::StrAppend(&out, out.empty() ? "" : " ", k, "=", QuoteConninfoValue(v));
  }
  return out;
}

std::string QuoteConninfoValue(absl::string_view value) {
  std::string out = "'";
  for (char c : value) {
    if (c == '\'' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('\'');
  return out;
}

}  // namespace poolside::db
