#include "services/ingest/ingest_engine.h"

#include <openssl/evp.h>

#include <algorithm>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/db/catalog.h"
#include "common/db/error.h"
#include "common/telemetry/log.h"
#include "common/telemetry/trace.h"
#include "services/ingest/flusher.h"

namespace poolside::ingest {
namespace {

constexpr absl::string_view kRetryAfterPayload = "poolside.dev/retry-after-ms";
constexpr size_t kMaxKeyBytes = 256;
constexpr absl::Duration kCatalogTimeout = absl::Seconds(10);
// A read reservation held this long without its message, while other
// streams wait, is given back.
constexpr absl::Duration kIdleRead = absl::Seconds(1);
// Bookkeeping of a request beyond its bytes.
constexpr size_t kRequestOverhead = 256;

std::string KeyOf(absl::string_view database, absl::string_view principal, absl::string_view key) {
  return absl::StrCat(database, "\x1f", principal, "\x1f", key);
}
std::string KeyOf(const PendingWrite& w) { return KeyOf(w.database, w.principal, w.key); }

absl::Status ShuttingDown() {
  return absl::UnavailableError("the ingest service is shutting down; nothing was written");
}

// What a request holds against the bound until it is encoded: its serialized
// bytes and about as much again for their encoding.
size_t HoldOf(size_t serialized) { return 2 * serialized + kRequestOverhead; }

// SHA-256 of a request's content as it will be written and answered: table,
// columns, each row's COPY line and each row refused before COPY with its
// reason. Requests that write and reject the same rows the same way have the
// same digest, whatever protobuf encoding carried them.
class Digest {
 public:
  Digest() : ctx_(EVP_MD_CTX_new()) { EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr); }
  ~Digest() { EVP_MD_CTX_free(ctx_); }
  Digest(const Digest&) = delete;
  Digest& operator=(const Digest&) = delete;

  // Each part is length-prefixed, so parts cannot run into each other.
  void Add(absl::string_view part) {
    const uint64_t n = part.size();
    EVP_DigestUpdate(ctx_, &n, sizeof(n));
    EVP_DigestUpdate(ctx_, part.data(), part.size());
  }
  void Reset() { EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr); }
  std::string Finish() {
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_DigestFinal_ex(ctx_, out, &n);
    return std::string(reinterpret_cast<const char*>(out), n);
  }

 private:
  EVP_MD_CTX* ctx_;
};

// How long one check of a member's role may take.
constexpr absl::Duration kRoleCheckTimeout = absl::Seconds(2);
// Attempts of one batch that reached a server: a batch whose every attempt
// breaks its connection must not be retried for ever.
constexpr int kMaxFlushAttempts = 4;

// A request whose COPY rows (and rejected rows' answers) would not fit the
// buffer.
absl::Status TooLargeEncoded(size_t bytes, size_t limit) {
  return absl::InvalidArgumentError(
      absl::StrCat("request is ", FormatBytes(bytes),
                   " as COPY rows and answers to rejected rows; the ingest buffer holds at most ",
                   FormatBytes(limit), "; split it"));
}

// What one row refused before COPY holds until answered: its RowError and
// the strings it owns, beyond the reason's characters.
constexpr size_t kRejectedRowBytes = 160;

}  // namespace

absl::Duration RetryAfterOf(const absl::Status& status) {
  auto p = status.GetPayload(kRetryAfterPayload);
  int64_t ms = 0;
  if (!p.has_value() || !absl::SimpleAtoi(std::string(*p), &ms)) return absl::ZeroDuration();
  return absl::Milliseconds(ms);
}

IngestEngine::IngestEngine(v1::IngestServiceConfig config)
    : config_(std::move(config)),
      linger_(absl::Milliseconds(config_.batch().linger_ms())),
      flush_timeout_(absl::Milliseconds(config_.batch().flush_timeout_ms())),
      key_retention_(absl::Milliseconds(config_.batch().key_retention_ms())),
      retry_after_(absl::Milliseconds(config_.batch().retry_after_ms())),
      buffer_limit_(config_.batch().buffer_bytes()),
      max_request_(config_.batch().max_request_bytes() > 0 ? config_.batch().max_request_bytes()
                                                           : buffer_limit_ / 2),
      database_set_(config_.databases(),
                    db::DatabaseSetOptions{
                        .database = {.application = "poolside-ingest", .writer_only = true},
                        .maintenance_every = absl::Seconds(5)}),
      batcher_(BatcherOptions{config_.batch().max_rows(), config_.batch().max_bytes(), linger_}) {
  for (const auto& [name, managed] : database_set_.databases()) {
    auto db = std::make_unique<Database>();
    db->managed = managed.get();
    // The DSN user's pool exists from the start (for its statistics); the
    // roles' and a topology's members' are made on first use.
    if (managed->topology() == nullptr) managed->Pool("").IgnoreError();
    databases_[name] = std::move(db);
  }
  for (const v1::IngestTables& t : config_.tables()) {
    for (const std::string& name : t.tables()) databases_[t.database()]->writable.insert(name);
  }
}

IngestEngine::~IngestEngine() {
  Stop();
  // Stops the monitors and closes the pools, which ends a warm-up still
  // retrying against a database that is down.
  database_set_.Stop();
}

void IngestEngine::WhenWarm(std::function<void()> ready) {
  database_set_.WhenWarm(std::move(ready));
}

void IngestEngine::Start() {
  absl::MutexLock lock(&mu_);
  if (started_) return;
  started_ = true;
  for (auto& [name, db] : databases_) {
    // Read the catalog (and create the key table) before the first request.
    for (const std::string& table : db->writable) {
      db->tables[table].loading = true;
      Job job;
      job.kind = Job::kLoadTable;
      job.table = table;
      db->jobs.push_back(std::move(job));
    }
    for (uint32_t i = 0; i < config_.batch().copy_connections(); ++i) {
      threads_.emplace_back([this, d = db.get()] { WorkerLoop(d); });
    }
  }
  threads_.emplace_back([this] { ControlLoop(); });
  // Monitors the topologies, warms the pools up in the background and
  // maintains them.
  database_set_.Start();
}

absl::StatusOr<std::shared_ptr<PendingWrite>> IngestEngine::Prepare(
    const SerializedWrite& request, const RequestHeader& header, const std::string& database,
    const std::string& principal, const std::string& role, const db::TableInfo& table,
    Done done) const {
  std::vector<const db::ColumnInfo*> columns;
  if (header.columns.empty()) {
    for (const db::ColumnInfo& c : table.columns) columns.push_back(&c);
  } else {
    for (const std::string& name : header.columns) {
      const db::ColumnInfo* c = table.Find(name);
      if (c == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat("column \"", absl::Utf8SafeCHexEscape(name.substr(0, 128)), "\" of table ",
                         table.name, " does not exist"));
      }
      if (std::find(columns.begin(), columns.end(), c) != columns.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "column \"", absl::Utf8SafeCHexEscape(name.substr(0, 128)), "\" given twice"));
      }
      columns.push_back(c);
    }
  }
  auto w = std::make_shared<PendingWrite>();
  w->database = database;
  w->table = header.table;
  w->key = header.key;
  w->principal = principal;
  w->role = role;
  w->total_rows = header.rows;
  w->copy_target = db::CopyTarget(table, columns);
  w->done = std::move(done);
  w->trace = telemetry::CurrentSpanContext();
  w->line_ends.reserve(header.rows);
  w->row_index.reserve(header.rows);
  const bool keyed = !w->key.empty();
  // Binary COPY where the columns' types allow it (PostgreSQL parses no
  // text); a request with a value only text can carry (text for a timestamp
  // column, ...) is encoded again as text.
  db::CopyFormat format = db::CopyFormatFor(columns);
  Digest digest;
  absl::Status rows;
  for (bool again = true; again;) {
    again = false;
    std::string().swap(w->data);  // its capacity counts against the bound
    w->line_ends.clear();
    w->row_index.clear();
    w->rejected.clear();
    w->rejected_bytes = 0;
    digest.Reset();
    if (keyed) {
      digest.Add(w->table);
      digest.Add(w->copy_target);
    }
    // The digest (what an idempotency key's request is recognised by) is of
    // the rows' text lines whatever the format, so a retry that reaches
    // another version of the service still matches.
    std::string text_line;
    rows = ForEachRow(request.bytes(), [&](const v1::Row& row, uint32_t i) {
      const size_t start = w->data.size();
      bool needs_text = false;
      absl::Status s = db::AppendCopyRow(row, columns, format, &w->data, &needs_text);
      if (needs_text) {
        format = db::CopyFormat::kText;
        again = true;
        return absl::CancelledError("encoded again as text");
      }
      if (i == 0 && header.rows > 1) {
        // Size the buffer from the first row, so it is not regrown (and copied)
        // a dozen times for a large request.
        w->data.reserve(
            std::min<size_t>(buffer_limit_, (w->data.size() + 16) * header.rows * 5 / 4));
      }
      if (s.ok()) {
        w->line_ends.push_back(static_cast<uint32_t>(w->data.size()));
        w->row_index.push_back(i);
        if (keyed && format == db::CopyFormat::kText) {
          digest.Add(absl::string_view(w->data).substr(start));
        } else if (keyed) {
          text_line.clear();
          (void)db::AppendCopyRow(row, columns, &text_line);
          digest.Add(text_line);
        }
      } else {
        v1::RowError e;
        e.set_row_index(i);
        e.set_reason(std::string(s.message()));
        e.set_sqlstate(db::SqlStateOf(s));
        if (keyed) digest.Add(absl::StrCat(i, "\t", e.sqlstate(), "\t", e.reason()));
        w->rejected_bytes += kRejectedRowBytes + e.reason().size();
        w->rejected.push_back(std::move(e));
      }
      if (w->rejected_bytes > buffer_limit_ - std::min(buffer_limit_, w->data.size())) {
        return TooLargeEncoded(w->data.size() + w->rejected_bytes, buffer_limit_);
      }
      if (w->data.size() > buffer_limit_ || w->data.size() > uint32_t{0xffffffff} / 2) {
        if (format == db::CopyFormat::kBinary) {
          // Binary can be the larger (small integers): a request that fits
          // as text is taken as text.
          format = db::CopyFormat::kText;
          again = true;
          return absl::CancelledError("encoded again as text");
        }
        return TooLargeEncoded(w->data.size(), buffer_limit_);
      }
      return absl::OkStatus();
    });
    // The room reserved from the first row can be well past what the rows
    // took (short rows: 16 bytes a row more, and a quarter): given back, so
    // that the binary form is judged, and held, by its size.
    if (!again && rows.ok() && w->data.capacity() > w->data.size() + w->data.size() / 8 + 64) {
      w->data.shrink_to_fit();
    }
    // Nor may binary hold more than the request was admitted for (its hold
    // against the buffer bound was reckoned from the serialized size).
    if (!again && rows.ok() && format == db::CopyFormat::kBinary &&
        w->bytes() - w->rejected_bytes > std::min(buffer_limit_, HoldOf(request.size))) {
      format = db::CopyFormat::kText;
      again = true;
    }
  }
  w->binary = format == db::CopyFormat::kBinary;
  // Requests of one format share batches: a COPY carries one.
  w->group = absl::StrCat(database, "\x1f", w->copy_target,
                          format == db::CopyFormat::kBinary ? "\x1f"
                                                              "binary"
                                                            : "");
  if (!rows.ok()) return rows;
  if (w->bytes() > buffer_limit_) {
    return TooLargeEncoded(w->bytes(), buffer_limit_);
  }
  if (keyed) w->digest = digest.Finish();
  return w;
}

absl::Status IngestEngine::Submit(const v1::WriteRequest& request, const auth::Principal* principal,
                                  uint64_t ticket, Done done) {
  SerializedWrite serialized;
  request.SerializeToString(&serialized.buffer);
  serialized.size = serialized.buffer.size();
  return Submit(std::move(serialized), principal, ticket, std::move(done));
}

absl::Status IngestEngine::Submit(SerializedWrite request, const auth::Principal* caller,
                                  uint64_t ticket, Done done) {
  // Whatever happens, the ticket's reservation ends here.
  Callbacks later;
  size_t reserved = 0;
  auto give_back = [&](absl::Status s) {
    {
      absl::MutexLock lock(&mu_);
      if (reserved > 0) {
        used_ -= reserved;
        GrantReadsLocked(&later);
      }
    }
    for (auto& f : later) f();
    return s;
  };
  {
    absl::MutexLock lock(&mu_);
    reserved = TakeReservationLocked(ticket);
  }
  const size_t size = request.size;
  if (size > max_request_) {
    return give_back(RequestTooLarge(size));
  }
  absl::StatusOr<RequestHeader> header = ReadRequestHeader(request.bytes());
  if (!header.ok()) return give_back(header.status());
  const std::string& name =
      header->database.empty() ? config_.default_database() : header->database;
  if (name.empty()) {
    return give_back(
        absl::InvalidArgumentError("no database named and no default database configured"));
  }
  auto it = databases_.find(name);
  if (it == databases_.end()) {
    return give_back(absl::NotFoundError(absl::StrCat(
        "database \"", absl::Utf8SafeCHexEscape(name.substr(0, 64)), "\" is not configured")));
  }
  Database& db = *it->second;
  const std::string principal = caller != nullptr ? caller->name : "";
  const std::string role = caller != nullptr ? caller->DatabaseRoleFor(name) : "";
  if (!db.managed->HasRole(role)) {
    return give_back(absl::FailedPreconditionError(absl::StrCat(
        "principal ", principal, " runs as database role \"", role, "\", which database ", name,
        " does not configure (databases[].roles) or whose password cannot be read")));
  }
  if (!db.writable.contains(header->table)) {
    return give_back(absl::PermissionDeniedError(absl::StrCat(
        "table \"", absl::Utf8SafeCHexEscape(header->table.substr(0, 128)),
        "\" is not writable through ingest in database ", name, " (not in the configuration)")));
  }
  const std::string& key = header->key;
  if (key.size() > kMaxKeyBytes || key.find('\0') != std::string::npos) {
    return give_back(absl::InvalidArgumentError(
        "idempotency_key must be at most 256 bytes of UTF-8 without NUL"));
  }
  const size_t hold = HoldOf(size);
  bool loaded;
  {
    absl::MutexLock lock(&mu_);
    auto t = db.tables.find(header->table);
    loaded = t != db.tables.end() && t->second.info != nullptr;
  }
  if (!loaded) {
    // Parked until the catalog is read, its rows are parsed only then: check
    // now that they parse, so that a malformed request is refused at once.
    absl::Status parses =
        ForEachRow(request.bytes(), [](const v1::Row&, uint32_t) { return absl::OkStatus(); });
    if (!parses.ok()) return give_back(parses);
  }
  std::shared_ptr<const db::TableInfo> info;
  {
    absl::ReleasableMutexLock lock(&mu_);
    if (draining_ || stopping_) {
      lock.Release();
      return give_back(ShuttingDown());
    }
    if (ticket == 0 && used_ + hold > buffer_limit_ && !KeyKnownLocked(name, principal, key)) {
      refused_full_.fetch_add(1, std::memory_order_relaxed);
      absl::Status s = absl::ResourceExhaustedError(absl::StrCat(
          "ingest buffer full (", used_, " of ", buffer_limit_, " bytes held); retry after ",
          absl::ToInt64Milliseconds(retry_after_), " ms"));
      s.SetPayload(kRetryAfterPayload,
                   absl::Cord(absl::StrCat(absl::ToInt64Milliseconds(retry_after_))));
      lock.Release();
      return give_back(s);
    }
    // The reservation becomes the request's hold.
    used_ -= reserved;
    reserved = 0;
    Hold(static_cast<int64_t>(hold));
    ++unanswered_;
    Table& t = db.tables[header->table];
    if (t.info == nullptr) {
      t.parked.push_back(Parked{std::move(request), *std::move(header), principal, role, hold,
                                std::move(done), telemetry::CurrentSpanContext()});
      if (!t.loading) {
        t.loading = true;
        Job job;
        job.kind = Job::kLoadTable;
        job.table = t.parked.back().header.table;
        db.jobs.push_back(std::move(job));
        jobs_ready_.SignalAll();
      }
      return absl::OkStatus();
    }
    info = t.info;
  }
  absl::StatusOr<std::shared_ptr<PendingWrite>> w =
      Prepare(request, *header, name, principal, role, *info, std::move(done));
  request = SerializedWrite();  // its rows are encoded now
  {
    absl::MutexLock lock(&mu_);
    if (w.ok()) {
      AcceptLocked(*std::move(w), hold, &later);
    } else {
      Hold(-static_cast<int64_t>(hold));
      --unanswered_;
      if (unanswered_ == 0) answered_.SignalAll();
      GrantReadsLocked(&later);
    }
  }
  for (auto& f : later) f();
  return w.ok() ? absl::OkStatus() : w.status();
}

absl::Status IngestEngine::RequestTooLarge(size_t bytes) const {
  return absl::InvalidArgumentError(
      absl::StrCat("request is ", FormatBytes(bytes), "; ingest takes requests of at most ",
                   FormatBytes(max_request_), " (batch.maxRequestBytes) and buffers at most ",
                   FormatBytes(buffer_limit_), "; split it"));
}

void IngestEngine::Hold(int64_t bytes) {
  used_ += bytes;
  held_ += bytes;
  held_max_ = std::max(held_max_, held_);
}

bool IngestEngine::KeyKnownLocked(const std::string& database, const std::string& principal,
                                  const std::string& key) const {
  return !key.empty() && keys_.contains(KeyOf(database, principal, key));
}

uint64_t IngestEngine::ReserveRead(size_t bytes, std::function<void(uint64_t)> granted, bool* now) {
  absl::MutexLock lock(&mu_);
  const uint64_t ticket = ++next_ticket_;
  bytes = std::min(bytes, buffer_limit_);
  *now = true;
  if (draining_ || stopping_) {
    reservations_[ticket] = Reservation{0, absl::Now()};
  } else if (read_queue_.empty() && used_ + bytes <= buffer_limit_) {
    reservations_[ticket] = Reservation{bytes, absl::Now()};
    used_ += bytes;
  } else {
    *now = false;
    stream_waits_.fetch_add(1, std::memory_order_relaxed);
    read_queue_.push_back(QueuedRead{ticket, bytes, std::move(granted)});
    control_wake_.Signal();  // to give idle reservations back
  }
  return ticket;
}

bool IngestEngine::ReleaseRead(uint64_t ticket) {
  Callbacks later;
  bool withdrawn = false;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = reservations_.find(ticket); it != reservations_.end()) {
      used_ -= it->second.bytes;
      reservations_.erase(it);
    } else {
      auto q = std::find_if(read_queue_.begin(), read_queue_.end(),
                            [ticket](const QueuedRead& r) { return r.ticket == ticket; });
      if (q != read_queue_.end()) {
        read_queue_.erase(q);
        withdrawn = true;
      }
    }
    GrantReadsLocked(&later);
  }
  for (auto& f : later) f();
  return withdrawn;
}

size_t IngestEngine::TakeReservationLocked(uint64_t ticket) {
  if (ticket == 0) return 0;
  auto it = reservations_.find(ticket);
  if (it == reservations_.end()) return 0;
  const size_t bytes = it->second.bytes;
  reservations_.erase(it);
  return bytes;
}

void IngestEngine::GrantReadsLocked(Callbacks* later) {
  const absl::Time now = absl::Now();
  while (!read_queue_.empty()) {
    QueuedRead& head = read_queue_.front();
    const bool open = draining_ || stopping_;
    if (!open && used_ + head.bytes > buffer_limit_) return;
    const size_t bytes = open ? 0 : head.bytes;
    reservations_[head.ticket] = Reservation{bytes, now};
    used_ += bytes;
    later->push_back(
        [granted = std::move(head.granted), ticket = head.ticket] { granted(ticket); });
    read_queue_.pop_front();
  }
}

absl::Time IngestEngine::ReleaseIdleReadsLocked(absl::Time now, Callbacks* later) {
  if (read_queue_.empty()) return absl::InfiniteFuture();
  absl::Time next = absl::InfiniteFuture();
  for (auto& [ticket, r] : reservations_) {
    if (r.bytes == 0) continue;
    if (r.granted_at + kIdleRead <= now) {
      used_ -= r.bytes;
      r.bytes = 0;
    } else {
      next = std::min(next, r.granted_at + kIdleRead);
    }
  }
  GrantReadsLocked(later);
  return read_queue_.empty() ? absl::InfiniteFuture() : next;
}

void IngestEngine::AcceptLocked(std::shared_ptr<PendingWrite> write, size_t hold,
                                Callbacks* later) {
  Hold(-static_cast<int64_t>(hold));
  requests_.fetch_add(1, std::memory_order_relaxed);
  auto answer = [&](Done done, absl::StatusOr<v1::WriteResponse> r) {
    later->push_back([this, done = std::move(done), r = std::move(r)] {
      done(r);
      Answered();
    });
  };
  if (!write->key.empty()) {
    auto [it, inserted] = keys_.try_emplace(KeyOf(*write));
    KeyState& k = it->second;
    if (inserted) {
      k.table = write->table;
      k.digest = write->digest;
    } else if (k.digest != write->digest || k.table != write->table) {
      requests_failed_.fetch_add(1, std::memory_order_relaxed);
      answer(std::move(write->done), KeyConflict(*write, k.table));
      GrantReadsLocked(later);
      return;
    } else if (k.committed) {
      v1::WriteResponse r = k.response;
      r.set_duplicate(true);
      duplicates_.fetch_add(1, std::memory_order_relaxed);
      answer(std::move(write->done), std::move(r));
      GrantReadsLocked(later);
      return;
    } else {
      k.waiters.push_back(std::move(write->done));
      GrantReadsLocked(later);
      return;
    }
  }
  Hold(static_cast<int64_t>(write->bytes()));
  const size_t open_before = batcher_.open_batches();
  std::vector<Batch> sealed;
  batcher_.Add(std::move(write), absl::Now(), &sealed);
  if (draining_) batcher_.SealAll(&sealed);
  QueueBatchesLocked(sealed);
  if (batcher_.open_batches() > open_before) control_wake_.Signal();
  GrantReadsLocked(later);
}

void IngestEngine::QueueBatchesLocked(std::vector<Batch>& sealed) {
  for (Batch& b : sealed) {
    ++flushes_[FlushReasonName(b.reason)];
    Job job;
    job.kind = Job::kFlush;
    job.batch = std::move(b);
    databases_[job.batch.database]->jobs.push_back(std::move(job));
    ++queued_batches_;
  }
  if (!sealed.empty()) jobs_ready_.SignalAll();
  sealed.clear();
}

void IngestEngine::AnswerLocked(PendingWrite& write, absl::StatusOr<v1::WriteResponse> result,
                                Callbacks* later) {
  Hold(-static_cast<int64_t>(write.bytes()));
  auto finish = [&](Done done, absl::StatusOr<v1::WriteResponse> r) {
    later->push_back([this, done = std::move(done), r = std::move(r)] {
      done(r);
      Answered();
    });
  };
  if (!write.key.empty()) {
    auto it = keys_.find(KeyOf(write));
    if (it != keys_.end()) {
      std::vector<Done> waiters = std::move(it->second.waiters);
      it->second.waiters.clear();
      if (result.ok()) {
        it->second.committed = true;
        it->second.response = *result;
        it->second.response.set_duplicate(false);
        key_expiry_.emplace_back(absl::Now(), it->first);
        v1::WriteResponse dup = it->second.response;
        dup.set_duplicate(true);
        for (Done& d : waiters) {
          duplicates_.fetch_add(1, std::memory_order_relaxed);
          finish(std::move(d), dup);
        }
      } else {
        keys_.erase(it);
        for (Done& d : waiters) {
          requests_failed_.fetch_add(1, std::memory_order_relaxed);
          finish(std::move(d), result.status());
        }
      }
    }
  }
  if (!result.ok()) {
    requests_failed_.fetch_add(1, std::memory_order_relaxed);
  } else if (result->duplicate()) {
    duplicates_.fetch_add(1, std::memory_order_relaxed);
  } else {
    rows_rejected_.fetch_add(write.rejected.size(), std::memory_order_relaxed);
  }
  finish(std::move(write.done), std::move(result));
}

void IngestEngine::Answered() {
  absl::MutexLock lock(&mu_);
  if (--unanswered_ == 0) answered_.SignalAll();
}

void IngestEngine::ProcessParked(Database& db, std::vector<Parked> parked,
                                 std::shared_ptr<const db::TableInfo> info,
                                 const absl::Status& error) {
  for (Parked& p : parked) {
    absl::StatusOr<std::shared_ptr<PendingWrite>> w = absl::UnknownError("");
    if (error.ok()) {
      telemetry::ScopedSpanContext trace(p.trace);
      w = Prepare(p.request, p.header, db.managed->config().name(), p.principal, p.role, *info,
                  p.done);
    } else {
      w = error;
    }
    p.request = SerializedWrite();
    Callbacks later;
    {
      absl::MutexLock lock(&mu_);
      if (w.ok()) {
        AcceptLocked(*std::move(w), p.hold, &later);
      } else {
        Hold(-static_cast<int64_t>(p.hold));
        requests_failed_.fetch_add(1, std::memory_order_relaxed);
        later.push_back([this, done = std::move(p.done), s = w.status()] {
          done(s);
          Answered();
        });
        GrantReadsLocked(&later);
      }
    }
    for (auto& f : later) f();
  }
}

void IngestEngine::WorkerLoop(Database* db) {
  while (true) {
    Job job;
    bool fail = false;
    {
      absl::MutexLock lock(&mu_);
      while (db->jobs.empty() && !stopping_) jobs_ready_.Wait(&mu_);
      if (db->jobs.empty()) return;
      job = std::move(db->jobs.front());
      db->jobs.pop_front();
      if (job.kind == Job::kFlush) --queued_batches_;
      fail = stopping_;
      if (job.kind == Job::kFlush && !fail) JoinQueuedLocked(*db, job.batch);
    }
    if (fail) {
      FailJob(*db, job, ShuttingDown());
      continue;
    }
    switch (job.kind) {
      case Job::kFlush:
        RunFlush(*db, job);
        break;
      case Job::kLoadTable:
        RunLoadTable(*db, job);
        break;
      case Job::kCleanupKeys:
        RunCleanup(*db);
        break;
    }
  }
}

void IngestEngine::JoinQueuedLocked(Database& db, Batch& batch) {
  // In queue order, up to the first batch of the group that does not fit:
  // a group's batches still start in the order they were sealed.
  for (auto it = db.jobs.begin(); it != db.jobs.end();) {
    if (it->kind != Job::kFlush || it->batch.role != batch.role || it->batch.group != batch.group) {
      ++it;
      continue;
    }
    if (!batcher_.Join(&batch, it->batch)) break;
    it = db.jobs.erase(it);
    --queued_batches_;
    ++batches_joined_;
  }
}

void IngestEngine::FailJob(Database& db, Job& job, const absl::Status& status) {
  if (job.kind == Job::kLoadTable) {
    std::vector<Parked> parked;
    {
      absl::MutexLock lock(&mu_);
      auto it = db.tables.find(job.table);
      if (it != db.tables.end()) {
        parked = std::move(it->second.parked);
        db.tables.erase(it);
      }
    }
    ProcessParked(db, std::move(parked), nullptr, status);
    return;
  }
  if (job.kind != Job::kFlush) return;
  batches_failed_.fetch_add(1, std::memory_order_relaxed);
  Callbacks later;
  {
    absl::MutexLock lock(&mu_);
    for (auto& w : job.batch.writes) AnswerLocked(*w, status, &later);
    GrantReadsLocked(&later);
  }
  for (auto& f : later) f();
}

void IngestEngine::FailFlush(Job& job, const absl::Status& status,
                             const std::vector<absl::Status>& unknown) {
  batches_failed_.fetch_add(1, std::memory_order_relaxed);
  Callbacks later;
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < job.batch.writes.size(); ++i) {
      const bool in_doubt = i < unknown.size() && !unknown[i].ok();
      AnswerLocked(*job.batch.writes[i], in_doubt ? unknown[i] : status, &later);
    }
    GrantReadsLocked(&later);
  }
  for (auto& f : later) f();
}

void IngestEngine::DropWrites(Batch& batch, const std::vector<bool>& drop,
                              const absl::Status& status) {
  std::vector<std::shared_ptr<PendingWrite>> kept;
  Callbacks later;
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < batch.writes.size(); ++i) {
      if (!drop[i]) {
        kept.push_back(std::move(batch.writes[i]));
        continue;
      }
      batch.lines -= batch.writes[i]->lines();
      batch.bytes -= batch.writes[i]->data.size();
      AnswerLocked(*batch.writes[i], status, &later);
    }
    GrantReadsLocked(&later);
  }
  batch.writes = std::move(kept);
  for (auto& f : later) f();
}

void IngestEngine::RunFlush(Database& db, Job& job) {
  // A batch serves many requests, so its span starts a trace of its own and
  // links to each request's span; the pool wait and the COPY are its children.
  telemetry::Span flush = telemetry::StartSpan("ingest.flush", telemetry::SpanKind::kInternal,
                                               telemetry::SpanContext());
  if (flush.recording()) {
    flush.SetAttribute("db.system.name", "postgresql");
    flush.SetAttribute("db.namespace", db.managed->config().name());
    flush.SetAttribute("poolside.ingest.target", job.batch.copy_target);
    flush.SetAttribute("poolside.ingest.reason", FlushReasonName(job.batch.reason));
    flush.SetAttribute("poolside.ingest.rows", job.batch.lines);
    flush.SetAttribute("poolside.ingest.bytes", job.batch.bytes);
    flush.SetAttribute("poolside.ingest.requests", job.batch.writes.size());
    flush.SetAttribute("poolside.ingest.batches_joined", job.batch.joined);
    for (const auto& w : job.batch.writes) flush.AddLink(w->trace);
  }
  telemetry::ScopedSpanContext flush_scope(flush.context());
  FailoverHold hold;
  // Per write: OK, or the outcome of an earlier attempt whose COMMIT may have
  // committed it (the answer should it fail again).
  std::vector<absl::Status> unknown(job.batch.writes.size());
  bool retried_at_once = false;
  for (int attempt = 1;; ++attempt) {
    telemetry::Span acquire =
        telemetry::StartSpan("pool.acquire", telemetry::SpanKind::kInternal, flush.context());
    absl::StatusOr<Writer> writer = LeaseWriter(
        db, job.batch.role, absl::Milliseconds(db.managed->config().pool().acquire_timeout_ms()),
        &hold, "ingest flush");
    acquire.SetAttribute("db.namespace", db.managed->config().name());
    if (!job.batch.role.empty()) acquire.SetAttribute("poolside.db.role", job.batch.role);
    if (writer.ok() && !writer->member.empty()) {
      acquire.SetAttribute("poolside.db.member", writer->member);
    }
    acquire.SetStatus(writer.status());
    acquire.End();
    if (!writer.ok()) {
      flush.SetStatus(writer.status());
      FailFlush(job, writer.status(), unknown);
      return;
    }
    FlushResult r = FlushBatch(*writer->lease, job.batch, absl::Now() + flush_timeout_);
    // A write refused as read-only by a server in recovery met a demoted
    // primary (its transaction rolled back); one not in recovery, a role
    // whose sessions are read-only. A check that cannot be answered leaves
    // the member in doubt: treated as demoted.
    bool demoted = false;
    if (!r.status.ok() && db.managed->topology() != nullptr && !r.broken &&
        db::SqlStateOf(r.status) == "25006") {
      absl::StatusOr<bool> recovering = InRecovery(*writer->lease, absl::Now() + kRoleCheckTimeout);
      demoted = !recovering.ok() || *recovering;
    }
    if (r.broken || demoted) writer->lease.MarkBroken();
    const std::string member = writer->member;
    const uint64_t generation = writer->generation;
    writer = absl::CancelledError("released");  // the lease, then its pool
    copy_statements_.fetch_add(r.copy_statements, std::memory_order_relaxed);
    flush.SetStatus(r.status);
    flush.SetAttribute("poolside.ingest.rows_written", r.rows_written);
    flush.SetAttribute("poolside.ingest.rows_rejected", r.rows_rejected);
    if (!member.empty()) flush.SetAttribute("poolside.db.member", member);
    if (r.status.ok()) {
      if (!member.empty()) {
        absl::MutexLock lock(&db.writing_mu);
        db.writing_member = member;
      }
      for (size_t i = 0; i < job.batch.writes.size(); ++i) {
        // Found stored under its key after an attempt of unknown outcome:
        // most likely that attempt's own commit, not an earlier request.
        if (!unknown[i].ok() && r.responses[i].ok()) r.responses[i]->set_duplicate(false);
      }
      rows_written_.fetch_add(r.rows_written, std::memory_order_relaxed);
      if (job.batch.binary) rows_binary_.fetch_add(r.rows_written, std::memory_order_relaxed);
      bytes_written_.fetch_add(r.bytes_written, std::memory_order_relaxed);
      rows_rejected_.fetch_add(r.rows_rejected, std::memory_order_relaxed);
      batches_written_.fetch_add(1, std::memory_order_relaxed);
      Callbacks later;
      {
        absl::MutexLock lock(&mu_);
        for (size_t i = 0; i < job.batch.writes.size(); ++i) {
          AnswerLocked(*job.batch.writes[i], std::move(r.responses[i]), &later);
        }
        GrantReadsLocked(&later);
      }
      for (auto& f : later) f();
      return;
    }
    telemetry::LogWarning("flush failed", {{"database", db.managed->config().name()},
                                           {"member", member},
                                           {"target", job.batch.copy_target},
                                           {"requests", absl::StrCat(job.batch.writes.size())},
                                           {"error", std::string(r.status.message())}});
    if (db.managed->topology() != nullptr && (r.broken || demoted) && attempt < kMaxFlushAttempts) {
      // The primary went away under the batch, or was demoted: written on
      // the next one. Of a COMMIT whose outcome is unknown, only keyed
      // requests can be retried (their key tells whether it committed).
      if (r.commit_unknown) {
        std::vector<bool> unkeyed(job.batch.writes.size());
        for (size_t i = 0; i < job.batch.writes.size(); ++i) {
          unkeyed[i] = job.batch.writes[i]->key.empty();
          if (!unkeyed[i]) unknown[i] = r.status;
        }
        std::vector<absl::Status> kept;
        for (size_t i = 0; i < unknown.size(); ++i) {
          if (!unkeyed[i]) kept.push_back(unknown[i]);
        }
        DropWrites(job.batch, unkeyed, r.status);
        unknown = std::move(kept);
        if (job.batch.writes.empty()) return;
      }
      if (r.broken && !demoted && !retried_at_once) {
        // One lost connection is not yet a failover: a fresh one, at once.
        retried_at_once = true;
        continue;
      }
      if (r.broken && !demoted && !member.empty()) {
        // Lost twice in a row: the primary's probe decides at once whether it
        // is still there, instead of at its next interval.
        db.managed->MarkSuspect(member, r.status);
      }
      if (db.managed->WaitForPrimary(generation, &hold)) continue;
      FailFlush(job, db.managed->holds_ended() ? ShuttingDown() : NoPrimary(db, r.status), unknown);
      return;
    }
    const std::string state = db::SqlStateOf(r.status);
    if (state == "42501" || state == "25006") {
      // A missing privilege, or a role whose sessions are read-only
      // (default_transaction_read_only). This role's batch only: other
      // roles' rows are in other batches.
      FailFlush(job, PermissionDenied(db, job.batch, r.status), unknown);
      return;
    }
    if (state == "42P01" || state == "42703" || state == "42804") {
      // The table changed under us: read the catalog again next time.
      {
        absl::MutexLock lock(&mu_);
        for (auto& w : job.batch.writes) {
          auto it = db.tables.find(w->table);
          if (it != db.tables.end() && !it->second.loading) db.tables.erase(it);
        }
      }
      // A retry reads the catalog again and may well succeed.
      FailFlush(job,
                absl::AbortedError(absl::StrCat(
                    "the table changed while its rows were buffered; retry: ", r.status.message())),
                unknown);
      return;
    }
    FailFlush(job, r.status, unknown);
    return;
  }
}

absl::StatusOr<IngestEngine::Writer> IngestEngine::LeaseWriter(Database& db,
                                                               const std::string& role,
                                                               absl::Duration acquire,
                                                               FailoverHold* hold,
                                                               const char* holder) {
  db::ManagedDatabase& managed = *db.managed;
  // A pool replaced (closed) between picking it and leasing from it is picked
  // again; bounded, as a flapping primary could do that for ever.
  for (int replaced = 0;;) {
    uint64_t generation = managed.primary_generation();
    absl::Status failed;
    absl::StatusOr<db::ManagedDatabase::PoolRef> target = managed.PrimaryPool(role);
    if (target.ok()) {
      generation = target->generation;
      const absl::Time deadline = absl::Now() + acquire;
      absl::StatusOr<db::ConnectionPool::Lease> lease = absl::UnavailableError("no connection");
      for (int attempt = 0; attempt < 3; ++attempt) {
        lease = target->pool->Acquire(deadline, holder);
        if (!lease.ok() || (*lease)->LooksAlive()) break;
        lease->MarkBroken();  // closed by the server while idle: take another
      }
      if (lease.ok()) {
        Writer w;
        w.pool = std::move(target->pool);
        w.lease = *std::move(lease);
        w.member = std::move(target->member);
        w.generation = generation;
        return w;
      }
      failed = lease.status();
      if (managed.topology() != nullptr && !target->member.empty() &&
          db::IsConnectionFailure(failed)) {
        // No connection to the primary could be made: its probe decides at
        // once (and names it again if it is fine) instead of at its next
        // interval, as for query's calls.
        managed.MarkSuspect(target->member, failed);
      }
      if (failed.code() == absl::StatusCode::kCancelled && managed.topology() != nullptr &&
          !managed.holds_ended() && ++replaced < 3) {
        continue;
      }
    } else {
      failed = target.status();
    }
    // Only a primary that is missing or unreachable is waited for; other
    // failures (a role that cannot be configured, shutdown) are final.
    if (managed.topology() == nullptr || hold == nullptr ||
        failed.code() != absl::StatusCode::kUnavailable) {
      return absl::UnavailableError(
          absl::StrCat("no connection to database ", managed.name(), ": ", failed.message()));
    }
    if (!managed.WaitForPrimary(generation, hold)) {
      return managed.holds_ended() ? ShuttingDown() : NoPrimary(db, failed);
    }
  }
}

absl::Status IngestEngine::NoPrimary(const Database& db, const absl::Status& last) const {
  // Why there is no primary now, if there is none: `last` may predate the
  // probes' verdict.
  absl::Status why = last;
  const db::ManagedDatabase& managed = *db.managed;
  if (managed.topology() != nullptr) {
    if (absl::StatusOr<db::Topology::Route> route = managed.topology()->Pick(/*read=*/false);
        !route.ok()) {
      why = route.status();
    }
  }
  return absl::UnavailableError(absl::StrCat(
      "database ", managed.name(), ": no primary could be written to within failoverBufferMs (",
      managed.config().topology().failover_buffer_ms(), " ms); last: ", why.message(),
      ". Nothing of this request was written; retry it. If this lasts, check that one member of "
      "the topology accepts writes (pg_is_in_recovery() is false on exactly one) and that "
      "ingest can reach it (docs/ingest.md, Replicas and failover)"));
}

absl::Status IngestEngine::EnsureKeysTableOnce(Database& db, db::Connection& conn) {
  absl::MutexLock lock(&db.keys_table_mu);
  if (!db.keys_table_ready) {
    absl::Status s = EnsureKeysTable(conn, absl::Now() + kCatalogTimeout);
    if (!s.ok()) return s;
    db.keys_table_ready = true;
  }
  if (!db.keys_table_granted) {
    // Each role's keyed writes look up and store their keys in the
    // transaction of their rows, as that role. Not fatal: until it works
    // (retried at each key cleanup) such writes fail PERMISSION_DENIED
    // naming the key table and the role.
    absl::Status s =
        GrantKeysTable(conn, db.managed->RoleLoginUsers(), absl::Now() + kCatalogTimeout);
    if (s.ok()) {
      db.keys_table_granted = true;
    } else if (!db.keys_table_grant_warned) {
      db.keys_table_grant_warned = true;
      telemetry::LogWarning(
          "database roles cannot use the idempotency key table yet",
          {{"database", db.managed->config().name()}, {"error", std::string(s.message())}});
    }
  }
  return absl::OkStatus();
}

void IngestEngine::RunLoadTable(Database& db, Job& job) {
  absl::StatusOr<std::shared_ptr<const db::TableInfo>> info;
  {
    // On the primary, as the key table is made there: requests wait for it.
    FailoverHold hold;
    absl::StatusOr<Writer> writer = LeaseWriter(db, "", kCatalogTimeout, &hold, "ingest catalog");
    if (!writer.ok()) {
      info = writer.status();
    } else {
      absl::Status keys = EnsureKeysTableOnce(db, *writer->lease);
      if (!keys.ok()) {
        info = keys;
      } else {
        auto t = db::DescribeTable(*writer->lease, job.table, absl::Now() + kCatalogTimeout);
        if (t.ok()) {
          info = std::make_shared<const db::TableInfo>(*std::move(t));
        } else {
          info = t.status();
        }
      }
      if (!info.ok() && !writer->lease->LooksAlive()) writer->lease.MarkBroken();
    }
  }
  if (!info.ok()) {
    telemetry::LogWarning("cannot read table from the catalog",
                          {{"database", db.managed->config().name()},
                           {"table", job.table},
                           {"error", std::string(info.status().message())}});
  }
  std::vector<Parked> parked;
  {
    absl::MutexLock lock(&mu_);
    auto it = db.tables.find(job.table);
    if (it != db.tables.end()) {
      parked = std::move(it->second.parked);
      it->second.parked.clear();
      it->second.loading = false;
      if (info.ok()) {
        it->second.info = *info;
      } else {
        db.tables.erase(it);
      }
    }
  }
  ProcessParked(db, std::move(parked), info.ok() ? *info : nullptr,
                info.ok() ? absl::OkStatus() : info.status());
}

void IngestEngine::RunCleanup(Database& db) {
  // Not held for a primary: the next cleanup comes soon enough.
  absl::StatusOr<Writer> writer =
      LeaseWriter(db, "", kCatalogTimeout, /*hold=*/nullptr, "ingest key cleanup");
  if (!writer.ok()) return;
  if (absl::Status s = EnsureKeysTableOnce(db, *writer->lease); !s.ok()) return;
  auto n = DeleteExpiredKeys(*writer->lease, key_retention_, absl::Now() + flush_timeout_);
  if (!n.ok()) {
    if (!writer->lease->LooksAlive()) writer->lease.MarkBroken();
    telemetry::LogWarning(
        "idempotency key cleanup failed",
        {{"database", db.managed->config().name()}, {"error", std::string(n.status().message())}});
  } else if (*n > 0) {
    telemetry::LogInfo("idempotency keys expired",
                       {{"database", db.managed->config().name()}, {"deleted", absl::StrCat(*n)}});
  }
}

void IngestEngine::ControlLoop() {
  const absl::Duration cleanup_every =
      std::clamp(key_retention_ / 10, absl::Seconds(1), absl::Minutes(1));
  absl::Time next_cleanup = absl::Now() + cleanup_every;
  mu_.Lock();
  while (!stopping_) {
    const absl::Time now = absl::Now();
    std::vector<Batch> sealed;
    const absl::Time next_linger = batcher_.SealExpired(now, &sealed);
    QueueBatchesLocked(sealed);
    Callbacks later;
    const absl::Time next_idle = ReleaseIdleReadsLocked(now, &later);
    if (!later.empty()) {
      mu_.Unlock();
      for (auto& f : later) f();
      mu_.Lock();
      continue;
    }
    while (!key_expiry_.empty() && key_expiry_.front().first + key_retention_ <= now) {
      auto it = keys_.find(key_expiry_.front().second);
      if (it != keys_.end() && it->second.committed && it->second.waiters.empty()) {
        keys_.erase(it);
      }
      key_expiry_.pop_front();
    }
    if (now >= next_cleanup) {
      next_cleanup = now + cleanup_every;
      for (auto& [name, db] : databases_) {
        Job job;
        job.kind = Job::kCleanupKeys;
        db->jobs.push_back(std::move(job));
      }
      jobs_ready_.SignalAll();
    }
    control_wake_.WaitWithDeadline(&mu_, std::min({next_linger, next_cleanup, next_idle}));
  }
  mu_.Unlock();
}

bool IngestEngine::Drain(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  Callbacks later;
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    // Streams waiting to read may read now: their requests are refused.
    GrantReadsLocked(&later);
  }
  for (auto& f : later) f();
  absl::MutexLock lock(&mu_);
  std::vector<Batch> sealed;
  batcher_.SealAll(&sealed);
  QueueBatchesLocked(sealed);
  while (unanswered_ > 0) {
    if (answered_.WaitWithDeadline(&mu_, deadline)) break;
  }
  return unanswered_ == 0;
}

void IngestEngine::Stop() {
  std::vector<std::thread> threads;
  Callbacks later;
  std::vector<std::pair<Database*, std::vector<Parked>>> parked;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    draining_ = true;
    stopping_ = true;
    std::vector<Batch> sealed;
    batcher_.SealAll(&sealed);
    QueueBatchesLocked(sealed);  // the workers answer them UNAVAILABLE
    GrantReadsLocked(&later);    // streams waiting to read: their requests are refused now
    for (auto& [name, db] : databases_) {
      for (auto& [table, t] : db->tables) {
        if (!t.parked.empty()) parked.emplace_back(db.get(), std::move(t.parked));
        t.parked.clear();
      }
    }
    threads.swap(threads_);
    jobs_ready_.SignalAll();
    control_wake_.SignalAll();
  }
  for (auto& f : later) f();
  // Batches held for a primary fail now.
  database_set_.EndHolds();
  for (auto& [db, p] : parked) ProcessParked(*db, std::move(p), nullptr, ShuttingDown());
  for (auto& t : threads) t.join();
  // Workers that never started (Start() not called) leave jobs behind.
  for (auto& [name, db] : databases_) {
    while (true) {
      Job job;
      {
        absl::MutexLock lock(&mu_);
        if (db->jobs.empty()) break;
        job = std::move(db->jobs.front());
        db->jobs.pop_front();
      }
      FailJob(*db, job, ShuttingDown());
    }
  }
}

std::vector<std::pair<std::string, pool::PoolStats>> IngestEngine::GetPoolStats() const {
  std::vector<std::pair<std::string, pool::PoolStats>> out;
  for (const auto& [name, db] : databases_) {
    // By name: the DSN user's, then the roles'.
    for (const db::ManagedDatabase::NamedPool& p : db->managed->Pools()) {
      out.emplace_back(p.name, p.pool->Stats());
    }
  }
  return out;
}

std::vector<IngestEngine::TopologyStats> IngestEngine::GetTopologyStats() const {
  std::vector<TopologyStats> out;
  for (const auto& [name, db] : databases_) {
    if (db->managed->topology() == nullptr) continue;
    TopologyStats s;
    s.database = name;
    s.members = db->managed->topology()->Snapshot();
    s.held = db->managed->hold_stats();
    {
      absl::MutexLock lock(&db->writing_mu);
      s.writing_member = db->writing_member;
    }
    out.push_back(std::move(s));
  }
  return out;
}

absl::Status IngestEngine::PermissionDenied(const Database& db, const Batch& batch,
                                            const absl::Status& error) const {
  std::string who;
  if (batch.role.empty()) {
    const std::string user = db.managed->LoginUser("");
    who = user.empty() ? std::string("the database's own role (its DSN user)")
                       : absl::StrCat("the database's own role \"", user, "\" (its DSN user)");
  } else {
    who = absl::StrCat("database role \"", batch.role, "\"");
    const std::string user = db.managed->LoginUser(batch.role);
    if (!user.empty() && user != batch.role) absl::StrAppend(&who, " (login \"", user, "\")");
  }
  const std::string table = batch.writes.empty() ? batch.copy_target : batch.writes[0]->table;
  // The idempotency key table's grant and policy are ingest's own to make.
  const bool keys = absl::StrContains(error.message(), kKeysTable);
  return absl::PermissionDeniedError(absl::StrCat(
      "table ", absl::Utf8SafeCHexEscape(table), " of database ", db.managed->config().name(),
      ": PostgreSQL refused ", who, " a privilege this write needs: ", error.message(),
      "; nothing of this request was written (",
      keys ? absl::StrCat("ingest grants each role SELECT, INSERT on ", kKeysTable,
                          " and a policy admitting its own keys at start; restart it or "
                          "restore them, docs/security.md)")
           : "GRANT INSERT on the table to the role, docs/security.md)"));
}

void IngestEngine::GetStats(v1::GetIngestStatsResponse* out) const {
  out->set_rows_written(rows_written_.load());
  out->set_rows_written_binary(rows_binary_.load());
  out->set_bytes_written(bytes_written_.load());
  out->set_batches_written(batches_written_.load());
  out->set_rows_rejected(rows_rejected_.load());
  out->set_requests(requests_.load());
  out->set_requests_failed(requests_failed_.load());
  out->set_duplicates(duplicates_.load());
  out->set_batches_failed(batches_failed_.load());
  out->set_copy_statements(copy_statements_.load());
  out->set_refused_full(refused_full_.load());
  out->set_stream_waits(stream_waits_.load());
  const uint64_t rows = rows_written_.load(), batches = batches_written_.load();
  out->set_operations_saved(rows > batches ? rows - batches : 0);
  absl::MutexLock lock(&mu_);
  for (const auto& [reason, n] : flushes_) (*out->mutable_flushes_by_reason())[reason] = n;
  out->set_batches_joined(batches_joined_);
  out->set_queue_requests(unanswered_);
  out->set_queue_batches(queued_batches_);
  out->set_buffered_bytes(held_);
  out->set_buffered_bytes_max(held_max_);
  out->set_buffer_bytes_limit(buffer_limit_);
}

}  // namespace poolside::ingest
