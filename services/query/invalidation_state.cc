#include "services/query/invalidation_state.h"

#include <algorithm>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
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

absl::StatusOr<XidSnapshot> XidSnapshot::Parse(absl::string_view text) {
  auto bad = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("not a snapshot (xmin:xmax:xip,...): \"", text.substr(0, 64), "\""));
  };
  // Digits only: SimpleAtoi would take signs and spaces too.
  auto number = [](absl::string_view s, uint64_t* out) {
    return !s.empty() && s.size() <= 20 &&
           s.find_first_not_of("0123456789") == absl::string_view::npos && absl::SimpleAtoi(s, out);
  };
  std::vector<absl::string_view> parts = absl::StrSplit(text, ':');
  if (parts.size() != 3) return bad();
  XidSnapshot s;
  if (!number(parts[0], &s.xmin) || !number(parts[1], &s.xmax) || s.xmin > s.xmax) return bad();
  if (!parts[2].empty()) {
    size_t running = 0;
    for (absl::string_view x : absl::StrSplit(parts[2], ',')) {
      uint64_t xid = 0;
      if (!number(x, &xid) || xid < s.xmin || xid >= s.xmax) return bad();
      if (++running <= kMaxRunning) s.xip.push_back(xid);
    }
    if (running > kMaxRunning) {
      s.xmax = s.xmin;
      s.xip.clear();
    }
  }
  std::sort(s.xip.begin(), s.xip.end());
  return s;
}

bool XidSnapshot::Finished(uint32_t xid) const {
  // The full transaction id nearest xmax with these low 32 bits.
  const int32_t from_xmax = static_cast<int32_t>(xid - static_cast<uint32_t>(xmax));
  if (from_xmax >= 0) return false;  // at or after xmax: running or not begun
  if (static_cast<uint64_t>(-static_cast<int64_t>(from_xmax)) > xmax) return false;
  const uint64_t full = xmax - static_cast<uint64_t>(-static_cast<int64_t>(from_xmax));
  if (full < xmin) return true;
  return !std::binary_search(xip.begin(), xip.end(), full);
}

void OwnWriteCover::Record(const std::vector<std::string>& tables, const XidSnapshot& snapshot,
                           uint64_t stream, absl::Time now) {
  if (stream == 0) return;
  auto shared = std::make_shared<const XidSnapshot>(snapshot);
  absl::MutexLock lock(&mu_);
  for (const std::string& table : tables) {
    auto it = tables_.find(table);
    if (it != tables_.end()) {
      Recorded& r = it->second;
      if (now - r.at > options_.max_age || r.stream != stream ||
          r.snapshot->xmax <= snapshot.xmax) {
        r = Recorded{shared, stream, now};
      }
      continue;
    }
    if (tables_.size() >= options_.max_tables) {
      // Expired records first, then the least recently recorded.
      for (auto e = tables_.begin(); e != tables_.end();) {
        if (now - e->second.at > options_.max_age) {
          tables_.erase(e++);
        } else {
          ++e;
        }
      }
      while (!tables_.empty() && tables_.size() >= options_.max_tables) {
        auto oldest = tables_.begin();
        for (auto e = tables_.begin(); e != tables_.end(); ++e) {
          if (e->second.at < oldest->second.at) oldest = e;
        }
        tables_.erase(oldest);
      }
      if (options_.max_tables == 0) return;
    }
    tables_.emplace(table, Recorded{shared, stream, now});
  }
}

bool OwnWriteCover::CoveredBy(absl::string_view key, const std::vector<uint32_t>& xids,
                              uint64_t stream, absl::Time now) const {
  auto it = tables_.find(key);
  if (it == tables_.end()) return false;
  const Recorded& r = it->second;
  if (r.stream != stream || now - r.at > options_.max_age) return false;
  for (uint32_t xid : xids) {
    if (!r.snapshot->Finished(xid)) return false;
  }
  return true;
}

bool OwnWriteCover::Covers(absl::string_view table, const std::vector<uint32_t>& xids,
                           uint64_t stream, absl::Time now) const {
  if (xids.empty() || stream == 0) return false;
  absl::ReaderMutexLock lock(&mu_);
  return CoveredBy(table, xids, stream, now) || CoveredBy(kEveryTable, xids, stream, now);
}

size_t OwnWriteCover::size() const {
  absl::ReaderMutexLock lock(&mu_);
  return tables_.size();
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
  s.own_write_skips = own_write_skips.load();
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
