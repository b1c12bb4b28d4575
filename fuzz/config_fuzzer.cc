// libFuzzer target for configuration parsing and validation: the JSON loader
// (common/config/json_config) and each service's Finalize*Config (defaults,
// validation, secrets) as run at startup.
//
// Input: byte 0 picks the service (query, ingest, cache); the rest is the JSON
// file. A config that parses is finalized, as `--check_config` does: whatever
// the file holds, the answer is a config or an error, never a crash, an
// out-of-bounds read, undefined behaviour, a leak or a hang.
//
// Paths in the input are not followed: every string field named "*_file" is
// pointed at one small file written at start-up (a DSN), so fuzzing never reads
// /dev/zero or the machine's secrets.

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "common/config/cgroup.h"
#include "common/config/json_config.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "google/protobuf/reflection.h"
#include "proto/poolside/v1/config.pb.h"
#include "services/cache/cache_config.h"
#include "services/ingest/ingest_config.h"
#include "services/query/query_config.h"

namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

const std::string& SecretFile() {
  static const std::string* path = [] {
    auto* p = new std::string("/tmp/poolside-config-fuzzer-" + std::to_string(getpid()) + ".dsn");
    std::ofstream(*p) << "host=127.0.0.1 port=5432 dbname=app user=app\n";
    return p;
  }();
  return *path;
}

void RedirectFiles(Message* message) {
  const google::protobuf::Reflection* reflection = message->GetReflection();
  const google::protobuf::Descriptor* descriptor = message->GetDescriptor();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const FieldDescriptor* field = descriptor->field(i);
    if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      if (field->is_repeated()) {
        for (int j = 0; j < reflection->FieldSize(*message, field); ++j) {
          RedirectFiles(reflection->MutableRepeatedMessage(message, field, j));
        }
      } else if (reflection->HasField(*message, field)) {
        RedirectFiles(reflection->MutableMessage(message, field));
      }
    } else if (field->cpp_type() == FieldDescriptor::CPPTYPE_STRING && !field->is_repeated() &&
               absl::EndsWith(field->name(), "_file") &&
               !reflection->GetString(*message, field).empty()) {
      reflection->SetString(message, field, SecretFile());
    }
  }
}

template <typename Config, typename Finalize>
void Check(absl::string_view json, Finalize finalize) {
  Config config;
  if (!poolside::config::ParseJsonConfig(json, &config).ok()) return;
  RedirectFiles(&config);
  auto finalized = finalize(config);
  if (!finalized.ok()) return;
  (void)finalized->DebugString();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const absl::string_view json(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 3) {
    case 0:
      Check<poolside::v1::QueryServiceConfig>(json, [](poolside::v1::QueryServiceConfig c) {
        return poolside::query::FinalizeQueryConfig(std::move(c));
      });
      break;
    case 1:
      Check<poolside::v1::IngestServiceConfig>(json, [](poolside::v1::IngestServiceConfig c) {
        return poolside::ingest::FinalizeIngestConfig(std::move(c));
      });
      break;
    case 2:
      Check<poolside::v1::CacheServiceConfig>(json, [](poolside::v1::CacheServiceConfig c) {
        poolside::config::ContainerLimits limits;
        return poolside::cache::FinalizeCacheConfig(std::move(c), limits);
      });
      break;
  }
  return 0;
}
