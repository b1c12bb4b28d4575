#ifndef POOLSIDE_COMMON_AUTH_TOKEN_HASH_H_
#define POOLSIDE_COMMON_AUTH_TOKEN_HASH_H_

// SHA-256 of bearer tokens (OpenSSL's libcrypto): principals are configured
// and looked up by the hash, so no token is ever held in clear.

#include <string>

#include "absl/strings/string_view.h"

namespace poolside::auth {

// Lowercase hex SHA-256 of `data` (64 characters), as `sha256sum` prints it.
std::string Sha256Hex(absl::string_view data);

}  // namespace poolside::auth

#endif  // POOLSIDE_COMMON_AUTH_TOKEN_HASH_H_
