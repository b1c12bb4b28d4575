#ifndef POOLSIDE_SERVICES_QUERY_SINGLE_FLIGHT_H_
#define POOLSIDE_SERVICES_QUERY_SINGLE_FLIGHT_H_

// Identical concurrent cache misses share one database read ("single
// flight"): the first read of a key starts a flight, reads of the same key
// join it while it runs, and whoever lands it gets every read that joined,
// to answer with the flight's result.
//
// A read joins only a flight that began after this replica's last own write
// to the database and at or past the read's min_lsn: one that began earlier
// may have read an older row than the read must see, so the read goes alone.
//
//   std::shared_ptr<SingleFlight::Flight> started;
//   switch (flights.Enter(key, own_writes, &read, [&] { return MakeFill(); }, &started)) {
//     case SingleFlight::Entry::kStarted: run the read, then Land(*started) and answer them all
//     case SingleFlight::Entry::kJoined:  done: the flight's lander answers it
//     case SingleFlight::Entry::kAlone:   `read` is still the caller's
//     case SingleFlight::Entry::kRunning: (a refresh) one is on its way already
//   }
//
// Thread-safe: one lock, held to look a flight up, add to it and remove it.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"
#include "services/query/cached_read.h"

namespace poolside::query {

class SingleFlight {
 public:
  // One shared read. Its starter keeps its own data in a type derived from it.
  struct Flight {
    std::string key;
    // The applied LSN when it began (its read began after it).
    uint64_t lsn = 0;
    // This replica's own writes to the database when it began.
    uint64_t own_writes = 0;

   private:
    friend class SingleFlight;
    std::vector<std::shared_ptr<CachedRead>> readers;  // guarded by the SingleFlight's lock
  };

  enum class Entry {
    kStarted,  // a new flight, with the read in it: the caller runs it and lands it
    kJoined,   // the read joined the flight running for the key
    kAlone,    // a flight runs for the key, but the read may not join it
    kRunning,  // (no read: a refresh) a flight runs for the key already
  };

  SingleFlight() = default;
  SingleFlight(const SingleFlight&) = delete;
  SingleFlight& operator=(const SingleFlight&) = delete;

  // Joins `*read` to the flight running for `key` if it may (`own_writes`:
  // this replica's own writes to the database now); a joined read starts
  // waiting (CachedRead::StartWaiting). When no flight runs for `key`,
  // `start()` makes one (its key, lsn and own_writes set), which is
  // registered with `*read` in it and returned in `*started`. `*read` may be
  // null (a background refresh: nobody waits for it). `*read` is moved from
  // when it joined or started a flight. `start` runs under the lock: it must
  // be quick and must not call this.
  Entry Enter(const std::string& key, uint64_t own_writes, std::shared_ptr<CachedRead>* read,
              absl::FunctionRef<std::shared_ptr<Flight>()> start, std::shared_ptr<Flight>* started);

  // Ends `flight`: no read joins it from now on. Returns the reads in it,
  // in the order they entered (none when it was landed already).
  std::vector<std::shared_ptr<CachedRead>> Land(Flight& flight);

  // Flights running now.
  size_t size() const;

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Flight>> flights_ ABSL_GUARDED_BY(mu_);
};

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_SINGLE_FLIGHT_H_
