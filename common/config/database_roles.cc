#include "common/config/database_roles.h"

#include <algorithm>
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/config/database_config.h"
#include "common/db/catalog.h"

namespace poolside::config {

absl::Status VerifyDatabaseRoles(
    const google::protobuf::RepeatedPtrField<v1::DatabaseConfig>& databases,
    absl::string_view service, size_t concurrency, absl::Time deadline) {
  struct Check {
    const v1::DatabaseConfig* database;
    std::string which;  // for logs: "its DSN user", "role app_read"
    v1::DatabaseConfig pool;
  };
  std::vector<Check> checks;
  for (const v1::DatabaseConfig& db : databases) {
    checks.push_back({&db, "its DSN user", db});
    for (const v1::DatabaseRole& role : db.roles()) {
      absl::StatusOr<v1::DatabaseConfig> c = RoleDatabaseConfig(db, role);
      if (!c.ok()) return absl::FailedPreconditionError(c.status().message());
      checks.push_back({&db, absl::StrCat("role ", role.name()), *std::move(c)});
    }
  }
  std::vector<absl::Status> outcomes(checks.size());
  std::atomic<size_t> next{0};
  auto run = [&] {
    for (size_t i = next++; i < checks.size(); i = next++) {
      const Check& c = checks[i];
      db::ConnectionOptions options;
      options.dsn = c.pool.dsn();
      options.application_name = absl::StrCat("poolside-", service, "/", c.database->name());
      options.connect_timeout = std::min(absl::Milliseconds(c.pool.pool().connect_timeout_ms()),
                                         std::max(absl::Seconds(1), deadline - absl::Now()));
      outcomes[i] = db::VerifyDatabaseRole(options, c.database->name(), c.which,
                                           c.database->allow_privileged_role());
    }
  };
  std::vector<std::thread> threads;
  const size_t workers = std::min(checks.size(), std::max<size_t>(1, concurrency));
  for (size_t t = 1; t < workers; ++t) threads.emplace_back(run);
  run();
  for (std::thread& t : threads) t.join();
  for (const absl::Status& s : outcomes) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace poolside::config
