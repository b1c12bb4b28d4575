#ifndef POOLSIDE_COMMON_CONFIG_JSON_CONFIG_H_
#define POOLSIDE_COMMON_CONFIG_JSON_CONFIG_H_

// Configuration files: JSON in protobuf's JSON mapping of a config message
// (proto/poolside/v1/config.proto). Unknown keys and wrongly typed values are
// errors that name the file and the problem, so a typo never silently falls back
// to a default.
//
//   v1::QueryServiceConfig config;
//   absl::Status s = LoadJsonConfig("/etc/poolside/query.json", &config);

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"

namespace poolside::config {

// INVALID_ARGUMENT for malformed JSON or unknown keys; NOT_FOUND if the file
// does not exist.
absl::Status LoadJsonConfig(const std::string& path, google::protobuf::Message* message);
absl::Status ParseJsonConfig(absl::string_view json, google::protobuf::Message* message);

// A secret given inline, in a file or in an environment variable: exactly one of
// the three may be set. `what` names the setting in error messages (never the value).
absl::StatusOr<std::string> ResolveSecret(absl::string_view what, const std::string& inline_value,
                                          const std::string& file, const std::string& env);

}  // namespace poolside::config

#endif  // POOLSIDE_COMMON_CONFIG_JSON_CONFIG_H_
