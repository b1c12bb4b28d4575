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
  absl::flat_hash_set<std::string> roles;
  for (int i = 0; i < db->roles_size(); ++i) {
    const v1::DatabaseRole& role = db->roles(i);
    const std::string at = absl::StrCat(where, " roles[", i, "] (", role.name(), ")");
    if (!ValidName(role.name())) {
      return absl::InvalidArgumentError(absl::StrCat(
          at, ": name must be 1-63 characters of letters, digits, '_', '-', '.'"));
    }
    if (!roles.insert(role.name()).second) {
      return absl::InvalidArgumentError(absl::StrCat(at, ": duplicate role name"));
    }
    if (!role.password_file().empty() && !role.password_env().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(at, ": set at most one of passwordFile and passwordEnv"));
    }
    if (absl::StatusOr<v1::DatabaseConfig> c = RoleDatabaseConfig(*db, role); !c.ok()) {
      return c.status();
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::DatabaseConfig> RoleDatabaseConfig(const v1::DatabaseConfig& db,
                                                      const v1::DatabaseRole& role) {
  const std::string where = absl::StrCat("database ", db.name(), " role ", role.name());
  std::string password;
  if (!role.password_file().empty() || !role.password_env().empty()) {
    absl::StatusOr<std::string> p = ResolveSecret(absl::StrCat(where, " password"), "",
                                                  role.password_file(), role.password_env());
    if (!p.ok()) return p.status();
    password = *std::move(p);
    while (!password.empty() && (password.back() == '\n' || password.back() == '\r')) {
      password.pop_back();
    }
  }
  // Rebuilt as keyword/value pairs (the DSN may be a URI), with the role's
  // user and password in place of the DSN's own.
  char* err = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(db.dsn().c_str(), &err);
  if (parsed == nullptr) {
    if (err != nullptr) PQfreemem(err);
    return absl::InvalidArgumentError(absl::StrCat(where, ": invalid dsn"));
  }
  auto quote = [](absl::string_view value) {
    std::string out = "'";
    for (char c : value) {
      if (c == '\'' || c == '\\') out.push_back('\\');
      out.push_back(c);
    }
    out.push_back('\'');
    return out;
  };
  std::string dsn;
  for (PQconninfoOption* o = parsed; o->keyword != nullptr; ++o) {
    if (o->val == nullptr) continue;
    const absl::string_view key = o->keyword;
    if (key == "user" || key == "password") continue;
    absl::StrAppend(&dsn, key, "=", quote(o->val), " ");
  }
  PQconninfoFree(parsed);
  absl::StrAppend(&dsn, "user=", quote(role.user().empty() ? role.name() : role.user()));
  if (!password.empty()) absl::StrAppend(&dsn, " password=", quote(password));

  v1::DatabaseConfig out = db;
  out.clear_roles();
  out.set_dsn(dsn);
  v1::PoolConfig* pool = out.mutable_pool();
  pool->set_min_idle(0);
  pool->MergeFrom(role.pool());
  return out;
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
