#include "services/query/single_flight.h"

#include <utility>

namespace poolside::query {

SingleFlight::Entry SingleFlight::Enter(const std::string& key, uint64_t own_writes,
                                        std::shared_ptr<CachedRead>* read,
                                        absl::FunctionRef<std::shared_ptr<Flight>()> start,
                                        std::shared_ptr<Flight>* started) {
  absl::MutexLock lock(&mu_);
  auto it = flights_.find(key);
  if (it != flights_.end()) {
    if (*read == nullptr) return Entry::kRunning;
    Flight& running = *it->second;
    // A flight that began before this replica's last own write, or before
    // the position the read must see, may have read too early.
    if (running.own_writes != own_writes || running.lsn < (*read)->min_lsn()) return Entry::kAlone;
    // Ends when the shared result is delivered (the read is gone).
    (*read)->StartWaiting();
    running.readers.push_back(std::move(*read));
    return Entry::kJoined;
  }
  std::shared_ptr<Flight> flight = start();
  if (*read != nullptr) flight->readers.push_back(std::move(*read));
  flights_[key] = flight;
  *started = std::move(flight);
  return Entry::kStarted;
}

std::vector<std::shared_ptr<CachedRead>> SingleFlight::Land(Flight& flight) {
  std::vector<std::shared_ptr<CachedRead>> readers;
  absl::MutexLock lock(&mu_);
  auto it = flights_.find(flight.key);
  if (it != flights_.end() && it->second.get() == &flight) flights_.erase(it);
  readers.swap(flight.readers);
  return readers;
}

size_t SingleFlight::size() const {
  absl::MutexLock lock(&mu_);
  return flights_.size();
}

}  // namespace poolside::query
