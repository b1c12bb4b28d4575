#ifndef POOLSIDE_COMMON_HASH_FNV1A_H_
#define POOLSIDE_COMMON_HASH_FNV1A_H_

// FNV-1a, 64 bits: a hash that is the same in every process and on every
// machine (std::hash and absl::Hash are not), for fingerprints and keys that
// are stored or compared across processes. Not for hostile keys in a hash
// table: it is not seeded.

#include <cstdint>

#include "absl/strings/string_view.h"

namespace poolside::hash {

inline constexpr uint64_t kFnv1aOffsetBasis = 0xcbf29ce484222325ULL;
inline constexpr uint64_t kFnv1aPrime = 0x100000001b3ULL;

// The hash `h` continued over `bytes`: Fnv1aAppend(Fnv1a(a), b) == Fnv1a(a + b).
inline uint64_t Fnv1aAppend(uint64_t h, absl::string_view bytes) {
  for (unsigned char c : bytes) {
    h ^= c;
    h *= kFnv1aPrime;
  }
  return h;
}

inline uint64_t Fnv1a(absl::string_view bytes) { return Fnv1aAppend(kFnv1aOffsetBasis, bytes); }

}  // namespace poolside::hash

#endif  // POOLSIDE_COMMON_HASH_FNV1A_H_
