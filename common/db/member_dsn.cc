#include "common/db/member_dsn.h"

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/db/conninfo.h"
#include "libpq-fe.h"

namespace poolside::db {
namespace {

std::string MemberId(const Conninfo& c) {
  const std::string* host = c.Get("host");
  if (host == nullptr || host->empty()) host = c.Get("hostaddr");
  const std::string* port = c.Get("port");
  return absl::StrCat(host != nullptr && !host->empty() ? *host : "localhost", ":",
                      port != nullptr && !port->empty() ? *port : "5432");
}

}  // namespace

absl::StatusOr<std::vector<MemberSpec>> MembersFromDsns(const std::string& dsn,
                                                        const std::vector<std::string>& replicas) {
  absl::StatusOr<Conninfo> base = Conninfo::Parse(dsn);
  if (!base.ok()) return base.status();
  std::vector<MemberSpec> members;
  members.push_back({MemberId(*base), base->ToString()});
  absl::flat_hash_set<std::string> ids = {members[0].id};
  for (size_t i = 0; i < replicas.size(); ++i) {
    const std::string where = absl::StrCat("replicas[", i, "]");
    absl::StatusOr<Conninfo> entry = Conninfo::Parse(replicas[i]);
    if (!entry.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", entry.status().message()));
    }
    for (const char* keyword : {"dbname", "user", "password", "passfile"}) {
      if (entry->Get(keyword) != nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, " sets ", keyword,
            ": a replica entry holds only what differs from the database's DSN (host, port, "
            "TLS files); the database, user and password are the DSN's"));
      }
    }
    if (entry->Get("host") == nullptr && entry->Get("hostaddr") == nullptr &&
        entry->Get("port") == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": set the replica's host or port"));
    }
    Conninfo merged = *base;
    // A replica at another host must not inherit the primary's address.
    if (entry->Get("host") != nullptr || entry->Get("hostaddr") != nullptr) {
      merged.Erase("host");
      merged.Erase("hostaddr");
    }
    char* error = nullptr;
    PQconninfoOption* options = PQconninfoParse(replicas[i].c_str(), &error);
    if (options == nullptr) {
      if (error != nullptr) PQfreemem(error);
      return absl::InvalidArgumentError(absl::StrCat(where, ": not a connection string"));
    }
    for (const PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
      if (o->val != nullptr && o->val[0] != '\0') merged.Set(o->keyword, o->val);
    }
    PQconninfoFree(options);
    MemberSpec spec{MemberId(merged), merged.ToString()};
    if (!ids.insert(spec.id).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": ", spec.id, " is already a member of this database"));
    }
    members.push_back(std::move(spec));
  }
  return members;
}

absl::StatusOr<std::string> DsnForHost(const std::string& dsn, const std::string& host, int port) {
  absl::StatusOr<Conninfo> c = Conninfo::Parse(dsn);
  if (!c.ok()) return c.status();
  c->Erase("hostaddr");
  c->Set("host", host);
  c->Set("port", absl::StrCat(port));
  return c->ToString();
}

}  // namespace poolside::db
