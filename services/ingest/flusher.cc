#include "services/ingest/flusher.h"

#include <algorithm>
#include <optional>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/db/copy.h"
#include "common/db/error.h"
#include "common/db/sql_quote.h"

namespace poolside::ingest {
namespace {

// One COPY line of the batch: line `line` of write `write`.
struct LineRef {
  uint32_t write;
  uint32_t line;
};

// An error PostgreSQL gives for one row: its values (class 22), constraints
// (23), or its size (54000: a row or an index entry too large), which is the
// row's as much as a bad value is; or a row trigger's refusal in PL/pgSQL
// (RAISE EXCEPTION without an ERRCODE: P0001, or a failed ASSERT: P0004), the
// usual way a table validates its rows. COPY names the line in each case. A
// trigger that refuses every row for a reason not of the row (a table closed
// for maintenance) then costs a COPY per row, as a batch of rows that each
// break a constraint does, and every row is answered with the reason.
bool IsDataError(const absl::Status& s) {
  const std::string state = db::SqlStateOf(s);
  return absl::StartsWith(state, "22") || absl::StartsWith(state, "23") || state == "54000" ||
         state == "P0001" || state == "P0004";
}

// PostgreSQL's message without the "(SQLSTATE xxxxx)" that error.h appends.
std::string Reason(const absl::Status& s) {
  absl::string_view m = s.message();
  const size_t at = m.rfind(" (SQLSTATE ");
  if (at != absl::string_view::npos) m = m.substr(0, at);
  return std::string(m);
}

std::string TextArrayLiteral(const std::vector<std::string>& items) {
  std::string out = "{";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out.push_back(',');
    out.push_back('"');
    for (char c : items[i]) {
      if (c == '"' || c == '\\') out.push_back('\\');
      out.push_back(c);
    }
    out.push_back('"');
  }
  out.push_back('}');
  return out;
}

bool DecodeHexBytea(absl::string_view text, std::string* out) {
  if (!absl::ConsumePrefix(&text, "\\x") || text.size() % 2 != 0) return false;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  out->resize(text.size() / 2);
  for (size_t i = 0; i < out->size(); ++i) {
    const int hi = hex(text[2 * i]), lo = hex(text[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    (*out)[i] = static_cast<char>(hi * 16 + lo);
  }
  return true;
}

// A failure that ends the batch, as the status its requests get.
absl::Status BatchFailure(const absl::Status& s) {
  if (s.code() == absl::StatusCode::kDeadlineExceeded) {
    return absl::UnavailableError(
        absl::StrCat("flush did not finish in time (retry): ", s.message()));
  }
  return s;
}

std::string Hex(absl::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * bytes.size());
  for (unsigned char b : bytes) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

// A key as stored: its scope, what it was used for and its result.
struct StoredKey {
  std::string table;
  std::optional<std::string> digest;  // none: written by an earlier version
  std::string result;                 // serialized WriteResponse
};

class Flush {
 public:
  Flush(db::Connection& conn, const Batch& batch, absl::Time deadline)
      : batch_(batch), session_(conn, deadline) {}

  FlushResult Run() {
    FlushResult result;
    for (int attempt = 0;; ++attempt) {
      absl::Status s = Attempt(result);
      if (s.ok()) break;
      result.broken = session_.broken();
      if (!result.broken) (void)session_.Exec("ROLLBACK");
      if (!result.broken && needs_isolation_ && !isolating_) {
        // The plain COPY hit a bad row: again, isolating bad rows under
        // savepoints (not counted as an attempt).
        isolating_ = true;
        --attempt;
        continue;
      }
      // A key committed meanwhile by another writer: start over, the lookup
      // will find it.
      if (!result.broken && attempt < 2 && s.code() == absl::StatusCode::kAlreadyExists) {
        continue;
      }
      if (s.code() == absl::StatusCode::kAlreadyExists) {
        s = absl::AbortedError(absl::StrCat("idempotency key conflict: ", s.message()));
      }
      if (commit_unknown_) {
        result.commit_unknown = true;
        result.status = absl::UnavailableError(absl::StrCat(
            "the outcome of the COMMIT is unknown (", s.message(),
            "): the rows may or may not have been written; a retry with the same idempotency "
            "key is answered from the key if they were"));
        result.responses.clear();
        result.copy_statements = copy_statements_;
        return result;
      }
      result.status = BatchFailure(s);
      result.responses.clear();
      result.copy_statements = copy_statements_;
      return result;
    }
    result.copy_statements = copy_statements_;
    return result;
  }

 private:
  absl::Status Attempt(FlushResult& result) {
    commit_unknown_ = false;
    const size_t n = batch_.writes.size();
    result = FlushResult();
    result.responses.assign(n, v1::WriteResponse());
    settled_.assign(n, false);
    good_.assign(n, {});
    copy_rejected_.assign(n, {});
    if (absl::Status s = session_.Exec("BEGIN"); !s.ok()) return s;
    if (absl::Status s = LookUpKeys(result); !s.ok()) return s;

    std::vector<LineRef> lines;
    for (size_t i = 0; i < n; ++i) {
      if (settled_[i]) continue;
      good_[i].assign(batch_.writes[i]->lines(), false);
      for (size_t j = 0; j < batch_.writes[i]->lines(); ++j) {
        lines.push_back({static_cast<uint32_t>(i), static_cast<uint32_t>(j)});
      }
    }
    if (!lines.empty() && !isolating_) {
      // Most batches have no bad row: one plain COPY, no savepoint.
      ++copy_statements_;
      absl::StatusOr<int64_t> copied =
          session_.CopyIn(batch_.copy_target, Pieces(lines, nullptr), "",
                          batch_.binary ? db::CopyFormat::kBinary : db::CopyFormat::kText);
      if (!copied.ok()) {
        needs_isolation_ = IsDataError(copied.status()) && !session_.broken();
        return copied.status();
      }
      for (const LineRef& l : lines) good_[l.write][l.line] = true;
      result.bytes_written += bytes_;
    } else if (!lines.empty()) {
      if (absl::Status s = Isolate(lines, result); !s.ok()) return s;
    }

    // Each request's answer, and the keys with them.
    // The keys' columns, as array literals for one INSERT (PostgreSQL
    // refuses COPY FROM into a table with row-level security).
    std::vector<std::string> key_principals, key_names, key_tables, key_digests, key_rows,
        key_results;
    for (size_t i = 0; i < n; ++i) {
      if (settled_[i]) continue;
      const PendingWrite& w = *batch_.writes[i];
      v1::WriteResponse& r = *result.responses[i];
      uint64_t written = 0;
      for (size_t j = 0; j < w.lines(); ++j) written += good_[i][j] ? 1 : 0;
      r.set_rows_written(written);
      std::vector<v1::RowError> rejected = w.rejected;
      for (auto& e : copy_rejected_[i]) rejected.push_back(std::move(e));
      std::sort(rejected.begin(), rejected.end(), [](const v1::RowError& a, const v1::RowError& b) {
        return a.row_index() < b.row_index();
      });
      for (auto& e : rejected) *r.add_rejected() = std::move(e);
      result.rows_written += written;
      if (!w.key.empty()) {
        key_principals.push_back(w.principal);
        key_names.push_back(w.key);
        key_tables.push_back(w.table);
        key_digests.push_back(absl::StrCat("\\x", Hex(w.digest)));
        key_rows.push_back(absl::StrCat(written));
        key_results.push_back(absl::StrCat("\\x", Hex(r.SerializeAsString())));
      }
    }
    if (!key_names.empty()) {
      // `login` takes its default, session_user: the policy admits no other.
      auto inserted = session_.Query(
          absl::StrCat("INSERT INTO ", kKeysTable,
                       " (principal, key, tbl, digest, rows, result) SELECT * FROM "
                       "unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::int8[], "
                       "$6::bytea[])"),
          {TextArrayLiteral(key_principals), TextArrayLiteral(key_names),
           TextArrayLiteral(key_tables), TextArrayLiteral(key_digests), TextArrayLiteral(key_rows),
           TextArrayLiteral(key_results)});
      if (!inserted.ok()) return inserted.status();
    }
    absl::Status committed = session_.Exec("COMMIT");
    // A deferred constraint fails at COMMIT: isolate (constraints are then
    // checked inside each probe).
    if (!committed.ok() && !isolating_) {
      needs_isolation_ = IsDataError(committed) && !session_.broken();
    }
    // An error the server answered (with its SQLSTATE) rolled the transaction
    // back; a lost connection or a cancelled COMMIT leaves it open to doubt.
    commit_unknown_ = !committed.ok() && (session_.broken() || db::SqlStateOf(committed).empty() ||
                                          committed.code() == absl::StatusCode::kDeadlineExceeded);
    if (committed.ok()) {
      // The WAL position after the commit (and after any duplicate's
      // original, which this transaction found committed): the requests'
      // consistency token. Unknown if this fails; the batch stands.
      auto lsn = session_.Query(
          "SELECT (pg_catalog.pg_current_wal_insert_lsn() - '0/0'::pg_catalog.pg_lsn)::text", {});
      uint64_t at = 0;
      if (lsn.ok() && lsn->size() == 1 && !(*lsn)[0].empty() && (*lsn)[0][0].has_value() &&
          absl::SimpleAtoi(*(*lsn)[0][0], &at)) {
        for (auto& r : result.responses) {
          if (r.ok()) r->set_commit_lsn(at);
        }
      }
    }
    return committed;
  }

  // Settles the requests whose key is stored: duplicates get the stored
  // result, keys used for other content FAILED_PRECONDITION.
  absl::Status LookUpKeys(FlushResult& result) {
    std::vector<std::string> principals, keys;
    for (const auto& w : batch_.writes) {
      if (w->key.empty()) continue;
      principals.push_back(w->principal);
      keys.push_back(w->key);
    }
    if (keys.empty()) return absl::OkStatus();
    auto rows = session_.Query(
        // This login's keys only: row-level security says so for the roles,
        // and the table's owner (the DSN user), which bypasses it, must not
        // take another login's row for its own either.
        absl::StrCat("SELECT principal, key, tbl, digest, result FROM ", kKeysTable,
                     " WHERE login = session_user AND ((principal, key) IN (SELECT * FROM "
                     "unnest($1::text[], $2::text[])) OR (digest IS NULL AND key = "
                     "ANY($2::text[])))"),
        {TextArrayLiteral(principals), TextArrayLiteral(keys)});
    if (!rows.ok()) return rows.status();
    // (principal, key) -> stored; legacy rows (no digest) by key alone.
    absl::flat_hash_map<std::pair<std::string, std::string>, StoredKey> scoped;
    absl::flat_hash_map<std::string, StoredKey> legacy;
    for (const auto& row : *rows) {
      if (row.size() != 5 || !row[0] || !row[1] || !row[2] || !row[4]) continue;
      StoredKey k;
      k.table = *row[2];
      if (!DecodeHexBytea(*row[4], &k.result)) continue;
      if (row[3]) {
        std::string digest;
        if (!DecodeHexBytea(*row[3], &digest)) continue;
        k.digest = std::move(digest);
        scoped[{*row[0], *row[1]}] = std::move(k);
      } else {
        legacy[*row[1]] = std::move(k);
      }
    }
    for (size_t i = 0; i < batch_.writes.size(); ++i) {
      const PendingWrite& w = *batch_.writes[i];
      if (w.key.empty()) continue;
      const StoredKey* k = nullptr;
      if (auto it = scoped.find(std::make_pair(w.principal, w.key)); it != scoped.end()) {
        k = &it->second;
      } else if (auto it = legacy.find(w.key); it != legacy.end()) {
        k = &it->second;
      } else {
        continue;
      }
      settled_[i] = true;
      v1::WriteResponse stored;
      const bool parsed = stored.ParseFromString(k->result);
      bool same;
      if (k->digest.has_value()) {
        same = *k->digest == w.digest && k->table == w.table;
      } else {
        // Before digests: the best evidence left is the row count.
        same = parsed && stored.rows_written() + stored.rejected_size() == w.total_rows;
      }
      if (!same || !parsed) {
        result.responses[i] = KeyConflict(w, k->table);
        continue;
      }
      stored.set_duplicate(true);
      result.responses[i] = std::move(stored);
    }
    return absl::OkStatus();
  }

  // The COPY data of `lines`, as pieces of the requests' buffers.
  std::vector<absl::string_view> Pieces(absl::Span<const LineRef> lines, size_t* total) {
    std::vector<absl::string_view> pieces;
    size_t bytes = 0;
    for (size_t k = 0; k < lines.size(); ++k) {
      const PendingWrite& w = *batch_.writes[lines[k].write];
      const uint32_t begin = lines[k].line == 0 ? 0 : w.line_ends[lines[k].line - 1];
      const uint32_t end = w.line_ends[lines[k].line];
      // Consecutive lines of one request are one piece.
      if (k > 0 && lines[k - 1].write == lines[k].write && lines[k - 1].line + 1 == lines[k].line) {
        const absl::string_view& last = pieces.back();
        pieces.back() = absl::string_view(last.data(), last.size() + (end - begin));
      } else {
        pieces.emplace_back(w.data.data() + begin, end - begin);
      }
      bytes += end - begin;
    }
    bytes_ = bytes;
    if (total != nullptr) *total = bytes;
    return pieces;
  }

  void Reject(const LineRef& line, const absl::Status& error, FlushResult& result) {
    const PendingWrite& w = *batch_.writes[line.write];
    v1::RowError e;
    e.set_row_index(w.row_index[line.line]);
    e.set_reason(Reason(error));
    e.set_sqlstate(db::SqlStateOf(error));
    copy_rejected_[line.write].push_back(std::move(e));
    ++result.rows_rejected;
  }

  // Copies `lines` in probes (see flusher.h), keeping the ones that succeed
  // and rejecting the rows PostgreSQL names. Reorders `lines`. Non-OK only for
  // errors that end the batch.
  absl::Status Isolate(std::vector<LineRef>& lines, FlushResult& result) {
    // Each probe is one round trip with the savepoint handling of the one
    // before it.
    std::string before = "SET CONSTRAINTS ALL IMMEDIATE; SAVEPOINT poolside_rows";
    size_t pos = 0, chunk = lines.size();
    while (pos < lines.size()) {
      const size_t size = std::min(chunk, lines.size() - pos);
      const absl::Span<const LineRef> probe = absl::MakeConstSpan(lines).subspan(pos, size);
      size_t bytes = 0;
      std::vector<absl::string_view> pieces = Pieces(probe, &bytes);
      ++copy_statements_;
      absl::StatusOr<int64_t> copied =
          session_.CopyIn(batch_.copy_target, pieces, before,
                          batch_.binary ? db::CopyFormat::kBinary : db::CopyFormat::kText);
      if (copied.ok()) {
        before = "RELEASE SAVEPOINT poolside_rows; SAVEPOINT poolside_rows";
        for (const LineRef& l : probe) good_[l.write][l.line] = true;
        result.bytes_written += bytes;
        pos += size;
        chunk = 2 * size;
        continue;
      }
      if (!IsDataError(copied.status()) || session_.broken()) return copied.status();
      before = "ROLLBACK TO SAVEPOINT poolside_rows";
      const int64_t line = db::CopyLineOf(copied.status());
      if (size > 1 && (line < 1 || static_cast<size_t>(line) > size)) {
        // No row named (e.g. a deferred constraint): halve the probe.
        chunk = size / 2;
        continue;
      }
      const size_t bad = size == 1 ? 0 : static_cast<size_t>(line) - 1;
      Reject(probe[bad], copied.status(), result);
      // The rows before the bad one went in: they are the next probe, moved
      // one place on over the bad row.
      for (size_t k = pos + bad; k > pos; --k) lines[k] = lines[k - 1];
      ++pos;
      chunk = std::max<size_t>(bad, 1);
    }
    if (before == "ROLLBACK TO SAVEPOINT poolside_rows") {
      if (absl::Status s = session_.Exec(before); !s.ok()) return s;
    }
    return session_.Exec("RELEASE SAVEPOINT poolside_rows");
  }

  const Batch& batch_;
  db::CopySession session_;
  bool isolating_ = false;
  bool needs_isolation_ = false;
  bool commit_unknown_ = false;   // of the last attempt
  size_t bytes_ = 0;              // of the last Pieces()
  uint64_t copy_statements_ = 0;  // in every attempt
  // Answered from the key table (duplicate or conflict): not written.
  std::vector<bool> settled_;
  std::vector<std::vector<bool>> good_;
  std::vector<std::vector<v1::RowError>> copy_rejected_;
};

}  // namespace

absl::Status EnsureKeysTable(db::Connection& conn, absl::Time deadline) {
  db::CopySession session(conn, deadline);
  if (absl::Status s = session.Exec("BEGIN"); !s.ok()) return s;
  auto finish = [&](absl::Status s) {
    if (!s.ok()) {
      if (!session.broken()) (void)session.Exec("ROLLBACK");
      return s;
    }
    return session.Exec("COMMIT");
  };
  // Ingest replicas starting together take turns (the lock ends with the
  // transaction).
  if (absl::Status s =
          session.Exec(absl::StrCat("SELECT pg_advisory_xact_lock(", kKeysTableLock, ")"));
      !s.ok()) {
    return finish(s);
  }
  // What is there: the columns, the primary key's columns, the index, row
  // security (enabled, forced) and the login policy.
  const std::string policy = absl::StrCat(kKeysTable, "_login");
  auto state = session.Query(
      "SELECT (SELECT string_agg(attname::text, ',' ORDER BY attname) FROM pg_attribute "
      "        WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped), "
      "       (SELECT string_agg(a.attname::text, ',' ORDER BY k.n) "
      "        FROM pg_index i CROSS JOIN unnest(i.indkey) WITH ORDINALITY k(attnum, n) "
      "        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
      "        WHERE i.indrelid = c.oid AND i.indisprimary), "
      "       (SELECT conname::text FROM pg_constraint WHERE conrelid = c.oid AND contype = 'p'), "
      "       to_regclass($2) IS NOT NULL, c.relrowsecurity, c.relforcerowsecurity, "
      "       EXISTS (SELECT FROM pg_policy WHERE polrelid = c.oid AND polname = $3) "
      "FROM pg_class c WHERE c.oid = to_regclass($1)",
      {kKeysTable, absl::StrCat(kKeysTable, "_written_at"), policy});
  if (!state.ok()) return finish(state.status());
  std::vector<std::string> sql;
  // Each login sees and adds only its own keys; the owner (the DSN user)
  // bypasses this (not FORCEd) to delete expired keys of every login.
  const std::string create_policy =
      absl::StrCat("CREATE POLICY ", policy, " ON ", kKeysTable,
                   " USING (login = session_user) WITH CHECK (login = session_user)");
  const std::string enable_security =
      absl::StrCat("ALTER TABLE ", kKeysTable, " ENABLE ROW LEVEL SECURITY");
  if (state->empty()) {
    sql.push_back(absl::StrCat(
        "CREATE TABLE ", kKeysTable,
        " (login text NOT NULL DEFAULT session_user, principal text NOT NULL DEFAULT '', "
        "key text NOT NULL, tbl text NOT NULL DEFAULT '', "
        "digest bytea, rows bigint NOT NULL, result bytea NOT NULL, "
        "written_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (login, principal, key))"));
    sql.push_back(
        absl::StrCat("CREATE INDEX ", kKeysTable, "_written_at ON ", kKeysTable, " (written_at)"));
    sql.push_back(enable_security);
    sql.push_back(create_policy);
  } else {
    const db::CopySession::TextRow& r = (*state)[0];
    const std::string columns = r[0].value_or("");
    const std::vector<absl::string_view> have = absl::StrSplit(columns, ',');
    auto has = [&](absl::string_view c) {
      return std::find(have.begin(), have.end(), c) != have.end();
    };
    if (!has("login")) {
      // Keys stored before count as the DSN user's, which runs this.
      sql.push_back(absl::StrCat("ALTER TABLE ", kKeysTable,
                                 " ADD COLUMN login text NOT NULL DEFAULT session_user"));
    }
    if (!has("principal")) {
      sql.push_back(absl::StrCat("ALTER TABLE ", kKeysTable,
                                 " ADD COLUMN principal text NOT NULL DEFAULT ''"));
    }
    if (!has("tbl")) {
      sql.push_back(
          absl::StrCat("ALTER TABLE ", kKeysTable, " ADD COLUMN tbl text NOT NULL DEFAULT ''"));
    }
    if (!has("digest")) {
      sql.push_back(absl::StrCat("ALTER TABLE ", kKeysTable, " ADD COLUMN digest bytea"));
    }
    if (r[1].value_or("") != "login,principal,key") {
      std::string alter = absl::StrCat("ALTER TABLE ", kKeysTable);
      if (r[2].has_value()) {
        absl::StrAppend(&alter, " DROP CONSTRAINT ", db::QuoteIdentifier(*r[2]), ",");
      }
      absl::StrAppend(&alter, " ADD PRIMARY KEY (login, principal, key)");
      sql.push_back(std::move(alter));
    }
    if (r[3].value_or("f") != "t") {
      sql.push_back(absl::StrCat("CREATE INDEX ", kKeysTable, "_written_at ON ", kKeysTable,
                                 " (written_at)"));
    }
    if (r[4].value_or("f") != "t") sql.push_back(enable_security);
    if (r[5].value_or("f") != "f") {
      sql.push_back(absl::StrCat("ALTER TABLE ", kKeysTable, " NO FORCE ROW LEVEL SECURITY"));
    }
    if (r[6].value_or("f") != "t") sql.push_back(create_policy);
  }
  for (const std::string& statement : sql) {
    if (absl::Status s = session.Exec(statement); !s.ok()) return finish(s);
  }
  return finish(absl::OkStatus());
}

absl::Status GrantKeysTable(db::Connection& conn, const std::vector<std::string>& users,
                            absl::Time deadline) {
  absl::Status first;
  for (const std::string& user : users) {
    db::CopySession session(conn, deadline);
    absl::Status s = session.Exec("BEGIN");
    if (s.ok()) {
      // Concurrent GRANTs on one table can fail ("tuple concurrently
      // updated"): replicas take turns, as for EnsureKeysTable.
      s = session.Exec(absl::StrCat("SELECT pg_advisory_xact_lock(", kKeysTableLock, ")"));
    }
    if (s.ok()) {
      s = session.Exec(
          absl::StrCat("GRANT SELECT, INSERT ON ", kKeysTable, " TO ", db::QuoteIdentifier(user)));
    }
    if (s.ok()) s = session.Exec("COMMIT");
    if (!s.ok()) {
      if (!session.broken()) (void)session.Exec("ROLLBACK");
      if (first.ok()) {
        first = absl::Status(s.code(), absl::StrCat("cannot grant ", user, " SELECT, INSERT on ",
                                                    kKeysTable, ": ", s.message()));
      }
      if (session.broken()) return first;
    }
  }
  return first;
}

absl::Status KeyConflict(const PendingWrite& write, absl::string_view used_table) {
  return absl::FailedPreconditionError(absl::StrCat(
      "idempotency key \"", absl::Utf8SafeCHexEscape(write.key), "\" was already used for ",
      used_table.empty() || used_table == write.table
          ? "other rows or columns"
          : absl::StrCat("table ", absl::Utf8SafeCHexEscape(used_table)),
      "; nothing of this request was written. A key names one request: send new rows under a "
      "new key, and reuse a key only to retry the same rows"));
}

FlushResult FlushBatch(db::Connection& conn, const Batch& batch, absl::Time deadline) {
  return Flush(conn, batch, deadline).Run();
}

absl::StatusOr<bool> InRecovery(db::Connection& conn, absl::Time deadline) {
  db::CopySession session(conn, deadline);
  auto rows = session.Query("SELECT pg_catalog.pg_is_in_recovery()", {});
  if (!rows.ok()) return rows.status();
  if (rows->size() != 1 || (*rows)[0].size() != 1 || !(*rows)[0][0].has_value()) {
    return absl::InternalError("pg_is_in_recovery() returned no value");
  }
  return *(*rows)[0][0] == "t";
}

absl::StatusOr<int64_t> DeleteExpiredKeys(db::Connection& conn, absl::Duration retention,
                                          absl::Time deadline) {
  db::CopySession session(conn, deadline);
  auto rows = session.Query(
      absl::StrCat("WITH d AS (DELETE FROM ", kKeysTable,
                   " WHERE written_at < now() - $1::interval RETURNING 1) SELECT count(*) FROM d"),
      {absl::StrCat(absl::ToInt64Milliseconds(retention), " milliseconds")});
  if (!rows.ok()) return rows.status();
  int64_t n = 0;
  if (!rows->empty() && (*rows)[0][0]) n = std::stoll(*(*rows)[0][0]);
  return n;
}

}  // namespace poolside::ingest
