#ifndef POOLSIDE_SERVICES_INGEST_INGEST_CONFIG_H_
#define POOLSIDE_SERVICES_INGEST_INGEST_CONFIG_H_

// The ingest service's configuration: proto/poolside/v1/config.proto's
// IngestServiceConfig, validated, with every default filled in and DSN secrets
// resolved from files or the environment.

#include <string>

#include "absl/status/statusor.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::ingest {

// Loads `path` (JSON), applies defaults, validates. Errors name the file and
// the offending setting, never a DSN's contents.
absl::StatusOr<v1::IngestServiceConfig> LoadIngestConfig(const std::string& path);

// Applies defaults and validates an already parsed config.
absl::StatusOr<v1::IngestServiceConfig> FinalizeIngestConfig(v1::IngestServiceConfig config);

}  // namespace poolside::ingest

#endif  // POOLSIDE_SERVICES_INGEST_INGEST_CONFIG_H_
