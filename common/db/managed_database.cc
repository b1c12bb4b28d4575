#include "common/db/managed_database.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/clock/clock.h"
#include "common/config/database_config.h"
#include "common/db/catalog.h"
#include "common/db/conninfo.h"
#include "common/db/topology_config.h"
#include "common/telemetry/log.h"

namespace poolside::db {
namespace {

// Picks of the primary that another primary overtook, before giving up.
constexpr int kMaxPicks = 8;

// A pool's name in statistics.
std::string PoolName(const std::string& database, const std::string& role,
                     const std::string& member) {
  std::string name = role.empty() ? database : absl::StrCat(database, "/", role);
  if (!member.empty()) absl::StrAppend(&name, "@", member);
  return name;
}

absl::Status UnknownRole(const v1::DatabaseConfig& config, const std::string& role) {
  return absl::FailedPreconditionError(
      absl::StrCat("database ", config.name(), " does not configure database role \"", role, "\""));
}

// `config` (a database's own) at `dsn`, as `role` ("" for the DSN's user).
absl::StatusOr<v1::DatabaseConfig> ConfigAt(const v1::DatabaseConfig& config,
                                            const std::string& role, const std::string& dsn) {
  v1::DatabaseConfig c = config;
  c.set_dsn(dsn);
  if (role.empty()) return c;
  for (const v1::DatabaseRole& r : config.roles()) {
    if (r.name() == role) return config::RoleDatabaseConfig(c, r);
  }
  return UnknownRole(config, role);
}

// The current primary's DSN for `role` of `config`.
absl::StatusOr<std::string> PrimaryDsnOf(const Topology& topology, const v1::DatabaseConfig& config,
                                         const std::string& role) {
  absl::StatusOr<std::string> dsn = topology.PrimaryDsn();
  if (!dsn.ok() || role.empty()) return dsn;
  absl::StatusOr<v1::DatabaseConfig> c = ConfigAt(config, role, *dsn);
  if (!c.ok()) return c.status();
  return c->dsn();
}

std::string UserOf(const std::string& dsn) {
  absl::StatusOr<Conninfo> c = Conninfo::Parse(dsn);
  if (!c.ok()) return "";
  const std::string* user = c->Get("user");
  return user == nullptr ? "" : *user;
}

}  // namespace

ManagedDatabase::ManagedDatabase(v1::DatabaseConfig config, ManagedDatabaseOptions options)
    : config_(std::move(config)),
      options_(std::move(options)),
      failover_buffer_(absl::Milliseconds(config_.topology().failover_buffer_ms())),
      max_held_calls_(config_.topology().failover_buffer_calls()),
      max_held_bytes_(config_.topology().failover_buffer_bytes()) {
  for (const v1::DatabaseRole& role : config_.roles()) {
    // Validated when the configuration was read; a password file that became
    // unreadable since leaves the role unusable (and fails the start-up check).
    absl::StatusOr<v1::DatabaseConfig> c = config::RoleDatabaseConfig(config_, role);
    if (c.ok()) role_configs_.emplace(role.name(), *std::move(c));
  }
  if (TopologyConfigured(config_)) {
    topology_ = std::make_shared<Topology>(config_.name(), TopologyOptionsFor(config_.topology()),
                                           Clock::Real());
    monitor_ =
        std::make_unique<TopologyMonitor>(topology_.get(), MonitorOptionsFor(config_.topology()));
    topology_->SetRecordListener([this] { OnRecord(); });
    hold_thread_ = std::thread([this] { HoldLoop(); });
  }
}

ManagedDatabase::~ManagedDatabase() { Stop(); }

bool ManagedDatabase::HasRole(const std::string& role) const {
  return role.empty() || role_configs_.contains(role);
}

std::string ManagedDatabase::LoginUser(const std::string& role) const {
  if (role.empty()) return UserOf(config_.dsn());
  auto it = role_configs_.find(role);
  return it == role_configs_.end() ? "" : UserOf(it->second.dsn());
}

std::vector<std::string> ManagedDatabase::RoleLoginUsers() const {
  std::vector<std::string> users;
  for (const v1::DatabaseRole& role : config_.roles()) {
    const std::string user = LoginUser(role.name());
    if (!user.empty() && std::find(users.begin(), users.end(), user) == users.end()) {
      users.push_back(user);
    }
  }
  return users;
}

absl::StatusOr<v1::DatabaseConfig> ManagedDatabase::PoolConfig(const std::string& role,
                                                               const std::string& dsn) const {
  if (!HasRole(role)) return UnknownRole(config_, role);
  if (dsn == config_.dsn()) return role.empty() ? config_ : role_configs_.at(role);
  // A member's: its password file is read again, as at the start.
  return ConfigAt(config_, role, dsn);
}

absl::StatusOr<std::string> ManagedDatabase::PrimaryDsn(const std::string& role) const {
  if (!HasRole(role)) return UnknownRole(config_, role);
  if (topology_ == nullptr) return role.empty() ? config_.dsn() : role_configs_.at(role).dsn();
  return PrimaryDsnOf(*topology_, config_, role);
}

void ManagedDatabase::SetRecordListener(std::function<void()> listener) {
  absl::MutexLock lock(&listener_mu_);
  listener_ = std::move(listener);
}

absl::Status ManagedDatabase::StartMonitor() {
  if (topology_ == nullptr) return absl::OkStatus();
  {
    absl::MutexLock lock(&hold_mu_);
    monitor_started_ = absl::Now();
  }
  return StartTopologyMonitor(config_, monitor_.get());
}

void ManagedDatabase::EndHolds() {
  absl::MutexLock lock(&hold_mu_);
  holds_ended_ = true;
  hold_changed_.SignalAll();
}

bool ManagedDatabase::holds_ended() const {
  absl::MutexLock lock(&hold_mu_);
  return holds_ended_;
}

void ManagedDatabase::Stop() {
  EndHolds();
  if (monitor_ != nullptr) monitor_->Stop();
  if (topology_ != nullptr) topology_->SetRecordListener(nullptr);
  {
    absl::MutexLock lock(&hold_mu_);
    stopping_ = true;
    hold_changed_.SignalAll();
  }
  if (hold_thread_.joinable()) hold_thread_.join();
  absl::MutexLock lock(&pools_mu_);
  closed_ = true;
  for (auto& [key, entry] : pools_) entry.pool->Close();
}

absl::Status ManagedDatabase::Closed() const {
  return absl::UnavailableError(absl::StrCat("database ", config_.name(), " is shutting down"));
}

std::shared_ptr<ConnectionPool> ManagedDatabase::MakePool(const v1::DatabaseConfig& c,
                                                          const std::string& role,
                                                          const std::string& member) {
  ConnectionOptions options;
  options.dsn = c.dsn();
  options.application_name = absl::StrCat(options_.application, "/", config_.name());
  options.connect_timeout = absl::Milliseconds(c.pool().connect_timeout_ms());
  if (options_.statement_cache) options.statement_cache_size = c.statement_cache_size();
  pool::PoolOptions pool_options = config::PoolOptionsFor(c);
  pool_options.name = PoolName(config_.name(), role, member);
  // Without a member, a topology's pool follows the primary: each connection
  // goes where it is when the connection is made.
  std::shared_ptr<Topology> follow = member.empty() ? topology_ : nullptr;
  return std::make_shared<ConnectionPool>(
      pool_options,
      [options, follow, base = config_, role, database = config_.name(),
       allow = c.allow_privileged_role(), describe = options_.name_server_in_errors](
          ConnectionPool::Abandon abandon) -> absl::StatusOr<std::unique_ptr<Connection>> {
        ConnectionOptions o = options;
        if (follow != nullptr) {
          absl::StatusOr<std::string> dsn = PrimaryDsnOf(*follow, base, role);
          if (!dsn.ok()) return dsn.status();
          o.dsn = *std::move(dsn);
        }
        absl::StatusOr<std::unique_ptr<Connection>> conn = OpenChecked(o, database, allow, abandon);
        if (describe && !conn.ok() &&
            conn.status().code() != absl::StatusCode::kFailedPrecondition) {
          return absl::Status(conn.status().code(), absl::StrCat(config::DescribeDsn(o.dsn), ": ",
                                                                 conn.status().message()));
        }
        return conn;
      },
      [](Connection& conn) { return conn.Ping(absl::Now() + absl::Seconds(2)); });
}

absl::StatusOr<std::shared_ptr<ConnectionPool>> ManagedDatabase::Pool(const std::string& role) {
  absl::MutexLock lock(&pools_mu_);
  if (closed_) return Closed();
  auto it = pools_.find(Key(role, ""));
  if (it != pools_.end()) return it->second.pool;
  absl::StatusOr<v1::DatabaseConfig> c = PoolConfig(role, config_.dsn());
  if (!c.ok()) return c.status();
  std::shared_ptr<ConnectionPool> made = MakePool(*c, role, "");
  pools_.emplace(Key(role, ""), Entry{config_.dsn(), made});
  return made;
}

absl::StatusOr<std::shared_ptr<ConnectionPool>> ManagedDatabase::MemberPool(
    const std::string& role, const std::string& member, const std::string& dsn) {
  absl::MutexLock lock(&pools_mu_);
  if (closed_) return Closed();
  return MemberPoolLocked(role, member, dsn);
}

absl::StatusOr<std::shared_ptr<ConnectionPool>> ManagedDatabase::MemberPoolLocked(
    const std::string& role, const std::string& member, const std::string& dsn) {
  auto it = pools_.find(Key(role, member));
  if (it != pools_.end() && it->second.dsn == dsn) return it->second.pool;
  absl::StatusOr<v1::DatabaseConfig> c = PoolConfig(role, dsn);
  if (!c.ok()) return c.status();
  // Made on first use and not warmed up: its min_idle applies from the first
  // maintenance on.
  std::shared_ptr<ConnectionPool> made = MakePool(*c, role, member);
  if (it != pools_.end()) {
    if (options_.writer_only) it->second.pool->Close();
    it->second = Entry{dsn, made};
  } else {
    pools_.emplace(Key(role, member), Entry{dsn, made});
  }
  return made;
}

absl::StatusOr<ManagedDatabase::PoolRef> ManagedDatabase::PrimaryPool(const std::string& role) {
  if (topology_ == nullptr) {
    absl::StatusOr<std::shared_ptr<ConnectionPool>> pool = Pool(role);
    if (!pool.ok()) return pool.status();
    return PoolRef{*std::move(pool), "", 0};
  }
  // A pick that a newer primary overtook before its pool was made is picked
  // again, so that a stale pick never replaces the newer primary's pool: the
  // member returned was the primary under the generation returned.
  for (int attempt = 0;; ++attempt) {
    const uint64_t generation = topology_->primary_generation();
    // Routes count calls per member for routing; this pick only names the
    // primary.
    absl::StatusOr<Topology::Route> route = topology_->Pick(/*read=*/false);
    if (!route.ok()) return route.status();
    absl::MutexLock lock(&pools_mu_);
    if (closed_) return Closed();
    if (topology_->primary_generation() != generation) {
      if (attempt < kMaxPicks) continue;
      return absl::UnavailableError(
          absl::StrCat("database ", config_.name(), ": the primary keeps changing; retry"));
    }
    absl::StatusOr<std::shared_ptr<ConnectionPool>> pool =
        MemberPoolLocked(role, route->id(), route->dsn());
    if (!pool.ok()) return pool.status();
    if (options_.writer_only) {
      for (auto p = pools_.begin(); p != pools_.end();) {
        const Key& key = p->first;
        if (key.first == role && !key.second.empty() && key.second != route->id()) {
          // A former primary's: no new leases; those out keep it alive.
          p->second.pool->Close();
          pools_.erase(p++);
        } else {
          ++p;
        }
      }
    }
    return PoolRef{*std::move(pool), route->id(), generation};
  }
}

std::vector<ManagedDatabase::NamedPool> ManagedDatabase::Pools() const {
  std::vector<NamedPool> out;
  {
    absl::MutexLock lock(&pools_mu_);
    for (const auto& [key, entry] : pools_) {
      out.push_back(NamedPool{PoolName(config_.name(), key.first, key.second), key.first,
                              key.second, entry.pool});
    }
  }
  std::sort(out.begin(), out.end(),
            [](const NamedPool& a, const NamedPool& b) { return a.name < b.name; });
  return out;
}

void ManagedDatabase::Maintain() {
  for (const NamedPool& p : Pools()) p.pool->Maintain();
}

absl::Status ManagedDatabase::WarmUp() {
  const absl::Duration retry = absl::Milliseconds(config_.pool().startup_retry_ms());
  if (topology_ != nullptr && !AwaitAnyPrimary(absl::Now() + retry)) {
    telemetry::LogWarning("no primary known yet; writes wait for one (topology.failoverBufferMs)",
                          {{"database", config_.name()}});
    return topology_->PrimaryDsn().status();
  }
  absl::StatusOr<PoolRef> primary = PrimaryPool("");
  absl::Status s = primary.ok() ? primary->pool->WarmUp(retry) : primary.status();
  if (s.ok()) {
    telemetry::LogInfo("pool warm", {{"database", config_.name()},
                                     {"member", primary->member},
                                     {"min_idle", absl::StrCat(config_.pool().min_idle())}});
  } else {
    telemetry::LogWarning("database not reachable yet; connecting on demand",
                          {{"database", config_.name()}, {"error", std::string(s.message())}});
  }
  return s;
}

bool ManagedDatabase::AwaitAnyPrimary(absl::Time until) {
  absl::MutexLock lock(&hold_mu_);
  while (true) {
    if (holds_ended_) return false;
    if (!topology_->primary().empty()) return true;
    if (absl::Now() >= until) return false;
    hold_changed_.WaitWithDeadline(&hold_mu_, until);
  }
}

bool ManagedDatabase::MarkSuspect(const std::string& member, const absl::Status& error) {
  if (topology_ == nullptr) return false;
  // Whether it is the primary, as of just before the mark (the primary's
  // mark makes it none).
  const bool primary = topology_->primary() == member;
  if (!topology_->MarkSuspect(member, error)) return false;
  // A replica waits for its next probe (reads have other members meanwhile);
  // writes have nowhere else to go.
  if (primary) monitor_->ProbeSoon(member);
  return true;
}

uint64_t ManagedDatabase::primary_generation() const {
  return topology_ == nullptr ? 0 : topology_->primary_generation();
}

absl::Time ManagedDatabase::WindowStartLocked(absl::Time now) const {
  // InfiniteFuture while a primary is known.
  return std::min(now, std::max(topology_->primary_lost_at(), monitor_started_));
}

absl::Status ManagedDatabase::HoldForPrimary(uint64_t generation, size_t bytes, absl::Time deadline,
                                             std::function<void(bool)> then, bool count,
                                             std::function<bool()> abandoned) {
  absl::MutexLock lock(&hold_mu_);
  if (topology_ == nullptr || holds_ended_) {
    return absl::UnavailableError(
        absl::StrCat("database ", config_.name(),
                     ": no primary is known, and calls cannot be held for one now"));
  }
  if (held_.size() >= max_held_calls_ || held_bytes_ + bytes > max_held_bytes_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("database ", config_.name(), " has no primary now and ", held_.size(),
                     " calls (", held_bytes_, " bytes) are held for one already; this call of ",
                     bytes, " bytes would pass topology.failoverBufferCalls (", max_held_calls_,
                     ") or failoverBufferBytes (", max_held_bytes_, "); retry with backoff"));
  }
  const absl::Time now = absl::Now();
  held_.push_back(Held{generation, bytes, now,
                       std::min(deadline, WindowStartLocked(now) + failover_buffer_),
                       std::move(then), std::move(abandoned)});
  held_bytes_ += bytes;
  if (count) held_total_.fetch_add(1, std::memory_order_relaxed);
  hold_changed_.SignalAll();
  return absl::OkStatus();
}

void ManagedDatabase::WakeHolds() {
  absl::MutexLock lock(&hold_mu_);
  hold_changed_.SignalAll();
}

bool ManagedDatabase::WaitForPrimary(uint64_t generation, FailoverHold* hold) {
  if (topology_ == nullptr || failover_buffer_ <= absl::ZeroDuration()) return false;
  const bool first = hold->until == absl::InfinitePast();
  if (first) {
    absl::MutexLock lock(&hold_mu_);
    hold->until = WindowStartLocked(absl::Now()) + failover_buffer_;
  }
  struct Outcome {
    absl::Mutex mu;
    bool done ABSL_GUARDED_BY(mu) = false;
    bool known ABSL_GUARDED_BY(mu) = false;
  };
  auto outcome = std::make_shared<Outcome>();
  absl::Status held = HoldForPrimary(
      generation, 0, hold->until,
      [outcome](bool known) {
        absl::MutexLock lock(&outcome->mu);
        outcome->done = true;
        outcome->known = known;
      },
      first);
  if (!held.ok()) return false;
  absl::MutexLock lock(&outcome->mu);
  outcome->mu.Await(absl::Condition(&outcome->done));
  return outcome->known;
}

ManagedDatabase::HoldStats ManagedDatabase::hold_stats() const {
  HoldStats s;
  s.total = held_total_.load(std::memory_order_relaxed);
  s.timeouts = held_timeouts_.load(std::memory_order_relaxed);
  absl::MutexLock lock(&hold_mu_);
  s.now = held_.size();
  s.durations = held_durations_.Take();
  return s;
}

void ManagedDatabase::OnRecord() {
  {
    // Wakes holds and a warm-up waiting for a primary.
    absl::MutexLock lock(&hold_mu_);
    hold_changed_.SignalAll();
  }
  absl::MutexLock lock(&listener_mu_);
  if (listener_ != nullptr) listener_();
}

void ManagedDatabase::HoldLoop() {
  absl::MutexLock lock(&hold_mu_);
  while (true) {
    const absl::Time now = absl::Now();
    const bool ended = holds_ended_;
    const bool known = !ended && !topology_->primary().empty();
    const uint64_t generation = topology_->primary_generation();
    std::vector<Held> release;
    std::vector<bool> outcome, gone;
    absl::Time next = absl::InfiniteFuture();
    for (size_t i = 0; i < held_.size();) {
      Held& h = held_[i];
      const bool ready = known && h.generation != generation;
      // Its caller went away: it takes no room until its window ends, and
      // did not time out.
      const bool abandoned = !ready && h.abandoned != nullptr && h.abandoned();
      if (ended || ready || abandoned || now >= h.until) {
        outcome.push_back(ready);
        gone.push_back(abandoned && !ended);
        held_bytes_ -= h.bytes;
        held_durations_.Observe(now - h.since);
        release.push_back(std::move(h));
        held_[i] = std::move(held_.back());
        held_.pop_back();
      } else {
        next = std::min(next, h.until);
        ++i;
      }
    }
    if (!release.empty()) {
      hold_mu_.Unlock();
      for (size_t i = 0; i < release.size(); ++i) {
        if (!outcome[i] && !gone[i]) held_timeouts_.fetch_add(1, std::memory_order_relaxed);
        release[i].then(outcome[i]);
      }
      hold_mu_.Lock();
      continue;
    }
    if (stopping_) return;
    // Woken by a probe (OnRecord), a new hold, the end of holds, or the
    // earliest window's end.
    hold_changed_.WaitWithDeadline(&hold_mu_, next);
  }
}

}  // namespace poolside::db
