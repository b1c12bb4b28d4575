#ifndef POOLSIDE_COMMON_DB_DATABASE_SET_H_
#define POOLSIDE_COMMON_DB_DATABASE_SET_H_

// Every configured database of a service (one ManagedDatabase each,
// managed_database.h), started and warmed up together: Start() starts the
// topology monitors, warms each database's primary pool up in the
// background (the service serves meanwhile) and maintains every pool;
// WhenWarm() is for readiness.
//
//   DatabaseSet set(config.databases(), {.database = {.application = "poolside-ingest"}});
//   set.Start();
//   set.WhenWarm([] { /* ready */ });
//   ManagedDatabase* db = set.Find("app");
//   set.Stop();  // or the destructor
//
// Thread-safe. The databases live as long as the set.

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/db/managed_database.h"
#include "google/protobuf/repeated_field.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::db {

struct DatabaseSetOptions {
  ManagedDatabaseOptions database;
  // How often every pool is maintained (Pool::Maintain); zero: never by the
  // set (the owner calls Maintain()).
  absl::Duration maintenance_every = absl::Seconds(5);
  // How long Start() waits for each topology's first probes to name a
  // primary.
  absl::Duration wait_for_primary = absl::ZeroDuration();
};

class DatabaseSet {
 public:
  // Each of `configs` went through config::FinalizeDatabase; names are
  // unique.
  DatabaseSet(const google::protobuf::RepeatedPtrField<v1::DatabaseConfig>& configs,
              DatabaseSetOptions options);
  ~DatabaseSet();  // Stop()
  DatabaseSet(const DatabaseSet&) = delete;
  DatabaseSet& operator=(const DatabaseSet&) = delete;

  // Starts the monitors (a topology that cannot be monitored is logged: its
  // calls find no primary), waits up to wait_for_primary for their
  // primaries, then warms up and maintains in the background. Once only.
  void Start();
  // Runs `ready` once every database's warm-up has finished (min_idle
  // connections made, or given up after pool.startup_retry_ms: that
  // database then connects on demand) — at once if that already happened,
  // else on the warm-up thread. Not run if the set stops first.
  void WhenWarm(std::function<void()> ready);

  // Null for a name not configured.
  ManagedDatabase* Find(absl::string_view name) const;
  // By name.
  const std::map<std::string, std::unique_ptr<ManagedDatabase>, std::less<>>& databases() const {
    return databases_;
  }
  // Pool::Maintain() on every pool.
  void Maintain();
  // Ends every database's failover holds (ManagedDatabase::EndHolds).
  void EndHolds();
  // Stops warm-up, maintenance and every database (ManagedDatabase::Stop).
  // Idempotent.
  void Stop();

 private:
  void WarmUpAll();

  const DatabaseSetOptions options_;
  std::map<std::string, std::unique_ptr<ManagedDatabase>, std::less<>> databases_;

  absl::Mutex mu_;
  absl::CondVar stop_changed_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool warm_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::function<void()>> when_warm_ ABSL_GUARDED_BY(mu_);
  std::thread warmup_;
  std::thread maintenance_;
};

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_DATABASE_SET_H_
