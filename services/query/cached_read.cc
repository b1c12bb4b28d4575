#include "services/query/cached_read.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace poolside::query {

CachedRead::CachedRead(Database* db, const v1::ExecuteRequest& request, std::shared_ptr<Work> work,
                       v1::ExecuteResponse* response, uint64_t max_rows, uint64_t max_bytes,
                       std::function<void()> run_plain)
    : db_(db),
      borrowed_(&request),
      work_(std::move(work)),
      response_(response),
      max_rows_(max_rows),
      max_bytes_(max_bytes),
      run_plain_(std::move(run_plain)) {}

std::shared_ptr<CachedRead> CachedRead::Detach(CachedRead&& read, InFlight& in_flight) {
  auto detached = std::make_shared<CachedRead>(std::move(read));
  if (!detached->owned_) {
    detached->owned_.emplace(*detached->borrowed_);
    detached->borrowed_ = nullptr;
  }
  if (!detached->in_flight_) detached->in_flight_ = in_flight.Begin();
  return detached;
}

bool CachedRead::Answer(const absl::Status& status, const v1::ResultSet& result,
                        v1::CacheOutcome outcome, v1::ResultSource source, uint64_t lsn,
                        const std::string& member) {
  if (!work_->Claim()) return false;  // the caller went away
  absl::Status s = status;
  if (s.ok()) {
    const uint64_t rows = static_cast<uint64_t>(result.rows_size());
    const uint64_t bytes = result.ByteSizeLong();
    if (rows > max_rows_) {
      s = absl::ResourceExhaustedError(
          absl::StrCat("the result has ", rows, " rows; this call's row limit is ", max_rows_));
    } else if (bytes > max_bytes_) {
      s = absl::ResourceExhaustedError(
          absl::StrCat("the result has ", bytes, " bytes; this call's byte limit is ", max_bytes_));
    } else {
      *response_->mutable_result() = result;
    }
  }
  response_->set_cache(outcome);
  response_->set_source(source);
  response_->set_lsn(lsn);
  response_->set_member(member);
  work_->done(std::move(s));
  return true;
}

void CachedRead::StartWaiting() {
  wait_ =
      telemetry::StartSpan("cache.singleflight.wait", telemetry::SpanKind::kInternal, work_->trace);
  wait_.SetAttribute("db.namespace", db_->name());
}

}  // namespace poolside::query
