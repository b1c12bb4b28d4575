#include "common/auth/token_hash.h"

#include "gtest/gtest.h"

namespace poolside::auth {
namespace {

TEST(TokenHashTest, MatchesSha256sum) {
  // printf %s abc | sha256sum
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

}  // namespace
}  // namespace poolside::auth
