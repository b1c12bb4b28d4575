#include "common/db/topology_monitor.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/db/conninfo.h"
#include "common/db/member_dsn.h"
#include "common/db/patroni_client.h"

namespace poolside::db {

struct TopologyMonitor::Worker {
  explicit Worker(MemberSpec s) : spec(std::move(s)) {}
  const MemberSpec spec;
  std::thread thread;
  absl::Mutex mu;
  bool stop ABSL_GUARDED_BY(mu) = false;
  // Probe again now (ProbeSoon), not at the next interval.
  bool soon ABSL_GUARDED_BY(mu) = false;
  bool Woken() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return stop || soon; }
};

TopologyMonitor::TopologyMonitor(Topology* topology, TopologyMonitorOptions options,
                                 ProbeFactory factory)
    : topology_(topology), options_(options), factory_(std::move(factory)) {}

TopologyMonitor::~TopologyMonitor() { Stop(); }

absl::Status TopologyMonitor::Start(std::vector<MemberSpec> members) {
  if (absl::Status s = topology_->SetMembers(members); !s.ok()) return s;
  Reconcile(members);
  return absl::OkStatus();
}

absl::Status TopologyMonitor::StartPatroni(std::vector<std::string> urls, std::string dsn) {
  if (urls.empty()) return absl::InvalidArgumentError("no Patroni endpoint");
  for (const std::string& url : urls) {
    if (absl::StatusOr<HttpEndpoint> e = ParseHttpEndpoint(url); !e.ok()) return e.status();
  }
  if (absl::StatusOr<Conninfo> c = Conninfo::Parse(dsn); !c.ok()) return c.status();
  patroni_urls_ = std::move(urls);
  template_dsn_ = std::move(dsn);
  absl::Status first = DiscoverOnce();
  {
    absl::MutexLock lock(&mu_);
    discovery_status_ = first;
  }
  discovery_ = std::thread([this] { DiscoveryLoop(); });
  return absl::OkStatus();
}

absl::Status TopologyMonitor::DiscoverOnce() {
  absl::Status last = absl::UnavailableError("no Patroni endpoint answered");
  for (const std::string& url : patroni_urls_) {
    absl::StatusOr<PatroniClusterView> view =
        FetchPatroniCluster(url, absl::Now() + options_.probe_timeout);
    if (!view.ok()) {
      last = view.status();
      continue;
    }
    std::vector<MemberSpec> members;
    for (const PatroniMember& m : view->members) {
      absl::StatusOr<std::string> dsn = DsnForHost(template_dsn_, m.host, m.port);
      if (!dsn.ok()) return dsn.status();
      members.push_back({m.name, *dsn});
    }
    // Probe threads of members that left or moved are joined before the
    // topology changes, so none of their samples lands on a successor with
    // the same name.
    Reconcile(members);
    if (absl::Status s = topology_->SetMembers(members); !s.ok()) return s;
    topology_->SetLeaderHint(view->leader);
    last_discovery_ = absl::Now();
    return absl::OkStatus();
  }
  if (absl::Now() - last_discovery_ > options_.leader_hint_ttl) topology_->SetLeaderHint("");
  return last;
}

void TopologyMonitor::DiscoveryLoop() {
  while (Sleep(options_.interval)) {
    absl::Status s = DiscoverOnce();
    absl::MutexLock lock(&mu_);
    discovery_status_ = std::move(s);
  }
}

bool TopologyMonitor::Sleep(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(&stopping_), d);
  return !stopping_;
}

void TopologyMonitor::Reconcile(const std::vector<MemberSpec>& members) {
  std::vector<std::shared_ptr<Worker>> retired;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    absl::flat_hash_map<std::string, std::shared_ptr<Worker>> next;
    for (const MemberSpec& spec : members) {
      auto it = workers_.find(spec.id);
      if (it != workers_.end() && it->second->spec.dsn == spec.dsn) {
        next[spec.id] = it->second;
        workers_.erase(it);
        continue;
      }
      auto worker = std::make_shared<Worker>(spec);
      worker->thread = std::thread([this, worker] { ProbeLoop(worker); });
      next[spec.id] = std::move(worker);
    }
    for (auto& [id, worker] : workers_) retired.push_back(worker);
    workers_ = std::move(next);
  }
  for (const std::shared_ptr<Worker>& worker : retired) {
    {
      absl::MutexLock lock(&worker->mu);
      worker->stop = true;
    }
    worker->thread.join();
  }
}

void TopologyMonitor::ProbeLoop(std::shared_ptr<Worker> worker) {
  std::unique_ptr<MemberProbe> probe = factory_ != nullptr
                                           ? factory_(worker->spec)
                                           : std::make_unique<PgMemberProbe>(worker->spec.dsn);
  for (;;) {
    {
      absl::MutexLock lock(&worker->mu);
      worker->soon = false;
    }
    // Read before the probe: a call's mark made while it is out stands.
    const uint64_t marks = topology_->suspect_marks();
    const absl::Time started = absl::Now();
    absl::StatusOr<MemberSample> sample = probe->Probe(started + options_.probe_timeout);
    absl::MutexLock lock(&worker->mu);
    if (worker->stop) return;
    topology_->Record(worker->spec.id, sample, marks);
    worker->mu.AwaitWithTimeout(
        absl::Condition(worker.get(), &Worker::Woken),
        std::max(absl::ZeroDuration(), started + options_.interval - absl::Now()));
    if (worker->stop) return;
  }
}

void TopologyMonitor::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (discovery_.joinable()) discovery_.join();
  absl::flat_hash_map<std::string, std::shared_ptr<Worker>> workers;
  {
    absl::MutexLock lock(&mu_);
    workers.swap(workers_);
  }
  for (auto& [id, worker] : workers) {
    absl::MutexLock lock(&worker->mu);
    worker->stop = true;
  }
  for (auto& [id, worker] : workers) worker->thread.join();
}

void TopologyMonitor::ProbeSoon(const std::string& id) {
  std::shared_ptr<Worker> worker;
  {
    absl::MutexLock lock(&mu_);
    auto it = workers_.find(id);
    if (it == workers_.end()) return;
    worker = it->second;
  }
  absl::MutexLock lock(&worker->mu);
  worker->soon = true;
}

absl::Status TopologyMonitor::discovery_status() const {
  absl::MutexLock lock(&mu_);
  return discovery_status_;
}

}  // namespace poolside::db
