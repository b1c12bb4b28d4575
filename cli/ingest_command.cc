#include "cli/ingest_command.h"

#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cli/command_line.h"
#include "cli/csv.h"
#include "common/hash/fnv1a.h"
#include "proto/poolside/v1/ingest.grpc.pb.h"

namespace poolside::cli {
namespace {

namespace v1 = ::poolside::v1;

constexpr int kMaxAttempts = 5;
constexpr size_t kMaxListedRejections = 20;

bool IsUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80             ? 1
                 : (c & 0xE0) == 0xC0 ? 2
                 : (c & 0xF0) == 0xE0 ? 3
                 : (c & 0xF8) == 0xF0 ? 4
                                      : 0;
    if (len == 0 || i + len > s.size() || (len == 2 && c < 0xC2)) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += len;
  }
  return true;
}

std::string HumanBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  // StrFormat checks its format at compile time: one constant per branch.
  return u == 0 ? absl::StrFormat("%.0f %s", b, units[u]) : absl::StrFormat("%.1f %s", b, units[u]);
}

std::string Clock(double seconds) {
  if (seconds < 0 || seconds > 1e7) return "--:--";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  return s >= 3600 ? absl::StrFormat("%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60)
                   : absl::StrFormat("%d:%02d", s / 60, s % 60);
}

// One chunk sent and not yet acknowledged.
struct Chunk {
  v1::ChannelRequest request;
  std::vector<int64_t> lines;  // CSV line of each row
  uint64_t end_offset = 0;     // file bytes consumed through this chunk
  int attempts = 1;
};

struct Rejection {
  int64_t line;
  std::string reason;
};

// Shared between the reading (sending) thread and the acknowledgement thread.
class Progress {
 public:
  explicit Progress(uint64_t total_bytes)
      : total_bytes_(total_bytes), start_(absl::Now()), tty_(isatty(STDERR_FILENO) == 1) {}

  void Committed(uint64_t rows, uint64_t offset) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    rows_ += rows;
    bytes_ = std::max(bytes_, offset);
    MaybePrintLocked(false);
  }
  void Done() {
    absl::MutexLock lock(&mu_);
    MaybePrintLocked(true);
    if (printed_) std::fputc('\n', stderr);
  }

 private:
  void MaybePrintLocked(bool force) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!tty_) return;
    const absl::Time now = absl::Now();
    if (!force && now - last_ < absl::Milliseconds(200)) return;
    last_ = now;
    printed_ = true;
    const double secs = std::max(1e-3, absl::ToDoubleSeconds(now - start_));
    const double rate = rows_ / secs, byte_rate = bytes_ / secs;
    const double eta = byte_rate > 0 ? (total_bytes_ - bytes_) / byte_rate : -1;
    std::fprintf(stderr, "\r%12s rows  %10s rows/s  %10s / %-10s  ETA %s   ",
                 absl::StrFormat("%d", rows_).c_str(), absl::StrFormat("%.0f", rate).c_str(),
                 HumanBytes(bytes_).c_str(), HumanBytes(total_bytes_).c_str(), Clock(eta).c_str());
    std::fflush(stderr);
  }

  const uint64_t total_bytes_;
  const absl::Time start_;
  const bool tty_;
  absl::Mutex mu_;
  uint64_t rows_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool printed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

const char* IngestUsageText() {
  return "usage: poolside ingest --table T [--columns a,b,c] [--db D] [--addr HOST:PORT]\n"
         "                      [--header] [--chunk_rows N] [--window N] FILE.csv\n"
         "  Streams FILE.csv into table T through the ingest service (default address\n"
         "  $POOLSIDE_INGEST_ADDR or 127.0.0.1:50053). Without --columns the first line\n"
         "  is the header. Safe to run again after an interruption: chunks already\n"
         "  committed are not written twice.\n";
}

absl::StatusOr<IngestOptions> ParseIngestArgs(const std::vector<std::string>& args,
                                              IngestOptions o) {
  for (size_t i = 0; i < args.size(); ++i) {
    std::string arg = args[i];
    if (arg.size() < 2 || arg[0] != '-') {
      if (!o.file.empty()) return absl::InvalidArgumentError("more than one FILE given");
      o.file = arg;
      continue;
    }
    auto [name, value, has_value] = SplitOption(arg);
    if (name == "header") {
      o.header = true;
      continue;
    }
    if (!has_value) {
      if (i + 1 >= args.size())
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      value = args[++i];
    }
    if (name == "table") {
      o.table = value;
    } else if (name == "columns") {
      o.columns = absl::StrSplit(value, ',', absl::SkipEmpty());
    } else if (name == "db" || name == "database") {
      o.database = value;
    } else if (name == "addr") {
      o.addr = value;
    } else if (name == "chunk_rows" || name == "window") {
      uint32_t n;
      if (!absl::SimpleAtoi(value, &n) || n == 0) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " must be a positive number"));
      }
      (name == "window" ? o.window : o.chunk_rows) = n;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown option --", name, " for ingest"));
    }
  }
  if (o.table.empty()) return absl::InvalidArgumentError("ingest needs --table");
  if (o.file.empty()) return absl::InvalidArgumentError("ingest needs a FILE.csv");
  if (o.columns.empty()) o.header = true;
  return o;
}

std::string ChunkKey(const std::string& identity, uint64_t chunk) {
  return absl::StrFormat("csv-%016x-%d", hash::Fnv1a(identity), chunk);
}

int RunIngestCommand(const std::vector<std::string>& args, const ConnectionOptions& connection) {
  IngestOptions defaults;
  if (const char* a = std::getenv("POOLSIDE_INGEST_ADDR"); a != nullptr && *a) defaults.addr = a;
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::fputs(IngestUsageText(), stdout);
      return kExitOk;
    }
  }
  absl::StatusOr<IngestOptions> parsed = ParseIngestArgs(args, defaults);
  if (!parsed.ok()) {
    std::fprintf(stderr, "error: %s\n%s", std::string(parsed.status().message()).c_str(),
                 IngestUsageText());
    return kExitError;
  }
  IngestOptions o = *std::move(parsed);

  std::ifstream file(o.file, std::ios::binary);
  struct stat st;
  if (!file || ::stat(o.file.c_str(), &st) != 0) {
    std::fprintf(stderr, "error: cannot open %s\n", o.file.c_str());
    return kExitError;
  }
  CsvReader reader(&file);
  std::vector<CsvField> record;
  if (o.header) {
    absl::StatusOr<bool> got = reader.Next(&record);
    if (!got.ok() || !*got) {
      std::fprintf(stderr, "error: %s: no header line\n", o.file.c_str());
      return kExitError;
    }
    if (o.columns.empty()) {
      for (const CsvField& f : record) o.columns.push_back(f.value);
    }
  }
  char real[PATH_MAX];
  const std::string path = ::realpath(o.file.c_str(), real) != nullptr ? real : o.file;
  const std::string identity =
      absl::StrCat(path, "\n", st.st_size, "\n", st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec, "\n",
                   o.database, "\n", o.table, "\n", absl::StrJoin(o.columns, ","));

  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = OpenChannel(o.addr, connection);
  if (!channel.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(channel.status().message()).c_str());
    return kExitError;
  }
  auto stub = v1::IngestService::NewStub(*channel);
  grpc::ClientContext ctx;
  auto stream = stub->Channel(&ctx);

  Progress progress(static_cast<uint64_t>(st.st_size));
  absl::Mutex mu;
  std::map<uint64_t, Chunk> in_flight;                         // guarded by mu
  std::deque<uint64_t> resend;                                 // guarded by mu
  std::vector<Rejection> rejected;                             // guarded by mu
  uint64_t rows_written = 0, duplicates = 0, failed_rows = 0;  // guarded by mu
  std::string first_failure;                                   // guarded by mu
  bool stream_broken = false;                                  // guarded by mu
  const absl::Time start = absl::Now();

  std::thread acks([&] {
    v1::ChannelResponse ack;
    while (stream->Read(&ack)) {
      absl::MutexLock lock(&mu);
      auto it = in_flight.find(ack.sequence());
      if (it == in_flight.end()) continue;
      Chunk& c = it->second;
      const int code = ack.code();
      if (code == 0) {
        rows_written += ack.result().rows_written();
        if (ack.result().duplicate()) ++duplicates;
        for (const v1::RowError& e : ack.result().rejected()) {
          const int64_t line = e.row_index() < c.lines.size() ? c.lines[e.row_index()] : 0;
          rejected.push_back({line, absl::StrCat(e.reason(), e.sqlstate().empty() ? "" : " (",
                                                 e.sqlstate(), e.sqlstate().empty() ? "" : ")")});
        }
        progress.Committed(ack.result().rows_written(), c.end_offset);
        in_flight.erase(it);
        continue;
      }
      const bool retryable = code == grpc::StatusCode::UNAVAILABLE ||
                             code == grpc::StatusCode::ABORTED ||
                             code == grpc::StatusCode::RESOURCE_EXHAUSTED;
      if (retryable && c.attempts < kMaxAttempts) {
        ++c.attempts;
        resend.push_back(ack.sequence());
        continue;
      }
      failed_rows += c.request.write().rows_size();
      if (first_failure.empty()) {
        first_failure = absl::StrCat("chunk starting at line ", c.lines.empty() ? 0 : c.lines[0],
                                     ": ", ack.message());
      }
      in_flight.erase(it);
    }
    absl::MutexLock lock(&mu);
    stream_broken = true;
  });

  // Sends chunks (and resends) from this thread: one writer per stream.
  auto send = [&](const v1::ChannelRequest& r) { return stream->Write(r); };
  struct Window {
    std::map<uint64_t, Chunk>* in_flight;
    std::deque<uint64_t>* resend;
    bool* broken;
    size_t limit;
    static bool Ready(void* arg) {
      auto* w = static_cast<Window*>(arg);
      return *w->broken || !w->resend->empty() || w->in_flight->size() < w->limit;
    }
  };
  auto wait_for_window = [&](size_t limit) {
    Window window{&in_flight, &resend, &stream_broken, limit};
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(&Window::Ready, &window));
  };
  // Resends what was refused; false if the stream broke.
  auto flush_resends = [&]() {
    while (true) {
      v1::ChannelRequest r;
      {
        absl::MutexLock lock(&mu);
        if (stream_broken) return false;
        if (resend.empty()) return true;
        auto it = in_flight.find(resend.front());
        resend.pop_front();
        if (it == in_flight.end()) continue;
        r = it->second.request;
      }
      absl::SleepFor(absl::Milliseconds(100));  // a refused chunk: back off briefly
      if (!send(r)) return false;
    }
  };

  int exit_code = kExitOk;
  std::string error;
  uint64_t chunk_index = 0;
  std::vector<Rejection> local_rejected;
  bool ok = true;
  while (ok) {
    Chunk chunk;
    v1::WriteRequest* w = chunk.request.mutable_write();
    w->set_database(o.database);
    w->set_table(o.table);
    for (const std::string& c : o.columns) w->add_columns(c);
    bool eof = false;
    while (w->rows_size() < static_cast<int>(o.chunk_rows)) {
      absl::StatusOr<bool> got = reader.Next(&record);
      if (!got.ok()) {
        error = std::string(got.status().message());
        ok = false;
        break;
      }
      if (!*got) {
        eof = true;
        break;
      }
      if (record.size() != o.columns.size()) {
        local_rejected.push_back(
            {reader.record_line(),
             absl::StrCat("expected ", o.columns.size(), " fields, found ", record.size())});
        continue;
      }
      v1::Row* row = w->add_rows();
      for (CsvField& f : record) {
        v1::Value* v = row->add_values();
        if (!f.quoted && f.value.empty()) {
          v->set_null_value(v1::NULL_VALUE);
        } else if (IsUtf8(f.value)) {
          v->set_text_value(std::move(f.value));
        } else {
          v->set_bytes_value(std::move(f.value));
        }
      }
      chunk.lines.push_back(reader.record_line());
    }
    if (!ok) break;
    if (w->rows_size() > 0) {
      chunk.request.set_sequence(chunk_index);
      w->set_idempotency_key(ChunkKey(identity, chunk_index));
      chunk.end_offset = reader.bytes_read();
      ++chunk_index;
      wait_for_window(o.window);
      if (!flush_resends()) break;
      v1::ChannelRequest copy = chunk.request;
      {
        absl::MutexLock lock(&mu);
        in_flight.emplace(copy.sequence(), std::move(chunk));
      }
      if (!send(copy)) break;
    }
    if (eof) break;
  }
  // Wait for every chunk to be acknowledged (resending refused ones).
  while (true) {
    wait_for_window(1);
    if (!flush_resends()) break;
    absl::MutexLock lock(&mu);
    if (in_flight.empty() || stream_broken) break;
  }
  stream->WritesDone();
  acks.join();
  const grpc::Status status = stream->Finish();
  progress.Done();
  const double secs = absl::ToDoubleSeconds(absl::Now() - start);

  absl::MutexLock lock(&mu);
  for (auto& r : local_rejected) rejected.push_back(std::move(r));
  std::sort(rejected.begin(), rejected.end(),
            [](const Rejection& a, const Rejection& b) { return a.line < b.line; });
  std::printf("%s -> %s: %llu rows written, %zu rejected", o.file.c_str(), o.table.c_str(),
              static_cast<unsigned long long>(rows_written), rejected.size());
  if (duplicates > 0) {
    std::printf(", %llu chunk(s) already written by an earlier run",
                static_cast<unsigned long long>(duplicates));
  }
  std::printf(" in %.1f s (%.0f rows/s)\n", secs, rows_written / std::max(secs, 1e-3));
  for (size_t i = 0; i < rejected.size() && i < kMaxListedRejections; ++i) {
    std::printf("  line %lld: %s\n", static_cast<long long>(rejected[i].line),
                rejected[i].reason.c_str());
  }
  if (rejected.size() > kMaxListedRejections) {
    std::printf("  ... and %zu more\n", rejected.size() - kMaxListedRejections);
  }
  if (!rejected.empty()) exit_code = kExitFailure;
  if (!error.empty()) {
    std::fprintf(stderr, "error: %s: %s\n", o.file.c_str(), error.c_str());
    exit_code = kExitError;
  }
  if (failed_rows > 0) {
    std::fprintf(stderr, "error: %llu rows not written: %s\n",
                 static_cast<unsigned long long>(failed_rows), first_failure.c_str());
    exit_code = kExitError;
  }
  if (!in_flight.empty() || (!status.ok() && error.empty())) {
    std::fprintf(stderr,
                 "error: interrupted (%s); %zu chunk(s) unacknowledged. Run the same command "
                 "again to resume: committed chunks are not written twice.\n",
                 status.ok() ? "stream ended" : status.error_message().c_str(), in_flight.size());
    exit_code = kExitError;
  }
  return exit_code;
}

}  // namespace poolside::cli
