#include "services/query/invalidation_state.h"

#include <algorithm>
#include <utility>

#include "absl/time/clock.h"

namespace poolside::query {

const char* InvalidationModeName(InvalidationMode mode) {
  switch (mode) {
    case InvalidationMode::kWal:
      return "wal";
    case InvalidationMode::kTrigger:
      return "trigger";
    case InvalidationMode::kOff:
      break;
  }
  return "off";
}

bool DatabaseInvalidation::Watches(const std::vector<std::string>& tables) {
  absl::MutexLock lock(&watched_mu);
  for (const std::string& t : tables) {
    if (!watched.contains(t)) return false;
  }
  return true;
}

void DatabaseInvalidation::SetNote(std::string n) {
  absl::MutexLock lock(&note_mu);
  note = std::move(n);
}

std::optional<CacheBypass> DatabaseInvalidation::NotReady(absl::Duration max_lag) const {
  const InvalidationMode m = mode.load();
  if (m == InvalidationMode::kOff) return CacheBypass::kOff;
  if (listens) {
    if (!subscribed.load()) return CacheBypass::kStream;
    if (m == InvalidationMode::kWal) {
      if (stream.load() == 0) return CacheBypass::kStream;
      const int64_t silent = absl::ToUnixMicros(absl::Now()) - last_heard_micros.load();
      if (silent > absl::ToInt64Microseconds(max_lag)) return CacheBypass::kStream;
      if (lagging.load()) return CacheBypass::kLag;
    }
  }
  if (flushed_epoch.load() != suspect_epoch.load()) return CacheBypass::kStream;
  return std::nullopt;
}

uint64_t DatabaseInvalidation::ReplicaFillFence() const {
  if (mode.load() != InvalidationMode::kWal) return UINT64_MAX;
  const uint64_t opened = fence_opened.load();
  if (fence_closed.load() < opened) return UINT64_MAX;
  return fence_lsn.load();
}

void DatabaseInvalidation::Flushed(uint64_t epoch) {
  uint64_t seen = flushed_epoch.load();
  while (seen < epoch && !flushed_epoch.compare_exchange_weak(seen, epoch)) {
  }
}

InvalidationStatus DatabaseInvalidation::Status(absl::string_view name, absl::Duration max_lag) {
  InvalidationStatus s;
  s.database = std::string(name);
  s.mode = InvalidationModeName(mode.load());
  s.ready = !NotReady(max_lag).has_value();
  s.subscribed = subscribed.load();
  s.stream = stream.load();
  s.applied_lsn = applied_lsn.load();
  const int64_t heard = last_heard_micros.load();
  if (heard != 0) s.since_heard = absl::Now() - absl::FromUnixMicros(heard);
  s.lagging = lagging.load();
  s.streams_seen = streams_seen.load();
  s.relay_messages = relay_messages.load();
  s.delay = delay.Take();
  if (relay != nullptr) {
    s.relay = relay->GetStats();
    s.holder = s.relay.holder;
  }
  if (token_fence != nullptr) s.fence = token_fence->GetStats();
  {
    absl::MutexLock lock(&watched_mu);
    s.watched.assign(watched.begin(), watched.end());
  }
  std::sort(s.watched.begin(), s.watched.end());
  {
    absl::MutexLock lock(&note_mu);
    s.note = note;
  }
  return s;
}

}  // namespace poolside::query
