#include "services/ingest/batcher.h"

#include <iterator>
#include <utility>

namespace poolside::ingest {

const char* FlushReasonName(FlushReason reason) {
  switch (reason) {
    case FlushReason::kRows:
      return "rows";
    case FlushReason::kBytes:
      return "bytes";
    case FlushReason::kLinger:
      return "linger";
    case FlushReason::kDrain:
      return "drain";
  }
  return "unknown";
}

void Batcher::Add(std::shared_ptr<PendingWrite> write, absl::Time now, std::vector<Batch>* sealed) {
  auto [it, inserted] = open_.try_emplace(std::make_pair(write->role, write->group));
  Open& open = it->second;
  if (inserted) {
    open.opened = now;
    open.batch.database = write->database;
    open.batch.role = write->role;
    open.batch.group = write->group;
    open.batch.copy_target = write->copy_target;
    open.batch.binary = write->binary;
  }
  open.batch.lines += write->lines();
  open.batch.bytes += write->data.size();
  open.batch.writes.push_back(std::move(write));
  FlushReason reason;
  if (open.batch.lines >= options_.max_rows) {
    reason = FlushReason::kRows;
  } else if (open.batch.bytes >= options_.max_bytes) {
    reason = FlushReason::kBytes;
  } else {
    return;
  }
  open.batch.reason = reason;
  sealed->push_back(std::move(open.batch));
  open_.erase(it);
}

absl::Time Batcher::SealExpired(absl::Time now, std::vector<Batch>* sealed) {
  absl::Time next = absl::InfiniteFuture();
  for (auto it = open_.begin(); it != open_.end();) {
    const absl::Time due = it->second.opened + options_.linger;
    if (due <= now) {
      it->second.batch.reason = FlushReason::kLinger;
      sealed->push_back(std::move(it->second.batch));
      open_.erase(it++);
    } else {
      next = std::min(next, due);
      ++it;
    }
  }
  return next;
}

void Batcher::SealAll(std::vector<Batch>* sealed) {
  for (auto& [key, open] : open_) {
    open.batch.reason = FlushReason::kDrain;
    sealed->push_back(std::move(open.batch));
  }
  open_.clear();
}

bool Batcher::Join(Batch* into, Batch& from) const {
  if (into->role != from.role || into->group != from.group ||
      into->lines + from.lines > options_.max_rows ||
      into->bytes + from.bytes > options_.max_bytes) {
    return false;
  }
  into->writes.insert(into->writes.end(), std::make_move_iterator(from.writes.begin()),
                      std::make_move_iterator(from.writes.end()));
  into->lines += from.lines;
  into->bytes += from.bytes;
  into->joined += 1 + from.joined;
  from = Batch();
  return true;
}

}  // namespace poolside::ingest
