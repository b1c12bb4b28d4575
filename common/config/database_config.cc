#include "common/config/database_config.h"

#include <libpq-fe.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/config/json_config.h"

namespace poolside::config {
namespace {

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 63) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(c) && c != '_' && c != '-' && c != '.') return false;
  }
  return true;
}

}  // namespace

absl::Status FinalizeDatabase(const std::string& where, v1::DatabaseConfig* db,
                              absl::flat_hash_set<std::string>* names) {
  if (!ValidName(db->name())) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": name must be 1-63 characters of letters, digits, '_', '-', '.'"));
  }
  if (!names->insert(db->name()).second) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": duplicate database name"));
  }
  absl::StatusOr<std::string> dsn =
      ResolveSecret(absl::StrCat(where, " dsn"), db->dsn(), db->dsn_file(), db->dsn_env());
  if (!dsn.ok()) return dsn.status();
  char* err = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(dsn->c_str(), &err);
  if (parsed == nullptr) {
    std::string msg = err ? err : "";
    if (err) PQfreemem(err);
    return absl::InvalidArgumentError(absl::StrCat(where, ": invalid dsn: ", msg));
  }
  PQconninfoFree(parsed);
  db->set_dsn(*dsn);
  db->clear_dsn_file();
  db->clear_dsn_env();
  return absl::OkStatus();
}

pool::PoolOptions PoolOptionsFor(const v1::DatabaseConfig& db) {
  const v1::PoolConfig& p = db.pool();
  pool::PoolOptions o;
  o.name = db.name();
  o.min_idle = p.min_idle();
  o.max_size = p.max_size();
  o.acquire_timeout = absl::Milliseconds(p.acquire_timeout_ms());
  o.validate_after_idle = absl::Milliseconds(p.validate_after_idle_ms());
  o.max_lifetime = absl::Milliseconds(p.max_lifetime_ms());
  o.idle_timeout = absl::Milliseconds(p.idle_timeout_ms());
  o.leak_threshold = absl::Milliseconds(p.leak_threshold_ms());
  return o;
}

std::string DescribeDsn(const std::string& dsn) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(dsn.c_str(), &err);
  if (opts == nullptr) {
    if (err != nullptr) PQfreemem(err);
    return "(unparsable DSN)";
  }
  std::string host, port, dbname;
  for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
    if (o->val == nullptr) continue;
    const std::string k = o->keyword;
    if (k == "host" || (k == "hostaddr" && host.empty())) host = o->val;
    if (k == "port") port = o->val;
    if (k == "dbname") dbname = o->val;
  }
  PQconninfoFree(opts);
  return absl::StrCat(host.empty() ? "localhost" : host, ":", port.empty() ? "5432" : port, "/",
                      dbname);
}

}  // namespace poolside::config
