#ifndef POOLSIDE_CLI_INGEST_COMMAND_H_
#define POOLSIDE_CLI_INGEST_COMMAND_H_

// `poolside ingest --table T [--columns a,b,c] [--db D] [--addr HOST:PORT]
//                  [--header] [--chunk_rows N] [--window N] FILE.csv`
//
// Streams a CSV file (cli/csv.h) to the ingest service through one Channel
// call, in chunks of --chunk_rows rows, at most --window chunks unacknowledged.
// Without --columns the first record is the header naming the columns (with
// --columns, --header skips a header line). Unquoted empty fields are NULL;
// every other field is sent as text for PostgreSQL to parse (as bytes when it
// is not valid UTF-8, so the server can reject exactly that row).
//
// Each chunk's idempotency key is derived from the file's identity (path,
// size, modification time, database, table, columns) and the chunk's index:
// running the same command again after an interruption sends the file again,
// and the chunks already committed are acknowledged without being written
// twice. Chunks refused with UNAVAILABLE/ABORTED/RESOURCE_EXHAUSTED are resent
// (same key) a few times.
//
// On a terminal, stderr shows a live progress line (rows, rows/s, bytes, ETA).
// The summary on stdout lists rejected rows with their CSV line and reason.
// Exit code: 0 all rows written, 1 some rows rejected, 2 error or interrupted.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cli/connection.h"

namespace poolside::cli {

struct IngestOptions {
  std::string addr = "127.0.0.1:50053";
  std::string database;
  std::string table;
  std::vector<std::string> columns;
  bool header = false;  // implied when columns is empty
  std::string file;
  uint32_t chunk_rows = 1000;
  uint32_t window = 16;
};

// Parses the arguments after "ingest".
absl::StatusOr<IngestOptions> ParseIngestArgs(const std::vector<std::string>& args,
                                              IngestOptions defaults = IngestOptions());

// "csv-<16 hex digits>-<chunk>"; the digits hash `identity`.
std::string ChunkKey(const std::string& identity, uint64_t chunk);

// Runs the command; returns the exit code.
int RunIngestCommand(const std::vector<std::string>& args, const ConnectionOptions& connection);

const char* IngestUsageText();

}  // namespace poolside::cli

#endif  // POOLSIDE_CLI_INGEST_COMMAND_H_
