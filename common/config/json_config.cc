#include "common/config/json_config.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"

namespace poolside::config {

absl::Status ParseJsonConfig(absl::string_view json, google::protobuf::Message* message) {
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  auto status = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), message, options);
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("invalid ", message->GetDescriptor()->name(),
                                                   ": ", std::string(status.message())));
  }
  return absl::OkStatus();
}

absl::Status LoadJsonConfig(const std::string& path, google::protobuf::Message* message) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read config file ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  absl::Status status = ParseJsonConfig(buffer.str(), message);
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", status.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ResolveSecret(absl::string_view what, const std::string& inline_value,
                                          const std::string& file, const std::string& env) {
  const int set = !inline_value.empty() + !file.empty() + !env.empty();
  if (set != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": set exactly one of the value, its file or its environment variable"));
  }
  if (!inline_value.empty()) return inline_value;
  if (!file.empty()) {
    std::ifstream in(file);
    if (!in) return absl::NotFoundError(absl::StrCat(what, ": cannot read file ", file));
    std::stringstream buffer;
    buffer << in.rdbuf();
    std::string value(absl::StripTrailingAsciiWhitespace(buffer.str()));
    if (value.empty())
      return absl::InvalidArgumentError(absl::StrCat(what, ": file ", file, " is empty"));
    return value;
  }
  const char* value = std::getenv(env.c_str());
  if (value == nullptr || *value == '\0') {
    return absl::NotFoundError(absl::StrCat(what, ": environment variable ", env, " is not set"));
  }
  return std::string(value);
}

}  // namespace poolside::config
