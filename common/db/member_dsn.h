#ifndef POOLSIDE_COMMON_DB_MEMBER_DSN_H_
#define POOLSIDE_COMMON_DB_MEMBER_DSN_H_

// The connection strings of a database's members (primary and replicas),
// derived from the database's one DSN: the rules configuration validation and
// the topology monitor share.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/db/topology.h"

namespace poolside::db {

// Members from the database's DSN (the first member) and one entry per
// replica: a connection string whose settings (typically host and port)
// replace the database DSN's, so user, password and TLS settings are written
// once. Ids are "host:port". INVALID_ARGUMENT for an unparsable entry, an
// entry that sets dbname, user, password or passfile, an entry
// without host, hostaddr or port, or two members with one id.
absl::StatusOr<std::vector<MemberSpec>> MembersFromDsns(const std::string& dsn,
                                                        const std::vector<std::string>& replicas);

// The DSN of a member at host:port, with `dsn`'s other settings.
absl::StatusOr<std::string> DsnForHost(const std::string& dsn, const std::string& host, int port);

}  // namespace poolside::db

#endif  // POOLSIDE_COMMON_DB_MEMBER_DSN_H_
