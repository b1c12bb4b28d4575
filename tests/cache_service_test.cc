// Integration tests of the cache sidecar: the real `cache_server` binary,
// called over loopback TCP and over its unix domain socket.

#include <dirent.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/auth/token_hash.h"
#include "common/clock/clock.h"
#include "common/server/channel.h"
#include "common/server/queue_service.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "gtest/gtest.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"
#include "proto/grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "proto/poolside/v1/cache.grpc.pb.h"
#include "proto/poolside/v1/config.pb.h"
#include "services/query/near_cache.h"
#include "services/query/sidecar_client.h"
#include "tests/fixtures/service_process.h"
#include "tests/fixtures/subprocess.h"

namespace poolside::testing {
namespace {

// A unary call of `method` with an empty request, through gRPC's generic
// (callback) stub: its status.
grpc::Status GenericUnaryCall(const std::shared_ptr<grpc::Channel>& channel,
                              const std::string& method) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1);
  grpc::ByteBuffer reply;
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &reply, [&](grpc::Status s) {
    status = std::move(s);
    done.Notify();
  });
  done.WaitForNotification();
  return status;
}

// Unix socket paths are limited to 107 bytes; the test output directory can be
// longer, so sockets live in a short directory of their own.
std::string ShortTempDir() {
  std::string templ = "/tmp/poolside-cache-XXXXXX";
  if (mkdtemp(templ.data()) == nullptr) return "/tmp";
  return templ;
}

struct CacheServer {
  std::unique_ptr<ServiceProcess> process;
  std::string socket_path;
  std::string config_path;
  // Null when the server has no TCP listener.
  std::shared_ptr<grpc::Channel> tcp;
  std::shared_ptr<grpc::Channel> unix_channel;
  std::unique_ptr<v1::CacheService::Stub> over_tcp;
  std::unique_ptr<v1::CacheService::Stub> over_unix;
};

// `token`: every call carries it (when not empty).
std::shared_ptr<grpc::Channel> Connect(const std::string& target, int channel_id = 0,
                                       const std::string& token = "") {
  grpc::ChannelArguments args;
  // A distinct argument gives a channel of its own (no shared subchannel), as a
  // second process would have.
  args.SetInt("poolside.test_channel_id", channel_id);
  server::ChannelOptions options;
  options.target = target;
  options.tls = server::PlaintextTls();
  options.args = args;
  options.bearer_token = token;
  return *server::CreateChannel(std::move(options));
}

bool WaitConnected(const std::shared_ptr<grpc::Channel>& channel) {
  return channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10));
}

std::string WriteConfig(const v1::CacheServiceConfig& config, const std::string& path) {
  std::string json;
  google::protobuf::util::JsonPrintOptions print;
  print.add_whitespace = true;
  (void)google::protobuf::util::MessageToJsonString(config, &json, print);
  std::ofstream(path) << json;
  return path;
}

struct StartOptions {
  // server.listen; empty: the unix socket only.
  std::string listen = "127.0.0.1:0";
  std::string log_level = "debug";
  // Carried by the returned server's channels.
  std::string token;
};

// Options for a server that logs no line per call (Invalidate, Get...).
StartOptions Quiet() {
  StartOptions quiet;
  quiet.log_level = "info";
  return quiet;
}

absl::StatusOr<CacheServer> StartCacheServer(v1::CacheServiceConfig config,
                                             std::string socket_path = "",
                                             const StartOptions& start = {}) {
  static std::atomic<int> counter{0};
  const std::string stem =
      absl::StrCat(testing::TestOutputDir(), "/cache_server.", getpid(), ".", counter.fetch_add(1));
  if (socket_path.empty()) socket_path = ShortTempDir() + "/cache.sock";
  config.mutable_server()->set_listen(start.listen);
  if (!config.server().has_tls()) config.mutable_server()->mutable_tls()->set_plaintext(true);
  // Written once serving, also without a TCP port ("1" then): the sign it is up.
  config.mutable_server()->set_port_file(stem + ".port");
  config.mutable_server()->set_drain_timeout_ms(5000);
  config.set_unix_socket(socket_path);
  CacheServer server;
  server.socket_path = socket_path;
  server.config_path = WriteConfig(config, stem + ".json");
  absl::StatusOr<std::unique_ptr<ServiceProcess>> process = ServiceProcess::Start(
      RunfilePath("services/cache/cache_server"),
      {absl::StrCat("--config=", server.config_path), "--log_level=" + start.log_level},
      stem + ".port");
  if (!process.ok()) return process.status();
  server.process = *std::move(process);
  if (!start.listen.empty()) {
    server.tcp = Connect(server.process->address(), 0, start.token);
    if (!WaitConnected(server.tcp)) return absl::UnavailableError("cannot connect over TCP");
    server.over_tcp = v1::CacheService::NewStub(server.tcp);
  }
  server.unix_channel = Connect("unix:" + socket_path, 0, start.token);
  if (!WaitConnected(server.unix_channel)) {
    return absl::UnavailableError("cannot connect over the unix socket");
  }
  server.over_unix = v1::CacheService::NewStub(server.unix_channel);
  return server;
}

// Polls `condition` every 10 ms until it holds or `timeout` passes.
bool Eventually(const std::function<bool()>& condition, absl::Duration timeout) {
  const absl::Time until = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > until) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

// SIGTERM: the sidecar drains and exits 0.
void ExpectCleanExit(CacheServer& server) {
  ASSERT_TRUE(server.process->Signal(SIGTERM).ok());
  absl::StatusOr<int> code = server.process->Wait(absl::Seconds(20));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0) << server.process->LogTail();
}

// Closes the test's own connections, then ExpectCleanExit: an idle client
// connection would hold the drain for its whole timeout.
void StopCacheServer(CacheServer& server) {
  server.over_tcp.reset();
  server.over_unix.reset();
  server.tcp.reset();
  server.unix_channel.reset();
  ExpectCleanExit(server);
}

std::string Describe(const grpc::Status& s) {
  return absl::StrCat("code ", s.error_code(), ": ", s.error_message());
}

// Small typed wrappers; each call has a deadline.
struct Client {
  v1::CacheService::Stub* stub;

  grpc::Status Get(const std::string& key, v1::CacheGetResponse* out) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::CacheGetRequest req;
    req.set_key(key);
    return stub->Get(&ctx, req, out);
  }
  v1::CacheGetResponse Get(const std::string& key) {
    v1::CacheGetResponse out;
    grpc::Status s = Get(key, &out);
    EXPECT_TRUE(s.ok()) << Describe(s);
    return out;
  }
  grpc::Status Set(const v1::CacheSetRequest& req, v1::CacheSetResponse* out) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return stub->Set(&ctx, req, out);
  }
  // kCurrent: the generation GetStats gives just before (a value read now).
  static constexpr uint64_t kCurrent = ~uint64_t{0};
  v1::CacheSetResponse Set(const std::string& key, const std::string& value,
                           std::vector<std::string> tags = {}, uint64_t read_generation = kCurrent,
                           uint32_t ttl_ms = 60000, uint32_t stale_ms = 0) {
    if (read_generation == kCurrent) read_generation = Stats().generation();
    v1::CacheSetRequest req;
    req.set_key(key);
    req.set_value(value);
    req.set_ttl_ms(ttl_ms);
    req.set_stale_ms(stale_ms);
    for (auto& t : tags) req.add_tags(t);
    req.set_read_generation(read_generation);
    v1::CacheSetResponse out;
    grpc::Status s = Set(req, &out);
    EXPECT_TRUE(s.ok()) << Describe(s);
    return out;
  }
  bool Delete(const std::string& key) {
    grpc::ClientContext ctx;
    v1::CacheDeleteRequest req;
    req.set_key(key);
    v1::CacheDeleteResponse out;
    grpc::Status s = stub->Delete(&ctx, req, &out);
    EXPECT_TRUE(s.ok()) << Describe(s);
    return out.deleted();
  }
  grpc::Status Invalidate(const v1::CacheInvalidateRequest& req, v1::CacheInvalidateResponse* out) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return stub->Invalidate(&ctx, req, out);
  }
  v1::CacheInvalidateResponse Invalidate(std::vector<std::string> tags,
                                         std::vector<std::string> prefixes = {},
                                         bool flush = false) {
    v1::CacheInvalidateRequest req;
    for (auto& t : tags) req.add_tags(t);
    for (auto& p : prefixes) req.add_prefixes(p);
    req.set_flush_all(flush);
    req.set_source("test");
    v1::CacheInvalidateResponse out;
    grpc::Status s = Invalidate(req, &out);
    EXPECT_TRUE(s.ok()) << Describe(s);
    return out;
  }
  v1::CacheStats Stats() {
    grpc::ClientContext ctx;
    v1::CacheStats out;
    grpc::Status s = stub->GetStats(&ctx, v1::CacheGetStatsRequest(), &out);
    EXPECT_TRUE(s.ok()) << Describe(s);
    return out;
  }
};

v1::CacheServiceConfig SmallConfig() {
  v1::CacheServiceConfig c;
  c.mutable_server()->mutable_tls()->set_plaintext(true);
  c.set_capacity_bytes(8 << 20);
  c.set_shards(4);
  c.set_max_entry_bytes(1 << 20);
  c.set_max_key_bytes(256);
  c.set_max_ttl_ms(3600000);
  c.set_max_tags(4);
  c.set_admission(false);
  return c;
}

class CacheServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<CacheServer> s = StartCacheServer(SmallConfig());
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = new CacheServer(*std::move(s));
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(server_, nullptr); }

  Client tcp() { return Client{server_->over_tcp.get()}; }
  Client uds() { return Client{server_->over_unix.get()}; }

  static CacheServer* server_;
};

CacheServer* CacheServiceTest::server_ = nullptr;

TEST_F(CacheServiceTest, SetOverTcpGetOverUnixSocket) {
  v1::CacheSetResponse set = tcp().Set("both/1", "value one", {"t1"}, Client::kCurrent, 60000);
  EXPECT_TRUE(set.stored());
  EXPECT_EQ(set.reason(), v1::CacheSetResponse::STORED);
  v1::CacheGetResponse got = uds().Get("both/1");
  EXPECT_EQ(got.outcome(), v1::CacheGetResponse::HIT);
  EXPECT_EQ(got.value(), "value one");
  EXPECT_GT(got.remaining_ms(), 0u);
  EXPECT_LE(got.remaining_ms(), 60000u);
  EXPECT_GT(got.generation(), 0u);

  EXPECT_TRUE(uds().Set("both/2", std::string(100000, 'b')).stored());
  EXPECT_EQ(tcp().Get("both/2").value(), std::string(100000, 'b'));
  EXPECT_EQ(tcp().Get("both/absent").outcome(), v1::CacheGetResponse::MISS);
}

TEST_F(CacheServiceTest, GetManyAnswersEveryKeyInOrder) {
  // Keys are bytes: not UTF-8 text in general.
  const std::string binary("k\xff\x00\x80", 4);
  ASSERT_TRUE(uds().Set("many/1", "one").stored());
  ASSERT_TRUE(uds().Set(binary, "binary").stored());
  v1::CacheGetManyRequest req;
  for (const std::string& k :
       {std::string("many/1"), std::string("many/absent"), binary, std::string("many/1")}) {
    req.add_keys(k);
  }
  grpc::ClientContext ctx;
  v1::CacheGetManyResponse out;
  grpc::Status s = server_->over_unix->GetMany(&ctx, req, &out);
  ASSERT_TRUE(s.ok()) << Describe(s);
  ASSERT_EQ(out.results_size(), 4);
  EXPECT_EQ(out.results(0).outcome(), v1::CacheGetResponse::HIT);
  EXPECT_EQ(out.results(0).value(), "one");
  EXPECT_EQ(out.results(1).outcome(), v1::CacheGetResponse::MISS);
  EXPECT_GT(out.results(1).generation(), 0u);
  EXPECT_EQ(out.results(2).value(), "binary");
  EXPECT_EQ(out.results(3).value(), "one");

  auto get_many = [&](const v1::CacheGetManyRequest& r) {
    grpc::ClientContext c;
    v1::CacheGetManyResponse o;
    return server_->over_tcp->GetMany(&c, r, &o);
  };
  grpc::Status none = get_many(v1::CacheGetManyRequest());
  EXPECT_EQ(none.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(none);
  v1::CacheGetManyRequest too_many;
  for (int i = 0; i < 1025; ++i) too_many.add_keys(absl::StrCat("k", i));
  grpc::Status many = get_many(too_many);
  EXPECT_EQ(many.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(many);
  EXPECT_TRUE(absl::StrContains(many.error_message(), "1 to 1024 keys")) << Describe(many);
  v1::CacheGetManyRequest bad_key;
  bad_key.add_keys("fine");
  bad_key.add_keys("");
  grpc::Status bad = get_many(bad_key);
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(bad);
  EXPECT_TRUE(absl::StrContains(bad.error_message(), "keys[1]")) << Describe(bad);
}

TEST_F(CacheServiceTest, QueryServiceClientBatchesConcurrentGetsAndAnswersEachItsOwn) {
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(uds().Set(absl::StrCat("batch/", i), absl::StrCat("value ", i)).stored());
  }
  v1::ClientTlsConfig plaintext;
  plaintext.set_plaintext(true);
  absl::StatusOr<std::unique_ptr<query::SidecarClient>> client = query::SidecarClient::Create(
      absl::StrCat("unix:", server_->socket_path), plaintext, absl::Seconds(10), absl::Seconds(5));
  ASSERT_TRUE(client.ok()) << client.status();
  // Far more Gets at once than calls may be in flight: most travel in GetMany
  // batches, and every callback must get the value of its own key.
  constexpr int kGets = 500;
  absl::Mutex mu;
  int answered = 0, right = 0;
  for (int i = 0; i < kGets; ++i) {
    const int k = i % 110;  // keys 100..109 are absent
    (*client)->Get(absl::StrCat("batch/", k), [&, k](absl::StatusOr<query::CacheLookup> r) {
      const bool ok = r.ok() && (k >= 100 ? r->outcome == query::CacheLookup::kMiss
                                          : r->outcome == query::CacheLookup::kHit &&
                                                r->value == absl::StrCat("value ", k));
      absl::MutexLock lock(&mu);
      ++answered;
      if (ok) ++right;
    });
  }
  absl::MutexLock lock(&mu);
  ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(
                                      +[](int* n) { return *n == kGets; }, &answered),
                                  absl::Seconds(30)))
      << answered << " of " << kGets << " Gets answered";
  EXPECT_EQ(right, kGets);
}

// query_server hands the client its server's completion queue (UseQueue):
// calls already out on the client's own queue are still answered, later ones
// and the watch complete on the thread polling the new queue. Close() ends
// the watch and the calls; afterwards every call answers UNAVAILABLE at once.
TEST_F(CacheServiceTest, QueryServiceClientMovesToAnotherQueueAndClosesOnIt) {
  ASSERT_TRUE(uds().Set("queue/1", "one").stored());
  v1::ClientTlsConfig plaintext;
  plaintext.set_plaintext(true);
  absl::StatusOr<std::unique_ptr<query::SidecarClient>> client = query::SidecarClient::Create(
      absl::StrCat("unix:", server_->socket_path), plaintext, absl::Seconds(10), absl::Seconds(5));
  ASSERT_TRUE(client.ok()) << client.status();

  absl::Mutex mu;
  int answered = 0, hits = 0;
  std::vector<std::thread::id> answered_on;
  auto count = [&](absl::StatusOr<query::CacheLookup> r) {
    absl::MutexLock lock(&mu);
    ++answered;
    if (r.ok() && r->outcome == query::CacheLookup::kHit && r->value == "one") ++hits;
    answered_on.push_back(std::this_thread::get_id());
  };
  constexpr int kBefore = 50;
  for (int i = 0; i < kBefore; ++i) (*client)->Get("queue/1", count);

  grpc::CompletionQueue cq;
  std::thread poller(server::PollQueue, &cq);
  (*client)->UseQueue(&cq);
  {
    absl::MutexLock lock(&mu);
    answered_on.clear();
  }
  constexpr int kAfter = 20;
  for (int i = 0; i < kAfter; ++i) (*client)->Get("queue/1", count);
  std::vector<query::CacheInvalidationEvent::Kind> events;
  std::thread::id event_thread;
  // EXPECT, not ASSERT, from here on: the poller must be joined.
  EXPECT_TRUE((*client)->Watch([&](const query::CacheInvalidationEvent& e) {
    absl::MutexLock lock(&mu);
    events.push_back(e.kind);
    event_thread = std::this_thread::get_id();
  }));
  {
    absl::MutexLock lock(&mu);
    auto all_in = [&] { return answered == kBefore + kAfter && !events.empty(); };
    EXPECT_TRUE(mu.AwaitWithTimeout(absl::Condition(&all_in), absl::Seconds(30)))
        << answered << " of " << kBefore + kAfter << " Gets answered";
    EXPECT_EQ(hits, kBefore + kAfter);
    // Gets that queued behind the first calls may leave on the new queue too.
    EXPECT_GE(answered_on.size(), static_cast<size_t>(kAfter));
    for (std::thread::id id : answered_on) EXPECT_EQ(id, poller.get_id());
    EXPECT_EQ(events.empty() ? query::CacheInvalidationEvent::kBroken : events[0],
              query::CacheInvalidationEvent::kSubscribed);
    EXPECT_EQ(event_thread, poller.get_id());
  }

  (*client)->Close();
  (*client)->Close();  // idempotent
  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(events, (std::vector<query::CacheInvalidationEvent::Kind>{
                          query::CacheInvalidationEvent::kSubscribed,
                          query::CacheInvalidationEvent::kBroken}));
  }
  bool got = false, set = false, invalidated = false;
  std::thread::id got_on;
  (*client)->Get("queue/1", [&](absl::StatusOr<query::CacheLookup> r) {
    got = true;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
    EXPECT_EQ(r.status().message(), "cache sidecar: client closed");
    got_on = std::this_thread::get_id();
  });
  (*client)->Set(query::CacheFill{"queue/2", "two", absl::Seconds(60)},
                 [&](absl::StatusOr<bool> r) {
                   set = true;
                   EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
                 });
  (*client)->Invalidate({"t"}, false, "test", absl::Seconds(10), [&](absl::Status s) {
    invalidated = true;
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  });
  // Inline: answered on this thread, before the calls returned.
  EXPECT_TRUE(got);
  EXPECT_EQ(got_on, std::this_thread::get_id());
  EXPECT_TRUE(set);
  EXPECT_TRUE(invalidated);
  EXPECT_FALSE((*client)->Watch([](const query::CacheInvalidationEvent&) {}));
  (*client)->StopWatching();  // after Close: nothing to stop
  EXPECT_EQ(uds().Get("queue/2").outcome(), v1::CacheGetResponse::MISS);

  cq.Shutdown();
  poller.join();
  client->reset();
}

TEST_F(CacheServiceTest, DeleteAndInvalidate) {
  Client c = tcp();
  c.Set("inv/a", "1", {"orders"});
  c.Set("inv/b", "2", {"orders", "users"});
  c.Set("inv/c", "3", {"users"});
  c.Set("other/d", "4");
  EXPECT_TRUE(c.Delete("other/d"));
  EXPECT_FALSE(c.Delete("other/d"));

  const uint64_t before = c.Stats().generation();
  v1::CacheInvalidateResponse r = c.Invalidate({"orders"});
  EXPECT_EQ(r.removed(), 2u);
  EXPECT_EQ(r.generation(), before + 1);
  EXPECT_EQ(c.Get("inv/a").outcome(), v1::CacheGetResponse::MISS);
  EXPECT_EQ(c.Get("inv/c").outcome(), v1::CacheGetResponse::HIT);
  r = uds().Invalidate({}, {"inv/"});
  EXPECT_EQ(r.removed(), 1u);
  EXPECT_EQ(r.generation(), before + 2);
  EXPECT_EQ(c.Get("inv/c").outcome(), v1::CacheGetResponse::MISS);
}

TEST_F(CacheServiceTest, StaleWindowIsReported) {
  Client c = tcp();
  // A stale window with a fresh period: HIT now, remaining within the ttl.
  ASSERT_TRUE(c.Set("stale/1", "v", {}, Client::kCurrent, 3600000, 1000).stored());
  v1::CacheGetResponse got = c.Get("stale/1");
  EXPECT_EQ(got.outcome(), v1::CacheGetResponse::HIT);
  EXPECT_LE(got.remaining_ms(), 3600000u);
}

// The race the generations exist for, over gRPC: a reader misses, a write's
// invalidation arrives, then the reader's (stale) fill must be refused.
TEST_F(CacheServiceTest, FillRacingAnInvalidationIsRefused) {
  Client reader = uds();
  Client writer = tcp();
  v1::CacheGetResponse miss = reader.Get("race/q");
  ASSERT_EQ(miss.outcome(), v1::CacheGetResponse::MISS);
  writer.Invalidate({"race_table"});
  v1::CacheSetResponse fill = reader.Set("race/q", "old rows", {"race_table"}, miss.generation());
  EXPECT_FALSE(fill.stored());
  EXPECT_EQ(fill.reason(), v1::CacheSetResponse::INVALIDATED);
  EXPECT_EQ(reader.Get("race/q").outcome(), v1::CacheGetResponse::MISS);

  // Invalidating an unrelated tag does not refuse a fill.
  miss = reader.Get("race/q");
  writer.Invalidate({"some_other_table"});
  EXPECT_TRUE(reader.Set("race/q", "new rows", {"race_table"}, miss.generation()).stored());
  // A fill made before the invalidation is removed by it.
  EXPECT_EQ(writer.Invalidate({"race_table"}).removed(), 1u);
  EXPECT_EQ(reader.Get("race/q").outcome(), v1::CacheGetResponse::MISS);
  // A generation this server never issued is an error, and stores nothing.
  v1::CacheSetRequest forged;
  forged.set_key("race/q");
  forged.set_value("x");
  forged.set_ttl_ms(60000);
  forged.set_read_generation(1);
  v1::CacheSetResponse refused;
  grpc::Status status = reader.Set(forged, &refused);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Describe(status);
  EXPECT_EQ(reader.Get("race/q").outcome(), v1::CacheGetResponse::MISS);
}

TEST_F(CacheServiceTest, BadRequestsAreInvalidArgument) {
  Client c = tcp();
  auto expect_invalid = [](const grpc::Status& s, const std::string& needle) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(s);
    EXPECT_TRUE(absl::StrContains(s.error_message(), needle)) << Describe(s);
  };
  v1::CacheGetResponse get;
  expect_invalid(c.Get("", &get), "empty");
  expect_invalid(c.Get(std::string(257, 'k'), &get), "maxKeyBytes = 256");

  v1::CacheSetResponse set;
  v1::CacheSetRequest req;
  req.set_key("k");
  req.set_value("v");
  req.set_read_generation(c.Stats().generation());
  expect_invalid(c.Set(req, &set), "ttl_ms");  // ttl 0
  req.set_ttl_ms(3600001);
  expect_invalid(c.Set(req, &set), "maxTtlMs = 3600000");
  req.set_ttl_ms(1000);
  req.set_stale_ms(3600001);
  expect_invalid(c.Set(req, &set), "stale_ms");
  req.set_stale_ms(0);
  for (int i = 0; i < 5; ++i) req.add_tags(absl::StrCat("t", i));
  expect_invalid(c.Set(req, &set), "maxTags = 4");
  req.clear_tags();
  req.add_tags("");
  expect_invalid(c.Set(req, &set), "tags");
  req.clear_tags();
  req.set_key("");
  expect_invalid(c.Set(req, &set), "empty");

  v1::CacheInvalidateResponse inv;
  expect_invalid(c.Invalidate(v1::CacheInvalidateRequest(), &inv), "flush_all");
  v1::CacheInvalidateRequest empty_prefix;
  empty_prefix.add_prefixes("");
  expect_invalid(c.Invalidate(empty_prefix, &inv), "prefix");

  // Well-formed but larger than the store takes: not an error, not stored.
  v1::CacheSetResponse big = c.Set("big", std::string((1 << 20) + 1, 'x'));
  EXPECT_FALSE(big.stored());
  EXPECT_EQ(big.reason(), v1::CacheSetResponse::TOO_LARGE);
  EXPECT_EQ(c.Get("big").outcome(), v1::CacheGetResponse::MISS);
}

// Tags and key prefixes are matched byte for byte: a NUL inside one is part
// of it (a tag cut at its NUL, or one of which it is a prefix, is another
// tag), non-ASCII UTF-8 is just bytes, and a fill that read before an
// invalidation of such a tag is refused like any other.
TEST_F(CacheServiceTest, TagsAndPrefixesMatchExactlyWhateverTheirBytes) {
  Client c = tcp();
  const std::string nul_tag("t:\0a", 4);
  const std::string key_a("bin/\0a", 6), key_b("bin/\0b", 6);
  ASSERT_TRUE(c.Set(key_a, "a", {nul_tag}).stored());
  ASSERT_TRUE(c.Set(key_b, "b", {"t:", "t\xc3\xa0g\xe2\x9c\x93"}).stored());
  EXPECT_EQ(c.Invalidate({"t:"}).removed(), 1u);
  EXPECT_EQ(c.Get(key_a).outcome(), v1::CacheGetResponse::HIT);
  EXPECT_EQ(c.Get(key_b).outcome(), v1::CacheGetResponse::MISS);
  EXPECT_EQ(c.Invalidate({std::string("t:\0", 3)}).removed(), 0u);
  EXPECT_EQ(c.Invalidate({"t\xc3\xa0g"}).removed(), 0u);
  EXPECT_EQ(c.Get(key_a).outcome(), v1::CacheGetResponse::HIT);
  EXPECT_EQ(c.Invalidate({nul_tag}).removed(), 1u);
  EXPECT_EQ(c.Get(key_a).outcome(), v1::CacheGetResponse::MISS);

  // Prefixes with a NUL inside.
  ASSERT_TRUE(c.Set(key_a, "a").stored());
  ASSERT_TRUE(c.Set(key_b, "b").stored());
  EXPECT_EQ(c.Invalidate({}, {key_b}).removed(), 1u);
  EXPECT_EQ(c.Get(key_a).outcome(), v1::CacheGetResponse::HIT);
  EXPECT_EQ(c.Invalidate({}, {std::string("bin/\0", 5)}).removed(), 1u);
  EXPECT_EQ(c.Get(key_a).outcome(), v1::CacheGetResponse::MISS);

  // The race, with the NUL tag: the fill read before the invalidation.
  v1::CacheGetResponse miss = c.Get(key_a);
  ASSERT_EQ(miss.outcome(), v1::CacheGetResponse::MISS);
  c.Invalidate({nul_tag});
  v1::CacheSetResponse fill = c.Set(key_a, "old", {"unrelated", nul_tag}, miss.generation());
  EXPECT_FALSE(fill.stored());
  EXPECT_EQ(fill.reason(), v1::CacheSetResponse::INVALIDATED);
  EXPECT_EQ(c.Get(key_a).outcome(), v1::CacheGetResponse::MISS);
}

TEST_F(CacheServiceTest, SocketIsGroupAccessibleAndServesASecondClient) {
  struct stat st;
  ASSERT_EQ(stat(server_->socket_path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  // A second, independent connection through the socket file sees the same data.
  auto second = Connect("unix:" + server_->socket_path, /*channel_id=*/2);
  ASSERT_TRUE(WaitConnected(second));
  auto stub = v1::CacheService::NewStub(second);
  Client c{stub.get()};
  tcp().Set("second/1", "shared");
  EXPECT_EQ(c.Get("second/1").value(), "shared");
}

// The sidecar serves the standard health Check itself (query probes ask for
// "" and "liveness") and reflection, and nothing it does not declare:
// reflection's v1 (it serves v1alpha, as gRPC 1.51 does) and unknown methods
// are UNIMPLEMENTED, and none of them is left waiting for a handler.
TEST_F(CacheServiceTest, HealthCheckIsServedAndUndeclaredMethodsAreUnimplemented) {
  namespace health = ::grpc::health::v1;
  for (const std::shared_ptr<grpc::Channel>& channel : {server_->tcp, server_->unix_channel}) {
    SCOPED_TRACE(channel == server_->tcp ? "over TCP" : "over the unix socket");
    std::unique_ptr<health::Health::Stub> stub = health::Health::NewStub(channel);
    auto check = [&](const std::string& service, health::HealthCheckResponse* response) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      health::HealthCheckRequest request;
      request.set_service(service);
      return stub->Check(&ctx, request, response);
    };
    for (const std::string service : {"", "liveness"}) {
      health::HealthCheckResponse response;
      grpc::Status s = check(service, &response);
      ASSERT_TRUE(s.ok()) << "\"" << service << "\": " << Describe(s);
      EXPECT_EQ(response.status(), health::HealthCheckResponse::SERVING) << "\"" << service << "\"";
    }
    health::HealthCheckResponse unknown;
    grpc::Status s = check("poolside.v1.NoSuchService", &unknown);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << Describe(s);

    {
      namespace reflection = ::grpc::reflection::v1alpha;
      auto reflection_stub = reflection::ServerReflection::NewStub(channel);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      auto stream = reflection_stub->ServerReflectionInfo(&ctx);
      reflection::ServerReflectionRequest list;
      list.set_list_services("");
      reflection::ServerReflectionResponse listed;
      ASSERT_TRUE(stream->Write(list));
      ASSERT_TRUE(stream->Read(&listed));
      std::vector<std::string> names;
      for (const auto& service : listed.list_services_response().service()) {
        names.push_back(service.name());
      }
      EXPECT_NE(std::find(names.begin(), names.end(), "poolside.v1.CacheService"), names.end())
          << listed.ShortDebugString();
      stream->WritesDone();
      grpc::Status end = stream->Finish();
      EXPECT_TRUE(end.ok()) << Describe(end);
    }
    for (const char* method : {"/poolside.v1.CacheService/Nope"}) {
      grpc::Status status = GenericUnaryCall(channel, method);
      EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED)
          << method << ": " << Describe(status);
    }
  }
  EXPECT_EQ(uds().Get("health/absent").outcome(), v1::CacheGetResponse::MISS);
}

// Exact counters need a server of their own.
TEST(CacheServiceStatsTest, StatsMatchWhatWasDoneAndSigtermExitsZero) {
  absl::StatusOr<CacheServer> s = StartCacheServer(SmallConfig());
  ASSERT_TRUE(s.ok()) << s.status();
  Client c{s->over_unix.get()};
  v1::CacheStats zero = c.Stats();
  EXPECT_EQ(zero.entries(), 0u);
  EXPECT_EQ(zero.capacity_bytes(), 8u << 20);
  EXPECT_EQ(zero.shards(), 4u);

  const uint64_t g0 = c.Get("a").generation();                           // miss
  EXPECT_TRUE(c.Set("a", "1", {"t"}, g0).stored());                      // set
  EXPECT_TRUE(c.Set("b", "22", {"u"}).stored());                         // set
  c.Get("a");                                                            // hit
  c.Get("b");                                                            // hit
  c.Get("c");                                                            // miss
  c.Invalidate({"t"});                                                   // invalidation, 1 entry
  EXPECT_FALSE(c.Set("a", "1", {"t"}, g0).stored());                     // rejected
  EXPECT_FALSE(c.Set("big", std::string((1 << 20) + 1, 'x')).stored());  // rejected

  v1::CacheStats st = c.Stats();
  EXPECT_EQ(st.entries(), 1u);
  EXPECT_EQ(st.bytes(), 1 + 2 + 1 + 184 + 48);  // key + value + tag + overheads
  EXPECT_EQ(st.hits(), 2u);
  EXPECT_EQ(st.stale_hits(), 0u);
  EXPECT_EQ(st.misses(), 2u);
  EXPECT_EQ(st.sets(), 2u);
  EXPECT_EQ(st.sets_rejected(), 2u);
  EXPECT_EQ(st.evictions(), 0u);
  EXPECT_EQ(st.invalidations(), 1u);
  EXPECT_EQ(st.invalidated_entries(), 1u);
  EXPECT_DOUBLE_EQ(st.hit_ratio(), 0.5);
  EXPECT_EQ(st.generation(), g0 + 1);

  ASSERT_NO_FATAL_FAILURE(StopCacheServer(*s));
  struct stat gone;
  EXPECT_NE(stat(s->socket_path.c_str(), &gone), 0) << "socket file left behind";
}

// The query service's sidecar client watching a cache server's unix socket,
// recording every event it reports.
class WatchLog {
 public:
  // `keepalive`: see SidecarClient::Create.
  absl::Status Start(const std::string& socket_path, absl::Duration keepalive) {
    v1::ClientTlsConfig plaintext;
    plaintext.set_plaintext(true);
    absl::StatusOr<std::unique_ptr<query::SidecarClient>> client = query::SidecarClient::Create(
        absl::StrCat("unix:", socket_path), plaintext, absl::Seconds(10), keepalive);
    if (!client.ok()) return client.status();
    client_ = *std::move(client);
    if (!client_->Watch([this](const query::CacheInvalidationEvent& e) {
          absl::MutexLock lock(&mu_);
          events_.push_back(e);
        })) {
      return absl::InternalError("the sidecar client cannot watch");
    }
    return absl::OkStatus();
  }
  ~WatchLog() {
    if (client_ != nullptr) client_->StopWatching();
  }

  // Start(), then waits (10 s) for the watch's first event, its subscription.
  ::testing::AssertionResult StartSubscribed(const std::string& socket_path,
                                             absl::Duration keepalive) {
    absl::Status started = Start(socket_path, keepalive);
    if (!started.ok()) return ::testing::AssertionFailure() << started;
    if (!Eventually([&] { return Count() == 1; }, absl::Seconds(10))) {
      return ::testing::AssertionFailure() << Count() << " events, not 1";
    }
    if (Events()[0].kind != query::CacheInvalidationEvent::kSubscribed) {
      return ::testing::AssertionFailure() << "the first event is not the subscription";
    }
    return ::testing::AssertionSuccess();
  }

  std::vector<query::CacheInvalidationEvent> Events() const {
    absl::MutexLock lock(&mu_);
    return events_;
  }
  size_t Count() const { return Events().size(); }

  // Whether, within 10 s, the watch has seen `count` events, the last one its
  // end (kBroken).
  ::testing::AssertionResult EndsAfter(size_t count) const {
    if (!Eventually([&] { return Count() == count; }, absl::Seconds(10))) {
      return ::testing::AssertionFailure() << Count() << " events, not " << count;
    }
    if (Events().back().kind != query::CacheInvalidationEvent::kBroken) {
      return ::testing::AssertionFailure() << "event " << count << " is not the end";
    }
    return ::testing::AssertionSuccess();
  }

 private:
  std::unique_ptr<query::SidecarClient> client_;
  mutable absl::Mutex mu_;
  std::vector<query::CacheInvalidationEvent> events_ ABSL_GUARDED_BY(mu_);
};

// A WatchInvalidations stream read by the test itself, with the generated
// blocking stub: it reads only when the test says so.
struct RawWatch {
  grpc::ClientContext context;
  // Declared after the context: destroyed first.
  std::unique_ptr<grpc::ClientReader<v1::CacheInvalidationEvent>> reader;
};

// Opens a watch and reads its first event, which must say "subscribed".
absl::StatusOr<std::unique_ptr<RawWatch>> OpenRawWatch(v1::CacheService::Stub* stub,
                                                       absl::Duration deadline) {
  auto watch = std::make_unique<RawWatch>();
  watch->context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  watch->reader = stub->WatchInvalidations(&watch->context, v1::CacheWatchRequest());
  v1::CacheInvalidationEvent first;
  if (!watch->reader->Read(&first)) {
    const grpc::Status s = watch->reader->Finish();
    return absl::UnavailableError(absl::StrCat("the watch ended at once: ", Describe(s)));
  }
  if (!first.subscribed()) {
    return absl::InternalError(absl::StrCat("first event: ", first.ShortDebugString()));
  }
  return watch;
}

TEST(CacheServiceWatchTest, WatchersSeeEveryInvalidationAndDeleteAndSigtermEndsTheWatch) {
  absl::StatusOr<CacheServer> s = StartCacheServer(SmallConfig());
  ASSERT_TRUE(s.ok()) << s.status();
  WatchLog watch;
  ASSERT_TRUE(watch.StartSubscribed(s->socket_path, absl::Seconds(5)));
  Client c{s->over_tcp.get()};  // another client than the watcher
  c.Set("k", "v", {"t1"});
  c.Invalidate({"t1", "t2"});
  c.Invalidate({}, {"p/"});
  c.Delete("k");
  c.Invalidate({}, {}, /*flush=*/true);
  ASSERT_TRUE(Eventually([&] { return watch.Count() == 5; }, absl::Seconds(10))) << watch.Count();
  std::vector<query::CacheInvalidationEvent> events = watch.Events();
  EXPECT_EQ(events[1].kind, query::CacheInvalidationEvent::kInvalidate);
  EXPECT_EQ(events[1].tags, (std::vector<std::string>{"t1", "t2"}));
  EXPECT_EQ(events[2].prefixes, (std::vector<std::string>{"p/"}));
  EXPECT_EQ(events[3].kind, query::CacheInvalidationEvent::kDelete);
  EXPECT_EQ(events[3].key, "k");
  EXPECT_TRUE(events[4].flush_all);
  // Shutting down ends the watch.
  ASSERT_NO_FATAL_FAILURE(ExpectCleanExit(*s));
  EXPECT_TRUE(watch.EndsAfter(6));
}

// A sidecar that stops answering without closing its socket (here SIGSTOP)
// must end the watch, or the near cache would go on serving while
// invalidations are not arriving; keepalive pings find it.
TEST(CacheServiceWatchTest, AStoppedSidecarEndsTheWatchAndAResumedOneIsWatchedAgain) {
  absl::StatusOr<CacheServer> s = StartCacheServer(SmallConfig());
  ASSERT_TRUE(s.ok()) << s.status();
  WatchLog watch;
  ASSERT_TRUE(watch.StartSubscribed(s->socket_path, absl::Seconds(1)));
  // A quiet, healthy watch is pinged every second and stays up (the server
  // accepts pings that often).
  absl::SleepFor(absl::Milliseconds(3500));
  ASSERT_EQ(watch.Count(), 1u) << "the watch broke while the sidecar was healthy";

  ASSERT_TRUE(s->process->Signal(SIGSTOP).ok());
  const bool broken = Eventually([&] { return watch.Count() == 2; }, absl::Seconds(20));
  ASSERT_TRUE(s->process->Signal(SIGCONT).ok());
  ASSERT_TRUE(broken) << "the watch of a stopped sidecar never ended";
  EXPECT_EQ(watch.Events()[1].kind, query::CacheInvalidationEvent::kBroken);
  ASSERT_TRUE(Eventually([&] { return watch.Count() == 3; }, absl::Seconds(20)))
      << "the resumed sidecar was not watched again";
  EXPECT_EQ(watch.Events()[2].kind, query::CacheInvalidationEvent::kSubscribed);
}

// A watcher that stops reading (a stuck query replica) must not hold the one
// thread that serves every call, nor make the sidecar queue events for it
// without bound: once its queue is full it is ended with RESOURCE_EXHAUSTED,
// while other callers and watchers go on as before.
TEST(CacheServiceWatchTest, AWatcherThatStopsReadingIsEndedAndBlocksNobody) {
  absl::StatusOr<CacheServer> s = StartCacheServer(SmallConfig());
  ASSERT_TRUE(s.ok()) << s.status();
  // The deadline only ends the stream if the sidecar never does.
  absl::StatusOr<std::unique_ptr<RawWatch>> stuck =
      OpenRawWatch(s->over_unix.get(), absl::Seconds(120));
  ASSERT_TRUE(stuck.ok()) << stuck.status();
  WatchLog healthy;
  ASSERT_TRUE(healthy.StartSubscribed(s->socket_path, absl::Seconds(5)));
  Client c{s->over_tcp.get()};
  ASSERT_EQ(c.Stats().watches(), 2u);

  // More events than the sidecar queues for a watcher (4096 events, 4 MiB) plus
  // what HTTP/2 flow control lets the transports buffer for the stuck stream
  // (~4 MiB here, ~1000 of these 4 KiB events; the margin allows 30 MiB).
  constexpr int kInvalidations = 12000;
  const std::string padding(240, 'p');  // 16 tags within maxKeyBytes: ~4 KiB
  std::vector<uint64_t> generations;
  generations.reserve(kInvalidations);
  for (int i = 0; i < kInvalidations; ++i) {
    v1::CacheInvalidateRequest request;
    for (int t = 0; t < 16; ++t) request.add_tags(absl::StrCat("stuck/", i, "/", t, padding));
    request.set_source("test");
    v1::CacheInvalidateResponse response;
    grpc::Status status = c.Invalidate(request, &response);
    ASSERT_TRUE(status.ok()) << "Invalidate " << i << ": " << Describe(status);
    generations.push_back(response.generation());
  }
  // The stuck watcher is no longer counted; the healthy one saw everything.
  EXPECT_TRUE(Eventually([&] { return c.Stats().watches() == 1; }, absl::Seconds(10)))
      << c.Stats().watches() << " watches";
  ASSERT_TRUE(Eventually([&] { return healthy.Count() == kInvalidations + 1; }, absl::Seconds(30)))
      << healthy.Count();
  std::vector<query::CacheInvalidationEvent> seen = healthy.Events();
  for (int i = 0; i < kInvalidations; ++i) {
    ASSERT_EQ(seen[i + 1].kind, query::CacheInvalidationEvent::kInvalidate) << i;
    ASSERT_EQ(seen[i + 1].generation, generations[i]) << i;
  }

  // The stuck stream holds the first events, in order, then its end.
  int read = 0;
  v1::CacheInvalidationEvent event;
  while (read < kInvalidations && (*stuck)->reader->Read(&event)) {
    ASSERT_EQ(event.generation(), generations[read]) << read;
    ++read;
  }
  if (read == kInvalidations) {
    (*stuck)->context.TryCancel();
    ADD_FAILURE() << "the stuck watcher got every event: it was never ended";
  }
  grpc::Status end = (*stuck)->reader->Finish();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(end);
  EXPECT_TRUE(absl::StrContains(end.error_message(), "too slow")) << Describe(end);
  EXPECT_LT(read, kInvalidations) << "events dropped: none";

  ASSERT_NO_FATAL_FAILURE(ExpectCleanExit(*s));
}

// Watchers that go away (cancelled, or their call dropped without a word)
// while events are on their way to them are forgotten, and the sidecar goes
// on serving calls and the watchers that remain.
TEST(CacheServiceWatchTest, WatchersThatGoAwayAreForgottenAndTheSidecarServesOn) {
  absl::StatusOr<CacheServer> s = StartCacheServer(SmallConfig());
  ASSERT_TRUE(s.ok()) << s.status();
  Client c{s->over_tcp.get()};
  constexpr int kWatches = 50;
  std::vector<std::unique_ptr<RawWatch>> watches;
  for (int i = 0; i < kWatches; ++i) {
    absl::StatusOr<std::unique_ptr<RawWatch>> watch =
        OpenRawWatch(i % 2 == 0 ? s->over_unix.get() : s->over_tcp.get(), absl::Seconds(60));
    ASSERT_TRUE(watch.ok()) << "watch " << i << ": " << watch.status();
    watches.push_back(*std::move(watch));
  }
  ASSERT_EQ(c.Stats().watches(), static_cast<uint32_t>(kWatches));

  // Events on their way to every watcher as they go.
  for (int i = 0; i < 20; ++i) c.Invalidate({absl::StrCat("going/", i)});
  for (int i = 0; i < kWatches; i += 2) watches[i]->context.TryCancel();
  for (int i = 0; i < kWatches; ++i) {
    if (i % 2 == 0) {
      v1::CacheInvalidationEvent event;
      while (watches[i]->reader->Read(&event)) {
      }
      grpc::Status end = watches[i]->reader->Finish();
      EXPECT_EQ(end.error_code(), grpc::StatusCode::CANCELLED)
          << "watch " << i << ": " << Describe(end);
    }
    watches[i].reset();  // the others: dropped without Finish (the call is cancelled)
    if (i % 10 == 9) c.Invalidate({absl::StrCat("gone/", i)});
  }
  ASSERT_TRUE(Eventually([&] { return c.Stats().watches() == 0; }, absl::Seconds(10)))
      << c.Stats().watches() << " watches left";

  // Calls and a new watcher are served as before.
  EXPECT_TRUE(c.Set("after/k", "v", {"after"}).stored());
  EXPECT_EQ(Client{s->over_unix.get()}.Get("after/k").value(), "v");
  WatchLog watch;
  ASSERT_TRUE(watch.StartSubscribed(s->socket_path, absl::Seconds(5)));
  EXPECT_EQ(c.Stats().watches(), 1u);
  EXPECT_EQ(c.Invalidate({"after"}).removed(), 1u);
  ASSERT_TRUE(Eventually([&] { return watch.Count() == 2; }, absl::Seconds(10)));
  EXPECT_EQ(watch.Events()[1].tags, (std::vector<std::string>{"after"}));

  ASSERT_NO_FATAL_FAILURE(ExpectCleanExit(*s));
  EXPECT_TRUE(watch.EndsAfter(3));
}

// Many callers on both transports at once, all served by the sidecar's one
// thread, while watchers follow: every call succeeds, each caller reads back
// what it wrote, and every watcher sees every invalidation, in order.
TEST(CacheServiceWatchTest, ConcurrentCallersOverBothTransportsWithWatchers) {
  absl::StatusOr<CacheServer> s = StartCacheServer(SmallConfig());
  ASSERT_TRUE(s.ok()) << s.status();
  constexpr int kWatchers = 3;
  std::vector<std::unique_ptr<WatchLog>> watchers;
  for (int i = 0; i < kWatchers; ++i) {
    watchers.push_back(std::make_unique<WatchLog>());
    absl::Status started = watchers.back()->Start(s->socket_path, absl::Seconds(5));
    ASSERT_TRUE(started.ok()) << started;
  }
  for (const auto& w : watchers) {
    ASSERT_TRUE(Eventually([&] { return w->Count() == 1; }, absl::Seconds(10)));
  }

  constexpr int kThreads = 8;
  constexpr int kCalls = 300;
  constexpr int kKeys = 10;
  struct Outcome {
    int failed_calls = 0;
    int wrong_reads = 0;
    std::string first_problem;
    std::vector<uint64_t> generations;  // of this thread's invalidations
  };
  std::vector<Outcome> outcomes(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // A connection of its own; even threads over TCP, odd over the socket.
      std::shared_ptr<grpc::Channel> channel = t % 2 == 0
                                                   ? Connect(s->process->address(), 100 + t)
                                                   : Connect("unix:" + s->socket_path, 100 + t);
      std::unique_ptr<v1::CacheService::Stub> stub = v1::CacheService::NewStub(channel);
      Client client{stub.get()};
      Outcome& out = outcomes[t];
      // Counts a failed call or a wrong read (`count`), keeping the first `what`.
      auto problem = [&](int* count, const std::string& what) {
        ++*count;
        if (out.first_problem.empty()) out.first_problem = what;
      };
      const std::string tag = absl::StrCat("thread", t);
      // What this thread's keys hold: only this thread writes or invalidates them.
      std::map<std::string, std::string> expected;
      for (int i = 0; i < kCalls; ++i) {
        const std::string key = absl::StrCat("conc/", t, "/", i % kKeys);
        if (i % 10 == 9) {
          v1::CacheInvalidateRequest request;
          request.add_tags(tag);
          request.set_source("test");
          v1::CacheInvalidateResponse response;
          grpc::Status status = client.Invalidate(request, &response);
          if (!status.ok()) {
            problem(&out.failed_calls, absl::StrCat("Invalidate: ", Describe(status)));
            continue;
          }
          out.generations.push_back(response.generation());
          expected.clear();
        } else if (i % 3 == 0) {
          // Read, then fill with the generation of the read.
          v1::CacheGetResponse read;
          grpc::Status got = client.Get(key, &read);
          if (!got.ok()) {
            problem(&out.failed_calls, absl::StrCat("Get before Set: ", Describe(got)));
            continue;
          }
          v1::CacheSetRequest request;
          request.set_read_generation(read.generation());
          request.set_key(key);
          request.set_value(absl::StrCat("value ", t, "/", i));
          request.set_ttl_ms(60000);
          request.add_tags(tag);
          v1::CacheSetResponse response;
          grpc::Status status = client.Set(request, &response);
          if (!status.ok() || !response.stored()) {
            problem(&out.failed_calls,
                    absl::StrCat("Set: ", Describe(status), " ", response.ShortDebugString()));
            continue;
          }
          expected[key] = request.value();
        } else {
          v1::CacheGetResponse response;
          grpc::Status status = client.Get(key, &response);
          if (!status.ok()) {
            problem(&out.failed_calls, absl::StrCat("Get: ", Describe(status)));
            continue;
          }
          auto it = expected.find(key);
          const bool right = it == expected.end()
                                 ? response.outcome() == v1::CacheGetResponse::MISS
                                 : response.outcome() == v1::CacheGetResponse::HIT &&
                                       response.value() == it->second;
          if (!right) {
            problem(&out.wrong_reads, absl::StrCat("Get ", key, ": ", response.ShortDebugString()));
          }
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  std::vector<uint64_t> issued;
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(outcomes[t].failed_calls, 0) << "thread " << t << ": " << outcomes[t].first_problem;
    EXPECT_EQ(outcomes[t].wrong_reads, 0) << "thread " << t << ": " << outcomes[t].first_problem;
    issued.insert(issued.end(), outcomes[t].generations.begin(), outcomes[t].generations.end());
  }
  std::sort(issued.begin(), issued.end());
  ASSERT_EQ(issued.size(), static_cast<size_t>(kThreads * (kCalls / 10)));

  for (int w = 0; w < kWatchers; ++w) {
    ASSERT_TRUE(
        Eventually([&] { return watchers[w]->Count() >= issued.size() + 1; }, absl::Seconds(30)))
        << "watcher " << w << " got " << watchers[w]->Count() - 1 << " of " << issued.size();
    std::vector<uint64_t> seen;
    for (const query::CacheInvalidationEvent& e : watchers[w]->Events()) {
      if (e.kind == query::CacheInvalidationEvent::kInvalidate) seen.push_back(e.generation);
    }
    // In the order the sidecar applied them, which is the generations' order.
    EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end())) << "watcher " << w;
    EXPECT_EQ(seen, issued) << "watcher " << w;
  }

  ASSERT_NO_FATAL_FAILURE(ExpectCleanExit(*s));
}

TEST(CacheServiceSocketTest, StaleSocketFileIsReplaced) {
  const std::string path = ShortTempDir() + "/stale.sock";
  // A socket file whose server is gone: bound, then closed without unlink.
  const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  close(fd);
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);

  absl::StatusOr<CacheServer> s = StartCacheServer(SmallConfig(), path);
  ASSERT_TRUE(s.ok()) << s.status();
  Client c{s->over_unix.get()};
  EXPECT_TRUE(c.Set("k", "v").stored());
  EXPECT_EQ(c.Get("k").value(), "v");

  // A second server on the same, live socket refuses to start.
  v1::CacheServiceConfig config = SmallConfig();
  config.mutable_server()->set_listen("127.0.0.1:0");
  if (!config.server().has_tls()) config.mutable_server()->mutable_tls()->set_plaintext(true);
  config.set_unix_socket(path);
  const std::string config_path =
      WriteConfig(config, absl::StrCat(testing::TestOutputDir(), "/live_socket.json"));
  absl::StatusOr<testing::CommandResult> second =
      testing::RunCommand({RunfilePath("services/cache/cache_server"), "--config=" + config_path});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->exit_code, 1) << second->output;
  EXPECT_TRUE(absl::StrContains(second->output, "in use")) << second->output;
  EXPECT_EQ(c.Get("k").value(), "v");  // the first server is unaffected
}

TEST(CacheServiceConfigTest, CheckConfigAndBadConfig) {
  const std::string dir = testing::TestOutputDir();
  v1::CacheServiceConfig good = SmallConfig();
  const std::string good_path = WriteConfig(good, dir + "/check_good.json");
  absl::StatusOr<testing::CommandResult> ok = testing::RunCommand(
      {RunfilePath("services/cache/cache_server"), "--config=" + good_path, "--check_config"});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->exit_code, 0) << ok->output;
  EXPECT_TRUE(absl::StrContains(ok->output, "configuration OK")) << ok->output;

  std::ofstream(dir + "/check_bad.json")
      << R"({"server": {"tls": {"plaintext": true}}, "capacityBytes": "1024", "shards": 16})";
  absl::StatusOr<testing::CommandResult> bad =
      testing::RunCommand({RunfilePath("services/cache/cache_server"),
                           "--config=" + dir + "/check_bad.json", "--check_config"});
  ASSERT_TRUE(bad.ok()) << bad.status();
  EXPECT_EQ(bad->exit_code, 2) << bad->output;
  EXPECT_TRUE(absl::StrContains(bad->output, "per shard")) << bad->output;
}

// gRPC starts no server when one address fails: the error names them all.
TEST(CacheServiceConfigTest, AnUnusableSocketPathIsNamed) {
  v1::CacheServiceConfig config = SmallConfig();
  config.mutable_server()->set_listen("127.0.0.1:0");
  const std::string socket = ShortTempDir() + "/no/such/dir/cache.sock";
  config.set_unix_socket(socket);
  const std::string path = WriteConfig(config, testing::TestOutputDir() + "/bad_socket.json");
  absl::StatusOr<testing::CommandResult> run =
      testing::RunCommand({RunfilePath("services/cache/cache_server"), "--config=" + path});
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_EQ(run->exit_code, 1) << run->output;
  EXPECT_TRUE(absl::StrContains(run->output, "cannot listen on 127.0.0.1:0 or unix:" + socket))
      << run->output;
}

// --- The sidecar trusts no one by default ---

// Sockets of `pid` listening on TCP (any address): their local ports, from
// /proc (the process's socket inodes matched against /proc/PID/net/tcp{,6}).
std::vector<int> ListeningTcpPorts(pid_t pid) {
  std::set<std::string> inodes;
  const std::string fd_dir = absl::StrCat("/proc/", pid, "/fd");
  if (DIR* dir = opendir(fd_dir.c_str())) {
    while (dirent* e = readdir(dir)) {
      char target[256];
      const ssize_t n =
          readlink(absl::StrCat(fd_dir, "/", e->d_name).c_str(), target, sizeof(target) - 1);
      if (n <= 0) continue;
      absl::string_view link(target, n);
      if (absl::ConsumePrefix(&link, "socket:[") && absl::ConsumeSuffix(&link, "]")) {
        inodes.insert(std::string(link));
      }
    }
    closedir(dir);
  }
  std::vector<int> ports;
  for (const char* table : {"tcp", "tcp6"}) {
    std::ifstream in(absl::StrCat("/proc/", pid, "/net/", table));
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
      // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
      if (f.size() < 10 || f[3] != "0A" || !inodes.count(f[9])) continue;  // 0A: LISTEN
      ports.push_back(std::stoi(f[1].substr(f[1].rfind(':') + 1), nullptr, 16));
    }
  }
  return ports;
}

// Without server.listen the sidecar serves its unix socket and nothing else
// (Kubernetes runs it so); --probe checks it over that socket. A sidecar with
// a TCP address is the control: the same check finds its port.
TEST(CacheServiceSecurityTest, UnixOnlySidecarHasNoTcpListenerAndAnswersItsProbe) {
  StartOptions unix_only;
  unix_only.listen = "";
  absl::StatusOr<CacheServer> s = StartCacheServer(SmallConfig(), "", unix_only);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(ListeningTcpPorts(s->process->pid()), std::vector<int>{});
  Client c{s->over_unix.get()};
  const uint64_t g = c.Get("unix/k").generation();
  EXPECT_TRUE(c.Set("unix/k", "v", {}, g).stored());
  EXPECT_EQ(c.Get("unix/k").value(), "v");
  for (const char* probe : {"liveness", "readiness"}) {
    absl::StatusOr<testing::CommandResult> ok =
        testing::RunCommand({RunfilePath("services/cache/cache_server"),
                             "--config=" + s->config_path, absl::StrCat("--probe=", probe)});
    ASSERT_TRUE(ok.ok()) << ok.status();
    EXPECT_EQ(ok->exit_code, 0) << ok->output;
    EXPECT_TRUE(absl::StrContains(ok->output, "SERVING")) << ok->output;
  }

  absl::StatusOr<CacheServer> control = StartCacheServer(SmallConfig());
  ASSERT_TRUE(control.ok()) << control.status();
  EXPECT_EQ(ListeningTcpPorts(control->process->pid()), std::vector<int>{control->process->port()});

  ASSERT_NO_FATAL_FAILURE(StopCacheServer(*s));
  absl::StatusOr<testing::CommandResult> gone =
      testing::RunCommand({RunfilePath("services/cache/cache_server"), "--config=" + s->config_path,
                           "--probe=liveness"});
  ASSERT_TRUE(gone.ok()) << gone.status();
  EXPECT_EQ(gone->exit_code, 1) << gone->output;
}

// Plaintext and unauthenticated on an address others can reach: the sidecar
// does not start, and says which setting to change.
TEST(CacheServiceSecurityTest, NonLoopbackTcpWithoutAuthenticationDoesNotStart) {
  const std::string dir = testing::TestOutputDir();
  struct Case {
    std::string name;
    std::function<void(v1::CacheServiceConfig*)> edit;
    std::vector<std::string> flags;
  };
  const std::vector<Case> cases = {
      {"all-ipv4", [](v1::CacheServiceConfig* c) { c->mutable_server()->set_listen("0.0.0.0:0"); }},
      {"all-ipv6", [](v1::CacheServiceConfig* c) { c->mutable_server()->set_listen("[::]:0"); }},
      {"disabled",
       [](v1::CacheServiceConfig* c) {
         c->mutable_server()->set_listen("0.0.0.0:0");
         c->mutable_auth()->set_disabled(true);
       }},
      {"flag",
       [](v1::CacheServiceConfig* c) { c->mutable_server()->set_listen("127.0.0.1:0"); },
       {"--listen=0.0.0.0:0"}},
  };
  for (const Case& t : cases) {
    v1::CacheServiceConfig config = SmallConfig();
    config.set_unix_socket(ShortTempDir() + "/never.sock");
    t.edit(&config);
    const std::string path = WriteConfig(config, absl::StrCat(dir, "/open_", t.name, ".json"));
    for (const bool check_only : {false, true}) {
      std::vector<std::string> argv = {RunfilePath("services/cache/cache_server"),
                                       "--config=" + path};
      argv.insert(argv.end(), t.flags.begin(), t.flags.end());
      if (check_only) argv.push_back("--check_config");
      absl::StatusOr<testing::CommandResult> run = testing::RunCommand(argv);
      ASSERT_TRUE(run.ok()) << run.status();
      EXPECT_EQ(run->exit_code, 2) << t.name << ": " << run->output;
      EXPECT_TRUE(absl::StrContains(run->output, "is not a loopback address")) << run->output;
      EXPECT_TRUE(absl::StrContains(run->output, "auth.principalsFile")) << run->output;
      EXPECT_TRUE(absl::StrContains(run->output, "requireClientCert")) << run->output;
    }
    struct stat st;
    EXPECT_NE(stat(config.unix_socket().c_str(), &st), 0) << t.name << ": it served";
  }
}

// A TCP address for everyone, with principals: no call without a known token,
// reads and writes by role, on both listeners; the health check stays open
// for probes; the query service's client sends its token from the config.
TEST(CacheServiceSecurityTest, WithPrincipalsEveryCallNeedsAToken) {
  const std::string writer_token = "writer-token-0123456789abcdef";
  const std::string reader_token = "reader-token-0123456789abcdef";
  v1::CacheServiceConfig config = SmallConfig();
  v1::PrincipalConfig* writer = config.mutable_auth()->add_principals();
  writer->set_name("query");
  writer->set_token_sha256(auth::Sha256Hex(writer_token));
  writer->add_roles("read");
  writer->add_roles("write");
  v1::PrincipalConfig* reader = config.mutable_auth()->add_principals();
  reader->set_name("dashboard");
  reader->set_token_sha256(auth::Sha256Hex(reader_token));
  reader->add_roles("read");
  StartOptions open;
  open.listen = "0.0.0.0:0";  // allowed: calls are authenticated
  open.token = writer_token;
  absl::StatusOr<CacheServer> s = StartCacheServer(config, "", open);
  ASSERT_TRUE(s.ok()) << s.status();
  Client writes{s->over_tcp.get()};

  const std::string tcp_target = s->process->address();
  const std::string unix_target = "unix:" + s->socket_path;
  int id = 10;
  for (const std::string& target : {tcp_target, unix_target}) {
    SCOPED_TRACE(target);
    for (const std::string& token : {std::string(), std::string("not-a-known-token")}) {
      auto channel = Connect(target, ++id, token);
      auto stub = v1::CacheService::NewStub(channel);
      Client stranger{stub.get()};
      v1::CacheGetResponse got;
      EXPECT_EQ(stranger.Get("auth/k", &got).error_code(), grpc::StatusCode::UNAUTHENTICATED);
      v1::CacheSetRequest set;
      set.set_key("auth/k");
      set.set_value("forged");
      set.set_ttl_ms(60000);
      set.set_read_generation(got.generation() != 0 ? got.generation()
                                                    : writes.Stats().generation());
      v1::CacheSetResponse stored;
      grpc::Status denied = stranger.Set(set, &stored);
      EXPECT_EQ(denied.error_code(), grpc::StatusCode::UNAUTHENTICATED) << Describe(denied);
      v1::CacheInvalidateRequest flush;
      flush.set_flush_all(true);
      v1::CacheInvalidateResponse flushed;
      EXPECT_EQ(stranger.Invalidate(flush, &flushed).error_code(),
                grpc::StatusCode::UNAUTHENTICATED);
      grpc::ClientContext stats_ctx;
      v1::CacheStats stats;
      EXPECT_EQ(stub->GetStats(&stats_ctx, v1::CacheGetStatsRequest(), &stats).error_code(),
                grpc::StatusCode::UNAUTHENTICATED);
      grpc::ClientContext watch_ctx;
      watch_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      auto watch = stub->WatchInvalidations(&watch_ctx, v1::CacheWatchRequest());
      v1::CacheInvalidationEvent event;
      EXPECT_FALSE(watch->Read(&event)) << event.ShortDebugString();
      EXPECT_EQ(watch->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
      // Probes need no token.
      auto health = ::grpc::health::v1::Health::NewStub(channel);
      grpc::ClientContext health_ctx;
      ::grpc::health::v1::HealthCheckResponse serving;
      EXPECT_TRUE(
          health->Check(&health_ctx, ::grpc::health::v1::HealthCheckRequest(), &serving).ok());
    }

    auto reader_channel = Connect(target, ++id, reader_token);
    auto reader_stub = v1::CacheService::NewStub(reader_channel);
    Client reads{reader_stub.get()};
    v1::CacheGetResponse miss;
    ASSERT_TRUE(reads.Get("auth/k", &miss).ok());
    EXPECT_EQ(miss.outcome(), v1::CacheGetResponse::MISS);
    v1::CacheSetRequest set;
    set.set_key("auth/k");
    set.set_value("from a reader");
    set.set_ttl_ms(60000);
    set.set_read_generation(miss.generation());
    v1::CacheSetResponse stored;
    grpc::Status denied = reads.Set(set, &stored);
    EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Describe(denied);
    EXPECT_TRUE(absl::StrContains(denied.error_message(), "\"write\"")) << Describe(denied);
    v1::CacheInvalidateRequest flush;
    flush.set_flush_all(true);
    v1::CacheInvalidateResponse flushed;
    EXPECT_EQ(reads.Invalidate(flush, &flushed).error_code(), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_EQ(reads.Stats().entries(), 0u);  // nothing got in
    absl::StatusOr<std::unique_ptr<RawWatch>> watch =
        OpenRawWatch(reader_stub.get(), absl::Seconds(10));
    EXPECT_TRUE(watch.ok()) << watch.status();
  }
  // The writer's token: a read, then a fill; both listeners see it.
  const uint64_t g = writes.Get("auth/k").generation();
  EXPECT_TRUE(writes.Set("auth/k", "real", {"t"}, g).stored());
  EXPECT_EQ(Client{s->over_unix.get()}.Get("auth/k").value(), "real");

  // The query service's client, its token from cache.tokenEnv.
  ASSERT_EQ(setenv("POOLSIDE_TEST_SIDECAR_TOKEN", writer_token.c_str(), 1), 0);
  v1::QueryCacheConfig query_cache;
  query_cache.set_target(unix_target);
  query_cache.set_call_timeout_ms(10000);
  query_cache.set_keepalive_ms(5000);
  query_cache.set_token_env("POOLSIDE_TEST_SIDECAR_TOKEN");
  absl::StatusOr<std::unique_ptr<query::SidecarClient>> client =
      query::SidecarClient::Create(query_cache);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::Notification got;
  absl::StatusOr<query::CacheLookup> lookup;
  (*client)->Get("auth/k", [&](absl::StatusOr<query::CacheLookup> r) {
    lookup = std::move(r);
    got.Notify();
  });
  ASSERT_TRUE(got.WaitForNotificationWithTimeout(absl::Seconds(30)));
  ASSERT_TRUE(lookup.ok()) << lookup.status();
  EXPECT_EQ(lookup->value, "real");
  query_cache.set_token_env("POOLSIDE_TEST_SIDECAR_TOKEN_UNSET");
  absl::StatusOr<std::unique_ptr<query::SidecarClient>> unset =
      query::SidecarClient::Create(query_cache);
  EXPECT_EQ(unset.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(unset.status().message(), "cache.tokenEnv")) << unset.status();
  query_cache.clear_token_env();
  absl::StatusOr<std::unique_ptr<query::SidecarClient>> tokenless =
      query::SidecarClient::Create(query_cache);
  ASSERT_TRUE(tokenless.ok()) << tokenless.status();
  absl::Notification refused;
  (*tokenless)->Get("auth/k", [&](absl::StatusOr<query::CacheLookup> r) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated) << r.status();
    refused.Notify();
  });
  ASSERT_TRUE(refused.WaitForNotificationWithTimeout(absl::Seconds(30)));
  client->reset();
  tokenless->reset();
  ASSERT_NO_FATAL_FAILURE(StopCacheServer(*s));
}

// --- Forged fills ---

v1::CacheSetRequest Fill(const std::string& key, const std::string& value, uint64_t generation) {
  v1::CacheSetRequest request;
  request.set_key(key);
  request.set_value(value);
  request.set_ttl_ms(60000);
  request.set_read_generation(generation);
  return request;
}

// A Set with a generation this sidecar never handed out (0, or above the
// current one) is FAILED_PRECONDITION and stores nothing; an honest miss and
// fill still stores.
TEST_F(CacheServiceTest, ForgedGenerationsAreRefusedAndStoreNothing) {
  Client c = uds();
  const v1::CacheStats before = c.Stats();
  const uint64_t now = before.generation();
  for (uint64_t g : {uint64_t{0}, now + 1, now + 1000000, ~uint64_t{0}}) {
    v1::CacheSetResponse response;
    grpc::Status status = c.Set(Fill("forged/k", "forged rows", g), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
        << g << ": " << Describe(status);
    EXPECT_TRUE(absl::StrContains(status.error_message(), "read_generation")) << Describe(status);
    EXPECT_EQ(c.Get("forged/k").outcome(), v1::CacheGetResponse::MISS) << g;
  }
  v1::CacheSetResponse response;
  EXPECT_TRUE(absl::StrContains(c.Set(Fill("forged/k", "x", 0), &response).error_message(),
                                "read_generation is 0"));
  const v1::CacheStats after = c.Stats();
  EXPECT_EQ(after.sets(), before.sets());
  EXPECT_EQ(after.sets_rejected(), before.sets_rejected() + 5);
  EXPECT_EQ(after.generation(), now);

  // The honest way: a Get that misses, then the fill with its generation.
  v1::CacheGetResponse miss = c.Get("forged/k");
  ASSERT_EQ(miss.outcome(), v1::CacheGetResponse::MISS);
  EXPECT_TRUE(c.Set("forged/k", "real rows", {}, miss.generation()).stored());
  v1::CacheGetResponse hit = tcp().Get("forged/k");
  EXPECT_EQ(hit.outcome(), v1::CacheGetResponse::HIT);
  EXPECT_EQ(hit.value(), "real rows");
}

// Generations of an earlier incarnation of the sidecar (same socket, same
// clients) mean nothing to the new one.
TEST(CacheServiceForgeryTest, AnEarlierIncarnationsGenerationIsRefused) {
  const std::string socket = ShortTempDir() + "/cache.sock";
  absl::StatusOr<CacheServer> first = StartCacheServer(SmallConfig(), socket);
  ASSERT_TRUE(first.ok()) << first.status();
  uint64_t old_generation = 0;
  {
    Client c{first->over_unix.get()};
    for (int i = 0; i < 5; ++i) c.Invalidate({absl::StrCat("before/", i)});
    old_generation = c.Get("restart/k").generation();
    ASSERT_NO_FATAL_FAILURE(StopCacheServer(*first));
  }
  absl::StatusOr<CacheServer> second = StartCacheServer(SmallConfig(), socket);
  ASSERT_TRUE(second.ok()) << second.status();
  Client c{second->over_unix.get()};
  const uint64_t start = c.Stats().generation();
  EXPECT_GT(start, old_generation);
  for (uint64_t g : {old_generation, old_generation - 3, start - 1}) {
    v1::CacheSetResponse response;
    grpc::Status status = c.Set(Fill("restart/k", "from before the restart", g), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
        << g << ": " << Describe(status);
    EXPECT_TRUE(absl::StrContains(status.error_message(), "not handed out by this cache sidecar"))
        << Describe(status);
  }
  EXPECT_EQ(c.Get("restart/k").outcome(), v1::CacheGetResponse::MISS);
  EXPECT_EQ(c.Stats().sets(), 0u);
  // The query service's client counts such a refusal as "not stored", not as
  // a failure of the sidecar.
  v1::ClientTlsConfig plaintext;
  plaintext.set_plaintext(true);
  absl::StatusOr<std::unique_ptr<query::SidecarClient>> client = query::SidecarClient::Create(
      "unix:" + socket, plaintext, absl::Seconds(10), absl::Seconds(5));
  ASSERT_TRUE(client.ok()) << client.status();
  absl::Notification done;
  absl::StatusOr<bool> stored;
  query::CacheFill fill;
  fill.key = "restart/k";
  fill.value = "from before the restart";
  fill.ttl = absl::Seconds(60);
  fill.read_generation = old_generation;
  (*client)->Set(std::move(fill), [&](absl::StatusOr<bool> r) {
    stored = std::move(r);
    done.Notify();
  });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_FALSE(*stored);
  EXPECT_EQ(c.Get("restart/k").outcome(), v1::CacheGetResponse::MISS);
  client->reset();
  ASSERT_NO_FATAL_FAILURE(StopCacheServer(*second));
}

// --- Bounded Invalidate ---

TEST(CacheServiceLimitsTest, InvalidateOverEachBoundIsRefusedAndChangesNothing) {
  v1::CacheServiceConfig config = SmallConfig();
  config.set_max_invalidate_tags(8);
  config.set_max_invalidate_prefixes(4);
  config.set_max_invalidate_bytes(1000);
  absl::StatusOr<CacheServer> s = StartCacheServer(config);
  ASSERT_TRUE(s.ok()) << s.status();
  Client c{s->over_unix.get()};
  ASSERT_TRUE(c.Set("bound/k", "v", {"t0"}).stored());
  const uint64_t generation = c.Stats().generation();

  auto request = [](int tags, int prefixes, size_t each) {
    v1::CacheInvalidateRequest r;
    for (int i = 0; i < tags; ++i) r.add_tags(absl::StrCat("t", i, std::string(each - 2, 'x')));
    for (int i = 0; i < prefixes; ++i) r.add_prefixes(absl::StrCat("bound/", i));
    r.add_tags("t0");  // would remove bound/k
    r.set_source("test");
    return r;
  };
  struct Case {
    v1::CacheInvalidateRequest request;
    std::string limit;
  };
  std::vector<Case> cases = {
      {request(8, 0, 10), "maxInvalidateTags = 8"},
      {request(0, 5, 10), "maxInvalidatePrefixes = 4"},
      {request(4, 0, 250), "maxInvalidateBytes = 1000"},
      {request(1, 0, 257), "maxKeyBytes = 256"},
  };
  v1::CacheInvalidateRequest long_prefix = request(0, 0, 0);
  long_prefix.add_prefixes(std::string(257, 'p'));
  cases.push_back({long_prefix, "maxKeyBytes = 256"});
  v1::CacheInvalidateRequest long_source = request(0, 0, 0);
  long_source.set_source(std::string(129, 's'));
  cases.push_back({long_source, "source"});
  for (const Case& t : cases) {
    v1::CacheInvalidateResponse response;
    grpc::Status status = c.Invalidate(t.request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
    EXPECT_TRUE(absl::StrContains(status.error_message(), t.limit))
        << t.limit << ": " << Describe(status);
  }
  EXPECT_EQ(c.Stats().generation(), generation);
  EXPECT_EQ(c.Get("bound/k").outcome(), v1::CacheGetResponse::HIT);

  // At every bound at once: accepted.
  v1::CacheInvalidateRequest at_bounds;
  for (int i = 0; i < 7; ++i) at_bounds.add_tags(absl::StrCat("u", i, std::string(100, 'x')));
  at_bounds.add_tags("t0");
  for (int i = 0; i < 4; ++i) at_bounds.add_prefixes(absl::StrCat("p", i, std::string(60, 'x')));
  v1::CacheInvalidateResponse response;
  grpc::Status status = c.Invalidate(at_bounds, &response);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(response.removed(), 1u);
  EXPECT_EQ(c.Get("bound/k").outcome(), v1::CacheGetResponse::MISS);

  // The query service's client splits a long tag list into calls within the
  // sidecar's default bounds (1024 tags): 2500 tags are three calls, one
  // answer.
  v1::CacheServiceConfig defaults = SmallConfig();
  absl::StatusOr<CacheServer> d = StartCacheServer(defaults);
  ASSERT_TRUE(d.ok()) << d.status();
  Client dc{d->over_unix.get()};
  ASSERT_TRUE(dc.Set("split/a", "v", {"tag-0"}).stored());
  ASSERT_TRUE(dc.Set("split/b", "v", {"tag-2499"}).stored());
  const uint64_t before = dc.Stats().generation();
  v1::ClientTlsConfig plaintext;
  plaintext.set_plaintext(true);
  absl::StatusOr<std::unique_ptr<query::SidecarClient>> client = query::SidecarClient::Create(
      "unix:" + d->socket_path, plaintext, absl::Seconds(10), absl::Seconds(5));
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<std::string> tags;
  for (int i = 0; i < 2500; ++i) tags.push_back(absl::StrCat("tag-", i));
  absl::Notification done;
  absl::Status result;
  (*client)->Invalidate(tags, false, "test", absl::Seconds(10), [&](absl::Status st) {
    result = st;
    done.Notify();
  });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_TRUE(result.ok()) << result;
  EXPECT_EQ(dc.Stats().generation(), before + 3);
  EXPECT_EQ(dc.Get("split/a").outcome(), v1::CacheGetResponse::MISS);
  EXPECT_EQ(dc.Get("split/b").outcome(), v1::CacheGetResponse::MISS);
  client->reset();
  ASSERT_NO_FATAL_FAILURE(StopCacheServer(*d));
  ASSERT_NO_FATAL_FAILURE(StopCacheServer(*s));
}

// --- Bounded watches ---

// Sends `n` Invalidate calls, `make(i)` each, from `threads` connections of
// their own: the generations they were given (unordered), or the first error.
absl::StatusOr<std::vector<uint64_t>> InvalidateMany(
    const std::string& target, int n, int threads,
    const std::function<v1::CacheInvalidateRequest(int)>& make) {
  std::vector<std::vector<uint64_t>> generations(threads);
  std::vector<std::string> errors(threads);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      auto channel = Connect(target, 1000 + t);
      auto stub = v1::CacheService::NewStub(channel);
      Client c{stub.get()};
      for (int i = t; i < n; i += threads) {
        v1::CacheInvalidateResponse response;
        grpc::Status status = c.Invalidate(make(i), &response);
        if (!status.ok()) {
          errors[t] = absl::StrCat("Invalidate ", i, ": ", Describe(status));
          return;
        }
        generations[t].push_back(response.generation());
      }
    });
  }
  for (std::thread& w : workers) w.join();
  std::vector<uint64_t> all;
  for (int t = 0; t < threads; ++t) {
    if (!errors[t].empty()) return absl::InternalError(errors[t]);
    all.insert(all.end(), generations[t].begin(), generations[t].end());
  }
  return all;
}

// Reads a stuck watch to its end: how many events it still had, and its status.
std::pair<int, grpc::Status> Drain(RawWatch& watch, int most) {
  int read = 0;
  v1::CacheInvalidationEvent event;
  while (read < most && watch.reader->Read(&event)) ++read;
  if (read == most) watch.context.TryCancel();
  return {read, watch.reader->Finish()};
}

// A watcher that never reads while 100k invalidations (1 KiB of tags each)
// happen: the sidecar's memory stays bounded (neither the watch's queue nor
// the generation records keep them all), and the watcher, once it reads,
// learns that it fell behind and must flush and watch again.
TEST(CacheServiceWatchTest, AWatcherThatNeverReadsCostsBoundedMemoryAndLearnsToResync) {
  v1::CacheServiceConfig config = SmallConfig();
  config.set_max_key_bytes(1024);  // one 1 KiB tag per event
  absl::StatusOr<CacheServer> s = StartCacheServer(config, "", Quiet());
  ASSERT_TRUE(s.ok()) << s.status();
  absl::StatusOr<std::unique_ptr<RawWatch>> stuck =
      OpenRawWatch(s->over_unix.get(), absl::Seconds(120));
  ASSERT_TRUE(stuck.ok()) << stuck.status();
  Client c{s->over_unix.get()};
  ASSERT_EQ(c.Stats().watches(), 1u);
  const int64_t baseline_kb = s->process->RssKb();
  ASSERT_GT(baseline_kb, 0);

  constexpr int kInvalidations = 100000;
  const std::string padding(1000, 'p');
  absl::StatusOr<std::vector<uint64_t>> generations =
      InvalidateMany("unix:" + s->socket_path, kInvalidations, 4, [&](int i) {
        v1::CacheInvalidateRequest r;
        r.add_tags(absl::StrCat(i, "/", padding));
        r.set_source("test");
        return r;
      });
  ASSERT_TRUE(generations.ok()) << generations.status();
  ASSERT_EQ(generations->size(), static_cast<size_t>(kInvalidations));
  // Unbounded, the watch's queue alone would hold about 100 MiB.
  const int64_t peak_kb = s->process->PeakRssKb();
  std::printf("RSS: %lld KiB at the start, peak %lld KiB\n", static_cast<long long>(baseline_kb),
              static_cast<long long>(peak_kb));
  EXPECT_LT(peak_kb - baseline_kb, 64 << 10)
      << "peak RSS " << peak_kb << " KiB after starting at " << baseline_kb << " KiB";
  EXPECT_TRUE(Eventually([&] { return c.Stats().watches() == 0; }, absl::Seconds(10)))
      << c.Stats().watches() << " watches";

  auto [read, end] = Drain(**stuck, kInvalidations + 1);
  EXPECT_LT(read, kInvalidations) << "the watcher was sent every event";
  EXPECT_EQ(end.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(end);
  EXPECT_TRUE(absl::StrContains(end.error_message(), "watch again")) << Describe(end);
  // The sidecar goes on serving, and a new watch starts afresh.
  EXPECT_TRUE(c.Set("after/k", "v").stored());
  absl::StatusOr<std::unique_ptr<RawWatch>> again =
      OpenRawWatch(s->over_unix.get(), absl::Seconds(30));
  EXPECT_TRUE(again.ok()) << again.status();
  ASSERT_NO_FATAL_FAILURE(StopCacheServer(*s));
}

// Few events, each large: the watch's queue is bounded by bytes too.
TEST(CacheServiceWatchTest, AStuckWatchersQueueIsBoundedInBytes) {
  absl::StatusOr<CacheServer> s = StartCacheServer(SmallConfig(), "", Quiet());
  ASSERT_TRUE(s.ok()) << s.status();
  absl::StatusOr<std::unique_ptr<RawWatch>> stuck =
      OpenRawWatch(s->over_unix.get(), absl::Seconds(120));
  ASSERT_TRUE(stuck.ok()) << stuck.status();
  const int64_t baseline_kb = s->process->RssKb();
  // 200 KiB each: 600 of them are far fewer events than a queue may hold
  // (4096), and ~120 MiB.
  constexpr int kInvalidations = 600;
  const std::string padding(240, 'q');
  absl::StatusOr<std::vector<uint64_t>> generations =
      InvalidateMany("unix:" + s->socket_path, kInvalidations, 2, [&](int i) {
        v1::CacheInvalidateRequest r;
        for (int t = 0; t < 800; ++t) r.add_tags(absl::StrCat(i, "/", t, padding));
        r.set_source("test");
        return r;
      });
  ASSERT_TRUE(generations.ok()) << generations.status();
  const int64_t peak_kb = s->process->PeakRssKb();
  std::printf("RSS: %lld KiB at the start, peak %lld KiB\n", static_cast<long long>(baseline_kb),
              static_cast<long long>(peak_kb));
  EXPECT_LT(peak_kb - baseline_kb, 64 << 10)
      << "peak RSS " << peak_kb << " KiB after starting at " << baseline_kb << " KiB";
  auto [read, end] = Drain(**stuck, kInvalidations + 1);
  EXPECT_LT(read, kInvalidations / 2);
  EXPECT_EQ(end.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(end);
  EXPECT_TRUE(absl::StrContains(end.error_message(), "bytes")) << Describe(end);
  ASSERT_NO_FATAL_FAILURE(StopCacheServer(*s));
}

// The query service's side of a watch that fell behind: its client (blocked
// here in its event callback, as a stuck replica would be) is ended by the
// sidecar, reports kBroken, watches again; the near cache it feeds stops
// serving at kBroken and empties itself at kSubscribed, so an entry whose
// invalidation was dropped is not served.
TEST(CacheServiceWatchTest, TheQueryClientFlushesItsNearCacheWhenItsWatchFellBehind) {
  absl::StatusOr<CacheServer> s = StartCacheServer(SmallConfig(), "", Quiet());
  ASSERT_TRUE(s.ok()) << s.status();
  Client c{s->over_unix.get()};
  SimulatedClock clock;  // entries never expire by themselves here
  query::NearCache::Options near_options;
  near_options.capacity_bytes = 1 << 20;
  near_options.max_ttl = absl::Hours(1);
  near_options.clock = &clock;
  near_options.reaper = false;
  query::NearCache near(near_options);

  v1::ClientTlsConfig plaintext;
  plaintext.set_plaintext(true);
  absl::StatusOr<std::unique_ptr<query::SidecarClient>> client = query::SidecarClient::Create(
      "unix:" + s->socket_path, plaintext, absl::Seconds(10), absl::Seconds(5));
  ASSERT_TRUE(client.ok()) << client.status();
  absl::Notification unblock;
  absl::Mutex mu;
  std::vector<query::CacheInvalidationEvent> events;
  ASSERT_TRUE((*client)->Watch([&](const query::CacheInvalidationEvent& e) {
    near.OnEvent(e);
    bool first_invalidation;
    {
      absl::MutexLock lock(&mu);
      events.push_back(e);
      first_invalidation = e.kind == query::CacheInvalidationEvent::kInvalidate &&
                           std::count_if(events.begin(), events.end(), [](const auto& x) {
                             return x.kind == query::CacheInvalidationEvent::kInvalidate;
                           }) == 1;
    }
    if (first_invalidation) unblock.WaitForNotification();  // stuck: reads nothing more
  }));
  auto count = [&](query::CacheInvalidationEvent::Kind kind) {
    absl::MutexLock lock(&mu);
    return std::count_if(events.begin(), events.end(),
                         [kind](const auto& e) { return e.kind == kind; });
  };
  ASSERT_TRUE(Eventually([&] { return near.serving(); }, absl::Seconds(10)));
  v1::ResultSet rows;
  rows.add_columns()->set_name("v");
  ASSERT_TRUE(near.Fill("q/x", std::make_shared<const v1::ResultSet>(rows), absl::Hours(1), {"x"},
                        near.ReadGeneration()));
  ASSERT_NE(near.Get("q/x"), nullptr);

  // Enough 4 KiB events to overflow what the sidecar queues for the watcher
  // plus what the transports buffer; then the invalidation of the entry's
  // tag, which the ended watch never carries.
  absl::StatusOr<std::vector<uint64_t>> flood =
      InvalidateMany("unix:" + s->socket_path, 12000, 2, [](int i) {
        v1::CacheInvalidateRequest r;
        for (int t = 0; t < 16; ++t)
          r.add_tags(absl::StrCat("flood/", i, "/", t, std::string(240, 'f')));
        return r;
      });
  ASSERT_TRUE(flood.ok()) << flood.status();
  EXPECT_TRUE(Eventually([&] { return c.Stats().watches() == 0; }, absl::Seconds(10)))
      << "the stuck watch was never ended";
  c.Invalidate({"x"});
  EXPECT_NE(near.Get("q/x"), nullptr);  // stale, and served until the client learns
  unblock.Notify();

  ASSERT_TRUE(Eventually([&] { return count(query::CacheInvalidationEvent::kSubscribed) == 2; },
                         absl::Seconds(30)));
  EXPECT_EQ(count(query::CacheInvalidationEvent::kBroken), 1);
  const int64_t received = count(query::CacheInvalidationEvent::kInvalidate);
  std::printf("the stuck client received %lld of 12000 invalidations\n",
              static_cast<long long>(received));
  EXPECT_LT(received, 12000);
  {
    absl::MutexLock lock(&mu);
    for (const auto& e : events) {
      EXPECT_TRUE(std::find(e.tags.begin(), e.tags.end(), "x") == e.tags.end())
          << "the dropped invalidation arrived after all";
    }
  }
  EXPECT_TRUE(near.serving());
  EXPECT_EQ(near.Get("q/x"), nullptr) << "a result whose invalidation was dropped is served";
  EXPECT_TRUE(near.Fill("q/x", std::make_shared<const v1::ResultSet>(rows), absl::Hours(1), {"x"},
                        near.ReadGeneration()));
  EXPECT_NE(near.Get("q/x"), nullptr);
  (*client)->StopWatching();
  client->reset();
  ASSERT_NO_FATAL_FAILURE(StopCacheServer(*s));
}

}  // namespace
}  // namespace poolside::testing
