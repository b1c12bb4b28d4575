// make run's supervisor for real: tools/devstack with PostgreSQL and the three
// services on free ports. Each service killed with SIGKILL comes back on its
// address while the other two keep answering; SIGINT (Ctrl-C) and SIGTERM stop
// everything, also while a service waits to be restarted, and leave no process,
// pid file or ready file behind.

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/cache.grpc.pb.h"
#include "proto/poolside/v1/ingest.grpc.pb.h"
#include "proto/poolside/v1/query.grpc.pb.h"
#include "tests/fixtures/files.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/service_process.h"
#include "tests/fixtures/subprocess.h"

namespace poolside::testing {
namespace {

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

// No such process, or a zombie nobody reaped yet (PID 1 of a container need
// not reap the postmaster pg_ctl left it).
bool ProcessGone(pid_t pid) {
  if (kill(pid, 0) != 0) return errno == ESRCH;
  const std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat")).value_or("");
  const size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z';
}

int ReadPid(const std::string& path) {
  int pid = 0;
  std::ifstream(path) >> pid;
  return pid;
}

// tools/devstack in a directory of its own under /tmp (the postgres user must
// reach its data directory), stopped and removed when destroyed.
class Devstack {
 public:
  ~Devstack() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      int status = 0;
      waitpid(pid_, &status, 0);
    }
    // PostgreSQL outlives a killed devstack: stop it through its pid file.
    const int postmaster = ReadPid(dir_ + "/pgdata/postmaster.pid");
    if (postmaster > 0) kill(postmaster, SIGQUIT);
    if (!dir_.empty()) testing::RunCommand({"rm", "-rf", dir_}).IgnoreError();
  }

  absl::Status Start() {
    dir_ = "/tmp/poolside-devstack.XXXXXX";
    if (mkdtemp(dir_.data()) == nullptr) return absl::InternalError("mkdtemp failed");
    chmod(dir_.c_str(), 0755);
    log_ = testing::NewStem("devstack") + ".log";
    testing::SpawnOptions options;
    options.log_path = log_;
    absl::StatusOr<pid_t> pid = testing::SpawnProcess(
        {RunfilePath("tools/devstack"), "--run_dir=" + dir_, "--ready_file=" + ready_file(),
         "--pg_port=0", "--query_port=0", "--cache_port=0", "--ingest_port=0",
         "--query_metrics_port=0", "--cache_metrics_port=0", "--ingest_metrics_port=0",
         "--query_pool_size=2"},
        options);
    if (!pid.ok()) return pid.status();
    pid_ = *pid;
    bool exited = false;
    const bool ready = WaitFor(
        [&] {
          int status = 0;
          if (waitpid(pid_, &status, WNOHANG) == pid_) {
            exited = true;
            pid_ = 0;
          }
          return exited || Exists(ready_file());
        },
        absl::Seconds(90));
    if (!ready || exited) {
      return absl::UnavailableError(absl::StrCat("devstack did not get ready: ", Log()));
    }
    for (absl::string_view line : absl::StrSplit(ReadFile(ready_file()).value_or(""), '\n')) {
      std::pair<std::string, std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
      vars_[kv.first] = std::string(absl::StripSuffix(absl::StripPrefix(kv.second, "'"), "'"));
    }
    return absl::OkStatus();
  }

  // Sends `sig` and waits for devstack's exit code.
  absl::StatusOr<int> Stop(int sig) {
    if (pid_ <= 0) return absl::FailedPreconditionError("not running");
    kill(pid_, sig);
    int status = 0;
    bool exited =
        WaitFor([&] { return waitpid(pid_, &status, WNOHANG) == pid_; }, absl::Seconds(60));
    if (!exited) return absl::DeadlineExceededError(absl::StrCat("still running: ", Log()));
    pid_ = 0;
    return testing::ExitCodeFromWaitStatus(status);
  }

  std::string var(const std::string& name) const {
    auto it = vars_.find(name);
    return it == vars_.end() ? "" : it->second;
  }
  std::string pid_file(const std::string& service) const {
    return absl::StrCat(dir_, "/", service, ".pid");
  }
  int service_pid(const std::string& service) const { return ReadPid(pid_file(service)); }
  int postmaster_pid() const { return ReadPid(dir_ + "/pgdata/postmaster.pid"); }
  std::string ready_file() const { return dir_ + "/ready"; }
  std::string Log() const { return testing::ReadFileTail(log_, 8192); }

 private:
  std::string dir_;
  std::string log_;
  pid_t pid_ = 0;
  std::map<std::string, std::string> vars_;
};

// One call to each service, as a client of `make run` would make them.
class Clients {
 public:
  explicit Clients(const Devstack& stack)
      : addresses_{{"query", stack.var("QUERY_ADDR")},
                   {"cache", stack.var("CACHE_ADDR")},
                   {"ingest", stack.var("INGEST_ADDR")}} {}

  const std::string& address(const std::string& service) { return addresses_[service]; }

  // The service's answer to a real call on a fresh channel (so a restarted
  // service is seen at once, not after the channel's reconnect backoff).
  grpc::Status Call(const std::string& service) {
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
        Connect(addresses_[service], absl::Seconds(2));
    if (!channel.ok()) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, std::string(channel.status().message()));
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    if (service == "query") {
      // A cacheable read: answered from the database while the sidecar is down.
      v1::ExecuteRequest request;
      request.set_database("demo");
      request.set_sql("SELECT owner FROM accounts WHERE id = 7");
      request.mutable_cache()->set_ttl_ms(60000);
      v1::ExecuteResponse response;
      grpc::Status s = v1::QueryService::NewStub(*channel)->Execute(&ctx, request, &response);
      if (s.ok() && response.result().rows_size() != 1) {
        return grpc::Status(grpc::StatusCode::INTERNAL, "accounts 7: not one row");
      }
      return s;
    }
    if (service == "cache") {
      v1::CacheStats stats;
      return v1::CacheService::NewStub(*channel)->GetStats(&ctx, v1::CacheGetStatsRequest(),
                                                           &stats);
    }
    v1::WriteRequest request;
    request.set_database("demo");
    request.set_table("events");
    for (const char* c : {"id", "account_id", "kind", "at"}) request.add_columns(c);
    v1::Row* row = request.add_rows();
    row->add_values()->set_int64_value(++event_id_);
    row->add_values()->set_int64_value(1);
    row->add_values()->set_text_value("devstack_test");
    row->add_values()->mutable_timestamp_value()->set_seconds(1700000000);
    v1::WriteResponse response;
    return v1::IngestService::NewStub(*channel)->Write(&ctx, request, &response);
  }

 private:
  std::map<std::string, std::string> addresses_;
  int64_t event_id_ = 0;
};

TEST(DevstackTest, AKilledServiceComesBackOnItsAddressWhileTheOthersServe) {
  Devstack stack;
  ASSERT_TRUE(stack.Start().ok()) << stack.Log();
  Clients clients(stack);
  for (const char* service : {"query", "cache", "ingest"}) {
    ASSERT_TRUE(clients.Call(service).ok()) << service;
  }

  int rounds_while_down = 0;
  for (const std::string victim : {"cache", "query", "ingest", "query"}) {
    SCOPED_TRACE(victim);
    const int old_pid = stack.service_pid(victim);
    ASSERT_GT(old_pid, 0);
    ASSERT_EQ(kill(old_pid, SIGKILL), 0);
    ASSERT_TRUE(WaitFor([&] { return ProcessGone(old_pid); }, absl::Seconds(10)));
    // Until the victim answers again from a new process, the others answer
    // every call.
    bool back = false;
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (!back && absl::Now() < deadline) {
      for (const char* other : {"query", "cache", "ingest"}) {
        if (other == victim) continue;
        grpc::Status s = clients.Call(other);
        EXPECT_TRUE(s.ok()) << other << " while " << victim << " was down: " << s.error_message();
      }
      const int pid = stack.service_pid(victim);
      back = pid > 0 && pid != old_pid && clients.Call(victim).ok();
      if (!back) ++rounds_while_down;
    }
    ASSERT_TRUE(back) << victim << " did not come back:\n" << stack.Log();
  }
  // Every restart waited its backoff, so some calls ran while a service was down.
  EXPECT_GT(rounds_while_down, 0);
  for (const char* service : {"query", "cache", "ingest"}) {
    EXPECT_TRUE(clients.Call(service).ok()) << service;
  }

  const std::vector<int> pids = {stack.service_pid("query"), stack.service_pid("cache"),
                                 stack.service_pid("ingest"), stack.postmaster_pid()};
  absl::StatusOr<int> code = stack.Stop(SIGINT);
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0) << stack.Log();
  for (int pid : pids) {
    EXPECT_GT(pid, 0);
    EXPECT_TRUE(ProcessGone(pid)) << pid;
  }
  for (const char* service : {"query", "cache", "ingest"}) {
    EXPECT_FALSE(Exists(stack.pid_file(service))) << service;
  }
  EXPECT_FALSE(Exists(stack.ready_file()));
}

TEST(DevstackTest, SigtermWhileAServiceWaitsToRestartStopsEverything) {
  Devstack stack;
  ASSERT_TRUE(stack.Start().ok()) << stack.Log();
  const int query = stack.service_pid("query");
  const int cache = stack.service_pid("cache");
  const int ingest = stack.service_pid("ingest");
  const int postmaster = stack.postmaster_pid();
  // Killed repeatedly, ingest's backoff grows; stop devstack while it waits.
  ASSERT_EQ(kill(ingest, SIGKILL), 0);
  ASSERT_TRUE(WaitFor([&] { return ProcessGone(ingest); }, absl::Seconds(10)));
  int restarted = 0;
  ASSERT_TRUE(WaitFor(
      [&] {
        restarted = stack.service_pid("ingest");
        return restarted > 0 && restarted != ingest;
      },
      absl::Seconds(30)));
  ASSERT_EQ(kill(restarted, SIGKILL), 0);
  ASSERT_TRUE(WaitFor([&] { return !Exists(stack.pid_file("ingest")); }, absl::Seconds(10)));

  absl::StatusOr<int> code = stack.Stop(SIGTERM);
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0) << stack.Log();
  for (int pid : {query, cache, ingest, restarted, postmaster}) {
    EXPECT_TRUE(ProcessGone(pid)) << pid;
  }
  EXPECT_FALSE(Exists(stack.pid_file("query")));
  EXPECT_FALSE(Exists(stack.ready_file()));
  // No service came up after the stop.
  EXPECT_FALSE(Exists(stack.pid_file("ingest")));
}

}  // namespace
}  // namespace poolside::testing
