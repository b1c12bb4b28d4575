#include "services/query/token_fence.h"

#include <pthread.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/db/pgoutput_decoder.h"
#include "common/telemetry/log.h"
#include "services/query/result_sinks.h"

namespace poolside::query {
namespace {

constexpr absl::Duration kFirstBackoff = absl::Milliseconds(100);
constexpr absl::Duration kMaxBackoff = absl::Seconds(5);

// The setting is the transaction's own (is_local), so it applies to the
// commit that ends this statement's implicit transaction.
constexpr char kFenceSql[] =
    "SELECT pg_catalog.set_config('synchronous_commit', 'local', true), "
    "pg_catalog.pg_logical_emit_message(true, $1::text, ''::text)::text";

}  // namespace

TokenFence::TokenFence(Options options) : options_(std::move(options)) {}

TokenFence::~TokenFence() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void TokenFence::Start() {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "cache:fence");
    Run();
  });
}

void TokenFence::Request(uint64_t lsn) {
  absl::MutexLock lock(&mu_);
  if (lsn <= stats_.fenced_lsn) return;  // a committed fence lies past it
  wanted_ = std::max(wanted_, lsn);
}

TokenFence::Stats TokenFence::GetStats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

absl::Status TokenFence::Connect() {
  std::string dsn = options_.dsn;
  if (options_.current_dsn) {
    absl::StatusOr<std::string> current = options_.current_dsn();
    if (!current.ok()) {
      conn_.reset();  // its server is not known to be the primary
      return current.status();
    }
    dsn = *std::move(current);
  }
  if (conn_ != nullptr && !conn_->broken() && dsn == conn_dsn_) return absl::OkStatus();
  conn_.reset();
  db::ConnectionOptions o;
  o.dsn = dsn;
  o.application_name = absl::StrCat("poolside-token-fence/", options_.database);
  o.connect_timeout = options_.connect_timeout;
  absl::StatusOr<std::unique_ptr<db::Connection>> conn = db::Connection::Open(o);
  if (!conn.ok()) return conn.status();
  conn_ = *std::move(conn);
  conn_dsn_ = std::move(dsn);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> TokenFence::Emit() {
  if (absl::Status connected = Connect(); !connected.ok()) return connected;
  google::protobuf::RepeatedPtrField<v1::Value> params;
  params.Add()->set_text_value(options_.prefix);
  v1::ResultSet rs;
  ResultBudget budget{1, 4096};
  ResultSetSink sink(&rs, &budget);
  db::Statement st;
  st.sql = kFenceSql;
  st.params = &params;
  st.sink = &sink;
  st.deadline = absl::Now() + options_.timeout;
  db::Statement* ptr = &st;
  if (absl::Status link = conn_->RunIndependent({&ptr, 1}); !link.ok()) {
    conn_.reset();
    return link;
  }
  if (!st.status.ok()) return st.status;
  if (rs.rows_size() != 1 || rs.rows(0).values_size() != 2) {
    return absl::InternalError("pg_logical_emit_message returned no position");
  }
  absl::StatusOr<db::Lsn> at = db::ParseLsn(rs.rows(0).values(1).text_value());
  if (!at.ok()) return at.status();
  return *at;
}

void TokenFence::Run() {
  // Connected before the first request, so that a read's first fence does not
  // wait for a connection too (a failure here is retried by that fence).
  Connect().IgnoreError();
  absl::Duration backoff = kFirstBackoff;
  absl::Time retry_at = absl::InfinitePast();
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      // After a failure, requests gather until the backoff ends: one fence
      // judges them all.
      mu_.AwaitWithDeadline(absl::Condition(&stopping_), retry_at);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || wanted_ > stats_.fenced_lsn;
      };
      mu_.Await(absl::Condition(&ready));
      if (stopping_) return;
      wanted_ = 0;
    }
    absl::StatusOr<uint64_t> at = Emit();
    absl::MutexLock lock(&mu_);
    if (at.ok()) {
      ++stats_.fences;
      // Requests up to here are covered; a request this fence was for that
      // lies beyond it was past the server's WAL: it is not asked again.
      stats_.fenced_lsn = std::max(stats_.fenced_lsn, *at);
      if (backoff != kFirstBackoff) {
        telemetry::LogInfo("token fences work again", {{"database", options_.database}});
      }
      backoff = kFirstBackoff;
      retry_at = absl::InfinitePast();
      continue;
    }
    ++stats_.failures;
    stats_.last_error = std::string(at.status().message().substr(0, 300));
    if (backoff == kFirstBackoff) {
      telemetry::LogWarning(
          "cannot fence consistency tokens; reads with a min_lsn wait for the WAL relay's "
          "heartbeat (or bypass the cache)",
          {{"database", options_.database}, {"error", stats_.last_error}});
    }
    retry_at = absl::Now() + backoff;
    backoff = std::min(backoff * 2, kMaxBackoff);
  }
}

}  // namespace poolside::query
