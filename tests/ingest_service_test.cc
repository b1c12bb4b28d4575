// Integration tests of the ingest service: the real `ingest_server` binary over
// loopback gRPC against a real PostgreSQL started by the shared fixture.
//
// Each scenario starts its own server process (several kill or stop it) and
// writes to its own table. Synchronisation is by conditions (acknowledgement
// counts, the server's own stats), never by sleeping.

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/auth/token_hash.h"
#include "common/server/channel.h"
#include "gmock/gmock.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/byte_buffer.h"
#include "gtest/gtest.h"
#include "proto/poolside/v1/common.pb.h"
#include "proto/poolside/v1/config.pb.h"
#include "proto/poolside/v1/ingest.grpc.pb.h"
#include "proto/poolside/v1/ingest.pb.h"
#include "tests/fixtures/concurrent_calls.h"
#include "tests/fixtures/pg_session.h"
#include "tests/fixtures/poolside_servers.h"
#include "tests/fixtures/postgres_cluster.h"
#include "tests/fixtures/service_process.h"
#include "tests/fixtures/subprocess.h"
#include "tests/fixtures/values.h"

namespace poolside::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kDb[] = "ingest_it";

// ---------------------------------------------------------------------------
// Helpers: a server process, rows, a Channel client.

struct IngestServer {
  std::unique_ptr<ServiceProcess> process;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::IngestService::Stub> stub;
};

v1::IngestServiceConfig Config(std::vector<std::string> tables) {
  v1::IngestServiceConfig c;
  AddDatabase(&c, "app", SharedPostgres().Dsn(kDb));
  auto* t = c.add_tables();
  t->set_database("app");
  for (auto& name : tables) t->add_tables(name);
  c.mutable_batch()->set_linger_ms(5);
  c.mutable_batch()->set_copy_connections(3);
  return c;
}

absl::StatusOr<IngestServer> StartIngestServer(v1::IngestServiceConfig config) {
  static std::atomic<int> counter{0};
  const std::string stem = absl::StrCat(testing::TestOutputDir(), "/ingest_server.", getpid(), ".",
                                        counter.fetch_add(1));
  config.mutable_server()->set_listen("127.0.0.1:0");
  if (!config.server().has_tls()) config.mutable_server()->mutable_tls()->set_plaintext(true);
  config.mutable_server()->set_port_file(stem + ".port");
  if (config.server().drain_timeout_ms() == 0) config.mutable_server()->set_drain_timeout_ms(20000);
  // The shared launcher: auth and allowPrivilegedRole defaults for tests.
  auto process =
      testing::StartConfigured("services/ingest/ingest_server", config, stem + ".port", stem);
  if (!process.ok()) return process.status();
  IngestServer server;
  server.process = *std::move(process);
  server::ChannelOptions options;
  options.target = server.process->address();
  options.tls = server::PlaintextTls();
  server.channel = *server::CreateChannel(std::move(options));
  if (!server.channel->WaitForConnected(std::chrono::system_clock::now() +
                                        std::chrono::seconds(10))) {
    return absl::UnavailableError("cannot connect to ingest_server");
  }
  server.stub = v1::IngestService::NewStub(server.channel);
  return server;
}

// Bumped whenever a table is (re)created; part of every idempotency key, so
// repeated runs (--gtest_repeat) never meet their predecessors' keys.
std::atomic<int64_t> table_generation{absl::ToUnixMicros(absl::Now())};

void CreateTable(const std::string& name, const std::string& extra = "") {
  table_generation.fetch_add(1);
  ASSERT_TRUE(SharedPostgres().CreateDatabase(kDb).ok());
  absl::Status s = SharedPostgres().Exec(
      kDb, absl::StrCat("DROP TABLE IF EXISTS ", name, "; CREATE TABLE ", name,
                        " (id int8 PRIMARY KEY, device text NOT NULL, at timestamptz, "
                        "value float8, payload text",
                        extra, ")"));
  ASSERT_TRUE(s.ok()) << s;
}

std::string Query(const std::string& sql) {
  absl::StatusOr<std::string> v = SharedPostgres().QueryValue(kDb, sql);
  EXPECT_TRUE(v.ok()) << v.status() << " in " << sql;
  return v.ok() ? *v : "";
}

// The realistic 5-column row for `id`.
void FillRow(int64_t id, v1::Row* row, size_t payload_bytes = 24) {
  row->add_values()->set_int64_value(id);
  row->add_values()->set_text_value(absl::StrCat("device-", id % 97));
  auto* ts = row->add_values()->mutable_timestamp_value();
  ts->set_seconds(1700000000 + id);
  ts->set_nanos(static_cast<int32_t>((id % 1000) * 1000));
  row->add_values()->set_double_value(static_cast<double>(id) * 0.25);
  std::string payload = absl::StrCat("p\t", id, "\\n");
  payload.resize(std::max(payload.size(), payload_bytes), 'x');
  row->add_values()->set_text_value(std::move(payload));
}

// Message `seq` of a run: rows [first_id + seq * rows, ...).
v1::ChannelRequest Message(const std::string& table, const std::string& run, uint64_t seq,
                           int64_t first_id, int rows, size_t payload_bytes = 24) {
  v1::ChannelRequest m;
  m.set_sequence(seq);
  v1::WriteRequest* w = m.mutable_write();
  w->set_table(table);
  for (const char* c : {"id", "device", "at", "value", "payload"}) w->add_columns(c);
  // Keys are unique per test process run, so repeated runs do not meet
  // their predecessors' keys.
  w->set_idempotency_key(absl::StrCat(table_generation.load(), "-", table, "-", run, "-", seq));
  for (int i = 0; i < rows; ++i)
    FillRow(first_id + static_cast<int64_t>(seq) * rows + i, w->add_rows(), payload_bytes);
  return m;
}

// The messages producer `s` of a load sends to `table`: `count` messages of
// `rows` rows, run "<run_prefix><s>", with ids after those of producers
// 0..s-1.
std::vector<v1::ChannelRequest> ProducerMessages(const std::string& table,
                                                 const std::string& run_prefix, int s, int count,
                                                 int rows, size_t payload_bytes = 24) {
  std::vector<v1::ChannelRequest> messages;
  for (int m = 0; m < count; ++m) {
    messages.push_back(Message(table, absl::StrCat(run_prefix, s), m, int64_t{s} * count * rows,
                               rows, payload_bytes));
  }
  return messages;
}

struct ChannelRun {
  std::set<uint64_t> ok;           // committed (duplicates included)
  std::map<uint64_t, int> failed;  // sequence -> code
  uint64_t rows_written = 0;
  uint64_t duplicates = 0;
  grpc::Status status;
};

// Streams `messages` through one Channel call. `on_ack` runs on the reading
// thread after each acknowledgement; `sent` counts messages handed to gRPC.
// `streams` producers at once, stream s on a thread of its own running
// produce(s); Join() waits for them all and returns their runs, by stream.
class Producers {
 public:
  Producers(int streams, const std::function<ChannelRun(int)>& produce) : runs_(streams) {
    for (int s = 0; s < streams; ++s) {
      threads_.emplace_back([this, produce, s] { runs_[s] = produce(s); });
    }
  }
  ~Producers() { Join(); }

  const std::vector<ChannelRun>& Join() {
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
    return runs_;
  }

 private:
  std::vector<ChannelRun> runs_;
  std::vector<std::thread> threads_;
};

ChannelRun RunChannel(v1::IngestService::Stub* stub,
                      const std::vector<v1::ChannelRequest>& messages,
                      std::function<void()> on_ack = nullptr, std::atomic<size_t>* sent = nullptr) {
  ChannelRun run;
  grpc::ClientContext ctx;
  auto stream = stub->Channel(&ctx);
  std::thread writer([&] {
    for (const auto& m : messages) {
      if (!stream->Write(m)) break;
      if (sent != nullptr) sent->fetch_add(1);
    }
    stream->WritesDone();
  });
  v1::ChannelResponse ack;
  while (stream->Read(&ack)) {
    if (ack.code() == 0) {
      run.ok.insert(ack.sequence());
      run.rows_written += ack.result().rows_written();
      if (ack.result().duplicate()) ++run.duplicates;
    } else {
      run.failed[ack.sequence()] = ack.code();
    }
    if (on_ack) on_ack();
    if (run.ok.size() + run.failed.size() == messages.size()) break;
  }
  writer.join();
  run.status = stream->Finish();
  return run;
}

// Sequences of `run` as a PostgreSQL int8 array literal.
template <typename Seqs>
std::string ArrayOf(const Seqs& seqs) {
  return absl::StrCat("'{", absl::StrJoin(seqs, ","), "}'");
}

v1::GetIngestStatsResponse Stats(IngestServer& server) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::GetIngestStatsResponse stats;
  grpc::Status s = server.stub->GetStats(&ctx, {}, &stats);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return stats;
}

// The stats once `streams` streams have waited for buffer room (or after
// 60 s: the caller checks stream_waits).
v1::GetIngestStatsResponse StatsOnceStreamsWait(IngestServer& server, int streams) {
  v1::GetIngestStatsResponse stats;
  WaitFor(
      [&] {
        stats = Stats(server);
        return stats.stream_waits() >= static_cast<uint64_t>(streams);
      },
      absl::Seconds(60));
  return stats;
}

// A session of the test's own holding `table` in ACCESS EXCLUSIVE mode until
// it rolls back: writes to it wait. Null (with a test failure) if it could not.
std::unique_ptr<PgSession> LockTable(const std::string& table) {
  auto locker = std::make_unique<PgSession>(SharedPostgres().Dsn(kDb));
  EXPECT_TRUE(locker->ok());
  if (!locker->ok()) return nullptr;
  const std::string begin = locker->Exec("BEGIN");
  EXPECT_EQ(begin, "");
  const std::string lock =
      begin.empty() ? locker->Exec(absl::StrCat("LOCK TABLE ", table, " IN ACCESS EXCLUSIVE MODE"))
                    : begin;
  EXPECT_EQ(lock, "");
  return lock.empty() ? std::move(locker) : nullptr;
}

// A call made with raw bytes (a generic stub), so that the messages on the
// wire are exactly `messages`, malformed or not: their answers, as bytes, and
// the call's status.
struct RawCallResult {
  std::vector<std::string> responses;
  grpc::Status status;
};

class RawStream final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  // `read`: false for a client that never reads its answers.
  RawStream(grpc::GenericStub* stub, const std::string& method,
            std::vector<std::shared_ptr<const std::string>> messages, absl::Duration timeout,
            bool read = true)
      : messages_(std::move(messages)) {
    ctx_.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    stub->PrepareBidiStreamingCall(&ctx_, method, grpc::StubOptions(), this);
    if (read) StartRead(&read_);
    NextWrite();
    StartCall();
  }

  // Messages written so far (their writes completed).
  size_t written() const { return written_.load(); }
  void Cancel() { ctx_.TryCancel(); }

  RawCallResult Wait() {
    done_.WaitForNotification();
    absl::MutexLock lock(&mu_);
    return result_;
  }

  void OnWriteDone(bool ok) override {
    if (!ok) return;
    written_.fetch_add(1);
    NextWrite();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    std::vector<grpc::Slice> slices;
    (void)read_.Dump(&slices);
    std::string bytes;
    for (const grpc::Slice& s : slices) {
      bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    {
      absl::MutexLock lock(&mu_);
      result_.responses.push_back(std::move(bytes));
    }
    StartRead(&read_);
  }
  void OnDone(const grpc::Status& status) override {
    {
      absl::MutexLock lock(&mu_);
      result_.status = status;
    }
    done_.Notify();
  }

 private:
  void NextWrite() {
    if (next_ == messages_.size()) {
      StartWritesDone();
      return;
    }
    // Not copied: messages_ outlives the call.
    const std::string& m = *messages_[next_++];
    grpc::Slice slice(m.data(), m.size(), grpc::Slice::STATIC_SLICE);
    write_ = grpc::ByteBuffer(&slice, 1);
    StartWrite(&write_);
  }

  grpc::ClientContext ctx_;
  const std::vector<std::shared_ptr<const std::string>> messages_;
  size_t next_ = 0;  // only touched by the write chain
  std::atomic<size_t> written_{0};
  grpc::ByteBuffer write_, read_;
  absl::Mutex mu_;
  RawCallResult result_ ABSL_GUARDED_BY(mu_);
  absl::Notification done_;
};

RawCallResult RawCall(grpc::Channel* channel, const std::string& method,
                      std::vector<std::shared_ptr<const std::string>> messages,
                      absl::Duration timeout = absl::Seconds(60)) {
  grpc::GenericStub stub(channel->shared_from_this());
  RawStream call(&stub, absl::StrCat("/poolside.v1.IngestService/", method), std::move(messages),
                 timeout);
  return call.Wait();
}

std::vector<std::shared_ptr<const std::string>> Serialized(
    const std::vector<google::protobuf::MessageLite*>& messages) {
  std::vector<std::shared_ptr<const std::string>> out;
  for (auto* m : messages) {
    out.push_back(std::make_shared<const std::string>(m->SerializeAsString()));
  }
  return out;
}

// `message` serialized, with the text "MALFORMED!" in it replaced by bytes
// that are not UTF-8: what protobuf refuses to parse as a string field.
std::shared_ptr<const std::string> MalformedBytes(const google::protobuf::MessageLite& message) {
  std::string bytes = message.SerializeAsString();
  const size_t at = bytes.find("MALFORMED!");
  EXPECT_NE(at, std::string::npos);
  if (at != std::string::npos) bytes.replace(at, 10, "\xff\xfe bad \xc3\x28!");  // as long
  return std::make_shared<const std::string>(std::move(bytes));
}

v1::WriteRequest IdRows(const std::string& table, int64_t first, int n,
                        const std::string& key = "") {
  v1::WriteRequest w = IdRowsWrite("", table, first, n, "device", Text("d"));
  w.set_idempotency_key(key);
  return w;
}

grpc::Status UnaryWrite(IngestServer& server, const v1::WriteRequest& w, v1::WriteResponse* resp,
                        const std::string& token = "") {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  if (!token.empty()) ctx.AddMetadata("authorization", absl::StrCat("Bearer ", token));
  return server.stub->Write(&ctx, w, resp);
}

// ---------------------------------------------------------------------------

TEST(IngestServiceTest, MillionRowsFromEightStreamsLandExactlyOnce) {
  CreateTable("million");
  auto server = StartIngestServer(Config({"million"}));
  ASSERT_TRUE(server.ok()) << server.status();
  constexpr int kStreams = 8, kMessages = 125, kRows = 1000;
  const absl::Time start = absl::Now();
  Producers producers(kStreams, [&](int s) {
    return RunChannel(server->stub.get(), ProducerMessages("million", "m", s, kMessages, kRows));
  });
  const std::vector<ChannelRun>& runs = producers.Join();
  const absl::Duration took = absl::Now() - start;
  uint64_t acked_rows = 0;
  for (const ChannelRun& r : runs) {
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.ok.size(), static_cast<size_t>(kMessages));
    EXPECT_TRUE(r.failed.empty());
    acked_rows += r.rows_written;
  }
  EXPECT_EQ(acked_rows, 1000000u);
  const int64_t n = 1000000;
  EXPECT_EQ(Query("SELECT count(*) FROM million"), "1000000");
  EXPECT_EQ(Query("SELECT count(DISTINCT id) FROM million"), "1000000");
  EXPECT_EQ(Query("SELECT sum(id) FROM million"), absl::StrCat(n * (n - 1) / 2));
  EXPECT_EQ(Query("SELECT sum(value * 4)::int8 FROM million"), absl::StrCat(n * (n - 1) / 2));
  EXPECT_EQ(Query("SELECT count(*) FROM million WHERE at = to_timestamp(1700000000 + id) + "
                  "(id % 1000) * interval '1 microsecond' AND device = 'device-' || (id % 97) "
                  "AND payload LIKE E'p\\t' || id || E'\\\\\\\\n%'"),
            "1000000");
  v1::GetIngestStatsResponse stats = Stats(*server);
  EXPECT_EQ(stats.rows_written(), 1000000u);
  EXPECT_LT(stats.batches_written(), 1000u);  // grouped across requests
  EXPECT_GT(stats.operations_saved(), 990000u);
  printf("1M rows through 8 streams in %s (%.0f rows/s), %llu batches\n",
         absl::FormatDuration(took).c_str(), 1e6 / absl::ToDoubleSeconds(took),
         static_cast<unsigned long long>(stats.batches_written()));
}

TEST(IngestServiceTest, BadRowsAreIsolatedAndGoodRowsCommit) {
  CreateTable("mixed");
  ASSERT_TRUE(
      SharedPostgres().Exec(kDb, "INSERT INTO mixed (id, device) VALUES (7, 'existing')").ok());
  auto server = StartIngestServer(Config({"mixed"}));
  ASSERT_TRUE(server.ok()) << server.status();
  v1::WriteRequest w;
  w.set_table("mixed");
  w.add_columns("id");
  w.add_columns("device");
  w.add_columns("payload");
  w.set_idempotency_key(absl::StrCat("mixed-", absl::ToUnixMicros(absl::Now())));
  auto add = [&](v1::Value id, v1::Value device, std::string payload = "ok") {
    v1::Row* r = w.add_rows();
    *r->add_values() = id;
    *r->add_values() = device;
    r->add_values()->set_text_value(payload);
  };
  auto Int = [](int64_t i) {
    v1::Value v;
    v.set_int64_value(i);
    return v;
  };
  auto Text = [](std::string s) {
    v1::Value v;
    v.set_text_value(s);
    return v;
  };
  auto Bytes = [](std::string s) {
    v1::Value v;
    v.set_bytes_value(s);
    return v;
  };
  auto Null = [] {
    v1::Value v;
    v.set_null_value(v1::NULL_VALUE);
    return v;
  };
  for (int i = 0; i < 10; ++i) add(Int(100 + i), Text("good"));
  add(Int(200), Null());           // 10: NOT NULL violation
  add(Int(7), Text("dup"));        // 11: unique violation (existing row)
  add(Text("abc"), Text("type"));  // 12: type error
  // 13: invalid UTF-8 (as bytes: protobuf refuses to carry it in a string)
  add(Int(201), Bytes("bad \xff\xfe utf8"));
  for (int i = 0; i < 10; ++i) add(Int(300 + i), Text("good"));
  add(Int(300), Text("dup in batch"));  // 24: unique violation inside the request

  grpc::ClientContext ctx;
  v1::WriteResponse resp;
  grpc::Status s = server->stub->Write(&ctx, w, &resp);
  ASSERT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  EXPECT_EQ(resp.rows_written(), 20u);
  ASSERT_EQ(resp.rejected_size(), 5) << resp.DebugString();
  const std::vector<std::pair<uint32_t, std::string>> expected = {
      {10, "23502"}, {11, "23505"}, {12, "22P02"}, {13, "22021"}, {24, "23505"}};
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(resp.rejected(i).row_index(), expected[i].first);
    EXPECT_EQ(resp.rejected(i).sqlstate(), expected[i].second) << resp.rejected(i).reason();
    EXPECT_FALSE(resp.rejected(i).reason().empty());
  }
  EXPECT_NE(resp.rejected(1).reason().find("duplicate key"), std::string::npos);
  EXPECT_NE(resp.rejected(0).reason().find("device"), std::string::npos);
  EXPECT_EQ(Query("SELECT count(*) FROM mixed"), "21");
  EXPECT_EQ(Query("SELECT count(*) FROM mixed WHERE device = 'good'"), "20");

  // The same key again: the original answer, nothing written twice.
  grpc::ClientContext ctx2;
  v1::WriteResponse again;
  ASSERT_TRUE(server->stub->Write(&ctx2, w, &again).ok());
  EXPECT_TRUE(again.duplicate());
  EXPECT_EQ(again.rows_written(), 20u);
  EXPECT_EQ(again.rejected_size(), 5);
  EXPECT_EQ(Query("SELECT count(*) FROM mixed"), "21");
}

TEST(IngestServiceTest, WriteStreamSummarisesItsRequests) {
  CreateTable("streamed");
  auto server = StartIngestServer(Config({"streamed"}));
  ASSERT_TRUE(server.ok()) << server.status();
  grpc::ClientContext ctx;
  v1::WriteStreamResponse summary;
  auto writer = server->stub->WriteStream(&ctx, &summary);
  for (int m = 0; m < 10; ++m) {
    v1::ChannelRequest msg = Message("streamed", "ws", m, 0, 50);
    if (m == 3)
      msg.mutable_write()->mutable_rows(7)->mutable_values(1)->set_null_value(v1::NULL_VALUE);
    ASSERT_TRUE(writer->Write(msg.write()));
  }
  // The first request again: answered from its key.
  ASSERT_TRUE(writer->Write(Message("streamed", "ws", 0, 0, 50).write()));
  writer->WritesDone();
  grpc::Status s = writer->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(summary.requests(), 11u);
  EXPECT_EQ(summary.rows_written(), 549u);  // 499 new + the duplicate's original 50
  EXPECT_EQ(summary.rows_rejected(), 1u);
  EXPECT_EQ(summary.duplicates(), 1u);
  ASSERT_EQ(summary.rejected_size(), 1);
  EXPECT_EQ(summary.rejected(0).request_index(), 3u);
  EXPECT_EQ(summary.rejected(0).error().row_index(), 7u);
  EXPECT_EQ(Query("SELECT count(*) FROM streamed"), "499");
}

// Short streams from many clients at once, each half-closed right after its
// one request, so most are finished by the engine's commit callback on the
// engine's thread rather than in a gRPC reaction: every stream gets its
// summary and every row lands once. (This is the path where a Finish made
// under the reactor's own lock could race gRPC deleting the reactor; unlike
// query_service_test's ManyCallsEndingInErrorsAtOnce, 6 runs of this did not
// catch that race before the fix.)
TEST(IngestServiceTest, ManyShortStreamsFinishedByCommitsAtOnce) {
  CreateTable("short_streams");
  auto server = StartIngestServer(Config({"short_streams"}));
  ASSERT_TRUE(server.ok()) << server.status();
  constexpr int kThreads = 8;
  constexpr int kStreamsPerThread = 25;
  constexpr int kRows = 5;
  const ConcurrentCalls calls = RunConcurrentCalls(kThreads, kStreamsPerThread, [&](int t, int i) {
    const uint64_t seq = static_cast<uint64_t>(t * kStreamsPerThread + i);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::WriteStreamResponse summary;
    auto writer = server->stub->WriteStream(&ctx, &summary);
    writer->Write(Message("short_streams", "short", seq, 0, kRows).write());
    writer->WritesDone();
    const grpc::Status s = writer->Finish();
    if (s.ok() && summary.rows_written() == kRows) return std::string();
    return absl::StrCat("code ", s.error_code(), ": ", s.error_message(), "; rows written ",
                        summary.rows_written());
  });
  EXPECT_EQ(calls.failures, 0) << "first: " << calls.first_failure;
  EXPECT_EQ(Query("SELECT count(*) FROM short_streams"),
            absl::StrCat(kThreads * kStreamsPerThread * kRows));
}

TEST(IngestServiceTest, IdempotencyKeyNamesOneRequestOfOnePrincipal) {
  CreateTable("keyed");
  CreateTable("keyed_other");
  v1::IngestServiceConfig config = Config({"keyed", "keyed_other"});
  auto* auth = config.mutable_auth();
  for (const char* name : {"alice", "bob"}) {
    v1::PrincipalConfig* p = auth->add_principals();
    p->set_name(name);
    p->set_token_sha256(auth::Sha256Hex(absl::StrCat("token-of-", name)));
    p->add_roles("ingest");
    p->add_databases("*");
    v1::IngestTables* t = p->add_ingest_tables();
    t->set_database("app");
    t->add_tables("*");
  }
  auto server = StartIngestServer(config);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string key = absl::StrCat("k-", table_generation.load());
  v1::WriteResponse resp;
  ASSERT_TRUE(UnaryWrite(*server, IdRows("keyed", 1, 5, key), &resp, "token-of-alice").ok());
  EXPECT_EQ(resp.rows_written(), 5u);
  EXPECT_FALSE(resp.duplicate());

  // Reused with other rows, or for another table: refused, naming the key;
  // nothing written.
  grpc::Status s = UnaryWrite(*server, IdRows("keyed", 100, 5, key), &resp, "token-of-alice");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr(key));
  s = UnaryWrite(*server, IdRows("keyed_other", 1, 5, key), &resp, "token-of-alice");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("table keyed"));
  // The same rows again: the first answer, nothing written twice.
  resp.Clear();
  ASSERT_TRUE(UnaryWrite(*server, IdRows("keyed", 1, 5, key), &resp, "token-of-alice").ok());
  EXPECT_TRUE(resp.duplicate());
  EXPECT_EQ(resp.rows_written(), 5u);
  // Bob's key of the same name is his own.
  resp.Clear();
  ASSERT_TRUE(UnaryWrite(*server, IdRows("keyed", 200, 5, key), &resp, "token-of-bob").ok());
  EXPECT_FALSE(resp.duplicate());
  // On a stream too, the reuse is an answer of its own, not a silent drop.
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer token-of-alice");
  auto stream = server->stub->Channel(&ctx);
  v1::ChannelRequest m;
  m.set_sequence(9);
  *m.mutable_write() = IdRows("keyed", 300, 5, key);
  ASSERT_TRUE(stream->Write(m));
  stream->WritesDone();
  v1::ChannelResponse ack;
  ASSERT_TRUE(stream->Read(&ack));
  EXPECT_EQ(ack.sequence(), 9u);
  EXPECT_EQ(ack.code(), static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION));
  EXPECT_TRUE(stream->Finish().ok());

  EXPECT_EQ(Query("SELECT string_agg(id::text, ',' ORDER BY id) FROM keyed"),
            "1,2,3,4,5,200,201,202,203,204");
  EXPECT_EQ(Query("SELECT count(*) FROM keyed_other"), "0");
  EXPECT_EQ(Query(absl::StrCat("SELECT string_agg(principal || '/' || tbl, ',' ORDER BY "
                               "principal) FROM poolside_ingest_keys WHERE key = '",
                               key, "'")),
            "alice/keyed,bob/keyed");
}

TEST(IngestServiceTest, AllBadBatchOfTenThousandRowsReportsEveryRow) {
  CreateTable("all_bad");
  constexpr int kRows = 10000;
  ASSERT_TRUE(SharedPostgres()
                  .Exec(kDb, absl::StrCat("INSERT INTO all_bad (id, device) SELECT g, 'old' "
                                          "FROM generate_series(0, ",
                                          kRows - 1, ") g"))
                  .ok());
  auto server = StartIngestServer(Config({"all_bad"}));
  ASSERT_TRUE(server.ok()) << server.status();
  v1::WriteResponse resp;
  const absl::Time start = absl::Now();
  grpc::Status s = UnaryWrite(*server, IdRows("all_bad", 0, kRows), &resp);
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  EXPECT_EQ(resp.rows_written(), 0u);
  ASSERT_TRUE(RejectedAsDuplicates(resp, kRows));
  EXPECT_EQ(Query("SELECT count(*) FROM all_bad WHERE device <> 'old'"), "0");
  v1::GetIngestStatsResponse stats = Stats(*server);
  EXPECT_EQ(stats.rows_rejected(), static_cast<uint64_t>(kRows));
  EXPECT_EQ(stats.requests_failed(), 0u);
  printf("%d all-bad rows answered in %s (%llu COPY statements)\n", kRows,
         absl::FormatDuration(took).c_str(),
         static_cast<unsigned long long>(stats.copy_statements()));
}

TEST(IngestServiceTest, FewBadRowsAmongManyGoodOnesEachGoodRowOnce) {
  CreateTable("sparse_bad", ", CHECK (value >= 0)");
  auto server = StartIngestServer(Config({"sparse_bad"}));
  ASSERT_TRUE(server.ok()) << server.status();
  constexpr int kMessages = 4, kRows = 5000;
  std::vector<v1::ChannelRequest> messages;
  std::map<uint64_t, std::set<uint32_t>> bad;
  for (int m = 0; m < kMessages; ++m) {
    v1::ChannelRequest msg = Message("sparse_bad", "sb", m, 0, kRows);
    for (int i = 100 + 37 * m; i < kRows; i += 1213) {
      auto* values = msg.mutable_write()->mutable_rows(i)->mutable_values();
      if (i % 2 == 0) {
        values->Mutable(3)->set_double_value(-1);  // the CHECK
      } else {
        values->Mutable(0)->set_int64_value(m * kRows + i - 1);  // the row before's id
      }
      bad[m].insert(static_cast<uint32_t>(i));
    }
    messages.push_back(std::move(msg));
  }
  size_t bad_rows = 0;
  for (auto& [m, rows] : bad) bad_rows += rows.size();
  grpc::ClientContext ctx;
  auto stream = server->stub->Channel(&ctx);
  for (const auto& m : messages) ASSERT_TRUE(stream->Write(m));
  stream->WritesDone();
  v1::ChannelResponse ack;
  uint64_t written = 0;
  int acks = 0;
  while (stream->Read(&ack)) {
    ++acks;
    ASSERT_EQ(ack.code(), 0) << ack.message();
    written += ack.result().rows_written();
    std::set<uint32_t> rejected;
    for (const v1::RowError& e : ack.result().rejected()) {
      rejected.insert(e.row_index());
      EXPECT_FALSE(e.reason().empty());
    }
    EXPECT_EQ(rejected, bad[ack.sequence()]) << "message " << ack.sequence();
  }
  ASSERT_TRUE(stream->Finish().ok());
  EXPECT_EQ(acks, kMessages);
  const uint64_t good = kMessages * kRows - bad_rows;
  EXPECT_EQ(written, good);
  EXPECT_EQ(Query("SELECT count(*) FROM sparse_bad"), absl::StrCat(good));
  EXPECT_EQ(Query("SELECT count(DISTINCT id) FROM sparse_bad"), absl::StrCat(good));
  EXPECT_EQ(Query("SELECT count(*) FROM sparse_bad WHERE value < 0"), "0");
}

TEST(IngestServiceTest, ValuesAreWrittenAsValidatedWhateverTheirWhitespace) {
  CreateTable("spaced", ", amount numeric, n int4");
  auto server = StartIngestServer(Config({"spaced"}));
  ASSERT_TRUE(server.ok()) << server.status();
  v1::WriteRequest w;
  w.set_table("spaced");
  for (const char* c : {"id", "device", "amount", "n"}) w.add_columns(c);
  auto add = [&](int64_t id, std::string amount, std::string n) {
    v1::Row* r = w.add_rows();
    r->add_values()->set_int64_value(id);
    r->add_values()->set_text_value("d\n\r\t\\x");
    r->add_values()->set_numeric_value(std::move(amount));
    r->add_values()->set_text_value(std::move(n));
  };
  add(1, " 12.5\n", " 42\n");
  add(2, "12.5\n3\t4", "1");  // not one number: refused
  add(3, "\t-7e2 \r\n", "\t-3 ");
  add(4, "5", "7\n8");  // not one integer: refused
  add(5, "\\.", "1");   // COPY's end-of-data marker, as a value
  v1::WriteResponse resp;
  grpc::Status s = UnaryWrite(*server, w, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.rows_written(), 2u);
  ASSERT_EQ(resp.rejected_size(), 3);
  EXPECT_EQ(resp.rejected(0).row_index(), 1u);
  EXPECT_EQ(resp.rejected(1).row_index(), 3u);
  EXPECT_EQ(resp.rejected(2).row_index(), 4u);
  EXPECT_EQ(
      Query("SELECT string_agg(id || ':' || amount || ':' || n, ',' ORDER BY id) FROM spaced"),
      "1:12.5:42,3:-700:-3");
  EXPECT_EQ(Query("SELECT count(*) FROM spaced WHERE device = E'd\\n\\r\\t\\\\x'"), "2");
}

TEST(IngestServiceTest, MalformedMessageEndsTheStreamSayingWhich) {
  CreateTable("malformed");
  auto server = StartIngestServer(Config({"malformed"}));
  ASSERT_TRUE(server.ok()) << server.status();
  auto message = [](uint64_t seq) {
    v1::ChannelRequest m = Message("malformed", "mf", seq, 0, 10);
    m.mutable_write()->set_idempotency_key("");
    return m;
  };
  // Channel: two good messages, one with invalid UTF-8 in a row, one more.
  v1::ChannelRequest m0 = message(0), m1 = message(1), m2 = message(2), m3 = message(3);
  m2.mutable_write()->mutable_rows(4)->mutable_values(4)->set_text_value("MALFORMED!");
  std::vector<std::shared_ptr<const std::string>> wire = Serialized({&m0, &m1});
  wire.push_back(MalformedBytes(m2));
  wire.push_back(std::make_shared<const std::string>(m3.SerializeAsString()));
  RawCallResult channel = RawCall(server->channel.get(), "Channel", wire);
  EXPECT_EQ(channel.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << channel.status.error_message();
  EXPECT_THAT(channel.status.error_message(), HasSubstr("message 2 of this stream (sequence 2)"));
  EXPECT_THAT(channel.status.error_message(), HasSubstr("row 4"));
  EXPECT_THAT(channel.status.error_message(), HasSubstr("2 request(s) were acknowledged"));
  std::set<uint64_t> acked;
  for (const std::string& bytes : channel.responses) {
    v1::ChannelResponse ack;
    ASSERT_TRUE(ack.ParseFromString(bytes));
    EXPECT_EQ(ack.code(), 0);
    acked.insert(ack.sequence());
  }
  EXPECT_EQ(acked, (std::set<uint64_t>{0, 1}));
  EXPECT_EQ(Query("SELECT count(*) FROM malformed"), "20");
  EXPECT_EQ(Query("SELECT count(*) FROM malformed WHERE id >= 20"), "0");

  // WriteStream: the same, and a message whose framing is broken.
  v1::WriteRequest w2 = m2.write();
  w2.mutable_rows(4)->mutable_values(4)->set_text_value("MALFORMED!");
  for (uint64_t base : {100u, 200u}) {
    v1::WriteRequest a = message(base).write(), b = message(base + 1).write(),
                     c = message(base + 3).write();
    wire = Serialized({&a, &b});
    if (base == 100) {
      wire.push_back(MalformedBytes(w2));
    } else {
      std::string cut = c.SerializeAsString();
      cut.resize(cut.size() - 7);
      wire.push_back(std::make_shared<const std::string>(cut));
    }
    wire.push_back(std::make_shared<const std::string>(c.SerializeAsString()));
    RawCallResult ws = RawCall(server->channel.get(), "WriteStream", wire);
    EXPECT_EQ(ws.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << ws.status.error_message();
    EXPECT_THAT(ws.status.error_message(), HasSubstr("request 2"));
    EXPECT_NE(ws.status.error_message().find("2 request(s) were answered before it (20 rows"),
              std::string::npos)
        << ws.status.error_message();
    EXPECT_TRUE(ws.responses.empty());
    EXPECT_EQ(Query(absl::StrCat("SELECT count(*) FROM malformed WHERE id / 10 IN (", base, ", ",
                                 base + 1, ")")),
              "20");
    EXPECT_EQ(Query(absl::StrCat("SELECT count(*) FROM malformed WHERE id / 10 = ", base + 3)),
              "0");
  }

  // Unary Write: INVALID_ARGUMENT, not UNIMPLEMENTED.
  grpc::GenericStub stub(server->channel);
  grpc::ClientContext ctx;
  grpc::Slice slice(*MalformedBytes(w2));
  grpc::ByteBuffer request(&slice, 1), response;
  absl::Notification done;
  grpc::Status unary;
  stub.UnaryCall(&ctx, "/poolside.v1.IngestService/Write", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   unary = s;
                   done.Notify();
                 });
  done.WaitForNotification();
  EXPECT_EQ(unary.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << unary.error_message();
  EXPECT_THAT(unary.error_message(), HasSubstr("row 4"));
  EXPECT_EQ(Query("SELECT count(*) FROM malformed"), "60");
  // The server is fine afterwards.
  EXPECT_EQ(RunChannel(server->stub.get(), {message(500)}).ok.size(), 1u);
}

TEST(IngestServiceTest, UnaryWriteGetsResourceExhaustedWithARetryHintWhenFull) {
  CreateTable("full_buffer");
  v1::IngestServiceConfig config = Config({"full_buffer"});
  config.mutable_batch()->set_buffer_bytes(256 << 10);
  config.mutable_batch()->set_max_bytes(64 << 10);
  auto server = StartIngestServer(config);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_TRUE(
      RunChannel(server->stub.get(), {Message("full_buffer", "warm", 0, 1000000, 1)}).ok.size() ==
      1);
  std::unique_ptr<PgSession> locker = LockTable("full_buffer");
  ASSERT_NE(locker, nullptr);
  // Unary writes (each waits for its commit) from threads until one is refused.
  std::atomic<bool> refused{false};
  std::string retry_after;
  absl::Mutex mu;
  std::vector<std::thread> writers;
  std::vector<grpc::Status> statuses(40);
  for (int i = 0; i < 40; ++i) {
    writers.emplace_back([&, i] {
      grpc::ClientContext ctx;
      v1::WriteResponse resp;
      statuses[i] =
          server->stub->Write(&ctx, Message("full_buffer", "u", i, 0, 100, 100).write(), &resp);
      if (statuses[i].error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        absl::MutexLock lock(&mu);
        auto it = ctx.GetServerTrailingMetadata().find("retry-after-ms");
        if (it != ctx.GetServerTrailingMetadata().end()) {
          retry_after = std::string(it->second.data(), it->second.size());
        }
        refused = true;
      }
    });
  }
  // Refusals answer at once; wait for the first, then release the table.
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while (!refused.load() && absl::Now() < give_up) {
    v1::GetIngestStatsResponse stats = Stats(*server);
    if (stats.refused_full() > 0) break;
  }
  EXPECT_EQ(locker->Exec("ROLLBACK"), "");
  for (auto& t : writers) t.join();
  int ok = 0, full = 0;
  for (const grpc::Status& st : statuses) {
    if (st.ok()) ++ok;
    if (st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) ++full;
  }
  EXPECT_GT(full, 0);
  EXPECT_GT(ok, 0);
  EXPECT_EQ(ok + full, 40);
  EXPECT_EQ(retry_after, "100");
  EXPECT_EQ(Query("SELECT count(*) FROM full_buffer"), absl::StrCat(1 + ok * 100));
}

TEST(IngestServiceTest, RefusesTablesAndColumnsItMayNotWrite) {
  CreateTable("allowed");
  CreateTable("unlisted");
  auto server = StartIngestServer(Config({"allowed", "configured_but_absent"}));
  ASSERT_TRUE(server.ok()) << server.status();
  auto write = [&](const std::string& table, const std::string& column) {
    v1::WriteRequest w;
    w.set_table(table);
    w.add_columns("id");
    w.add_columns(column);
    v1::Row* r = w.add_rows();
    r->add_values()->set_int64_value(1);
    r->add_values()->set_text_value("x");
    grpc::ClientContext ctx;
    v1::WriteResponse resp;
    return server->stub->Write(&ctx, w, &resp);
  };
  EXPECT_EQ(write("no_such_table", "device").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(write("unlisted", "device").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(write("configured_but_absent", "device").error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::Status s = write("allowed", "no_such_column");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("no_such_column"), std::string::npos);
  EXPECT_TRUE(write("allowed", "device").ok());
  EXPECT_EQ(Query("SELECT count(*) FROM unlisted"), "0");
  EXPECT_EQ(Query("SELECT count(*) FROM allowed"), "1");
}

TEST(IngestServiceTest, SigkillThenResendWithSameKeysWritesEachRowOnce) {
  CreateTable("killed");
  v1::IngestServiceConfig config = Config({"killed"});
  auto server = StartIngestServer(config);
  ASSERT_TRUE(server.ok()) << server.status();
  constexpr int kMessages = 400, kRows = 100;
  std::vector<v1::ChannelRequest> messages;
  for (int m = 0; m < kMessages; ++m) messages.push_back(Message("killed", "k", m, 0, kRows));
  std::atomic<int> acks{0};
  ChannelRun first = RunChannel(server->stub.get(), messages, [&] {
    // Deterministic point: kill once 50 messages are acknowledged.
    if (acks.fetch_add(1) + 1 == 50) (void)server->process->Signal(SIGKILL);
  });
  ASSERT_EQ(*server->process->Wait(absl::Seconds(20)), -SIGKILL);
  EXPECT_FALSE(first.status.ok());
  ASSERT_GE(first.ok.size(), 50u);
  ASSERT_LT(first.ok.size(), static_cast<size_t>(kMessages));
  // Every acknowledged row is there.
  EXPECT_EQ(Query(absl::StrCat("SELECT count(*) FROM killed WHERE id / ", kRows, " = ANY(",
                               ArrayOf(first.ok), "::int8[])")),
            absl::StrCat(first.ok.size() * kRows));

  // A new server; the client resends everything not acknowledged.
  auto restarted = StartIngestServer(config);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  std::vector<v1::ChannelRequest> rest;
  for (const auto& m : messages) {
    if (!first.ok.count(m.sequence())) rest.push_back(m);
  }
  // Plus a few acknowledged ones, as a client unsure of them would (flushes
  // run in parallel, so these are not necessarily sequences 0 and 1).
  auto acknowledged = first.ok.begin();
  for (int i = 0; i < 2; ++i, ++acknowledged) rest.push_back(messages[*acknowledged]);
  ChannelRun second = RunChannel(restarted->stub.get(), rest);
  ASSERT_TRUE(second.status.ok()) << second.status.error_message();
  EXPECT_EQ(second.ok.size(), rest.size());
  EXPECT_GE(second.duplicates, 2u);
  EXPECT_EQ(Query("SELECT count(*) FROM killed"), absl::StrCat(kMessages * kRows));
  EXPECT_EQ(Query("SELECT count(DISTINCT id) FROM killed"), absl::StrCat(kMessages * kRows));
}

TEST(IngestServiceTest, LockedTableHoldsProducersBackWithinTheBufferBound) {
  CreateTable("locked");
  v1::IngestServiceConfig config = Config({"locked"});
  constexpr uint64_t kBound = 4 << 20;
  config.mutable_batch()->set_buffer_bytes(kBound);
  config.mutable_batch()->set_max_bytes(512 << 10);
  auto server = StartIngestServer(config);
  ASSERT_TRUE(server.ok()) << server.status();
  // Warm up (catalog read, key table) before locking.
  ChannelRun warm = RunChannel(server->stub.get(), {Message("locked", "warm", 0, 10000000, 1)});
  ASSERT_EQ(warm.ok.size(), 1u);
  const int64_t rss_before_kb = server->process->RssKb();

  std::unique_ptr<PgSession> locker = LockTable("locked");
  ASSERT_NE(locker, nullptr);

  // 4 producers, 100 MB of rows in all: 25x the bound.
  constexpr int kStreams = 4, kMessages = 100, kRows = 1000;
  std::atomic<size_t> sent{0};
  Producers producers(kStreams, [&](int s) {
    return RunChannel(server->stub.get(), ProducerMessages("locked", "l", s, kMessages, kRows, 220),
                      nullptr, &sent);
  });
  // Every stream ends up waiting for room: nothing can leave the buffer
  // while the table is locked, so each stream waits at most once.
  v1::GetIngestStatsResponse stats = StatsOnceStreamsWait(*server, kStreams);
  ASSERT_GE(stats.stream_waits(), static_cast<uint64_t>(kStreams));
  const int64_t rss_locked_kb = server->process->RssKb();
  const size_t sent_locked = sent.load();
  printf(
      "locked: %zu of %d messages sent, buffered %llu bytes (max %llu, bound %llu), "
      "RSS %lld -> %lld KiB\n",
      sent_locked, kStreams * kMessages, static_cast<unsigned long long>(stats.buffered_bytes()),
      static_cast<unsigned long long>(stats.buffered_bytes_max()),
      static_cast<unsigned long long>(kBound), static_cast<long long>(rss_before_kb),
      static_cast<long long>(rss_locked_kb));
  EXPECT_LT(sent_locked, static_cast<size_t>(kStreams * kMessages) / 2);  // held back
  EXPECT_LE(stats.buffered_bytes_max(), kBound);
  EXPECT_EQ(stats.rows_written(), 1u);
  // The whole load is ~100 MB; the server holds the bound plus one message per
  // stream plus gRPC's own buffers.
  EXPECT_LT(rss_locked_kb - rss_before_kb, 48 * 1024);

  EXPECT_EQ(locker->Exec("ROLLBACK"), "");
  for (const ChannelRun& r : producers.Join()) {
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.ok.size(), static_cast<size_t>(kMessages));
  }
  EXPECT_EQ(Query("SELECT count(*) FROM locked"), absl::StrCat(1 + kStreams * kMessages * kRows));
  EXPECT_LE(Stats(*server).buffered_bytes_max(), kBound);
}

TEST(IngestServiceTest, LargeRequestsFromEightStreamsToALockedTableStayWithinTheBound) {
  ASSERT_TRUE(SharedPostgres().CreateDatabase(kDb).ok());
  ASSERT_TRUE(SharedPostgres()
                  .Exec(kDb,
                        "DROP TABLE IF EXISTS bulk; CREATE TABLE bulk (id int8, device text, "
                        "at timestamptz, value float8, payload text)")
                  .ok());
  v1::IngestServiceConfig config = Config({"bulk"});
  constexpr uint64_t kBound = 16 << 20;
  config.mutable_batch()->set_buffer_bytes(kBound);  // requests up to a quarter: 4 MiB
  auto server = StartIngestServer(config);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_EQ(RunChannel(server->stub.get(), {Message("bulk", "warm", 0, 0, 1)}).ok.size(), 1u);
  const int64_t rss_before_kb = server->process->RssKb();

  std::unique_ptr<PgSession> locker = LockTable("bulk");
  ASSERT_NE(locker, nullptr);

  // 8 streams, each with 2 requests of ~3.6 MiB: 3.5x the bound in all.
  constexpr int kStreams = 8, kMessages = 2, kRows = 13500;
  v1::ChannelRequest big = Message("bulk", "big", 0, 0, kRows, 220);
  big.mutable_write()->set_idempotency_key("");
  ASSERT_LE(big.ByteSizeLong(), kBound / 4);
  ASSERT_GE(big.ByteSizeLong(), kBound / 5);
  std::vector<std::unique_ptr<RawStream>> streams;
  grpc::GenericStub stub(server->channel);
  for (int s = 0; s < kStreams; ++s) {
    std::vector<std::shared_ptr<const std::string>> wire;
    for (int m = 0; m < kMessages; ++m) {
      big.set_sequence(m);
      wire.push_back(std::make_shared<const std::string>(big.SerializeAsString()));
    }
    streams.push_back(std::make_unique<RawStream>(&stub, "/poolside.v1.IngestService/Channel",
                                                  std::move(wire), absl::Seconds(120)));
  }
  // Blocked: every stream has asked for room it cannot get.
  v1::GetIngestStatsResponse stats = StatsOnceStreamsWait(*server, kStreams);
  ASSERT_GE(stats.stream_waits(), static_cast<uint64_t>(kStreams));
  int64_t rss_locked_kb = 0;
  for (int i = 0; i < 20; ++i) {
    rss_locked_kb = std::max(rss_locked_kb, server->process->RssKb());
    stats = Stats(*server);
  }
  const int64_t peak_kb = server->process->PeakRssKb();
  printf("locked: held %llu bytes (max %llu, bound %llu), RSS %lld -> %lld KiB (peak %lld)\n",
         static_cast<unsigned long long>(stats.buffered_bytes()),
         static_cast<unsigned long long>(stats.buffered_bytes_max()),
         static_cast<unsigned long long>(kBound), static_cast<long long>(rss_before_kb),
         static_cast<long long>(rss_locked_kb), static_cast<long long>(peak_kb));
  EXPECT_EQ(stats.rows_written(), 1u);
  EXPECT_LE(stats.buffered_bytes_max(), kBound);
  // About 1.5x the bound plus a constant (gRPC's stream windows, allocator).
  EXPECT_LT(peak_kb - rss_before_kb, static_cast<int64_t>(kBound * 3 / 2 / 1024) + 24 * 1024);

  EXPECT_EQ(locker->Exec("ROLLBACK"), "");
  size_t acked = 0;
  for (auto& stream : streams) {
    RawCallResult r = stream->Wait();
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    for (const std::string& bytes : r.responses) {
      v1::ChannelResponse ack;
      ASSERT_TRUE(ack.ParseFromString(bytes));
      EXPECT_EQ(ack.code(), 0) << ack.message();
      EXPECT_EQ(ack.result().rows_written(), static_cast<uint64_t>(kRows));
      ++acked;
    }
  }
  EXPECT_EQ(acked, static_cast<size_t>(kStreams * kMessages));
  EXPECT_EQ(Query("SELECT count(*) FROM bulk"), absl::StrCat(1 + kStreams * kMessages * kRows));

  // A request over batch.maxRequestBytes (4 MiB here) is refused at once,
  // stating both sizes, as that request's answer: the stream goes on.
  v1::ChannelRequest over = Message("bulk", "over", 7, 0, 40000, 220);
  ASSERT_GT(over.ByteSizeLong(), size_t{10} << 20);
  v1::ChannelRequest after = Message("bulk", "over", 8, 0, 10);
  RawCallResult r = RawCall(server->channel.get(), "Channel", Serialized({&over, &after}));
  EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_EQ(r.responses.size(), 2u);
  std::map<uint64_t, v1::ChannelResponse> answers;
  for (const std::string& bytes : r.responses) {
    v1::ChannelResponse ack;
    ASSERT_TRUE(ack.ParseFromString(bytes));
    answers[ack.sequence()] = ack;
  }
  EXPECT_EQ(answers[7].code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_NE(answers[7].message().find(absl::StrCat("request is ", over.ByteSizeLong() >> 20)),
            std::string::npos)
      << answers[7].message();
  EXPECT_NE(answers[7].message().find("at most 4.0 MiB"), std::string::npos)
      << answers[7].message();
  EXPECT_NE(answers[7].message().find("at most 16.0 MiB"), std::string::npos)
      << answers[7].message();
  EXPECT_EQ(answers[8].code(), 0) << answers[8].message();

  // 8 streams of 39 MiB requests: refused (by gRPC, whose memory is capped:
  // it receives a message whole before it can refuse it), the server's memory
  // bounded all the same.
  v1::ChannelRequest huge = Message("bulk", "huge", 0, 0, 150000, 220);
  auto huge_bytes = std::make_shared<const std::string>(huge.SerializeAsString());
  ASSERT_GT(huge_bytes->size(), size_t{39} << 20);
  streams.clear();
  for (int s = 0; s < kStreams; ++s) {
    streams.push_back(std::make_unique<RawStream>(&stub, "/poolside.v1.IngestService/Channel",
                                                  std::vector{huge_bytes}, absl::Seconds(60)));
  }
  for (auto& stream : streams) {
    RawCallResult refused = stream->Wait();
    EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
        << refused.status.error_message();
    EXPECT_TRUE(refused.responses.empty());
    printf("39 MiB request: %s\n", refused.status.error_message().c_str());
  }
  printf("refused 8 x %zu bytes: RSS peak %lld KiB\n", huge_bytes->size(),
         static_cast<long long>(server->process->PeakRssKb()));
  // (The peak of the whole run, what the allocator kept from the first part
  // included.)
  EXPECT_LT(server->process->PeakRssKb() - rss_before_kb,
            static_cast<int64_t>(kBound * 3 / 2 / 1024) + 32 * 1024);
  EXPECT_EQ(Query("SELECT count(*) FROM bulk"),
            absl::StrCat(1 + kStreams * kMessages * kRows + 10));
}

// A Channel client that sends and never reads its acknowledgements. Each
// request here is answered with 4000 rejected rows (~150 KiB of
// acknowledgement for 8 KiB sent). The server stops reading the stream once
// its unsent acknowledgements pass a bound, so its memory stays within
// "about 1.5 x bufferBytes plus a constant" (docs/ingest.md, Bounded
// memory); without that pause, after 400 requests (3 MiB sent) it held some
// 60 MiB of acknowledgements (RSS +78 MiB with a 4 MiB bound).
TEST(IngestServiceTest, AClientThatNeverReadsItsAcknowledgementsHoldsBoundedMemory) {
  CreateTable("unread");
  v1::IngestServiceConfig config = Config({"unread"});
  constexpr uint64_t kBound = 4 << 20;
  config.mutable_batch()->set_buffer_bytes(kBound);
  auto server = StartIngestServer(config);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_EQ(RunChannel(server->stub.get(), {Message("unread", "warm", 0, 1000000, 1)}).ok.size(),
            1u);
  const int64_t rss_before_kb = server->process->RssKb();
  // Rows of one value for five columns: each refused, with a reason.
  v1::ChannelRequest m = Message("unread", "u", 0, 0, 0);
  m.mutable_write()->set_idempotency_key("");
  for (int i = 0; i < 4000; ++i) m.mutable_write()->add_rows()->add_values()->set_int64_value(i);
  constexpr int kMessages = 400;
  std::vector<std::shared_ptr<const std::string>> wire;
  for (int i = 0; i < kMessages; ++i) {
    m.set_sequence(i);
    wire.push_back(std::make_shared<const std::string>(m.SerializeAsString()));
  }
  grpc::GenericStub stub(server->channel);
  RawStream stream(&stub, "/poolside.v1.IngestService/Channel", std::move(wire), absl::Seconds(120),
                   /*read=*/false);
  // How many of the stream's requests the server takes: all of them, or as
  // many as it took before it stopped (the count unchanged over ten looks
  // 100 ms apart with nothing in flight: requests answered, the stream
  // paused).
  auto taken_until_it_stops = [&] {
    const uint64_t before = Stats(*server).requests();
    uint64_t taken = 0;
    int unchanged = 0;
    WaitFor(
        [&] {
          const v1::GetIngestStatsResponse now = Stats(*server);
          const uint64_t t = now.requests() - before;
          unchanged = t == taken && now.queue_requests() == 0 ? unchanged + 1 : 0;
          taken = t;
          absl::SleepFor(absl::Milliseconds(100));
          return taken == kMessages || unchanged >= 10;
        },
        absl::Seconds(60));
    return taken;
  };
  const uint64_t taken = taken_until_it_stops();
  EXPECT_LT(taken, static_cast<uint64_t>(kMessages)) << "the server read on, answering into memory";
  const int64_t rss_kb = server->process->PeakRssKb();
  printf("never read: %llu of %d requests taken, %zu written by the client; RSS %lld -> %lld KiB\n",
         static_cast<unsigned long long>(taken), kMessages, stream.written(),
         static_cast<long long>(rss_before_kb), static_cast<long long>(rss_kb));
  EXPECT_LT(rss_kb - rss_before_kb, static_cast<int64_t>(kBound * 3 / 2 / 1024) + 24 * 1024);
  stream.Cancel();
  RawCallResult r = stream.Wait();
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::CANCELLED) << r.status.error_message();
  EXPECT_EQ(Query("SELECT count(*) FROM unread"), "1");
  v1::GetIngestStatsResponse stats = Stats(*server);
  EXPECT_EQ(stats.buffered_bytes(), 0u);
  EXPECT_EQ(stats.queue_requests(), 0u);

  // A client that reads late: the server waits for it, then reads on, and
  // every request is taken and acknowledged.
  std::vector<v1::ChannelRequest> late;
  for (int i = 0; i < kMessages; ++i) {
    m.set_sequence(i);
    late.push_back(m);
  }
  uint64_t taken_unread = 0;
  ChannelRun run = RunChannel(server->stub.get(), late, [&] {
    if (taken_unread == 0) taken_unread = taken_until_it_stops();  // after the first ack
  });
  EXPECT_LT(taken_unread, static_cast<uint64_t>(kMessages));
  EXPECT_TRUE(run.status.ok()) << run.status.error_message();
  EXPECT_EQ(run.ok.size(), static_cast<size_t>(kMessages));
  EXPECT_TRUE(run.failed.empty());
  EXPECT_EQ(Query("SELECT count(*) FROM unread"), "1");
  stats = Stats(*server);
  EXPECT_EQ(stats.buffered_bytes(), 0u);
  EXPECT_EQ(stats.queue_requests(), 0u);
}

// A Channel client that sends keyed requests (to a locked table, so none is
// written yet) and cancels the call once the server has taken them: nothing
// is acknowledged, and what it leaves behind is consistent: each request
// written whole or not at all, its key stored exactly when its rows are, no
// session left in a transaction, nothing buffered or waiting. (The requests
// already taken are written once the lock goes, though unacknowledged: the
// proto's "a request without an acknowledgement when the call ends was not
// written" does not hold for a call cancelled with requests in flight; only
// their keys tell a resending client.)
TEST(IngestServiceTest, AStreamCancelledAfterSendingLeavesEachRequestWholeOrAbsent) {
  CreateTable("cancelled");
  auto server = StartIngestServer(Config({"cancelled"}));
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_EQ(RunChannel(server->stub.get(), {Message("cancelled", "warm", 0, 1000000, 1)}).ok.size(),
            1u);
  std::unique_ptr<PgSession> locker = LockTable("cancelled");
  ASSERT_NE(locker, nullptr);
  constexpr int kMessages = 5, kRows = 20;
  std::vector<std::shared_ptr<const std::string>> wire;
  for (int i = 0; i < kMessages; ++i) {
    wire.push_back(std::make_shared<const std::string>(
        Message("cancelled", "c", i, 0, kRows).SerializeAsString()));
  }
  const uint64_t requests_before = Stats(*server).requests();
  grpc::GenericStub stub(server->channel);
  RawStream stream(&stub, "/poolside.v1.IngestService/Channel", std::move(wire),
                   absl::Seconds(120));
  ASSERT_TRUE(WaitFor([&] { return Stats(*server).requests() - requests_before == kMessages; },
                      absl::Seconds(30)));
  stream.Cancel();
  RawCallResult r = stream.Wait();
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::CANCELLED) << r.status.error_message();
  EXPECT_TRUE(r.responses.empty());
  EXPECT_EQ(locker->Exec("ROLLBACK"), "");
  ASSERT_TRUE(WaitFor([&] { return Stats(*server).queue_requests() == 0; }, absl::Seconds(60)));

  const std::string prefix = absl::StrCat(table_generation.load(), "-cancelled-c-");
  for (int i = 0; i < kMessages; ++i) {
    const std::string rows = Query(absl::StrCat("SELECT count(*) FROM cancelled WHERE id / ", kRows,
                                                " = ", i, " AND id < 1000000"));
    EXPECT_TRUE(rows == "0" || rows == absl::StrCat(kRows)) << "message " << i << ": " << rows;
    EXPECT_EQ(Query(absl::StrCat("SELECT count(*) FROM poolside_ingest_keys WHERE key = '", prefix,
                                 i, "'")),
              rows == "0" ? "0" : "1")
        << "message " << i;
  }
  EXPECT_EQ(Query("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
                  "state LIKE 'idle in transaction%'"),
            "0");
  const v1::GetIngestStatsResponse stats = Stats(*server);
  EXPECT_EQ(stats.buffered_bytes(), 0u);
  EXPECT_EQ(stats.queue_batches(), 0u);
  // The stream's requests, resent with their keys: answered, none written twice.
  std::vector<v1::ChannelRequest> again;
  for (int i = 0; i < kMessages; ++i) again.push_back(Message("cancelled", "c", i, 0, kRows));
  ChannelRun resent = RunChannel(server->stub.get(), again);
  EXPECT_TRUE(resent.status.ok()) << resent.status.error_message();
  EXPECT_EQ(resent.ok.size(), static_cast<size_t>(kMessages));
  EXPECT_EQ(Query("SELECT count(*) FROM cancelled"), absl::StrCat(1 + kMessages * kRows));
  EXPECT_EQ(Query("SELECT count(DISTINCT id) FROM cancelled"), absl::StrCat(1 + kMessages * kRows));
}

TEST(IngestServiceTest, SigtermDuringLoadAcknowledgesExactlyWhatIsWritten) {
  CreateTable("termed");
  // A small buffer: the server reads few messages ahead of what it has
  // written, so the SIGTERM after the 100th acknowledgement lands while most
  // messages are still unread (and are then refused), however fast the
  // writes go.
  v1::IngestServiceConfig config = Config({"termed"});
  config.mutable_batch()->set_buffer_bytes(1 << 20);
  config.mutable_batch()->set_max_bytes(256 << 10);
  config.mutable_batch()->set_max_request_bytes(256 << 10);
  auto server = StartIngestServer(config);
  ASSERT_TRUE(server.ok()) << server.status();
  constexpr int kStreams = 4, kMessages = 600, kRows = 100;
  std::atomic<int> acks{0};
  Producers producers(kStreams, [&](int s) {
    return RunChannel(server->stub.get(), ProducerMessages("termed", "t", s, kMessages, kRows),
                      [&] {
                        if (acks.fetch_add(1) + 1 == 100) (void)server->process->Signal(SIGTERM);
                      });
  });
  const std::vector<ChannelRun>& runs = producers.Join();
  absl::StatusOr<int> code = server->process->Wait(absl::Seconds(30));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0) << server->process->LogTail();
  // Exactly the acknowledged messages are in the table: every acknowledged
  // row, and nothing that was not acknowledged as written.
  uint64_t acked = 0;
  std::vector<uint64_t> acked_messages, failed_messages;
  for (int s = 0; s < kStreams; ++s) {
    acked += runs[s].ok.size();
    for (uint64_t seq : runs[s].ok) acked_messages.push_back(s * kMessages + seq);
    for (auto& [seq, c] : runs[s].failed) {
      EXPECT_EQ(c, static_cast<int>(grpc::StatusCode::UNAVAILABLE));
      failed_messages.push_back(s * kMessages + seq);
    }
    // Every message was answered, or the call ended with an error (UNAVAILABLE
    // from the drain; CANCELLED for a call the stopping server never started).
    if (runs[s].ok.size() + runs[s].failed.size() < kMessages) {
      EXPECT_FALSE(runs[s].status.ok());
    } else {
      EXPECT_TRUE(runs[s].status.ok()) << runs[s].status.error_message();
    }
  }
  for (int s = 0; s < kStreams; ++s) {
    printf("stream %d: %zu ok, %zu refused, status %d %s\n", s, runs[s].ok.size(),
           runs[s].failed.size(), runs[s].status.error_code(),
           runs[s].status.error_message().c_str());
  }
  ASSERT_GE(acked, 100u);
  EXPECT_LT(acked, static_cast<uint64_t>(kStreams * kMessages));
  EXPECT_EQ(Query("SELECT count(*) FROM termed"), absl::StrCat(acked * kRows));
  EXPECT_EQ(Query(absl::StrCat("SELECT count(*) FROM termed WHERE id / ", kRows, " = ANY(",
                               ArrayOf(acked_messages), "::int8[])")),
            absl::StrCat(acked * kRows));
  printf("SIGTERM: %llu messages acknowledged, %zu refused while draining\n",
         static_cast<unsigned long long>(acked), failed_messages.size());
}

TEST(IngestServiceTest, CliStreamsACsvAndResumesWithoutWritingTwice) {
  CreateTable("from_csv");
  auto server = StartIngestServer(Config({"from_csv"}));
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string csv = absl::StrCat(testing::TestOutputDir(), "/rows.", getpid(), ".csv");
  {
    std::ofstream out(csv);
    out << "id,device,payload\r\n";
    for (int i = 1; i <= 2500; ++i) {
      // Good records span two lines (a quoted line break), so record i starts
      // on line 2i.
      if (i == 4) {
        out << "4,,null device\n";  // unquoted empty: NULL into NOT NULL
      } else if (i == 10) {
        out << "ten,d,bad id\n";
      } else {
        out << i << ",\"dev, " << i << "\",\"say \"\"hi\"\"\nline two\"\n";
      }
    }
  }
  const std::vector<std::string> cmd = {RunfilePath("cli/poolside"),
                                        "ingest",
                                        "--addr",
                                        server->process->address(),
                                        "--table",
                                        "from_csv",
                                        "--chunk_rows",
                                        "300",
                                        csv};
  absl::StatusOr<testing::CommandResult> first = testing::RunCommand(cmd);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->exit_code, 1) << first->output;  // some rows rejected
  EXPECT_THAT(first->output, HasSubstr("2498 rows written, 2 rejected"));
  EXPECT_THAT(first->output, HasSubstr("line 8: null value in column \"device\""));
  EXPECT_THAT(first->output, HasSubstr("line 19: invalid input syntax"));
  EXPECT_EQ(Query("SELECT count(*) FROM from_csv"), "2498");
  EXPECT_EQ(Query("SELECT payload FROM from_csv WHERE id = 7"), "say \"hi\"\nline two");
  EXPECT_EQ(Query("SELECT device FROM from_csv WHERE id = 7"), "dev, 7");

  // Run again (as after an interruption): every chunk is already committed.
  // This time with the address as a global option, before the command.
  const std::vector<std::string> global_addr = {RunfilePath("cli/poolside"),
                                                absl::StrCat("--addr=", server->process->address()),
                                                "ingest",
                                                "--table",
                                                "from_csv",
                                                "--chunk_rows",
                                                "300",
                                                csv};
  absl::StatusOr<testing::CommandResult> again = testing::RunCommand(global_addr);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_THAT(again->output, HasSubstr("9 chunk(s) already written"));
  EXPECT_EQ(Query("SELECT count(*) FROM from_csv"), "2498");
}

}  // namespace
}  // namespace poolside::testing
