#include "common/cache/cache_store.h"

#include <algorithm>
#include <functional>

#include "absl/strings/match.h"

namespace poolside::cache {
namespace {

uint64_t Mix(uint64_t x) {
  // splitmix64's finalizer: spreads std::hash's bits over the whole word.
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

namespace cache_internal {

uint64_t NextPowerOfTwo(uint64_t v) {
  uint64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

uint64_t Hash(absl::string_view key) {
  return Mix(std::hash<std::string_view>()(std::string_view(key.data(), key.size())));
}

uint64_t Charge(absl::string_view key, size_t value_bytes, const std::vector<std::string>& tags,
                uint64_t entry_overhead, uint64_t tag_overhead) {
  uint64_t charge = key.size() + value_bytes + entry_overhead;
  for (const std::string& t : tags) charge += t.size() + tag_overhead;
  return charge;
}

FrequencySketch::FrequencySketch(size_t width)
    : counters_(4 * width, 0), mask_(width - 1), sample_(10 * width) {}

size_t FrequencySketch::Index(uint64_t hash, int row) const {
  const uint64_t h = Mix(hash + static_cast<uint64_t>(row) * 0x9e3779b97f4a7c15ULL);
  return static_cast<size_t>(row) * (mask_ + 1) + (h & mask_);
}

void FrequencySketch::Increment(uint64_t hash) {
  // Conservative update: only the counters at the current minimum grow, which
  // keeps collisions from inflating the estimates of rare keys.
  size_t index[4];
  int low = 15;
  for (int row = 0; row < 4; ++row) {
    index[row] = Index(hash, row);
    low = std::min<int>(low, counters_[index[row]]);
  }
  if (low < 15) {
    for (int row = 0; row < 4; ++row) {
      if (counters_[index[row]] == low) ++counters_[index[row]];
    }
  }
  if (++additions_ >= sample_) {
    // Ageing: popularity from long ago counts half as much.
    for (uint8_t& c : counters_) c >>= 1;
    additions_ /= 2;
  }
}

int FrequencySketch::Estimate(uint64_t hash) const {
  int estimate = 15;
  for (int row = 0; row < 4; ++row) estimate = std::min<int>(estimate, counters_[Index(hash, row)]);
  return estimate;
}

}  // namespace cache_internal

template class BasicCacheStore<std::string>;

}  // namespace poolside::cache
