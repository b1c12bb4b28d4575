#include "common/db/topology_monitor.h"

#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/db/conninfo.h"
#include "common/db/patroni_client.h"
#include "libpq-fe.h"

namespace poolside::db {

struct TopologyMonitor::Worker {
  explicit Worker(MemberSpec s) : spec(std::move(s)) {}
  const MemberSpec spec;
  std::thread thread;
  absl::Mutex mu;
  bool stop ABSL_GUARDED_BY(mu) = false;
};

namespace {

std::string MemberId(const Conninfo& c) {
  const std::string* host = c.Get("host");
  if (host == nullptr || host->empty()) host = c.Get("hostaddr");
  const std::string* port = c.Get("port");
  return absl::StrCat(host != nullptr && !host->empty() ? *host : "localhost", ":",
                      port != nullptr && !port->empty() ? *port : "5432");
}

}  // namespace

absl::StatusOr<std::vector<MemberSpec>> MembersFromDsns(const std::string& dsn,
                                                        const std::vector<std::string>& replicas) {
  absl::StatusOr<Conninfo> base = Conninfo::Parse(dsn);
  if (!base.ok()) return base.status();
  std::vector<MemberSpec> members;
  members.push_back({MemberId(*base), base->ToString()});
  absl::flat_hash_set<std::string> ids = {members[0].id};
  for (size_t i = 0; i < replicas.size(); ++i) {
    const std::string where = absl::StrCat("replicas[", i, "]");
    absl::StatusOr<Conninfo> entry = Conninfo::Parse(replicas[i]);
    if (!entry.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", entry.status().message()));
    }
    for (const char* keyword : {"dbname", "user", "password"}) {
      if (entry->Get(keyword) != nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, " sets ", keyword,
            ": a replica entry holds only what differs from the database's DSN (host, port, "
            "TLS files); the database, user and password are the DSN's"));
      }
    }
    Conninfo merged = *base;
    // A replica at another host must not inherit the primary's address.
    if (entry->Get("host") != nullptr || entry->Get("hostaddr") != nullptr) {
      merged.Erase("host");
      merged.Erase("hostaddr");
    }
    char* error = nullptr;
    PQconninfoOption* options = PQconninfoParse(replicas[i].c_str(), &error);
    if (options == nullptr) {
      if (error != nullptr) PQfreemem(error);
      return absl::InvalidArgumentError(absl::StrCat(where, ": not a connection string"));
    }
    for (const PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
      if (o->val != nullptr && o->val[0] != '\0') merged.Set(o->keyword, o->val);
    }
    PQconninfoFree(options);
    MemberSpec spec{MemberId(merged), merged.ToString()};
    if (!ids.insert(spec.id).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": ", spec.id, " is already a member of this database"));
    }
    members.push_back(std::move(spec));
  }
  return members;
}

absl::StatusOr<std::string> DsnForHost(const std::string& dsn, const std::string& host, int port) {
  absl::StatusOr<Conninfo> c = Conninfo::Parse(dsn);
  if (!c.ok()) return c.status();
  c->Erase("hostaddr");
  c->Set("host", host);
  c->Set("port", absl::StrCat(port));
  return c->ToString();
}

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
    if (absl::Status s = topology_->SetMembers(members); !s.ok()) return s;
    topology_->SetLeaderHint(view->leader);
    Reconcile(members);
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
    const absl::Time started = absl::Now();
    absl::StatusOr<MemberSample> sample = probe->Probe(started + options_.probe_timeout);
    absl::MutexLock lock(&worker->mu);
    if (worker->stop) return;
    topology_->Record(worker->spec.id, sample);
    worker->mu.AwaitWithTimeout(
        absl::Condition(&worker->stop),
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

absl::Status TopologyMonitor::discovery_status() const {
  absl::MutexLock lock(&mu_);
  return discovery_status_;
}

}  // namespace poolside::db
