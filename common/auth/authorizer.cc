#include "common/auth/authorizer.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/auth/token_hash.h"
#include "common/config/json_config.h"

namespace poolside::auth {
namespace {

// Longer authorization values are refused before hashing.
constexpr size_t kMaxTokenBytes = 4096;
// Retry hint when a principal has all its allowed calls in flight.
constexpr absl::Duration kConcurrencyRetry = absl::Milliseconds(50);

bool ValidName(absl::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
  });
}

absl::StatusOr<Role> ParseRole(absl::string_view role) {
  if (role == "read") return kRead;
  if (role == "write") return kWrite;
  if (role == "sql") return kSql;
  if (role == "ingest") return kIngest;
  if (role == "admin") return kAdmin;
  if (role == "ddl") return kDdl;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown role \"", role.substr(0, 32), "\" (roles: read, write, sql, ingest, admin, ddl)"));
}

absl::Status ReadPrincipals(const std::string& json, const std::string& source,
                            std::vector<v1::PrincipalConfig>* out) {
  v1::PrincipalsFile file;
  // The parser's message may quote the input; the input holds only hashes,
  // but keep the error to where it is.
  if (absl::Status s = config::ParseJsonConfig(json, &file); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("auth: ", source, ": ", s.message()));
  }
  for (auto& p : *file.mutable_principals()) out->push_back(std::move(p));
  return absl::OkStatus();
}

}  // namespace

Authorizer::Permit& Authorizer::Permit::operator=(Permit&& other) noexcept {
  if (this != &other) {
    if (in_flight_ != nullptr) in_flight_->fetch_sub(1);
    in_flight_ = other.in_flight_;
    other.in_flight_ = nullptr;
  }
  return *this;
}

Authorizer::Permit::~Permit() {
  if (in_flight_ != nullptr) in_flight_->fetch_sub(1);
}

absl::StatusOr<std::unique_ptr<Authorizer>> Authorizer::Create(const v1::AuthConfig& config,
                                                               Clock* clock) {
  std::unique_ptr<Authorizer> a(new Authorizer(clock));
  std::vector<v1::PrincipalConfig> principals(config.principals().begin(),
                                              config.principals().end());
  if (!config.principals_file().empty()) {
    std::ifstream in(config.principals_file());
    if (!in) {
      return absl::InvalidArgumentError(
          absl::StrCat("auth.principalsFile: cannot read ", config.principals_file()));
    }
    std::ostringstream text;
    text << in.rdbuf();
    if (absl::Status s = ReadPrincipals(text.str(), config.principals_file(), &principals);
        !s.ok()) {
      return s;
    }
  }
  if (!config.principals_env().empty()) {
    const char* value = std::getenv(config.principals_env().c_str());
    if (value == nullptr || *value == '\0') {
      return absl::InvalidArgumentError(absl::StrCat("auth.principalsEnv: environment variable ",
                                                     config.principals_env(), " is not set"));
    }
    if (absl::Status s = ReadPrincipals(value, "$" + config.principals_env(), &principals);
        !s.ok()) {
      return s;
    }
  }
  if (config.disabled()) {
    if (!principals.empty()) {
      return absl::InvalidArgumentError(
          "auth: disabled is true but principals are configured; choose one");
    }
    a->enabled_ = false;
    a->anonymous_.name = "anonymous";
    a->anonymous_.roles = kRead | kWrite | kSql | kIngest | kAdmin | kDdl;
    a->anonymous_.all_databases = true;
    a->anonymous_.ingest_tables["*"].insert("*");
    return a;
  }
  if (principals.empty()) {
    return absl::InvalidArgumentError(
        "auth: no principals configured: set auth.principalsFile (or principalsEnv, or "
        "principals), or auth.disabled: true to accept every caller (development only)");
  }
  for (const v1::PrincipalConfig& p : principals) {
    if (absl::Status s = a->Add(p, config.default_limits()); !s.ok()) return s;
  }
  return a;
}

absl::Status Authorizer::Add(const v1::PrincipalConfig& config,
                             const v1::PrincipalLimits& defaults) {
  if (!ValidName(config.name())) {
    return absl::InvalidArgumentError(
        absl::StrCat("auth: principal name \"", config.name().substr(0, 64),
                     "\" must be 1-64 characters of letters, digits, '_', '.', '-'"));
  }
  const std::string where = absl::StrCat("auth: principal \"", config.name(), "\"");
  for (const auto& [hash, p] : by_hash_) {
    if (p->name == config.name())
      return absl::InvalidArgumentError(absl::StrCat(where, " appears twice"));
  }
  const std::string hash = absl::AsciiStrToLower(config.token_sha256());
  if (hash.size() != 64 || !std::all_of(hash.begin(), hash.end(), [](char c) {
        return absl::ascii_isxdigit(static_cast<unsigned char>(c));
      })) {
    return absl::InvalidArgumentError(
        absl::StrCat(where,
                     ": tokenSha256 must be the 64 hex digits of the token's SHA-256 "
                     "(printf %s \"$TOKEN\" | sha256sum)"));
  }
  if (by_hash_.contains(hash)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": its token is another principal's too"));
  }
  auto p = std::make_unique<Principal>();
  p->name = config.name();
  for (const std::string& r : config.roles()) {
    absl::StatusOr<Role> role = ParseRole(r);
    if (!role.ok())
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", role.status().message()));
    p->roles |= *role;
  }
  if (p->roles == 0) return absl::InvalidArgumentError(absl::StrCat(where, ": has no roles"));
  for (const std::string& db : config.databases()) {
    if (db == "*") {
      p->all_databases = true;
    } else {
      p->databases.insert(db);
    }
  }
  for (const v1::IngestTables& t : config.ingest_tables()) {
    if (t.database().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": ingestTables entry without a database"));
    }
    for (const std::string& table : t.tables()) p->ingest_tables[t.database()].insert(table);
  }
  p->database_role = config.database_role();
  for (const auto& [db, role] : config.database_roles()) p->database_roles[db] = role;
  p->limits = config.has_limits() ? config.limits() : defaults;
  if (p->limits.requests_per_second() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": requestsPerSecond is negative"));
  }
  auto limiter = std::make_unique<Limiter>();
  {
    sync::MutexLock lock(&limiter->mu);
    limiter->tokens =
        p->limits.burst() > 0 ? p->limits.burst() : std::max(1.0, p->limits.requests_per_second());
    limiter->refilled = clock_->Now();
  }
  limiters_.emplace(p.get(), std::move(limiter));
  by_hash_.emplace(hash, std::move(p));
  return absl::OkStatus();
}

absl::Status Authorizer::CheckDatabaseRoles(
    const google::protobuf::RepeatedPtrField<v1::DatabaseConfig>& databases) const {
  for (const auto& [hash, p] : by_hash_) {
    for (const auto& db_role : p->database_roles) {
      // (A structured binding cannot be captured by the lambda in C++17.)
      const std::string& db = db_role.first;
      if (std::none_of(databases.begin(), databases.end(),
                       [&](const v1::DatabaseConfig& d) { return d.name() == db; })) {
        return absl::InvalidArgumentError(absl::StrCat("auth: principal \"", p->name,
                                                       "\": databaseRoles names database \"", db,
                                                       "\", which is not configured"));
      }
    }
    for (const v1::DatabaseConfig& d : databases) {
      if (!p->MayUseDatabase(d.name())) continue;
      const std::string& role = p->DatabaseRoleFor(d.name());
      if (role.empty()) continue;
      if (std::none_of(d.roles().begin(), d.roles().end(),
                       [&](const v1::DatabaseRole& r) { return r.name() == role; })) {
        return absl::InvalidArgumentError(absl::StrCat(
            "auth: principal \"", p->name, "\" runs as database role \"", role,
            "\", which database ", d.name(), " does not configure (databases[].roles)"));
      }
    }
  }
  return absl::OkStatus();
}

std::vector<const Principal*> Authorizer::principals() const {
  std::vector<const Principal*> out;
  for (const auto& [hash, p] : by_hash_) out.push_back(p.get());
  return out;
}

absl::StatusOr<const Principal*> Authorizer::Authenticate(const std::string* authorization) const {
  if (!enabled_) return &anonymous_;
  if (authorization == nullptr || authorization->empty()) {
    return absl::UnauthenticatedError(
        "missing bearer token: send metadata \"authorization: Bearer <token>\"");
  }
  absl::string_view value = *authorization;
  if (value.size() < 7 || !absl::EqualsIgnoreCase(value.substr(0, 7), "bearer ")) {
    return absl::UnauthenticatedError("authorization metadata must be \"Bearer <token>\"");
  }
  value = absl::StripAsciiWhitespace(value.substr(7));
  if (value.empty() || value.size() > kMaxTokenBytes) {
    return absl::UnauthenticatedError("authorization metadata must be \"Bearer <token>\"");
  }
  auto it = by_hash_.find(Sha256Hex(value));
  if (it == by_hash_.end()) return absl::UnauthenticatedError("unknown bearer token");
  return it->second.get();
}

absl::Status Authorizer::CheckQuery(const Principal& who, absl::string_view database,
                                    bool raw_sql) const {
  if (!who.Has(kRead) && !who.Has(kWrite)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "principal \"", who.name, "\" may not run statements (needs role read or write)"));
  }
  if (raw_sql && !who.Has(kSql)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "principal \"", who.name, "\" may not send raw SQL (needs role sql); call a named query"));
  }
  if (!who.MayUseDatabase(database)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "principal \"", who.name, "\" may not use database \"", database.substr(0, 64), "\""));
  }
  return absl::OkStatus();
}

absl::Status Authorizer::CheckIngest(const Principal& who, absl::string_view database,
                                     absl::string_view table) const {
  if (!who.Has(kIngest)) {
    return absl::PermissionDeniedError(
        absl::StrCat("principal \"", who.name, "\" may not ingest (needs role ingest)"));
  }
  for (absl::string_view db : {database, absl::string_view("*")}) {
    auto it = who.ingest_tables.find(db);
    if (it != who.ingest_tables.end() && (it->second.contains(table) || it->second.contains("*"))) {
      return absl::OkStatus();
    }
  }
  return absl::PermissionDeniedError(
      absl::StrCat("principal \"", who.name, "\" may not write table \"", table.substr(0, 128),
                   "\" of database \"", database.substr(0, 64), "\""));
}

absl::Status Authorizer::CheckAdmin(const Principal& who, absl::string_view what) const {
  if (who.Has(kAdmin)) return absl::OkStatus();
  return absl::PermissionDeniedError(
      absl::StrCat("principal \"", who.name, "\" may not call ", what, " (needs role admin)"));
}

absl::StatusOr<Authorizer::Permit> Authorizer::Admit(const Principal& who,
                                                     absl::Duration* retry_after) {
  auto it = limiters_.find(&who);
  if (it == limiters_.end()) return Permit();  // the anonymous principal: no limits
  Limiter& l = *it->second;
  const v1::PrincipalLimits& limits = who.limits;
  if (limits.max_concurrent() > 0 &&
      l.in_flight.fetch_add(1) >= static_cast<int>(limits.max_concurrent())) {
    l.in_flight.fetch_sub(1);
    *retry_after = kConcurrencyRetry;
    return absl::ResourceExhaustedError(
        absl::StrCat("principal \"", who.name, "\" has ", limits.max_concurrent(),
                     " calls in flight, its limit; retry when one finishes"));
  }
  Permit permit(limits.max_concurrent() > 0 ? &l.in_flight : nullptr);
  const double rate = limits.requests_per_second();
  if (rate <= 0) return permit;
  const double burst = limits.burst() > 0 ? limits.burst() : std::max(1.0, rate);
  sync::MutexLock lock(&l.mu);
  const absl::Time now = clock_->Now();
  l.tokens = std::min(burst, l.tokens + rate * absl::ToDoubleSeconds(now - l.refilled));
  l.refilled = now;
  if (l.tokens < 1.0) {
    *retry_after = absl::Seconds((1.0 - l.tokens) / rate);
    return absl::ResourceExhaustedError(
        absl::StrCat("principal \"", who.name, "\" is over its rate limit of ", rate, " calls/s"));
  }
  l.tokens -= 1.0;
  return permit;
}

}  // namespace poolside::auth
