// ingest_loadgen: pushes rows through poolside.v1.IngestService/Channel as fast
// as the service acknowledges them, or writes the same rows as CSV (for the
// `psql \copy` baseline).
//
// Rows are the realistic 5-column shape of bench/README.md (id int8, device
// text, at timestamptz, value float8, payload text), id = 1..rows. With
// `--producers` P, producer p sends the ids p, p+P, ... in requests of
// `--rows_per_request` rows on its own Channel call (its own TCP connection),
// keeping at most `--window` requests unacknowledged. Requests are built while
// sending, so the client's encoding cost is part of the measurement, as it is
// for psql reading its CSV. Time runs from the first request to the last
// acknowledgement (acknowledgements come after COMMIT).
//
// Prints one line of JSON: rows, seconds, rows_per_sec, requests, errors.
// Exit status: 0 on success, 1 if any request failed, 2 on bad arguments.

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/server/channel.h"
#include "common/server/mutex_mode.h"
#include "proto/poolside/v1/ingest.grpc.pb.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50053", "ingest service address");
ABSL_FLAG(std::string, table, "ingest_bench", "table (as configured in the service)");
ABSL_FLAG(std::string, db, "", "database name (empty: the service's default)");
ABSL_FLAG(int64_t, rows, 1000000, "rows in all");
ABSL_FLAG(int32_t, producers, 8, "concurrent Channel calls");
ABSL_FLAG(int32_t, rows_per_request, 1000, "rows per request");
ABSL_FLAG(int32_t, window, 8, "unacknowledged requests per producer");
ABSL_FLAG(std::string, write_csv, "",
          "write the rows to this CSV file (no header) and exit without sending");
ABSL_FLAG(std::string, key_prefix, "", "idempotency key prefix (default: a per-run one)");

namespace {

namespace v1 = ::poolside::v1;

constexpr int64_t kEpoch = 1700000000;

std::string Payload(int64_t id) {
  std::string p = absl::StrCat("event payload ", id, " ");
  p.resize(48, 'x');
  return p;
}

void FillRow(int64_t id, v1::Row* row) {
  row->mutable_values()->Clear();
  row->add_values()->set_int64_value(id);
  row->add_values()->set_text_value(absl::StrCat("device-", id % 997));
  row->add_values()->mutable_timestamp_value()->set_seconds(kEpoch + id);
  row->add_values()->set_double_value(static_cast<double>(id) * 0.25);
  row->add_values()->set_text_value(Payload(id));
}

int WriteCsv(const std::string& path, int64_t rows) {
  std::ofstream out(path);
  std::string line;
  for (int64_t id = 1; id <= rows; ++id) {
    line.clear();
    absl::StrAppend(&line, id, ",device-", id % 997, ",",
                    absl::FormatTime("%Y-%m-%d %H:%M:%S+00", absl::FromUnixSeconds(kEpoch + id),
                                     absl::UTCTimeZone()),
                    ",", absl::StrFormat("%.17g", static_cast<double>(id) * 0.25), ",", Payload(id),
                    "\n");
    out << line;
  }
  return out ? 0 : 2;
}

struct Producer {
  std::mutex mu;
  std::condition_variable cv;
  int in_flight = 0;
  bool broken = false;
  uint64_t requests = 0, errors = 0, rows_written = 0;
  std::string first_error;
};

void RunProducer(v1::IngestService::Stub* stub, int index, int producers, int64_t rows,
                 const std::string& key_prefix, Producer* p) {
  const int per_request = absl::GetFlag(FLAGS_rows_per_request);
  const int window = absl::GetFlag(FLAGS_window);
  grpc::ClientContext ctx;
  auto stream = stub->Channel(&ctx);
  std::thread reader([&] {
    v1::ChannelResponse ack;
    while (stream->Read(&ack)) {
      std::lock_guard<std::mutex> lock(p->mu);
      --p->in_flight;
      if (ack.code() != 0) {
        ++p->errors;
        if (p->first_error.empty()) p->first_error = ack.message();
      } else {
        p->rows_written += ack.result().rows_written();
      }
      p->cv.notify_all();
    }
    std::lock_guard<std::mutex> lock(p->mu);
    p->broken = true;
    p->cv.notify_all();
  });
  uint64_t seq = 0;
  int64_t id = index + 1;
  // One request object, cleared and refilled: its rows and values are reused
  // rather than allocated again (what a tuned producer does).
  v1::ChannelRequest req;
  v1::WriteRequest* w = req.mutable_write();
  w->set_database(absl::GetFlag(FLAGS_db));
  w->set_table(absl::GetFlag(FLAGS_table));
  for (const char* c : {"id", "device", "at", "value", "payload"}) w->add_columns(c);
  while (id <= rows) {
    req.set_sequence(seq);
    w->mutable_rows()->Clear();
    w->set_idempotency_key(absl::StrCat(key_prefix, "-", index, "-", seq));
    for (int i = 0; i < per_request && id <= rows; ++i, id += producers) {
      FillRow(id, w->add_rows());
    }
    {
      std::unique_lock<std::mutex> lock(p->mu);
      p->cv.wait(lock, [&] { return p->broken || p->in_flight < window; });
      if (p->broken) break;
      ++p->in_flight;
      ++p->requests;
    }
    if (!stream->Write(req)) break;
    ++seq;
  }
  {
    std::unique_lock<std::mutex> lock(p->mu);
    p->cv.wait(lock, [&] { return p->broken || p->in_flight == 0; });
  }
  stream->WritesDone();
  reader.join();
  grpc::Status s = stream->Finish();
  std::lock_guard<std::mutex> lock(p->mu);
  if (!s.ok() || p->in_flight > 0) {
    p->errors += std::max(1, p->in_flight);
    if (p->first_error.empty()) p->first_error = s.error_message();
  }
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("ingest_loadgen --addr=HOST:PORT --table=T [--rows=N]");
  absl::ParseCommandLine(argc, argv);
  poolside::server::ApplyMutexDeadlockDetectionFlag();
  const int64_t rows = absl::GetFlag(FLAGS_rows);
  const int producers = absl::GetFlag(FLAGS_producers);
  if (rows <= 0 || producers <= 0 || absl::GetFlag(FLAGS_rows_per_request) <= 0 ||
      absl::GetFlag(FLAGS_window) <= 0) {
    std::fprintf(stderr, "--rows, --producers, --rows_per_request, --window must be positive\n");
    return 2;
  }
  if (!absl::GetFlag(FLAGS_write_csv).empty())
    return WriteCsv(absl::GetFlag(FLAGS_write_csv), rows);

  std::string key_prefix = absl::GetFlag(FLAGS_key_prefix);
  if (key_prefix.empty()) key_prefix = absl::StrCat("bench-", absl::ToUnixMicros(absl::Now()));
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<v1::IngestService::Stub>> stubs;
  for (int i = 0; i < producers; ++i) {
    poolside::server::ChannelOptions options;
    options.target = absl::GetFlag(FLAGS_addr);
    options.tls = poolside::server::PlaintextTls();  // the benchmark runs on loopback
    options.args.SetInt("grpc.channel_id", i);       // distinct channels: one connection each
    channels.push_back(*poolside::server::CreateChannel(std::move(options)));
    stubs.push_back(v1::IngestService::NewStub(channels.back()));
  }
  std::vector<Producer> state(producers);
  std::vector<std::thread> threads;
  const absl::Time start = absl::Now();
  for (int i = 0; i < producers; ++i) {
    threads.emplace_back(RunProducer, stubs[i].get(), i, producers, rows, key_prefix, &state[i]);
  }
  for (auto& t : threads) t.join();
  const double secs = absl::ToDoubleSeconds(absl::Now() - start);
  uint64_t requests = 0, errors = 0, written = 0;
  std::string first_error;
  for (auto& p : state) {
    requests += p.requests;
    errors += p.errors;
    written += p.rows_written;
    if (first_error.empty()) first_error = p.first_error;
  }
  // The service's own view of the run (flushes, batch sizes), for the record.
  v1::GetIngestStatsResponse stats;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    (void)stubs[0]->GetStats(&ctx, {}, &stats);
  }
  std::string flushes;
  for (const auto& [reason, n] : stats.flushes_by_reason()) {
    absl::StrAppend(&flushes, flushes.empty() ? "" : ", ", "\"", reason, "\": ", n);
  }
  std::printf(
      "{\"rows\": %llu, \"seconds\": %.3f, \"rows_per_sec\": %.1f, \"requests\": %llu, "
      "\"errors\": %llu, \"producers\": %d, \"rows_per_request\": %d, \"window\": %d, "
      "\"server_batches\": %llu, \"server_batches_joined\": %llu, \"server_flushes\": {%s}}\n",
      static_cast<unsigned long long>(written), secs, written / std::max(secs, 1e-9),
      static_cast<unsigned long long>(requests), static_cast<unsigned long long>(errors), producers,
      absl::GetFlag(FLAGS_rows_per_request), absl::GetFlag(FLAGS_window),
      static_cast<unsigned long long>(stats.batches_written()),
      static_cast<unsigned long long>(stats.batches_joined()), flushes.c_str());
  if (errors > 0)
    std::fprintf(stderr, "ingest_loadgen: %llu errors, first: %s\n",
                 static_cast<unsigned long long>(errors), first_error.c_str());
  return errors > 0 ? 1 : 0;
}
