#include "common/config/database_config.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/config/json_config.h"
#include "common/db/conninfo.h"
#include "common/db/member_dsn.h"
#include "common/db/patroni_client.h"

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

absl::Status FinalizeDatabases(
    google::protobuf::RepeatedPtrField<v1::DatabaseConfig>* databases,
    std::string* default_database,
    const std::function<absl::Status(const std::string& where, v1::DatabaseConfig* db)>& each,
    absl::flat_hash_set<std::string>* names) {
  if (databases->empty()) {
    return absl::InvalidArgumentError("config: at least one database must be configured");
  }
  for (int i = 0; i < databases->size(); ++i) {
    v1::DatabaseConfig* db = databases->Mutable(i);
    const std::string where = absl::StrCat("databases[", i, "] (", db->name(), ")");
    if (absl::Status s = FinalizeDatabase(where, db, names); !s.ok()) return s;
    if (absl::Status s = each(where, db); !s.ok()) return s;
  }
  if (default_database->empty()) {
    if (databases->size() == 1) *default_database = databases->Get(0).name();
  } else if (!names->contains(*default_database)) {
    return absl::InvalidArgumentError(
        absl::StrCat("defaultDatabase \"", *default_database, "\" is not a configured database"));
  }
  return absl::OkStatus();
}

void DefaultPoolTimings(v1::PoolConfig* pool, uint32_t leak_threshold_ms) {
  if (pool->acquire_timeout_ms() == 0) pool->set_acquire_timeout_ms(5000);
  if (pool->validate_after_idle_ms() == 0) pool->set_validate_after_idle_ms(1000);
  if (pool->max_lifetime_ms() == 0) pool->set_max_lifetime_ms(1800000);
  if (pool->idle_timeout_ms() == 0) pool->set_idle_timeout_ms(600000);
  if (pool->leak_threshold_ms() == 0) pool->set_leak_threshold_ms(leak_threshold_ms);
  if (pool->connect_timeout_ms() == 0) pool->set_connect_timeout_ms(5000);
  if (pool->startup_retry_ms() == 0) pool->set_startup_retry_ms(30000);
}

absl::Status FinalizeDatabase(const std::string& where, v1::DatabaseConfig* db,
                              absl::flat_hash_set<std::string>* names) {
  if (!ValidName(db->name())) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": name must be 1-63 characters of letters, digits, '_', '-', '.'"));
  }
  if (!names->insert(db->name()).second) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": duplicate database name"));
  }
  absl::StatusOr<std::string> dsn =
      ResolveSecret(absl::StrCat(where, " dsn"), db->dsn(), db->dsn_file(), db->dsn_env());
  if (!dsn.ok()) return dsn.status();
  if (absl::StatusOr<db::Conninfo> parsed = db::Conninfo::Parse(*dsn); !parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", parsed.status().message()));
  }
  db->set_dsn(*dsn);
  db->clear_dsn_file();
  db->clear_dsn_env();
  if (absl::Status s = FinalizeTopology(where, db); !s.ok()) return s;
  absl::flat_hash_set<std::string> roles;
  for (int i = 0; i < db->roles_size(); ++i) {
    const v1::DatabaseRole& role = db->roles(i);
    const std::string at = absl::StrCat(where, " roles[", i, "] (", role.name(), ")");
    if (!ValidName(role.name())) {
      return absl::InvalidArgumentError(
          absl::StrCat(at, ": name must be 1-63 characters of letters, digits, '_', '-', '.'"));
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

absl::Status FinalizeTopology(const std::string& where, v1::DatabaseConfig* db) {
  v1::TopologyConfig* t = db->mutable_topology();
  const std::string at = absl::StrCat(where, " topology");
  if (!t->replicas().empty() && !t->patroni_endpoints().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        at, ": set replicas or patroniEndpoints, not both (Patroni names the members)"));
  }
  constexpr int kMaxMembers = 64;
  if (t->replicas_size() > kMaxMembers || t->patroni_endpoints_size() > kMaxMembers) {
    return absl::InvalidArgumentError(absl::StrCat(at, ": at most ", kMaxMembers, " entries"));
  }
  const std::vector<std::string> replicas(t->replicas().begin(), t->replicas().end());
  if (absl::StatusOr<std::vector<db::MemberSpec>> members =
          db::MembersFromDsns(db->dsn(), replicas);
      !members.ok()) {
    // The messages name the entry and the rule, never a value.
    return absl::InvalidArgumentError(absl::StrCat(at, ".", members.status().message()));
  }
  for (int i = 0; i < t->patroni_endpoints_size(); ++i) {
    if (absl::StatusOr<db::HttpEndpoint> e = db::ParseHttpEndpoint(t->patroni_endpoints(i));
        !e.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(at, ".patroniEndpoints[", i, "]: must be http://host:port"));
    }
  }
  if (t->max_lag_ms() == 0) t->set_max_lag_ms(5000);
  if (t->max_lag_bytes() == 0) t->set_max_lag_bytes(64ull << 20);
  if (t->probe_interval_ms() == 0) t->set_probe_interval_ms(250);
  if (t->probe_timeout_ms() == 0) t->set_probe_timeout_ms(1000);
  if (!t->has_failover_buffer_ms()) t->set_failover_buffer_ms(10000);
  if (!t->has_token_wait_ms()) t->set_token_wait_ms(200);
  if (t->failover_buffer_calls() == 0) t->set_failover_buffer_calls(4096);
  if (t->failover_buffer_bytes() == 0) t->set_failover_buffer_bytes(64ull << 20);
  if (t->no_replica().empty()) t->set_no_replica("primary");
  if (t->no_replica() != "primary" && t->no_replica() != "fail") {
    return absl::InvalidArgumentError(
        absl::StrCat(at, ": noReplica must be \"primary\" or \"fail\""));
  }
  if (t->probe_interval_ms() < 10 || t->probe_interval_ms() > 60000) {
    return absl::InvalidArgumentError(absl::StrCat(at, ": probeIntervalMs must be 10-60000"));
  }
  if (t->probe_timeout_ms() < 10 || t->probe_timeout_ms() > 60000) {
    return absl::InvalidArgumentError(absl::StrCat(at, ": probeTimeoutMs must be 10-60000"));
  }
  // Lag is measured once per probe interval: a bound below two intervals
  // would ban replicas for the measurement's own granularity.
  if (t->max_lag_ms() < 2 * t->probe_interval_ms()) {
    return absl::InvalidArgumentError(absl::StrCat(at, ": maxLagMs (", t->max_lag_ms(),
                                                   ") must be at least twice probeIntervalMs (",
                                                   t->probe_interval_ms(), ")"));
  }
  if (t->token_wait_ms() > 60000) {
    return absl::InvalidArgumentError(absl::StrCat(at, ": tokenWaitMs must be at most 60000"));
  }
  if (t->failover_buffer_ms() > 120000) {
    return absl::InvalidArgumentError(
        absl::StrCat(at, ": failoverBufferMs must be at most 120000"));
  }
  if (t->failover_buffer_calls() > 1000000) {
    return absl::InvalidArgumentError(absl::StrCat(
        at, ": failoverBufferCalls must be at most 1000000 (calls held at once per database)"));
  }
  // Below 1 MiB a handful of calls would fill the buffer; past 16 GiB it is
  // no bound on memory.
  if (t->failover_buffer_bytes() < (1ull << 20) || t->failover_buffer_bytes() > (16ull << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat(at, ": failoverBufferBytes must be 1048576 (1 MiB) to 17179869184 (16 GiB)"));
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
  absl::StatusOr<db::Conninfo> dsn = db::Conninfo::Parse(db.dsn());
  if (!dsn.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": invalid dsn"));
  dsn->Erase("password");
  dsn->Set("user", role.user().empty() ? role.name() : role.user());
  if (!password.empty()) dsn->Set("password", password);

  v1::DatabaseConfig out = db;
  out.clear_roles();
  out.set_dsn(dsn->ToString());
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
  o.max_overflow = p.max_overflow();
  o.acquire_timeout = absl::Milliseconds(p.acquire_timeout_ms());
  o.validate_after_idle = absl::Milliseconds(p.validate_after_idle_ms());
  o.max_lifetime = absl::Milliseconds(p.max_lifetime_ms());
  o.idle_timeout = absl::Milliseconds(p.idle_timeout_ms());
  o.leak_threshold = absl::Milliseconds(p.leak_threshold_ms());
  return o;
}

std::string DescribeDsn(const std::string& dsn) {
  absl::StatusOr<db::Conninfo> c = db::Conninfo::Parse(dsn);
  if (!c.ok()) return "(unparsable DSN)";
  auto get = [&](absl::string_view key) {
    const std::string* v = c->Get(key);
    return v == nullptr ? std::string() : *v;
  };
  std::string host = get("host");
  if (host.empty()) host = get("hostaddr");
  const std::string port = get("port");
  return absl::StrCat(host.empty() ? "localhost" : host, ":", port.empty() ? "5432" : port, "/",
                      get("dbname"));
}

}  // namespace poolside::config
