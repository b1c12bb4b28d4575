#ifndef POOLSIDE_SERVICES_INGEST_INGEST_CONFIG_H_
#define POOLSIDE_SERVICES_INGEST_INGEST_CONFIG_H_

// The ingest service's configuration: proto/poolside/v1/config.proto's
// IngestServiceConfig, validated, with every default filled in and DSN secrets
// resolved from files or the environment.

#include <string>

#include "absl/status/statusor.h"
#include "common/config/cgroup.h"
#include "proto/poolside/v1/config.pb.h"

namespace poolside::ingest {

// Loads `path` (JSON), applies defaults, validates. Errors name the file and
// the offending setting, never a DSN's contents.
//
// Sizing from the container (`limits`, ReadContainerLimits(); the config's
// server.cpuLimit / server.memoryLimitBytes override them): batch.bufferBytes
// 0 is a quarter of the memory limit (at least 16 MiB and 2 x maxBytes, at
// most 1 GiB; no limit: 64 MiB); batch.copyConnections 0 is 2 per core of the
// CPU limit, rounded up, 2 to 8 (no limit: 4); batch.maxRequestBytes 0 is a
// quarter of bufferBytes, at most 32 MiB. `sizing_note`, if given,
// receives the resulting sizes and where they came from (for the startup log).
absl::StatusOr<v1::IngestServiceConfig> LoadIngestConfig(
    const std::string& path, const config::ContainerLimits& limits = config::ContainerLimits(),
    std::string* sizing_note = nullptr);

// Applies defaults and validates an already parsed config.
absl::StatusOr<v1::IngestServiceConfig> FinalizeIngestConfig(
    v1::IngestServiceConfig config,
    const config::ContainerLimits& limits = config::ContainerLimits(),
    std::string* sizing_note = nullptr);

}  // namespace poolside::ingest

#endif  // POOLSIDE_SERVICES_INGEST_INGEST_CONFIG_H_
