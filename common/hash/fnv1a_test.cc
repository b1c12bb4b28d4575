#include "common/hash/fnv1a.h"

#include <string>

#include "gtest/gtest.h"

namespace poolside::hash {
namespace {

// The published FNV-1a 64-bit test vectors.
TEST(Fnv1aTest, KnownValues) {
  EXPECT_EQ(Fnv1a(""), 0xcbf29ce484222325ULL);
  EXPECT_EQ(Fnv1a("a"), 0xaf63dc4c8601ec8cULL);
  EXPECT_EQ(Fnv1a("foobar"), 0x85944171f73967e8ULL);
}

TEST(Fnv1aTest, AppendContinuesTheHash) {
  EXPECT_EQ(Fnv1aAppend(Fnv1a("foo"), "bar"), Fnv1a("foobar"));
  EXPECT_EQ(Fnv1aAppend(Fnv1a("x"), ""), Fnv1a("x"));
  const std::string with_nul("a\0b", 3);
  EXPECT_NE(Fnv1a(with_nul), Fnv1a("ab"));
  EXPECT_EQ(Fnv1aAppend(Fnv1a("a"), absl::string_view("\0b", 2)), Fnv1a(with_nul));
}

TEST(Fnv1aTest, HighBytesAreUnsigned) {
  // 0xff hashed as 255, not as a sign-extended -1.
  EXPECT_EQ(Fnv1a("\xff"), (kFnv1aOffsetBasis ^ 0xffu) * kFnv1aPrime);
}

}  // namespace
}  // namespace poolside::hash
