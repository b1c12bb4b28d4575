#ifndef POOLSIDE_COMMON_DB_CONNINFO_H_
#define POOLSIDE_COMMON_DB_CONNINFO_H_

// A libpq connection string (keyword/value pairs or a URI) as its settings,
// to change and write back as keyword/value pairs: how poolside adds its own
// settings to a user's DSN, or logs in as another role, without caring which
// form the user wrote.
//
//   absl::StatusOr<Conninfo> c = Conninfo::Parse("postgresql://u@db/app");
//   c->SetDefault("application_name", "poolside");  // the user's own wins
//   c->Set("user", "app_read");
//   std::string dsn = c->ToString();  // host='db' dbname='app' user='app_read' ...
//
// A value type; not thread-safe.

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace poolside::db {

class Conninfo {
 public:
  // INVALID_ARGUMENT "invalid database DSN: <libpq's message>" (libpq's
  // message names the syntax problem, never a value).
  static absl::StatusOr<Conninfo> Parse(absl::string_view dsn);

  // The value set for `keyword`, or null.
  const std::string* Get(absl::string_view keyword) const;
  // Replaces the value, or appends the setting.
  void Set(absl::string_view keyword, absl::string_view value);
  // Only when the DSN does not set `keyword` already.
  void SetDefault(absl::string_view keyword, absl::string_view value);
  void Erase(absl::string_view keyword);

  // keyword='value' pairs, values quoted as libpq reads them.
  std::string ToString() const;

 private:
  std::vector<std::pair<std::string, std::string>> settings_;
};

// One value quoted for a keyword/value connection string.
std::string QuoteConninfoValue(absl::string_view value);

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_CONNINFO_H_
