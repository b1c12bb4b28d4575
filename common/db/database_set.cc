#include "common/db/database_set.h"

#include <algorithm>
#include <atomic>
#include <utility>

#include "common/db/topology_config.h"
#include "common/telemetry/log.h"

namespace poolside::db {
namespace {

// Databases warmed up at once: each may block for its startup_retry_ms.
constexpr size_t kWarmUpThreads = 8;

}  // namespace

DatabaseSet::DatabaseSet(const google::protobuf::RepeatedPtrField<v1::DatabaseConfig>& configs,
                         DatabaseSetOptions options)
    : options_(std::move(options)) {
  for (const v1::DatabaseConfig& c : configs) {
    databases_.emplace(c.name(), std::make_unique<ManagedDatabase>(c, options_.database));
  }
}

DatabaseSet::~DatabaseSet() { Stop(); }

ManagedDatabase* DatabaseSet::Find(absl::string_view name) const {
  auto it = databases_.find(name);
  return it == databases_.end() ? nullptr : it->second.get();
}

void DatabaseSet::Start() {
  {
    absl::MutexLock lock(&mu_);
    if (started_ || stopping_) return;
    started_ = true;
  }
  for (auto& [name, db] : databases_) {
    if (absl::Status s = db->StartMonitor(); !s.ok()) {
      // The configuration was validated: not expected. Its calls find no
      // primary and fail UNAVAILABLE saying so.
      telemetry::LogError("cannot monitor the database's members",
                          {{"database", name}, {"error", std::string(s.message())}});
    }
  }
  if (options_.wait_for_primary > absl::ZeroDuration()) {
    const absl::Time until = absl::Now() + options_.wait_for_primary;
    for (auto& [name, db] : databases_) {
      if (db->topology() == nullptr) continue;
      if (!AwaitPrimary(*db->topology(), std::max(absl::ZeroDuration(), until - absl::Now()))) {
        telemetry::LogWarning("no primary found yet; writes wait for one", {{"database", name}});
      }
    }
  }
  warmup_ = std::thread([this] { WarmUpAll(); });
  if (options_.maintenance_every > absl::ZeroDuration()) {
    maintenance_ = std::thread([this] {
      absl::MutexLock lock(&mu_);
      while (!stopping_) {
        stop_changed_.WaitWithTimeout(&mu_, options_.maintenance_every);
        if (stopping_) break;
        mu_.Unlock();
        Maintain();
        mu_.Lock();
      }
    });
  }
}

void DatabaseSet::WarmUpAll() {
  std::vector<ManagedDatabase*> dbs;
  for (auto& [name, db] : databases_) dbs.push_back(db.get());
  std::atomic<size_t> next{0};
  std::vector<std::thread> threads;
  for (size_t t = 0; t < std::min(kWarmUpThreads, dbs.size()); ++t) {
    threads.emplace_back([&] {
      for (size_t i = next++; i < dbs.size(); i = next++) dbs[i]->WarmUp().IgnoreError();
    });
  }
  for (auto& t : threads) t.join();
  std::vector<std::function<void()>> ready;
  {
    absl::MutexLock lock(&mu_);
    warm_ = true;
    if (!stopping_) ready.swap(when_warm_);
  }
  for (auto& f : ready) f();
}

void DatabaseSet::WhenWarm(std::function<void()> ready) {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    if (!warm_) {
      when_warm_.push_back(std::move(ready));
      return;
    }
  }
  ready();
}

void DatabaseSet::Maintain() {
  for (auto& [name, db] : databases_) db->Maintain();
}

void DatabaseSet::EndHolds() {
  for (auto& [name, db] : databases_) db->EndHolds();
}

void DatabaseSet::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
    when_warm_.clear();
    stop_changed_.SignalAll();
  }
  // Closing the pools ends warm-ups still retrying against a database that
  // is down.
  for (auto& [name, db] : databases_) db->Stop();
  if (warmup_.joinable()) warmup_.join();
  if (maintenance_.joinable()) maintenance_.join();
}

}  // namespace poolside::db
